//! What the server's unit tests share: an issuer key known to a network-free verifier, a state
//! around it, and helpers to call the router in-process or a served listener over real TCP.

use std::{
    net::SocketAddr,
    num::NonZeroU32,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use axum::{
    body::Body,
    http::{Method, Request, header},
    response::Response,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::{HttpState, limits::RequestLimits, listener::ConnectionLimits, router, routes};
use crate::{
    config::KubeconfigSettings,
    confirm::Confirmer,
    metrics::Metrics,
    oidc::{authenticator::Authenticator, verify::Verifier},
    testing,
};

/// A confirmer whose API server answers one SelfSubjectReview, which must carry `token`, with
/// `status` and `answer`; a second review finds no API server. Refusals count in `metrics`.
pub(crate) fn api_server_answering(
    token: &str,
    status: u16,
    answer: serde_json::Value,
    metrics: &Arc<Metrics>,
) -> Confirmer {
    let (client, mut api) = crate::testing::api_server::client("default");
    let authorization = format!("Bearer {token}");
    tokio::spawn(async move {
        let review = api
            .expect(
                Method::POST,
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            )
            .await;
        assert_eq!(
            review.headers[header::AUTHORIZATION],
            authorization.as_str()
        );
        review.reply(status, answer);
    });
    Confirmer::with_client(client, Arc::clone(metrics))
}

/// The API server's answer refusing a request with `code`.
pub(crate) fn refusal(code: u16) -> serde_json::Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "refused", "code": code,
    })
}

/// The API server's answer to a SelfSubjectReview: `user_info` is the token's user.
pub(crate) fn review(user_info: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
        "status": { "userInfo": user_info },
    })
}

/// A token for jane@example.com from the test issuer, valid for ten minutes.
pub(super) fn signed_token() -> String {
    testing::issuer().token_for("jane@example.com", &["dev"], 600)
}

/// [`signed_token`] naming another issuer.
pub(super) fn signed_token_from(issuer: &str) -> String {
    testing::issuer().token_from(issuer, "jane@example.com", &["dev"], 600)
}

pub(super) fn state_with(verifier: Verifier) -> Arc<HttpState> {
    state_from(verifier, &[], None)
}

/// As [`state`], with downloads confirmed by the API server that `confirmer` reaches.
pub(super) fn state_confirming(confirmer: Confirmer) -> Arc<HttpState> {
    state_from(static_verifier(), &[], Some(confirmer))
}

fn state_from(
    verifier: Verifier,
    allowed_origins: &[&str],
    confirmer: Option<Confirmer>,
) -> Arc<HttpState> {
    let metrics = Arc::new(Metrics::default());
    Arc::new(HttpState {
        authenticator: Arc::new(Authenticator::new(
            Arc::new(verifier),
            crate::oidc::revocations::Revocations::none(),
            Arc::clone(&metrics),
        )),
        settings: KubeconfigSettings::for_tests("local cluster", "https://127.0.0.1:6443"),
        metrics,
        controller_ready: Arc::new(AtomicBool::new(false)),
        allowed_origins: allowed_origins
            .iter()
            .map(|&origin| origin.to_owned())
            .collect(),
        confirmer,
        console: None,
        audit: Arc::default(),
    })
}

/// A verifier that knows the issuer's key from a static set: no network.
fn static_verifier() -> Verifier {
    testing::issuer().verifier()
}

/// The routes' state with a network-free verifier and no CORS origins.
pub(super) fn state() -> Arc<HttpState> {
    state_with(static_verifier())
}

/// As [`state`], with pages of `origins` allowed to call the download cross-origin.
pub(super) fn state_allowing(origins: &[&str]) -> Arc<HttpState> {
    state_from(static_verifier(), origins, None)
}

/// One request through [`router`] (no per-request limits), with the given Authorization values.
pub(super) async fn call(
    state: &Arc<HttpState>,
    method: Method,
    uri: &str,
    authorization: &[&str],
) -> Response {
    let mut request = Request::builder().method(method).uri(uri);
    for value in authorization {
        request = request.header(header::AUTHORIZATION, *value);
    }
    send(state, request.body(Body::empty()).unwrap()).await
}

/// `request` through [`router`] (no per-request limits).
pub(super) async fn send(state: &Arc<HttpState>, request: Request<Body>) -> Response {
    router(Arc::clone(state)).oneshot(request).await.unwrap()
}

pub(super) async fn body(response: Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Connection bounds short enough for tests.
pub(super) fn connection_limits() -> ConnectionLimits {
    ConnectionLimits {
        max_connections: 8,
        max_connections_per_client: 8,
        handshake_timeout: Duration::from_millis(500),
        header_read_timeout: Duration::from_millis(500),
        drain_timeout: Duration::from_secs(2),
        retry_after: super::RETRY_AFTER_SECONDS,
    }
}

pub(super) fn request_limits() -> RequestLimits {
    RequestLimits {
        per_minute_per_client: NonZeroU32::new(600).unwrap(),
        timeout: Duration::from_secs(5),
    }
}

/// A server on an ephemeral port; dropping `stop` (or sending on it) shuts it down.
pub(super) struct TestServer {
    pub(super) address: SocketAddr,
    pub(super) stop: oneshot::Sender<()>,
    pub(super) task: JoinHandle<()>,
}

/// Serves every route group with `requests` limits over plain TCP.
pub(super) async fn start(
    state: Arc<HttpState>,
    connections: ConnectionLimits,
    requests: RequestLimits,
) -> TestServer {
    start_with_tls(state, connections, requests, None).await
}

/// As [`start`], over TLS when `tls` is given.
pub(super) async fn start_with_tls(
    state: Arc<HttpState>,
    connections: ConnectionLimits,
    requests: RequestLimits,
    tls: Option<TlsAcceptor>,
) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let app = routes(state, Some(&requests));
    let task = tokio::spawn(super::listener::serve_on(
        listener,
        tls,
        connections,
        app,
        async move {
            let _ = stopped.await;
        },
    ));
    TestServer {
        address,
        stop,
        task,
    }
}

pub(super) fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
}

/// Reads until the server closes; `None` if it keeps the connection open for `wait`.
pub(super) async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut answer = Vec::new();
    // A reset after the answer still counts as closed; the bytes read so far are kept.
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer))
        .await
        .ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

pub(super) async fn exchange(address: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the server answers and closes")
}
