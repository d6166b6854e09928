//! `GET /kube-config`: the caller's verified ID token, rendered into a kubeconfig and sent as a
//! file download. The route is public and hands out credentials, so its group is rate limited per
//! client and time limited.

use std::sync::Arc;

use axum::{
    Router,
    extract::{FromRequestParts, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use tracing::{error, info};

use super::{
    HttpState,
    auth::Authenticated,
    cors::{self, AllowedOrigins},
    limits::{self, RequestLimits},
};
use crate::{config::is_dns_label, kubeconfig};

pub const KUBE_CONFIG_ROUTE: &str = "/kube-config";
/// The routes of this group, for the access log's route label.
pub(super) const ROUTES: &[&str] = &[KUBE_CONFIG_ROUTE];

/// The download route; with `limits`, a per-client budget (for GET only, so a 405 costs no
/// budget) and a time limit; with `allowed_origins`, CORS around both, so a page of an allowed
/// origin can read a 429 or 503 too, and a preflight costs no budget.
pub(super) fn routes(
    limits: Option<&RequestLimits>,
    allowed_origins: &[String],
) -> Router<Arc<HttpState>> {
    let mut router = match limits {
        None => Router::new().route(KUBE_CONFIG_ROUTE, get(kube_config)),
        Some(limits) => Router::new()
            .route(
                KUBE_CONFIG_ROUTE,
                get(kube_config).route_layer(middleware::from_fn_with_state(
                    limits.client_limiter(),
                    limits::rate_limit,
                )),
            )
            .layer(middleware::from_fn_with_state(
                limits.timeout,
                limits::time_limit,
            )),
    };
    if !allowed_origins.is_empty() {
        router = router.layer(middleware::from_fn_with_state(
            AllowedOrigins::from(allowed_origins),
            cors::cors,
        ));
    }
    router
}

/// The namespace is checked before the token, so a typo in the query is a 400 that costs no
/// verification.
async fn kube_config(
    State(state): State<Arc<HttpState>>,
    RequestedNamespace(namespace): RequestedNamespace,
    Authenticated { token, identity }: Authenticated,
) -> Response {
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

/// The `?namespace=` of the request, if any. Only `namespace` is understood; anything else is
/// refused with 400 so a typo does not silently give a kubeconfig without the namespace the
/// caller meant.
struct RequestedNamespace(Option<String>);

impl<S: Sync> FromRequestParts<S> for RequestedNamespace {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        requested_namespace(parts.uri.query())
            .map(Self)
            .map_err(|problem| (StatusCode::BAD_REQUEST, problem))
    }
}

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

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, num::NonZeroU32, time::Duration};

    use axum::{
        body::Body,
        extract::ConnectInfo,
        http::{Method, Request},
    };
    use jsonwebtoken::Algorithm;
    use tokio::net::TcpListener;
    use tower::ServiceExt as _;

    use super::*;
    use crate::{
        config::OidcConfig,
        oidc::verify::Verifier,
        server::{
            routes,
            test_fixtures::{body, call, signed_token, signed_token_from, state, state_with},
        },
    };

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
    async fn a_request_stuck_on_the_issuer_times_out_with_503() {
        // The kernel completes the issuer connection, but nobody ever answers the handshake.
        let silent_issuer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("https://{}/dex", silent_issuer.local_addr().unwrap());
        let config = OidcConfig::for_tests(&issuer, &[Algorithm::RS256]);
        let state = state_with(Verifier::new(config).await.unwrap());
        let app = routes(
            Arc::clone(&state),
            Some(&RequestLimits {
                per_minute_per_client: NonZeroU32::MIN,
                timeout: Duration::from_millis(200),
            }),
        );
        let mut request = Request::get(KUBE_CONFIG_ROUTE)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", signed_token_from(&issuer)),
            )
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
}
