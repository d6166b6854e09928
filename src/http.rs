//! The HTTP server: `GET /kube-config` turns a bearer ID token into a kubeconfig, next to health,
//! readiness and metrics endpoints.
//!
//! The endpoint is public and hands out credentials, so the listener bounds what one client can
//! cost: header size, time to send headers, idle time between requests, time per request,
//! connections at once, and requests per minute per client address. Tokens are never logged; the
//! access log names the route, never headers or the query.

use std::{
    future::Future,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{ConnectInfo, MatchedPath, RawQuery, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::{debug, error, info, warn};

use crate::{
    config::{HttpConfig, KubeconfigSettings, TlsFiles, is_dns_label},
    kubeconfig,
    metrics::{Metrics, RequestLabels},
    token::{IdToken, TokenError, Verifier},
};

pub const KUBE_CONFIG_ROUTE: &str = "/kube-config";
/// Requests whose head (request line and headers) exceeds this get 431 from hyper before any
/// handler runs; real requests with a 1–4 KiB ID token stay far below it.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// More headers than any real client sends; bounds hyper's per-request header parsing work.
pub const MAX_HEADERS: usize = 100;
/// A client that has not sent a complete request head this long after the connection opened, or
/// after its previous response, is dropped: this is both the slow-loris defence and the bound on
/// idle keep-alive connections, which would otherwise hold one of the `max_connections` slots.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for answering one request, including a key fetch from the issuer. Longer requests
/// get 503, so a stuck issuer cannot pile up connections.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS client may take to finish its handshake; it holds a connection slot meanwhile.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may run after shutdown begins, so a stuck client cannot delay a
/// rollout beyond the pod's termination grace period (30 s by default).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Sent with 503 (issuer unreachable, request too slow): long enough for Dex to come back or a
/// key fetch to finish, short enough that a user retrying by hand does not wait in vain.
const RETRY_AFTER_SECONDS: &str = "10";

/// What the handlers share.
pub struct HttpState {
    pub verifier: Arc<Verifier>,
    pub settings: KubeconfigSettings,
    pub metrics: Arc<Metrics>,
    /// Set by the controller once its cache has synced.
    pub controller_ready: Arc<AtomicBool>,
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
}

/// The listener's bounds. `serve` takes them from the configuration and the constants above; tests
/// shorten the timeouts so they finish in well under a second.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    requests_per_minute_per_client: NonZeroU32,
    header_read_timeout: Duration,
    request_timeout: Duration,
    drain_timeout: Duration,
}

impl Limits {
    fn from_config(config: &HttpConfig) -> Self {
        Self {
            // The configuration refuses 0; the upper clamp keeps `Semaphore::new` from panicking.
            max_connections: config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
            requests_per_minute_per_client: NonZeroU32::new(config.requests_per_minute_per_client)
                .unwrap_or(NonZeroU32::MIN),
            header_read_timeout: HEADER_READ_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            drain_timeout: DRAIN_TIMEOUT,
        }
    }
}

type ClientLimiter = DefaultKeyedRateLimiter<IpAddr>;

/// What `serve` adds per request on top of [`router`].
struct PerRequestLimits {
    limiter: Arc<ClientLimiter>,
    timeout: Duration,
}

/// The routes and the access log, without the listener's limits (no rate limit, no request
/// timeout), so they can be driven directly in tests and by the fuzzer.
pub fn router(state: Arc<HttpState>) -> Router {
    routes(state, None)
}

fn routes(state: Arc<HttpState>, limits: Option<PerRequestLimits>) -> Router {
    let mut kube_config_route = get(kube_config);
    let mut timeout = None;
    if let Some(limits) = limits {
        // Only the credential endpoint is rate limited: probes and scrapes come from a few
        // addresses at a fixed rate and must keep working while a client is being throttled.
        // As a route layer it runs for GET only, so a 405 costs no budget.
        kube_config_route = kube_config_route
            .route_layer(middleware::from_fn_with_state(limits.limiter, rate_limit));
        timeout = Some(limits.timeout);
    }
    let mut router = Router::new()
        .route(KUBE_CONFIG_ROUTE, kube_config_route)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if let Some(timeout) = timeout {
        // Inside the access log, so requests that time out are logged and counted too.
        router = router.layer(middleware::from_fn_with_state(timeout, time_limit));
    }
    router
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
    match kubeconfig::render(&state.settings, &token, namespace.as_deref()) {
        Ok(yaml) => {
            info!(user = %identity.username, expires_at = %identity.expires_at, "kubeconfig issued over HTTP");
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/yaml"),
                    ),
                    // The body is a credential: no browser or proxy may keep a copy.
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
            // The error comes from serialising settings we own; it cannot contain the token's
            // value, but the user name identifies whom it failed for.
            error!(%problem, user = %identity.username, "cannot render a kubeconfig");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the kubeconfig; the operator's logs say why\n",
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

/// `Authorization: Bearer <token>` (RFC 6750): exactly one header, scheme in any case, and a
/// token of visible ASCII. Anything else is refused here, before it costs a verification.
fn bearer_token(headers: &HeaderMap) -> Result<IdToken, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (Some(value), None) => value.as_bytes(),
        (None, _) => return Err("send the ID token as: Authorization: Bearer <ID token>\n"),
        (Some(_), Some(_)) => return Err("send exactly one Authorization header\n"),
    };
    let (scheme, token) = match value.iter().position(|&b| b == b' ') {
        Some(space) => (&value[..space], value[space..].trim_ascii()),
        None => (value, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err("the Authorization scheme must be Bearer: Authorization: Bearer <ID token>\n");
    }
    if token.is_empty() {
        return Err("the bearer token is empty: Authorization: Bearer <ID token>\n");
    }
    if !token.iter().all(u8::is_ascii_graphic) {
        return Err(
            "the bearer token must be visible ASCII without spaces: Authorization: Bearer <ID token>\n",
        );
    }
    Ok(IdToken::from(
        token.iter().copied().map(char::from).collect::<String>(),
    ))
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

/// 401 names the reason in the challenge and explains it in the body; an unreachable issuer is
/// not the client's fault, so it gets 503 and a hint to retry.
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
    if controller && keys {
        return (StatusCode::OK, "ok\n").into_response();
    }
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

/// One bucket per IPv4 address, and one per /64 for IPv6: a single IPv6 host usually holds a
/// whole /64 and could otherwise take a fresh address for every request. IPv4 clients of a
/// dual-stack listener arrive as IPv4-mapped addresses and count as their IPv4 address.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// 429 once a client address has used its budget, with the seconds until its next request
/// would be allowed. The `ConnectInfo` extractor answers 500 if the accept loop did not attach
/// the address, so a wiring mistake cannot silently put every client into one bucket.
async fn rate_limit(
    State(limiter): State<Arc<ClientLimiter>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let Err(not_until) = limiter.check_key(&client_key(client.ip())) else {
        return next.run(request).await;
    };
    let wait = not_until.wait_time_from(limiter.clock().now());
    let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, HeaderValue::from(seconds))],
        "too many requests from this address; try again later\n",
    )
        .into_response()
}

async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            )],
            "the request took too long; try again later\n",
        )
            .into_response(),
    }
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
/// are logged: never headers, where the token travels, nor the query. 503 means the issuer or a
/// slow request, so it is a warning; any other 5xx is a bug of ours and an error.
async fn access_log(State(state): State<Arc<HttpState>>, request: Request, next: Next) -> Response {
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
    } else {
        info!(%method, route, code, millis, ?client, "request");
    }
    response
}

/// Binds `config.listen` and serves `state`'s routes with the listener's limits until
/// `shutdown` resolves; then stops accepting and gives in-flight requests [`DRAIN_TIMEOUT`] to
/// finish. Fails only at start-up (address or TLS files); later accept errors are logged and
/// retried, since they are transient (e.g. out of file descriptors).
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
    let address = listener.local_addr().unwrap_or(config.listen);
    info!(%address, tls = tls.is_some(), "HTTP server listening");
    serve_on(listener, tls, Limits::from_config(config), state, shutdown).await;
    Ok(())
}

async fn serve_on(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let limiter: Arc<ClientLimiter> = Arc::new(RateLimiter::keyed(Quota::per_minute(
        limits.requests_per_minute_per_client,
    )));
    // Without pruning, every address ever seen would keep an entry.
    let forget_idle_clients = tokio::spawn({
        let limiter = Arc::clone(&limiter);
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                limiter.retain_recent();
            }
        }
    });
    let app = routes(
        state,
        Some(PerRequestLimits {
            limiter,
            timeout: limits.request_timeout,
        }),
    );
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // The permit comes before accept, so connections over the limit wait in the kernel's
        // backlog instead of being accepted and then starved.
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
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(client));
            app.clone().oneshot(request)
        });
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
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(problem)) => {
                                debug!(%problem, %client, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(%client, "TLS handshake timed out");
                                return;
                            }
                        };
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
            };
            // Header timeouts, oversized heads and resets are the client's doing: debug only.
            if let Err(problem) = outcome {
                debug!(%problem, %client, "connection ended with an error");
            }
        });
    }
    drop(listener);
    forget_idle_clients.abort();
    info!("HTTP server stopped accepting; finishing in-flight requests");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            "in-flight requests did not finish within {:?}; dropping them",
            limits.drain_timeout
        );
    }
}

/// Reads the certificate chain and key now, so a bad file stops start-up with its path instead of
/// failing every handshake later. The provider is named explicitly rather than taken from the
/// process default, which would panic if none was installed.
fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServeError> {
    let problem = |path: &Path, problem: String| ServeError::Tls {
        path: path.to_owned(),
        problem,
    };
    let cert_pem =
        std::fs::read(&files.cert_file).map_err(|e| problem(&files.cert_file, e.to_string()))?;
    let certificates = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(&files.cert_file, format!("not PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(problem(&files.cert_file, "holds no PEM certificate".into()));
    }
    let key_pem =
        std::fs::read(&files.key_file).map_err(|e| problem(&files.key_file, e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| problem(&files.key_file, format!("not PEM: {e}")))?
        .ok_or_else(|| problem(&files.key_file, "holds no PEM private key".into()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| problem(&files.cert_file, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certificates, key)
    .map_err(|e| {
        problem(
            &files.key_file,
            format!("does not fit the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use axum::{body::Body, http::Method};
    use jsonwebtoken::{
        EncodingKey, Header,
        jwk::{Jwk, JwkSet},
    };
    use serde_json::json;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
        sync::oneshot,
        task::JoinHandle,
    };

    use jsonwebtoken::Algorithm;

    use super::*;
    use crate::{config::OidcConfig, jwks::KeySet};

    const ISSUER: &str = "https://dex.example/dex";
    const KID: &str = "test-key";

    /// The issuer's signing key and its JWK; RSA generation is slow in debug builds, so once.
    static KEY: LazyLock<(EncodingKey, Jwk)> = LazyLock::new(|| {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8: Pkcs8V1Der = pair.as_der().unwrap();
        let encoding = EncodingKey::from_rsa_der(&crate::testing::pkcs1_from_pkcs8(pkcs8.as_ref()));
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(KID.into());
        (encoding, jwk)
    });

    fn signed_token() -> String {
        let now = chrono::Utc::now().timestamp();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.into());
        let claims = json!({
            "iss": ISSUER,
            "sub": "CiQwOGE4",
            "aud": "kubeconfig-operator",
            "exp": now + 600,
            "iat": now - 5,
            "email": "jane@example.com",
            "email_verified": true,
            "groups": ["dev"],
        });
        jsonwebtoken::encode(&header, &claims, &KEY.0).unwrap()
    }

    fn state_with(verifier: Verifier) -> Arc<HttpState> {
        Arc::new(HttpState {
            verifier: Arc::new(verifier),
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

    /// A verifier that knows the issuer's key from a static set: no network.
    fn state() -> Arc<HttpState> {
        let config = OidcConfig::for_tests(ISSUER, &[Algorithm::RS256]);
        let keys = KeySet::from_static(
            &JwkSet {
                keys: vec![KEY.1.clone()],
            },
            &config.algorithms,
        );
        state_with(Verifier::with_keys(config, keys))
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
            &["Bearer"],
            &["Bearer    "],
            &["Bearer a.b c"],
            &["Bearertoken"],
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
            assert!(body(response).await.contains("Authorization"));
        }
        assert!(
            state
                .metrics
                .render()
                .contains(r#"http_requests_total{route="/kube-config",code="401"} 7"#)
        );
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
    async fn a_valid_token_gets_its_kubeconfig_as_a_download() {
        let state = state();
        let token = signed_token();
        let authorization = format!("BEARER {token}");
        let response = call(&state, Method::GET, KUBE_CONFIG_ROUTE, &[&authorization]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "application/yaml");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(
            headers[header::CONTENT_DISPOSITION],
            "attachment; filename=\"local-cluster.kubeconfig\""
        );
        let kubeconfig: serde_json::Value = crate::yaml::from_str(&body(response).await).unwrap();
        assert_eq!(kubeconfig["users"][0]["user"]["token"], token.as_str());
        assert_eq!(kubeconfig["current-context"], "local cluster");
        assert!(kubeconfig["contexts"][0]["context"]["namespace"].is_null());

        let uri = format!("{KUBE_CONFIG_ROUTE}?namespace=team-a");
        let response = call(&state, Method::GET, &uri, &[&authorization]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let kubeconfig: serde_json::Value = crate::yaml::from_str(&body(response).await).unwrap();
        assert_eq!(kubeconfig["contexts"][0]["context"]["namespace"], "team-a");
        assert!(
            state
                .metrics
                .render()
                .contains(r#"http_requests_total{route="/kube-config",code="200"} 2"#)
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
            "?namespace=%00",
        ] {
            let uri = format!("{KUBE_CONFIG_ROUTE}{query}");
            let response = call(&state, Method::GET, &uri, &["Bearer a.b.c"]).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
            assert!(body(response).await.contains("namespace"), "{query}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_issuer_is_503_with_retry_after_and_not_ready() {
        // Nothing listens on port 1, so the key fetch for the token's kid fails at once.
        let config = OidcConfig::for_tests("https://127.0.0.1:1/dex", &[Algorithm::RS256]);
        let state = state_with(Verifier::new(config).await.unwrap());
        let authorization = format!("Bearer {}", signed_token());
        let response = call(&state, Method::GET, KUBE_CONFIG_ROUTE, &[&authorization]).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "10");
        assert!(body(response).await.starts_with("IssuerUnavailable: "));
        state.controller_ready.store(true, Ordering::Relaxed);
        let response = call(&state, Method::GET, "/readyz", &[]).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(response).await.contains("signing keys are not loaded"));
    }

    #[tokio::test]
    async fn a_request_stuck_on_the_issuer_times_out_with_503() {
        // The kernel completes the issuer connection, but nobody ever answers the handshake.
        let silent_issuer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("https://{}/dex", silent_issuer.local_addr().unwrap());
        let config = OidcConfig::for_tests(&issuer, &[Algorithm::RS256]);
        let state = state_with(Verifier::new(config).await.unwrap());
        let app = routes(
            Arc::clone(&state),
            Some(PerRequestLimits {
                limiter: Arc::new(RateLimiter::keyed(Quota::per_minute(NonZeroU32::MIN))),
                timeout: Duration::from_millis(200),
            }),
        );
        let mut request = axum::http::Request::get(KUBE_CONFIG_ROUTE)
            .header(header::AUTHORIZATION, format!("Bearer {}", signed_token()))
            .body(Body::empty())
            .unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 40000))));
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        assert!(body(response).await.contains("took too long"));
        assert!(
            state
                .metrics
                .render()
                .contains(r#"http_requests_total{route="/kube-config",code="503"} 1"#)
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
        let metrics = state.metrics.render();
        assert!(metrics.contains(r#"route="other",code="404""#), "{metrics}");
        assert!(
            metrics.contains(r#"route="/kube-config",code="405""#),
            "{metrics}"
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
        let response = call(&state, Method::GET, "/healthz", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await, "ok\n");
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let state = state();
        let response = call(&state, Method::GET, "/metrics", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert!(body(response).await.ends_with("# EOF\n"));
    }

    #[test]
    fn attachment_names_are_safe() {
        assert_eq!(
            attachment("local cluster"),
            "attachment; filename=\"local-cluster.kubeconfig\""
        );
        assert_eq!(
            attachment("a\"b;c\r\n"),
            "attachment; filename=\"a-b-c--.kubeconfig\""
        );
    }

    #[test]
    fn an_ipv6_host_cannot_dodge_the_rate_limit_within_its_64() {
        let key = |ip: &str| client_key(ip.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }

    // Over real TCP, through the accept loop.

    fn limits() -> Limits {
        Limits {
            max_connections: 8,
            requests_per_minute_per_client: NonZeroU32::new(600).unwrap(),
            header_read_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(2),
        }
    }

    /// A server on an ephemeral port; dropping `stop` (or sending on it) shuts it down.
    struct TestServer {
        address: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    }

    async fn start(state: Arc<HttpState>, limits: Limits) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_on(listener, None, limits, state, async move {
            let _ = stopped.await;
        }));
        TestServer {
            address,
            stop,
            task,
        }
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    }

    /// Reads until the server closes; `None` if it keeps the connection open for `wait`.
    async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> Option<String> {
        let mut answer = Vec::new();
        // A reset after the answer still counts as closed; the bytes read so far are kept.
        let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer))
            .await
            .ok()?;
        Some(String::from_utf8_lossy(&answer).into_owned())
    }

    async fn exchange(address: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .expect("the server answers and closes")
    }

    #[tokio::test]
    async fn headers_over_16_kib_get_431_and_the_server_keeps_serving() {
        let server = start(state(), limits()).await;
        let padding = "a".repeat(20 * 1024);
        let request = format!(
            "GET /kube-config HTTP/1.1\r\nHost: x\r\nX-Padding: {padding}\r\nConnection: close\r\n\r\n"
        );
        let answer = exchange(server.address, &request).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");
        let answer = exchange(server.address, &get("/healthz")).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }

    #[tokio::test]
    async fn a_client_over_its_budget_gets_429_but_probes_still_answer() {
        let state = state();
        let limits = Limits {
            requests_per_minute_per_client: NonZeroU32::new(3).unwrap(),
            ..limits()
        };
        let server = start(Arc::clone(&state), limits).await;
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
        for path in ["/healthz", "/metrics", "/readyz"] {
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
    async fn slow_and_idle_clients_are_disconnected() {
        let server = start(state(), limits()).await;
        // Never finishes its headers.
        let mut slow = TcpStream::connect(server.address).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // Finishes one request, then keeps the connection open without sending another.
        let mut idle = TcpStream::connect(server.address).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let answer = read_until_closed(&mut idle, Duration::from_secs(5))
            .await
            .expect("an idle keep-alive connection is closed");
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(started.elapsed() >= Duration::from_millis(400));
        assert!(
            read_until_closed(&mut slow, Duration::from_secs(5))
                .await
                .is_some(),
            "a half-sent request is dropped"
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let limits = Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(30),
            ..limits()
        };
        let server = start(state(), limits).await;
        let holder = TcpStream::connect(server.address).await.unwrap();
        let mut waiting = TcpStream::connect(server.address).await.unwrap();
        waiting.write_all(get("/healthz").as_bytes()).await.unwrap();
        assert_eq!(
            read_until_closed(&mut waiting, Duration::from_millis(300)).await,
            None,
            "a second connection was served while the only slot was taken"
        );
        drop(holder);
        let answer = read_until_closed(&mut waiting, Duration::from_secs(5))
            .await
            .expect("served once the slot frees");
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_stops_accepting() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(30),
            ..limits()
        };
        let server = start(state(), limits).await;
        let mut idle = TcpStream::connect(server.address).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        idle.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        server.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), server.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
        assert!(
            read_until_closed(&mut idle, Duration::from_secs(1))
                .await
                .is_some()
        );
        assert!(TcpStream::connect(server.address).await.is_err());
    }

    #[tokio::test]
    async fn start_up_failures_name_the_address_or_file() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = HttpConfig {
            listen: taken.local_addr().unwrap(),
            tls: None,
            max_connections: 4,
            requests_per_minute_per_client: 60,
        };
        let error = serve(&config, state(), async {}).await.unwrap_err();
        assert!(matches!(error, ServeError::Bind { .. }), "{error}");
        assert!(
            error.to_string().contains(&config.listen.to_string()),
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
