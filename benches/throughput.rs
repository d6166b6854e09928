//! Throughput of the request path, each step against a baseline that does the same work with
//! the bare library, so the figures say what the operator's own code costs:
//!
//! - `verify`: `Verifier::verify` on a valid RS256 token (static key set, RSA 2048) vs a bare
//!   `jsonwebtoken::decode` with the same key and a minimal `Validation`;
//! - `render`: `kubeconfig::render` vs `serde_yaml::to_string` of an equivalent
//!   `serde_json::Value`;
//! - `http_kube_config`: `GET /kube-config` with the token through `server::router` (a clone of a
//!   router built once, as the server does per request; body collected) vs `Verifier::verify`.
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
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use kubeconfig_operator::{
    config::KubeconfigSettings,
    kubeconfig,
    metrics::Metrics,
    oidc::verify::IdToken,
    server::{HttpState, KUBE_CONFIG_ROUTE, router},
    testing,
};
use serde_json::{Map, Value, json};
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

    // (b) render vs serde_yaml of the same document as a serde_json::Value.
    let ca_pem =
        b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2F0ZXN0\n-----END CERTIFICATE-----\n";
    let settings = KubeconfigSettings {
        cluster_name: "local-cluster".into(),
        server: "https://127.0.0.1:6443".into(),
        ca: kubeconfig_operator::ca::CaBundle::fixed(Some(ca_pem.to_vec())),
        user_name: "OIDCUser".into(),
        default_namespace: None,
        exec: None,
    };
    let namespace = Some("team-a");
    let kubeconfig::Rendered::Kubeconfig(rendered) =
        kubeconfig::render(&settings, kubeconfig::Format::Token, &token, namespace).unwrap()
    else {
        panic!("the token format renders a kubeconfig");
    };
    let document = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": "local-cluster", "cluster": {
            "server": "https://127.0.0.1:6443",
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca_pem),
        }}],
        "contexts": [{"name": "local-cluster", "context": {
            "cluster": "local-cluster", "user": "OIDCUser", "namespace": "team-a",
        }}],
        "users": [{"name": "OIDCUser", "user": {"token": token.expose()}}],
        "current-context": "local-cluster",
    });
    let baseline_yaml = serde_yaml::to_string(&document).unwrap();
    // Same content (key order aside), or the baseline would not be equivalent.
    assert_eq!(
        serde_yaml::from_str::<Value>(&rendered).unwrap(),
        serde_yaml::from_str::<Value>(&baseline_yaml).unwrap(),
        "the baseline document differs from what render produces"
    );
    let yaml_ns = measure(5_000, |n| {
        for _ in 0..n {
            black_box(serde_yaml::to_string(black_box(&document)).unwrap());
        }
    });
    let render_ns = measure(5_000, |n| {
        for _ in 0..n {
            black_box(
                kubeconfig::render(
                    black_box(&settings),
                    kubeconfig::Format::Token,
                    &token,
                    namespace,
                )
                .unwrap(),
            );
        }
    });
    report(
        "serde_yaml_to_string",
        yaml_ns,
        "serde_yaml_to_string",
        yaml_ns,
    );
    report("render", render_ns, "serde_yaml_to_string", yaml_ns);

    // (c) the whole handler path vs the verification inside it.
    let state = Arc::new(HttpState {
        verifier: Arc::clone(&verifier),
        settings,
        metrics: Arc::new(Metrics::default()),
        controller_ready: Arc::new(AtomicBool::new(true)),
        allowed_origins: Vec::new(),
        confirmer: None,
        verdicts: Default::default(),
        confirmations: Default::default(),
        console: None,
    });
    let app = router(state);
    let authorization = format!("Bearer {}", token.expose());
    let request = || {
        axum::http::Request::builder()
            .uri(KUBE_CONFIG_ROUTE)
            .header(axum::http::header::AUTHORIZATION, &authorization)
            .body(Body::empty())
            .unwrap()
    };
    let get = || async {
        let response = app.clone().oneshot(request()).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, body)
    };
    let (status, body) = runtime.block_on(get());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let http_ns = measure(2_000, |n| {
        runtime.block_on(async {
            for _ in 0..n {
                black_box(get().await);
            }
        })
    });
    report("http_kube_config", http_ns, "verify", verify_ns);
}
