//! Bearer authentication for every route that acts for a user. [`Authenticated`] is an axum
//! extractor: a handler that takes it only runs for a verified ID token, and every other request
//! gets the same refusal whichever route it came to (the download today, the proxy and the login
//! page later), so clients see one contract and refusals are counted in one place.

use std::sync::Arc;

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};

use super::RETRY_AFTER_SECONDS;
use crate::oidc::{
    authenticator::Authenticator,
    token::{IdToken, Identity, TokenError},
};

/// A request whose `Authorization: Bearer` ID token verified. The token is kept because the
/// download hands it back inside the kubeconfig; [`IdToken`] never prints it.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub token: IdToken,
    pub identity: Identity,
}

/// A handler's state that can judge bearer tokens.
pub trait HoldsAuthenticator {
    fn authenticator(&self) -> &Authenticator;
}

impl HoldsAuthenticator for Arc<Authenticator> {
    fn authenticator(&self) -> &Authenticator {
        self
    }
}

/// The rejection is a finished response: 401 with a `WWW-Authenticate` challenge for missing,
/// malformed or invalid credentials, 503 with `Retry-After` when the issuer cannot be reached to
/// judge the token (not the client's fault). Any state that holds the [`Authenticator`] will
/// do: the server's, the proxy's.
impl<S: HoldsAuthenticator + Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).map_err(missing_credentials)?;
        match state.authenticator().authenticate(&token).await {
            Ok(identity) => Ok(Self { token, identity }),
            Err(refusal) => Err(token_refused(&refusal)),
        }
    }
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
    const NOT_VISIBLE_ASCII: &str =
        "the bearer token must be visible ASCII without spaces: Authorization: Bearer <ID token>\n";
    if !token.iter().all(u8::is_ascii_graphic) {
        return Err(NOT_VISIBLE_ASCII);
    }
    // Visible ASCII is UTF-8: one copy, where collecting it a char at a time was 3 % of a
    // download's CPU (perf).
    let token = std::str::from_utf8(token).map_err(|_| NOT_VISIBLE_ASCII)?;
    Ok(IdToken::from(token.to_owned()))
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

/// 401 names the reason in the challenge and explains it in the body; an unreachable issuer or
/// revocations not yet listed are not the client's fault, so they get 503 and a hint to retry.
fn token_refused(refusal: &TokenError) -> Response {
    let body = format!("{}: {refusal}\n", refusal.reason());
    if matches!(
        refusal,
        TokenError::IssuerUnavailable(_) | TokenError::RevocationsUnknown
    ) {
        return unavailable(body);
    }
    invalid_token(refusal.reason(), body)
}

/// 503 with `Retry-After`: something the operator depends on did not answer.
pub(super) fn unavailable(body: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECONDS),
        )],
        body,
    )
        .into_response()
}

/// 401 for a token that does not work, `reason` (one word, no quotes) in the challenge.
pub(super) fn invalid_token(reason: &str, body: String) -> Response {
    let challenge = format!(
        "Bearer realm=\"kubeconfig-operator\", error=\"invalid_token\", error_description=\"{reason}\""
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use axum::http::Method;
    use jsonwebtoken::Algorithm;

    use super::*;
    use crate::{
        config::OidcConfig,
        oidc::verify::Verifier,
        server::{
            KUBE_CONFIG_ROUTE,
            test_fixtures::{body, call, signed_token_from, state, state_with},
        },
    };

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
    async fn an_unreachable_issuer_is_503_with_retry_after_and_not_ready() {
        // Nothing listens on port 1, so the key fetch for the token's kid fails at once.
        let config = OidcConfig::for_tests("https://127.0.0.1:1/dex", &[Algorithm::RS256]);
        let state = state_with(Verifier::new(config).await.unwrap());
        let authorization = format!("Bearer {}", signed_token_from("https://127.0.0.1:1/dex"));
        let response = call(&state, Method::GET, KUBE_CONFIG_ROUTE, &[&authorization]).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "10");
        assert!(body(response).await.starts_with("IssuerUnavailable: "));
        state.controller_ready.store(true, Ordering::Relaxed);
        let response = call(&state, Method::GET, "/readyz", &[]).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(response).await.contains("signing keys are not loaded"));
    }
}
