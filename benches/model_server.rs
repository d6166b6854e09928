//! The fresh-token download's target, built as a server: every answer is `/healthz`'s plus one
//! RS256 verification, and nothing else. Issue 27 computes the target as
//! 0.8 / (1/healthz rate + one verification), as if the two costs simply added up on the server's
//! core. `bench/http.sh` serves this beside the operator, on the same core under the same load
//! generator, and reports how much of that computed rate the model itself reaches: what the
//! harness allows any server that does the target's work and no more.
//!
//! `/healthz` answers `ok`; `/verified` answers `ok` after `jsonwebtoken::decode` of a token
//! signed at start-up, with the same key and minimal validation as the `jsonwebtoken_decode`
//! baseline of `benches/throughput.rs`, so its cost is the baseline's. Serves on the address in
//! MODEL_SERVER_LISTEN until killed; without it, says so and exits, so that a bare `cargo bench`
//! does not wait on it.

use std::sync::Arc;

use axum::{Router, routing::get, serve::ListenerExt as _};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use kubeconfig_operator::testing;
use serde_json::{Map, Value};

struct Model {
    token: String,
    key: DecodingKey,
    validation: Validation,
}

#[tokio::main]
async fn main() {
    let Ok(listen) = std::env::var("MODEL_SERVER_LISTEN") else {
        println!("model_server: set MODEL_SERVER_LISTEN to serve (bench/http.sh does)");
        return;
    };
    let issuer = testing::issuer();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_aud = false;
    let model = Arc::new(Model {
        token: issuer.token_for("jane@example.com", &["dev", "ops"], 3600),
        key: DecodingKey::from_jwk(&issuer.jwk).expect("the test issuer's key"),
        validation,
    });
    jsonwebtoken::decode::<Map<String, Value>>(&model.token, &model.key, &model.validation)
        .expect("the model's token verifies");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/verified",
            get(move || async move {
                jsonwebtoken::decode::<Map<String, Value>>(
                    &model.token,
                    &model.key,
                    &model.validation,
                )
                .map(|_| "ok")
                .unwrap_or("refused")
            }),
        );
    // As the operator's listener does: an answer is not held back for the client's ACK.
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .expect("MODEL_SERVER_LISTEN can be bound")
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    axum::serve(listener, app).await.expect("the model serves");
}
