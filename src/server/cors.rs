//! CORS for web consoles served from other origins, so a page the operator's owner trusts can
//! fetch `GET /kube-config` with the user's ID token in `Authorization`.
//!
//! Only what that needs is allowed: the configured origins (exact match, as browsers send them),
//! the method GET and the request header `Authorization`. A preflight asking for anything else,
//! or coming from another origin, is not answered as one: it goes on to the route, which refuses
//! OPTIONS with 405 and no CORS headers, so the browser blocks the call. No credentials mode
//! (cookies) is allowed: the token travels in a header the page sets itself.
//!
//! tower-http's `CorsLayer` was not used: it answers every OPTIONS request as a preflight and
//! sends the allowed methods and headers to any origin, where this module sends nothing to an
//! origin it does not trust.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::issue::IDENTITY_HEADERS;

/// Origins whose pages may call the routes this layer wraps, in the form validated by the
/// configuration (`scheme://host[:port]`).
pub(super) type AllowedOrigins = Arc<[String]>;

/// Answers an acceptable preflight with 204, and marks other answers for allowed origins.
/// Every answer says `Vary: Origin`, since whether it carries `Access-Control-Allow-Origin`
/// depends on that header.
pub(super) async fn cors(
    State(allowed): State<AllowedOrigins>,
    request: Request,
    next: Next,
) -> Response {
    let origin = allowed_origin(&allowed, request.headers());
    let method = request.method().clone();
    if method == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return match origin {
            Some(origin) if asks_only_for_get_with_authorization(request.headers()) => {
                preflight_answer(origin)
            }
            // Not answered as a preflight: the route refuses OPTIONS, without CORS headers.
            _ => vary_origin(next.run(request).await),
        };
    }
    let mut response = next.run(request).await;
    if let Some(origin) = origin.filter(|_| matches!(method, Method::GET | Method::HEAD)) {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        // The page may show whom the kubeconfig is for before the user saves it.
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(IDENTITY_HEADERS),
        );
    }
    vary_origin(response)
}

fn vary_origin(mut response: Response) -> Response {
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// The request's `Origin` if it is exactly one of `allowed`; several `Origin` headers are never
/// allowed, since browsers send one.
fn allowed_origin(allowed: &[String], headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(header::ORIGIN).iter();
    let (Some(origin), None) = (values.next(), values.next()) else {
        return None;
    };
    allowed
        .iter()
        .any(|allowed| allowed.as_bytes() == origin.as_bytes())
        .then(|| origin.clone())
}

/// The preflight asks for GET, with no request headers beyond `Authorization` (browsers list
/// only the headers that are not CORS-safelisted, lowercased and comma-separated).
fn asks_only_for_get_with_authorization(headers: &HeaderMap) -> bool {
    let method_is_get = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .is_some_and(|method| method.as_bytes() == b"GET");
    let only_authorization = headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|name| !name.is_empty())
        .all(|name| name.eq_ignore_ascii_case(b"authorization"));
    method_is_get && only_authorization
}

fn preflight_answer(origin: HeaderValue) -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET"),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization"),
            ),
            (
                header::VARY,
                HeaderValue::from_static(
                    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
                ),
            ),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, num::NonZeroU32, time::Duration};

    use axum::{
        body::Body,
        extract::ConnectInfo,
        http::{HeaderName, Request},
    };
    use tower::ServiceExt as _;

    use super::*;
    use crate::server::{
        KUBE_CONFIG_ROUTE,
        limits::RequestLimits,
        routes,
        test_fixtures::{body, send, signed_token, state, state_allowing},
    };

    const CONSOLE: &str = "https://console.example.com";

    fn request(method: Method, headers: &[(HeaderName, &str)]) -> Request<Body> {
        let mut request = Request::builder().method(method).uri(KUBE_CONFIG_ROUTE);
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        request.body(Body::empty()).unwrap()
    }

    fn preflight(origin: &str, method: &str, headers: Option<&str>) -> Request<Body> {
        let mut list = vec![
            (header::ORIGIN, origin),
            (header::ACCESS_CONTROL_REQUEST_METHOD, method),
        ];
        if let Some(headers) = headers {
            list.push((header::ACCESS_CONTROL_REQUEST_HEADERS, headers));
        }
        request(Method::OPTIONS, &list)
    }

    /// The names of the `Access-Control-*` headers of `response`.
    fn cors_headers(response: &Response) -> Vec<String> {
        response
            .headers()
            .keys()
            .map(HeaderName::as_str)
            .filter(|name| name.starts_with("access-control-"))
            .map(str::to_owned)
            .collect()
    }

    fn vary(response: &Response) -> Vec<&str> {
        response
            .headers()
            .get_all(header::VARY)
            .iter()
            .flat_map(|value| value.to_str().unwrap().split(','))
            .map(str::trim)
            .collect()
    }

    #[tokio::test]
    async fn a_preflight_from_an_allowed_origin_allows_get_with_authorization() {
        let state = state_allowing(&["https://other.example", CONSOLE]);
        for requested_headers in [Some("authorization"), Some("Authorization"), None] {
            let response = send(&state, preflight(CONSOLE, "GET", requested_headers)).await;
            assert_eq!(response.status(), StatusCode::NO_CONTENT);
            let headers = response.headers();
            assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], CONSOLE);
            assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_METHODS], "GET");
            assert_eq!(
                headers[header::ACCESS_CONTROL_ALLOW_HEADERS],
                "authorization"
            );
            assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
            assert!(vary(&response).contains(&"Origin"));
            assert_eq!(body(response).await, "");
        }
        let metrics = state.metrics.render();
        assert!(
            metrics.contains(r#"http_requests_total{route="/kube-config",code="204"} 3"#),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn preflights_asking_for_more_or_from_elsewhere_get_405_without_cors_headers() {
        let state = state_allowing(&[CONSOLE]);
        let two_origins = request(
            Method::OPTIONS,
            &[
                (header::ORIGIN, CONSOLE),
                (header::ORIGIN, CONSOLE),
                (header::ACCESS_CONTROL_REQUEST_METHOD, "GET"),
            ],
        );
        for (case, preflight) in [
            (
                "other origin",
                preflight("https://evil.example", "GET", None),
            ),
            (
                "trailing slash",
                preflight("https://console.example.com/", "GET", None),
            ),
            (
                "other port",
                preflight("https://console.example.com:8443", "GET", None),
            ),
            ("http", preflight("http://console.example.com", "GET", None)),
            ("null", preflight("null", "GET", None)),
            ("POST", preflight(CONSOLE, "POST", None)),
            ("lowercase get", preflight(CONSOLE, "get", None)),
            (
                "extra header",
                preflight(CONSOLE, "GET", Some("authorization, x-requested-with")),
            ),
            (
                "content-type",
                preflight(CONSOLE, "GET", Some("content-type")),
            ),
            ("two origins", two_origins),
        ] {
            let response = send(&state, preflight).await;
            assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{case}");
            assert_eq!(cors_headers(&response), Vec::<String>::new(), "{case}");
        }
    }

    #[tokio::test]
    async fn the_download_carries_allow_origin_only_for_an_allowed_origin() {
        let state = state_allowing(&[CONSOLE]);
        let token = format!("Bearer {}", signed_token());
        let response = send(
            &state,
            request(
                Method::GET,
                &[(header::ORIGIN, CONSOLE), (header::AUTHORIZATION, &token)],
            ),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            CONSOLE
        );
        assert_eq!(
            cors_headers(&response),
            [
                "access-control-allow-origin",
                "access-control-expose-headers"
            ]
        );
        let exposed = response.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
            .to_str()
            .unwrap();
        assert!(exposed.contains("x-kubeconfig-user"), "{exposed}");
        assert_eq!(vary(&response), ["Origin"]);

        // The console can read a refusal too, to tell the user why.
        let response = send(
            &state,
            request(
                Method::GET,
                &[
                    (header::ORIGIN, CONSOLE),
                    (header::AUTHORIZATION, "Bearer a.b.c"),
                ],
            ),
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            CONSOLE
        );

        for headers in [
            &[
                (header::ORIGIN, "https://evil.example"),
                (header::AUTHORIZATION, &token),
            ][..],
            &[(header::AUTHORIZATION, &token)],
        ] {
            let response = send(&state, request(Method::GET, headers)).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(cors_headers(&response), Vec::<String>::new());
            assert_eq!(vary(&response), ["Origin"], "a cache must not mix them up");
        }

        // Other methods stay refused, and are not made readable cross-origin.
        let response = send(&state, request(Method::POST, &[(header::ORIGIN, CONSOLE)])).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(cors_headers(&response), Vec::<String>::new());
    }

    #[tokio::test]
    async fn without_allowed_origins_nothing_changes() {
        let state = state();
        let response = send(&state, preflight(CONSOLE, "GET", Some("authorization"))).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(cors_headers(&response), Vec::<String>::new());
        assert!(!response.headers().contains_key(header::VARY));
        let response = send(&state, request(Method::GET, &[(header::ORIGIN, CONSOLE)])).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(cors_headers(&response), Vec::<String>::new());
        assert!(!response.headers().contains_key(header::VARY));
    }

    #[tokio::test]
    async fn preflights_cost_no_budget_and_a_429_is_readable_cross_origin() {
        let state = state_allowing(&[CONSOLE]);
        let app = routes(
            Arc::clone(&state),
            Some(&RequestLimits {
                per_minute_per_client: NonZeroU32::MIN,
                timeout: Duration::from_secs(5),
            }),
        );
        let from_client = |mut request: Request<Body>| {
            request
                .extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 40000))));
            request
        };
        for _ in 0..3 {
            let response = app
                .clone()
                .oneshot(from_client(preflight(
                    CONSOLE,
                    "GET",
                    Some("authorization"),
                )))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::NO_CONTENT);
        }
        let get = || from_client(request(Method::GET, &[(header::ORIGIN, CONSOLE)]));
        let first = app.clone().oneshot(get()).await.unwrap();
        assert_eq!(first.status(), StatusCode::UNAUTHORIZED);
        let second = app.clone().oneshot(get()).await.unwrap();
        assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            second.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            CONSOLE
        );
    }
}
