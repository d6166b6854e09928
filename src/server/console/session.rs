//! The page's two cookies, both encrypted and authenticated with the configured key
//! (`PrivateCookieJar`, AES-GCM with the cookie's name bound in), so the browser holds only
//! ciphertext it cannot read or alter, and no server-side store is needed:
//! - the login cookie carries `state`, `nonce` and the PKCE verifier of one login round trip for
//!   [`LOGIN_LIFETIME`], and is removed by the callback whatever its outcome;
//! - the session cookie carries the verified ID token and the CSRF token, and lives no longer
//!   than the ID token (its `Max-Age` and its payload's expiry both say so).
//!
//! Both are `HttpOnly` (no script reads them), `SameSite=Lax` (sent on the issuer's top-level
//! redirect back, not on cross-site subrequests or POSTs), `Path=/`, and over TLS `Secure` with
//! the `__Host-` prefix, which makes browsers refuse them from anywhere else.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use axum_extra::extract::cookie::{Cookie, PrivateCookieJar, SameSite};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use subtle::ConstantTimeEq as _;

use super::oidc::Pending;

/// Long enough to type a password (and fetch a second factor), short enough that an abandoned
/// login's cookie is gone soon.
pub(super) const LOGIN_LIFETIME: Duration = Duration::from_secs(600);
/// Logins whose `state` is remembered as used at once, per replica; beyond this new callbacks
/// are refused until old entries expire, so a flood cannot grow memory without bound.
const MAX_SPENT_STATES: usize = 100_000;
/// Browsers keep at most 4096 bytes of a cookie's name and value; encrypted (12 bytes of nonce,
/// 16 of tag), encoded and named, a payload of this size stays below that (a test checks).
const MAX_SESSION_JSON_BYTES: usize = 2900;

/// Names and flags of the cookies, which depend on whether the page is served over TLS.
#[derive(Debug, Clone, Copy)]
pub(super) struct CookiePolicy {
    pub over_tls: bool,
}

/// Which of the two cookies.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Login,
    Session,
}

impl CookiePolicy {
    pub(super) fn name(self, kind: Kind) -> &'static str {
        match (kind, self.over_tls) {
            (Kind::Login, true) => "__Host-kubeconfig-login",
            (Kind::Login, false) => "kubeconfig-login",
            (Kind::Session, true) => "__Host-kubeconfig-session",
            (Kind::Session, false) => "kubeconfig-session",
        }
    }

    /// A cookie of `kind` holding `value`, for `max_age`.
    pub(super) fn cookie(self, kind: Kind, value: String, max_age: Duration) -> Cookie<'static> {
        Cookie::build((self.name(kind), value))
            .http_only(true)
            .same_site(SameSite::Lax)
            .path("/")
            .secure(self.over_tls)
            .max_age(time::Duration::seconds(
                i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
            ))
            .build()
    }

    /// What removes the cookie of `kind` (same name and path, expired).
    pub(super) fn removal(self, kind: Kind) -> Cookie<'static> {
        self.cookie(kind, String::new(), Duration::ZERO)
    }

    /// The cookie of `kind` from `jar`, decrypted and parsed; `None` when absent, forged,
    /// encrypted under another key, or of another shape.
    pub(super) fn read<T: DeserializeOwned>(self, jar: &PrivateCookieJar, kind: Kind) -> Option<T> {
        jar.get(self.name(kind))
            .and_then(|cookie| serde_json::from_str(cookie.value()).ok())
    }

    /// `jar` with `payload` as the cookie of `kind`, until `expires_at`.
    pub(super) fn write<T: Serialize>(
        self,
        jar: PrivateCookieJar,
        kind: Kind,
        payload: &T,
        expires_at: i64,
        now: i64,
    ) -> PrivateCookieJar {
        let value = serde_json::to_string(payload).expect("cookie payloads serialise");
        let lifetime = Duration::from_secs(u64::try_from(expires_at - now).unwrap_or(0));
        jar.add(self.cookie(kind, value, lifetime))
    }
}

/// The login cookie's payload.
#[derive(Serialize, Deserialize)]
pub(super) struct LoginCookie {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    pub expires_at: i64,
}

impl LoginCookie {
    pub(super) fn new(pending: Pending, now: i64) -> Self {
        Self {
            state: pending.state,
            nonce: pending.nonce,
            verifier: pending.verifier,
            expires_at: now + LOGIN_LIFETIME.as_secs() as i64,
        }
    }

    pub(super) fn is_live(&self, now: i64) -> bool {
        now < self.expires_at
    }
}

/// The session cookie's payload. No `Debug`: it holds the ID token.
#[derive(Serialize, Deserialize)]
pub(super) struct Session {
    pub id_token: String,
    pub csrf: String,
    pub expires_at: i64,
}

impl Session {
    pub(super) fn new(id_token: String, expires_at: DateTime<Utc>) -> Self {
        Self {
            id_token,
            csrf: super::oidc::random_token(),
            expires_at: expires_at.timestamp(),
        }
    }

    /// Ends with the ID token, even if a browser kept the cookie longer than told.
    pub(super) fn is_live(&self, now: i64) -> bool {
        now < self.expires_at
    }

    /// Whether the browser will keep the cookie: an ID token with, say, hundreds of groups may
    /// not fit, and a dropped cookie would send the user round the login forever.
    pub(super) fn fits_in_a_cookie(&self) -> bool {
        serde_json::to_string(self).is_ok_and(|json| json.len() <= MAX_SESSION_JSON_BYTES)
    }

    /// Whether a form's CSRF token is this session's, compared in constant time.
    pub(super) fn csrf_matches(&self, sent: &str) -> bool {
        equal(&self.csrf, sent)
    }
}

/// Constant-time comparison of secrets the browser sends back.
pub(super) fn equal(expected: &str, sent: &str) -> bool {
    expected.as_bytes().ct_eq(sent.as_bytes()).into()
}

/// `state` values already answered, until their login cookie would have expired: a callback
/// is honoured once even if the same cookie and answer are sent again. Per replica; a replayed
/// answer that reaches another replica still fails at the issuer, which accepts a code once.
#[derive(Default)]
pub(super) struct SpentStates {
    spent: Mutex<HashMap<String, i64>>,
}

impl SpentStates {
    /// Records `state` as used; false if it was already, or if too many are remembered.
    pub(super) fn spend(&self, state: &str, expires_at: i64, now: i64) -> bool {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        spent.retain(|_, until| *until > now);
        if spent.contains_key(state) || spent.len() >= MAX_SPENT_STATES {
            return false;
        }
        spent.insert(state.to_owned(), expires_at);
        true
    }
}

#[cfg(test)]
pub(super) mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};
    use axum_extra::extract::cookie::Key;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn jar(key: &Key) -> PrivateCookieJar {
        PrivateCookieJar::new(key.clone())
    }

    /// The `Cookie` header a browser would send back after receiving `jar`'s cookies.
    pub(in crate::server::console) fn sent_back(jar: PrivateCookieJar) -> HeaderMap {
        use axum::response::IntoResponse as _;
        let response = (jar, ()).into_response();
        let cookies: Vec<&str> = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok()?.split(';').next())
            .collect();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&cookies.join("; ")).unwrap(),
        );
        headers
    }

    #[test]
    fn cookies_are_opaque_and_bound_to_the_key() {
        let key = Key::generate();
        let policy = CookiePolicy { over_tls: true };
        let login = LoginCookie::new(Pending::new(), NOW);
        let headers =
            sent_back(policy.write(jar(&key), Kind::Login, &login, login.expires_at, NOW));
        let raw = headers[header::COOKIE].to_str().unwrap().to_owned();
        assert!(
            !raw.contains(&login.state) && !raw.contains(&login.verifier),
            "{raw}"
        );
        let read: LoginCookie = policy
            .read(
                &PrivateCookieJar::from_headers(&headers, key.clone()),
                Kind::Login,
            )
            .unwrap();
        assert_eq!(read.state, login.state);
        // Another key (another replica without the shared key) cannot read it.
        let other = PrivateCookieJar::from_headers(&headers, Key::generate());
        assert!(policy.read::<LoginCookie>(&other, Kind::Login).is_none());
        // Nor is it accepted under the other cookie's name, or altered.
        let renamed = raw.replace("__Host-kubeconfig-login", "__Host-kubeconfig-session");
        let mut swapped = HeaderMap::new();
        swapped.insert(header::COOKIE, HeaderValue::from_str(&renamed).unwrap());
        let swapped = PrivateCookieJar::from_headers(&swapped, key.clone());
        assert!(policy.read::<Session>(&swapped, Kind::Session).is_none());
        let mut tampered = raw.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let mut forged = HeaderMap::new();
        forged.insert(header::COOKIE, HeaderValue::from_bytes(&tampered).unwrap());
        let forged = PrivateCookieJar::from_headers(&forged, key);
        assert!(policy.read::<LoginCookie>(&forged, Kind::Login).is_none());
    }

    #[test]
    fn flags_follow_tls() {
        let plain = CookiePolicy { over_tls: false }.cookie(
            Kind::Session,
            "v".into(),
            Duration::from_secs(60),
        );
        assert_eq!(plain.name(), "kubeconfig-session");
        assert_eq!(plain.http_only(), Some(true));
        assert_eq!(plain.same_site(), Some(SameSite::Lax));
        assert_eq!(plain.secure(), Some(false));
        assert_eq!(plain.path(), Some("/"));
        assert_eq!(plain.domain(), None);
        let tls = CookiePolicy { over_tls: true }.cookie(Kind::Login, "v".into(), LOGIN_LIFETIME);
        assert_eq!(tls.name(), "__Host-kubeconfig-login");
        assert_eq!(tls.secure(), Some(true));
        assert_eq!(tls.max_age(), Some(time::Duration::seconds(600)));
        let text = tls.to_string();
        for flag in [
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
            "Path=/",
            "Max-Age=600",
        ] {
            assert!(text.contains(flag), "{text}");
        }
    }

    #[test]
    fn the_session_lives_no_longer_than_the_id_token() {
        let expires = DateTime::from_timestamp(NOW + 300, 0).unwrap();
        let session = Session::new("header.claims.signature".into(), expires);
        assert!(session.is_live(NOW));
        assert!(session.is_live(NOW + 299));
        assert!(!session.is_live(NOW + 300));
        let key = Key::generate();
        let policy = CookiePolicy { over_tls: false };
        let jar = policy.write(jar(&key), Kind::Session, &session, session.expires_at, NOW);
        let cookie = jar.get(policy.name(Kind::Session)).unwrap();
        assert_eq!(cookie.max_age(), Some(time::Duration::seconds(300)));
        // An already expired token gives a cookie that is removed at once.
        let jar = policy.write(
            PrivateCookieJar::new(key),
            Kind::Session,
            &session,
            NOW - 5,
            NOW,
        );
        let cookie = jar.get(policy.name(Kind::Session)).unwrap();
        assert_eq!(cookie.max_age(), Some(time::Duration::ZERO));
    }

    #[test]
    fn a_session_too_large_for_a_cookie_is_noticed() {
        let expires = DateTime::from_timestamp(NOW + 300, 0).unwrap();
        assert!(!Session::new("t".repeat(2900), expires).fits_in_a_cookie());
        // The largest session that fits, within what browsers keep.
        let overhead = serde_json::to_string(&Session::new(String::new(), expires))
            .unwrap()
            .len();
        let largest = Session::new("t".repeat(MAX_SESSION_JSON_BYTES - overhead), expires);
        assert!(largest.fits_in_a_cookie());
        let policy = CookiePolicy { over_tls: true };
        let headers = sent_back(policy.write(
            jar(&Key::generate()),
            Kind::Session,
            &largest,
            NOW + 300,
            NOW,
        ));
        let sent = headers[header::COOKIE].len();
        assert!(sent <= 4096, "{sent}");
    }

    #[test]
    fn login_state_expires_and_is_single_use() {
        let login = LoginCookie::new(Pending::new(), NOW);
        assert!(login.is_live(NOW + 599));
        assert!(!login.is_live(NOW + 600));
        let spent = SpentStates::default();
        assert!(spent.spend(&login.state, login.expires_at, NOW));
        assert!(!spent.spend(&login.state, login.expires_at, NOW + 1));
        assert!(spent.spend("another", login.expires_at, NOW + 1));
        // Forgotten once the cookie that carried it cannot be sent any more.
        assert!(spent.spend(&login.state, login.expires_at + 600, login.expires_at));
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let session = Session::new("t".into(), DateTime::from_timestamp(NOW + 60, 0).unwrap());
        assert_eq!(session.csrf.len(), 43);
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&session.csrf[..42]));
        assert!(!session.csrf_matches(&format!("{}x", session.csrf)));
        let other = Session::new("t".into(), DateTime::from_timestamp(NOW + 60, 0).unwrap());
        assert!(!session.csrf_matches(&other.csrf));
    }
}
