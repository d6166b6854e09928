//! Crafted tokens against the real operator, trusting the real Dex, on both paths: each must get a
//! 401 (or 431) over HTTP with its reason, and Ready=False with the matching reason on a
//! KubeconfigRequest. Then the leak check: no token, nor its signature, may appear in the
//! operator's logs (at `trace`), in Events, status, metrics or error bodies.
//!
//! The test does not hold Dex's private key, so a token whose claims are wrong but whose
//! signature is Dex's cannot be made here: such cases are Dex's own tokens (wrong audience, another
//! issuer) or tampered copies of a real token, which must fail on their signature. The same
//! claims with a valid signature are covered by the unit tests in `src/oidc/verify.rs`.

mod support;

use aws_lc_rs::{
    hmac,
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use kubeconfig_operator::testing::TestIssuer;
use serde_json::{Value, json};
use support::{
    Client, cluster, id_token, id_token_for_client, id_token_short_lived, kubectl,
    operator::{Issuer, Operator},
    requests::{apply_request, http_get_kubeconfig, put_token_secret, wait_for_reason},
    tokens::b64,
};

fn segments(token: &str) -> (String, Value, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "Dex tokens have three segments");
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    (parts[0].to_owned(), payload, parts[2].to_owned())
}

struct Attacker {
    rsa: TestIssuer,
    ec: EcdsaKeyPair,
}

impl Attacker {
    fn new() -> Self {
        let rsa = TestIssuer::generate("attacker");
        let ec =
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate an EC key");
        Self { rsa, ec }
    }

    fn rs256(&self, header: &Value, payload: &Value) -> String {
        self.rsa.sign_raw(header, payload)
    }

    fn es256(&self, header: &Value, payload: &Value) -> String {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let signature = self
            .ec
            .sign(&SystemRandom::new(), message.as_bytes())
            .expect("sign ES256");
        format!("{message}.{}", b64(signature.as_ref()))
    }

    /// The attacker's public key as a JWK, for `jwk` headers.
    fn public_jwk(&self, kid: &str) -> Value {
        let mut jwk = serde_json::to_value(&self.rsa.jwk).expect("a JWK is JSON");
        jwk["kid"] = json!(kid);
        jwk
    }
}

/// DER of a SubjectPublicKeyInfo for an RSA key, to try it as an HMAC secret.
fn rsa_spki_pem(n: &[u8], e: &[u8]) -> String {
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = body.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(body);
        out
    }
    let integer = |value: &[u8]| {
        let mut body = value.to_vec();
        if body[0] & 0x80 != 0 {
            body.insert(0, 0);
        }
        tlv(0x02, &body)
    };
    let rsa_key = tlv(0x30, &[integer(n), integer(e)].concat());
    let algorithm = tlv(
        0x30,
        &[
            vec![
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ],
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    let spki = tlv(
        0x30,
        &[algorithm, tlv(0x03, &[&[0u8][..], &rsa_key].concat())].concat(),
    );
    let body = base64::engine::general_purpose::STANDARD.encode(spki);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

fn hs256(secret: &[u8], header: &Value, payload: &Value) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret),
        message.as_bytes(),
    );
    format!("{message}.{}", b64(tag.as_ref()))
}

/// Dex's current signing key, fetched the way a client would: discovery, then the JWKS.
fn dex_signing_key(cluster: &support::Cluster) -> Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ca = std::fs::read(&cluster.oidc_ca_file).expect("read Dex's CA");
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("Dex CA is PEM"))
            .build()
            .unwrap();
        let discovery: Value = client
            .get(format!(
                "{}/.well-known/openid-configuration",
                cluster.oidc_issuer_url
            ))
            .send()
            .await
            .expect("Dex discovery answers")
            .json()
            .await
            .unwrap();
        let jwks: Value = client
            .get(discovery["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .expect("Dex JWKS answers")
            .json()
            .await
            .unwrap();
        jwks["keys"][0].clone()
    })
}

struct Case {
    name: &'static str,
    token: String,
    /// The validation reason both paths must give.
    reason: &'static str,
    /// What HTTP answers when it is not 401.
    http_status: u16,
}

fn case(name: &'static str, token: String, reason: &'static str) -> Case {
    Case {
        name,
        token,
        reason,
        http_status: 401,
    }
}

fn cases(cluster: &support::Cluster) -> Vec<Case> {
    let real = id_token(cluster, "alice");
    let (real_header, claims, real_signature) = segments(&real);
    let dex_key = dex_signing_key(cluster);
    let dex_kid = dex_key["kid"]
        .as_str()
        .expect("Dex's key has a kid")
        .to_owned();
    let attacker = Attacker::new();
    let rs = |kid: &str| json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
    let with = |changes: Value| {
        let mut changed = claims.clone();
        for (key, value) in changes.as_object().unwrap() {
            if value.is_null() {
                changed.as_object_mut().unwrap().remove(key);
            } else {
                changed[key] = value.clone();
            }
        }
        changed
    };
    // A copy of Dex's token with changed claims and Dex's original signature.
    let tampered = |changes: Value| {
        format!(
            "{real_header}.{}.{real_signature}",
            b64(with(changes).to_string().as_bytes())
        )
    };
    let now = chrono::Utc::now().timestamp();
    let n = URL_SAFE_NO_PAD
        .decode(dex_key["n"].as_str().unwrap())
        .unwrap();
    let e = URL_SAFE_NO_PAD
        .decode(dex_key["e"].as_str().unwrap())
        .unwrap();
    let dex_public_pem = rsa_spki_pem(&n, &e);

    vec![
        case("alg-none", format!("{}.{}.", b64(json!({"alg": "none", "kid": dex_kid}).to_string().as_bytes()), b64(claims.to_string().as_bytes())), "BadSignature"),
        case("hs256-with-dex-public-key", hs256(dex_public_pem.as_bytes(), &json!({"alg": "HS256", "kid": dex_kid}), &claims), "BadSignature"),
        case("hs256-with-dex-modulus", hs256(&n, &json!({"alg": "HS256", "kid": dex_kid}), &claims), "BadSignature"),
        case("rs256-attacker-key-dex-kid", attacker.rs256(&rs(&dex_kid), &claims), "BadSignature"),
        case("unknown-kid", attacker.rs256(&rs("attacker-key"), &claims), "UnknownKey"),
        case("kid-path-traversal", attacker.rs256(&rs("../../../../etc/passwd"), &claims), "UnknownKey"),
        case("kid-url", attacker.rs256(&rs("https://attacker.example/keys.json"), &claims), "UnknownKey"),
        // Without kid every Dex key is tried (as kube-apiserver does); none verifies it.
        case("missing-kid", attacker.rs256(&json!({"alg": "RS256"}), &claims), "BadSignature"),
        case("jku-header", attacker.rs256(&json!({"alg": "RS256", "kid": "attacker", "jku": "https://attacker.example/jwks"}), &claims), "UnknownKey"),
        case("x5u-header", attacker.rs256(&json!({"alg": "RS256", "kid": "attacker", "x5u": "https://attacker.example/cert.pem"}), &claims), "UnknownKey"),
        case("embedded-jwk-header", attacker.rs256(&json!({"alg": "RS256", "kid": "attacker", "jwk": attacker.public_jwk("attacker")}), &claims), "UnknownKey"),
        case("embedded-jwk-with-dex-kid", attacker.rs256(&json!({"alg": "RS256", "kid": dex_kid, "jwk": attacker.public_jwk(&dex_kid)}), &claims), "BadSignature"),
        case("es256-where-rs256-only", attacker.es256(&json!({"alg": "ES256", "kid": dex_kid}), &claims), "BadSignature"),
        case("tampered-expired", tampered(json!({"exp": now - 3600})), "BadSignature"),
        case("tampered-nbf-future", tampered(json!({"nbf": now + 3600})), "BadSignature"),
        case("tampered-iat-future", tampered(json!({"iat": now + 3600})), "BadSignature"),
        // Routed by the unverified `iss` before any key is looked at, as kube-apiserver routes.
        case("tampered-issuer", tampered(json!({"iss": "https://attacker.example/dex"})), "WrongIssuer"),
        case("tampered-issuer-trailing-slash", tampered(json!({"iss": format!("{}/", cluster.oidc_issuer_url)})), "WrongIssuer"),
        case("tampered-audience-missing", tampered(json!({"aud": null})), "BadSignature"),
        case("tampered-audience-foreign", tampered(json!({"aud": "someone-else"})), "BadSignature"),
        case("tampered-username-missing", tampered(json!({"email": null})), "BadSignature"),
        case("tampered-username-not-string", tampered(json!({"email": 42})), "BadSignature"),
        case("tampered-other-user", tampered(json!({"email": cluster.bob_username})), "BadSignature"),
        case("signature-stripped", format!("{real_header}.{}.", b64(claims.to_string().as_bytes())), "BadSignature"),
        case("payload-not-json", format!("{real_header}.{}.{real_signature}", b64(b"not json at all")), "Malformed"),
        case("bad-base64-header", format!("{real_header}*.{}.{real_signature}", b64(claims.to_string().as_bytes())), "Malformed"),
        case("bad-base64-signature", format!("{real_header}.{}.{real_signature}!", b64(claims.to_string().as_bytes())), "Malformed"),
        case("two-segments", format!("{real_header}.{}", b64(claims.to_string().as_bytes())), "Malformed"),
        case("four-segments", format!("{real}.{real_signature}"), "Malformed"),
        case("not-a-jwt", "garbage".to_owned(), "Malformed"),
        Case { name: "token-64-kib", token: format!("{real_header}.{}.{real_signature}", "A".repeat(64 * 1024)), reason: "Malformed", http_status: 431 },
        case("wrong-audience-from-dex", id_token_for_client(cluster, "alice", Client::Other), "WrongAudience"),
        case("another-issuer-from-dex", id_token_short_lived(cluster, "alice"), "WrongIssuer"),
        case("another-issuer-unknown-kid", attacker.rs256(&rs("other-issuer-key"), &with(json!({"iss": "https://login.other.example/"}))), "WrongIssuer"),
    ]
}

#[test]
fn crafted_tokens_are_refused_on_both_paths_and_nothing_leaks() {
    let cluster = cluster();
    let ns = support::Namespace::new(cluster, "hostile");
    let operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    let cases = cases(cluster);

    let mut error_bodies = String::new();
    for case in &cases {
        let response = http_get_kubeconfig(&operator.base_url, Some(&case.token), "");
        assert_eq!(
            response.status, case.http_status,
            "{}: {}",
            case.name, response.body
        );
        if case.http_status == 401 {
            let challenge = response.header("www-authenticate");
            assert!(
                challenge.contains("invalid_token"),
                "{}: {challenge}",
                case.name
            );
            assert!(
                response.body.starts_with(case.reason),
                "{}: expected {}, got {}",
                case.name,
                case.reason,
                response.body
            );
        }
        if case.reason == "WrongIssuer" {
            // The issuer the token names is named, so its holder knows where it went wrong.
            let (_, claims, _) = segments(&case.token);
            let from = claims["iss"].as_str().expect("the case names an issuer");
            assert!(
                response.body.contains(&format!("{from:?}")),
                "{}: {}",
                case.name,
                response.body
            );
        }
        error_bodies.push_str(&response.body);
        error_bodies.push_str(&format!("{:?}", response.headers));
    }

    for case in &cases {
        put_token_secret(cluster, &ns.name, case.name, "token", &case.token);
        apply_request(
            cluster,
            &ns.name,
            case.name,
            &format!("tokenSecretRef: {{name: {}}}", case.name),
        );
    }
    for case in &cases {
        let message = wait_for_reason(cluster, &ns.name, case.name, "TokenInvalid");
        assert!(
            message.starts_with(case.reason),
            "{}: expected {}, got {message}",
            case.name,
            case.reason
        );
    }

    // Controls: genuine tokens with two audiences are accepted whichever client `azp` names (as
    // kube-apiserver ignores azp), so the refusals above are not the operator refusing everything.
    let multi_audience = id_token_for_client(cluster, "alice", Client::OperatorForOther);
    let foreign_azp = id_token_for_client(cluster, "alice", Client::OtherForOperator);
    for token in [&multi_audience, &foreign_azp] {
        let accepted = http_get_kubeconfig(&operator.base_url, Some(token), "");
        assert_eq!(accepted.status, 200, "{}", accepted.body);
    }

    let status_and_events = kubectl(
        cluster,
        &["get", "kcr,events", "-n", &ns.name, "-o", "yaml"],
    );
    let metrics = operator.metrics();
    let logs = operator.logs();
    assert!(
        logs.contains("TRACE") || logs.contains("trace"),
        "the operator ran at trace level"
    );
    let places = [
        ("operator logs", &logs),
        ("status and events", &status_and_events),
        ("metrics", &metrics),
        ("HTTP error bodies and headers", &error_bodies),
    ];
    for case in cases
        .iter()
        .map(|c| c.token.as_str())
        .chain([multi_audience.as_str(), foreign_azp.as_str()])
    {
        let signature = case.rsplit('.').next().unwrap_or_default();
        for (place, text) in &places {
            if case.len() >= 16 {
                assert!(!text.contains(case), "a whole token leaked into {place}");
            }
            if signature.len() >= 16 {
                assert!(
                    !text.contains(signature),
                    "a token signature leaked into {place}"
                );
            }
        }
    }
}
