//! The verdicts under an `AuthenticationConfiguration`: routing by `iss`, several audiences, CEL
//! rules and mappings, and reloading the file.

use std::{collections::BTreeMap, sync::LazyLock};

use chrono::Utc;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use super::*;
use crate::oidc::token::CREDENTIAL_ID_KEY;
use crate::testing::{self, TestIssuer};

const OTHER_ISSUER: &str = "https://short.example/dex";

static OTHER_KEY: LazyLock<TestIssuer> = LazyLock::new(|| TestIssuer::generate("other-key"));

/// Two issuers as the harness's second API server has them: the main one with CEL mappings and
/// rules, and another with plain claims.
const CONFIG: &str = r#"
apiVersion: apiserver.config.k8s.io/v1beta1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://dex.example/dex
    audiences: [kubeconfig-operator, other-app]
    audienceMatchPolicy: MatchAny
  claimValidationRules:
  - expression: "!has(claims.blocked) || claims.blocked != true"
    message: blocked users get no access
  - claim: hd
    requiredValue: example.com
  claimMappings:
    username:
      expression: "'dex:' + claims.email"
    groups:
      claim: groups
      prefix: "dex:"
    uid:
      claim: sub
    extra:
    - key: example.com/verified
      valueExpression: "has(claims.email_verified) && claims.email_verified == true ? 'yes' : 'no'"
  userValidationRules:
  - expression: "!user.username.startsWith('dex:root')"
    message: no root
- issuer:
    url: https://short.example/dex
    audiences: [kubeconfig-operator]
  claimMappings:
    username:
      claim: email
      prefix: ""
"#;

fn verifier_for(config: &str) -> Verifier {
    let loaded = authn_config::parse(config.as_bytes(), Strictness::default()).unwrap();
    let issuers = loaded
        .authenticators
        .into_iter()
        .map(|rules| {
            let jwks = if rules.issuer == OTHER_ISSUER {
                OTHER_KEY.jwks()
            } else {
                testing::issuer().jwks()
            };
            let keys = KeySet::from_static(&jwks, &rules.algorithms);
            (rules, keys)
        })
        .collect();
    Verifier::with_authenticators(issuers)
}

/// A verifier reading `config` from a file (`authn.yaml` in the returned directory); it fetches
/// nothing until asked.
async fn from_file(config: &str) -> (tempfile::TempDir, Verifier) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authn.yaml");
    std::fs::write(&path, config).unwrap();
    let verifier = Verifier::from_authentication_config(&path, Strictness::default())
        .await
        .unwrap();
    (dir, verifier)
}

fn claims() -> Value {
    let now = Utc::now().timestamp();
    json!({
        "iss": testing::ISSUER,
        "sub": "CgVhbGljZRIEbGRhcA",
        "aud": "kubeconfig-operator",
        "exp": now + 600,
        "iat": now,
        "email": "alice@example.com",
        "email_verified": true,
        "hd": "example.com",
        "groups": ["team-a"],
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

async fn verdict(verifier: &Verifier, token: String) -> Result<Identity, TokenError> {
    verifier.verify(&IdToken::from(token)).await
}

#[tokio::test]
async fn mappings_give_the_identity_kube_apiserver_gives() {
    let verifier = verifier_for(CONFIG);
    let claims = with(claims(), "jti", json!("abc"));
    let identity = verdict(&verifier, testing::issuer().sign(&claims))
        .await
        .unwrap();
    assert_eq!(identity.username, "dex:alice@example.com");
    assert_eq!(identity.groups, ["dex:team-a"]);
    assert_eq!(identity.uid, "CgVhbGljZRIEbGRhcA");
    assert_eq!(
        identity.extra,
        BTreeMap::from([
            (CREDENTIAL_ID_KEY.to_owned(), vec!["JTI=abc".to_owned()]),
            ("example.com/verified".to_owned(), vec!["yes".to_owned()]),
        ])
    );
}

#[tokio::test]
async fn tokens_are_routed_by_their_issuer() {
    let verifier = verifier_for(CONFIG);
    let short = with(claims(), "iss", json!(OTHER_ISSUER));
    let identity = verdict(&verifier, OTHER_KEY.sign(&short)).await.unwrap();
    assert_eq!(identity.username, "alice@example.com");
    assert!(
        identity.groups.is_empty(),
        "the second issuer maps no groups"
    );
    // The main issuer's key is not the second issuer's.
    assert_eq!(
        verdict(&verifier, testing::issuer().sign(&short))
            .await
            .unwrap_err()
            .reason(),
        "UnknownKey"
    );
    let foreign = with(claims(), "iss", json!("https://evil.example"));
    match verdict(&verifier, testing::issuer().sign(&foreign)).await {
        Err(TokenError::WrongIssuer { expected, .. }) => {
            assert_eq!(
                expected,
                "https://dex.example/dex, https://short.example/dex"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn any_configured_audience_suffices_and_azp_is_not_looked_at() {
    let verifier = verifier_for(CONFIG);
    let peers = with(
        with(claims(), "aud", json!(["other-app", "kubeconfig-operator"])),
        "azp",
        json!("other-app"),
    );
    assert!(
        verdict(&verifier, testing::issuer().sign(&peers))
            .await
            .is_ok()
    );
    let other_only = with(claims(), "aud", json!("other-app"));
    assert!(
        verdict(&verifier, testing::issuer().sign(&other_only))
            .await
            .is_ok()
    );
    let foreign = with(claims(), "aud", json!(["someone-else"]));
    assert_eq!(
        verdict(&verifier, testing::issuer().sign(&foreign))
            .await
            .unwrap_err()
            .reason(),
        "WrongAudience"
    );
}

#[tokio::test]
async fn rules_refuse_with_their_message() {
    let verifier = verifier_for(CONFIG);
    for (claims, expected) in [
        (
            with(claims(), "blocked", json!(true)),
            "blocked users get no access",
        ),
        (
            with(claims(), "hd", json!("evil.example")),
            "required claim hd",
        ),
        (
            with(claims(), "email", json!("root@example.com")),
            "no root",
        ),
        (with(claims(), "email", json!(7)), "error evaluating"),
        (with(claims(), "groups", json!([1])), "groups"),
    ] {
        let error = verdict(&verifier, testing::issuer().sign(&claims))
            .await
            .unwrap_err();
        assert!(error.to_string().contains(expected), "{claims}: {error}");
    }
    // A claim the rule only reads when present: absent is fine.
    let unverified = with(claims(), "email_verified", json!("false"));
    let identity = verdict(&verifier, testing::issuer().sign(&unverified))
        .await
        .unwrap();
    assert_eq!(identity.extra["example.com/verified"], ["no"]);
}

#[tokio::test]
async fn algorithms_are_those_of_an_api_server_with_a_configuration_file() {
    let loaded = authn_config::parse(CONFIG.as_bytes(), Strictness::default()).unwrap();
    assert!(
        loaded.authenticators[0]
            .algorithms
            .contains(&Algorithm::PS256)
    );
    assert!(
        loaded.authenticators[0]
            .algorithms
            .contains(&Algorithm::ES384)
    );
}

#[tokio::test]
async fn a_changed_file_is_reloaded_and_an_invalid_one_is_ignored() {
    let (dir, verifier) = from_file(CONFIG).await;
    let path = dir.path().join("authn.yaml");
    let file = verifier.file.as_ref().unwrap();
    let mut refused_edits = verifier.refused_edits().unwrap();
    let before = verifier.current().digest.clone().unwrap();
    assert_eq!(before, authn_config::digest(CONFIG.as_bytes()));

    let broken = CONFIG.replace("prefix: \"dex:\"", "");
    std::fs::write(&path, &broken).unwrap();
    let error = verifier.reload(file).await.unwrap_err();
    assert!(
        error.contains("jwt[0].claimMappings.groups.prefix: Required value"),
        "{error}"
    );
    assert_eq!(verifier.current().digest.as_deref(), Some(before.as_str()));
    // Visible while it is on disk: the refusal, counted once, beside the digest in force.
    let state = verifier.configuration_state();
    assert_eq!(state.digest.as_deref(), Some(before.as_str()));
    assert!(
        state
            .rejected
            .unwrap()
            .contains("groups.prefix: Required value")
    );
    assert_eq!((state.reloads_succeeded, state.reloads_failed), (0, 1));
    assert_eq!(
        verifier.generation(),
        0,
        "a refused edit puts nothing in force"
    );
    let edit = refused_edits.borrow_and_update().clone().unwrap();
    assert!(edit.problem.contains("groups.prefix: Required value"));
    assert_eq!(edit.digest, authn_config::digest(broken.as_bytes()));
    // The same invalid content is reported once, not at every poll; so is a missing file.
    verifier.reload(file).await.unwrap();
    assert_eq!(verifier.configuration_state().reloads_failed, 1);
    std::fs::remove_file(&path).unwrap();
    assert!(
        verifier
            .reload(file)
            .await
            .unwrap_err()
            .contains("cannot read it")
    );
    verifier.reload(file).await.unwrap();
    assert_eq!(verifier.current().digest.as_deref(), Some(before.as_str()));

    let one_issuer = CONFIG
        .split("- issuer:\n    url: https://short")
        .next()
        .unwrap();
    std::fs::write(&path, one_issuer).unwrap();
    verifier.reload(file).await.unwrap();
    let state = verifier.configuration_state();
    assert_eq!(state.rejected, None);
    assert_eq!((state.reloads_succeeded, state.reloads_failed), (1, 2));
    assert_eq!(verifier.generation(), 1);
    assert!(refused_edits.has_changed().unwrap());
    assert_eq!(*refused_edits.borrow_and_update(), None);
    let current = verifier.current();
    assert_eq!(
        current.digest.as_deref(),
        Some(authn_config::digest(one_issuer.as_bytes()).as_str())
    );
    let short = with(claims(), "iss", json!(OTHER_ISSUER));
    assert_eq!(
        verdict(&verifier, OTHER_KEY.sign(&short))
            .await
            .unwrap_err()
            .reason(),
        "WrongIssuer"
    );
}

#[tokio::test]
async fn an_invalid_file_is_refused_at_start_up_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authn.yaml");
    std::fs::write(
        &path,
        CONFIG.replace("https://short.example/dex", "http://short.example/dex"),
    )
    .unwrap();
    let error = Verifier::from_authentication_config(&path, Strictness::default())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("jwt[1].issuer.url: Invalid value: \"http://short.example/dex\": URL scheme must be https"),
        "{error}"
    );
    assert!(!error.contains('\n'));
}

#[tokio::test]
async fn googles_legacy_issuer_without_a_scheme_is_routed_to_google() {
    let google = CONFIG.replace("https://short.example/dex", "https://accounts.google.com");
    let loaded = authn_config::parse(google.as_bytes(), Strictness::default()).unwrap();
    let issuers = loaded
        .authenticators
        .into_iter()
        .map(|rules| {
            let keys = KeySet::from_static(&OTHER_KEY.jwks(), &rules.algorithms);
            (rules, keys)
        })
        .collect();
    let verifier = Verifier::with_authenticators(issuers);
    let legacy = with(claims(), "iss", json!("accounts.google.com"));
    let identity = verdict(&verifier, OTHER_KEY.sign(&legacy)).await.unwrap();
    assert_eq!(identity.username, "alice@example.com");
}

#[tokio::test]
async fn one_issuer_down_does_not_make_the_operator_unready() {
    // Nothing answers for these issuers: no keys are loaded.
    let (_dir, verifier) = from_file(CONFIG).await;
    assert!(!verifier.is_ready(), "no issuer has keys");
    let loaded = verifier_for(CONFIG);
    assert!(loaded.is_ready());
    let mut issuers: Vec<_> = authn_config::parse(CONFIG.as_bytes(), Strictness::default())
        .unwrap()
        .authenticators
        .into_iter()
        .map(|rules| (rules, None))
        .collect();
    issuers[0].1 = Some(KeySet::from_static(
        &testing::issuer().jwks(),
        &issuers[0].0.algorithms,
    ));
    let mut partly = Vec::new();
    for (rules, keys) in issuers {
        let keys = match keys {
            Some(keys) => keys,
            None => KeySet::for_authenticator(&rules).await.unwrap(),
        };
        partly.push((rules, keys));
    }
    let partly = Verifier::with_authenticators(partly);
    assert!(partly.is_ready(), "the main issuer's keys suffice");
    assert!(
        verdict(&partly, testing::issuer().sign(&claims()))
            .await
            .is_ok(),
        "its users are served"
    );
}

/// A P-521 key as an issuer's JWKS publishes it, and a signer for ES512 tokens with it.
struct P521 {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
}

impl P521 {
    fn generate() -> Self {
        use aws_lc_rs::signature::{ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair};
        Self {
            pair: EcdsaKeyPair::generate(&ECDSA_P521_SHA512_FIXED_SIGNING).unwrap(),
        }
    }

    fn jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        use aws_lc_rs::signature::KeyPair;
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
        let point = self.pair.public_key().as_ref();
        let (x, y) = point[1..].split_at(66);
        serde_json::from_value(json!({"keys": [{
            "kty": "EC", "crv": "P-521", "kid": "p521",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]}))
        .unwrap()
    }

    fn sign(&self, claims: &Value) -> String {
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES512","kid":"p521","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{payload}");
        let signature = self
            .pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// go-oidc v2.5.0 verifies ES512, and kube-apiserver allows it with a configuration file: so does
/// the operator, with aws-lc-rs; not with the flat settings, whose algorithms are those listed.
#[tokio::test]
async fn es512_is_verified_with_a_configuration_file() {
    let key = P521::generate();
    let rules = authn_config::parse(CONFIG.as_bytes(), Strictness::default())
        .unwrap()
        .authenticators
        .remove(0);
    let keys = KeySet::from_static(&key.jwks(), &rules.algorithms);
    let verifier = Verifier::with_authenticators(vec![(rules.clone(), keys)]);
    let identity = verdict(&verifier, key.sign(&claims())).await.unwrap();
    assert_eq!(identity.username, "dex:alice@example.com");

    let token = key.sign(&claims());
    let (signed, _) = token.rsplit_once('.').unwrap();
    let other = P521::generate().sign(&claims());
    let forged = format!("{signed}.{}", other.rsplit_once('.').unwrap().1);
    assert_eq!(
        verdict(&verifier, forged).await.unwrap_err(),
        TokenError::BadSignature
    );

    let flat = JwtAuthenticator {
        verifies_es512: false,
        ..rules
    };
    let keys = KeySet::from_static(&key.jwks(), &flat.algorithms);
    let verifier = Verifier::with_authenticators(vec![(flat, keys)]);
    assert_eq!(
        verdict(&verifier, token).await.unwrap_err(),
        TokenError::BadSignature
    );
}
