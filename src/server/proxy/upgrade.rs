//! Upgrade requests (WebSocket and SPDY/3.1: exec, attach, cp, port-forward, WebSocket watches).
//!
//! Each goes over a fresh HTTP/1.1 connection to the API server, with the same headers as any
//! other request (the proxy's credential, the user's impersonation). The client and the API
//! server are spliced only once the API server has answered 101; any other answer is returned
//! as it is, with `Connection: close`, and both connections end with it. That is the lesson of
//! CVE-2018-1002105: a proxy that keeps a failed upgrade's backend connection open hands the
//! client an authenticated connection to do with as it likes.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{HeaderValue, Request, Response, StatusCode, header, request::Parts},
};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, info};

use super::{Proxy, headers, refusal};

/// Forwards an upgrade request whose headers are already the proxy's (credential and
/// impersonation set, hop-by-hop removed) and returns the API server's answer, after which the
/// streams are spliced in the background if it was 101. `upgrade` is the client's `Upgrade`
/// value; `held` is what the stream occupies (one of the proxy's stream slots, one of its user's),
/// given back when the splice ends; the splice ends when `revoked` resolves.
pub(super) async fn forward(
    proxy: &Arc<Proxy>,
    mut parts: Parts,
    upgrade: HeaderValue,
    held: impl Send + 'static,
    revoked: impl Future<Output = ()> + Send + 'static,
) -> Response<Body> {
    let Some(client_side) = parts.extensions.remove::<OnUpgrade>() else {
        // Only a request that came over HTTP/1.1 through the listener can be upgraded.
        return refusal(StatusCode::BAD_REQUEST, "this request cannot be upgraded");
    };
    let started = Instant::now();
    let connection = match proxy.upstream.connect_fresh().await {
        Ok(connection) => connection,
        Err(problem) => return unreachable(&problem.to_string()),
    };
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(connection).await {
        Ok(pair) => pair,
        Err(problem) => return unreachable(&problem.to_string()),
    };
    tokio::spawn(async move {
        if let Err(problem) = connection.with_upgrades().await {
            debug!(%problem, "upgrade connection to the API server ended with an error");
        }
    });

    // Origin-form, as an HTTP/1.1 request to a server (not to a proxy) is written.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".parse(), |path| path.as_str().parse())
        .unwrap_or_default();
    parts.version = axum::http::Version::HTTP_11;
    let authority = HeaderValue::from_str(proxy.upstream.authority());
    if let Ok(authority) = authority {
        parts.headers.insert(header::HOST, authority);
    }
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    parts.headers.insert(header::UPGRADE, upgrade);
    // Upgrade requests carry no body (a GET, or kubectl's POST for exec with none); one that
    // announced a body is sent without it, so the API server does not wait for bytes that
    // never come.
    parts.headers.remove(header::CONTENT_LENGTH);
    let request = Request::from_parts(parts, Body::empty());

    let mut response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(problem) => return unreachable(&problem.to_string()),
    };
    drop(sender);
    proxy
        .metrics
        .proxy_upstream_duration
        .observe(started.elapsed().as_secs_f64());

    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Returned as it is, and the client's connection closes with it: nothing the client
        // sends afterwards reaches the API server on this request's credentials.
        let (mut head, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut head.headers);
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Response::from_parts(head, Body::new(body));
    }

    let server_side = hyper::upgrade::on(&mut response);
    let metrics = Arc::clone(&proxy.metrics);
    let idle_timeout = proxy.stream_idle_timeout;
    tokio::spawn(async move {
        let _held = held;
        let (client, server) = match tokio::try_join!(client_side, server_side) {
            Ok(pair) => pair,
            Err(problem) => {
                debug!(%problem, "an upgrade did not complete");
                return;
            }
        };
        metrics.proxy_upgraded_streams.inc();
        // Dropping both connections ends the session on either side.
        let outcome = tokio::select! {
            outcome = splice(TokioIo::new(client), TokioIo::new(server), idle_timeout) => outcome,
            () = revoked => SpliceEnd::Revoked,
        };
        metrics.proxy_upgraded_streams.dec();
        match outcome {
            SpliceEnd::Closed {
                to_server,
                to_client,
            } => debug!(to_server, to_client, "upgraded stream closed"),
            SpliceEnd::Failed(problem) => debug!(%problem, "upgraded stream failed"),
            SpliceEnd::Idle => info!(?idle_timeout, "upgraded stream closed after being idle"),
            SpliceEnd::Revoked => info!("upgraded stream closed: its token was revoked"),
        }
    });
    // The 101 with the API server's own headers (Upgrade, Connection, Sec-WebSocket-Accept,
    // the chosen protocol), so the client's handshake checks see what the server said.
    let (head, _) = response.into_parts();
    Response::from_parts(head, Body::empty())
}

fn unreachable(problem: &str) -> Response<Body> {
    tracing::warn!(problem, "cannot reach the API server for an upgrade");
    refusal(
        StatusCode::BAD_GATEWAY,
        "the proxy cannot reach the API server",
    )
}

/// How a splice ended.
#[derive(Debug)]
enum SpliceEnd {
    Closed { to_server: u64, to_client: u64 },
    Failed(io::Error),
    Idle,
    Revoked,
}

/// Copies both ways until either side closes, or until no byte has moved either way for
/// `idle_timeout`.
async fn splice<A, B>(client: A, server: B, idle_timeout: Duration) -> SpliceEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Activity {
        inner: client,
        started,
        last: Arc::clone(&last),
    };
    let mut server = Activity {
        inner: server,
        started,
        last: Arc::clone(&last),
    };
    let idle = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = started + since + idle_timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut server) => match copied {
            Ok((to_server, to_client)) => SpliceEnd::Closed { to_server, to_client },
            Err(problem) => SpliceEnd::Failed(problem),
        },
        () = idle => SpliceEnd::Idle,
    }
}

/// A stream that notes when it last read anything, in milliseconds since `started`.
struct Activity<T> {
    inner: T,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(millis, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn a_splice_copies_both_ways_and_ends_when_idle() {
        let (client, mut client_end) = duplex(64);
        let (server, mut server_end) = duplex(64);
        let spliced = tokio::spawn(splice(client, server, Duration::from_millis(300)));
        client_end.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        server_end.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server_end.write_all(b"pong").await.unwrap();
        client_end.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // Traffic keeps it open past the timeout.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client_end.write_all(b"x").await.unwrap();
            server_end.read_exact(&mut buf[..1]).await.unwrap();
        }
        assert!(!spliced.is_finished());
        let ended = tokio::time::timeout(Duration::from_secs(2), spliced)
            .await
            .expect("an idle splice ends")
            .unwrap();
        assert!(matches!(ended, SpliceEnd::Idle), "{ended:?}");
    }

    #[tokio::test]
    async fn a_splice_ends_when_a_side_closes() {
        let (client, client_end) = duplex(64);
        let (server, mut server_end) = duplex(64);
        let spliced = tokio::spawn(splice(client, server, Duration::from_secs(60)));
        drop(client_end);
        let mut rest = Vec::new();
        server_end.read_to_end(&mut rest).await.unwrap();
        drop(server_end);
        let ended = tokio::time::timeout(Duration::from_secs(2), spliced)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(ended, SpliceEnd::Closed { .. }), "{ended:?}");
    }
}
