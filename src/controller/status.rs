//! What a person sees of a request: the Ready condition, its reason and message, and the Events
//! that `kubectl describe` lists. Nothing here decides; it reports what `reconcile` decided.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType},
};
use serde_json::json;
use tracing::warn;

use super::{Context, Error, FIELD_MANAGER, kube_error, source::Credential};
use crate::{
    crd::{KubeconfigRequest, KubeconfigRequestStatus},
    token::TokenError,
};

/// The Ready condition's reasons; each names what a person should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Issued,
    TokenSecretNotFound,
    TokenKeyMissing,
    TokenInvalid,
    TokenExpired,
    UserMismatch,
    SecretConflict,
    IssuerUnavailable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Issued => "Issued",
            Reason::TokenSecretNotFound => "TokenSecretNotFound",
            Reason::TokenKeyMissing => "TokenKeyMissing",
            Reason::TokenInvalid => "TokenInvalid",
            Reason::TokenExpired => "TokenExpired",
            Reason::UserMismatch => "UserMismatch",
            Reason::SecretConflict => "SecretConflict",
            Reason::IssuerUnavailable => "IssuerUnavailable",
        }
    }

    pub(super) fn for_token_error(error: &TokenError) -> Self {
        match error {
            TokenError::Expired { .. } => Reason::TokenExpired,
            TokenError::IssuerUnavailable(_) => Reason::IssuerUnavailable,
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

/// The decision for one request, after the Secret was written or the request refused.
pub(super) enum Outcome {
    Issued {
        credential: Credential,
        secret_name: String,
    },
    Refused(Refusal),
}

impl Outcome {
    fn reason(&self) -> Reason {
        match self {
            Outcome::Issued { .. } => Reason::Issued,
            Outcome::Refused(refusal) => refusal.reason,
        }
    }

    fn message(&self) -> String {
        match self {
            Outcome::Issued {
                credential,
                secret_name,
            } => format!(
                "Secret {secret_name} holds a kubeconfig for {}, valid until {}",
                credential.identity.username,
                format_time(credential.expires_at)
            ),
            Outcome::Refused(refusal) => refusal.message.clone(),
        }
    }
}

/// Patches the status subresource when it differs from what is there, and records a Warning
/// Event when the request newly fails.
pub(super) async fn update(
    request: &KubeconfigRequest,
    ctx: &Context,
    outcome: &Outcome,
) -> Result<(), Error> {
    let previous = request.ready_condition();
    let reason = outcome.reason();
    let ready = reason == Reason::Issued;
    let status_text = if ready { "True" } else { "False" };
    let unchanged_condition =
        previous.is_some_and(|c| c.status == status_text && c.reason == reason.as_str());
    let message = outcome.message();
    let condition = Condition {
        type_: "Ready".into(),
        status: status_text.into(),
        reason: reason.as_str().into(),
        message: message.clone(),
        observed_generation: request.metadata.generation,
        last_transition_time: previous
            .filter(|c| c.status == status_text)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now())),
    };
    let mut status = KubeconfigRequestStatus {
        conditions: vec![condition],
        observed_generation: request.metadata.generation,
        ..KubeconfigRequestStatus::default()
    };
    if let Outcome::Issued {
        credential,
        secret_name,
    } = outcome
    {
        status.username = Some(credential.identity.username.clone());
        status.groups = credential.identity.groups.clone();
        status.secret_name = Some(secret_name.clone());
        status.expires_at = Some(format_time(credential.expires_at));
    }
    if request.status.as_ref() == Some(&status) {
        return Ok(());
    }
    if !unchanged_condition && !ready {
        publish(ctx, request, EventType::Warning, reason, message).await;
    }
    let api: Api<KubeconfigRequest> = Api::namespaced(
        ctx.client.clone(),
        &request.namespace().ok_or(Error::NotStored)?,
    );
    let patch = json!({
        "apiVersion": KubeconfigRequest::api_version(&()),
        "kind": KubeconfigRequest::kind(&()),
        "status": status,
    });
    api.patch_status(
        &request.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_error("updating the request's status"))?;
    Ok(())
}

pub(super) fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Events are best effort: a failure to record one must not fail the reconciliation.
pub(super) async fn publish(
    ctx: &Context,
    request: &KubeconfigRequest,
    type_: EventType,
    reason: Reason,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.as_str().into(),
        note: Some(note),
        action: "Issue".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &request.object_ref(&())).await {
        warn!(request = %request.name_any(), %error, "cannot record event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors_map_to_condition_reasons() {
        let expired = TokenError::Expired { expired_at: None };
        assert_eq!(Reason::for_token_error(&expired), Reason::TokenExpired);
        let unavailable =
            TokenError::IssuerUnavailable(crate::jwks::IssuerError::Setup("x".into()));
        assert_eq!(
            Reason::for_token_error(&unavailable),
            Reason::IssuerUnavailable
        );
        for invalid in [
            TokenError::BadSignature,
            TokenError::NotYetValid,
            TokenError::Malformed("x"),
        ] {
            assert_eq!(Reason::for_token_error(&invalid), Reason::TokenInvalid);
        }
    }
}
