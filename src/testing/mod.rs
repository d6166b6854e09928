//! One test issuer for every test that needs signed tokens without Dex: unit tests, `tests/`,
//! `benches/` and `fuzz/`. It lives behind the `testing` feature (and `cfg(test)`) so that no test
//! key ever reaches the release binary, and so the copies of key handling that used to sit in each
//! of those places can go.

#[cfg(test)]
pub mod api_server;

use std::sync::{Arc, LazyLock};

use aws_lc_rs::{
    encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der},
    rsa::{KeyPair, KeySize},
    signature::KeyPair as _,
};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, JwkSet, PublicKeyUse},
};
use serde_json::{Value, json};

use crate::{
    config::OidcConfig,
    metrics::Metrics,
    oidc::{authenticator::Authenticator, jwks::KeySet, verify::Verifier},
};

pub const ISSUER: &str = "https://dex.example/dex";
pub const CLIENT_ID: &str = "kubeconfig-operator";
pub const KID: &str = "test-key";

/// An RSA issuer key with its public JWK.
pub struct TestIssuer {
    pub encoding: EncodingKey,
    pub jwk: Jwk,
    /// SubjectPublicKeyInfo DER of the public key, for key-confusion attacks.
    pub public_der: Vec<u8>,
}

/// The issuer's key, made once per process: RSA generation is slow in debug builds.
pub fn issuer() -> &'static TestIssuer {
    static ISSUER_KEY: LazyLock<TestIssuer> = LazyLock::new(|| TestIssuer::generate(KID));
    &ISSUER_KEY
}

impl TestIssuer {
    /// A fresh RSA-2048 key published under `kid`.
    pub fn generate(kid: &str) -> Self {
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("generate an RSA key");
        let pkcs8: Pkcs8V1Der = pair.as_der().expect("export the key as PKCS#8");
        let public: PublicKeyX509Der = pair.public_key().as_der().expect("export the public key");
        let encoding = EncodingKey::from_rsa_der(&pkcs1_from_pkcs8(pkcs8.as_ref()));
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).expect("key as a JWK");
        jwk.common.key_id = Some(kid.into());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Self {
            encoding,
            jwk,
            public_der: public.as_ref().to_vec(),
        }
    }

    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
    }

    /// `header.claims.signature`, RS256-signed with this key whatever `header` says: for tokens
    /// that play the attacker (foreign `alg`, `jwk` or `kid` headers).
    pub fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, Algorithm::RS256)
                .expect("sign a test token");
        format!("{message}.{signature}")
    }

    /// `claims` signed RS256 under this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.jwk.common.key_id.clone();
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign a test token")
    }

    /// A token that [`oidc_config`] accepts for `email` in `groups`, valid for `lifetime_seconds`.
    pub fn token_for(&self, email: &str, groups: &[&str], lifetime_seconds: i64) -> String {
        self.token_from(ISSUER, email, groups, lifetime_seconds)
    }

    /// [`TestIssuer::token_for`] with another `iss`, for verifiers of another issuer URL (tokens
    /// are routed to an issuer by their `iss`, so a token must name the issuer under test).
    pub fn token_from(
        &self,
        issuer: &str,
        email: &str,
        groups: &[&str],
        lifetime_seconds: i64,
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        self.sign(&json!({
            "iss": issuer,
            "sub": format!("sub-{email}"),
            "aud": CLIENT_ID,
            "exp": now + lifetime_seconds,
            "iat": now - 5,
            "email": email,
            "email_verified": true,
            "groups": groups,
        }))
    }

    /// A verifier for [`oidc_config`] that knows this key from a static set: no network.
    /// The one authenticator of a process, over [`Self::verifier`], counting into `metrics`.
    pub fn authenticator(&self, metrics: Arc<Metrics>) -> Arc<Authenticator> {
        Arc::new(Authenticator::new(
            Arc::new(self.verifier()),
            crate::oidc::revocations::Revocations::none(),
            metrics,
        ))
    }

    pub fn verifier(&self) -> Verifier {
        let config = oidc_config();
        let keys = KeySet::from_static(&self.jwks(), &config.algorithms);
        Verifier::with_keys(config, keys)
    }
}

/// Dex-like settings: client `kubeconfig-operator`, username from `email`, groups from `groups`,
/// no prefixes, RS256.
pub fn oidc_config() -> OidcConfig {
    OidcConfig::for_tests(ISSUER, &[Algorithm::RS256])
}

/// Splits the RSAPrivateKey (PKCS#1) out of a PKCS#8 PrivateKeyInfo, which is what
/// jsonwebtoken's `from_rsa_der` wants and aws-lc-rs does not export directly.
pub fn pkcs1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
    fn element(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let (len, start) = if input[1] < 0x80 {
            (usize::from(input[1]), 2)
        } else {
            let n = usize::from(input[1] & 0x7f);
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + n)
        };
        (input[0], &input[start..start + len], &input[start + len..])
    }
    let (_, info, _) = element(pkcs8);
    let (_, _, rest) = element(info); // version
    let (_, _, rest) = element(rest); // algorithm identifier
    let (tag, key, _) = element(rest);
    assert_eq!(tag, 0x04, "PKCS#8 private key is an OCTET STRING");
    key.to_vec()
}
