//! Hand-made JWT pieces for tests that play the attacker. Signing lives in the crate's shared
//! test issuer (`kubeconfig_operator::testing`).

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An ID token of the harness's test issuer, which the second API server (`KUBE_AUTHN_SERVER`)
/// and an operator reading `AUTHENTICATION_CONFIG_FILE` trust, unlike Dex's tokens with a `jti`:
/// for `email`, in the groups `devs` and `ops` (`test:`-prefixed by that configuration), valid for
/// ten minutes, signed with the issuer's RSA key.
pub fn test_issuer_token(cluster: &super::Cluster, email: &str, jti: &str) -> String {
    let env = |name: &str| {
        cluster
            .env
            .get(name)
            .unwrap_or_else(|| panic!("the cluster env has no {name}; run make cluster-up"))
    };
    let key_file = env("TEST_ISSUER_RSA_KEY_FILE");
    let pem = std::fs::read(key_file).unwrap_or_else(|e| panic!("read {key_file}: {e}"));
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{key_file} holds no private key"));
    let key = jsonwebtoken::EncodingKey::from_rsa_der(key.secret_der());
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "iss": env("TEST_ISSUER_URL"),
        "sub": email,
        "aud": "kubeconfig-operator",
        "iat": now,
        "exp": now + 600,
        "jti": jti,
        "email": email,
        "email_verified": true,
        "groups": ["devs", "ops"],
        "tenant": "acme",
        "roles": ["reader"],
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-rsa".to_owned());
    jsonwebtoken::encode(&header, &claims, &key).expect("sign a test issuer token")
}
