//! `GET /kube-config`: the caller's verified ID token, confirmed by the API server, rendered into a
//! kubeconfig and sent as a file download, with the identity the API server gave in headers. The
//! route is public and hands out credentials, so its group is rate limited per client and time
//! limited.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{ConnectInfo, FromRequestParts, State},
    http::{Extensions, StatusCode, request::Parts},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use tracing::warn;

use super::{
    HttpState,
    auth::{self, Authenticated},
    cors::{self, AllowedOrigins},
    issue::{self, NotIssued},
    limits::{self, RequestLimits},
};
use crate::{
    config::is_dns_label,
    confirm::{ConfirmError, REJECTED_BY_API_SERVER},
    crd::Format,
};

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

/// The query is checked before the token, so a typo in it is a 400 that costs no verification.
/// Every answer past the token's check names its audit event in `Audit-ID`.
async fn kube_config(
    State(state): State<Arc<HttpState>>,
    extensions: Extensions,
    Query { namespace, format }: Query,
    Authenticated { token, identity }: Authenticated,
) -> Response {
    let ask = issue::Ask {
        token: &token,
        identity: &identity,
        format,
        namespace: namespace.as_deref(),
        via: KUBE_CONFIG_ROUTE,
        source: extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(client)| client.ip()),
    };
    let (audit_id, issued) =
        issue::issue_audited(state.confirmer.as_ref(), &state.settings, &state.audit, ask).await;
    let response = match issued {
        Ok(response) => response,
        Err(NotIssued::Unconfirmed(error)) => unconfirmed(&error),
        // The query parser admits downloadable formats only; refused the same way for safety.
        Err(NotIssued::NotDownloadable) => {
            (StatusCode::BAD_REQUEST, FORMAT_PROBLEM).into_response()
        }
        // The owner has not enabled exec; the caller can still ask for the token format.
        Err(NotIssued::ExecNotConfigured(problem)) => (
            StatusCode::BAD_REQUEST,
            format!("{problem}; ask for format=token instead\n"),
        )
            .into_response(),
        Err(NotIssued::Render) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot render the kubeconfig; the operator's logs say why\n",
        )
            .into_response(),
    };
    (issue::audit_header(&audit_id), response).into_response()
}

/// The API server refused the token (401: the kubeconfig would not work) or could not be asked
/// (503: not the caller's fault, try again).
fn unconfirmed(error: &ConfirmError) -> Response {
    match error {
        ConfirmError::Refused => auth::invalid_token(
            REJECTED_BY_API_SERVER,
            format!("{REJECTED_BY_API_SERVER}: {error}\n"),
        ),
        ConfirmError::Unavailable(_) => {
            warn!(%error, "cannot confirm a token with the API server");
            auth::unavailable(format!("APIServerUnavailable: {error}\n"))
        }
    }
}

const FORMAT_PROBLEM: &str = "format must be given at most once, as token (the default: the token inside) or exec (kubelogin logs in; no token inside); argocd Secrets are issued by a KubeconfigRequest\n";

/// The query: `?namespace=` and `?format=`, each at most once. Anything else is refused with
/// 400, so a typo does not silently give a kubeconfig other than the one the caller meant.
struct Query {
    namespace: Option<String>,
    format: Format,
}

impl<S: Sync> FromRequestParts<S> for Query {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query()).map_err(|problem| (StatusCode::BAD_REQUEST, problem))
    }
}

fn parse_query(query: Option<&str>) -> Result<Query, &'static str> {
    let mut namespace = None;
    let mut format = None;
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
            "format" if format.is_none() => {
                format = Some(
                    value
                        .parse::<Format>()
                        .ok()
                        .filter(|format| format.downloadable())
                        .ok_or(FORMAT_PROBLEM)?,
                );
            }
            "format" => return Err(FORMAT_PROBLEM),
            _ => return Err("unknown query parameter; only namespace and format are supported\n"),
        }
    }
    Ok(Query {
        namespace,
        format: format.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, num::NonZeroU32, time::Duration};

    use axum::{
        body::Body,
        extract::ConnectInfo,
        http::{Method, Request, header},
    };
    use jsonwebtoken::Algorithm;
    use tokio::net::TcpListener;
    use tower::ServiceExt as _;

    use super::*;
    use crate::{
        config::OidcConfig,
        metrics::Metrics,
        oidc::verify::Verifier,
        server::{
            routes,
            test_fixtures::{
                api_server_answering, body, call, refusal, review, signed_token, signed_token_from,
                state, state_confirming, state_with,
            },
        },
    };

    /// The routes' state with downloads confirmed by an API server that answers one review, of
    /// [`signed_token`], with `user_info`.
    fn state_confirmed_as(user_info: serde_json::Value) -> Arc<HttpState> {
        state_confirming(api_server_answering(
            &signed_token(),
            201,
            review(user_info),
            &Arc::default(),
        ))
    }

    /// The answer to a download with `query` and a token never judged: it must be 400.
    async fn refused_query(state: &Arc<HttpState>, query: &str) -> Response {
        let uri = format!("{KUBE_CONFIG_ROUTE}{query}");
        let response = call(state, Method::GET, &uri, &["Bearer a.b.c"]).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        response
    }

    /// `count` answers with `code` on the download route, in the access log's metric.
    fn assert_counted(state: &HttpState, code: &str, count: u32) {
        let series =
            format!(r#"http_requests_total{{route="/kube-config",code="{code}"}} {count}"#);
        let metrics = state.metrics.render();
        assert!(metrics.contains(&series), "{series} missing in\n{metrics}");
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
        assert_counted(&state, "200", 2);
    }

    /// An issued and a refused download each name their own audit event.
    #[tokio::test]
    async fn every_answer_past_the_token_names_its_audit_event() {
        let state = state();
        let authorization = format!("Bearer {}", signed_token());
        let issued = call(&state, Method::GET, KUBE_CONFIG_ROUTE, &[&authorization]).await;
        assert_eq!(issued.status(), StatusCode::OK);
        let exec = format!("{KUBE_CONFIG_ROUTE}?format=exec");
        let refused = call(&state, Method::GET, &exec, &[&authorization]).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let ids: Vec<&str> = [&issued, &refused]
            .iter()
            .map(|response| response.headers()["audit-id"].to_str().unwrap())
            .collect();
        assert!(ids.iter().all(|id| id.len() == 36), "{ids:?}");
        assert_ne!(ids[0], ids[1]);
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
            let response = refused_query(&state, query).await;
            assert!(body(response).await.contains("namespace"), "{query}");
        }
    }

    #[tokio::test]
    async fn format_chooses_token_or_exec_and_exec_needs_the_owners_client() {
        let token = signed_token();
        let authorization = format!("Bearer {token}");
        let response = call(
            &state(),
            Method::GET,
            &format!("{KUBE_CONFIG_ROUTE}?format=exec"),
            &[&authorization],
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(body(response).await.contains("exec.clientId"));

        let mut with_exec = Arc::into_inner(state()).unwrap();
        with_exec.settings.exec = Some(crate::config::ExecSettings {
            issuer: "https://dex.example.com/dex".into(),
            client_id: "kubelogin".into(),
            extra_scopes: vec!["groups".into()],
            issuer_ca_pem: None,
            command: crate::config::ExecCommand::Kubectl,
        });
        let with_exec = Arc::new(with_exec);
        for query in ["", "?format=token"] {
            let uri = format!("{KUBE_CONFIG_ROUTE}{query}");
            let response = call(&with_exec, Method::GET, &uri, &[&authorization]).await;
            assert_eq!(response.status(), StatusCode::OK, "{query}");
            let kubeconfig: serde_json::Value =
                crate::yaml::from_str(&body(response).await).unwrap();
            assert_eq!(kubeconfig["users"][0]["user"]["token"], token.as_str());
        }
        let uri = format!("{KUBE_CONFIG_ROUTE}?namespace=team-a&format=exec");
        let response = call(&with_exec, Method::GET, &uri, &[&authorization]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let text = body(response).await;
        assert!(!text.contains(&token), "{text}");
        let kubeconfig: serde_json::Value = crate::yaml::from_str(&text).unwrap();
        assert_eq!(kubeconfig["contexts"][0]["context"]["namespace"], "team-a");
        let exec = &kubeconfig["users"][0]["user"]["exec"];
        assert_eq!(exec["args"][3], "--oidc-client-id=kubelogin");
        assert!(kubeconfig["users"][0]["user"]["token"].is_null());
    }

    #[tokio::test]
    async fn format_must_be_one_known_kubeconfig_format() {
        let state = state();
        for query in [
            "?format=argocd",
            "?format=ARGOCD",
            "?format=Token",
            "?format=",
            "?format=token&format=exec",
            "?format=token&format=token",
            "?format=exec%00",
            "?format=%E2%80%AEtoken",
            "?format=token%0d%0aSet-Cookie:%20x=1",
            "?format[]=token",
        ] {
            let response = refused_query(&state, query).await;
            assert!(
                !response.headers().contains_key(header::SET_COOKIE),
                "{query}"
            );
            let text = body(response).await;
            assert!(text.contains("format"), "{query}: {text}");
        }
        assert_eq!(
            parse_query(Some("format=exec")).unwrap().format,
            Format::Exec
        );
        assert_eq!(parse_query(None).unwrap().format, Format::Token);
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
        assert_counted(&state, "503", 1);
    }

    #[tokio::test]
    async fn a_token_downloaded_again_within_seconds_reuses_the_api_servers_answer() {
        // The scripted API server answers one review and then goes away: a second review would
        // fail, and the download with it (503).
        let state = state_confirmed_as(serde_json::json!({ "username": "jane@example.com" }));
        let authorization = format!("Bearer {}", signed_token());
        for attempt in ["first", "second"] {
            let response = call(&state, Method::GET, KUBE_CONFIG_ROUTE, &[&authorization]).await;
            assert_eq!(response.status(), StatusCode::OK, "{attempt} download");
            assert_eq!(response.headers()["x-kubeconfig-user"], "jane@example.com");
        }
    }

    #[tokio::test]
    async fn a_confirmed_download_names_the_api_servers_identity_in_headers() {
        let state = state_confirmed_as(serde_json::json!({
            "username": "oidc:jane@example.com",
            "uid": "jane-1",
            "groups": ["dev", "ops, east", "zürich", "system:authenticated"],
            "extra": { "scopes": ["read", "a=b"] },
        }));
        let authorization = format!("Bearer {}", signed_token());
        let response = call(&state, Method::GET, KUBE_CONFIG_ROUTE, &[&authorization]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["x-kubeconfig-user"], "oidc:jane@example.com");
        assert_eq!(headers["x-kubeconfig-uid"], "jane-1");
        assert_eq!(
            headers["x-kubeconfig-groups"],
            "dev,ops%2C%20east,z%C3%BCrich,system:authenticated"
        );
        assert_eq!(headers["x-kubeconfig-extra"], "scopes=read,scopes=a%3Db");
        let token = signed_token();
        for value in headers.values() {
            assert!(!value.to_str().unwrap_or_default().contains(&token));
        }
    }

    #[tokio::test]
    async fn a_token_the_api_server_refuses_gets_401_saying_so() {
        let metrics = Arc::new(Metrics::default());
        let state = state_confirming(api_server_answering(
            &signed_token(),
            401,
            refusal(401),
            &metrics,
        ));
        let authorization = format!("Bearer {}", signed_token());
        let response = call(&state, Method::GET, KUBE_CONFIG_ROUTE, &[&authorization]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.contains("error_description=\"RejectedByAPIServer\""),
            "{challenge}"
        );
        assert!(!response.headers().contains_key("x-kubeconfig-user"));
        let text = body(response).await;
        assert!(text.starts_with("RejectedByAPIServer: "), "{text}");
        assert!(text.contains("does not accept this token"), "{text}");
        assert!(
            metrics
                .render()
                .contains(r#"token_validation_failures_total{reason="RejectedByAPIServer"} 1"#)
        );
    }

    #[tokio::test]
    async fn an_api_server_that_cannot_answer_is_503_not_a_refusal() {
        let state = state_confirming(api_server_answering(
            &signed_token(),
            500,
            refusal(500),
            &Arc::default(),
        ));
        let authorization = format!("Bearer {}", signed_token());
        let response = call(&state, Method::GET, KUBE_CONFIG_ROUTE, &[&authorization]).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        let text = body(response).await;
        assert!(text.starts_with("APIServerUnavailable: "), "{text}");
    }
}
