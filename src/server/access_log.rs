//! One log line and one counter per answered request, for every route group. Only the method,
//! route, status, duration and client address are logged: never headers, where the token
//! travels, nor the query.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::StatusCode,
    middleware::Next,
    response::Response,
};
use tracing::{debug, error, info, warn};

use super::{HttpState, console, download, probes};
use crate::metrics::RequestLabels;

/// The route as a fixed label, so clients cannot create metric series at will.
fn route_label(request: &Request) -> &'static str {
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    [download::ROUTES, probes::ROUTES, console::ROUTES]
        .into_iter()
        .flatten()
        .find(|route| Some(**route) == matched)
        .copied()
        .unwrap_or("other")
}

/// Counts and logs every response. 503 means the issuer or a slow request, so it is a warning;
/// any other 5xx is a bug of ours and an error. Successes are logged at debug: the download logs
/// whom it issued a kubeconfig for at info itself, and a line per probe or per answer doubled
/// the cost of a download under load (every answer is counted in `http_requests_total` anyway).
pub(super) async fn access_log(
    State(state): State<Arc<HttpState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = route_label(&request);
    let method = request.method().clone();
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    let code = status.as_u16();
    state
        .metrics
        .http_requests
        .get_or_create(&RequestLabels { route, code })
        .inc();
    let millis = started.elapsed().as_millis();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        warn!(%method, route, code, millis, ?client, "request");
    } else if status.is_server_error() {
        error!(%method, route, code, millis, ?client, "request failed");
    } else if status.is_success() {
        debug!(%method, route, code, millis, ?client, "request");
    } else {
        info!(%method, route, code, millis, ?client, "request");
    }
    response
}
