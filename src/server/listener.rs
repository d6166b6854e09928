//! The accept loop: TCP, optional TLS, and the bounds that hold for every connection whatever
//! route it asks for: how many connections are served at once (in all, and from one client
//! address), how large and how slow a request head may be, how long a TLS handshake may take, and
//! how long shutdown waits for in-flight requests. Per-request bounds (rate, time) are the route groups' business, see `limits`.

use std::{convert::Infallible, future::Future, path::Path, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{HeaderValue, Response, StatusCode, header},
};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use super::{
    RETRY_AFTER_SECONDS, ServeError,
    limits::{SlotsPerKey, client_key},
};
use crate::config::{HttpConfig, TlsFiles};

/// Requests whose head (request line and headers) exceeds this get 431 from hyper before any
/// handler runs; real requests with a 1–4 KiB ID token stay far below it.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// More headers than any real client sends; bounds hyper's per-request header parsing work.
pub const MAX_HEADERS: usize = 100;
/// A client that has not sent a complete request head this long after the connection opened, or
/// after its previous response, is dropped: this is both the slow-loris defence and the bound on
/// idle keep-alive connections, which would otherwise hold one of the `max_connections` slots.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS client may take to finish its handshake; it holds a connection slot meanwhile.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may run after shutdown begins, so a stuck client cannot delay a
/// rollout beyond the pod's termination grace period (30 s by default).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener's bounds. `serve` takes them from the configuration and the constants above;
/// tests shorten the timeouts so they finish in well under a second.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectionLimits {
    pub(super) max_connections: usize,
    /// Connections one client address (an IPv6 /64) may hold at once; the one beyond gets 429
    /// and is closed, rather than waiting for a slot while it holds one.
    pub(super) max_connections_per_client: usize,
    pub(super) handshake_timeout: Duration,
    pub(super) header_read_timeout: Duration,
    pub(super) drain_timeout: Duration,
    /// `Retry-After` of that 429, in seconds.
    pub(super) retry_after: &'static str,
}

impl ConnectionLimits {
    pub(super) fn from_config(config: &HttpConfig) -> Self {
        Self {
            // The configuration refuses 0; the upper clamp keeps `Semaphore::new` from panicking.
            max_connections: config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
            // The download's bound per client is its rate limit.
            max_connections_per_client: config.max_connections,
            handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
            retry_after: RETRY_AFTER_SECONDS,
            drain_timeout: DRAIN_TIMEOUT,
        }
    }
}

/// Binds `address`; the error names it.
pub(super) async fn bind(address: std::net::SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind { address, source })
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains. Each request carries the
/// client's address as `ConnectInfo<SocketAddr>`, which per-client limits key on.
pub(super) async fn serve_on(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = SlotsPerKey::new(limits.max_connections_per_client);
    let (drain, draining) = watch::channel(false);
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
        // Answers go out as soon as they are written: with Nagle's algorithm, a head and a body
        // sent apart waited for the client's delayed ACK, 40 ms per proxied request.
        if let Err(problem) = stream.set_nodelay(true) {
            debug!(%problem, "cannot set TCP_NODELAY");
        }
        let client_slot = per_client.try_take(client_key(client.ip()));
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(client));
            app.clone().oneshot(request)
        });
        let builder = builder.clone();
        let tls = tls.clone();
        let draining = draining.clone();
        let handshake_timeout = limits.handshake_timeout;
        let over_cap = client_slot.is_none().then_some(limits.retry_after);
        tokio::spawn(async move {
            let _permit = permit;
            let _client_slot = client_slot;
            let outcome =
                match tls {
                    None => serve_or_refuse(&builder, stream, service, over_cap, draining).await,
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
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
                        serve_or_refuse(&builder, stream, service, over_cap, draining).await
                    }
                };
            // Header timeouts, oversized heads and resets are the client's doing: debug only.
            if let Err(problem) = outcome {
                debug!(%problem, %client, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(draining);
    info!("HTTP server stopped accepting; finishing in-flight requests");
    let _ = drain.send(true);
    // Every connection task holds a receiver; `closed` resolves once the last one has ended.
    if tokio::time::timeout(limits.drain_timeout, drain.closed())
        .await
        .is_err()
    {
        warn!(
            "in-flight requests did not finish within {:?}; dropping them",
            limits.drain_timeout
        );
    }
}

/// Serves one connection, or, for a client address over its cap (`over_cap` holds the
/// `Retry-After` then), answers its first request with 429 and closes it: a clear refusal the
/// client can act on, where waiting for a slot would look like a hung server.
async fn serve_or_refuse<T, S>(
    builder: &hyper::server::conn::http1::Builder,
    stream: T,
    service: S,
    over_cap: Option<&'static str>,
    draining: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(retry_after) = over_cap else {
        return serve_connection(builder, stream, service, draining).await;
    };
    let mut refusing = builder.clone();
    refusing.keep_alive(false);
    let refuse = hyper::service::service_fn(move |_| async move {
        let mut response = Response::new(Body::from(
            "this address has as many connections open as one client may; try again later\n",
        ));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, Infallible>(response)
    });
    serve_connection(&refusing, stream, refuse, draining).await
}

/// Serves one connection, with upgrades (the proxy's exec and WebSocket streams hand the
/// connection over to the route once it answered 101; the other routes never answer 101), until
/// it ends or `draining` turns true: then hyper finishes the request in flight and closes.
/// hyper-util's `GracefulShutdown` cannot watch an upgradeable HTTP/1 connection, hence the
/// channel.
async fn serve_connection<T, S>(
    builder: &hyper::server::conn::http1::Builder,
    stream: T,
    service: S,
    mut draining: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        outcome = connection.as_mut() => outcome,
        () = async { let _ = draining.wait_for(|draining| *draining).await; } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// Reads the certificate chain and key now, so a bad file stops start-up with its path instead of
/// failing every handshake later. The provider is named explicitly rather than taken from the
/// process default, which would panic if none was installed.
pub(super) fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServeError> {
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

/// Over real TCP, through the accept loop.
#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use axum::http::{StatusCode, header};
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };

    use super::*;
    use crate::server::test_fixtures::{
        connection_limits, exchange, get, read_until_closed, request_limits, signed_token, start,
        start_with_tls, state,
    };

    /// The name the test server's certificate is for; the client resolves it to the listener.
    const TLS_HOST: &str = "kubeconfig-operator.test";

    /// A CA and a server certificate for [`TLS_HOST`] signed by it, made now so that no key is
    /// checked in. Returns the CA's PEM and the server's certificate and key files.
    fn test_pki(dir: &Path) -> (String, TlsFiles) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        ca.distinguished_name
            .push(DnType::CommonName, "kubeconfig-operator test CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec![TLS_HOST.to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let files = TlsFiles {
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
        };
        std::fs::write(&files.cert_file, server.pem()).unwrap();
        std::fs::write(&files.key_file, server_key.serialize_pem()).unwrap();
        (ca.pem(), files)
    }

    #[tokio::test]
    async fn https_serves_the_routes_to_a_client_that_trusts_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, files) = test_pki(dir.path());
        let acceptor = tls_acceptor(&files).expect("the generated files are accepted");
        let server = start_with_tls(
            state(),
            connection_limits(),
            request_limits(),
            Some(acceptor),
        )
        .await;
        let base = format!("https://{TLS_HOST}:{}", server.address.port());
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
            .resolve(TLS_HOST, server.address)
            .build()
            .unwrap();

        let healthz = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(healthz.status(), StatusCode::OK);
        assert_eq!(healthz.text().await.unwrap(), "ok\n");

        let refused = client
            .get(format!("{base}/kube-config"))
            .bearer_auth("not-a-token")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let challenge = refused.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.contains("error_description=\"Malformed\""),
            "{challenge}"
        );
        assert!(refused.text().await.unwrap().starts_with("Malformed: "));

        let token = signed_token();
        let issued = client
            .get(format!("{base}/kube-config"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(issued.status(), StatusCode::OK);
        assert!(issued.text().await.unwrap().contains(&token));

        // The answers above came through a handshake with this certificate: a client that does
        // not trust the CA cannot connect, and plain HTTP on the port gets no HTTP answer.
        let untrusting = reqwest::Client::builder()
            .tls_certs_only([])
            .resolve(TLS_HOST, server.address)
            .build()
            .unwrap();
        let error = untrusting
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_connect(), "{error:?}");
        let answer = exchange(server.address, &get("/healthz")).await;
        assert!(!answer.starts_with("HTTP/"), "{answer:?}");
    }

    #[tokio::test]
    async fn headers_over_16_kib_get_431_and_the_server_keeps_serving() {
        let server = start(state(), connection_limits(), request_limits()).await;
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
    async fn slow_and_idle_clients_are_disconnected() {
        let server = start(state(), connection_limits(), request_limits()).await;
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
        let limits = ConnectionLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(30),
            ..connection_limits()
        };
        let server = start(state(), limits, request_limits()).await;
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
    async fn a_client_over_its_connection_cap_gets_429_while_others_are_served() {
        let limits = ConnectionLimits {
            max_connections_per_client: 1,
            header_read_timeout: Duration::from_secs(30),
            ..connection_limits()
        };
        let server = start(state(), limits, request_limits()).await;
        let holder = TcpStream::connect(server.address).await.unwrap();
        let mut second = TcpStream::connect(server.address).await.unwrap();
        second.write_all(get("/healthz").as_bytes()).await.unwrap();
        let answer = read_until_closed(&mut second, Duration::from_secs(5))
            .await
            .expect("the refusal is answered and the connection closed");
        assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 10"),
            "{answer}"
        );
        drop(holder);
        let answer = exchange(server.address, &get("/healthz")).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }

    #[tokio::test]
    async fn a_tls_handshake_that_never_starts_is_dropped_after_the_handshake_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (_, files) = test_pki(dir.path());
        let limits = ConnectionLimits {
            handshake_timeout: Duration::from_millis(300),
            header_read_timeout: Duration::from_secs(30),
            ..connection_limits()
        };
        let acceptor = tls_acceptor(&files).unwrap();
        let server = start_with_tls(state(), limits, request_limits(), Some(acceptor)).await;
        let mut silent = TcpStream::connect(server.address).await.unwrap();
        // Well under the 10 s the listener used to allow, and under header_read_timeout.
        assert!(
            read_until_closed(&mut silent, Duration::from_secs(5))
                .await
                .is_some(),
            "a client that never starts its handshake keeps its slot"
        );
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_stops_accepting() {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(30),
            ..connection_limits()
        };
        let server = start(state(), limits, request_limits()).await;
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
}
