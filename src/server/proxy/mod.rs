//! The authenticating API server proxy: for clusters whose API server cannot trust the issuer,
//! issued kubeconfigs point here, and the proxy forwards each request to the API server as the
//! token's user, by impersonation.
//!
//! Every request, in this order ([`handle`] reads as the list):
//! 1. the bearer token is verified with the same extractor as `/kube-config` (401 with the
//!    reason, or 503 if the issuer is unreachable); a WebSocket upgrade without `Authorization`
//!    may carry it as a subprotocol instead, as kube-apiserver allows for browsers;
//! 2. a request carrying `Impersonate-*` headers of its own gets 403;
//! 3. hop-by-hop headers and every header named in `Connection` are dropped;
//! 4. `Authorization` is replaced by the proxy's own credential (its ServiceAccount token), and
//!    a bearer token among the WebSocket subprotocols is removed;
//! 5. `Impersonate-User` and `Impersonate-Group` (every group, and `system:authenticated`),
//!    `Impersonate-Uid` and `Impersonate-Extra-*` are added for the whole verified identity;
//! 6. the request takes one of its user's slots (`proxy.maxRequestsPerUser`), held until its
//!    answer or stream ends; a user holding them all gets 429 with `Retry-After`;
//! 7. the credential's use is noted for its request's `status.lastUsedAt` (see [`last_use`]);
//! 8. if the API server refuses a user for whom the proxy's ServiceAccount lacks an
//!    impersonation grant (an extra field's key nobody granted, see [`grants`]), the refusal is
//!    replaced by one naming the grant, which the API server's does not.
//!
//! An answer still streaming (a watch, `logs -f`) or an upgraded stream ends as soon as a
//! `KubeconfigRevocation` covers the token that opened it: revocation ends what is open, not only
//! what comes next.
//!
//! The API server then authorizes the request as the user, and its answer (including its own 403
//! naming the user) goes back unchanged and unbuffered, so watches stream; step 8's refusal is the
//! one exception. Upgrades (exec, attach, port-forward, WebSocket watches) take the same steps,
//! then go over a fresh connection (see [`upgrade`]). There is no request timeout on this listener:
//! a watch or an exec session lasts as long as it is used. The bounds are the listener's
//! (connections at once, in all and per client address; handshakes and request heads within
//! [`HANDSHAKE_TIMEOUT`] and [`HEADER_READ_TIMEOUT`]), the user's slots, and, for upgraded streams,
//! a slot per stream and an idle timeout.

mod grants;
mod headers;
mod last_use;
mod upgrade;
mod upstream;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, FromRequestParts, Request, State},
    http::{HeaderValue, Method, Response, StatusCode, Uri, header, request::Parts},
    response::IntoResponse,
};
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, BodyStream, StreamBody};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use super::{
    Authenticated, DRAIN_TIMEOUT, ServeError,
    limits::{Slot, SlotsPerKey, client_key},
    listener::{self, ConnectionLimits},
};
use crate::{
    config::ProxyConfig,
    events::Replica,
    metrics::{Metrics, ProxyLabels},
    oidc::{authenticator::Authenticator, token::credential_id_in},
};
pub use grants::DENIED_REASON;
use grants::Grants;
use last_use::LastUse;
use upstream::{Credential, Upstream};

/// How long a client may take over its TLS handshake. Shorter than the main listener's: each
/// handshake in progress holds a connection slot, and a client that means to use the proxy
/// finishes in milliseconds.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client may take to send a complete request head, the first on a connection or the
/// next on a kept-alive one: a connection that asks for nothing gives its slot back this soon.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// `Retry-After` of the proxy's 429s and 503s, kube-apiserver's own for its 429s
/// (`maxinflight.go`): the proxy's clients are client-go's, which retry a 429 or 5xx up to ten
/// times after waiting that long, so the main listener's 10 s had kubectl wait 100 s before it
/// reported the refusal.
const RETRY_AFTER_SECONDS: &str = "1";

/// What every proxied request shares.
struct Proxy {
    authenticator: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    upstream: Upstream,
    credential: Arc<Credential>,
    /// One permit per open upgraded stream; an upgraded connection has left the listener's
    /// count, so this keeps streams bounded too.
    streams: Arc<Semaphore>,
    /// Requests in flight per verified user, watches and streams included, so that one tenant
    /// cannot hold every connection the listener serves.
    per_user: Arc<SlotsPerKey<String>>,
    /// Upgraded streams per client address (`proxy.maxConnectionsPerClient` again): a stream
    /// no longer counts among its address's connections.
    streams_per_client: Arc<SlotsPerKey<IpAddr>>,
    stream_idle_timeout: Duration,
    last_use: LastUse,
    grants: Arc<Grants>,
}

/// The proxy's listener, bound and with its files read, ready to serve. Binding is separate
/// from serving so that a bad certificate, CA or token file stops start-up.
pub struct BoundProxy {
    tcp: TcpListener,
    tls: TlsAcceptor,
    limits: ConnectionLimits,
    app: Router,
}

impl BoundProxy {
    /// Reads the serving certificate, the API server's CA and the proxy's token, and binds.
    pub async fn bind(
        config: &ProxyConfig,
        authenticator: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        client: kube::Client,
        replica: Option<Replica>,
    ) -> Result<Self, ServeError> {
        let tls = listener::tls_acceptor(&config.tls)?;
        let upstream = Upstream::new(config)?;
        // The upstream CA file is followed like every CA file; a defaulted upstream CA is the
        // kubeconfig's bundle, which proxy mode replaces with the proxy's, so it is watched here.
        tokio::spawn(
            config
                .upstream_ca
                .clone()
                .watch_file(crate::ca::POLL_INTERVAL),
        );
        let credential = Credential::load(config.token_file.clone())?;
        credential.keep_fresh();
        let grants = Grants::new(metrics.proxy_impersonation_denied.clone(), replica);
        grants
            .keep_checked(
                &upstream,
                Arc::clone(&credential),
                Arc::clone(authenticator.verifier()),
            )
            .map_err(|problem| ServeError::Upstream { problem })?;
        let tcp = listener::bind(config.listen).await?;
        let max_connections = config.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let proxy = Arc::new(Proxy {
            authenticator,
            metrics,
            upstream,
            credential,
            streams: Arc::new(Semaphore::new(max_connections)),
            per_user: SlotsPerKey::new(config.max_requests_per_user),
            streams_per_client: SlotsPerKey::new(config.max_connections_per_client),
            stream_idle_timeout: config.stream_idle_timeout,
            last_use: LastUse::new(client),
            grants,
        });
        Ok(Self {
            tcp,
            tls,
            limits: ConnectionLimits {
                max_connections,
                max_connections_per_client: config.max_connections_per_client,
                handshake_timeout: HANDSHAKE_TIMEOUT,
                header_read_timeout: HEADER_READ_TIMEOUT,
                drain_timeout: DRAIN_TIMEOUT,
                retry_after: RETRY_AFTER_SECONDS,
            },
            app: Router::new().fallback(forward).with_state(proxy),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.local_addr().ok()
    }

    /// Serves until `shutdown` resolves, then drains like the main listener.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        info!(address = ?self.local_addr(), "API server proxy listening");
        listener::serve_on(self.tcp, Some(self.tls), self.limits, self.app, shutdown).await;
    }
}

/// Counts every answer and logs it: user, verb, path and status, never a header or the query.
/// Successes are logged at debug, as on the main listener: at info, formatting the line was 8 %
/// of the proxy's CPU under load (perf), and the API server's audit log records every request.
async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response<Body> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let upgrade = headers::requested_upgrade(&parts.headers);
    let verb = verb(&parts.method, &parts.uri, upgrade.is_some());
    let path = parts.uri.path().to_owned();
    let client = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    let (user, response) = handle(&proxy, parts, body, upgrade, client).await;
    let code = response.status().as_u16();
    proxy
        .metrics
        .proxy_requests
        .get_or_create(&ProxyLabels { verb, code })
        .inc();
    let user = user.as_deref().unwrap_or("-");
    let millis = started.elapsed().as_millis();
    if response.status().is_server_error() {
        warn!(user, verb, path, code, millis, ?client, "proxied");
    } else if response.status().is_success() {
        debug!(user, verb, path, code, millis, ?client, "proxied");
    } else {
        info!(user, verb, path, code, millis, ?client, "proxied");
    }
    response
}

/// The steps of the module documentation, in order. Returns the verified username (once there
/// is one) with the answer.
async fn handle(
    proxy: &Arc<Proxy>,
    mut parts: Parts,
    body: Body,
    upgrade: Option<HeaderValue>,
    client: Option<IpAddr>,
) -> (Option<String>, Response<Body>) {
    // 1. Who is asking.
    if upgrade
        .as_ref()
        .is_some_and(|upgrade| upgrade.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && !parts.headers.contains_key(header::AUTHORIZATION)
    {
        match headers::subprotocol_bearer(&parts.headers) {
            Ok(Some(bearer)) => {
                parts.headers.insert(header::AUTHORIZATION, bearer);
            }
            Ok(None) => {}
            Err(problem) => {
                let message = problem.to_string();
                return (None, refusal(StatusCode::UNAUTHORIZED, &message));
            }
        }
    }
    let revocations = proxy.authenticator.revocations();
    let changes = revocations.changes();
    let Authenticated { token, identity } =
        match Authenticated::from_request_parts(&mut parts, &proxy.authenticator).await {
            Ok(authenticated) => authenticated,
            Err(mut refused) => {
                // The extractor's 503 (an issuer down) asks for the download's wait; client-go
                // waits out a 5xx's as it does a 429's, ten times over.
                if let Some(retry_after) = refused.headers_mut().get_mut(header::RETRY_AFTER) {
                    *retry_after = HeaderValue::from_static(RETRY_AFTER_SECONDS);
                }
                return (None, refused);
            }
        };
    let user = Some(identity.username.clone());
    // `OPTIONS *` asks about the server itself, which the proxy does not speak for: the client's
    // mistake, not a failed upstream.
    if parts.uri == "*" {
        return (
            user,
            refusal(
                StatusCode::BAD_REQUEST,
                "the proxy takes no asterisk-form requests (OPTIONS *); name a path",
            ),
        );
    }
    // The API server has no use for CONNECT; refusing it keeps tunnels out of the proxy.
    if parts.method == Method::CONNECT {
        return (
            user,
            refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                "the proxy does not open tunnels",
            ),
        );
    }
    // 2. Nobody chooses whom the proxy impersonates but the proxy.
    if let Some(name) = headers::client_impersonation(&parts.headers) {
        let message = format!(
            "the proxy refuses requests that carry their own {name} header: it impersonates the token's user itself"
        );
        return (user, refusal(StatusCode::FORBIDDEN, &message));
    }
    // 3. Connection-level headers stay on this hop.
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    headers::set_forwarded_for(&mut parts.headers, client);
    // 4. The proxy's own credential...
    headers::set_credential(&mut parts.headers, proxy.credential.current().await);
    // 5. ...acting as the user.
    if let Err(problem) = headers::impersonate(&mut parts.headers, &identity) {
        return (user, refusal(StatusCode::FORBIDDEN, &problem.to_string()));
    }
    // 6. Within the user's share.
    let Some(slot) = proxy.per_user.try_take(identity.username.clone()) else {
        return (
            user,
            too_many(
                "this user has as many requests and streams open through the proxy as one user may; close some or try again later",
            ),
        );
    };
    // 7. Its request's last use.
    if let Some(id) = credential_id_in(&identity.extra) {
        proxy.last_use.touch(id);
    }
    // For step 8, once the answer is in.
    let lacking = proxy.grants.lacking(&identity);
    // Whatever stays open ends when the token is revoked.
    let revoked = Arc::clone(revocations).until_revoked(changes, token, identity);
    let Some(upgrade) = upgrade else {
        let response = plain(proxy, parts, body, slot, revoked).await;
        // 8. A refusal for want of a grant says which.
        return (user, proxy.grants.explain(&lacking, response).await);
    };
    // An upgraded stream has left the listener's count of connections, so its address's share
    // of streams is counted here.
    let client_slot = client.map(|ip| proxy.streams_per_client.try_take(client_key(ip)));
    let response = match (Arc::clone(&proxy.streams).try_acquire_owned(), client_slot) {
        (_, Some(None)) => too_many(
            "this address has as many streams open through the proxy as one client may; close some or try again later",
        ),
        (Ok(permit), client_slot) => {
            upgrade::forward(proxy, parts, upgrade, (permit, slot, client_slot), revoked).await
        }
        (Err(_), _) => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the proxy has as many open streams as it serves; try again later",
        ),
    };
    (user, proxy.grants.explain(&lacking, response).await)
}

/// 429 for a client or user over its share, with `Retry-After`. The connection goes too: kept
/// alive, it would hold a slot of the listener's pool.
fn too_many(message: &str) -> Response<Body> {
    let mut refused = refusal(StatusCode::TOO_MANY_REQUESTS, message);
    let headers = refused.headers_mut();
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    refused
}

/// Any request but an upgrade, over the pooled connections; the answer streams back as it
/// arrives, holding the user's `slot` until it ends (a watch: until it is closed, or `revoked`
/// resolves).
async fn plain(
    proxy: &Proxy,
    mut parts: Parts,
    body: Body,
    slot: Slot<String>,
    revoked: impl Future<Output = ()> + Send + 'static,
) -> Response<Body> {
    parts.uri = match proxy.upstream.uri(parts.uri.path_and_query()) {
        Ok(uri) => uri,
        Err(problem) => return refusal(StatusCode::BAD_REQUEST, &problem),
    };
    parts.version = axum::http::Version::HTTP_11;
    let started = Instant::now();
    match proxy
        .upstream
        .pooled()
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(response) => {
            proxy
                .metrics
                .proxy_upstream_duration
                .observe(started.elapsed().as_secs_f64());
            let (mut head, body) = response.into_parts();
            headers::strip_hop_by_hop(&mut head.headers);
            let body = body.map_frame(move |frame| {
                let _held = &slot;
                frame
            });
            // A revoked stream ends early, as if the API server had closed it: a watching
            // client then asks again, and is refused.
            let frames = BodyStream::new(body).take_until(revoked);
            Response::from_parts(head, Body::new(StreamBody::new(frames)))
        }
        Err(problem) => {
            error!(problem = %problem, "cannot forward a request to the API server");
            refusal(
                StatusCode::BAD_GATEWAY,
                "the proxy cannot reach the API server",
            )
        }
    }
}

/// The proxy's own refusals, in plain text as its 401 is: client-go makes a text body the
/// error's message wherever it comes, where a `Status` body on discovery (kubectl's first
/// requests) is shown as `Forbidden: unknown`. The code says the rest, and client-go derives
/// the reason from it.
fn refusal(status: StatusCode, message: &str) -> Response<Body> {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        format!("{message}\n"),
    )
        .into_response()
}

/// The Kubernetes verb of a request, as the API server's request info names it, from a fixed
/// set so that clients cannot create metric series: `watch` (a `watch` query or a `/watch/`
/// path), `connect` (other upgrades: exec, attach, port-forward), `get` or `list` (a GET for one
/// object or a collection; non-resource paths are `get`), `create`, `update`, `patch`,
/// `delete` or `deletecollection`, and `other`.
fn verb(method: &Method, uri: &Uri, upgrade: bool) -> &'static str {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let resource_path = match segments.as_slice() {
        ["api", _version, rest @ ..] | ["apis", _, _version, rest @ ..] => Some(rest),
        _ => None,
    };
    let watch_query = uri.query().is_some_and(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .any(|(key, value)| key == "watch" && (value == "true" || value == "1"))
    });
    if watch_query || resource_path.is_some_and(|rest| rest.first() == Some(&"watch")) {
        return "watch";
    }
    if upgrade {
        return "connect";
    }
    let one_object = resource_path.is_none_or(|rest| {
        let rest = match rest {
            ["namespaces", _, rest @ ..] if !rest.is_empty() => rest,
            other => other,
        };
        rest.is_empty() || rest.len() >= 2
    });
    match *method {
        Method::GET | Method::HEAD if one_object => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if one_object => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_follow_the_api_servers_request_info() {
        for (method, uri, upgrade, expected) in [
            (
                Method::GET,
                "/api/v1/namespaces/a/configmaps",
                false,
                "list",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/configmaps/x",
                false,
                "get",
            ),
            (Method::GET, "/api/v1/namespaces/a", false, "get"),
            (Method::GET, "/api/v1/namespaces", false, "list"),
            (Method::GET, "/apis/apps/v1/deployments", false, "list"),
            (
                Method::GET,
                "/apis/apps/v1/namespaces/a/deployments/d",
                false,
                "get",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/configmaps?watch=true",
                false,
                "watch",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/configmaps?watch=1",
                true,
                "watch",
            ),
            (
                Method::GET,
                "/api/v1/watch/namespaces/a/configmaps",
                false,
                "watch",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/configmaps?watch=false",
                false,
                "list",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/a/pods/p/exec?command=ls",
                true,
                "connect",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/a/configmaps",
                false,
                "create",
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/a/configmaps/x",
                false,
                "update",
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/a/configmaps/x",
                false,
                "patch",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/a/configmaps/x",
                false,
                "delete",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/a/configmaps",
                false,
                "deletecollection",
            ),
            (Method::GET, "/version", false, "get"),
            (Method::GET, "/apis", false, "get"),
            (Method::OPTIONS, "/api", false, "other"),
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(verb(&method, &uri, upgrade), expected, "{method} {uri}");
        }
    }
}
