//! The words every part of the operator uses for a token: the token itself, which never
//! prints, who holds it, and why it was refused. Nothing here judges a token.

use std::{collections::BTreeMap, fmt};

use chrono::{DateTime, Utc};

use super::jwks::IssuerError;

/// An ID token as received. It is a bearer credential, so it never shows up in `Debug` or
/// `Display` output (and therefore not in logs or error messages by accident); reading it takes
/// an explicit [`IdToken::expose`].
#[derive(Clone)]
pub struct IdToken(String);

impl IdToken {
    /// The raw token, for the one place that needs it: the rendered kubeconfig.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for IdToken {
    fn from(token: String) -> Self {
        Self(token)
    }
}

impl fmt::Debug for IdToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdToken(<redacted, {} bytes>)", self.0.len())
    }
}

impl fmt::Display for IdToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted ID token, {} bytes>", self.0.len())
    }
}

/// kube-apiserver's key for a token's `jti` in the user's extra (`user.CredentialIDKey`): the
/// audit log records every request under it, for ID tokens and ServiceAccount tokens alike.
pub const CREDENTIAL_ID_KEY: &str = "authentication.kubernetes.io/credential-id";

/// The credential id kube-apiserver derives from a JWT's `jti` (`CredentialIDForJTI`).
pub fn credential_id(jti: &str) -> String {
    format!("JTI={jti}")
}

/// The credential id in a user's extra, where kube-apiserver (or the operator, reading the token
/// as it does) put it; `None` for a token without one.
pub fn credential_id_in(extra: &BTreeMap<String, Vec<String>>) -> Option<&str> {
    extra.get(CREDENTIAL_ID_KEY)?.first().map(String::as_str)
}

/// Who the token's holder is, as kube-apiserver will see it with the same `--oidc-*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The username claim's value with the configured prefix.
    pub username: String,
    /// The groups claim's values, each with the configured prefix.
    pub groups: Vec<String>,
    /// Empty unless an authentication configuration maps one (`claimMappings.uid`).
    pub uid: String,
    /// `claimMappings.extra`, and `authentication.kubernetes.io/credential-id` from `jti`, as
    /// kube-apiserver adds it.
    pub extra: BTreeMap<String, Vec<String>>,
    /// When the token, and so the kubeconfig built from it, stops working.
    pub expires_at: DateTime<Utc>,
    /// Absent when the issuer omits `iat`, which OIDC requires but kube-apiserver does not.
    pub issued_at: Option<DateTime<Utc>>,
}

/// Why a token was refused. Messages are shown to the token's holder and logged, so they never
/// contain the token or any part of it: `Malformed` only takes fixed texts, and `UnknownKey` and
/// `WrongIssuer` hold values from the token shortened to printable ASCII.
#[derive(thiserror::Error, Debug, Clone, PartialEq, strum::IntoStaticStr)]
pub enum TokenError {
    #[error("the token is malformed: {0}; pass the ID token exactly as Dex issued it")]
    Malformed(&'static str),
    #[error(
        "the token's signature does not verify with the issuer's keys, or it is signed with an algorithm this operator does not accept"
    )]
    BadSignature,
    #[error(
        "the token is signed with a key the issuer does not publish (kid {0:?}); get a fresh token from Dex"
    )]
    UnknownKey(String),
    #[error("the token expired{}; get a fresh token from Dex", expired_at.map(|at| format!(" at {}", at.to_rfc3339())).unwrap_or_default())]
    Expired { expired_at: Option<DateTime<Utc>> },
    #[error(
        "the token is not valid yet (nbf is more than a minute in the future); check the clocks of Dex and this operator"
    )]
    NotYetValid,
    #[error(
        "the token was issued by {found:?}, but only tokens of {expected} are accepted; get a token from that issuer"
    )]
    WrongIssuer {
        expected: String,
        /// The token's `iss`, shortened and made printable (it is the sender's text).
        found: String,
    },
    #[error("the token was not issued for the client {expected} (aud{})", if *azp_required { "/azp" } else { "" })]
    WrongAudience {
        expected: String,
        azp_required: bool,
    },
    #[error(
        "the token's claim {0:?} is missing or has an unusable value; check the operator's username/groups claim settings and the Dex connector"
    )]
    MissingClaim(String),
    /// A distributed claim whose source could not be used, as kube-apiserver's claim resolver
    /// refuses it. `problem` names the endpoint without its query and never the source's access
    /// token.
    #[error(
        "the token's claim {claim:?} is distributed and could not be resolved: {problem}; the API server refuses this token too, so ask the issuer for a token whose endpoint answers or that carries the claim itself"
    )]
    UnresolvedClaim { claim: String, problem: String },
    #[error("the issuer's signing keys are unavailable, try again later: {0}")]
    IssuerUnavailable(IssuerError),
    /// A rule of the authentication configuration refused the token; the text is the rule's
    /// own message or expression, from the owner's configuration, never from the token.
    #[error("the token is refused by the authentication configuration: {0}")]
    RefusedByRule(String),
    /// The revocation's name and message are the administrator's text, never the token's.
    #[error("the token is revoked by KubeconfigRevocation {revocation}{}; a token issued after its notBefore works", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Revoked { revocation: String, message: String },
    #[error(
        "this replica has not yet listed the KubeconfigRevocations, so it cannot tell whether the token is revoked; try again shortly"
    )]
    RevocationsUnknown,
}

impl TokenError {
    /// A fixed, low-cardinality name for metrics labels, Kubernetes condition reasons and logs:
    /// the variant's.
    pub fn reason(&self) -> &'static str {
        self.into()
    }
}
