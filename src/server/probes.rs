//! What the kubelet asks: `/healthz` (the process runs) and `/readyz` (it can answer correctly:
//! the controller's cache has synced, the issuer's keys are loaded and the revocations listed). `/metrics` has a
//! listener of its own (`scrape`).
//! With leader election, a replica that does not lead runs no controller: it is ready once it
//! can serve downloads, that is once the issuer's keys are loaded.
//! They come from a few addresses at a fixed rate, so their group has no per-client budget: a
//! throttled client must not make the pod look unhealthy.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};

use super::{HttpState, limits, limits::RequestLimits};

const HEALTHZ_ROUTE: &str = "/healthz";
const READYZ_ROUTE: &str = "/readyz";
/// The routes of this group, for the access log's route label.
pub(super) const ROUTES: &[&str] = &[HEALTHZ_ROUTE, READYZ_ROUTE];

/// The probe routes; with `limits`, only its time limit applies.
pub(super) fn routes(limits: Option<&RequestLimits>) -> Router<Arc<HttpState>> {
    let router = Router::new()
        .route(HEALTHZ_ROUTE, get(|| async { "ok\n" }))
        .route(READYZ_ROUTE, get(readyz));
    match limits {
        Some(limits) => router.layer(middleware::from_fn_with_state(
            limits.timeout,
            limits::time_limit,
        )),
        None => router,
    }
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let controller = state.controller_ready.load(Ordering::Relaxed);
    let keys = state.authenticator.verifier().is_ready();
    let revocations = state.authenticator.revocations().is_synced();
    if controller && keys && revocations {
        // A refused edit leaves the operator able to answer (with the previous file, as the API
        // server does), so it stays ready; the detail says that its file and the one on disk
        // differ, and why.
        let rejected = state
            .authenticator
            .verifier()
            .configuration_state()
            .rejected
            .map(|problem| {
                format!(
                    "warning: the authentication configuration on disk was refused, the previous one is in force: {problem}\n"
                )
            })
            .unwrap_or_default();
        return (StatusCode::OK, format!("ok\n{rejected}")).into_response();
    }
    let mut missing = Vec::new();
    if !controller {
        missing.push("the controller's cache has not synced");
    }
    if !keys {
        missing.push("the issuer's signing keys are not loaded");
    }
    if !revocations {
        missing.push("the KubeconfigRevocations are not listed");
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {}\n", missing.join("; ")),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;
    use crate::server::test_fixtures::{body, call, state};

    #[tokio::test]
    async fn readiness_needs_the_controller_cache_and_the_keys() {
        let state = state();
        let response = call(&state, Method::GET, "/readyz", &[]).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(response).await.contains("cache has not synced"));
        state.controller_ready.store(true, Ordering::Relaxed);
        assert_eq!(
            call(&state, Method::GET, "/readyz", &[]).await.status(),
            StatusCode::OK
        );
        let response = call(&state, Method::GET, "/healthz", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await, "ok\n");
    }
}
