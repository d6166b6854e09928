//! Throughput of the request path in process, every step against one floor: a bare RS256
//! verification (`jsonwebtoken::decode` with the same RSA 2048 key and a minimal `Validation`),
//! the work no download can avoid. The figures say what the operator's own code costs on top:
//!
//! - `verify`: `Verifier::verify` on a valid RS256 token (static key set);
//! - `render`: `kubeconfig::render` of the token kubeconfig;
//! - `http_kube_config_new_token`: `GET /kube-config` through `server::router` (as the server
//!   runs it; body collected) with a token it has not seen, so nothing comes from a cache;
//! - `http_kube_config_same_token`: the same with one token again and again, which the 10 s
//!   verdict cache answers (a client downloading in a loop);
//! - `http_kube_config_same_token_100_revocations`: the same with 100 KubeconfigRevocations in
//!   force that do not cover the token, which every answer checks (cached verdict or not): what
//!   revocation costs a request, against `http_kube_config_same_token`, where it is the largest
//!   share.
//!
//! Plain `std::time` (no criterion, so it builds fast): warm-up, then ROUNDS rounds of a fixed
//! number of iterations; the median round gives ns/op. Nothing asserts a wall-clock number.
//! Run: `cargo bench --bench throughput`. Output lines:
//! `bench: <name> <median ns/op> ns/op, <ratio>x baseline <baseline name>`.

use std::{
    hint::black_box,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use axum::body::Body;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff};
use kubeconfig_operator::{
    config::KubeconfigSettings,
    crd::{KubeconfigRevocation, KubeconfigRevocationSpec},
    kubeconfig,
    metrics::Metrics,
    oidc::{authenticator::Authenticator, revocations::Revocations, token::IdToken},
    server::{HttpState, KUBE_CONFIG_ROUTE, router},
    testing,
};
use serde_json::{Map, Value};
use tower::ServiceExt as _;

const ROUNDS: usize = 9;
const WARM_UP: Duration = Duration::from_millis(300);

/// Median ns/op over ROUNDS rounds of `iterations` calls each, after a warm-up. `round` runs the
/// operation `n` times (so async code can run a whole round inside one `block_on`).
fn measure(iterations: u32, mut round: impl FnMut(u32)) -> f64 {
    let warm_up_end = Instant::now() + WARM_UP;
    while Instant::now() < warm_up_end {
        round(iterations / 10 + 1);
    }
    let mut per_op: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            round(iterations);
            started.elapsed().as_nanos() as f64 / f64::from(iterations)
        })
        .collect();
    per_op.sort_by(f64::total_cmp);
    per_op[ROUNDS / 2]
}

fn report(name: &str, ns: f64, baseline_name: &str, baseline_ns: f64) {
    println!(
        "bench: {name} {ns:.0} ns/op, {:.2}x baseline {baseline_name}",
        ns / baseline_ns
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter is not supported (three fixed cases).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The shared test issuer (src/testing.rs) and a token valid for an hour.
    let issuer = testing::issuer();
    let token = IdToken::from(issuer.token_for("jane@example.com", &["dev", "ops"], 3600));
    let verifier = Arc::new(issuer.verifier());
    // Sanity: every path below succeeds, or the figures would time an error path.
    runtime
        .block_on(verifier.verify(&token))
        .expect("the benchmark token verifies");

    // (a) verify vs bare jsonwebtoken::decode.
    let decoding_key = DecodingKey::from_jwk(&issuer.jwk).unwrap();
    let mut minimal = Validation::new(Algorithm::RS256);
    minimal.validate_aud = false;
    jsonwebtoken::decode::<Map<String, Value>>(token.expose(), &decoding_key, &minimal)
        .expect("the bare decode accepts the token");
    let decode_ns = measure(2_000, |n| {
        for _ in 0..n {
            black_box(
                jsonwebtoken::decode::<Map<String, Value>>(
                    black_box(token.expose()),
                    &decoding_key,
                    &minimal,
                )
                .unwrap(),
            );
        }
    });
    let verify_ns = measure(2_000, |n| {
        runtime.block_on(async {
            for _ in 0..n {
                black_box(verifier.verify(black_box(&token)).await.unwrap());
            }
        })
    });
    report(
        "jsonwebtoken_decode",
        decode_ns,
        "jsonwebtoken_decode",
        decode_ns,
    );
    report("verify", verify_ns, "jsonwebtoken_decode", decode_ns);

    // (b) render.
    let ca_pem =
        b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2F0ZXN0\n-----END CERTIFICATE-----\n";
    let settings = KubeconfigSettings {
        ca: kubeconfig_operator::ca::CaBundle::fixed(Some(ca_pem.to_vec())),
        ..KubeconfigSettings::for_tests("local-cluster", "https://127.0.0.1:6443")
    };
    let namespace = Some("team-a");
    let render_ns = measure(5_000, |n| {
        for _ in 0..n {
            black_box(
                kubeconfig::render(
                    black_box(&settings),
                    kubeconfig_operator::crd::Format::Token,
                    &token,
                    namespace,
                )
                .unwrap(),
            );
        }
    });
    report("render", render_ns, "jsonwebtoken_decode", decode_ns);

    // (c) the whole handler path, with tokens it has not seen and with one token again.
    let app_revoking = |settings: &KubeconfigSettings, revocations: Arc<Revocations>| {
        let metrics = Arc::new(Metrics::default());
        router(Arc::new(HttpState {
            authenticator: Arc::new(Authenticator::new(
                Arc::clone(&verifier),
                revocations,
                Arc::clone(&metrics),
            )),
            settings: settings.clone(),
            metrics,
            controller_ready: Arc::new(AtomicBool::new(true)),
            allowed_origins: Vec::new(),
            confirmer: None,
            console: None,
            audit: Arc::default(),
        }))
    };
    let app = |settings: &KubeconfigSettings| app_revoking(settings, Revocations::none());
    let get = |app: &axum::Router, token: &str| {
        let request = axum::http::Request::builder()
            .uri(KUBE_CONFIG_ROUTE)
            .header(axum::http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, body)
        }
    };
    const NEW_TOKENS: usize = 500;
    let tokens: Vec<String> = (0..NEW_TOKENS)
        .map(|i| issuer.token_for(&format!("user{i}@example.com"), &["dev"], 3600))
        .collect();
    let (status, body) = runtime.block_on(get(&app(&settings), &tokens[0]));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // A fresh server (empty caches) per round, and no token twice within a round.
    let new_token_ns = measure(NEW_TOKENS as u32, |n| {
        let app = app(&settings);
        runtime.block_on(async {
            for i in 0..n as usize {
                black_box(get(&app, &tokens[i % NEW_TOKENS]).await);
            }
        })
    });
    report(
        "http_kube_config_new_token",
        new_token_ns,
        "jsonwebtoken_decode",
        decode_ns,
    );
    let warm = app(&settings);
    let same_token_ns = measure(2_000, |n| {
        runtime.block_on(async {
            for _ in 0..n {
                black_box(get(&warm, token.expose()).await);
            }
        })
    });
    report(
        "http_kube_config_same_token",
        same_token_ns,
        "jsonwebtoken_decode",
        decode_ns,
    );
    let revoking = app_revoking(
        &settings,
        Revocations::fixed(
            (0..100)
                .map(|i| {
                    KubeconfigRevocation::new(
                        &format!("r{i}"),
                        KubeconfigRevocationSpec {
                            user: Some(format!("someone{i}@example.com")),
                            group: None,
                            credential: None,
                            not_before: Time(jiff::Timestamp::now()),
                            expires_at: None,
                            message: None,
                        },
                    )
                })
                .collect(),
        ),
    );
    let (status, _) = runtime.block_on(get(&revoking, token.expose()));
    assert_eq!(status, 200, "the revocations do not cover the token");
    let revoking_ns = measure(2_000, |n| {
        runtime.block_on(async {
            for _ in 0..n {
                black_box(get(&revoking, token.expose()).await);
            }
        })
    });
    report(
        "http_kube_config_same_token_100_revocations",
        revoking_ns,
        "http_kube_config_same_token",
        same_token_ns,
    );
}
