//! `/metrics` on a listener of its own. The series name every request in every namespace with
//! its expiry and readiness, which a tenant must not read through the public download Service;
//! on its own port, only what the administrator lets reach the pod (Prometheus) scrapes it.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, header},
    middleware,
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;
use tracing::info;

use super::{
    DRAIN_TIMEOUT, HEADER_READ_TIMEOUT, REQUEST_TIMEOUT, RETRY_AFTER_SECONDS, ServeError,
    TLS_HANDSHAKE_TIMEOUT, limits,
    listener::{self, ConnectionLimits},
};
use crate::metrics::Metrics;

pub(super) const METRICS_ROUTE: &str = "/metrics";

/// A scraper or two at a fixed interval; a few more slots cover a human with curl.
const MAX_SCRAPERS: usize = 8;

/// The metrics listener, bound at start-up so that a taken address stops the process before it
/// serves anything.
pub(super) struct MetricsListener {
    tcp: TcpListener,
    app: Router,
}

impl MetricsListener {
    pub(super) async fn bind(
        address: SocketAddr,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServeError> {
        let tcp = listener::bind(address).await?;
        info!(address = %tcp.local_addr().unwrap_or(address), "metrics listening");
        Ok(Self {
            tcp,
            app: router(metrics),
        })
    }

    pub(super) async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let limits = ConnectionLimits {
            max_connections: MAX_SCRAPERS,
            max_connections_per_client: MAX_SCRAPERS,
            handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
            drain_timeout: DRAIN_TIMEOUT,
            retry_after: RETRY_AFTER_SECONDS,
        };
        listener::serve_on(self.tcp, None, limits, self.app, shutdown).await;
    }
}

fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(METRICS_ROUTE, get(render))
        .layer(middleware::from_fn_with_state(
            REQUEST_TIMEOUT,
            limits::time_limit,
        ))
        .with_state(metrics)
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use axum::{
        body::Body,
        http::{Request, StatusCode},
    };
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let response = router(Arc::new(Metrics::default()))
            .oneshot(Request::get(METRICS_ROUTE).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert!(body.ends_with(b"# EOF\n"));
    }
}
