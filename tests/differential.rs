//! The operator's verdict on a token against kube-apiserver's own, token by token: each token of
//! a corpus goes through the operator's validator and through a `SelfSubjectReview` (which every
//! authenticated user may create, so its answer is the API server's verdict and the identity it
//! gives), and both must agree on accept or refuse and on username, uid, groups and extra.
//!
//! Two API servers of the local cluster are compared, each with the operator configured the same
//! way:
//! - the one with `--oidc-*` flags (main Dex, client `kubeconfig-operator`, claims `email` and
//!   `groups`), against the operator's flat `oidc.*` settings;
//! - the one with `--authentication-config` (main Dex with two audiences, a CEL username, a
//!   groups prefix, uid and an extra mapping; the short-lived Dex; the harness's test issuer with
//!   required claims, CEL rules and a user rule), against the operator reading the same file.
//!
//! The corpus: real Dex tokens for both users and both clients (also with two audiences and a
//! foreign `azp`), short-lived Dex tokens fresh and expired, and tokens the test signs with the
//! test issuer's keys (which its JWKS publishes): just expired, expired beyond the old 30 s
//! leeway, `nbf` inside and outside the skew, `email_verified` false, absent and "false", groups
//! as a string, claims the CEL rules refuse, and the shapes go-oidc and the API server refuse;
//! and groups distributed to the test issuer's claims endpoint, fetched or refused as
//! kube-apiserver's claim resolver fetches or refuses them.

#[path = "support/api_proxy.rs"]
mod api_proxy;
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use base64::Engine as _;
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubeconfig_operator::{
    config::{KubeconfigSection, OidcSection, OidcSettings, Settings, Strictness},
    oidc::token::{IdToken, Identity},
    oidc::verify::Verifier,
};
use serde_json::{Value, json};
use support::{
    Client, Cluster, Namespace, cluster, id_token, id_token_for_client, id_token_short_lived,
    operator::{Issuer, LEASE_NAMESPACE, Operator, lease_events, the_only_warning},
    requests::http_get_kubeconfig,
};

/// The group kube-apiserver adds to every authenticated user; it is not the token's.
const AUTHENTICATED: &str = "system:authenticated";

/// kube-apiserver's verdict: the identity it gives the token, or `None` for 401.
async fn api_server_verdict(
    server: &str,
    ca: &reqwest::Certificate,
    token: &str,
) -> Option<Identity> {
    let client = reqwest::Client::builder()
        .tls_certs_only([ca.clone()])
        .build()
        .expect("an HTTPS client for the API server");
    let response = client
        .post(format!(
            "{server}/apis/authentication.k8s.io/v1/selfsubjectreviews"
        ))
        .bearer_auth(token)
        .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}))
        .send()
        .await
        .expect("reach the API server");
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON answer");
    match status.as_u16() {
        401 => None,
        201 => {
            let user = &body["status"]["userInfo"];
            let strings = |value: &Value| -> Vec<String> {
                value
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            Some(Identity {
                username: user["username"].as_str().unwrap_or_default().to_owned(),
                uid: user["uid"].as_str().unwrap_or_default().to_owned(),
                groups: strings(&user["groups"])
                    .into_iter()
                    .filter(|group| group != AUTHENTICATED)
                    .collect(),
                extra: user["extra"]
                    .as_object()
                    .map(|extra| {
                        extra
                            .iter()
                            .map(|(key, values)| (key.clone(), strings(values)))
                            .collect()
                    })
                    .unwrap_or_default(),
                // Not part of the comparison.
                expires_at: Utc::now(),
                issued_at: None,
            })
        }
        other => panic!("SelfSubjectReview answered {other}: {body}"),
    }
}

/// What is compared: the identity without its times (`None` for a refusal).
#[derive(Debug, PartialEq)]
struct Who {
    username: String,
    uid: String,
    groups: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
}

fn comparable(verdict: &Option<Identity>) -> Option<Who> {
    verdict.as_ref().map(|identity| Who {
        username: identity.username.clone(),
        uid: identity.uid.clone(),
        groups: identity.groups.clone(),
        extra: identity.extra.clone(),
    })
}

/// What one API server's comparison found.
struct Outcome {
    disagreements: Vec<String>,
    /// The labels of the tokens both accepted.
    accepted: Vec<String>,
}

/// Runs the corpus through both, printing each verdict and the counts.
async fn compare(
    name: &str,
    verifier: &Verifier,
    server: &str,
    ca: &reqwest::Certificate,
    corpus: &[(String, String)],
) -> Outcome {
    verifier
        .load()
        .await
        .expect("the operator fetches every issuer's keys");
    // kube-apiserver discovers the issuer a claim source's JWT names in the background, on the
    // first token that needs it, and refuses that token ("verifier not initialized"); the
    // operator discovers it at once. Both are compared once the API server has it.
    let mut warmed = false;
    for (_, token) in corpus
        .iter()
        .filter(|(label, _)| label.contains(DISTRIBUTED))
    {
        api_server_verdict(server, ca, token).await;
        warmed = true;
    }
    if warmed {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut disagreements = Vec::new();
    let mut accepted = Vec::new();
    for (label, token) in corpus {
        let ours = verifier.verify(&IdToken::from(token.clone())).await;
        let theirs = api_server_verdict(server, ca, token).await;
        let ours_cmp = comparable(&ours.as_ref().ok().cloned());
        if ours_cmp.is_some() && theirs.is_some() {
            accepted.push(label.clone());
        }
        match &ours {
            Ok(identity) => println!("  {label}: accepted as {:?}", identity.username),
            Err(error) => println!("  {label}: refused ({})", error.reason()),
        }
        if ours_cmp != comparable(&theirs) {
            disagreements.push(format!(
                "{label}: operator {:?}, kube-apiserver {:?}",
                ours.map(|i| comparable(&Some(i)))
                    .map_err(|e| e.to_string()),
                comparable(&theirs)
            ));
        }
    }
    println!(
        "{name}: {} tokens compared ({} accepted by both), {} disagreements",
        corpus.len(),
        accepted.len(),
        disagreements.len()
    );
    Outcome {
        disagreements,
        accepted,
    }
}

/// Signs tokens for one issuer with keys its JWKS publishes: the harness test issuer's (RSA and
/// EC, which the test holds) or the main Dex's current signing key (read from Dex's storage).
struct Signer {
    issuer: String,
    /// The RSA key and its kid.
    rsa: (EncodingKey, String),
    /// The EC P-256 key and its kid, when the issuer has one.
    ec: Option<(EncodingKey, String)>,
    /// The claims of a valid token, with its `iss`.
    base: Value,
}

/// A PEM file's private key as DER (PKCS#1 or PKCS#8, whichever the file holds).
fn key_der(path: &str) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{path} holds no private key"));
    key.secret_der().to_vec()
}

fn env<'a>(cluster: &'a Cluster, name: &str) -> &'a str {
    cluster
        .env
        .get(name)
        .unwrap_or_else(|| panic!("the cluster env has no {name}; run make cluster-up"))
}

impl Signer {
    fn test_issuer(cluster: &Cluster) -> Self {
        let now = Utc::now().timestamp();
        let issuer = env(cluster, "TEST_ISSUER_URL").to_owned();
        Self {
            // PKCS#1 and PKCS#8 DER, as the harness writes them.
            rsa: (
                EncodingKey::from_rsa_der(&key_der(env(cluster, "TEST_ISSUER_RSA_KEY_FILE"))),
                "test-rsa".into(),
            ),
            ec: Some((
                EncodingKey::from_ec_der(&key_der(env(cluster, "TEST_ISSUER_EC_KEY_FILE"))),
                "test-ec".into(),
            )),
            base: json!({
                "iss": issuer,
                "sub": "carol-1",
                "aud": "kubeconfig-operator",
                "exp": now + 600,
                "iat": now,
                "email": "carol@example.com",
                "email_verified": true,
                "groups": ["devs", "ops"],
                "tenant": "acme",
                "roles": ["reader"],
            }),
            issuer,
        }
    }

    /// The main Dex's current signing key, as `dexkey` reads it from Dex's storage.
    fn dex(cluster: &Cluster) -> Self {
        let output = std::process::Command::new(env(cluster, "DEX_KEY_TOOL"))
            .arg(env(cluster, "DEX_DB_FILE"))
            .output()
            .expect("run dexkey");
        assert!(
            output.status.success(),
            "dexkey failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let key: Value = serde_json::from_slice(&output.stdout).expect("dexkey prints JSON");
        assert_eq!(key["alg"], "RS256");
        let der = base64::engine::general_purpose::STANDARD
            .decode(key["pkcs1"].as_str().expect("pkcs1"))
            .expect("base64 DER");
        let now = Utc::now().timestamp();
        Self {
            rsa: (
                EncodingKey::from_rsa_der(&der),
                key["kid"].as_str().expect("kid").to_owned(),
            ),
            ec: None,
            base: json!({
                "iss": cluster.oidc_issuer_url,
                "sub": "CgVhbGljZRIEbGRhcA",
                "aud": "kubeconfig-operator",
                "exp": now + 600,
                "iat": now,
                "email": "alice@example.com",
                "email_verified": true,
                "groups": ["team-a"],
                "name": "Alice",
            }),
            issuer: cluster.oidc_issuer_url.clone(),
        }
    }

    fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        let key = match (alg, &self.ec) {
            (Algorithm::ES256, Some((ec, _))) => ec,
            _ => &self.rsa.0,
        };
        jsonwebtoken::encode(&header, claims, key).expect("sign a test token")
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(Algorithm::RS256, Some(&self.rsa.1), claims)
    }

    /// An RS256 token of `claims` with the members `before` ahead of them and `after` behind
    /// them, in that order: a `Value` cannot hold two members that Go's encoding/json matches to
    /// one field (`exp` and `EXP`), nor say which comes last, which is the one Go keeps.
    fn sign_members(
        &self,
        before: &[(&str, Value)],
        claims: &Value,
        after: &[(&str, Value)],
    ) -> String {
        let member = |(name, value): &(&str, Value)| format!("{}:{value}", json!(name));
        let inner = claims.to_string();
        let inner = inner
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
            .expect("claims are an object");
        let members: Vec<String> = before
            .iter()
            .map(member)
            .chain((!inner.is_empty()).then(|| inner.to_owned()))
            .chain(after.iter().map(member))
            .collect();
        let payload = format!("{{{}}}", members.join(","));
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.rsa.1.clone());
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signed = format!(
            "{}.{}",
            engine.encode(serde_json::to_vec(&header).expect("a header")),
            engine.encode(payload)
        );
        let signature =
            jsonwebtoken::crypto::sign(signed.as_bytes(), &self.rsa.0, Algorithm::RS256)
                .expect("sign a test token");
        format!("{signed}.{signature}")
    }

    /// An RS256 token of `claims` whose header holds `extra` beside (or instead of) its `alg` and
    /// `kid`.
    fn sign_with_header(&self, extra: &[(&str, Value)], claims: &Value) -> String {
        let mut header = json!({"alg": "RS256", "kid": self.rsa.1});
        for (name, value) in extra {
            header[*name] = value.clone();
        }
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signed = format!(
            "{}.{}",
            engine.encode(header.to_string()),
            engine.encode(claims.to_string())
        );
        let signature =
            jsonwebtoken::crypto::sign(signed.as_bytes(), &self.rsa.0, Algorithm::RS256)
                .expect("sign a test token");
        format!("{signed}.{signature}")
    }

    fn claims(&self) -> Value {
        self.base.clone()
    }
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims
        .as_object_mut()
        .expect("claims are an object")
        .remove(name);
    claims
}

type Corpus = Vec<(String, String)>;

/// The cases every issuer gets: times, audiences, `email_verified`, groups shapes, keys.
fn common_cases(signer: &Signer, who: &str) -> Corpus {
    let now = Utc::now().timestamp();
    let base = signer.claims();
    let kid = signer.rsa.1.as_str();
    let cases: Vec<(&str, String)> =
        vec![
        ("valid RS256", signer.sign(&base)),
        (
            "PS256 with the RSA key",
            signer.sign_as(Algorithm::PS256, Some(kid), &base),
        ),
        (
            "no kid: every key is tried",
            signer.sign_as(Algorithm::RS256, None, &base),
        ),
        (
            "unknown kid",
            signer.sign_as(Algorithm::RS256, Some("rotated-away"), &base),
        ),
        (
            "two audiences, azp the other",
            signer.sign(&with(
                with(
                    base.clone(),
                    "aud",
                    json!(["other-app", "kubeconfig-operator"]),
                ),
                "azp",
                json!("other-app"),
            )),
        ),
        (
            "audience other-app only",
            signer.sign(&with(base.clone(), "aud", json!("other-app"))),
        ),
        (
            "foreign audience only",
            signer.sign(&with(base.clone(), "aud", json!(["someone-else"]))),
        ),
        (
            "expired 1 s ago",
            signer.sign(&with(base.clone(), "exp", json!(now - 1))),
        ),
        (
            "expired 10 s ago",
            signer.sign(&with(base.clone(), "exp", json!(now - 10))),
        ),
        (
            "expired 45 s ago (beyond the old leeway)",
            signer.sign(&with(base.clone(), "exp", json!(now - 45))),
        ),
        (
            "exp as a fractional number",
            signer.sign(&with(base.clone(), "exp", json!(now as f64 + 600.5))),
        ),
        (
            "exp as a numeric string",
            signer.sign(&with(base.clone(), "exp", json!((now + 600).to_string()))),
        ),
        ("no exp", signer.sign(&without(base.clone(), "exp"))),
        (
            "nbf 30 s ahead (inside the skew)",
            signer.sign(&with(base.clone(), "nbf", json!(now + 30))),
        ),
        (
            "nbf 5 min ahead (outside the skew)",
            signer.sign(&with(base.clone(), "nbf", json!(now + 300))),
        ),
        (
            "nbf in the past",
            signer.sign(&with(base.clone(), "nbf", json!(now - 10))),
        ),
        (
            "iat an hour ahead",
            signer.sign(&with(base.clone(), "iat", json!(now + 3600))),
        ),
        ("no iat", signer.sign(&without(base.clone(), "iat"))),
        (
            "email_verified false",
            signer.sign(&with(base.clone(), "email_verified", json!(false))),
        ),
        (
            "email_verified absent",
            signer.sign(&without(base.clone(), "email_verified")),
        ),
        (
            "email_verified \"false\"",
            signer.sign(&with(base.clone(), "email_verified", json!("false"))),
        ),
        (
            "email_verified \"true\"",
            signer.sign(&with(base.clone(), "email_verified", json!("true"))),
        ),
        ("no email", signer.sign(&without(base.clone(), "email"))),
        (
            "groups as a string",
            signer.sign(&with(base.clone(), "groups", json!("admins"))),
        ),
        (
            "groups absent",
            signer.sign(&without(base.clone(), "groups")),
        ),
        (
            "groups null",
            signer.sign(&with(base.clone(), "groups", Value::Null)),
        ),
        (
            "groups with a number",
            signer.sign(&with(base.clone(), "groups", json!(["a", 1]))),
        ),
        (
            "groups from an aggregated source (a JWT, no endpoint): skipped",
            signer.sign(&with(
                with(
                    without(base.clone(), "groups"),
                    "_claim_names",
                    json!({"groups": "src1"}),
                ),
                "_claim_sources",
                json!({"src1": {"JWT": "e30.eyJncm91cHMiOlsiYWRtaW4iXX0.c2ln"}}),
            )),
        ),
        (
            "groups from a distributed source that cannot be fetched",
            signer.sign(&with(
                with(
                    without(base.clone(), "groups"),
                    "_claim_names",
                    json!({"groups": "src1"}),
                ),
                "_claim_sources",
                json!({"src1": {"endpoint": "https://127.0.0.1:1/claims", "access_token": "x"}}),
            )),
        ),
        (
            "_claim_sources with an endpoint that is not a string",
            signer.sign(&with(
                with(
                    without(base.clone(), "groups"),
                    "_claim_names",
                    json!({"groups": "src1"}),
                ),
                "_claim_sources",
                json!({"src1": {"endpoint": 7}}),
            )),
        ),
        (
            "jti becomes the credential id",
            signer.sign(&with(base.clone(), "jti", json!("token-42"))),
        ),
        (
            "jti empty",
            signer.sign(&with(base.clone(), "jti", json!(""))),
        ),
        (
            "RS384 with the RSA key",
            signer.sign_as(Algorithm::RS384, Some(kid), &base),
        ),
        (
            "RS512 with the RSA key",
            signer.sign_as(Algorithm::RS512, Some(kid), &base),
        ),
        (
            "PS512 with the RSA key",
            signer.sign_as(Algorithm::PS512, Some(kid), &base),
        ),
        (
            "groups an empty list",
            signer.sign(&with(base.clone(), "groups", json!([]))),
        ),
        (
            "groups with a null item",
            signer.sign(&with(base.clone(), "groups", json!(["a", null]))),
        ),
        ("aud null", signer.sign(&with(base.clone(), "aud", Value::Null))),
        (
            "aud an empty list",
            signer.sign(&with(base.clone(), "aud", json!([]))),
        ),
        (
            "exp in the year 3000",
            signer.sign(&with(base.clone(), "exp", json!(32_503_680_000_i64))),
        ),
        (
            "email a list",
            signer.sign(&with(base.clone(), "email", json!(["a@example.com"]))),
        ),
        (
            "sub not a string",
            signer.sign(&with(base.clone(), "sub", json!(7))),
        ),
        (
            "issuer with a trailing slash",
            signer.sign(&with(
                base.clone(),
                "iss",
                json!(format!("{}/", signer.issuer)),
            )),
        ),
        // go-oidc decodes the registered claims into a struct with Go's encoding/json, which
        // matches member names case-insensitively (Unicode folding) and keeps the last match.
        (
            "exp, then EXP in the past",
            signer.sign_members(&[], &base, &[("EXP", json!(now - 60))]),
        ),
        (
            "EXP in the past, then exp",
            signer.sign_members(&[("EXP", json!(now - 60))], &base, &[]),
        ),
        (
            "exp, then Exp not a time",
            signer.sign_members(&[], &base, &[("Exp", json!("soon"))]),
        ),
        (
            "EXP instead of exp",
            signer.sign_members(&[], &without(base.clone(), "exp"), &[("EXP", json!(now + 600))]),
        ),
        (
            "NBF an hour ahead",
            signer.sign_members(&[], &base, &[("NBF", json!(now + 3600))]),
        ),
        (
            "iss, then ISS of another issuer",
            signer.sign_members(&[], &base, &[("ISS", json!("https://other.example"))]),
        ),
        (
            "iss, then i\u{17f}s (long s) of another issuer",
            signer.sign_members(&[], &base, &[("i\u{17f}s", json!("https://other.example"))]),
        ),
        (
            "sub, then SUB a number",
            signer.sign_members(&[], &base, &[("SUB", json!(5))]),
        ),
        (
            "aud, then AUD another audience",
            signer.sign_members(&[], &base, &[("AUD", json!("other-app"))]),
        ),
        (
            "IAT not a time",
            signer.sign_members(&[], &base, &[("IAT", json!("x"))]),
        ),
        (
            "exp twice, the last in the past",
            signer.sign_members(&[], &base, &[("exp", json!(now - 60))]),
        ),
        (
            "iss, then iss null",
            signer.sign_members(&[], &base, &[("iss", json!(null))]),
        ),
        (
            "exp twice, the first in the past",
            signer.sign_members(&[("exp", json!(now - 60))], &base, &[]),
        ),
        // Header members go-jose decodes into types of its own (jwk, x5c, kid, nonce) and
        // members it keeps as any JSON (typ, cty, its own).
        (
            "header typ a number",
            signer.sign_with_header(&[("typ", json!(5))], &base),
        ),
        (
            "header cty an object",
            signer.sign_with_header(&[("cty", json!({}))], &base),
        ),
        (
            "header jwk a string",
            signer.sign_with_header(&[("jwk", json!("x"))], &base),
        ),
        (
            "header x5c not certificates",
            signer.sign_with_header(&[("x5c", json!(["bm90IGEgY2VydA"]))], &base),
        ),
        (
            "header kid null",
            signer.sign_with_header(&[("kid", Value::Null)], &base),
        ),
        (
            "header nonce a number",
            signer.sign_with_header(&[("nonce", json!(1))], &base),
        ),
        (
            "header with a member of its own",
            signer.sign_with_header(&[("x-extra", json!({"a": 1}))], &base),
        ),
        ("signed by a key the issuer does not publish", {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(kid.to_owned());
            jsonwebtoken::encode(
                &header,
                &base,
                &kubeconfig_operator::testing::issuer().encoding,
            )
            .expect("sign")
        }),
    ];
    cases
        .into_iter()
        .map(|(label, token)| (format!("{who}: {label}"), token))
        .collect()
}

/// What labels the cases whose groups a claim source holds: kube-apiserver refuses them until it
/// has discovered the source's issuer in the background, so [`compare`] shows them to it first.
const DISTRIBUTED: &str = "distributed groups";

/// Groups distributed to the test issuer's claims endpoint (`/claims?jwt=...` answers the JWT the
/// test signed), for the tokens of `signer`: what kube-apiserver's claim resolver fetches, how it
/// verifies the JWT it gets, and its errors.
fn distributed_cases(signer: &Signer, source: &Signer, who: &str) -> Corpus {
    let now = Utc::now().timestamp();
    let base = without(signer.claims(), "groups");
    let source_claims = json!({
        "iss": source.issuer,
        "sub": "groups-source",
        "aud": "kubeconfig-operator",
        "exp": now + 600,
        "groups": ["from-source", "second"],
    });
    let good = source.sign(&source_claims);
    let endpoint = |jwt: &str, query: &str| format!("{}/claims?jwt={jwt}{query}", source.issuer);
    let distributed = |endpoint: String, access_token: Option<&str>| {
        let mut source = json!({ "endpoint": endpoint });
        if let Some(token) = access_token {
            source["access_token"] = json!(token);
        }
        signer.sign(&with(
            with(base.clone(), "_claim_names", json!({"groups": "src1"})),
            "_claim_sources",
            json!({ "src1": source }),
        ))
    };
    let signed = |claims: Value| endpoint(&source.sign(&claims), "");
    let cases: Vec<(&str, String)> = vec![
        ("from the endpoint", distributed(endpoint(&good, ""), None)),
        (
            "with the source's access_token",
            distributed(endpoint(&good, "&bearer=src-t0k"), Some("src-t0k")),
        ),
        (
            "with a wrong access_token",
            distributed(endpoint(&good, "&bearer=src-t0k"), Some("other")),
        ),
        (
            "answered with status 203",
            distributed(endpoint(&good, "&status=203"), None),
        ),
        (
            "answered with status 299",
            distributed(endpoint(&good, "&status=299"), None),
        ),
        (
            "answered with status 500",
            distributed(endpoint(&good, "&status=500"), None),
        ),
        (
            "answered with a trailing newline",
            distributed(endpoint(&format!("{good}%0A"), ""), None),
        ),
        (
            "answered with no JWT",
            distributed(endpoint("not-a-jwt", ""), None),
        ),
        (
            "as one string",
            distributed(
                signed(with(source_claims.clone(), "groups", json!("solo"))),
                None,
            ),
        ),
        (
            "JWT expired",
            distributed(
                signed(with(source_claims.clone(), "exp", json!(now - 5))),
                None,
            ),
        ),
        (
            "JWT without exp",
            distributed(signed(without(source_claims.clone(), "exp")), None),
        ),
        (
            "JWT for other-app",
            distributed(
                signed(with(source_claims.clone(), "aud", json!("other-app"))),
                None,
            ),
        ),
        (
            "JWT without the groups",
            distributed(signed(without(source_claims.clone(), "groups")), None),
        ),
        (
            "JWT signed by a key its issuer does not publish",
            distributed(
                endpoint(
                    &{
                        let mut header = Header::new(Algorithm::RS256);
                        header.kid = Some(source.rsa.1.clone());
                        jsonwebtoken::encode(
                            &header,
                            &source_claims,
                            &kubeconfig_operator::testing::issuer().encoding,
                        )
                        .expect("sign")
                    },
                    "",
                ),
                None,
            ),
        ),
        (
            "JWT naming an issuer that does not answer",
            distributed(
                endpoint(
                    &source.sign(&with(
                        source_claims.clone(),
                        "iss",
                        json!("https://127.0.0.1:1"),
                    )),
                    "",
                ),
                None,
            ),
        ),
        (
            "ES256 JWT",
            distributed(
                endpoint(
                    &source.sign_as(
                        Algorithm::ES256,
                        source.ec.as_ref().map(|(_, kid)| kid.as_str()),
                        &source_claims,
                    ),
                    "",
                ),
                None,
            ),
        ),
        (
            "JWT of the token's own issuer",
            distributed(
                endpoint(
                    &signer.sign(&with(
                        source_claims.clone(),
                        "iss",
                        json!(signer.issuer.clone()),
                    )),
                    "",
                ),
                None,
            ),
        ),
        ("endpoint not a URL", distributed("not a url".into(), None)),
        ("groups in the token itself: nothing fetched", {
            signer.sign(&with(
                with(
                    with(base.clone(), "groups", json!(["own"])),
                    "_claim_names",
                    json!({"groups": "src1"}),
                ),
                "_claim_sources",
                json!({"src1": {"endpoint": "https://127.0.0.1:1/claims"}}),
            ))
        }),
        ("another claim distributed: nothing fetched", {
            signer.sign(&with(
                with(base.clone(), "_claim_names", json!({"roles": "src1"})),
                "_claim_sources",
                json!({"src1": {"endpoint": "https://127.0.0.1:1/claims"}}),
            ))
        }),
    ];
    cases
        .into_iter()
        .map(|(label, token)| (format!("{who}: {DISTRIBUTED} {label}"), token))
        .collect()
}

/// The cases of the main Dex's own mappings: the CEL username reads `email`, the claim rule
/// `email_verified`, the extra `name`.
fn dex_cases(signer: &Signer) -> Corpus {
    let base = signer.claims();
    let mut corpus = common_cases(signer, "Dex-signed");
    for (label, claims) in [
        ("no name: no extra", without(base.clone(), "name")),
        (
            "name as a list",
            with(base.clone(), "name", json!(["Alice", "A."])),
        ),
        ("email null", with(base.clone(), "email", Value::Null)),
    ] {
        corpus.push((format!("Dex-signed: {label}"), signer.sign(&claims)));
    }
    corpus
}

/// An ES512 token of the test issuer, signed with the P-521 key its JWKS publishes (`p521.pem`
/// beside its other keys); jsonwebtoken cannot sign ES512, aws-lc-rs can.
fn sign_es512(cluster: &Cluster, kid: &str, claims: &Value) -> String {
    use aws_lc_rs::signature::{ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let dir = std::path::Path::new(env(cluster, "TEST_ISSUER_RSA_KEY_FILE"))
        .parent()
        .expect("the test issuer's key directory");
    let der = key_der(dir.join("p521.pem").to_str().expect("UTF-8 path"));
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P521_SHA512_FIXED_SIGNING, &der)
        .expect("p521.pem is a P-521 key");
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES512", "kid": kid}).to_string());
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = key
        .sign(&aws_lc_rs::rand::SystemRandom::new(), signed.as_bytes())
        .expect("sign");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

/// The test issuer's rules: required claim, CEL claim and user rules, CEL uid and extra.
fn test_issuer_cases(cluster: &Cluster, signer: &Signer) -> Corpus {
    let base = signer.claims();
    let mut corpus = common_cases(signer, "test issuer");
    let ec_kid = signer.ec.as_ref().map(|(_, kid)| kid.as_str());
    corpus.push((
        "test issuer: ES256".into(),
        signer.sign_as(Algorithm::ES256, ec_kid, &base),
    ));
    corpus.push((
        "test issuer: ES256 under the RSA kid".into(),
        signer.sign_as(Algorithm::ES256, Some(&signer.rsa.1), &base),
    ));
    corpus.push((
        "test issuer: ES512".into(),
        sign_es512(cluster, "test-p521", &base),
    ));
    corpus.push((
        "test issuer: ES512 under the EC P-256 kid".into(),
        sign_es512(cluster, "test-ec", &base),
    ));
    for (label, claims) in [
        (
            "second audience",
            with(base.clone(), "aud", json!("test-audience-b")),
        ),
        ("email null", with(base.clone(), "email", Value::Null)),
        (
            "required claim tenant missing",
            without(base.clone(), "tenant"),
        ),
        (
            "required claim tenant wrong",
            with(base.clone(), "tenant", json!("globex")),
        ),
        (
            "CEL claim rule refuses blocked",
            with(base.clone(), "blocked", json!(true)),
        ),
        (
            "CEL claim rule: blocked as the string \"true\"",
            with(base.clone(), "blocked", json!("true")),
        ),
        (
            "CEL user rule refuses root",
            with(base.clone(), "email", json!("root@example.com")),
        ),
        (
            "extra from a string",
            with(base.clone(), "roles", json!("admin")),
        ),
        (
            "extra from an empty list",
            with(base.clone(), "roles", json!([])),
        ),
        (
            "extra drops empty strings",
            with(base.clone(), "roles", json!(["a", ""])),
        ),
        (
            "extra from a list with a number",
            with(base.clone(), "roles", json!(["a", 2])),
        ),
        ("no sub: the CEL uid fails", without(base.clone(), "sub")),
    ] {
        corpus.push((format!("test issuer: {label}"), signer.sign(&claims)));
    }
    corpus
}

/// Real Dex tokens: both users and both clients, also with two audiences and a foreign `azp`.
fn dex_tokens(cluster: &Cluster) -> Corpus {
    let mut corpus = Vec::new();
    for user in ["alice", "bob"] {
        for (label, client) in [
            ("for kubeconfig-operator", Client::Operator),
            ("for other-app", Client::Other),
            (
                "for kubeconfig-operator and other-app",
                Client::OperatorForOther,
            ),
            (
                "for other-app and kubeconfig-operator, azp other-app",
                Client::OtherForOperator,
            ),
        ] {
            corpus.push((
                format!("Dex {user} {label}"),
                id_token_for_client(cluster, user, client),
            ));
        }
    }
    corpus
}

/// Fresh tokens of the short-lived Dex (5 s): compared first, while they are valid.
fn short_lived_tokens(cluster: &Cluster, state: &str) -> Corpus {
    ["alice", "bob"]
        .iter()
        .map(|user| {
            (
                format!("short-lived Dex {user} {state}"),
                id_token_short_lived(cluster, user),
            )
        })
        .collect()
}

/// The whole corpus, made right before it is compared so that relative times hold.
/// The short-lived Dex's fresh tokens are fetched last and checked first, so they are still valid.
fn corpus(cluster: &Cluster, expired: &Corpus) -> Corpus {
    let (dex, test_issuer) = (Signer::dex(cluster), Signer::test_issuer(cluster));
    let mut rest = dex_tokens(cluster);
    rest.extend(dex_cases(&dex));
    rest.extend(distributed_cases(&dex, &test_issuer, "Dex-signed"));
    rest.extend(test_issuer_cases(cluster, &test_issuer));
    rest.extend(distributed_cases(&test_issuer, &test_issuer, "test issuer"));
    rest.extend(expired.iter().cloned());
    let mut corpus = short_lived_tokens(cluster, "fresh");
    corpus.extend(rest);
    corpus
}

fn args_for(cluster: &Cluster, oidc: OidcSection) -> Settings {
    Settings {
        kubeconfig: KubeconfigSection {
            server: Some(cluster.kube_server.clone()),
            certificate_authority_file: Some(PathBuf::from(&cluster.kube_ca_file)),
            ..KubeconfigSection::default()
        },
        oidc,
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_and_kube_apiserver_agree_on_every_token() {
    let _file = API_SERVERS_FILE.lock().await;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cluster = cluster();
    let ca = reqwest::Certificate::from_pem(
        &std::fs::read(&cluster.kube_ca_file).expect("read the cluster CA"),
    )
    .expect("the cluster CA is PEM");
    // Short-lived Dex tokens that have expired by the time they are compared.
    let expired = short_lived_tokens(cluster, "expired");
    thread::sleep(Duration::from_secs(6));

    // The API server with --oidc-* flags, and the operator with the same flat settings.
    let legacy_args = args_for(
        cluster,
        OidcSection {
            issuer_url: Some(cluster.oidc_issuer_url.clone()),
            client_id: Some(cluster.oidc_client_id.clone()),
            ca_file: Some(PathBuf::from(&cluster.oidc_ca_file)),
            username_claim: Some("email".into()),
            groups_claim: Some("groups".into()),
            ..OidcSection::default()
        },
    );
    let legacy = match kubeconfig_operator::config::Config::load(&legacy_args)
        .expect("the legacy settings are valid")
        .oidc
    {
        OidcSettings::Flags(oidc) => Verifier::new(*oidc).await.expect("a verifier"),
        other => panic!("expected the flat settings, got {other:?}"),
    };
    let legacy_corpus = corpus(cluster, &expired);
    let legacy_outcome = compare(
        "kube-apiserver with --oidc-* flags",
        &legacy,
        &cluster.kube_server,
        &ca,
        &legacy_corpus,
    )
    .await;

    // The API server with --authentication-config, and the operator reading the same file.
    let file = PathBuf::from(env(cluster, "AUTHENTICATION_CONFIG_FILE"));
    let authn_args = args_for(
        cluster,
        OidcSection {
            authentication_config: Some(file),
            ..OidcSection::default()
        },
    );
    let structured = match kubeconfig_operator::config::Config::load(&authn_args)
        .expect("the authentication configuration setting is valid")
        .oidc
    {
        OidcSettings::AuthenticationConfig { path, strictness } => {
            assert_eq!(strictness, Strictness::default());
            Verifier::from_authentication_config(&path, strictness)
                .await
                .expect("the operator accepts the API server's file")
        }
        other => panic!("expected the authentication configuration, got {other:?}"),
    };
    let structured_corpus = corpus(cluster, &expired);
    let structured_outcome = compare(
        "kube-apiserver with --authentication-config",
        &structured,
        env(cluster, "KUBE_AUTHN_SERVER"),
        &ca,
        &structured_corpus,
    )
    .await;

    // The cases the corpus is for were really exercised, not refused by both for another reason.
    for (outcome, must_accept) in [
        (
            &legacy_outcome,
            &[
                "Dex alice for other-app and kubeconfig-operator, azp other-app",
                "Dex-signed: nbf 30 s ahead (inside the skew)",
                "Dex-signed: email_verified absent",
                "Dex-signed: groups as a string",
                "Dex-signed: groups from an aggregated source (a JWT, no endpoint): skipped",
                "Dex-signed: distributed groups from the endpoint",
                "Dex-signed: distributed groups with the source's access_token",
                "Dex-signed: distributed groups answered with status 203",
                "Dex-signed: distributed groups answered with a trailing newline",
                "Dex-signed: distributed groups JWT of the token's own issuer",
            ][..],
        ),
        (
            &structured_outcome,
            &[
                "short-lived Dex alice fresh",
                "Dex bob for other-app",
                "test issuer: ES256",
                "test issuer: ES512",
                "test issuer: extra from a string",
                "test issuer: CEL claim rule: blocked as the string \"true\"",
                "test issuer: groups from an aggregated source (a JWT, no endpoint): skipped",
                "test issuer: distributed groups from the endpoint",
                "test issuer: distributed groups with the source's access_token",
                "test issuer: distributed groups as one string",
                "test issuer: distributed groups ES256 JWT",
                "Dex-signed: distributed groups JWT for other-app",
            ][..],
        ),
    ] {
        for label in must_accept {
            assert!(
                outcome.accepted.iter().any(|accepted| accepted == label),
                "{label} was not accepted by both"
            );
        }
    }
    let disagreements: Vec<&String> = legacy_outcome
        .disagreements
        .iter()
        .chain(&structured_outcome.disagreements)
        .collect();
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements
            .iter()
            .map(|line| line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The operator binary reloads its authentication configuration: an edit changes its verdict
/// without a restart, and an invalid edit is logged with its digest and ignored, and recorded as
/// a Warning Event on the operator's Lease.
#[test]
fn editing_the_authentication_configuration_changes_the_verdict_without_a_restart() {
    let cluster = cluster();
    let issuer = Signer::test_issuer(cluster);
    let original = std::fs::read_to_string(env(cluster, "AUTHENTICATION_CONFIG_FILE"))
        .expect("read the cluster's authentication configuration");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("authentication-config.yaml");
    std::fs::write(&file, &original).expect("write the operator's copy");
    let path = file.to_str().expect("UTF-8 path");
    let ns = Namespace::new(cluster, "authn-reload");
    let lease = format!("authn-reload-{}", ns.name);
    let operator = Operator::start(
        cluster,
        &ns.name,
        Issuer::AuthenticationConfig,
        &[
            "--authentication-config",
            path,
            "--leader-elect=true",
            "--leader-election-namespace",
            LEASE_NAMESPACE,
            "--leader-election-lease-name",
            &lease,
        ],
    );
    let token = issuer.sign(&issuer.claims());
    let status = || http_get_kubeconfig(&operator.base_url, Some(&token), "").status;
    assert_eq!(
        status(),
        200,
        "the test issuer's token is accepted at first"
    );

    // The owner now requires another tenant: the same token is refused, without a restart.
    let edited = original.replace("requiredValue: acme", "requiredValue: globex");
    assert_ne!(edited, original);
    std::fs::write(&file, &edited).expect("edit the file");
    support::eventually(Duration::from_secs(30), "the edit takes effect", || {
        status() == 401
    });

    // An invalid edit is logged with its digest and ignored: the last good file stays in force.
    let broken = edited.replace(
        "audienceMatchPolicy: MatchAny",
        "audienceMatchPolicy: MatchAll",
    );
    std::fs::write(&file, &broken).expect("break the file");
    support::eventually(
        Duration::from_secs(30),
        "the invalid edit is logged",
        || {
            !operator
                .log_events_with(
                    "ignoring the changed authentication configuration; keeping the previous one",
                )
                .is_empty()
        },
    );
    let logged = operator.log_events_with(
        "ignoring the changed authentication configuration; keeping the previous one",
    );
    let problem = logged[0].to_string();
    assert!(
        problem.contains("sha256:") && problem.contains("audienceMatchPolicy must be MatchAny"),
        "{problem}"
    );
    assert_eq!(
        status(),
        401,
        "the last good configuration is still in force"
    );
    // And as a Warning Event on the operator's Lease, saying why, without any token.
    support::eventually(
        Duration::from_secs(30),
        "the refused edit is recorded as an Event",
        || !lease_events(cluster, &lease).is_empty(),
    );
    let event = the_only_warning(cluster, &lease, kubeconfig_operator::drift::REASON);
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("sha256:")
            && note.contains("audienceMatchPolicy must be MatchAny")
            && note.contains("previous one stays in force"),
        "{note}"
    );
    let shown = event.to_string();
    assert!(
        token.split('.').all(|segment| !shown.contains(segment)),
        "the Event holds no token: {shown}"
    );

    // Back to the original: accepted again.
    std::fs::write(&file, &original).expect("restore the file");
    support::eventually(
        Duration::from_secs(30),
        "the restored file takes effect",
        || status() == 200,
    );
}

/// Claim rules for the test issuer, one per library of kube-apiserver's CEL environment (and the
/// optional syntax), each reading a claim of its own so that tokens without it pass as before.
const LIBRARY_RULES: &[&str] = &[
    r#"!has(claims.lib_sets) || sets.equivalent(claims.lib_sets, ["a", "b"])"#,
    r#"!has(claims.lib_strings) || (claims.lib_strings.lowerAscii().startsWith("ok") && strings.quote(claims.lib_strings).size() == 4)"#,
    r#"!has(claims.lib_ip) || (isIP(claims.lib_ip) && ip.isCanonical(claims.lib_ip) && ip(claims.lib_ip).family() == 4)"#,
    r#"!has(claims.lib_cidr) || cidr("10.0.0.0/8").containsIP(ip(claims.lib_cidr))"#,
    r#"!has(claims.lib_label) || !format.dns1123Label().validate(claims.lib_label).hasValue()"#,
    r#"!has(claims.lib_quantity) || quantity(claims.lib_quantity).isLessThan(quantity("1Gi"))"#,
    r#"!has(claims.lib_semver) || semver(claims.lib_semver).isGreaterThan(semver("1.2.0"))"#,
    r#"!has(claims.lib_lists) || (claims.lib_lists.isSorted() && claims.lib_lists.sum() < 10)"#,
    r#"!has(claims.lib_includes) || (claims.lib_includes.includes("x") && claims.lib_includes.sort().distinct().size() == 2)"#,
    r#"!has(claims.lib_regex) || claims.lib_regex.find("[0-9]+") == "42""#,
    r#"!has(claims.lib_url) || url(claims.lib_url).getHost() == "example.com""#,
    r#"claims.?lib_optional.orValue("fine") != "bad""#,
];

/// KEP-3331's revocation recipe: a deny-list of credential ids, read with the optional index
/// because tokens without `jti` have no such extra.
const REVOCATION_RULE: &str = r#"!user.extra[?"authentication.kubernetes.io/credential-id"].orValue([]).exists(id, id == "JTI=revoked-1")"#;

/// The minor release whose CEL environment gained the list function `includes`: 1.35 and 1.36
/// refuse a file that uses it and keep their last configuration, while the operator follows
/// 1.37 and applies it (README "Token validation"; `make differential KUBERNETES_VERSION=1.35.4`).
const INCLUDES_SINCE_MINOR: u32 = 37;

/// Whether the cluster's API server knows `includes`, from its `/version`.
fn api_server_has_includes(cluster: &Cluster) -> bool {
    let version: Value =
        serde_json::from_str(&support::kubectl(cluster, &["get", "--raw", "/version"]))
            .expect("/version is JSON");
    let minor: u32 = version["minor"]
        .as_str()
        .expect("/version has a minor")
        .trim_end_matches('+')
        .parse()
        .expect("the minor is a number");
    minor >= INCLUDES_SINCE_MINOR
}

/// The API server's file with [`LIBRARY_RULES`] (without `includes` unless `includes`) and
/// [`REVOCATION_RULE`] added to the test issuer.
fn with_library_rules(original: &str, includes: bool) -> String {
    let claim_anchor = "    message: blocked by the test issuer\n";
    let user_anchor = "    message: root is not a user\n";
    assert!(original.contains(claim_anchor) && original.contains(user_anchor));
    let claim_rules: String = LIBRARY_RULES
        .iter()
        .filter(|rule| includes || !rule.contains(".includes("))
        .enumerate()
        .map(|(i, rule)| format!("  - expression: '{rule}'\n    message: library rule {i}\n"))
        .collect();
    original
        .replace(claim_anchor, &format!("{claim_anchor}{claim_rules}"))
        .replace(
            user_anchor,
            &format!("{user_anchor}  - expression: '{REVOCATION_RULE}'\n    message: revoked\n"),
        )
}

/// The `(jwt_issuer_hash, hash)` labels of `metric`'s samples in a Prometheus text exposition,
/// whoever exported them: what the drift alerts in config/monitoring compare.
fn hash_labels(exposition: &str, metric: &str) -> BTreeSet<(String, String)> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix(metric)?.strip_prefix('{'))
        .map(|labels| {
            let labels: BTreeMap<&str, &str> = labels
                .split(['{', '}'])
                .next()
                .unwrap_or_default()
                .split("\",")
                .filter_map(|pair| {
                    let (name, value) = pair.split_once("=\"")?;
                    Some((name, value.trim_end_matches('"')))
                })
                .collect();
            let label = |name| labels.get(name).copied().unwrap_or_default().to_owned();
            (label("jwt_issuer_hash"), label("hash"))
        })
        .collect()
}

const CONFIG_INFO: &str = "apiserver_authentication_config_controller_last_config_info";
const KEY_SET_INFO: &str =
    "apiserver_authentication_jwt_authenticator_jwks_fetch_last_key_set_info";

/// The operator's series for `verifier`, as its `/metrics` renders them.
async fn operator_exposition(verifier: Verifier) -> String {
    verifier
        .load()
        .await
        .expect("the operator fetches every issuer's keys");
    let metrics = kubeconfig_operator::metrics::Metrics::default();
    metrics.authentication.export(std::sync::Arc::new(verifier));
    metrics.render()
}

/// The API server's `/metrics` (read with the harness's admin credentials: the operator's own
/// identity plays no part in this).
fn api_server_exposition(cluster: &Cluster, server: &str) -> String {
    let output = std::process::Command::new("kubectl")
        .args(["--kubeconfig", &cluster.kubeconfig, "--server", server])
        .args(["get", "--raw", "/metrics"])
        .output()
        .expect("run kubectl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 metrics")
}

/// One test at a time edits apiserver-authn's file: each writes it whole from the original. The
/// test comparing every verdict holds it too, so that it reads the file and asks the API server
/// while both are the original.
static API_SERVERS_FILE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Replaces the API server's file in one rename: `std::fs::write` truncates first, and a reader
/// between the truncation and the write (kube-apiserver reloading, or the operator's verifier)
/// would take a shorter file that is still valid YAML, with fewer issuers.
fn replace_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents)?;
    std::fs::rename(&staged, path)
}

/// The file with a `userValidationRules` entry added to the test issuer, as KEP-3331's README
/// revokes a token: a deny-list of credential ids, read with the optional index because tokens
/// without `jti` have no such extra.
fn with_revoked_credential(original: &str, jti: &str, message: &str) -> String {
    let anchor = "    message: root is not a user\n";
    assert!(original.contains(anchor));
    let rule = format!(
        r#"!user.extra[?"authentication.kubernetes.io/credential-id"].orValue([]).exists(id, id == "JTI={jti}")"#
    );
    original.replace(
        anchor,
        &format!("{anchor}  - expression: '{rule}'\n    message: {message}\n"),
    )
}

/// KEP-3331's revocation recipe end to end: the rule added to a running operator's file (and to
/// the API server's) refuses the token on every path the operator serves, and at the API server;
/// a token with another credential id is not touched.
#[test]
fn a_credential_id_deny_rule_in_the_running_file_refuses_the_token_everywhere() {
    let _file = API_SERVERS_FILE.blocking_lock();
    let cluster = cluster();
    let issuer = Signer::test_issuer(cluster);
    let api_servers_file = PathBuf::from(env(cluster, "AUTHENTICATION_CONFIG_FILE"));
    let original = std::fs::read_to_string(&api_servers_file).expect("read the API server's file");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("authentication-config.yaml");
    std::fs::write(&file, &original).expect("write the operator's copy");
    let ns = Namespace::new(cluster, "kep-3331");
    let proxied = api_proxy::Proxied::start_with(
        cluster,
        &ns.name,
        Issuer::AuthenticationConfig,
        &[
            "--authentication-config",
            file.to_str().expect("UTF-8 path"),
        ],
    );
    let operator = &proxied.operator;
    let jti = format!("revoked-{}", ns.name);
    let revoked = issuer.sign(&with(issuer.claims(), "jti", json!(jti)));
    let kept = issuer.sign(&with(
        issuer.claims(),
        "jti",
        json!(format!("kept-{}", ns.name)),
    ));
    let whoami = [
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ];
    let at_api_server = |token: &str| {
        let server = format!("--server={}", env(cluster, "KUBE_AUTHN_SERVER"));
        let ca = format!("--certificate-authority={}", cluster.kube_ca_file);
        let token = format!("--token={token}");
        let mut args = vec![server.as_str(), ca.as_str(), token.as_str()];
        args.extend(whoami);
        support::kubectl_plain(&args)
    };

    // Before the rule: the token works everywhere (through the proxy, the API server then
    // judges what the impersonated user may do; only the proxy's own refusal is a 401).
    let through_proxy = || {
        proxied.raw(
            proxied.list_configmaps(&ns.name, &revoked).as_bytes(),
            Duration::from_secs(10),
        )
    };
    let answer = through_proxy();
    assert!(!answer.starts_with("HTTP/1.1 401"), "{answer}");
    support::requests::request_with_token(cluster, &ns.name, "revoked", &revoked);
    support::requests::wait_for_reason(cluster, &ns.name, "revoked", "Issued");
    assert_eq!(
        at_api_server(&revoked).as_deref(),
        Ok("test:carol@example.com")
    );

    // The administrator adds the rule to the running files.
    let message = "revoked with KEP-3331's recipe";
    let edited = with_revoked_credential(&original, &jti, message);
    let restore = Restore {
        path: api_servers_file.clone(),
        original: original.clone(),
    };
    std::fs::write(&file, &edited).expect("edit the operator's file");
    replace_file(&api_servers_file, &edited).expect("edit the API server's file");

    support::eventually(
        Duration::from_secs(30),
        "the download refuses the token",
        || http_get_kubeconfig(&operator.base_url, Some(&revoked), "").status == 401,
    );
    let refusal = http_get_kubeconfig(&operator.base_url, Some(&revoked), "");
    assert!(
        refusal.body.starts_with("RefusedByRule: ") && refusal.body.contains(message),
        "{}",
        refusal.body
    );
    let refused = through_proxy();
    assert!(
        refused.starts_with("HTTP/1.1 401") && refused.contains("RefusedByRule"),
        "the proxy refuses it: {refused}"
    );
    let message_shown =
        support::requests::wait_for_reason(cluster, &ns.name, "revoked", "TokenInvalid");
    assert!(message_shown.contains(message), "{message_shown}");
    // kube-apiserver re-reads its file about once a minute.
    support::eventually(
        Duration::from_secs(120),
        "kube-apiserver refuses the token",
        || at_api_server(&revoked).is_err(),
    );

    // Only that credential: another token of the same user still works.
    assert_eq!(
        http_get_kubeconfig(&operator.base_url, Some(&kept), "").status,
        200
    );
    assert_eq!(
        at_api_server(&kept).as_deref(),
        Ok("test:carol@example.com")
    );

    // The next test that holds the file finds the API server back on the original.
    replace_file(&api_servers_file, &original).expect("restore the API server's file");
    drop(restore);
    support::eventually(
        Duration::from_secs(120),
        "kube-apiserver applies its restored file",
        || at_api_server(&revoked).is_ok(),
    );
}

/// Puts the API server's file back even when the test fails half-way.
struct Restore {
    path: PathBuf,
    original: String,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = replace_file(&self.path, &self.original);
    }
}

/// Every CEL library of kube-apiserver's authentication environment, the optional syntax and the
/// revocation recipe, with the same verdicts: the rules are added to the API server's own file
/// (which it reloads), the operator reads that file, and a token per rule and outcome is compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cel_library_and_the_revocation_recipe_agree_with_kube_apiserver() {
    let _file = API_SERVERS_FILE.lock().await;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cluster = cluster();
    let ca = reqwest::Certificate::from_pem(
        &std::fs::read(&cluster.kube_ca_file).expect("read the cluster CA"),
    )
    .expect("the cluster CA is PEM");
    let server = env(cluster, "KUBE_AUTHN_SERVER").to_owned();
    let path = PathBuf::from(env(cluster, "AUTHENTICATION_CONFIG_FILE"));
    let original = std::fs::read_to_string(&path).expect("read the API server's file");

    // The same file and keys: the same hashes as the API server, so the drift alerts are quiet.
    let in_step = operator_exposition(
        Verifier::from_authentication_config(&path, Strictness::default())
            .await
            .expect("the operator accepts the API server's file"),
    )
    .await;
    // kube-apiserver fetches an issuer's keys when it first judges one of its tokens, and only
    // then exports that issuer's key set series: one token of each issuer in its file first.
    let test_issuer = Signer::test_issuer(cluster);
    for token in [
        id_token(cluster, "alice"),
        id_token_short_lived(cluster, "alice"),
        test_issuer.sign(&test_issuer.claims()),
    ] {
        api_server_verdict(&server, &ca, &token).await;
    }
    let theirs = api_server_exposition(cluster, &server);
    for metric in [CONFIG_INFO, KEY_SET_INFO] {
        let ours = hash_labels(&in_step, metric);
        assert!(!ours.is_empty(), "the operator exports {metric}");
        assert!(
            ours.is_subset(&hash_labels(&theirs, metric)),
            "{metric}: the operator's {ours:?} are not the API server's"
        );
    }
    let restore = Restore {
        path: path.clone(),
        original: original.clone(),
    };
    let includes = api_server_has_includes(cluster);
    replace_file(&path, &with_library_rules(&original, includes))
        .expect("edit the API server's file");

    let issuer = Signer::test_issuer(cluster);
    let base = issuer.claims();
    let revoked = issuer.sign(&with(base.clone(), "jti", json!("revoked-1")));
    let applied = |expect_refused: bool| {
        let (server, ca, revoked) = (server.clone(), ca.clone(), revoked.clone());
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(move || {
            support::eventually(
                Duration::from_secs(120),
                "kube-apiserver applies its edited file",
                || {
                    handle
                        .block_on(api_server_verdict(&server, &ca, &revoked))
                        .is_none()
                        == expect_refused
                },
            )
        })
    };
    applied(true);

    // The API server applied the edit, the operator (started before it) did not: the
    // configuration alert's expression now selects the operator's series.
    let theirs = api_server_exposition(cluster, &server);
    assert!(
        !hash_labels(&in_step, CONFIG_INFO).is_subset(&hash_labels(&theirs, CONFIG_INFO)),
        "the operator's old file is not the API server's edited one"
    );
    let caught_up = operator_exposition(
        Verifier::from_authentication_config(&path, Strictness::default())
            .await
            .expect("the operator accepts the edited file"),
    )
    .await;
    assert!(
        hash_labels(&caught_up, CONFIG_INFO).is_subset(&hash_labels(&theirs, CONFIG_INFO)),
        "reading the edited file, the operator's hash is the API server's again"
    );

    let verifier = Verifier::from_authentication_config(&path, Strictness::default())
        .await
        .expect("the operator accepts every library kube-apiserver accepts");
    let mut corpus: Corpus = Vec::new();
    for (label, claim, value) in [
        ("sets.equivalent holds", "lib_sets", json!(["b", "a"])),
        ("sets.equivalent fails", "lib_sets", json!(["a"])),
        ("strings.quote holds", "lib_strings", json!("ok")),
        ("strings.quote fails", "lib_strings", json!("OKx")),
        ("ip holds", "lib_ip", json!("10.1.2.3")),
        ("ip.isCanonical fails", "lib_ip", json!("2001:DB8::1")),
        ("ip with leading zeros", "lib_ip", json!("010.1.2.3")),
        ("cidr holds", "lib_cidr", json!("10.9.9.9")),
        ("cidr fails", "lib_cidr", json!("11.0.0.1")),
        (
            "format.dns1123Label holds",
            "lib_label",
            json!("good-label"),
        ),
        ("format.dns1123Label fails", "lib_label", json!("Bad_Label")),
        ("quantity holds", "lib_quantity", json!("512Mi")),
        ("quantity fails", "lib_quantity", json!("2Gi")),
        ("quantity unparsable", "lib_quantity", json!("lots")),
        ("semver holds", "lib_semver", json!("1.3.0")),
        ("semver fails", "lib_semver", json!("1.0.0")),
        ("semver unparsable", "lib_semver", json!("v1.3")),
        ("lists holds", "lib_lists", json!([1, 2, 3])),
        ("lists fails", "lib_lists", json!([3, 1])),
        (
            "lists.includes and ext.Lists hold",
            "lib_includes",
            json!(["y", "x", "y"]),
        ),
        ("lists.includes fails", "lib_includes", json!(["y", "z"])),
        ("regex holds", "lib_regex", json!("ab42")),
        ("regex fails", "lib_regex", json!("ab7")),
        ("url holds", "lib_url", json!("https://example.com/x")),
        ("url fails", "lib_url", json!("https://evil.example/x")),
        ("optional syntax holds", "lib_optional", json!("good")),
        ("optional syntax fails", "lib_optional", json!("bad")),
        ("credential id not revoked", "jti", json!("fine-1")),
        ("credential id revoked", "jti", json!("revoked-1")),
    ]
    .into_iter()
    .filter(|(_, claim, _)| includes || *claim != "lib_includes")
    {
        corpus.push((
            format!("test issuer with libraries: {label}"),
            issuer.sign(&with(base.clone(), claim, value)),
        ));
    }
    let outcome = compare(
        "kube-apiserver with CEL libraries and the revocation recipe",
        &verifier,
        &server,
        &ca,
        &corpus,
    )
    .await;

    replace_file(&path, &original).expect("restore the API server's file");
    drop(restore);
    applied(false);

    for label in corpus.iter().map(|(label, _)| label).filter(|label| {
        label.ends_with("holds") || label.ends_with("hold") || label.ends_with("not revoked")
    }) {
        assert!(
            outcome.accepted.contains(label),
            "{label} was not accepted by both"
        );
    }
    assert!(
        outcome.disagreements.is_empty(),
        "{} disagreements:\n{}",
        outcome.disagreements.len(),
        outcome.disagreements.join("\n")
    );
}
