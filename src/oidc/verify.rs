//! Verification of ID tokens with kube-apiserver's semantics: the security core of the operator.
//!
//! Whatever passes here is written into a kubeconfig, and the kubeconfig is only worth having if
//! kube-apiserver accepts its token as the same user. So the checks are kube-apiserver's, for its
//! `--oidc-*` flags and its `--authentication-config` alike (both are a list of
//! [`JwtAuthenticator`]s, see [`authn_config`]), read from
//! `k8s.io/apiserver/plugin/pkg/authenticator/token/oidc` and the go-oidc v2 verifier it vendors,
//! no looser and, by default, no stricter:
//! - A token goes to the issuer whose URL equals its unverified `iss`, byte for byte, as
//!   kube-apiserver routes; a token of no configured issuer is `WrongIssuer`, naming its `iss`.
//! - `aud` must contain one of the issuer's audiences; `azp` is not looked at.
//! - `exp` has no leeway: a token is refused from the second it expires.
//! - `nbf`, when present, may be up to [`NOT_BEFORE_SKEW`] in the future; `iat` is not checked.
//! - With the username claim `email`, an `email_verified` claim, if present, must be `true`.
//! - Groups may be one string or a list of strings; a `null` claim means none.
//! - A token without `kid` is checked against every published key, as go-oidc does.
//! - Then the mappings (username, groups, uid, extra; a claim with a prefix or CEL), required
//!   claims, claim validation rules and user validation rules, in kube-apiserver's order.
//!
//! Checks kube-apiserver does not make are in [`crate::config::Strictness`], off by default. What is always
//! refused even though kube-apiserver might accept it: algorithms outside the configured list
//! (including `none` and HMAC, reported as `BadSignature`), `crit` headers, keys named by the token
//! itself (`jku`, `x5u`, `jwk`, `x5c` are ignored), tokens over 16 KiB and times beyond the year
//! 262143. A distributed groups claim is fetched as kube-apiserver fetches it
//! ([`super::distributed`]).
//!
//! Every refusal names a reason a person can act on without ever echoing the token (a bearer
//! credential) back.
//!
//! This file keeps the verifier's lifecycle (issuers, keys, reloading the file) and the order of
//! the checks; the token's shape and times are in [`super::jwt`], its signature in
//! [`super::signature`], and what its claims say in [`super::claims`].

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use tracing::{debug, info, warn};

use super::{
    authn_config::{self, JwtAuthenticator},
    claims::{self, GOOGLE_ISSUER, GOOGLE_ISSUER_NO_SCHEME},
    distributed::DistributedClaims,
    jwks::{self, IssuerError, KeySet},
    jwt::{Decoded, Payload, check_shape},
    signature::signed_payload,
    token::{CREDENTIAL_ID_KEY, IdToken, Identity, TokenError},
};
use crate::config::{OidcConfig, Strictness};

/// How soon to try again after a failed background refresh, so readiness follows Dex quickly.
const RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// Verifies ID tokens against the configured issuers (one with the legacy settings, up to 64 with
/// an authentication configuration), each with its own cached keys.
pub struct Verifier {
    issuers: RwLock<Arc<Issuers>>,
    /// Counts the configurations put in force by reloads, so that what was decided under an
    /// earlier one (cached verdicts, issued requests) is decided again.
    generation: tokio::sync::watch::Sender<u64>,
    /// The authentication configuration file, when that is where the issuers come from.
    file: Option<ConfigFile>,
}

struct ConfigFile {
    path: PathBuf,
    strictness: Strictness,
    /// The digest of the last content refused and why, so an invalid file is reported once, not
    /// at every poll, and shown by `/metrics`, `/readyz` and a Warning Event while it is on disk.
    refused: tokio::sync::watch::Sender<Option<RefusedEdit>>,
    /// Reload attempts of changed content, as kube-apiserver's `automatic_reloads_total` counts
    /// them: `[succeeded, failed]`.
    reloads: [AtomicU64; 2],
}

/// What the operator holds of its authentication configuration, for the metrics that let an
/// alert compare it with the API server's (same names, same hashes) and for `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigurationState {
    /// `sha256:<hex>` of the file in force; none with the flat settings.
    pub digest: Option<String>,
    /// Why the file on disk, which differs from the one in force, was refused.
    pub rejected: Option<String>,
    pub reloads_succeeded: u64,
    pub reloads_failed: u64,
    /// Each issuer URL with the `sha256:<hex>` of the last JWKS document fetched from it.
    pub key_sets: Vec<(String, String)>,
}

/// A changed authentication configuration file that was refused, the last good one staying in
/// force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedEdit {
    /// `sha256:<hex>` of the refused content, or why it could not be read.
    pub digest: String,
    /// Why it was refused: the field and kube-apiserver's message, never a token.
    pub problem: String,
}

/// Why the operator cannot start with its authentication configuration file.
#[derive(thiserror::Error, Debug)]
pub enum AuthenticationConfigError {
    #[error("the authentication configuration {} is invalid: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error(transparent)]
    Issuer(#[from] IssuerError),
}

/// One generation of the configuration: replaced whole on a reload, so a token is judged by one
/// configuration from start to end.
struct Issuers {
    issuers: Vec<Arc<Issuer>>,
    /// `sha256:<hex>` of the file it was read from.
    digest: Option<String>,
}

struct Issuer {
    rules: JwtAuthenticator,
    keys: Arc<KeySet>,
    /// kube-apiserver's claim resolver, when the groups are mapped from a claim.
    distributed: Option<DistributedClaims>,
}

impl Issuers {
    /// The issuer whose URL equals the token's unverified `iss`, as kube-apiserver routes.
    fn find(&self, iss: Option<&str>) -> Option<Arc<Issuer>> {
        self.issuers
            .iter()
            .find(|issuer| Some(issuer.rules.issuer.as_str()) == iss)
            .cloned()
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self
            .issuers
            .iter()
            .map(|i| i.rules.issuer.as_str())
            .collect();
        names.join(", ")
    }
}

impl Verifier {
    /// Does not contact the issuer: the operator must be able to start while Dex is down. Keys
    /// are fetched by [`Verifier::load`], [`Verifier::keep_keys_fresh`], or the first token.
    pub async fn new(config: OidcConfig) -> Result<Self, IssuerError> {
        let rules = JwtAuthenticator::from_legacy(&config);
        let keys = KeySet::for_authenticator(&rules).await?;
        Ok(Self::with_issuers(
            vec![Issuer::new(rules, keys)],
            None,
            None,
        ))
    }

    /// For callers that already hold the keys (see [`KeySet::from_static`]).
    pub fn with_keys(config: OidcConfig, keys: KeySet) -> Self {
        let rules = JwtAuthenticator::from_legacy(&config);
        Self::with_issuers(vec![Issuer::new(rules, keys)], None, None)
    }

    /// The issuers of an `AuthenticationConfiguration` file; a file kube-apiserver would refuse is
    /// refused here too, with one line naming the field.
    pub async fn from_authentication_config(
        path: &Path,
        strictness: Strictness,
    ) -> Result<Self, AuthenticationConfigError> {
        let loaded = authn_config::load(path, strictness).map_err(|problem| {
            AuthenticationConfigError::Invalid {
                path: path.to_owned(),
                problem,
            }
        })?;
        let issuers = issuers_for(loaded.authenticators).await?;
        info!(path = %path.display(), digest = %loaded.digest, "loaded the authentication configuration");
        Ok(Self::with_issuers(
            issuers,
            Some(loaded.digest),
            Some(ConfigFile {
                path: path.to_owned(),
                strictness,
                refused: tokio::sync::watch::Sender::new(None),
                reloads: [AtomicU64::new(0), AtomicU64::new(0)],
            }),
        ))
    }

    /// The issuers of an authentication configuration given as compiled rules and static keys,
    /// for tests: no file, no network.
    pub fn with_authenticators(issuers: Vec<(JwtAuthenticator, KeySet)>) -> Self {
        let issuers = issuers
            .into_iter()
            .map(|(rules, keys)| Issuer::new(rules, keys))
            .collect();
        Self::with_issuers(issuers, None, None)
    }

    fn with_issuers(
        issuers: Vec<Issuer>,
        digest: Option<String>,
        file: Option<ConfigFile>,
    ) -> Self {
        Self {
            issuers: RwLock::new(Arc::new(Issuers {
                issuers: issuers.into_iter().map(Arc::new).collect(),
                digest,
            })),
            generation: tokio::sync::watch::Sender::new(0),
            file,
        }
    }

    fn current(&self) -> Arc<Issuers> {
        self.issuers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Fetches the keys unless they are loaded already; for start-up, to surface a wrong issuer
    /// URL or CA in the logs at once rather than with the first user's token.
    pub async fn load(&self) -> Result<(), IssuerError> {
        let mut result = Ok(());
        for issuer in &self.current().issuers {
            if !issuer.keys.is_loaded()
                && let Err(error) = issuer.keys.refresh().await
            {
                result = Err(error);
            }
        }
        result
    }

    /// Fetches every issuer's keys now; previous keys stay in use if an issuer is unreachable.
    pub async fn refresh_keys(&self) -> Result<(), IssuerError> {
        let mut result = Ok(());
        for issuer in &self.current().issuers {
            if let Err(error) = issuer.keys.refresh().await {
                result = Err(error);
            }
        }
        result
    }

    /// Runs forever: refreshes the keys every [`jwks::REFRESH_INTERVAL`], or sooner after a
    /// failure. Spawn it once; rotations are then picked up before tokens signed with a new key
    /// arrive.
    pub async fn keep_keys_fresh(self: Arc<Self>) {
        loop {
            let wait = match self.refresh_keys().await {
                Ok(()) => jwks::REFRESH_INTERVAL,
                Err(_) => RETRY_INTERVAL,
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Runs forever when the issuers come from a file: every `interval`, a changed file is
    /// validated and replaces the configuration; an invalid one is logged and ignored, keeping
    /// the last good configuration, as kube-apiserver does.
    pub async fn watch_authentication_config(self: Arc<Self>, interval: Duration) {
        let Some(file) = &self.file else { return };
        loop {
            tokio::time::sleep(interval).await;
            if let Err(problem) = self.reload(file).await {
                warn!(path = %file.path.display(), %problem, "ignoring the changed authentication configuration; keeping the previous one");
            }
        }
    }

    /// One reload attempt: `Ok` also when nothing changed.
    async fn reload(&self, file: &ConfigFile) -> Result<(), String> {
        let read = tokio::fs::read(&file.path).await;
        // What identifies this content (or this failure to read it), to report it only once.
        let seen = match &read {
            Ok(data) => authn_config::digest(data),
            Err(error) => format!("unreadable ({})", error.kind()),
        };
        if self.current().digest.as_ref() == Some(&seen) {
            // Back to the configuration in force: a later bad edit is news again.
            file.refused
                .send_if_modified(|refused| refused.take().is_some());
            return Ok(());
        }
        if file
            .refused
            .borrow()
            .as_ref()
            .is_some_and(|refused| refused.digest == seen)
        {
            return Ok(());
        }
        let issuers = match read {
            Err(error) => Err(format!("cannot read it: {error}")),
            Ok(data) => match authn_config::parse(&data, file.strictness) {
                Ok(loaded) => issuers_for(loaded.authenticators)
                    .await
                    .map_err(|e| format!("{seen}: {e}")),
                Err(problem) => Err(format!("{seen} is invalid: {problem}")),
            },
        };
        let issuers = match issuers {
            Ok(issuers) => issuers,
            Err(problem) => {
                file.refused.send_replace(Some(RefusedEdit {
                    digest: seen,
                    problem: problem.clone(),
                }));
                file.reloads[1].fetch_add(1, Ordering::Relaxed);
                return Err(problem);
            }
        };
        file.refused
            .send_if_modified(|refused| refused.take().is_some());
        file.reloads[0].fetch_add(1, Ordering::Relaxed);
        for issuer in &issuers {
            // Best effort: an unreachable issuer is retried by `keep_keys_fresh` and by tokens.
            let _ = issuer.keys.refresh().await;
        }
        *self
            .issuers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Issuers {
            issuers: issuers.into_iter().map(Arc::new).collect(),
            digest: Some(seen.clone()),
        });
        self.generation.send_modify(|generation| *generation += 1);
        info!(path = %file.path.display(), digest = %seen, "reloaded the authentication configuration");
        Ok(())
    }

    /// Which configuration is in force: 0 at start, one more after each reload.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Follows [`Verifier::generation`], for what must be decided again after a reload.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Follows the refused edit of the file, if any (`None` once the file on disk is in force
    /// again); `None` with the flat settings, which are not reloaded.
    pub fn refused_edits(&self) -> Option<tokio::sync::watch::Receiver<Option<RefusedEdit>>> {
        self.file.as_ref().map(|file| file.refused.subscribe())
    }

    /// The configuration in force, the refused one on disk if any, and each issuer's key set.
    pub fn configuration_state(&self) -> ConfigurationState {
        let current = self.current();
        let key_sets = current
            .issuers
            .iter()
            .filter_map(|issuer| {
                Some((issuer.rules.issuer.clone(), issuer.keys.document_digest()?))
            })
            .collect();
        let Some(file) = &self.file else {
            return ConfigurationState {
                key_sets,
                ..ConfigurationState::default()
            };
        };
        ConfigurationState {
            digest: current.digest.clone(),
            rejected: file
                .refused
                .borrow()
                .as_ref()
                .map(|refused| refused.problem.clone()),
            reloads_succeeded: file.reloads[0].load(Ordering::Relaxed),
            reloads_failed: file.reloads[1].load(Ordering::Relaxed),
            key_sets,
        }
    }

    /// Every extra field's key an identity can carry under the configuration in force: those
    /// `claimMappings.extra` maps and the credential ID from `jti`. The proxy impersonates each,
    /// and must be granted each by name.
    pub fn extra_keys(&self) -> BTreeSet<String> {
        self.current()
            .issuers
            .iter()
            .flat_map(|issuer| issuer.rules.extra.iter().map(|(key, _)| key.clone()))
            .chain([CREDENTIAL_ID_KEY.to_owned()])
            .collect()
    }

    /// Readiness: some issuer's keys are loaded, so some tokens can be judged. One issuer being
    /// down does not take the operator away from the users of the others: its tokens get
    /// `IssuerUnavailable` (503 with `Retry-After`) until its keys load.
    pub fn is_ready(&self) -> bool {
        self.current()
            .issuers
            .iter()
            .any(|issuer| issuer.keys.is_loaded())
    }

    /// The only way from a token to an [`Identity`]: signature, issuer, audience and time checks
    /// first, then the claims that name the user.
    pub async fn verify(&self, token: &IdToken) -> Result<Identity, TokenError> {
        let result = self.verify_inner(token.expose()).await;
        if let Err(error) = &result {
            debug!(reason = error.reason(), %error, "ID token refused");
        }
        result
    }

    async fn verify_inner(&self, token: &str) -> Result<Identity, TokenError> {
        let decoded = check_shape(token)?;
        let issuers = self.current();
        let iss = match decoded.payload.registered.get("iss") {
            None => return Err(TokenError::MissingClaim("iss".into())),
            // Google's legacy `iss` without a scheme, which kube-apiserver coalesces.
            Some(Value::String(iss)) if iss == GOOGLE_ISSUER_NO_SCHEME => Some(GOOGLE_ISSUER),
            Some(Value::String(iss)) => Some(iss.as_str()),
            Some(_) => None,
        };
        let Some(issuer) = issuers.find(iss) else {
            return Err(TokenError::WrongIssuer {
                expected: issuers.names(),
                found: iss.map_or_else(|| "<not a string>".into(), jwks::truncated),
            });
        };
        issuer.verify(decoded).await
    }
}

/// Key sets for freshly loaded authenticators (not fetched yet).
async fn issuers_for(authenticators: Vec<JwtAuthenticator>) -> Result<Vec<Issuer>, IssuerError> {
    let mut issuers = Vec::with_capacity(authenticators.len());
    for rules in authenticators {
        let keys = KeySet::for_authenticator(&rules).await?;
        issuers.push(Issuer::new(rules, keys));
    }
    Ok(issuers)
}

impl Issuer {
    fn new(rules: JwtAuthenticator, keys: KeySet) -> Self {
        let keys = Arc::new(keys);
        let distributed = DistributedClaims::new(&rules, keys.clone());
        Self {
            rules,
            keys,
            distributed,
        }
    }

    /// `decoded` is the token's segments, not yet verified. A distributed groups claim is
    /// resolved after the token's own times and audience hold, as kube-apiserver resolves it.
    async fn verify(&self, decoded: Decoded<'_>) -> Result<Identity, TokenError> {
        let Payload {
            mut claims,
            registered,
        } = signed_payload(&self.rules, &self.keys, decoded).await?;
        let validity = claims::validity(&self.rules, &claims, &registered)?;
        if let Some(distributed) = &self.distributed {
            distributed.expand(&mut claims).await?;
        }
        claims::identity(&self.rules, &claims, validity)
    }
}

#[cfg(test)]
mod config_tests;

#[cfg(test)]
pub(crate) mod tests {
    use std::{collections::BTreeMap, sync::LazyLock};

    use aws_lc_rs::{
        rand::SystemRandom,
        signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair},
    };
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    use chrono::{DateTime, Utc};
    use jsonwebtoken::{
        Algorithm, EncodingKey, Header,
        jwk::{Jwk, JwkSet, PublicKeyUse},
    };
    use serde_json::json;

    use super::*;
    use crate::config::Strictness;

    const ISSUER: &str = "https://dex.example.com/dex";
    const CLIENT: &str = "kubeconfig-operator";
    const KID: &str = "issuer-rsa";
    const EC_KID: &str = "issuer-ec";

    struct TestKey {
        encoding: EncodingKey,
        jwk: Jwk,
        /// SubjectPublicKeyInfo DER of the public key (RSA only), for key-confusion attacks.
        public_der: Vec<u8>,
    }

    fn with_kid(mut jwk: Jwk, kid: &str) -> Jwk {
        jwk.common.key_id = Some(kid.into());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk
    }

    fn rsa_key(kid: &str) -> TestKey {
        let key = crate::testing::TestIssuer::generate(kid);
        TestKey {
            encoding: key.encoding,
            jwk: key.jwk,
            public_der: key.public_der,
        }
    }

    fn ec_key(kid: &str) -> TestKey {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
        let jwk = with_kid(
            Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap(),
            kid,
        );
        TestKey {
            encoding,
            jwk,
            public_der: Vec::new(),
        }
    }

    // RSA key generation is slow in debug builds: once per test binary.
    static ISSUER_KEY: LazyLock<TestKey> = LazyLock::new(|| rsa_key(KID));
    static ATTACKER_KEY: LazyLock<TestKey> = LazyLock::new(|| rsa_key("attacker"));
    static ISSUER_EC_KEY: LazyLock<TestKey> = LazyLock::new(|| ec_key(EC_KID));

    fn config(algorithms: &[Algorithm]) -> OidcConfig {
        OidcConfig {
            client_id: CLIENT.into(),
            username_prefix: "oidc:".into(),
            groups_prefix: "oidc:".into(),
            ..OidcConfig::for_tests(ISSUER, algorithms)
        }
    }

    fn verifier_for(algorithms: &[Algorithm]) -> Verifier {
        let jwks = JwkSet {
            keys: vec![ISSUER_KEY.jwk.clone(), ISSUER_EC_KEY.jwk.clone()],
        };
        Verifier::with_keys(config(algorithms), KeySet::from_static(&jwks, algorithms))
    }

    fn verifier() -> Verifier {
        verifier_for(&[Algorithm::RS256])
    }

    /// A verifier with some of the stricter-than-kube-apiserver checks switched on.
    fn strict_verifier(strictness: Strictness) -> Verifier {
        let jwks = JwkSet {
            keys: vec![ISSUER_KEY.jwk.clone()],
        };
        let cfg = OidcConfig {
            strictness,
            ..config(&[Algorithm::RS256])
        };
        Verifier::with_keys(cfg, KeySet::from_static(&jwks, &[Algorithm::RS256]))
    }

    fn now() -> i64 {
        Utc::now().timestamp()
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER,
            "sub": "CiQwOGE4Njg0Yi1kYjg4",
            "aud": CLIENT,
            "exp": now() + 600,
            "iat": now() - 5,
            "email": "jane@example.com",
            "email_verified": true,
            "groups": ["dev", "ops"],
        })
    }

    fn with(mut claims: Value, name: &str, value: Value) -> Value {
        claims[name] = value;
        claims
    }

    fn without(mut claims: Value, name: &str) -> Value {
        claims.as_object_mut().unwrap().remove(name);
        claims
    }

    fn header(alg: Algorithm, kid: &str) -> Header {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        header
    }

    fn sign_with(header: &Header, claims: &Value, key: &EncodingKey) -> String {
        jsonwebtoken::encode(header, claims, key).unwrap()
    }

    fn sign(claims: &Value) -> String {
        sign_with(&header(Algorithm::RS256, KID), claims, &ISSUER_KEY.encoding)
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A hand-assembled token, for headers and payloads jsonwebtoken would not produce.
    fn raw(header: &Value, payload: &[u8], signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload),
            b64(signature)
        )
    }

    /// A real RS256 signature by the issuer over an arbitrary payload.
    fn signed_raw(header: &Value, payload: &[u8]) -> String {
        let message = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &ISSUER_KEY.encoding, Algorithm::RS256)
                .unwrap();
        format!("{message}.{signature}")
    }

    fn pem(der: &[u8]) -> Vec<u8> {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|line| std::str::from_utf8(line).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
        .into_bytes()
    }

    async fn check(verifier: &Verifier, token: &str) -> Result<Identity, TokenError> {
        verifier.verify(&IdToken::from(token.to_owned())).await
    }

    fn reason(result: &Result<Identity, TokenError>) -> &'static str {
        match result {
            Ok(_) => "Accepted",
            Err(error) => error.reason(),
        }
    }

    /// Every hostile token of the threat model, with the reason it must be refused for. Also
    /// checks that no refusal message repeats any part of the token.
    #[tokio::test]
    async fn hostile_tokens_are_refused_for_the_right_reason() {
        let verifier = verifier();
        let good = sign(&claims());
        let [good_header, good_payload, good_signature]: [&str; 3] =
            good.split('.').collect::<Vec<_>>().try_into().unwrap();
        let attacker = &ATTACKER_KEY;
        let public_der = &ISSUER_KEY.public_der;
        let attacker_jwk = serde_json::to_value(&attacker.jwk).unwrap();

        let mut jku = header(Algorithm::RS256, "attacker");
        jku.jku = Some("https://attacker.example/jwks.json".into());
        let mut x5u = header(Algorithm::RS256, "attacker");
        x5u.x5u = Some("https://attacker.example/cert.pem".into());
        let mut embedded = header(Algorithm::RS256, "attacker");
        embedded.jwk = Some(attacker.jwk.clone());
        let mut jku_real_kid = header(Algorithm::RS256, KID);
        jku_real_kid.jku = Some("https://attacker.example/jwks.json".into());
        let mut embedded_real_kid = header(Algorithm::RS256, KID);
        embedded_real_kid.jwk = Some(attacker.jwk.clone());
        let mut x5c_real_kid = header(Algorithm::RS256, KID);
        x5c_real_kid.x5c = Some(vec![
            base64::engine::general_purpose::STANDARD.encode(public_der),
        ]);
        let mut no_kid = Header::new(Algorithm::RS256);
        no_kid.kid = None;

        let several_auds = with(claims(), "aud", json!([CLIENT, "other-client"]));
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "alg none",
                raw(
                    &json!({"alg": "none", "kid": KID}),
                    claims().to_string().as_bytes(),
                    b"",
                ),
                "BadSignature",
            ),
            (
                "HS256 keyed with the issuer's public key (DER)",
                sign_with(
                    &header(Algorithm::HS256, KID),
                    &claims(),
                    &EncodingKey::from_secret(public_der),
                ),
                "BadSignature",
            ),
            (
                "HS256 keyed with the issuer's public key (PEM)",
                sign_with(
                    &header(Algorithm::HS256, KID),
                    &claims(),
                    &EncodingKey::from_secret(&pem(public_der)),
                ),
                "BadSignature",
            ),
            (
                "RS256 by another key under the issuer's kid",
                sign_with(
                    &header(Algorithm::RS256, KID),
                    &claims(),
                    &attacker.encoding,
                ),
                "BadSignature",
            ),
            (
                "unknown kid",
                sign_with(
                    &header(Algorithm::RS256, "attacker"),
                    &claims(),
                    &attacker.encoding,
                ),
                "UnknownKey",
            ),
            (
                "no kid, signed by the issuer (go-oidc tries every key)",
                sign_with(&no_kid, &claims(), &ISSUER_KEY.encoding),
                "Accepted",
            ),
            (
                "no kid, signed by another key",
                sign_with(&no_kid, &claims(), &attacker.encoding),
                "BadSignature",
            ),
            (
                "kid with path text",
                sign_with(
                    &header(Algorithm::RS256, "../../etc/passwd"),
                    &claims(),
                    &attacker.encoding,
                ),
                "UnknownKey",
            ),
            (
                "kid with URL text",
                sign_with(
                    &header(Algorithm::RS256, "https://attacker.example/jwks.json"),
                    &claims(),
                    &attacker.encoding,
                ),
                "UnknownKey",
            ),
            (
                "jku to attacker keys",
                sign_with(&jku, &claims(), &attacker.encoding),
                "UnknownKey",
            ),
            (
                "x5u to attacker cert",
                sign_with(&x5u, &claims(), &attacker.encoding),
                "UnknownKey",
            ),
            (
                "embedded attacker jwk",
                sign_with(&embedded, &claims(), &attacker.encoding),
                "UnknownKey",
            ),
            (
                "jku with the issuer's kid",
                sign_with(&jku_real_kid, &claims(), &attacker.encoding),
                "BadSignature",
            ),
            (
                "embedded jwk with the issuer's kid",
                sign_with(&embedded_real_kid, &claims(), &attacker.encoding),
                "BadSignature",
            ),
            // A public key is no certificate: go-jose refuses the header before any signature.
            (
                "x5c with the issuer's kid",
                sign_with(&x5c_real_kid, &claims(), &attacker.encoding),
                "Malformed",
            ),
            (
                "raw embedded jwk header",
                raw(
                    &json!({"alg": "RS256", "kid": KID, "jwk": attacker_jwk}),
                    claims().to_string().as_bytes(),
                    b"sig",
                ),
                "BadSignature",
            ),
            (
                "expired",
                sign(&with(claims(), "exp", json!(now() - 3600))),
                "Expired",
            ),
            (
                "nbf in the future",
                sign(&with(claims(), "nbf", json!(now() + 3600))),
                "NotYetValid",
            ),
            (
                "iat in the future (kube-apiserver does not check iat)",
                sign(&with(claims(), "iat", json!(now() + 3600))),
                "Accepted",
            ),
            (
                "iat not a time",
                sign(&with(claims(), "iat", json!("yesterday"))),
                "MissingClaim",
            ),
            (
                "wrong iss",
                sign(&with(claims(), "iss", json!("https://evil.example/dex"))),
                "WrongIssuer",
            ),
            (
                "iss with an added trailing slash",
                sign(&with(claims(), "iss", json!(format!("{ISSUER}/")))),
                "WrongIssuer",
            ),
            (
                "iss as an array",
                sign(&with(
                    claims(),
                    "iss",
                    json!([ISSUER, "https://evil.example"]),
                )),
                "WrongIssuer",
            ),
            (
                "missing iss",
                sign(&without(claims(), "iss")),
                "MissingClaim",
            ),
            (
                "missing aud",
                sign(&without(claims(), "aud")),
                "MissingClaim",
            ),
            (
                "missing exp",
                sign(&without(claims(), "exp")),
                "MissingClaim",
            ),
            (
                "foreign aud",
                sign(&with(claims(), "aud", json!("another-client"))),
                "WrongAudience",
            ),
            (
                "several audiences without azp",
                sign(&several_auds),
                "Accepted",
            ),
            (
                "several audiences, azp the other client",
                sign(&with(several_auds.clone(), "azp", json!("other-client"))),
                "Accepted",
            ),
            (
                "aud a list holding a number",
                sign(&with(claims(), "aud", json!([CLIENT, 7]))),
                "Malformed",
            ),
            (
                "sub a number",
                sign(&with(claims(), "sub", json!(7))),
                "Malformed",
            ),
            (
                "several audiences with the right azp",
                sign(&with(several_auds.clone(), "azp", json!(CLIENT))),
                "Accepted",
            ),
            (
                "bad base64 in the header",
                format!("{good_header}*.{good_payload}.{good_signature}"),
                "Malformed",
            ),
            (
                "bad base64 in the payload",
                format!("{good_header}.{good_payload}*.{good_signature}"),
                "Malformed",
            ),
            (
                "bad base64 in the signature",
                format!("{good_header}.{good_payload}.{good_signature}*"),
                "Malformed",
            ),
            (
                "impossible base64 length",
                format!("{good_header}.{good_payload}.{good_signature}a"),
                "Malformed",
            ),
            (
                "two segments",
                format!("{good_header}.{good_payload}"),
                "Malformed",
            ),
            (
                "four segments",
                format!("{good}.{good_signature}"),
                "Malformed",
            ),
            ("empty string", String::new(), "Malformed"),
            (
                "64 KiB token",
                format!("{good_header}.{}.{good_signature}", "A".repeat(64 * 1024)),
                "Malformed",
            ),
            (
                "header not JSON",
                raw_header_bytes(b"not json", good_payload, good_signature),
                "Malformed",
            ),
            (
                "payload not JSON",
                signed_raw(&json!({"alg": "RS256", "kid": KID}), b"not json"),
                "Malformed",
            ),
            (
                "payload a JSON array",
                signed_raw(&json!({"alg": "RS256", "kid": KID}), b"[1,2,3]"),
                "Malformed",
            ),
            (
                "kid not a string",
                raw(
                    &json!({"alg": "RS256", "kid": 7}),
                    claims().to_string().as_bytes(),
                    b"sig",
                ),
                "Malformed",
            ),
            (
                "crit header",
                raw(
                    &json!({"alg": "RS256", "kid": KID, "crit": ["exp"]}),
                    claims().to_string().as_bytes(),
                    b"sig",
                ),
                "Malformed",
            ),
            (
                "username claim missing",
                sign(&without(claims(), "email")),
                "MissingClaim",
            ),
            (
                "username claim a number",
                sign(&with(claims(), "email", json!(42))),
                "MissingClaim",
            ),
            (
                "username claim empty (kube-apiserver accepts it)",
                sign(&with(claims(), "email", json!(""))),
                "Accepted",
            ),
            (
                "username with control characters (kube-apiserver accepts them)",
                sign(&with(claims(), "email", json!("jane\n@example.com"))),
                "Accepted",
            ),
            (
                "email_verified false",
                sign(&with(claims(), "email_verified", json!(false))),
                "MissingClaim",
            ),
            (
                "email_verified a string",
                sign(&with(claims(), "email_verified", json!("true"))),
                "MissingClaim",
            ),
            (
                "email_verified null",
                sign(&with(claims(), "email_verified", Value::Null)),
                "MissingClaim",
            ),
            (
                "ES256 when only RS256 is allowed",
                sign_with(
                    &header(Algorithm::ES256, EC_KID),
                    &claims(),
                    &ISSUER_EC_KEY.encoding,
                ),
                "BadSignature",
            ),
            (
                "groups a number",
                sign(&with(claims(), "groups", json!(7))),
                "MissingClaim",
            ),
            (
                "groups an array with a number",
                sign(&with(claims(), "groups", json!(["dev", 7]))),
                "MissingClaim",
            ),
            ("a valid RS256 token", good.clone(), "Accepted"),
        ];

        let mut failures = Vec::new();
        for (name, token, expected) in &cases {
            let result = check(&verifier, token).await;
            if reason(&result) != *expected {
                failures.push(format!("{name}: expected {expected}, got {result:?}"));
            }
            if let Err(error) = &result {
                for shown in [error.to_string(), format!("{error:?}")] {
                    if repeats_token_text(&shown, token) {
                        failures.push(format!("{name}: the message repeats token text: {shown}"));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Whether `message` contains a segment of `token` or any 12 consecutive characters of it.
    fn repeats_token_text(message: &str, token: &str) -> bool {
        let segments = token.split('.').filter(|segment| segment.len() >= 8);
        let chars: Vec<char> = message.chars().collect();
        segments
            .into_iter()
            .any(|segment| message.contains(segment))
            || chars
                .windows(12)
                .any(|window| token.contains(&window.iter().collect::<String>()))
    }

    fn raw_header_bytes(header: &[u8], payload: &str, signature: &str) -> String {
        format!("{}.{payload}.{signature}", b64(header))
    }

    #[tokio::test]
    async fn a_valid_token_yields_the_identity() {
        let exp = now() + 600;
        let iat = now() - 5;
        let token = sign(&with(with(claims(), "exp", json!(exp)), "iat", json!(iat)));
        let identity = check(&verifier(), &token).await.unwrap();
        assert_eq!(
            identity,
            Identity {
                username: "oidc:jane@example.com".into(),
                groups: vec!["oidc:dev".into(), "oidc:ops".into()],
                expires_at: DateTime::from_timestamp(exp, 0).unwrap(),
                issued_at: DateTime::from_timestamp(iat, 0),
                uid: String::new(),
                extra: BTreeMap::new(),
            }
        );
    }

    #[tokio::test]
    async fn groups_as_a_string_is_one_group_and_absent_is_none() {
        let verifier = verifier();
        let one = check(&verifier, &sign(&with(claims(), "groups", json!("admins"))))
            .await
            .unwrap();
        assert_eq!(one.groups, vec!["oidc:admins".to_owned()]);
        let none = check(&verifier, &sign(&without(claims(), "groups")))
            .await
            .unwrap();
        assert!(none.groups.is_empty());
    }

    #[tokio::test]
    async fn email_verified_may_be_absent_and_other_claims_need_no_verification() {
        let verifier = verifier();
        let token = sign(&without(claims(), "email_verified"));
        assert!(check(&verifier, &token).await.is_ok());

        let mut cfg = config(&[Algorithm::RS256]);
        cfg.username_claim = "sub".into();
        let jwks = JwkSet {
            keys: vec![ISSUER_KEY.jwk.clone()],
        };
        let by_sub = Verifier::with_keys(cfg, KeySet::from_static(&jwks, &[Algorithm::RS256]));
        let token = sign(&with(claims(), "email_verified", json!(false)));
        assert_eq!(
            check(&by_sub, &token).await.unwrap().username,
            "oidc:CiQwOGE4Njg0Yi1kYjg4"
        );
    }

    #[tokio::test]
    async fn expired_says_when() {
        let exp = now() - 3600;
        let error = check(&verifier(), &sign(&with(claims(), "exp", json!(exp))))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            TokenError::Expired {
                expired_at: DateTime::from_timestamp(exp, 0)
            }
        );
    }

    #[tokio::test]
    async fn es256_is_accepted_when_allowed_but_never_with_an_rsa_key() {
        let verifier = verifier_for(&[Algorithm::RS256, Algorithm::ES256]);
        let token = sign_with(
            &header(Algorithm::ES256, EC_KID),
            &claims(),
            &ISSUER_EC_KEY.encoding,
        );
        assert!(check(&verifier, &token).await.is_ok());

        // ES256 header naming the RSA key: the key type does not fit the algorithm.
        let token = sign_with(
            &header(Algorithm::ES256, KID),
            &claims(),
            &ISSUER_EC_KEY.encoding,
        );
        assert_eq!(
            check(&verifier, &token).await.unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[tokio::test]
    async fn hmac_is_refused_even_if_configured() {
        // Config validation forbids HMAC; this guards against that check ever going missing.
        let verifier = verifier_for(&[Algorithm::RS256, Algorithm::HS256]);
        let secret = EncodingKey::from_secret(&ISSUER_KEY.public_der);
        let token = sign_with(&header(Algorithm::HS256, KID), &claims(), &secret);
        assert_eq!(
            check(&verifier, &token).await.unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[tokio::test]
    async fn an_unreachable_issuer_is_reported_as_such() {
        let mut cfg = config(&[Algorithm::RS256]);
        // Nothing listens on port 1; the connection is refused at once.
        cfg.issuer = "http://127.0.0.1:1/dex".into();
        cfg.issuer_url = url::Url::parse(&cfg.issuer).unwrap();
        let verifier = Verifier::new(cfg).await.unwrap();
        assert!(!verifier.is_ready());
        let token = sign(&with(claims(), "iss", json!("http://127.0.0.1:1/dex")));
        let error = check(&verifier, &token).await.unwrap_err();
        assert_eq!(error.reason(), "IssuerUnavailable", "{error}");
        assert!(verifier.load().await.is_err());
        assert!(!verifier.is_ready());
    }

    #[test]
    fn the_token_never_shows_in_debug_or_display() {
        let token = IdToken::from("eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl".to_owned());
        assert_eq!(format!("{token:?}"), "IdToken(<redacted, 34 bytes>)");
        assert!(!token.to_string().contains("eyJ"));
        assert_eq!(token.expose(), "eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl");
    }

    #[tokio::test]
    async fn unknown_kids_are_shortened_to_printable_text() {
        let kid = format!("{}\u{1b}[31m", "k".repeat(300));
        let token = sign_with(
            &header(Algorithm::RS256, &kid),
            &claims(),
            &ATTACKER_KEY.encoding,
        );
        let TokenError::UnknownKey(shown) = check(&verifier(), &token).await.unwrap_err() else {
            panic!("expected UnknownKey");
        };
        assert!(shown.chars().count() <= 65, "{shown}");
        assert!(shown.chars().all(|c| c.is_ascii_graphic() || c == '…'));
    }

    #[tokio::test]
    async fn exp_has_no_leeway() {
        let verifier = verifier();
        let error = check(&verifier, &sign(&with(claims(), "exp", json!(now() - 1))))
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "Expired", "expired 1 s ago: {error}");
        let token = sign(&with(claims(), "exp", json!(now() + 5)));
        assert!(check(&verifier, &token).await.is_ok(), "valid for 5 more s");
    }

    #[tokio::test]
    async fn nbf_may_be_one_minute_ahead_as_in_go_oidc_v2() {
        let verifier = verifier();
        let nbf = |offset: i64| sign(&with(claims(), "nbf", json!(now() + offset)));
        assert!(check(&verifier, &nbf(45)).await.is_ok(), "45 s ahead");
        for refused in [75, 4 * 60, 6 * 60] {
            let error = check(&verifier, &nbf(refused)).await.unwrap_err();
            assert_eq!(error, TokenError::NotYetValid, "{refused} s ahead");
        }
        // A JSON string holding a number is a time too, as for Go's json.Number.
        let as_text = sign(&with(claims(), "nbf", json!((now() + 600).to_string())));
        assert_eq!(
            check(&verifier, &as_text).await.unwrap_err(),
            TokenError::NotYetValid
        );
    }

    #[tokio::test]
    async fn iat_is_reported_but_not_checked_against_the_clock() {
        let iat = now() + 3600;
        let token = sign(&with(claims(), "iat", json!(iat)));
        let identity = check(&verifier(), &token).await.unwrap();
        assert_eq!(identity.issued_at, DateTime::from_timestamp(iat, 0));
    }

    #[tokio::test]
    async fn a_foreign_azp_is_accepted_unless_the_authorized_party_is_required() {
        let token = sign(&with(
            with(claims(), "aud", json!(["other-client", CLIENT])),
            "azp",
            json!("other-client"),
        ));
        assert!(check(&verifier(), &token).await.is_ok());

        let strict = strict_verifier(Strictness {
            require_authorized_party: true,
            ..Strictness::default()
        });
        let error = check(&strict, &token).await.unwrap_err();
        assert_eq!(error.reason(), "WrongAudience");
        assert!(error.to_string().contains("aud/azp"), "{error}");
        let own_azp = sign(&with(
            with(claims(), "aud", json!(["other-client", CLIENT])),
            "azp",
            json!(CLIENT),
        ));
        assert!(check(&strict, &own_azp).await.is_ok());
        // One audience needs no azp even then.
        assert!(check(&strict, &sign(&claims())).await.is_ok());
    }

    #[tokio::test]
    async fn a_token_of_another_issuer_names_that_issuer_not_an_unknown_key() {
        // Signed by a key this issuer never published, as another issuer's token would be.
        let token = sign_with(
            &header(Algorithm::RS256, "someone-elses-kid"),
            &with(claims(), "iss", json!("https://login.other.example/")),
            &ATTACKER_KEY.encoding,
        );
        let error = check(&verifier(), &token).await.unwrap_err();
        assert_eq!(
            error,
            TokenError::WrongIssuer {
                expected: ISSUER.into(),
                found: "https://login.other.example/".into(),
            }
        );
        assert!(
            error
                .to_string()
                .contains("\"https://login.other.example/\""),
            "{error}"
        );

        let hostile = format!("https://evil.example/\n{}\u{1b}[31m", "x".repeat(300));
        let token = sign_with(
            &header(Algorithm::RS256, "k"),
            &with(claims(), "iss", json!(hostile)),
            &ATTACKER_KEY.encoding,
        );
        let TokenError::WrongIssuer { found, .. } = check(&verifier(), &token).await.unwrap_err()
        else {
            panic!("expected WrongIssuer");
        };
        assert!(found.chars().count() <= 65, "{found}");
        assert!(
            found.chars().all(|c| c.is_ascii_graphic() || c == '…'),
            "{found}"
        );
    }

    #[tokio::test]
    async fn a_token_without_kid_needs_one_only_when_configured() {
        let mut no_kid = Header::new(Algorithm::RS256);
        no_kid.kid = None;
        let token = sign_with(&no_kid, &claims(), &ISSUER_KEY.encoding);
        assert!(check(&verifier(), &token).await.is_ok());
        let strict = strict_verifier(Strictness {
            require_key_id: true,
            ..Strictness::default()
        });
        assert_eq!(
            check(&strict, &token).await.unwrap_err().reason(),
            "UnknownKey"
        );
    }

    #[tokio::test]
    async fn strict_names_refuse_empty_usernames_and_control_characters() {
        let strict = strict_verifier(Strictness {
            strict_names: true,
            ..Strictness::default()
        });
        for (claim, value, expected) in [
            ("email", json!(""), "MissingClaim"),
            ("email", Value::Null, "MissingClaim"),
            ("email", json!("jane\n@example.com"), "Malformed"),
            ("groups", json!(["dev", "o\u{7}ps"]), "Malformed"),
        ] {
            let token = sign(&with(claims(), claim, value.clone()));
            let result = check(&strict, &token).await;
            assert_eq!(reason(&result), expected, "{claim}: {value}");
            // The default, as kube-apiserver: accepted.
            assert!(check(&verifier(), &token).await.is_ok(), "{claim}: {value}");
        }
    }

    #[tokio::test]
    async fn groups_are_read_as_kube_apiserver_reads_them() {
        let verifier = verifier();
        let groups = |value: Value| sign(&with(claims(), "groups", value));
        let null = check(&verifier, &groups(Value::Null)).await.unwrap();
        assert!(null.groups.is_empty());
        let with_null = check(&verifier, &groups(json!(["dev", null])))
            .await
            .unwrap();
        assert_eq!(
            with_null.groups,
            vec!["oidc:dev".to_owned(), "oidc:".to_owned()]
        );

        // Named as a distributed claim whose endpoint does not answer: refused, as the API
        // server refuses it.
        let distributed = with(
            with(
                without(claims(), "groups"),
                "_claim_names",
                json!({"groups": "src1"}),
            ),
            "_claim_sources",
            json!({"src1": {"endpoint": "http://127.0.0.1:1/groups?secret=s3cr3t", "access_token": "bearer-s3cr3t"}}),
        );
        let error = check(&verifier, &sign(&distributed)).await.unwrap_err();
        assert_eq!(error.reason(), "UnresolvedClaim", "{error}");
        let shown = error.to_string();
        assert!(shown.contains("http://127.0.0.1:1/groups"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        // Aggregated (a JWT, no endpoint): kube-apiserver's resolver skips it, the user has no
        // groups.
        for source in [
            json!({"JWT": "e30.e30.sig"}),
            json!({"endpoint": ""}),
            Value::Null,
        ] {
            let aggregated = with(
                with(
                    without(claims(), "groups"),
                    "_claim_names",
                    json!({"groups": "src1"}),
                ),
                "_claim_sources",
                json!({ "src1": source }),
            );
            let accepted = check(&verifier, &sign(&aggregated)).await.unwrap();
            assert!(accepted.groups.is_empty(), "{source}");
        }
        let bad_source = with(
            with(
                without(claims(), "groups"),
                "_claim_names",
                json!({"groups": "src1"}),
            ),
            "_claim_sources",
            json!({"src1": {"endpoint": 7}}),
        );
        assert_eq!(
            check(&verifier, &sign(&bad_source))
                .await
                .unwrap_err()
                .reason(),
            "Malformed"
        );
        let dangling = with(claims(), "_claim_names", json!({"roles": "nowhere"}));
        assert_eq!(
            check(&verifier, &sign(&dangling))
                .await
                .unwrap_err()
                .reason(),
            "Malformed"
        );
    }
}
