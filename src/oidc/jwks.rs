//! The issuer's signing keys: OIDC discovery, JWKS download and an in-memory cache.
//!
//! Keys come only from the issuer's published JWKS, never from anything a token carries, so a
//! token can only ever be checked against keys the issuer vouches for. The cache lets known keys
//! keep validating while the issuer is down, and the refetch on an unknown `kid` is rate-limited
//! after a successful fetch, so hostile tokens cannot turn the operator into a load generator
//! against Dex. After a failed fetch the next unknown `kid` refetches at once (one fetch in flight
//! at a time), so a token signed with a new key works as soon as Dex is back.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ECDSA_P521_SHA512_FIXED, ED25519,
    ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA384,
    RSA_PKCS1_2048_8192_SHA512, RSA_PSS_2048_8192_SHA256, RSA_PSS_2048_8192_SHA384,
    RSA_PSS_2048_8192_SHA512, RsaParameters, RsaPublicKeyComponents, VerificationAlgorithm,
};
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk},
};
use serde::{Deserialize, de::DeserializeOwned};
use tracing::{debug, warn};
use url::Url;

use super::authn_config::{self, CertificateAuthority, JwtAuthenticator};
use crate::config::OidcConfig;

/// How often the keys are refetched in the background; Dex rotates its signing key every few
/// hours and publishes the next key well before using it, so this catches rotations early.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(600);
/// The shortest time between two fetches triggered by tokens with an unknown `kid` after a
/// successful fetch; bounds the load that a stream of forged `kid`s can put on the issuer. It
/// does not apply after a failed fetch: then the keys may well be stale, and refusing a genuine
/// token with 503 for this long after the issuer comes back helps no one.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// A connection that is not up by then will not come up; fail so the caller can report it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for one whole request, so a slow issuer cannot hold verifications hostage.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Discovery documents and JWKS are a few KiB; anything bigger is not what we asked for.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Redirects within the issuer's own origin are tolerated (e.g. a path rewrite), not chains.
const MAX_REDIRECTS: usize = 5;
/// Longer key ids are not something Dex produces; they only serve to bloat the cache and logs.
const MAX_KID_BYTES: usize = 256;

/// Why the issuer's keys could not be obtained. Carries only issuer-side facts (URLs,
/// statuses), never anything from a token, so it is safe to show to whoever sent the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerError {
    /// Local setup (CA file, HTTP client) is wrong; retrying will not help until config changes.
    #[error("cannot prepare the connection to the issuer: {0}")]
    Setup(String),
    /// Network-level failure: DNS, TCP, TLS, timeout.
    #[error("cannot reach the issuer at {url}: {detail}")]
    Unreachable {
        /// The URL requested, so an operator can try it from the same network.
        url: String,
        detail: String,
    },
    /// The issuer answered, but not with something we can trust or use.
    #[error("the issuer's answer from {url} is unusable: {detail}")]
    BadResponse {
        /// The URL that gave the unusable answer.
        url: String,
        detail: String,
    },
}

/// What a signature is checked with: an algorithm jsonwebtoken names, or ES512, which it cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SignatureAlgorithm {
    Jws(Algorithm),
    Es512,
}

/// Every asymmetric algorithm jsonwebtoken names, each a key may be parsed for.
const JWS_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// One verification key from the JWKS, parsed once for each algorithm it may check: built again
/// from the JWK's numbers for every token, as jsonwebtoken's `crypto::verify` does, the key cost
/// about 3 % of a fresh token's download (perf, bench/results.md).
pub(crate) struct SigningKey {
    family: AlgorithmFamily,
    curve: Option<EllipticCurve>,
    parsed: Vec<(SignatureAlgorithm, ParsedPublicKey)>,
}

impl SigningKey {
    /// Whether a signature made with `alg` may be checked with this key: same key family (so an
    /// RSA or EC public key can never act as an HMAC secret) and same curve. The JWK's own `alg`,
    /// `use` and `key_ops` are not looked at: go-jose, which kube-apiserver verifies with, ignores
    /// them too (an RSA key published as `alg: RS256` verifies PS256 signatures there).
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        let curve_matches = match alg {
            Algorithm::ES256 => self.curve == Some(EllipticCurve::P256),
            Algorithm::ES384 => self.curve == Some(EllipticCurve::P384),
            Algorithm::EdDSA => self.curve == Some(EllipticCurve::Ed25519),
            _ => true,
        };
        alg.family() != AlgorithmFamily::Hmac && self.family == alg.family() && curve_matches
    }

    /// Whether `signature` over `message`, made with `alg`, verifies with this key. A key that
    /// cannot check `alg` (another family or curve, or numbers that form no key) verifies
    /// nothing.
    pub(crate) fn verifies(
        &self,
        alg: SignatureAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> bool {
        self.parsed
            .iter()
            .find(|(parsed_for, _)| *parsed_for == alg)
            .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }

    /// [`Self::accepts`] for either kind of algorithm: ES512 is for P-521 keys alone.
    fn checks(&self, alg: SignatureAlgorithm) -> bool {
        match alg {
            SignatureAlgorithm::Jws(alg) => self.accepts(alg),
            SignatureAlgorithm::Es512 => self.curve == Some(EllipticCurve::P521),
        }
    }

    fn new(jwk: &DecodingKey, family: AlgorithmFamily, curve: Option<EllipticCurve>) -> Self {
        let mut key = Self {
            family,
            curve,
            parsed: Vec::new(),
        };
        key.parsed = JWS_ALGORITHMS
            .into_iter()
            .map(SignatureAlgorithm::Jws)
            .chain([SignatureAlgorithm::Es512])
            .filter(|&alg| key.checks(alg))
            .filter_map(|alg| Some((alg, parse(jwk, alg)?)))
            .collect();
        key
    }
}

/// `key` parsed for `alg`, with the key sizes jsonwebtoken's aws-lc verifiers allow (RSA from
/// 2,048 to 8,192 bits); `None` when its numbers form no such key.
fn parse(key: &DecodingKey, alg: SignatureAlgorithm) -> Option<ParsedPublicKey> {
    let rsa = |params: &'static RsaParameters| match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => RsaPublicKeyComponents { n, e }
            .to_parsed_public_key(params)
            .ok(),
        DecodingKeyKind::SecretOrDer(_) => None,
    };
    let point = |algorithm: &'static dyn VerificationAlgorithm| {
        ParsedPublicKey::new(algorithm, key.try_get_as_bytes().ok()?).ok()
    };
    match alg {
        SignatureAlgorithm::Jws(Algorithm::RS256) => rsa(&RSA_PKCS1_2048_8192_SHA256),
        SignatureAlgorithm::Jws(Algorithm::RS384) => rsa(&RSA_PKCS1_2048_8192_SHA384),
        SignatureAlgorithm::Jws(Algorithm::RS512) => rsa(&RSA_PKCS1_2048_8192_SHA512),
        SignatureAlgorithm::Jws(Algorithm::PS256) => rsa(&RSA_PSS_2048_8192_SHA256),
        SignatureAlgorithm::Jws(Algorithm::PS384) => rsa(&RSA_PSS_2048_8192_SHA384),
        SignatureAlgorithm::Jws(Algorithm::PS512) => rsa(&RSA_PSS_2048_8192_SHA512),
        SignatureAlgorithm::Jws(Algorithm::ES256) => point(&ECDSA_P256_SHA256_FIXED),
        SignatureAlgorithm::Jws(Algorithm::ES384) => point(&ECDSA_P384_SHA384_FIXED),
        SignatureAlgorithm::Jws(Algorithm::EdDSA) => point(&ED25519),
        SignatureAlgorithm::Es512 => point(&ECDSA_P521_SHA512_FIXED),
        SignatureAlgorithm::Jws(_) => None,
    }
}

type KeyMap = HashMap<String, Arc<SigningKey>>;

/// Where keys are fetched from; absent for a key set built from keys the caller already holds.
struct Fetcher {
    client: reqwest::Client,
    /// The configured issuer, verbatim: the discovery document must name exactly this.
    issuer: String,
    issuer_scheme: String,
    discovery_url: Url,
    algorithms: Vec<Algorithm>,
    /// P-521 keys are kept for ES512.
    es512: bool,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    /// The outcome of the last attempt, so callers rate-limited out of a refetch still learn
    /// whether the issuer is down (`IssuerUnavailable`) or simply lacks the key (`UnknownKey`).
    last_error: Option<IssuerError>,
}

/// The issuer's current signing keys by `kid`.
///
/// Reads are lock-free in practice (a short `RwLock` around an `Arc` swap); fetches are
/// serialised by one async mutex so that concurrent callers with the same unknown `kid` share a
/// single request instead of each sending their own.
pub struct KeySet {
    keys: RwLock<Arc<KeyMap>>,
    /// `sha256:<hex>` of the last JWKS document fetched whole, as kube-apiserver hashes it for
    /// `apiserver_authentication_jwt_authenticator_jwks_fetch_last_key_set_info`.
    document_digest: RwLock<Option<String>>,
    loaded: AtomicBool,
    fetcher: Option<Fetcher>,
    fetch_state: tokio::sync::Mutex<FetchState>,
    /// Completed fetches, counted outside the lock: a caller that reads it before waiting for the
    /// lock can tell afterwards that someone fetched meanwhile, and share that outcome.
    fetches: AtomicU64,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// The JWKS as loose JSON, so that one key we cannot parse does not discard the others.
#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Prepares fetching from the configured issuer without contacting it, so the operator can
    /// start (and report itself unready) while Dex is still down.
    pub async fn new(cfg: &OidcConfig) -> Result<Self, IssuerError> {
        Self::for_authenticator(&JwtAuthenticator::from_legacy(cfg)).await
    }

    /// [`KeySet::new`] for one issuer of an authentication configuration: its discovery URL, if
    /// set, replaces `<issuer>/.well-known/openid-configuration`, as kube-apiserver does.
    pub async fn for_authenticator(cfg: &JwtAuthenticator) -> Result<Self, IssuerError> {
        let client = issuer_client(&cfg.certificate_authority).await?;
        let discovery = cfg.discovery_url.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/openid-configuration",
                cfg.issuer.trim_end_matches('/')
            )
        });
        let discovery_url = Url::parse(&discovery).map_err(|e| {
            IssuerError::Setup(format!("{discovery} is not a usable discovery URL: {e}"))
        })?;
        Ok(Self {
            keys: RwLock::new(Arc::new(KeyMap::new())),
            document_digest: RwLock::new(None),
            loaded: AtomicBool::new(false),
            fetcher: Some(Fetcher {
                client,
                issuer: cfg.issuer.clone(),
                issuer_scheme: discovery_url.scheme().to_owned(),
                discovery_url,
                algorithms: cfg.algorithms.clone(),
                es512: cfg.verifies_es512,
            }),
            fetch_state: tokio::sync::Mutex::new(FetchState::default()),
            fetches: AtomicU64::new(0),
        })
    }

    /// For callers that already hold the issuer's keys (tests, or an issuer reachable only
    /// out of band): the set never fetches, and counts as loaded. Keys are filtered exactly as
    /// fetched ones are.
    pub fn from_static(jwks: &jsonwebtoken::jwk::JwkSet, algorithms: &[Algorithm]) -> Self {
        let keys = usable_keys(jwks.keys.iter().cloned(), algorithms, true);
        Self {
            keys: RwLock::new(Arc::new(keys)),
            document_digest: RwLock::new(None),
            loaded: AtomicBool::new(true),
            fetcher: None,
            fetch_state: tokio::sync::Mutex::new(FetchState::default()),
            fetches: AtomicU64::new(0),
        }
    }

    /// Readiness: until one fetch succeeded no token can be verified.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Fetches the keys now (regardless of the unknown-`kid` rate limit), for start-up and the
    /// periodic background refresh. On failure the previous keys stay in use.
    pub async fn refresh(&self) -> Result<(), IssuerError> {
        let Some(fetcher) = &self.fetcher else {
            return Ok(());
        };
        let mut state = self.fetch_state.lock().await;
        self.fetch_locked(fetcher, &mut state).await
    }

    /// The key for `kid`; refetches once if it is unknown, unless a fetch succeeded less than
    /// [`MIN_REFETCH_INTERVAL`] ago. `Ok(None)` means the issuer does not publish this key; `Err`
    /// means we cannot tell because the issuer is unavailable.
    pub(crate) async fn find(&self, kid: &str) -> Result<Option<Arc<SigningKey>>, IssuerError> {
        if let Some(key) = self.cached(kid) {
            return Ok(Some(key));
        }
        self.refetch_for_miss(|| self.cached(kid).is_some(), kid)
            .await?;
        Ok(self.cached(kid))
    }

    /// Every current key, for a token without `kid` (kube-apiserver then tries each one). Before
    /// the first successful fetch this fetches, under the same rules as [`KeySet::find`].
    pub(crate) async fn all(&self) -> Result<Vec<Arc<SigningKey>>, IssuerError> {
        if !self.is_loaded() {
            self.refetch_for_miss(|| self.is_loaded(), "<none>").await?;
        }
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        Ok(keys.values().cloned().collect())
    }

    /// Fetches for a lookup that missed, unless `found` turns true while we wait for the lock, or
    /// a fetch succeeded within [`MIN_REFETCH_INTERVAL`], or another caller fetched while we
    /// waited (its outcome is ours too: one fetch in flight at a time, even against a hanging
    /// issuer). `Err` when the last fetch failed, so the caller reports the issuer, not the key.
    async fn refetch_for_miss(
        &self,
        found: impl Fn() -> bool,
        kid: &str,
    ) -> Result<(), IssuerError> {
        let Some(fetcher) = &self.fetcher else {
            return Ok(());
        };
        let fetches_before = self.fetches.load(Ordering::Acquire);
        let mut state = self.fetch_state.lock().await;
        if found() {
            return Ok(());
        }
        let fetched_meanwhile = self.fetches.load(Ordering::Acquire) != fetches_before;
        let recent_success = state.last_error.is_none()
            && state
                .last_attempt
                .is_some_and(|at| at.elapsed() < MIN_REFETCH_INTERVAL);
        if !fetched_meanwhile && !recent_success {
            debug!(kid = %truncated(kid), "unknown key id; refetching the issuer's keys");
            // The outcome is recorded in `state`; it is examined below.
            let _ = self.fetch_locked(fetcher, &mut state).await;
        }
        match &state.last_error {
            Some(error) if !found() => Err(error.clone()),
            _ => Ok(()),
        }
    }

    fn cached(&self, kid: &str) -> Option<Arc<SigningKey>> {
        // A poisoned lock only means a panic elsewhere mid-swap of an `Arc`; the map is intact.
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.get(kid).cloned()
    }

    /// The digest of the last JWKS document fetched, if any was.
    pub fn document_digest(&self) -> Option<String> {
        self.document_digest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn fetch_locked(
        &self,
        fetcher: &Fetcher,
        state: &mut FetchState,
    ) -> Result<(), IssuerError> {
        state.last_attempt = Some(Instant::now());
        let outcome = fetcher.fetch().await;
        self.fetches.fetch_add(1, Ordering::AcqRel);
        match outcome {
            Ok((keys, digest)) => {
                debug!(keys = keys.len(), "fetched the issuer's signing keys");
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                *self
                    .document_digest
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Some(digest);
                self.loaded.store(true, Ordering::Release);
                state.last_error = None;
                Ok(())
            }
            Err(error) => {
                warn!(%error, "cannot fetch the issuer's signing keys; keeping the previous ones");
                state.last_error = Some(error.clone());
                Err(error)
            }
        }
    }
}

impl Fetcher {
    /// The usable keys and the digest of the document they came from.
    async fn fetch(&self) -> Result<(KeyMap, String), IssuerError> {
        let discovery: Discovery = self.get_json(&self.discovery_url).await?;
        let bad = |detail: String| IssuerError::BadResponse {
            url: self.discovery_url.to_string(),
            detail,
        };
        if discovery.issuer != self.issuer {
            // Someone else's discovery document (or a misconfigured issuer URL): its keys would
            // sign tokens whose `iss` we would then reject anyway, so stop here with a clear error.
            return Err(bad(format!(
                "it names the issuer {:?}, but the configured issuer is {:?}",
                truncated(&discovery.issuer),
                self.issuer
            )));
        }
        let jwks_uri = Url::parse(&discovery.jwks_uri)
            .map_err(|e| bad(format!("jwks_uri is not a URL: {e}")))?;
        if jwks_uri.scheme() != self.issuer_scheme {
            return Err(bad(format!(
                "jwks_uri uses {}, but the issuer uses {}",
                jwks_uri.scheme(),
                self.issuer_scheme
            )));
        }
        let document = self.get(&jwks_uri).await?;
        let raw: RawJwkSet = parse_json(&jwks_uri, &document)?;
        let parsed = raw
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok());
        let keys = usable_keys(parsed, &self.algorithms, self.es512);
        if keys.is_empty() {
            return Err(IssuerError::BadResponse {
                url: jwks_uri.to_string(),
                detail: "it holds no signing key usable with the configured algorithms".into(),
            });
        }
        Ok((keys, authn_config::digest(&document)))
    }

    /// GET of a JSON document, size-capped by [`json_body`].
    async fn get_json<T: DeserializeOwned>(&self, url: &Url) -> Result<T, IssuerError> {
        parse_json(url, &self.get(url).await?)
    }

    /// GET of a document, size-capped by [`bounded_body`].
    async fn get(&self, url: &Url) -> Result<Vec<u8>, IssuerError> {
        let unreachable = |e: reqwest::Error| IssuerError::Unreachable {
            url: url.to_string(),
            detail: error_chain(&e),
        };
        let bad = |detail: String| IssuerError::BadResponse {
            url: url.to_string(),
            detail,
        };
        let response = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(bad(format!("HTTP status {}", response.status())));
        }
        bounded_body(url, response).await
    }
}

/// The HTTP client for everything the operator asks an issuer: its CA, bounded waits, and
/// redirects only within the issuer's origin. Shared by key fetching and the page's login.
pub(crate) async fn issuer_client(
    ca: &CertificateAuthority,
) -> Result<reqwest::Client, IssuerError> {
    issuer_client_builder(ca)
        .await?
        .timeout(REQUEST_TIMEOUT)
        .redirect(same_origin_redirects())
        .build()
        .map_err(|e| IssuerError::Setup(error_chain(&e)))
}

/// A client trusting `ca` (or the system roots), with a bounded connect; callers set the rest.
pub(crate) async fn issuer_client_builder(
    ca: &CertificateAuthority,
) -> Result<reqwest::ClientBuilder, IssuerError> {
    let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
    let (pem, source) = match ca {
        CertificateAuthority::SystemRoots => (None, String::new()),
        CertificateAuthority::Pem(pem) => (Some(pem.clone()), "certificateAuthority".to_owned()),
        CertificateAuthority::File(path) => (
            Some(tokio::fs::read(path).await.map_err(|e| {
                IssuerError::Setup(format!("cannot read the CA file {}: {e}", path.display()))
            })?),
            format!("the CA file {}", path.display()),
        ),
    };
    if let Some(pem) = pem {
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| IssuerError::Setup(format!("{source} is not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(IssuerError::Setup(format!("{source} holds no certificate")));
        }
        builder = builder.tls_certs_merge(certs);
    }
    Ok(builder)
}

/// The body of a successful answer as JSON, read in chunks so an oversized answer is cut off
/// after [`MAX_RESPONSE_BYTES`] instead of being buffered whole.
pub(crate) async fn json_body<T: DeserializeOwned>(
    url: &Url,
    response: reqwest::Response,
) -> Result<T, IssuerError> {
    parse_json(url, &bounded_body(url, response).await?)
}

fn parse_json<T: DeserializeOwned>(url: &Url, body: &[u8]) -> Result<T, IssuerError> {
    serde_json::from_slice(body).map_err(|e| IssuerError::BadResponse {
        url: url.to_string(),
        detail: format!("not the expected JSON: {e}"),
    })
}

/// The body of a successful answer, cut off after [`MAX_RESPONSE_BYTES`]; `url` is what
/// messages name.
pub(crate) async fn bounded_body(
    url: &Url,
    mut response: reqwest::Response,
) -> Result<Vec<u8>, IssuerError> {
    let bad = |detail: String| IssuerError::BadResponse {
        url: url.to_string(),
        detail,
    };
    if response
        .content_length()
        .is_some_and(|length| length > MAX_RESPONSE_BYTES as u64)
    {
        return Err(bad(format!("larger than {MAX_RESPONSE_BYTES} bytes")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| IssuerError::Unreachable {
            url: url.to_string(),
            detail: error_chain(&e),
        })?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(bad(format!("larger than {MAX_RESPONSE_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Redirects are followed only within the origin of the URL first requested, so a compromised
/// or misconfigured path cannot send us to fetch keys from another host.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if same_origin {
            attempt.follow()
        } else {
            attempt.error("redirect to another origin refused")
        }
    })
}

/// Keeps the keys that can verify signatures with at least one configured algorithm.
fn usable_keys(
    jwks: impl IntoIterator<Item = Jwk>,
    algorithms: &[Algorithm],
    es512: bool,
) -> KeyMap {
    let mut keys = KeyMap::new();
    for jwk in jwks {
        let Some(kid) = jwk.common.key_id.clone() else {
            // Tokens without `kid` are refused, so a key without one could never be selected.
            continue;
        };
        match signing_key(&jwk, algorithms, es512) {
            Some(key) if kid.len() <= MAX_KID_BYTES => {
                match keys.entry(kid) {
                    // Ambiguous: which one signed? Keep the first, as JwkSet::find would.
                    Entry::Occupied(first) => {
                        warn!(kid = %truncated(first.key()), "the issuer publishes this key id twice; using the first");
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(key);
                    }
                }
            }
            _ => debug!(kid = %truncated(&kid), "skipping a key unusable for verification"),
        }
    }
    keys
}

fn signing_key(jwk: &Jwk, algorithms: &[Algorithm], es512: bool) -> Option<Arc<SigningKey>> {
    let (family, curve) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(params) => {
            (AlgorithmFamily::Ec, Some(params.curve.clone()))
        }
        AlgorithmParameters::OctetKeyPair(params) => {
            (AlgorithmFamily::Ed, Some(params.curve.clone()))
        }
        // A symmetric secret has no business in a public JWKS; never use one.
        _ => return None,
    };
    let key = SigningKey::new(&DecodingKey::from_jwk(jwk).ok()?, family, curve);
    let for_es512 = es512 && key.checks(SignatureAlgorithm::Es512);
    (for_es512 || algorithms.iter().any(|&allowed| key.accepts(allowed))).then(|| Arc::new(key))
}

/// Shortened, printable form of an untrusted string for logs and messages.
pub(crate) fn truncated(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut out: String = text
        .chars()
        .take(MAX_CHARS)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// reqwest's top-level message rarely says what failed (refused, TLS, timeout); its sources do.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        sync::{
            Mutex,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use jsonwebtoken::{EncodingKey, jwk::JwkSet};
    use serde_json::{Value, json};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    fn hmac_jwk(kid: &str) -> Jwk {
        let mut jwk =
            Jwk::from_encoding_key(&EncodingKey::from_secret(b"secret"), Algorithm::HS256).unwrap();
        jwk.common.key_id = Some(kid.into());
        jwk
    }

    /// An RSA JWK; its modulus is never used to verify anything in these tests.
    fn rsa_jwk(kid: &str) -> Value {
        json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"})
    }

    fn config(issuer: &str) -> OidcConfig {
        OidcConfig::for_tests(issuer, &[Algorithm::RS256])
    }

    /// A loopback HTTP issuer whose answers a test can change, counting JWKS downloads.
    struct FakeIssuer {
        issuer: String,
        routes: Arc<Mutex<HashMap<String, String>>>,
        jwks_hits: Arc<AtomicUsize>,
        server: tokio::task::JoinHandle<()>,
    }

    impl FakeIssuer {
        async fn start(keys: Value) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let issuer = format!("http://{}/dex", listener.local_addr().unwrap());
            let routes = Arc::new(Mutex::new(HashMap::from([
                (
                    "/dex/.well-known/openid-configuration".to_owned(),
                    json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys")}).to_string(),
                ),
                ("/dex/keys".to_owned(), keys.to_string()),
            ])));
            let jwks_hits = Arc::new(AtomicUsize::new(0));
            let (served, hits) = (Arc::clone(&routes), Arc::clone(&jwks_hits));
            let server = tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                    if path.ends_with("/keys") {
                        hits.fetch_add(1, Ordering::SeqCst);
                    }
                    let body = served.lock().unwrap().get(&path).cloned();
                    let response = match body {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                    };
                    let _ = stream.write_all(response.as_bytes()).await;
                }
            });
            Self {
                issuer,
                routes,
                jwks_hits,
                server,
            }
        }

        fn set(&self, path: &str, body: String) {
            self.routes.lock().unwrap().insert(path.into(), body);
        }

        fn hits(&self) -> usize {
            self.jwks_hits.load(Ordering::SeqCst)
        }
    }

    /// Eight lookups of `kid` at once, as from eight requests arriving together.
    async fn concurrent_finds(
        keys: &Arc<KeySet>,
        kid: &'static str,
    ) -> Vec<Result<Option<Arc<SigningKey>>, IssuerError>> {
        let lookups: Vec<_> = (0..8)
            .map(|_| {
                let keys = Arc::clone(keys);
                tokio::spawn(async move { keys.find(kid).await })
            })
            .collect();
        let mut results = Vec::new();
        for lookup in lookups {
            results.push(lookup.await.unwrap());
        }
        results
    }

    #[tokio::test]
    async fn loads_lazily_and_refetches_unknown_kids_at_most_once_per_window() {
        let issuer = FakeIssuer::start(json!({"keys": [rsa_jwk("k1")]})).await;
        let keys = Arc::new(KeySet::new(&config(&issuer.issuer)).await.unwrap());
        assert!(
            !keys.is_loaded(),
            "construction must not contact the issuer"
        );
        assert_eq!(issuer.hits(), 0);

        // Concurrent lookups of an unknown kid share one fetch.
        for found in concurrent_finds(&keys, "nope").await {
            assert!(found.unwrap().is_none());
        }
        assert_eq!(issuer.hits(), 1);
        assert!(keys.is_loaded());
        assert!(keys.find("k1").await.unwrap().is_some());

        // A rotated-in key is not fetched again within the window...
        issuer.set(
            "/dex/keys",
            json!({"keys": [rsa_jwk("k1"), rsa_jwk("k2")]}).to_string(),
        );
        assert!(keys.find("k2").await.unwrap().is_none());
        assert_eq!(issuer.hits(), 1);
        // ...but the periodic refresh picks it up.
        keys.refresh().await.unwrap();
        assert_eq!(issuer.hits(), 2);
        assert!(keys.find("k2").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn known_keys_keep_working_while_the_issuer_is_down() {
        let issuer = FakeIssuer::start(json!({"keys": [rsa_jwk("k1")]})).await;
        let keys = KeySet::new(&config(&issuer.issuer)).await.unwrap();
        keys.refresh().await.unwrap();
        issuer.server.abort();
        let _ = issuer.server.await;

        assert!(matches!(
            keys.refresh().await,
            Err(IssuerError::Unreachable { .. })
        ));
        assert!(keys.is_loaded());
        assert!(keys.find("k1").await.unwrap().is_some());
        // The failed refresh is remembered: an unknown kid cannot be ruled out, so it is an
        // issuer problem, not an unknown key.
        assert!(keys.find("k2").await.is_err());
    }

    #[tokio::test]
    async fn a_discovery_document_for_another_issuer_is_refused() {
        let issuer = FakeIssuer::start(json!({"keys": [rsa_jwk("k1")]})).await;
        issuer.set(
            "/dex/.well-known/openid-configuration",
            json!({"issuer": format!("{}/", issuer.issuer), "jwks_uri": format!("{}/keys", issuer.issuer)}).to_string(),
        );
        let keys = KeySet::new(&config(&issuer.issuer)).await.unwrap();
        let error = keys.refresh().await.unwrap_err();
        assert!(matches!(error, IssuerError::BadResponse { .. }), "{error}");
        assert!(!keys.is_loaded());
    }

    #[tokio::test]
    async fn a_jwks_uri_with_another_scheme_is_refused() {
        let issuer = FakeIssuer::start(json!({"keys": [rsa_jwk("k1")]})).await;
        issuer.set(
            "/dex/.well-known/openid-configuration",
            json!({"issuer": issuer.issuer, "jwks_uri": "file:///etc/passwd"}).to_string(),
        );
        let keys = KeySet::new(&config(&issuer.issuer)).await.unwrap();
        let error = keys.refresh().await.unwrap_err();
        assert!(error.to_string().contains("jwks_uri uses file"), "{error}");
    }

    #[tokio::test]
    async fn an_oversized_jwks_is_refused() {
        let padding = "x".repeat(MAX_RESPONSE_BYTES);
        let issuer = FakeIssuer::start(json!({"keys": [rsa_jwk("k1")], "padding": padding})).await;
        let keys = KeySet::new(&config(&issuer.issuer)).await.unwrap();
        let error = keys.refresh().await.unwrap_err();
        assert!(error.to_string().contains("larger than"), "{error}");
    }

    #[tokio::test]
    async fn an_unreadable_ca_file_fails_at_construction() {
        let mut cfg = config("https://dex.example.com");
        cfg.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
        assert!(matches!(
            KeySet::new(&cfg).await,
            Err(IssuerError::Setup(_))
        ));
    }

    /// As go-jose: `use`, `key_ops` and `alg` of a JWK do not restrict it; only a key that cannot
    /// verify the allowed algorithms at all (HMAC secret, no kid) is dropped.
    #[test]
    fn keys_are_kept_by_their_type_as_go_jose_keeps_them() {
        let mut encryption = rsa_jwk("enc");
        encryption["use"] = json!("enc");
        let mut rs512 = rsa_jwk("rs512");
        rs512["alg"] = json!("RS512");
        let mut oaep = rsa_jwk("oaep");
        oaep["alg"] = json!("RSA-OAEP");
        let mut no_alg = rsa_jwk("no-alg");
        no_alg.as_object_mut().unwrap().remove("alg");
        let mut no_kid = rsa_jwk("");
        no_kid.as_object_mut().unwrap().remove("kid");
        let mut verify_only = rsa_jwk("verify-only");
        verify_only["key_ops"] = json!(["encrypt"]);
        let jwks: JwkSet = serde_json::from_value(json!({"keys": [
            rsa_jwk("good"), encryption, rs512, oaep, no_alg, no_kid, verify_only,
            serde_json::to_value(hmac_jwk("hmac")).unwrap(),
        ]}))
        .unwrap();
        let keys = KeySet::from_static(&jwks, &[Algorithm::RS256]);
        let mut kept: Vec<_> = keys.keys.read().unwrap().keys().cloned().collect();
        kept.sort();
        assert_eq!(
            kept,
            ["enc", "good", "no-alg", "oaep", "rs512", "verify-only"].map(str::to_owned)
        );

        let good = keys.cached("good").unwrap();
        assert!(good.accepts(Algorithm::RS256));
        assert!(
            good.accepts(Algorithm::PS256),
            "the JWK's alg RS256 does not pin it"
        );
        assert!(!good.accepts(Algorithm::HS256));
        assert!(!good.accepts(Algorithm::ES256));
    }

    #[tokio::test]
    async fn after_a_failed_fetch_an_unknown_kid_refetches_at_once() {
        let issuer = FakeIssuer::start(json!({"keys": [rsa_jwk("k1")]})).await;
        let keys = Arc::new(KeySet::new(&config(&issuer.issuer)).await.unwrap());
        keys.refresh().await.unwrap();
        assert_eq!(issuer.hits(), 1);

        // Dex answers garbage (as while restarting), then comes back with a new key, all within
        // MIN_REFETCH_INTERVAL of the last fetch.
        issuer.set("/dex/keys", "not json".into());
        assert!(keys.refresh().await.is_err());
        assert_eq!(issuer.hits(), 2);
        // Concurrent lookups while it fails share one fetch and report the issuer, not the key.
        for found in concurrent_finds(&keys, "k2").await {
            assert!(found.is_err());
        }
        assert_eq!(issuer.hits(), 3);

        issuer.set(
            "/dex/keys",
            json!({"keys": [rsa_jwk("k1"), rsa_jwk("k2")]}).to_string(),
        );
        assert!(keys.find("k2").await.unwrap().is_some(), "fetched at once");
        assert_eq!(issuer.hits(), 4);

        // After that success the rate limit holds again.
        issuer.set(
            "/dex/keys",
            json!({"keys": [rsa_jwk("k1"), rsa_jwk("k2"), rsa_jwk("k3")]}).to_string(),
        );
        assert!(keys.find("k3").await.unwrap().is_none());
        assert_eq!(issuer.hits(), 4);
    }

    #[tokio::test]
    async fn a_token_without_kid_loads_the_keys_first() {
        let issuer = FakeIssuer::start(json!({"keys": [rsa_jwk("k1"), rsa_jwk("k2")]})).await;
        let keys = KeySet::new(&config(&issuer.issuer)).await.unwrap();
        assert_eq!(keys.all().await.unwrap().len(), 2);
        assert_eq!(keys.all().await.unwrap().len(), 2);
        assert_eq!(issuer.hits(), 1, "loaded keys are not fetched again");
    }

    #[test]
    fn untrusted_text_is_shortened_and_made_printable() {
        assert_eq!(truncated("abc\n\u{7f}é"), "abc???");
        assert_eq!(truncated(&"a".repeat(100)).chars().count(), 65);
    }
}
