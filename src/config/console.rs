//! The `console` section of the configuration file: the login page is off unless it is present.
//!
//! The page logs users in as the operator's own OIDC client (`oidc.clientId`), because the ID
//! token it obtains must pass the same verifier as `GET /kube-config` and work with
//! kube-apiserver, both of which require that audience.

use std::path::PathBuf;

use axum_extra::extract::cookie::Key;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use url::Url;

use super::checks::ConfigError;

/// Where the issuer sends the browser back, on the page's own origin.
pub const CALLBACK_ROUTE: &str = "/callback";

/// Scopes asked for when none are configured: who the user is and their groups. Never
/// `offline_access`: the page needs no refresh token, and holding none means none can leak.
const DEFAULT_SCOPES: &[&str] = &["openid", "profile", "email", "groups"];
/// Bytes of key material for the cookies: 32 to sign and 32 to encrypt (the `cookie` crate's
/// requirement for a master key).
const COOKIE_KEY_BYTES: usize = 64;

/// The section as written in the file, and its flags. Secrets may be given inline or, better,
/// as files (a mounted Secret), never both. The page is on when any of it is set.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsoleSection {
    /// The operator's OIDC client secret, for the login page; prefer the file [file: console.clientSecret].
    #[arg(
        id = "console-client-secret",
        long = "console-client-secret",
        env = "KUBECONFIG_OPERATOR_CONSOLE_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub client_secret: Option<String>,
    /// File holding the operator's OIDC client secret, for the login page [file: console.clientSecretFile].
    #[arg(
        id = "console-client-secret-file",
        long = "console-client-secret-file",
        env = "KUBECONFIG_OPERATOR_CONSOLE_CLIENT_SECRET_FILE"
    )]
    pub client_secret_file: Option<PathBuf>,
    /// Where the issuer sends the browser back: the page's origin followed by /callback [file: console.redirectUrl; required with the page].
    #[arg(
        id = "console-redirect-url",
        long = "console-redirect-url",
        env = "KUBECONFIG_OPERATOR_CONSOLE_REDIRECT_URL"
    )]
    pub redirect_url: Option<String>,
    /// Base64 of at least 64 random bytes that encrypt the page's cookies; replicas need the same [file: console.cookieKey; default generated at start-up].
    #[arg(
        id = "console-cookie-key",
        long = "console-cookie-key",
        env = "KUBECONFIG_OPERATOR_CONSOLE_COOKIE_KEY",
        hide_env_values = true
    )]
    pub cookie_key: Option<String>,
    /// File holding the cookie key [file: console.cookieKeyFile].
    #[arg(
        id = "console-cookie-key-file",
        long = "console-cookie-key-file",
        env = "KUBECONFIG_OPERATOR_CONSOLE_COOKIE_KEY_FILE"
    )]
    pub cookie_key_file: Option<PathBuf>,
    /// Comma-separated scopes the page asks for; must contain openid [file: console.scopes; default openid,profile,email,groups].
    #[arg(
        id = "console-scopes",
        long = "console-scopes",
        env = "KUBECONFIG_OPERATOR_CONSOLE_SCOPES",
        value_delimiter = ','
    )]
    pub scopes: Option<Vec<String>>,
}

/// The checked section.
#[derive(Clone)]
pub struct ConsoleConfig {
    /// The operator's client secret at the issuer; sent only to the token endpoint.
    pub client_secret: String,
    /// Where the issuer sends the browser back: `<page origin>/callback`.
    pub redirect_url: Url,
    /// Encrypts and authenticates the page's cookies; replicas behind one address need the same.
    pub cookie_key: Key,
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("client_secret", &"<redacted>")
            .field("redirect_url", &self.redirect_url.as_str())
            .field("cookie_key", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl ConsoleConfig {
    /// Whether the page is reached over TLS, which decides the `Secure` flag and the `__Host-`
    /// prefix of its cookies. Taken from the redirect URL rather than from the listener, since a
    /// TLS-terminating ingress in front of a plain-HTTP listener is still TLS for the browser.
    pub fn over_tls(&self) -> bool {
        self.redirect_url.scheme() == "https"
    }

    /// The page's origin as browsers send it in `Origin`.
    pub fn origin(&self) -> String {
        self.redirect_url.origin().ascii_serialization()
    }

    /// Checks the section; each refusal names the field to fix.
    pub fn resolve(file: ConsoleSection) -> Result<Self, ConfigError> {
        let client_secret = inline_or_file(
            ("console.clientSecret", file.client_secret),
            ("console.clientSecretFile", file.client_secret_file),
        )?
        .map(|secret| secret.trim().to_owned())
        .filter(|secret| !secret.is_empty())
        .ok_or_else(|| {
            ConfigError::new(
                "console.clientSecret",
                "is required (or console.clientSecretFile): the page logs in as a confidential client",
            )
        })?;
        let redirect_url = redirect_url(file.redirect_url)?;
        let cookie_key = match inline_or_file(
            ("console.cookieKey", file.cookie_key),
            ("console.cookieKeyFile", file.cookie_key_file),
        )? {
            Some(text) => cookie_key(&text)?,
            // One replica: sessions end when it restarts, which costs a new login at most.
            None => Key::generate(),
        };
        let scopes = scopes(file.scopes)?;
        Ok(Self {
            client_secret,
            redirect_url,
            cookie_key,
            scopes,
        })
    }
}

/// The value given inline or read from a file (field names for the messages first).
fn inline_or_file(
    (inline_field, inline): (&str, Option<String>),
    (file_field, file): (&str, Option<PathBuf>),
) -> Result<Option<String>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            inline_field,
            format!("set either {inline_field} or {file_field}, not both"),
        )),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map(Some)
            .map_err(|e| ConfigError::new(file_field, format!("cannot read {path:?}: {e}"))),
        (None, None) => Ok(None),
    }
}

/// https, or http on a loopback host for a developer's machine; the path must be `/callback`,
/// where the page takes the issuer's answer.
fn redirect_url(value: Option<String>) -> Result<Url, ConfigError> {
    const FIELD: &str = "console.redirectUrl";
    let value = value.ok_or_else(|| ConfigError::new(FIELD, "is required"))?;
    let url = Url::parse(&value)
        .map_err(|e| ConfigError::new(FIELD, format!("{value:?} is not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
        return Err(ConfigError::new(
            FIELD,
            format!("{value:?} must use https (http only for 127.0.0.1, [::1] or localhost)"),
        ));
    }
    if url.path() != CALLBACK_ROUTE || url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            FIELD,
            format!(
                "{value:?} must be the page's origin followed by {}, with no query or fragment",
                CALLBACK_ROUTE
            ),
        ));
    }
    Ok(url)
}

/// Base64 of at least 64 random bytes, e.g. `head -c 64 /dev/urandom | base64 -w0`.
fn cookie_key(text: &str) -> Result<Key, ConfigError> {
    const FIELD: &str = "console.cookieKey";
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| ConfigError::new(FIELD, format!("is not base64: {e}")))?;
    if bytes.len() < COOKIE_KEY_BYTES {
        return Err(ConfigError::new(
            FIELD,
            format!(
                "holds {} bytes, at least {COOKIE_KEY_BYTES} are needed (head -c 64 /dev/urandom | base64 -w0)",
                bytes.len()
            ),
        ));
    }
    Key::try_from(bytes.as_slice()).map_err(|e| ConfigError::new(FIELD, e.to_string()))
}

/// `openid` is what makes it an OIDC login, so it must be there; `offline_access` is allowed
/// only when asked for, never by default.
fn scopes(configured: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    const FIELD: &str = "console.scopes";
    let scopes = configured.unwrap_or_else(|| {
        DEFAULT_SCOPES
            .iter()
            .map(|&scope| scope.to_owned())
            .collect()
    });
    if let Some(bad) = scopes.iter().find(|scope| {
        scope.is_empty()
            || !scope
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
    }) {
        return Err(ConfigError::new(
            FIELD,
            format!(
                "{bad:?} is not a scope (RFC 6749: visible ASCII without spaces, quotes or backslashes)"
            ),
        ));
    }
    if !scopes.iter().any(|scope| scope == "openid") {
        return Err(ConfigError::new(
            FIELD,
            "must contain openid, or the issuer returns no ID token",
        ));
    }
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(yaml: &str) -> ConsoleSection {
        crate::yaml::from_str(yaml).unwrap()
    }

    fn field_of(yaml: &str) -> String {
        ConsoleConfig::resolve(file(yaml)).unwrap_err().field
    }

    #[test]
    fn defaults_ask_for_groups_but_never_offline_access() {
        let config = ConsoleConfig::resolve(file(
            "{clientSecret: s, redirectUrl: 'http://127.0.0.1:8000/callback'}",
        ))
        .unwrap();
        assert_eq!(config.scopes, ["openid", "profile", "email", "groups"]);
        assert!(!config.over_tls());
        assert_eq!(config.origin(), "http://127.0.0.1:8000");
        assert!(!format!("{config:?}").contains("clientSecret: s"));
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        for (yaml, field) in [
            (
                "{redirectUrl: 'https://a.example/callback'}",
                "console.clientSecret",
            ),
            ("{clientSecret: s}", "console.redirectUrl"),
            (
                "{clientSecret: s, redirectUrl: 'http://a.example/callback'}",
                "console.redirectUrl",
            ),
            (
                "{clientSecret: s, redirectUrl: 'https://a.example/login'}",
                "console.redirectUrl",
            ),
            (
                "{clientSecret: s, redirectUrl: 'https://a.example/callback', cookieKey: 'c2hvcnQ='}",
                "console.cookieKey",
            ),
            (
                "{clientSecret: s, redirectUrl: 'https://a.example/callback', scopes: [profile]}",
                "console.scopes",
            ),
            (
                "{clientSecret: s, redirectUrl: 'https://a.example/callback', scopes: ['a b']}",
                "console.scopes",
            ),
            (
                "{clientSecret: s, clientSecretFile: /nonexistent, redirectUrl: 'https://a.example/callback'}",
                "console.clientSecret",
            ),
            (
                "{clientSecretFile: /nonexistent, redirectUrl: 'https://a.example/callback'}",
                "console.clientSecretFile",
            ),
        ] {
            assert_eq!(field_of(yaml), field, "{yaml}");
        }
    }

    #[test]
    fn the_page_is_off_unless_configured_and_refused_at_start_up_when_wrong() {
        use crate::config::{Config, KubeconfigSection, OidcSection, Settings};
        let args = Settings {
            kubeconfig: KubeconfigSection {
                server: Some("https://127.0.0.1:6443".into()),
                ..KubeconfigSection::default()
            },
            oidc: OidcSection {
                issuer_url: Some("https://dex.example/dex".into()),
                client_id: Some("kubeconfig-operator".into()),
                ..OidcSection::default()
            },
            ..Settings::default()
        };
        let resolve = |yaml: &str| {
            let file: Settings = crate::yaml::from_str(yaml).unwrap();
            Config::resolve(file, &args)
        };
        assert!(resolve("{}").unwrap().console.is_none());
        let page = resolve("console: {clientSecret: s, redirectUrl: 'https://k.example/callback'}")
            .unwrap()
            .console
            .expect("configured");
        assert_eq!(page.origin(), "https://k.example");
        let error = resolve("console: {clientSecret: s, redirectUrl: 'http://k.example/callback'}")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("invalid configuration: console.redirectUrl: ")
                && !error.contains('\n'),
            "{error}"
        );
        assert!(
            crate::yaml::from_str::<Settings>("console: {clientSecrett: s}").is_err(),
            "a misspelt field is refused"
        );
    }

    #[test]
    fn a_configured_key_is_used_so_replicas_can_share_it() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
        let yaml = format!(
            "{{clientSecret: s, redirectUrl: 'https://console.example/callback', cookieKey: '{key}'}}"
        );
        let a = ConsoleConfig::resolve(file(&yaml)).unwrap();
        let b = ConsoleConfig::resolve(file(&yaml)).unwrap();
        assert_eq!(a.cookie_key.master(), b.cookie_key.master());
        assert!(a.over_tls());
        let generated = ConsoleConfig::resolve(file(
            "{clientSecret: s, redirectUrl: 'https://console.example/callback'}",
        ))
        .unwrap();
        assert_ne!(generated.cookie_key.master(), a.cookie_key.master());
    }
}
