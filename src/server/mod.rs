//! The HTTP server: `GET /kube-config` turns a bearer ID token into a kubeconfig, next to health
//! and readiness endpoints; `/metrics` is served on a port of its own ([`scrape`]).
//!
//! The endpoint is public and hands out credentials, so the server bounds what one client can
//! cost. The bounds live where they apply: the [`listener`] bounds connections (count, header
//! size and time, TLS handshake, drain on shutdown), and each route group puts its own
//! per-request layers from [`limits`] in front of its handlers: the download is rate limited per
//! client and time limited, the probes are only time limited, so a throttled client cannot make
//! a pod look unhealthy. Tokens are never logged; the [`access_log`] names the route, never
//! headers or the query.
//!
//! The token's path: [`auth`] (bearer header -> verified identity, or 401) -> [`download`]
//! (identity -> kubeconfig).

mod access_log;
mod auth;
pub mod console;
mod cors;
mod download;
mod issue;
mod limits;
mod listener;
mod probes;
pub mod proxy;
mod scrape;
#[cfg(test)]
mod test_fixtures;

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use axum::{Router, middleware};
use futures::FutureExt as _;
use tracing::info;

pub use auth::Authenticated;
pub use download::KUBE_CONFIG_ROUTE;
pub use limits::REQUEST_TIMEOUT;
pub use listener::{
    DRAIN_TIMEOUT, HEADER_READ_TIMEOUT, MAX_HEADER_BYTES, MAX_HEADERS, TLS_HANDSHAKE_TIMEOUT,
};

use crate::{
    audit::AuditLog,
    config::{HttpConfig, KubeconfigSettings},
    confirm::Confirmer,
    metrics::Metrics,
    oidc::authenticator::Authenticator,
};
use limits::RequestLimits;
use listener::ConnectionLimits;

/// Sent with 503 (issuer unreachable, request too slow): long enough for Dex to come back or a
/// key fetch to finish, short enough that a user retrying by hand does not wait in vain.
const RETRY_AFTER_SECONDS: &str = "10";

/// What the handlers share.
pub struct HttpState {
    /// Judges every bearer token; shared with the controller and the proxy.
    pub authenticator: Arc<Authenticator>,
    pub settings: KubeconfigSettings,
    pub metrics: Arc<Metrics>,
    /// Whether the controller lets the replica be ready: set by the controller once its cache
    /// has synced; with leader election, also set while this replica does not lead, since it
    /// runs no controller and serves downloads with its keys alone (`controller::leader`).
    pub controller_ready: Arc<AtomicBool>,
    /// Origins whose pages may call `GET /kube-config` from a browser (CORS), as validated by
    /// the configuration; empty allows none and adds no CORS handling at all.
    pub allowed_origins: Vec<String>,
    /// Asks the API server about each token before `/kube-config` answers; `None` when turned
    /// off (`confirmWithApiServer: false`).
    pub confirmer: Option<Confirmer>,
    /// The login and download page at `/`, when configured.
    pub console: Option<Arc<console::Console>>,
    /// Where each download and refused download is recorded (`audit.path`).
    pub audit: Arc<AuditLog>,
}

impl auth::HoldsAuthenticator for Arc<HttpState> {
    fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }
}

/// Why the server could not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use the TLS file {}: {problem}", path.display())]
    Tls { path: PathBuf, problem: String },
    #[error("cannot set up the connection to the API server: {problem}")]
    Upstream { problem: String },
    #[error("cannot use the proxy's token file {}: {problem}", path.display())]
    Credential { path: PathBuf, problem: String },
}

/// The routes and the access log, without the per-request limits (no rate limit, no request
/// timeout), so they can be driven directly in tests and by the fuzzer.
pub fn router(state: Arc<HttpState>) -> Router {
    routes(state, None)
}

/// Every route group, each with its own layers, behind one access log. `limits` is `None` only
/// for [`router`].
fn routes(state: Arc<HttpState>, limits: Option<&RequestLimits>) -> Router {
    let mut router = Router::new()
        .merge(download::routes(limits, &state.allowed_origins))
        .merge(probes::routes(limits));
    if let Some(page) = &state.console {
        router = router.merge(console::routes(Arc::clone(page), limits));
    }
    router
        // Outermost, so every answer is logged and counted, including those the group layers
        // give (429, 503) and those no route gives (404).
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            access_log::access_log,
        ))
        .with_state(state)
}

/// Binds `config.listen` and `config.metrics_listen` and serves `state`'s routes with the
/// listener's and the route groups' limits, and the metrics, until `shutdown` resolves; then
/// stops accepting and gives in-flight requests [`DRAIN_TIMEOUT`] to finish. Fails only at
/// start-up (addresses or TLS files); later accept errors are logged and retried, since they are
/// transient (e.g. out of file descriptors).
pub async fn serve(
    config: &HttpConfig,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = config
        .tls
        .as_ref()
        .map(listener::tls_acceptor)
        .transpose()?;
    let tcp = listener::bind(config.listen).await?;
    let metrics =
        scrape::MetricsListener::bind(config.metrics_listen, Arc::clone(&state.metrics)).await?;
    let address = tcp.local_addr().unwrap_or(config.listen);
    info!(%address, tls = tls.is_some(), "HTTP server listening");
    let sweeper = tokio::spawn(forget_expired_verdicts(Arc::clone(&state)));
    let app = routes(state, Some(&RequestLimits::from_config(config)));
    let shutdown = shutdown.shared();
    tokio::join!(
        listener::serve_on(
            tcp,
            tls,
            ConnectionLimits::from_config(config),
            app,
            shutdown.clone(),
        ),
        metrics.serve(shutdown),
    );
    sweeper.abort();
    Ok(())
}

/// Verdicts past their time go when the next token is judged; when the callers of a burst go
/// quiet, none is, and this drops them. The authenticator's verdicts and the Confirmer's answers
/// are shared with the controller, and are swept here because every replica serves HTTP, while
/// only the leader runs the controller.
async fn forget_expired_verdicts(state: Arc<HttpState>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(30));
    loop {
        ticks.tick().await;
        state.authenticator.forget_expired();
        if let Some(confirmer) = &state.confirmer {
            confirmer.forget_expired();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use axum::http::{Method, StatusCode, header};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::TlsFiles;
    use test_fixtures::{call, exchange, get, start, state};

    #[tokio::test]
    async fn other_methods_and_paths_are_refused_without_5xx() {
        let state = state();
        let response = call(&state, Method::POST, KUBE_CONFIG_ROUTE, &[]).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(response.headers().contains_key(header::ALLOW));
        let response = call(&state, Method::GET, "/../../etc/passwd", &[]).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let metrics = state.metrics.render();
        assert!(metrics.contains(r#"route="other",code="404""#), "{metrics}");
        assert!(
            metrics.contains(r#"route="/kube-config",code="405""#),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn metrics_are_not_served_beside_the_download() {
        let response = call(&state(), Method::GET, "/metrics", &[]).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_client_over_its_budget_gets_429_but_probes_still_answer() {
        let state = state();
        let limits = RequestLimits {
            per_minute_per_client: NonZeroU32::new(3).unwrap(),
            ..test_fixtures::request_limits()
        };
        let server = start(
            Arc::clone(&state),
            test_fixtures::connection_limits(),
            limits,
        )
        .await;
        let mut statuses = Vec::new();
        let mut last = String::new();
        for _ in 0..5 {
            last = exchange(server.address, &get(KUBE_CONFIG_ROUTE)).await;
            statuses.push(last.get(9..12).unwrap_or_default().to_owned());
        }
        assert_eq!(statuses, ["401", "401", "401", "429", "429"]);
        // One request per 20 s comes back; the client is told how long until then.
        let retry_after = last
            .lines()
            .find_map(|line| line.strip_prefix("retry-after: "))
            .and_then(|seconds| seconds.parse::<u64>().ok());
        assert!(
            matches!(retry_after, Some(1..=20)),
            "{retry_after:?} in {last}"
        );
        for path in ["/healthz", "/readyz"] {
            let answer = exchange(server.address, &get(path)).await;
            assert!(!answer.starts_with("HTTP/1.1 429"), "{path}: {answer}");
        }
        assert!(
            state
                .metrics
                .render()
                .contains(r#"http_requests_total{route="/kube-config",code="429"} 2"#)
        );
    }

    #[tokio::test]
    async fn start_up_failures_name_the_address_or_file() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = HttpConfig {
            listen: taken.local_addr().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            max_connections: 4,
            requests_per_minute_per_client: 60,
            allowed_origins: Vec::new(),
        };
        let error = serve(&config, state(), async {}).await.unwrap_err();
        assert!(matches!(error, ServeError::Bind { .. }), "{error}");
        assert!(
            error.to_string().contains(&config.listen.to_string()),
            "{error}"
        );
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (listen, metrics_taken) = (free.local_addr().unwrap(), config.listen);
        drop(free);
        let error = serve(
            &HttpConfig {
                listen,
                metrics_listen: metrics_taken,
                ..config.clone()
            },
            state(),
            async {},
        )
        .await
        .unwrap_err();
        assert!(
            error.to_string().contains(&metrics_taken.to_string()),
            "{error}"
        );

        let not_pem = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_pem.path(), "not a certificate").unwrap();
        for (cert_file, key_file, culprit) in [
            (
                PathBuf::from("/nonexistent/tls.crt"),
                not_pem.path().to_owned(),
                "/nonexistent/tls.crt",
            ),
            (
                not_pem.path().to_owned(),
                not_pem.path().to_owned(),
                not_pem.path().to_str().unwrap(),
            ),
        ] {
            config.tls = Some(TlsFiles {
                cert_file,
                key_file,
            });
            let error = serve(&config, state(), async {}).await.unwrap_err();
            assert!(matches!(error, ServeError::Tls { .. }), "{error}");
            assert!(error.to_string().contains(culprit), "{error}");
        }
    }
}
