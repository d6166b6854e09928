//! The kubeconfig page at `/`: log in through the issuer in a browser, see who you are and when
//! the token expires, and download the kubeconfig, without ever handling a token by hand.
//!
//! The way through: `/login` starts an authorization-code login with PKCE ([`oidc`]) and leaves
//! its `state`, `nonce` and verifier in an encrypted login cookie ([`session`]); `/callback`
//! checks `state` against that cookie (once: a used `state` is refused), trades the code for the
//! ID token, verifies it with the same [`Verifier`] as `GET /kube-config` plus the `nonce`, and
//! keeps it in an encrypted session cookie that ends with the token. `/download` has the API
//! server confirm the token (a SelfSubjectReview, unless the operator is configured not to ask)
//! and renders the kubeconfig with [`crate::kubeconfig::render`], as `GET /kube-config` does.
//!
//! Tokens appear in no URL, log line or script-readable storage. Every answer forbids caching,
//! referrers and framing, and allows only the page's own script and style; the one POST
//! (`/logout`) checks `Origin` and a CSRF token.
//!
//! Several replicas behind one address need the same `console.cookieKey`: a cookie made by one
//! must decrypt at the next. A used `state` is remembered per replica; the issuer still accepts
//! each code only once.

mod oidc;
mod page;
mod session;
#[cfg(test)]
mod tests;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Form, Router,
    extract::{ConnectInfo, Query, State},
    http::{Extensions, HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use axum_extra::extract::cookie::PrivateCookieJar;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use serde::Deserialize;
use tracing::{error, info, warn};

use super::{
    issue::{self, NotIssued},
    limits,
};
use crate::{
    audit::AuditLog,
    config::{CALLBACK_ROUTE, ConsoleConfig, ExecCommand, KubeconfigSettings, OidcConfig},
    confirm::{ConfirmError, Confirmer},
    crd::{Format, KubeconfigRequest, KubeconfigRequestSpec},
    oidc::jwks::IssuerError,
    oidc::{
        authenticator::Authenticator,
        token::{IdToken, Identity, TokenError},
    },
};
use oidc::{LoginClient, LoginError, Pending};
use session::{CookiePolicy, Kind, LoginCookie, Session, SpentStates};

pub const PAGE_ROUTE: &str = "/";
pub const LOGIN_ROUTE: &str = "/login";
pub const DOWNLOAD_ROUTE: &str = "/download";
pub const LOGOUT_ROUTE: &str = "/logout";
const SCRIPT_ROUTE: &str = "/console.js";
const STYLE_ROUTE: &str = "/console.css";
/// The routes of this group, for the access log's route label.
pub(super) const ROUTES: &[&str] = &[
    PAGE_ROUTE,
    LOGIN_ROUTE,
    CALLBACK_ROUTE,
    DOWNLOAD_ROUTE,
    LOGOUT_ROUTE,
    SCRIPT_ROUTE,
    STYLE_ROUTE,
];

/// Only the page's own script and style, no framing, no plugins, forms only to itself.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// The names `kubectl create secret` and the KubeconfigRequest on the page use.
const TOKEN_SECRET_NAME: &str = "my-id-token";
const REQUEST_NAME: &str = "my-kubeconfig";
/// Shown with 401 when the API server's SelfSubjectReview refuses the session's token.
const REFUSED_BY_API_SERVER: &str = "The cluster's API server does not accept your token, so a kubeconfig with it would not work. Log out and in again; if it still fails, ask the cluster's owner whether the API server trusts this issuer.";
/// Shown with 503 when the API server cannot be asked about the token.
const API_SERVER_UNAVAILABLE: &str =
    "The cluster's API server cannot be reached to check your token; try again in a minute.";
/// Shown with 503 whenever the issuer (discovery, token endpoint or keys) cannot be reached.
const ISSUER_UNAVAILABLE: &str = "The issuer cannot be reached right now, so you cannot be logged in or checked; try again in a minute.";

/// The page's state: its configuration, the login client, and what `GET /kube-config` uses.
pub struct Console {
    config: ConsoleConfig,
    client: LoginClient,
    authenticator: Arc<Authenticator>,
    settings: KubeconfigSettings,
    /// Asks the API server about the session's token before a download, as `GET /kube-config`
    /// does; none when the operator is configured not to ask.
    confirmer: Option<Confirmer>,
    cookies: CookiePolicy,
    spent: SpentStates,
    /// Where the page's downloads are recorded, as `GET /kube-config`'s are.
    audit: Arc<AuditLog>,
}

impl Console {
    /// Prepares the page without contacting the issuer.
    pub async fn new(
        config: ConsoleConfig,
        oidc: &OidcConfig,
        authenticator: Arc<Authenticator>,
        settings: KubeconfigSettings,
        confirmer: Option<Confirmer>,
    ) -> Result<Self, IssuerError> {
        let client = LoginClient::new(
            oidc,
            config.client_secret.clone(),
            config.redirect_url.clone(),
            &config.scopes,
        )
        .await?;
        Ok(Self {
            cookies: CookiePolicy {
                over_tls: config.over_tls(),
            },
            config,
            client,
            authenticator,
            settings,
            confirmer,
            spent: SpentStates::default(),
            audit: Arc::default(),
        })
    }

    /// The page with its downloads recorded in `audit`.
    pub fn with_audit(self, audit: Arc<AuditLog>) -> Self {
        Self { audit, ..self }
    }

    fn jar(&self, headers: &HeaderMap) -> PrivateCookieJar {
        PrivateCookieJar::from_headers(headers, self.config.cookie_key.clone())
    }

    fn problem(&self, status: StatusCode, message: &str) -> Response {
        (
            status,
            Html(page::problem(&self.settings.cluster_name, message).into_string()),
        )
            .into_response()
    }

    /// The live session in `jar` with its verified identity, or why there is none.
    async fn session(&self, jar: &PrivateCookieJar) -> Result<(Session, Identity), NoSession> {
        let session: Session = self
            .cookies
            .read(jar, Kind::Session)
            .ok_or(NoSession::Absent)?;
        if !session.is_live(Utc::now().timestamp()) {
            return Err(NoSession::Ended);
        }
        match self
            .authenticator
            .authenticate(&IdToken::from(session.id_token.clone()))
            .await
        {
            Ok(identity) => Ok((session, identity)),
            Err(TokenError::IssuerUnavailable(_)) => Err(NoSession::IssuerUnavailable),
            Err(_) => Err(NoSession::Ended),
        }
    }
}

enum NoSession {
    Absent,
    /// Expired, or its token no longer verifies (e.g. the issuer's keys rotated away).
    Ended,
    IssuerUnavailable,
}

/// Mounted by the server when the page is configured; with `limits`, the same per-client budget
/// and time limit as the download.
pub(super) fn routes<S: Clone + Send + Sync + 'static>(
    console: Arc<Console>,
    limits: Option<&limits::RequestLimits>,
) -> Router<S> {
    let mut router = Router::new()
        .route(PAGE_ROUTE, get(page))
        .route(LOGIN_ROUTE, get(login))
        .route(CALLBACK_ROUTE, get(callback))
        .route(DOWNLOAD_ROUTE, get(download))
        .route(LOGOUT_ROUTE, post(logout))
        .route(SCRIPT_ROUTE, get(script))
        .route(STYLE_ROUTE, get(style));
    if let Some(limits) = limits {
        router = router
            .route_layer(middleware::from_fn_with_state(
                limits.client_limiter(),
                limits::rate_limit,
            ))
            .layer(middleware::from_fn_with_state(
                limits.timeout,
                limits::time_limit,
            ));
    }
    router
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// On every answer of the page, refusals and redirects included.
async fn security_headers(request: axum::extract::Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let jar = console.jar(&headers);
    let cluster = &console.settings.cluster_name;
    let (session, identity) = match console.session(&jar).await {
        Ok(found) => found,
        Err(NoSession::IssuerUnavailable) => {
            return console.problem(StatusCode::SERVICE_UNAVAILABLE, ISSUER_UNAVAILABLE);
        }
        Err(reason) => {
            let notice = matches!(reason, NoSession::Ended)
                .then_some("Your session ended with your token; log in again.");
            let jar = jar.remove(console.cookies.removal(Kind::Session));
            return (jar, Html(page::logged_out(cluster, notice).into_string())).into_response();
        }
    };
    let claims = DisplayClaims::of(&session.id_token);
    let file_name = issue::file_name(cluster);
    let request_yaml = match request_yaml(&identity.username) {
        Ok(yaml) => yaml,
        Err(problem) => {
            error!(%problem, "cannot render the KubeconfigRequest for the page");
            return console.problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page cannot be shown; the operator's logs say why.",
            );
        }
    };
    let exec_allowlist = console
        .settings
        .exec
        .as_ref()
        .and_then(|exec| kuberc_allowlist(exec.command).ok());
    let viewer = page::Viewer {
        name: claims.name.as_deref(),
        username: &identity.username,
        groups: &identity.groups,
        expires_at: identity.expires_at,
    };
    let offers = page::Offers {
        cluster,
        file_name: &file_name,
        secret_command: &secret_command(&file_name),
        request_yaml: &request_yaml,
        csrf: &session.csrf,
        exec_allowlist: exec_allowlist.as_deref(),
    };
    Html(page::logged_in(&viewer, &offers, Utc::now()).into_string()).into_response()
}

/// Reads the token from the downloaded file, so the page never shows it.
fn secret_command(file_name: &str) -> String {
    format!(
        "kubectl --kubeconfig {file_name} config view --raw -o jsonpath='{{.users[0].user.token}}' \\\n  | kubectl create secret generic {TOKEN_SECRET_NAME} --from-file=token=/dev/stdin"
    )
}

fn request_yaml(username: &str) -> Result<String, String> {
    // Through JSON, so fields the spec gains later keep their defaults here.
    let spec: KubeconfigRequestSpec = serde_json::from_value(serde_json::json!({
        "tokenSecretRef": { "name": TOKEN_SECRET_NAME, "key": "token" },
        "user": username,
    }))
    .map_err(|e| e.to_string())?;
    let request = KubeconfigRequest::new(REQUEST_NAME, spec);
    crate::yaml::to_string(&request).map_err(|e| e.to_string())
}

/// The kuberc lines (kubectl 1.35 and later) that let kubectl run the exec kubeconfig's program
/// when it runs only the credential plugins it allows. `name` is the field kubectl 1.35 knows;
/// later versions accept it too.
fn kuberc_allowlist(command: ExecCommand) -> Result<String, String> {
    crate::yaml::to_string(&serde_json::json!({
        "credentialPluginPolicy": "Allowlist",
        "credentialPluginAllowlist": [{ "name": command.as_str() }],
    }))
    .map_err(|e| e.to_string())
}

async fn login(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let pending = Pending::new();
    let url = match console.client.authorization_url(&pending).await {
        Ok(url) => url,
        Err(problem) => {
            warn!(%problem, "cannot start a login at the issuer");
            return console.problem(StatusCode::SERVICE_UNAVAILABLE, ISSUER_UNAVAILABLE);
        }
    };
    let now = Utc::now().timestamp();
    let login = LoginCookie::new(pending, now);
    let jar = console.cookies.write(
        console.jar(&headers),
        Kind::Login,
        &login,
        login.expires_at,
        now,
    );
    (jar, Redirect::to(url.as_str())).into_response()
}

/// The issuer's answer (OIDC Core 3.1.2.5 and 3.1.2.6).
#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn callback(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(answer): Query<CallbackQuery>,
) -> Response {
    let jar = console.jar(&headers);
    let login: Option<LoginCookie> = console.cookies.read(&jar, Kind::Login);
    // Whatever happens next, this round trip is over.
    let jar = jar.remove(console.cookies.removal(Kind::Login));
    let outcome = finish_login(&console, login, answer).await;
    match outcome {
        Ok((session, identity)) => {
            info!(user = %identity.username, expires_at = %identity.expires_at, "logged in on the page");
            let now = Utc::now().timestamp();
            let expires_at = session.expires_at;
            let jar = console
                .cookies
                .write(jar, Kind::Session, &session, expires_at, now);
            (jar, Redirect::to(PAGE_ROUTE)).into_response()
        }
        Err((status, message)) => {
            info!(code = status.as_u16(), reason = message, "login refused");
            (jar, console.problem(status, message)).into_response()
        }
    }
}

/// The callback's checks in order; a refusal is the status and the message to show.
async fn finish_login(
    console: &Console,
    login: Option<LoginCookie>,
    answer: CallbackQuery,
) -> Result<(Session, Identity), (StatusCode, &'static str)> {
    let now = Utc::now().timestamp();
    let login = login.filter(|login| login.is_live(now)).ok_or((
        StatusCode::BAD_REQUEST,
        "No login was started in this browser, or it took longer than ten minutes; start again.",
    ))?;
    if !answer
        .state
        .as_deref()
        .is_some_and(|state| session::equal(&login.state, state))
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "This answer does not belong to the login started in this browser (state mismatch); start again.",
        ));
    }
    if !console.spent.spend(&login.state, login.expires_at, now) {
        return Err((
            StatusCode::BAD_REQUEST,
            "This login answer was already used (state replayed); start again.",
        ));
    }
    if answer.error.is_some() {
        return Err((
            StatusCode::FORBIDDEN,
            "The issuer did not log you in; start again, or ask your administrator.",
        ));
    }
    let code = answer.code.filter(|code| !code.is_empty()).ok_or((
        StatusCode::BAD_REQUEST,
        "The issuer's answer holds no code; start again.",
    ))?;
    let token = console
        .client
        .exchange(&code, &login.verifier)
        .await
        .map_err(|problem| match problem {
            LoginError::Refused(_) => (
                StatusCode::BAD_REQUEST,
                "The issuer refused to complete this login (the code was used or expired); start again.",
            ),
            LoginError::Issuer(problem) => {
                warn!(%problem, "cannot complete a login at the issuer");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    ISSUER_UNAVAILABLE,
                )
            }
        })?;
    let identity = console.authenticator.authenticate(&token).await.map_err(|refusal| {
        if let TokenError::IssuerUnavailable(_) = refusal {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                ISSUER_UNAVAILABLE,
            )
        } else {
            info!(reason = refusal.reason(), %refusal, "the issuer's ID token was refused");
            (
                StatusCode::FORBIDDEN,
                "The issuer's ID token is not accepted by this cluster's settings; ask your administrator.",
            )
        }
    })?;
    if !nonce_matches(token.expose(), &login.nonce) {
        return Err((
            StatusCode::BAD_REQUEST,
            "The ID token was not issued for this login (nonce mismatch); start again.",
        ));
    }
    let session = Session::new(token.expose().to_owned(), identity.expires_at);
    if !session.fits_in_a_cookie() {
        warn!(user = %identity.username, "the ID token is too large for a session cookie");
        return Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "Your ID token is too large to keep in a browser session; get your kubeconfig from GET /kube-config with the token instead.",
        ));
    }
    Ok((session, identity))
}

/// Whether the verified ID token was issued for this login (OIDC Core 3.1.3.7 item 11): its
/// `nonce` must be the one sent, which a token obtained for another login cannot carry.
fn nonce_matches(token: &str, expected: &str) -> bool {
    DisplayClaims::of(token)
        .nonce
        .as_deref()
        .is_some_and(|nonce| session::equal(expected, nonce))
}

/// Claims of an already verified ID token that the verdict does not carry.
#[derive(Default, Deserialize)]
struct DisplayClaims {
    nonce: Option<String>,
    name: Option<String>,
}

impl DisplayClaims {
    /// Only for tokens the verifier accepted; anything unreadable yields no claims.
    fn of(token: &str) -> Self {
        token
            .split('.')
            .nth(1)
            .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
            .and_then(|json| serde_json::from_slice(&json).ok())
            .unwrap_or_default()
    }
}

/// `?format=`: the token kubeconfig by default; `exec` (kubelogin) is offered by the page.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadQuery {
    #[serde(default)]
    format: Format,
}

async fn download(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    extensions: Extensions,
    Query(query): Query<DownloadQuery>,
) -> Response {
    let jar = console.jar(&headers);
    let (session, identity) = match console.session(&jar).await {
        Ok(found) => found,
        Err(NoSession::IssuerUnavailable) => {
            return console.problem(StatusCode::SERVICE_UNAVAILABLE, ISSUER_UNAVAILABLE);
        }
        Err(_) => {
            return console.problem(
                StatusCode::UNAUTHORIZED,
                "Log in first: the download needs a session.",
            );
        }
    };
    let token = IdToken::from(session.id_token);
    let ask = issue::Ask {
        token: &token,
        identity: &identity,
        format: query.format,
        namespace: None,
        via: DOWNLOAD_ROUTE,
        source: extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(client)| client.ip()),
    };
    let (audit_id, issued) = issue::issue_audited(
        console.confirmer.as_ref(),
        &console.settings,
        &console.audit,
        ask,
    )
    .await;
    let response = match issued {
        Ok(response) => response,
        Err(NotIssued::Unconfirmed(ConfirmError::Refused)) => {
            console.problem(StatusCode::UNAUTHORIZED, REFUSED_BY_API_SERVER)
        }
        Err(NotIssued::Unconfirmed(error @ ConfirmError::Unavailable(_))) => {
            warn!(%error, "cannot confirm a token with the API server");
            console.problem(StatusCode::SERVICE_UNAVAILABLE, API_SERVER_UNAVAILABLE)
        }
        Err(NotIssued::NotDownloadable) => console.problem(
            StatusCode::BAD_REQUEST,
            "Only kubeconfig files (format token or exec) can be downloaded here.",
        ),
        Err(NotIssued::ExecNotConfigured(_)) => console.problem(
            StatusCode::NOT_FOUND,
            "The kubelogin kubeconfig is not offered by this operator (exec.clientId is not set).",
        ),
        Err(NotIssued::Render) => console.problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The kubeconfig cannot be rendered; the operator's logs say why.",
        ),
    };
    (issue::audit_header(&audit_id), response).into_response()
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: String,
}

/// Ends the session: in this browser, and on every replica, by revoking the session's token, so
/// that a copy of the cookie no longer downloads. Only a form of the page itself may: see
/// [`from_the_page`], and the CSRF token must be the session's.
async fn logout(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if !from_the_page(&headers, &console.config.origin()) {
        return console.problem(
            StatusCode::FORBIDDEN,
            "Refused: the request did not come from this page (Origin).",
        );
    }
    let jar = console.jar(&headers);
    let session: Option<Session> = console.cookies.read(&jar, Kind::Session);
    if let Some(session) = &session
        && !session.csrf_matches(&form.csrf)
    {
        return console.problem(
            StatusCode::FORBIDDEN,
            "Refused: the form's CSRF token is not this session's; reload the page.",
        );
    }
    // A session whose token no longer verifies (expired, revoked) has nothing left to end.
    if session.is_some()
        && let Ok((session, identity)) = console.session(&jar).await
    {
        let token = IdToken::from(session.id_token);
        let revocations = console.authenticator.revocations();
        if let Err(problem) = revocations.log_out(&token, &identity).await {
            warn!(%problem, user = %identity.username, "cannot revoke the token of a session logging out");
            // The cookie stays, so that logging out can be tried again.
            return console.problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Not logged out: your session cannot be ended on the server right now; try again in a minute.",
            );
        }
        info!(user = %identity.username, "logged out; the session's token is revoked");
    }
    let jar = jar.remove(console.cookies.removal(Kind::Session));
    (jar, Redirect::to(PAGE_ROUTE)).into_response()
}

/// Whether a POST comes from a page of `origin`. Under the page's own `Referrer-Policy:
/// no-referrer`, browsers send `Origin: null` for its form posts (Fetch, "serializing a request
/// origin"); then `Sec-Fetch-Site`, which no page can set or suppress, must say `same-origin`.
/// A request with neither is refused.
fn from_the_page(headers: &HeaderMap, origin: &str) -> bool {
    match headers.get(header::ORIGIN).map(HeaderValue::as_bytes) {
        Some(sent) if sent == origin.as_bytes() => true,
        Some(b"null") => {
            headers.get("sec-fetch-site").map(HeaderValue::as_bytes) == Some(b"same-origin")
        }
        _ => false,
    }
}

async fn script() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        include_str!("console.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/css; charset=utf-8"),
        )],
        include_str!("console.css"),
    )
        .into_response()
}
