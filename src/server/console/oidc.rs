//! The page's OIDC login client: authorization code flow with PKCE (S256), as a confidential
//! client (RFC 6749 section 4.1, RFC 7636, OIDC Core 3.1). The issuer's endpoints come from its
//! discovery document, fetched on the first login and kept; the client secret goes only to the
//! token endpoint, in the `Authorization` header.
//!
//! Verifying the ID token that comes back is not done here: the page hands it to the same
//! [`crate::oidc::verify::Verifier`] as `GET /kube-config`, and checks the nonce itself.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;
use url::Url;

use crate::{
    config::OidcConfig,
    oidc::authn_config::JwtAuthenticator,
    oidc::jwks::{self, IssuerError},
    oidc::token::IdToken,
};

/// Bytes of randomness in `state`, `nonce` and the PKCE verifier: 256 bits, as RFC 7636
/// recommends for the verifier.
const RANDOM_BYTES: usize = 32;

/// 256 random bits from the operating system, base64url without padding (43 characters, all
/// valid in a PKCE verifier, a URL query and a cookie).
pub(super) fn random_token() -> String {
    let mut bytes = [0u8; RANDOM_BYTES];
    getrandom::fill(&mut bytes).expect("the operating system's random number generator works");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCE S256 challenge of `verifier`.
pub(super) fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// What one login round trip needs to remember in the browser's login cookie.
pub(super) struct Pending {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

impl Pending {
    pub(super) fn new() -> Self {
        Self {
            state: random_token(),
            nonce: random_token(),
            verifier: random_token(),
        }
    }
}

/// The discovery document's fields the login uses.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
}

/// The endpoints the login uses, checked.
struct Endpoints {
    authorization_endpoint: Url,
    token_endpoint: Url,
}

/// Why a login could not be completed at the issuer.
#[derive(Debug, thiserror::Error)]
pub(super) enum LoginError {
    /// Not the user's fault: the issuer is down or answers nonsense.
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    /// The issuer refused the code (RFC 6749 5.2), e.g. `invalid_grant` for a used or expired
    /// code; the user can start again.
    #[error("the issuer refused the login: {0}")]
    Refused(String),
}

/// RFC 6749 5.1, the part the page uses.
#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
}

/// RFC 6749 5.2.
#[derive(Deserialize)]
struct TokenErrorResponse {
    error: String,
}

pub(super) struct LoginClient {
    oidc: OidcConfig,
    client_secret: String,
    redirect_url: Url,
    scopes: String,
    http: reqwest::Client,
    endpoints: OnceCell<Endpoints>,
}

impl LoginClient {
    /// Prepares the client without contacting the issuer, so the operator starts while Dex is
    /// down; discovery happens on the first login.
    pub(super) async fn new(
        oidc: &OidcConfig,
        client_secret: String,
        redirect_url: Url,
        scopes: &[String],
    ) -> Result<Self, IssuerError> {
        Ok(Self {
            http: jwks::issuer_client(&JwtAuthenticator::from_legacy(oidc).certificate_authority)
                .await?,
            oidc: oidc.clone(),
            client_secret,
            redirect_url,
            scopes: scopes.join(" "),
            endpoints: OnceCell::new(),
        })
    }

    async fn endpoints(&self) -> Result<&Endpoints, IssuerError> {
        self.endpoints
            .get_or_try_init(|| async {
                let url = Url::parse(&format!(
                    "{}/.well-known/openid-configuration",
                    self.oidc.issuer.trim_end_matches('/')
                ))
                .map_err(|e| IssuerError::Setup(format!("no discovery URL: {e}")))?;
                let response = self
                    .http
                    .get(url.clone())
                    .send()
                    .await
                    .map_err(|e| unreachable(&url, &e))?;
                let discovery: Discovery = ok_json(&url, response).await?;
                if discovery.issuer != self.oidc.issuer {
                    return Err(IssuerError::BadResponse {
                        url: url.to_string(),
                        detail: format!(
                            "it names the issuer {:?}, but the configured issuer is {:?}",
                            jwks::truncated(&discovery.issuer),
                            self.oidc.issuer
                        ),
                    });
                }
                let endpoint = |text: &str| {
                    Url::parse(text)
                        .ok()
                        .filter(|endpoint| endpoint.scheme() == self.oidc.issuer_url.scheme())
                        .ok_or_else(|| IssuerError::BadResponse {
                            url: url.to_string(),
                            detail: format!(
                                "{:?} is not a URL with the issuer's scheme",
                                jwks::truncated(text)
                            ),
                        })
                };
                Ok(Endpoints {
                    authorization_endpoint: endpoint(&discovery.authorization_endpoint)?,
                    token_endpoint: endpoint(&discovery.token_endpoint)?,
                })
            })
            .await
    }

    /// Where to send the browser to log in.
    pub(super) async fn authorization_url(&self, pending: &Pending) -> Result<Url, IssuerError> {
        let mut url = self.endpoints().await?.authorization_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.oidc.client_id)
            .append_pair("redirect_uri", self.redirect_url.as_str())
            .append_pair("scope", &self.scopes)
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &pkce_challenge(&pending.verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(url)
    }

    /// Trades the code for the ID token (not yet verified).
    pub(super) async fn exchange(&self, code: &str, verifier: &str) -> Result<IdToken, LoginError> {
        let url = &self.endpoints().await?.token_endpoint;
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", self.redirect_url.as_str())
            .append_pair("code_verifier", verifier)
            .finish();
        // client_secret_basic: RFC 6749 2.3.1 form-encodes both parts first.
        let encode =
            |part: &str| url::form_urlencoded::byte_serialize(part.as_bytes()).collect::<String>();
        let response = self
            .http
            .post(url.clone())
            .basic_auth(
                encode(&self.oidc.client_id),
                Some(encode(&self.client_secret)),
            )
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(url, &e))?;
        if response.status().is_client_error() {
            let refusal: Result<TokenErrorResponse, _> = jwks::json_body(url, response).await;
            return Err(LoginError::Refused(refusal.map_or_else(
                |_| "an error without an explanation".to_owned(),
                |refusal| jwks::truncated(&refusal.error),
            )));
        }
        let answer: TokenResponse = ok_json(url, response).await?;
        answer
            .id_token
            .map(IdToken::from)
            .ok_or_else(|| IssuerError::BadResponse {
                url: url.to_string(),
                detail: "the token response holds no id_token (is openid among the scopes?)".into(),
            })
            .map_err(LoginError::from)
    }
}

fn unreachable(url: &Url, error: &reqwest::Error) -> IssuerError {
    IssuerError::Unreachable {
        url: url.to_string(),
        detail: jwks::error_chain(error),
    }
}

async fn ok_json<T: serde::de::DeserializeOwned>(
    url: &Url,
    response: reqwest::Response,
) -> Result<T, IssuerError> {
    if !response.status().is_success() {
        return Err(IssuerError::BadResponse {
            url: url.to_string(),
            detail: format!("HTTP status {}", response.status()),
        });
    }
    jwks::json_body(url, response).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn random_values_are_long_and_distinct() {
        let pending = Pending::new();
        assert_eq!(pending.state.len(), 43);
        assert_ne!(pending.state, pending.nonce);
        assert_ne!(pending.nonce, pending.verifier);
        assert_ne!(Pending::new().state, pending.state);
    }
}
