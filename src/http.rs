//! The HTTP server: `GET /kube-config` turns a bearer ID token into a kubeconfig, next to health,
//! readiness and metrics endpoints.
//!
//! The endpoint is public and hands out credentials, so the listener bounds what one client can
//! cost: header size, time to send headers, time per request, connections at once, and requests
//! per minute per client address. Tokens are never logged; the access log names the route only.

use std::{
    convert::Infallible,
    future::Future,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, MatchedPath, RawQuery, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::{error, info, warn};

use crate::{
    config::{HttpConfig, KubeconfigSettings, TlsFiles, is_dns_label},
    kubeconfig,
    metrics::{Metrics, RequestLabels},
    token::{IdToken, TokenError, Verifier},
};

pub const KUBE_CONFIG_ROUTE: &str = "/kube-config";
/// Requests whose headers exceed this get 431 from hyper before any handler runs; real requests
/// with a 1–4 KiB ID token stay far below it.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A client that has not sent its headers by then is dropped (slow-loris defence); this also
/// closes idle keep-alive connections.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for answering one request, including token validation.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may run after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Sent with 503 (issuer unreachable) and 429 (rate limit).
const RETRY_AFTER_SECONDS: &str = "10";

/// What the handlers share.
pub struct HttpState {
    pub verifier: Arc<Verifier>,
    pub settings: KubeconfigSettings,
    pub metrics: Arc<Metrics>,
    /// Set by the controller once its cache has synced.
    pub controller_ready: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use TLS file {path:?}: {problem}")]
    Tls { path: String, problem: String },
}

/// The routes, without connection-level limits, so they can be driven directly in tests and by
/// the fuzzer.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route(KUBE_CONFIG_ROUTE, get(kube_config))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            access_log,
        ))
        .with_state(state)
}

async fn kube_config(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let namespace = match requested_namespace(query.as_deref()) {
        Ok(namespace) => namespace,
        Err(problem) => return (StatusCode::BAD_REQUEST, problem).into_response(),
    };
    let token = match bearer_token(&headers) {
        Ok(token) => token,
        Err(problem) => return missing_credentials(problem),
    };
    let identity = match state.verifier.verify(&token).await {
        Ok(identity) => identity,
        Err(refusal) => {
            state.metrics.count_token_failure(refusal.reason());
            return token_refused(&refusal);
        }
    };
    let namespace = namespace.or(state.settings.default_namespace.clone());
    match kubeconfig::render(&state.settings, &token, namespace.as_deref()) {
        Ok(yaml) => {
            info!(user = %identity.username, "kubeconfig issued over HTTP");
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/yaml"),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                    (
                        header::CONTENT_DISPOSITION,
                        attachment(&state.settings.cluster_name),
                    ),
                ],
                yaml,
            )
                .into_response()
        }
        Err(problem) => {
            error!(%problem, "cannot render a kubeconfig");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the kubeconfig",
            )
                .into_response()
        }
    }
}

/// Only `namespace` is understood; anything else is refused so a typo does not silently give a
/// kubeconfig without the namespace the caller meant.
fn requested_namespace(query: Option<&str>) -> Result<Option<String>, &'static str> {
    let mut namespace = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "namespace" if namespace.is_none() && is_dns_label(&value) => {
                namespace = Some(value.into_owned());
            }
            "namespace" => {
                return Err(
                    "namespace must be given once, as a namespace name (a DNS label: lowercase letters, digits and '-', at most 63)\n",
                );
            }
            _ => return Err("unknown query parameter; only namespace is supported\n"),
        }
    }
    Ok(namespace)
}

fn bearer_token(headers: &HeaderMap) -> Result<IdToken, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err("send exactly one header: Authorization: Bearer <ID token>\n");
    };
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header must be visible ASCII\n")?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err("send Authorization: Bearer <ID token>\n");
    }
    Ok(IdToken::from(token.to_owned()))
}

fn missing_credentials(problem: &'static str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"kubeconfig-operator\""),
        )],
        problem,
    )
        .into_response()
}

fn token_refused(refusal: &TokenError) -> Response {
    let body = format!("{}: {refusal}\n", refusal.reason());
    if matches!(refusal, TokenError::IssuerUnavailable(_)) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            )],
            body,
        )
            .into_response();
    }
    // The reason is one of a fixed set of words, so the header value is always valid.
    let challenge = format!(
        "Bearer realm=\"kubeconfig-operator\", error=\"invalid_token\", error_description=\"{}\"",
        refusal.reason()
    );
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&challenge)
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\"")),
        )],
        body,
    )
        .into_response()
}

/// `attachment; filename="<cluster>.kubeconfig"`, with the name reduced to characters that need
/// no quoting in any browser.
fn attachment(cluster_name: &str) -> HeaderValue {
    let safe: String = cluster_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{safe}.kubeconfig\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment; filename=\"kubeconfig\""))
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let controller = state.controller_ready.load(Ordering::Relaxed);
    let keys = state.verifier.is_ready();
    match (controller, keys) {
        (true, true) => (StatusCode::OK, "ok\n").into_response(),
        _ => {
            let mut missing = Vec::new();
            if !controller {
                missing.push("the controller's cache has not synced");
            }
            if !keys {
                missing.push("the issuer's signing keys are not loaded");
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", missing.join("; ")),
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The route as a fixed label, so clients cannot create metric series at will.
fn route_label(request: &Request) -> &'static str {
    match request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some(KUBE_CONFIG_ROUTE) => KUBE_CONFIG_ROUTE,
        Some("/healthz") => "/healthz",
        Some("/readyz") => "/readyz",
        Some("/metrics") => "/metrics",
        _ => "other",
    }
}

/// Counts and logs every response. Only the method, route, status, duration and client address
/// are logged: never headers, where the token travels.
async fn access_log(State(state): State<Arc<HttpState>>, request: Request, next: Next) -> Response {
    let route = route_label(&request);
    let method = request.method().clone();
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    let started = Instant::now();
    let response = next.run(request).await;
    let code = response.status().as_u16();
    state
        .metrics
        .http_requests
        .get_or_create(&RequestLabels { route, code })
        .inc();
    let millis = started.elapsed().as_millis();
    if response.status().is_server_error() && response.status() != StatusCode::SERVICE_UNAVAILABLE {
        error!(%method, route, code, millis, ?client, "request failed");
    } else {
        info!(%method, route, code, millis, ?client, "request");
    }
    response
}

/// Serves `state`'s routes until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    config: &HttpConfig,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            address: config.listen,
            source,
        })?;
    let per_minute =
        NonZeroU32::new(config.requests_per_minute_per_client).unwrap_or(NonZeroU32::MIN);
    let limiter: Arc<DefaultKeyedRateLimiter<IpAddr>> =
        Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute)));
    let forget_idle_clients = tokio::spawn({
        let limiter = Arc::clone(&limiter);
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                limiter.retain_recent();
            }
        }
    });
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let app = router(Arc::clone(&state));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(100);
    info!(address = %config.listen, tls = tls.is_some(), "HTTP server listening");

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // The permit comes before accept, so connections over the limit wait in the backlog.
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(problem) => {
                    warn!(%problem, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = connection_service(
            app.clone(),
            Arc::clone(&limiter),
            Arc::clone(&state),
            client,
        );
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
            };
            if let Err(problem) = outcome {
                tracing::debug!(%problem, "connection ended with an error");
            }
        });
    }
    drop(listener);
    forget_idle_clients.abort();
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}");
    }
    Ok(())
}

/// One connection's service: client address for the access log, the per-client rate limit on
/// the credential endpoint, and the per-request time limit.
fn connection_service(
    app: Router,
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    state: Arc<HttpState>,
    client: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let app = app.clone();
        let limiter = Arc::clone(&limiter);
        let state = Arc::clone(&state);
        async move {
            if request.uri().path() == KUBE_CONFIG_ROUTE && limiter.check_key(&client.ip()).is_err()
            {
                state
                    .metrics
                    .http_requests
                    .get_or_create(&RequestLabels {
                        route: KUBE_CONFIG_ROUTE,
                        code: 429,
                    })
                    .inc();
                return Ok((
                    StatusCode::TOO_MANY_REQUESTS,
                    [(
                        header::RETRY_AFTER,
                        HeaderValue::from_static(RETRY_AFTER_SECONDS),
                    )],
                    "too many requests from this address; try again later\n",
                )
                    .into_response());
            }
            request.extensions_mut().insert(ConnectInfo(client));
            let answer =
                tokio::time::timeout(REQUEST_TIMEOUT, app.oneshot(request.map(Body::new))).await;
            Ok(match answer {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the request took too long\n",
                )
                    .into_response(),
            })
        }
    })
}

fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServeError> {
    let problem = |path: &Path, problem: String| ServeError::Tls {
        path: path.display().to_string(),
        problem,
    };
    let cert_pem =
        std::fs::read(&files.cert_file).map_err(|e| problem(&files.cert_file, e.to_string()))?;
    let certificates = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(&files.cert_file, format!("not PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(problem(&files.cert_file, "holds no certificate".into()));
    }
    let key_pem =
        std::fs::read(&files.key_file).map_err(|e| problem(&files.key_file, e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| problem(&files.key_file, format!("not PEM: {e}")))?
        .ok_or_else(|| problem(&files.key_file, "holds no private key".into()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|e| problem(&files.key_file, e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use axum::http::Method;
    use jsonwebtoken::{Algorithm, jwk::JwkSet};

    use super::*;
    use crate::{config::OidcConfig, jwks::KeySet};

    /// A verifier whose key set is empty but loaded: every token is refused without network.
    fn state() -> Arc<HttpState> {
        let config = OidcConfig::for_tests("https://dex.example/dex", &[Algorithm::RS256]);
        let keys = KeySet::from_static(&JwkSet { keys: vec![] }, &config.algorithms);
        Arc::new(HttpState {
            verifier: Arc::new(Verifier::with_keys(config, keys)),
            settings: KubeconfigSettings {
                cluster_name: "local cluster".into(),
                server: "https://127.0.0.1:6443".into(),
                ca_pem: None,
                user_name: "OIDCUser".into(),
                default_namespace: None,
            },
            metrics: Arc::new(Metrics::default()),
            controller_ready: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn call(
        state: &Arc<HttpState>,
        method: Method,
        uri: &str,
        authorization: &[&str],
    ) -> Response {
        let mut request = axum::http::Request::builder().method(method).uri(uri);
        for value in authorization {
            request = request.header(header::AUTHORIZATION, *value);
        }
        router(Arc::clone(state))
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn missing_or_foreign_credentials_get_a_bearer_challenge() {
        let state = state();
        for authorization in [
            &[][..],
            &["Basic YWxpY2U6cHc="],
            &["Bearer "],
            &["Bearer a.b.c", "Bearer d.e.f"],
        ] {
            let response = call(&state, Method::GET, KUBE_CONFIG_ROUTE, authorization).await;
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{authorization:?}"
            );
            let challenge = response.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap();
            assert_eq!(challenge, "Bearer realm=\"kubeconfig-operator\"");
        }
    }

    #[tokio::test]
    async fn an_invalid_token_gets_401_with_its_reason_and_is_counted() {
        let state = state();
        let response = call(
            &state,
            Method::GET,
            KUBE_CONFIG_ROUTE,
            &["bearer garbage-token-value"],
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert!(
            challenge.contains("error_description=\"Malformed\""),
            "{challenge}"
        );
        let text = body(response).await;
        assert!(text.starts_with("Malformed: "), "{text}");
        assert!(!text.contains("garbage-token-value"));
        let metrics = state.metrics.render();
        assert!(
            metrics.contains(r#"token_validation_failures_total{reason="Malformed"} 1"#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"http_requests_total{route="/kube-config",code="401"} 1"#),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn query_must_be_one_valid_namespace() {
        let state = state();
        for query in [
            "?namespace=Bad_NS",
            "?namespace=a&namespace=b",
            "?ns=team-a",
            "?namespace=",
        ] {
            let uri = format!("{KUBE_CONFIG_ROUTE}{query}");
            let response = call(&state, Method::GET, &uri, &["Bearer a.b.c"]).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        }
        let response = call(
            &state,
            Method::GET,
            "/kube-config?namespace=team-a",
            &["Bearer a.b.c"],
        )
        .await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "a valid namespace reaches validation"
        );
    }

    #[tokio::test]
    async fn other_methods_and_paths_are_refused_without_5xx() {
        let state = state();
        let response = call(&state, Method::POST, KUBE_CONFIG_ROUTE, &[]).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(response.headers().contains_key(header::ALLOW));
        let response = call(&state, Method::GET, "/../../etc/passwd", &[]).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(
            state
                .metrics
                .render()
                .contains(r#"route="other",code="404""#)
        );
    }

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
        assert_eq!(
            call(&state, Method::GET, "/healthz", &[]).await.status(),
            StatusCode::OK
        );
    }

    #[test]
    fn attachment_names_are_safe() {
        assert_eq!(
            attachment("local cluster"),
            "attachment; filename=\"local-cluster.kubeconfig\""
        );
        assert_eq!(
            attachment("a\"b;c"),
            "attachment; filename=\"a-b-c.kubeconfig\""
        );
    }
}
