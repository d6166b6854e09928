//! The page's routes in-process, with the shared test issuer: no network, so everything up to
//! the code exchange (which the browser test in tests/console.rs covers against Dex).

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header},
    response::Response,
};
use axum_extra::extract::cookie::{Key, PrivateCookieJar};
use chrono::Utc;
use tower::ServiceExt as _;

use super::{
    Console, ConsoleConfig, from_the_page, nonce_matches,
    oidc::Pending,
    session::{CookiePolicy, Kind, LoginCookie, Session, tests::sent_back},
};
use crate::{
    config::ExecCommand,
    confirm::Confirmer,
    controller::fixtures::settings,
    metrics::Metrics,
    server::test_fixtures::{api_server_answering, refusal, review},
    testing,
};

async fn console(key: &Key) -> Arc<Console> {
    console_at(key, "http://127.0.0.1:8000/callback").await
}

async fn console_at(key: &Key, redirect_url: &str) -> Arc<Console> {
    console_with(key, redirect_url, None).await
}

async fn console_with(key: &Key, redirect_url: &str, confirmer: Option<Confirmer>) -> Arc<Console> {
    let config = ConsoleConfig {
        client_secret: "secret".into(),
        redirect_url: redirect_url.parse().unwrap(),
        cookie_key: key.clone(),
        scopes: vec!["openid".into()],
    };
    Arc::new(
        Console::new(
            config,
            &testing::oidc_config(),
            testing::issuer().authenticator(Arc::default()),
            settings(),
            confirmer,
        )
        .await
        .unwrap(),
    )
}

fn router(console: &Arc<Console>) -> Router {
    super::routes(Arc::clone(console), None)
}

const POLICY: CookiePolicy = CookiePolicy { over_tls: false };

/// The `Cookie` header of a browser holding a session for a token of jane@example.com that
/// verifies for `token_seconds`, with the session itself ending after `session_seconds`.
fn session_cookie(key: &Key, token_seconds: i64, session_seconds: i64) -> (HeaderMap, Session) {
    session_cookie_with(POLICY, key, token_seconds, session_seconds)
}

fn session_cookie_with(
    policy: CookiePolicy,
    key: &Key,
    token_seconds: i64,
    session_seconds: i64,
) -> (HeaderMap, Session) {
    let token = testing::issuer().token_for("jane@example.com", &["dev"], token_seconds);
    let now = Utc::now();
    let session = Session::new(token, now + chrono::Duration::seconds(session_seconds));
    let jar = policy.write(
        PrivateCookieJar::new(key.clone()),
        Kind::Session,
        &session,
        session.expires_at,
        now.timestamp(),
    );
    (sent_back(jar), session)
}

fn login_cookie(key: &Key) -> (HeaderMap, String) {
    login_cookie_with(POLICY, key)
}

fn login_cookie_with(policy: CookiePolicy, key: &Key) -> (HeaderMap, String) {
    let now = Utc::now().timestamp();
    let login = LoginCookie::new(Pending::new(), now);
    let state = login.state.clone();
    let jar = policy.write(
        PrivateCookieJar::new(key.clone()),
        Kind::Login,
        &login,
        login.expires_at,
        now,
    );
    (sent_back(jar), state)
}

async fn call(
    console: &Arc<Console>,
    method: Method,
    uri: &str,
    headers: &HeaderMap,
    body: &str,
) -> Response {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    router(console)
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap()
}

async fn text(response: Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 1024 * 1024)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn set_cookies(response: &Response) -> Vec<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_answer_forbids_caching_referrers_framing_and_inline_script() {
    let key = Key::generate();
    let console = console(&key).await;
    let none = HeaderMap::new();
    for (method, uri, status) in [
        (Method::GET, "/", StatusCode::OK),
        (Method::GET, "/console.js", StatusCode::OK),
        (Method::GET, "/console.css", StatusCode::OK),
        (
            Method::GET,
            "/callback?code=c&state=s",
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, "/download", StatusCode::UNAUTHORIZED),
        (Method::POST, "/logout", StatusCode::FORBIDDEN),
    ] {
        let headers = if method == Method::POST {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            headers
        } else {
            none.clone()
        };
        let response = call(&console, method, uri, &headers, "csrf=x").await;
        assert_eq!(response.status(), status, "{uri}");
        let headers = response.headers();
        assert_eq!(headers[header::CACHE_CONTROL], "no-store", "{uri}");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer", "{uri}");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{uri}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{uri}: {csp}");
        assert!(!csp.contains("unsafe"), "{uri}: {csp}");
        let body = text(response).await;
        assert!(!body.contains("<script>"), "{uri}: inline script");
    }
}

#[tokio::test]
async fn a_session_shows_who_you_are_and_ends_with_the_token() {
    let key = Key::generate();
    let console = console(&key).await;
    let (cookie, session) = session_cookie(&key, 600, 600);
    let response = call(&console, Method::GET, "/", &cookie, "").await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = text(response).await;
    assert!(page.contains("jane@example.com"), "{page}");
    assert!(page.contains("Groups: dev"), "{page}");
    assert!(
        page.contains(&session.csrf),
        "the logout form carries the CSRF token"
    );
    assert!(!page.contains(&session.id_token), "no token on the page");
    assert!(
        page.contains(r#"<script src="/console.js" defer>"#),
        "{page}"
    );

    // The session's own end, although the token would still verify.
    let (cookie, _) = session_cookie(&key, 600, -1);
    let response = call(&console, Method::GET, "/", &cookie, "").await;
    assert_eq!(response.status(), StatusCode::OK);
    let removal = set_cookies(&response);
    assert!(
        removal
            .iter()
            .any(|c| c.starts_with("kubeconfig-session=;") && c.contains("Max-Age=0")),
        "{removal:?}"
    );
    let page = text(response).await;
    assert!(page.contains("Your session ended"), "{page}");
    assert!(!page.contains("jane@example.com"));

    // The token's end, although the session cookie claims more.
    let (cookie, _) = session_cookie(&key, -10, 600);
    let response = call(&console, Method::GET, "/download", &cookie, "").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // A session made under another key (a replica without the shared key) is no session.
    let (cookie, _) = session_cookie(&Key::generate(), 600, 600);
    let page = text(call(&console, Method::GET, "/", &cookie, "").await).await;
    assert!(page.contains(r#"href="/login""#), "{page}");
}

#[tokio::test]
async fn the_download_is_the_token_kubeconfig_of_the_session() {
    let key = Key::generate();
    let console = console(&key).await;
    let (cookie, session) = session_cookie(&key, 600, 600);
    let response = call(&console, Method::GET, "/download", &cookie, "").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_DISPOSITION],
        "attachment; filename=\"local.kubeconfig\""
    );
    let yaml = text(response).await;
    let expected = crate::kubeconfig::render(
        &settings(),
        crate::crd::Format::Token,
        &session.id_token.clone().into(),
        None,
    )
    .unwrap();
    assert_eq!(crate::kubeconfig::Rendered::Kubeconfig(yaml), expected);
    // The test settings enable no exec client, so the page does not offer that kubeconfig.
    let response = call(&console, Method::GET, "/download?format=exec", &cookie, "").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = call(&console, Method::GET, "/download?format=yaml", &cookie, "").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_download_waits_for_the_api_server_to_accept_the_token() {
    let key = Key::generate();
    let (cookie, session) = session_cookie(&key, 600, 600);
    let review = review(serde_json::json!({ "username": "jane@example.com" }));
    let cases = [
        (201, review, StatusCode::OK, "kind: Config"),
        (
            401,
            refusal(401),
            StatusCode::UNAUTHORIZED,
            "does not accept your token",
        ),
        (
            500,
            refusal(500),
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot be reached",
        ),
    ];
    for (code, answer, status, says) in cases {
        let metrics = Arc::new(Metrics::default());
        let confirmer = api_server_answering(&session.id_token, code, answer, &metrics);
        let console = console_with(&key, "http://127.0.0.1:8000/callback", Some(confirmer)).await;
        let response = call(&console, Method::GET, "/download", &cookie, "").await;
        assert_eq!(response.status(), status, "API server answering {code}");
        assert_eq!(
            metrics
                .render()
                .contains(r#"token_validation_failures_total{reason="RejectedByAPIServer"} 1"#),
            code == 401,
            "API server answering {code}"
        );
        let body = text(response).await;
        assert!(body.contains(says), "API server answering {code}: {body}");
        if status != StatusCode::OK {
            assert!(!body.contains(&session.id_token), "the token is in {body}");
        }
    }
}

#[tokio::test]
async fn the_callback_refuses_a_foreign_or_replayed_state_and_a_missing_cookie() {
    let key = Key::generate();
    let console = console(&key).await;
    let (cookie, state) = login_cookie(&key);

    // Forged: another state with this browser's cookie. The cookie is used up either way.
    let response = call(
        &console,
        Method::GET,
        "/callback?code=c&state=forged",
        &cookie,
        "",
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let removal = set_cookies(&response);
    assert!(
        removal
            .iter()
            .any(|c| c.starts_with("kubeconfig-login=;") && c.contains("Max-Age=0")),
        "{removal:?}"
    );
    assert!(text(response).await.contains("state mismatch"));

    // The right state is honoured once (here the issuer said no, so no code is exchanged)...
    let uri = format!("/callback?error=access_denied&state={state}");
    let response = call(&console, Method::GET, &uri, &cookie, "").await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // ...and refused when the same cookie and answer come again.
    let response = call(&console, Method::GET, &uri, &cookie, "").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(text(response).await.contains("already used"));

    // No cookie, or one under another key: no login was started here.
    let (foreign, foreign_state) = login_cookie(&Key::generate());
    for (headers, state) in [(HeaderMap::new(), &state), (foreign, &foreign_state)] {
        let uri = format!("/callback?code=c&state={state}");
        let response = call(&console, Method::GET, &uri, &headers, "").await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(text(response).await.contains("No login was started"));
    }
}

#[tokio::test]
async fn logout_needs_the_pages_origin_and_the_sessions_csrf_token() {
    let key = Key::generate();
    let console = console(&key).await;
    let (mut headers, session) = session_cookie(&key, 600, 600);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let with_origin = |origin: &'static str| {
        let mut headers = headers.clone();
        headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
        headers
    };
    let good = format!("csrf={}", session.csrf);
    for (headers, body) in [
        (headers.clone(), good.as_str()),
        (with_origin("http://evil.example"), good.as_str()),
        (with_origin("http://127.0.0.1:8000"), "csrf=wrong"),
    ] {
        let response = call(&console, Method::POST, "/logout", &headers, body).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(set_cookies(&response).is_empty(), "the session stays");
    }
    let response = call(
        &console,
        Method::POST,
        "/logout",
        &with_origin("http://127.0.0.1:8000"),
        &good,
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(
        set_cookies(&response)
            .iter()
            .any(|c| c.starts_with("kubeconfig-session=;") && c.contains("Max-Age=0"))
    );
}

#[test]
fn origin_null_counts_only_with_fetch_metadata_saying_same_origin() {
    let headers = |pairs: &[(&'static str, &'static str)]| {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    };
    let page = "https://console.example";
    assert!(from_the_page(&headers(&[("origin", page)]), page));
    assert!(from_the_page(
        &headers(&[("origin", "null"), ("sec-fetch-site", "same-origin")]),
        page
    ));
    for refused in [
        headers(&[]),
        headers(&[("sec-fetch-site", "same-origin")]),
        headers(&[("origin", "null")]),
        headers(&[("origin", "null"), ("sec-fetch-site", "same-site")]),
        headers(&[("origin", "https://console.example.evil")]),
        headers(&[("origin", "http://console.example")]),
    ] {
        assert!(!from_the_page(&refused, page), "{refused:?}");
    }
}

#[test]
fn the_id_token_must_carry_the_logins_nonce() {
    let token = |claims: serde_json::Value| testing::issuer().sign(&claims);
    let with_nonce = token(serde_json::json!({"nonce": "n-1", "name": "Jane"}));
    assert!(nonce_matches(&with_nonce, "n-1"));
    assert!(!nonce_matches(&with_nonce, "n-2"));
    assert!(!nonce_matches(&with_nonce, ""));
    assert!(!nonce_matches(
        &token(serde_json::json!({"name": "Jane"})),
        "n-1"
    ));
    assert!(!nonce_matches(&token(serde_json::json!({"nonce": 1})), "1"));
    assert!(!nonce_matches("not a token", "n-1"));
}

#[tokio::test]
async fn over_tls_the_cookies_are_secure_and_host_prefixed() {
    let key = Key::generate();
    let console = console_at(&key, "https://kubeconfig.example/callback").await;
    let tls = CookiePolicy { over_tls: true };
    // A plain-HTTP session cookie is not the page's session over TLS.
    let (plain, _) = session_cookie(&key, 600, 600);
    let page = text(call(&console, Method::GET, "/", &plain, "").await).await;
    assert!(page.contains(r#"href="/login""#), "{page}");
    let (cookie, session) = session_cookie_with(tls, &key, 600, 600);
    let page = text(call(&console, Method::GET, "/", &cookie, "").await).await;
    assert!(page.contains("jane@example.com"), "{page}");

    let mut headers = cookie.clone();
    headers.insert(
        header::ORIGIN,
        HeaderValue::from_static("https://kubeconfig.example"),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let body = format!("csrf={}", session.csrf);
    let response = call(&console, Method::POST, "/logout", &headers, &body).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let removal = set_cookies(&response);
    assert!(
        removal
            .iter()
            .any(|c| c.starts_with("__Host-kubeconfig-session=;")
                && c.contains("Secure")
                && c.contains("HttpOnly")
                && c.contains("SameSite=Lax")
                && c.contains("Path=/")
                && !c.contains("Domain")),
        "{removal:?}"
    );

    // The login cookie is read and removed under its TLS name too.
    let (login, _) = login_cookie_with(tls, &key);
    let response = call(
        &console,
        Method::GET,
        "/callback?code=c&state=forged",
        &login,
        "",
    )
    .await;
    let removal = set_cookies(&response);
    assert!(
        removal
            .iter()
            .any(|c| c.starts_with("__Host-kubeconfig-login=;") && c.contains("Secure")),
        "{removal:?}"
    );
    assert!(text(response).await.contains("state mismatch"));
}

/// The page's kuberc lines name the exact program the exec kubeconfig runs, in the field kubectl
/// 1.35 reads (tests/kubelogin.rs shows kubectl 1.37 running kubelogin with them).
#[test]
fn the_kuberc_allowlist_names_the_exec_program() {
    for command in [ExecCommand::Kubectl, ExecCommand::KubectlOidcLogin] {
        let lines = super::kuberc_allowlist(command).unwrap();
        let kuberc: serde_json::Value = crate::yaml::from_str(&lines).unwrap();
        assert_eq!(kuberc["credentialPluginPolicy"], "Allowlist");
        assert_eq!(
            kuberc["credentialPluginAllowlist"],
            serde_json::json!([{ "name": command.as_str() }])
        );
    }
}
