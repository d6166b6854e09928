use std::sync::atomic::{AtomicUsize, Ordering};

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header::AUTHORIZATION},
    routing::get,
};
use serde_json::json;

use super::*;
use crate::{
    oidc::token::IdToken,
    testing::{CLIENT_ID, ISSUER, issuer},
};

fn claims_with(value: Value) -> JsonObject {
    value.as_object().unwrap().clone()
}

#[test]
fn sources_are_read_as_kube_apiserver_decodes_them() {
    let source_of = |claims: Value| source(&claims_with(claims), "groups");
    let names = json!({"groups": "src1"});
    let endpoint = |claims: Value| source_of(claims).unwrap().map(|e| (e.url, e.access_token));

    assert_eq!(endpoint(json!({})), None, "no _claim_names");
    assert_eq!(
        endpoint(
            json!({"_claim_names": {"roles": "src1"}, "_claim_sources": {"src1": {"endpoint": "https://x"}}})
        ),
        None,
        "another claim is distributed"
    );
    assert_eq!(
        endpoint(json!({"_claim_names": null, "_claim_sources": {}})),
        None,
        "null names decode as none"
    );
    assert_eq!(
        endpoint(json!({"_claim_names": names, "_claim_sources": {"src1": {"JWT": "a.b.c"}}})),
        None,
        "aggregated"
    );
    assert_eq!(
        endpoint(json!({"_claim_names": names, "_claim_sources": {"src1": null}})),
        None,
        "a null source has no endpoint"
    );
    assert_eq!(
        endpoint(
            json!({"_claim_names": names, "_claim_sources": {"src1": {"endpoint": "https://x/g", "access_token": "t"}}})
        ),
        Some(("https://x/g".into(), "t".into()))
    );
    assert_eq!(
        endpoint(
            json!({"_claim_names": names, "_claim_sources": {"src1": {"Endpoint": "https://x/g"}}})
        ),
        Some(("https://x/g".into(), String::new())),
        "Go matches a field's name without regard to case"
    );
    for (label, claims) in [
        ("names without sources", json!({"_claim_names": names})),
        (
            "names not strings",
            json!({"_claim_names": {"groups": 1}, "_claim_sources": {}}),
        ),
        (
            "source missing",
            json!({"_claim_names": names, "_claim_sources": {"other": {}}}),
        ),
        (
            "endpoint not a string",
            json!({"_claim_names": names, "_claim_sources": {"src1": {"endpoint": 7}}}),
        ),
        (
            "access_token not a string",
            json!({"_claim_names": names, "_claim_sources": {"src1": {"endpoint": "https://x", "access_token": []}}}),
        ),
        (
            "sources a list",
            json!({"_claim_names": names, "_claim_sources": []}),
        ),
    ] {
        assert_eq!(
            source_of(claims).err().map(|e| e.reason()),
            Some("Malformed"),
            "{label}"
        );
    }
}

/// A claim source on loopback: `/{name}` answers the JWT registered under `name`, only to the
/// bearer `t0k`; it counts the requests.
struct ClaimSource {
    base: String,
    hits: Arc<AtomicUsize>,
}

const ACCESS_TOKEN: &str = "t0k";

/// The source's answers by name, and its request count.
type Answers = (Arc<HashMap<&'static str, (u16, String)>>, Arc<AtomicUsize>);

async fn claim_source(answers: HashMap<&'static str, (u16, String)>) -> ClaimSource {
    let hits = Arc::new(AtomicUsize::new(0));
    let state = (Arc::new(answers), hits.clone());
    let app = Router::new()
        .route(
            "/{name}",
            get(
                |State((answers, hits)): State<Answers>,
                 Path(name): Path<String>,
                 headers: HeaderMap| async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let bearer = format!("Bearer {ACCESS_TOKEN}");
                    if headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(&bearer) {
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    match answers.get(name.as_str()) {
                        Some((status, body)) => {
                            (StatusCode::from_u16(*status).unwrap(), body.clone())
                        }
                        None => (StatusCode::NOT_FOUND, String::new()),
                    }
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    ClaimSource { base, hits }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The JWT a source returns: the test issuer's, for the operator's client, holding `groups`.
fn source_jwt(extra: Value) -> String {
    let mut claims = json!({
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "exp": now() + 600,
        "groups": ["from-source"],
    });
    for (name, value) in extra.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    issuer().sign(&claims)
}

/// An ID token whose groups are distributed to `endpoint`, and whatever `extra` adds.
fn token(endpoint: &str, access_token: &str, extra: Value) -> IdToken {
    let mut claims = json!({
        "iss": ISSUER,
        "sub": "jane",
        "aud": CLIENT_ID,
        "exp": now() + 600,
        "email": "jane@example.com",
        "_claim_names": {"groups": "src1"},
        "_claim_sources": {"src1": {"endpoint": endpoint, "access_token": access_token}},
    });
    for (name, value) in extra.as_object().unwrap() {
        claims[name] = value.clone();
    }
    IdToken::from(issuer().sign(&claims))
}

#[tokio::test]
async fn the_groups_come_from_the_source_when_its_jwt_verifies() {
    let source = claim_source(HashMap::from([
        ("ok", (200, source_jwt(json!({})))),
        ("ok-226", (226, format!("{}\n", source_jwt(json!({}))))),
        ("one", (200, source_jwt(json!({"groups": "solo"})))),
        ("expired", (200, source_jwt(json!({"exp": now() - 1})))),
        ("foreign-aud", (200, source_jwt(json!({"aud": "other"})))),
        ("no-groups", (200, source_jwt(json!({"groups": null})))),
        ("no-exp", (200, source_jwt(json!({"exp": null})))),
        (
            "forged",
            (
                200,
                crate::testing::TestIssuer::generate(crate::testing::KID).sign(
                    &json!({"iss": ISSUER, "aud": CLIENT_ID, "exp": now() + 60, "groups": ["x"]}),
                ),
            ),
        ),
        ("json", (200, json!({"groups": ["x"]}).to_string())),
        ("garbage", (200, "not a jwt".into())),
        ("status-227", (227, source_jwt(json!({})))),
        ("status-500", (500, source_jwt(json!({})))),
    ]))
    .await;
    let verifier = issuer().verifier();
    let verdict = |name: &str, access_token: &str| {
        let token = token(&format!("{}/{name}", source.base), access_token, json!({}));
        let verifier = &verifier;
        async move { verifier.verify(&token).await }
    };

    let identity = verdict("ok", ACCESS_TOKEN).await.unwrap();
    assert_eq!(identity.groups, ["from-source"]);
    let identity = verdict("ok-226", ACCESS_TOKEN).await.unwrap();
    assert_eq!(
        identity.groups,
        ["from-source"],
        "226 and a trailing newline"
    );
    assert_eq!(verdict("one", ACCESS_TOKEN).await.unwrap().groups, ["solo"]);
    for (name, access_token) in [
        ("ok", "wrong"),
        ("ok", ""),
        ("expired", ACCESS_TOKEN),
        ("foreign-aud", ACCESS_TOKEN),
        ("no-groups", ACCESS_TOKEN),
        ("no-exp", ACCESS_TOKEN),
        ("forged", ACCESS_TOKEN),
        ("json", ACCESS_TOKEN),
        ("garbage", ACCESS_TOKEN),
        ("status-227", ACCESS_TOKEN),
        ("status-500", ACCESS_TOKEN),
        ("missing", ACCESS_TOKEN),
    ] {
        let error = verdict(name, access_token).await.unwrap_err();
        assert_eq!(error.reason(), "UnresolvedClaim", "{name}: {error}");
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(ACCESS_TOKEN), "{name}: {shown}");
    }
}

#[tokio::test]
async fn nothing_is_fetched_unless_kube_apiserver_would_fetch_it() {
    let source = claim_source(HashMap::from([("ok", (200, source_jwt(json!({}))))])).await;
    let verifier = issuer().verifier();
    let endpoint = format!("{}/ok", source.base);

    // The token holds the claim itself.
    let own = token(&endpoint, ACCESS_TOKEN, json!({"groups": ["own"]}));
    assert_eq!(verifier.verify(&own).await.unwrap().groups, ["own"]);
    // The token is refused before its claims are resolved.
    let expired = token(&endpoint, ACCESS_TOKEN, json!({"exp": now() - 5}));
    assert_eq!(
        verifier.verify(&expired).await.unwrap_err().reason(),
        "Expired"
    );
    // No groups mapping at all.
    let mut no_groups = crate::testing::oidc_config();
    no_groups.groups_claim = None;
    let keys = KeySet::from_static(&issuer().jwks(), &no_groups.algorithms);
    let without_mapping = crate::oidc::verify::Verifier::with_keys(no_groups, keys);
    let identity = without_mapping
        .verify(&token(&endpoint, ACCESS_TOKEN, json!({})))
        .await
        .unwrap();
    assert!(identity.groups.is_empty());
    assert_eq!(source.hits.load(Ordering::SeqCst), 0);

    // And once when it would.
    let token = token(&endpoint, ACCESS_TOKEN, json!({}));
    assert_eq!(
        verifier.verify(&token).await.unwrap().groups,
        ["from-source"]
    );
    assert_eq!(source.hits.load(Ordering::SeqCst), 1);
}
