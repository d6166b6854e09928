//! Why a request is not issued: the reasons of its Ready condition, each with what the controller
//! does about it. A reason's name is its variant's, so a new reason cannot be missing from a
//! string table, and its policy is data here rather than a check somewhere in `reconcile`.

use std::time::Duration;

use crate::oidc::token::TokenError;

/// The Ready condition's reasons; each names what a person should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
pub enum Reason {
    Issued,
    TokenSecretNotFound,
    TokenKeyMissing,
    TokenInvalid,
    TokenExpired,
    UserMismatch,
    SecretConflict,
    IssuerUnavailable,
    InvalidSpec,
    ServiceAccountNotFound,
    ServiceAccountNotIssuable,
    RejectedByAPIServer,
    Revoked,
    CreatorForbidden,
    SecondWriter,
}

/// What the controller does when a request is refused for a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The Secret this request wrote goes, and with it the token bound to it: the reason means
    /// the credential's owner no longer allows it, not that the next one is not ready yet.
    pub revokes: bool,
    /// Tried again after this long without a change to the request: the cause is outside it.
    pub retry_after: Option<Duration>,
}

/// How soon an unreachable issuer is asked again.
const ISSUER_RETRY: Duration = Duration::from_secs(15);
/// How soon a newly found second writer is looked at again. The other installation's status
/// write for its own overwrite can land just after this one's report and replace it, and no
/// status change wakes a request: this look puts the report back.
const SECOND_WRITER_CONFIRM: Duration = Duration::from_secs(5);
/// How often a request whose `SecondWriter` report stands is looked at again, in case a status
/// write replaced it later.
pub(super) const SECOND_WRITER_RECHECK: Duration = Duration::from_secs(30);

impl Reason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Every reason is listed, so a new one must be given its policy.
    pub const fn policy(self) -> Policy {
        const WAIT: Policy = Policy {
            revokes: false,
            retry_after: None,
        };
        match self {
            Reason::ServiceAccountNotFound
            | Reason::ServiceAccountNotIssuable
            | Reason::Revoked => Policy {
                revokes: true,
                ..WAIT
            },
            Reason::IssuerUnavailable => Policy {
                retry_after: Some(ISSUER_RETRY),
                ..WAIT
            },
            Reason::SecondWriter => Policy {
                retry_after: Some(SECOND_WRITER_CONFIRM),
                ..WAIT
            },
            Reason::Issued
            | Reason::TokenSecretNotFound
            | Reason::TokenKeyMissing
            | Reason::TokenInvalid
            | Reason::TokenExpired
            | Reason::UserMismatch
            | Reason::SecretConflict
            | Reason::InvalidSpec
            | Reason::RejectedByAPIServer
            | Reason::CreatorForbidden => WAIT,
        }
    }

    pub fn for_token_error(error: &TokenError) -> Self {
        match error {
            TokenError::Expired { .. } => Reason::TokenExpired,
            TokenError::IssuerUnavailable(_) | TokenError::RevocationsUnknown => {
                Reason::IssuerUnavailable
            }
            TokenError::Revoked { .. } => Reason::Revoked,
            _ => Reason::TokenInvalid,
        }
    }
}

/// A request that cannot be issued, with the message that tells its owner what to change.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use strum::VariantArray as _;

    use super::*;

    #[test]
    fn token_errors_map_to_condition_reasons() {
        let expired = TokenError::Expired { expired_at: None };
        assert_eq!(Reason::for_token_error(&expired), Reason::TokenExpired);
        let unavailable =
            TokenError::IssuerUnavailable(crate::oidc::jwks::IssuerError::Setup("x".into()));
        assert_eq!(
            Reason::for_token_error(&unavailable),
            Reason::IssuerUnavailable
        );
        assert_eq!(
            Reason::for_token_error(&TokenError::RevocationsUnknown),
            Reason::IssuerUnavailable
        );
        let revoked = TokenError::Revoked {
            revocation: "r".into(),
            message: String::new(),
        };
        assert_eq!(Reason::for_token_error(&revoked), Reason::Revoked);
        for invalid in [
            TokenError::BadSignature,
            TokenError::NotYetValid,
            TokenError::Malformed("x"),
        ] {
            assert_eq!(Reason::for_token_error(&invalid), Reason::TokenInvalid);
        }
    }

    /// The README's table of reasons is what users read in `kubectl get kcr`: every reason is
    /// in it, and it names none that does not exist.
    #[test]
    fn the_readme_documents_every_reason() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let table = readme
            .split("| `Ready` | reason |")
            .nth(1)
            .expect("the README has the Ready reasons table");
        let documented: Vec<&str> = table
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .filter_map(|line| line.split('`').nth(1))
            .collect();
        let names: Vec<&str> = Reason::VARIANTS.iter().map(|r| r.as_str()).collect();
        assert_eq!(documented, names);
    }

    #[test]
    fn the_api_servers_refusal_has_one_name_everywhere() {
        assert_eq!(
            Reason::RejectedByAPIServer.as_str(),
            crate::confirm::REJECTED_BY_API_SERVER
        );
    }

    #[test]
    fn only_the_credentials_owner_or_a_revocation_revokes_and_only_causes_outside_the_request_are_retried()
     {
        let revoking: Vec<Reason> = Reason::VARIANTS
            .iter()
            .copied()
            .filter(|r| r.policy().revokes)
            .collect();
        assert_eq!(
            revoking,
            [
                Reason::ServiceAccountNotFound,
                Reason::ServiceAccountNotIssuable,
                Reason::Revoked
            ]
        );
        let retried: Vec<Reason> = Reason::VARIANTS
            .iter()
            .copied()
            .filter(|r| r.policy().retry_after.is_some())
            .collect();
        assert_eq!(retried, [Reason::IssuerUnavailable, Reason::SecondWriter]);
    }
}
