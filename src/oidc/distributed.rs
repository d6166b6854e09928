//! Distributed claims (OpenID Connect Core 5.6.2), resolved as kube-apiserver 1.37's claim
//! resolver resolves them (`claimResolver` in `k8s.io/apiserver/.../token/oidc`, v0.37.2):
//! - only the groups claim, and only when it is mapped by `claim` (a CEL groups mapping, or no
//!   groups mapping, fetches nothing);
//! - only when the token lacks that claim and `_claim_names` sends it to a source with an
//!   `endpoint`; a source without one (aggregated, a `JWT`) is skipped and the user has no
//!   groups from it;
//! - a `GET` of the endpoint with the source's `access_token` as bearer, if any, through a client
//!   that trusts the issuer's CA, waits up to 30 s and follows redirects; any status from 200 to
//!   226 is an answer, whose body is a compact JWT;
//! - that JWT is verified by go-oidc for the issuer its own `iss` names (found by discovery of
//!   that issuer, the token's own issuer included), with the issuer's audiences and algorithms:
//!   signature, `iss`, `aud`, `exp`, `nbf`; its claim replaces the missing one, before any
//!   mapping or rule reads the claims;
//! - anything else refuses the token ([`TokenError::UnresolvedClaim`]), as the API server
//!   refuses it with `could not expand distributed claims`.
//!
//! kube-apiserver discovers a source issuer in the background and refuses the tokens that need it
//! until that first discovery has finished; the operator discovers it before answering, so it
//! gives the verdict kube-apiserver gives from then on. It keeps at most [`MAX_SOURCE_ISSUERS`]
//! source issuers besides the token's own, where kube-apiserver keeps every one it is sent to.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use url::Url;

use super::{
    authn_config::{JwtAuthenticator, Mapping},
    claims::{self, GOOGLE_ISSUER, GOOGLE_ISSUER_NO_SCHEME},
    jwks::{self, KeySet},
    jwt::{JsonObject, Payload, check_shape},
    signature::signed_payload,
    token::TokenError,
};

/// kube-apiserver's client for claim sources: `http.Client{Timeout: 30 * time.Second}`.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Source issuers other than the token's own that one issuer's tokens may name: only the
/// issuer's signed tokens and the endpoints they name choose them, and each costs a discovery
/// and a key set held until the configuration changes.
pub const MAX_SOURCE_ISSUERS: usize = 16;
/// kube-apiserver's status check: `StatusOK` to `StatusIMUsed`.
const ANSWER_STATUSES: std::ops::RangeInclusive<u16> = 200..=226;

/// An issuer whose JWTs a claim source may return, with its keys.
struct SourceIssuer {
    rules: JwtAuthenticator,
    keys: Arc<KeySet>,
}

/// The claim resolver of one issuer of the configuration, alive as long as that configuration.
pub(super) struct DistributedClaims {
    claim: String,
    own: Arc<SourceIssuer>,
    client: tokio::sync::OnceCell<reqwest::Client>,
    others: Mutex<HashMap<String, Arc<SourceIssuer>>>,
}

/// One claim source as kube-apiserver decodes it.
struct Endpoint {
    url: String,
    access_token: String,
}

impl DistributedClaims {
    /// A resolver when kube-apiserver has one: the groups are mapped from a claim.
    pub(super) fn new(rules: &JwtAuthenticator, keys: Arc<KeySet>) -> Option<Self> {
        let Some(Mapping::Claim { claim, .. }) = &rules.groups else {
            return None;
        };
        Some(Self {
            claim: claim.clone(),
            own: Arc::new(SourceIssuer {
                rules: rules.clone(),
                keys,
            }),
            client: tokio::sync::OnceCell::new(),
            others: Mutex::new(HashMap::new()),
        })
    }

    /// Puts the claim fetched from its source into `claims` when the token names one.
    pub(super) async fn expand(&self, claims: &mut JsonObject) -> Result<(), TokenError> {
        if claims.contains_key(&self.claim) {
            return Ok(());
        }
        let Some(endpoint) = source(claims, &self.claim)? else {
            return Ok(());
        };
        let unresolved = |problem: String| TokenError::UnresolvedClaim {
            claim: self.claim.clone(),
            problem,
        };
        let (jwt, shown) = self.fetch(&endpoint).await.map_err(unresolved)?;
        let value = self
            .verified_value(&jwt, &shown)
            .await
            .map_err(unresolved)?;
        claims.insert(self.claim.clone(), value);
        Ok(())
    }

    /// The endpoint's answer, and how messages name the endpoint.
    async fn fetch(&self, endpoint: &Endpoint) -> Result<(String, String), String> {
        let url = Url::parse(&endpoint.url).map_err(|e| {
            format!(
                "its endpoint {:?} is not a URL: {e}",
                jwks::truncated(&endpoint.url)
            )
        })?;
        let shown = without_query(&url);
        let client = self
            .client
            .get_or_try_init(|| async {
                jwks::issuer_client_builder(&self.own.rules.certificate_authority)
                    .await?
                    // Go's dialer waits as long as the whole request may take.
                    .connect_timeout(FETCH_TIMEOUT)
                    .timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| jwks::IssuerError::Setup(jwks::error_chain(&e)))
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut request = client.get(url);
        if !endpoint.access_token.is_empty() {
            request = request.bearer_auth(&endpoint.access_token);
        }
        let response = request.send().await.map_err(|e| {
            format!(
                "cannot reach {shown}: {}",
                jwks::error_chain(&e.without_url())
            )
        })?;
        if !ANSWER_STATUSES.contains(&response.status().as_u16()) {
            return Err(format!("{shown} answered {}", response.status()));
        }
        let shown_url = Url::parse(&shown).map_err(|e| e.to_string())?;
        let body = jwks::bounded_body(&shown_url, response)
            .await
            .map_err(|e| e.to_string())?;
        let jwt = String::from_utf8(body).map_err(|_| format!("{shown} answered non-UTF-8"))?;
        Ok((jwt, shown))
    }

    /// The claim's value from the answer, once the JWT verifies for the issuer it names.
    async fn verified_value(&self, jwt: &str, shown: &str) -> Result<Value, String> {
        // go-jose strips white space around a compact JWT; go-oidc refuses a JSON one.
        let jwt = jwt.trim();
        if jwt.starts_with('{') {
            return Err(format!("{shown} answered JSON, not a compact JWT"));
        }
        let decoded = check_shape(jwt)
            .map_err(|e| format!("{shown} answered no usable JWT ({})", e.reason()))?;
        let iss = match decoded.payload.registered.get("iss") {
            Some(Value::String(iss)) if iss == GOOGLE_ISSUER_NO_SCHEME => GOOGLE_ISSUER.to_owned(),
            Some(Value::String(iss)) if !iss.is_empty() => iss.clone(),
            _ => return Err(format!("the JWT from {shown} names no issuer")),
        };
        let issuer = self.issuer(&iss).await?;
        let Payload { claims, .. } = signed_payload(&issuer.rules, &issuer.keys, decoded)
            .await
            .and_then(|payload| {
                claims::validity(&issuer.rules, &payload.claims, &payload.registered)
                    .map(|_| payload)
            })
            .map_err(|e| {
                format!(
                    "the JWT from {shown} does not verify for the issuer {:?} ({}: {e})",
                    jwks::truncated(&iss),
                    e.reason()
                )
            })?;
        claims
            .get(&self.claim)
            .cloned()
            .ok_or_else(|| format!("the JWT from {shown} does not hold the claim"))
    }

    /// The token's own issuer, or another one found by discovery of `iss`, as kube-apiserver
    /// makes a verifier per issuer a source names.
    async fn issuer(&self, iss: &str) -> Result<Arc<SourceIssuer>, String> {
        if iss == self.own.rules.issuer {
            return Ok(self.own.clone());
        }
        let others = || self.others.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = others().get(iss) {
            return Ok(known.clone());
        }
        if others().len() >= MAX_SOURCE_ISSUERS {
            return Err(format!(
                "its JWT names an issuer beyond the {MAX_SOURCE_ISSUERS} this issuer's claim sources may name"
            ));
        }
        let rules = JwtAuthenticator {
            issuer: iss.to_owned(),
            discovery_url: None,
            ..self.own.rules.clone()
        };
        let keys = KeySet::for_authenticator(&rules).await.map_err(|e| {
            format!(
                "the issuer {:?} its JWT names is unusable: {e}",
                jwks::truncated(iss)
            )
        })?;
        let issuer = Arc::new(SourceIssuer {
            rules,
            keys: Arc::new(keys),
        });
        Ok(others().entry(iss.to_owned()).or_insert(issuer).clone())
    }
}

/// An endpoint as messages show it: without its query and fragment, which may carry secrets.
fn without_query(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    jwks::truncated(shown.as_str())
}

/// kube-apiserver's `claimResolver.expand` up to the fetch: `_claim_names` must map names to
/// strings, and `_claim_sources` must exist and be an object of sources; the claim's source must
/// be one of them; a source without an `endpoint` is aggregated and skipped.
fn source(claims: &JsonObject, claim: &str) -> Result<Option<Endpoint>, TokenError> {
    let Some(names) = claims.get("_claim_names") else {
        return Ok(None);
    };
    // Go decodes `null` into a map as no entries.
    let names: HashMap<String, String> = match names {
        Value::Null => HashMap::new(),
        names => serde_json::from_value(names.clone())
            .map_err(|_| TokenError::Malformed("_claim_names is not an object of strings"))?,
    };
    let sources = match claims.get("_claim_sources") {
        None => return Err(TokenError::Malformed("_claim_names without _claim_sources")),
        Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(sources)) => sources.clone(),
        Some(_) => {
            return Err(TokenError::Malformed(
                "_claim_sources is not an object of claim sources",
            ));
        }
    };
    let Some(name) = names.get(claim) else {
        return Ok(None);
    };
    let source = sources.get(name).ok_or(TokenError::Malformed(
        "_claim_names refers to a source missing from _claim_sources",
    ))?;
    let url = source_field(source, "endpoint")?;
    let access_token = source_field(source, "access_token")?;
    // Decoded too, so that a source kube-apiserver cannot decode is refused here as well.
    source_field(source, "JWT")?;
    if url.is_empty() {
        return Ok(None);
    }
    Ok(Some(Endpoint { url, access_token }))
}

/// A field of a claim source as Go's decoder reads it into a string: the key matched exactly or
/// else without regard to case, `null` or absent as "", anything but a string refused.
fn source_field(source: &Value, field: &str) -> Result<String, TokenError> {
    let malformed = || TokenError::Malformed("_claim_sources is not an object of claim sources");
    let object = match source {
        Value::Null => return Ok(String::new()),
        Value::Object(object) => object,
        _ => return Err(malformed()),
    };
    let value = object.get(field).or_else(|| {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(field))
            .map(|(_, value)| value)
    });
    match value {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(malformed()),
    }
}

#[cfg(test)]
mod tests;
