//! What a person sees of a request: the Ready condition, its reason and message, and the Events
//! that `kubectl describe` lists. An [`Outcome`] is built only here, from what `reconcile` and
//! the other rooms found; nothing here decides, it reports.

use std::{
    hash::{BuildHasher, RandomState},
    num::NonZeroU64,
    sync::LazyLock,
};

use chrono::Utc;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::json;

use super::{
    Context, Error, FIELD_MANAGER,
    credential::Credential,
    kube_error,
    refusal::{Reason, Refusal},
    renewals::renew_request,
};
use crate::{
    audit::{self, Action, What, Who},
    capacity::nonzero_hash,
    crd::{Format, KubeconfigRequest, KubeconfigRequestStatus, READY, status_time},
    oidc::revocations,
};

/// The decision for one request, after the Secret was written or the request refused.
pub(super) enum Outcome {
    Issued {
        credential: Credential,
        secret_name: String,
        /// Whether this reconciliation wrote the Secret (an `Issued` Event is due), rather than
        /// finding it already as it should be.
        written: bool,
    },
    /// `kept_secret` is a Secret this request wrote earlier that still exists: its credential
    /// may still be live, so status keeps naming it.
    Refused {
        refusal: Refusal,
        kept_secret: Option<String>,
    },
}

impl Outcome {
    pub(super) fn issued(credential: Credential, secret_name: &str, written: bool) -> Self {
        Outcome::Issued {
            credential,
            secret_name: secret_name.to_owned(),
            written,
        }
    }

    pub(super) fn refused(refusal: Refusal, kept_secret: Option<String>) -> Self {
        Outcome::Refused {
            refusal,
            kept_secret,
        }
    }

    /// The same refusal, naming `kept_secret` as the Secret that still holds a credential.
    pub(super) fn keeping(self, kept_secret: Option<String>) -> Self {
        match self {
            Outcome::Refused { refusal, .. } => Outcome::refused(refusal, kept_secret),
            issued @ Outcome::Issued { .. } => issued,
        }
    }

    fn reason(&self) -> Reason {
        match self {
            Outcome::Issued { .. } => Reason::Issued,
            Outcome::Refused { refusal, .. } => refusal.reason,
        }
    }

    fn message(&self, request_format: Format) -> String {
        match self {
            Outcome::Issued {
                credential,
                secret_name,
                ..
            } => match request_format {
                Format::Exec => format!(
                    "Secret {secret_name} holds a kubeconfig that logs in with kubelogin, issued for {}; it holds no token and does not expire",
                    credential.identity.username
                ),
                Format::Token | Format::ArgoCd | Format::TokenFile => format!(
                    "Secret {secret_name} holds a kubeconfig for {}, valid until {}; {}",
                    credential.identity.username,
                    status_time(credential.expires_at),
                    match credential.id(request_format) {
                        Some(id) => format!("the API server's audit log records its requests under credential id {id}"),
                        None => "its token has no jti, so the API server's audit log names no credential id for it".to_owned(),
                    }
                ),
            },
            Outcome::Refused { refusal, .. } => refusal.message.clone(),
        }
    }
}

const EXPIRING: &str = "Expiring";

/// Keyed once per process: whoever may write a request's status cannot make another status
/// collide with the one the operator is about to write, and so have the write skipped.
static DIGEST_KEYS: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// Stands for a whole status when deciding whether a write would change it: the store keeps
/// only the part of it that is read back (`stored.rs`) (heaptrack, 10,000 requests: the store was the largest
/// part of the heap, and most of a stored request was a status the controller never reads).
pub(super) fn digest(status: &KubeconfigRequestStatus) -> NonZeroU64 {
    nonzero_hash(DIGEST_KEYS.hash_one(serde_json::to_vec(status).unwrap_or_default()))
}

/// A condition that keeps its transition time while its status stays the same.
fn condition(
    request: &KubeconfigRequest,
    type_: &str,
    ready: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status_text = if ready { "True" } else { "False" };
    Condition {
        type_: type_.into(),
        status: status_text.into(),
        reason: reason.into(),
        message,
        observed_generation: request.metadata.generation,
        last_transition_time: request
            .condition(type_)
            .filter(|c| c.status == status_text)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now())),
    }
}

/// Patches the status subresource when it differs from what is there, and records a Warning
/// Event when the request newly fails or its ID token newly needs replacing. (The per-request
/// metrics are read from the stored status at each scrape.)
pub(super) async fn update(
    request: &KubeconfigRequest,
    ctx: &Context,
    outcome: &Outcome,
) -> Result<(), Error> {
    let reason = outcome.reason();
    let ready = reason == Reason::Issued;
    let newly_failing = !ready
        && request
            .ready_condition()
            .is_none_or(|c| c.status != "False" || c.reason != reason.as_str());
    let message = outcome.message(request.spec.format);
    let mut status = KubeconfigRequestStatus {
        conditions: vec![condition(
            request,
            READY,
            ready,
            reason.as_str(),
            message.clone(),
        )],
        observed_generation: request.metadata.generation,
        ..KubeconfigRequestStatus::default()
    };
    let previous = request.status.as_ref();
    let mut expiring_note = None;
    match outcome {
        Outcome::Issued {
            credential,
            secret_name,
            ..
        } => {
            status.username = Some(credential.identity.username.clone());
            status.groups = credential.identity.groups.clone();
            status.identity = credential.confirmed.as_deref().cloned();
            status.secret_name = Some(secret_name.clone());
            status.credential_id = credential.id(request.spec.format).map(str::to_owned);
            status.granted_expiration_seconds = credential.granted_seconds;
            // An exec kubeconfig holds no token: kubelogin logs in and refreshes by itself, so
            // the ID token that proved who asked for it sets no expiry and needs no renewal.
            let holds_token = request.spec.format != Format::Exec;
            if holds_token {
                status.expires_at = Some(status_time(credential.expires_at));
                status.renewal_time = Some(status_time(credential.renew_at));
            }
            // What deleting the request revokes: an ID token (a minted one dies with its Secret).
            if holds_token && credential.granted_seconds.is_none() {
                status.credential = Some(revocations::credential(
                    &credential.token,
                    &credential.identity,
                ));
            }
            // A minted token was issued after any renewal the annotation asks for.
            if credential.granted_seconds.is_some() {
                status.last_renew_request =
                    renew_request(request).ok().flatten().map(str::to_owned);
            }
            // A minted token is renewed at renew_at; only an ID token can be left to expire.
            if holds_token
                && credential.granted_seconds.is_none()
                && Utc::now() >= credential.renew_at
            {
                let note = format!(
                    "the ID token expires at {}; put a fresh token into the token Secret before then",
                    status_time(credential.expires_at)
                );
                if request
                    .condition(EXPIRING)
                    .is_none_or(|c| c.status != "True")
                {
                    expiring_note = Some(note.clone());
                }
                status
                    .conditions
                    .push(condition(request, EXPIRING, true, "TokenExpiring", note));
            }
        }
        Outcome::Refused { kept_secret, .. } => {
            status.last_renew_request = previous.and_then(|p| p.last_renew_request.clone());
            status.secret_name = kept_secret.clone();
            if kept_secret.is_some()
                && previous.and_then(|p| p.secret_name.as_ref()) == kept_secret.as_ref()
            {
                status.expires_at = previous.and_then(|p| p.expires_at.clone());
                status.credential_id = previous.and_then(|p| p.credential_id.clone());
                status.credential = previous.and_then(|p| p.credential.clone());
            }
        }
    }
    // The proxy writes the credential's last use; it stays while the credential does.
    if status.credential_id.is_some()
        && previous.is_some_and(|p| p.credential_id == status.credential_id)
    {
        status.last_used_at = previous.and_then(|p| p.last_used_at.clone());
    }
    // The Event for a written Secret goes out beside the status write, not before it: one round
    // trip fewer in every issuance. (A Warning still precedes the status that reports it.)
    let issued_event = async {
        if let Outcome::Issued { written: true, .. } = outcome {
            let note = outcome.message(request.spec.format);
            publish(ctx, request, EventType::Normal, reason.as_str(), note).await;
        }
    };
    let audit_event = audit_event(request, outcome, &status, newly_failing);
    if ctx.index.status_digest(request) == Some(digest(&status)) {
        issued_event.await;
        if let Some(event) = audit_event {
            ctx.audit.record(&event);
        }
        return Ok(());
    }
    if newly_failing {
        publish(ctx, request, EventType::Warning, reason.as_str(), message).await;
    }
    if let Some(note) = expiring_note {
        publish(ctx, request, EventType::Warning, "TokenExpiring", note).await;
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
    let (name, params) = (
        request.name_any(),
        PatchParams::apply(FIELD_MANAGER).force(),
    );
    let patch = Patch::Apply(&patch);
    let (patched, ()) = tokio::join!(api.patch_status(&name, &params, &patch), issued_event);
    patched.map_err(kube_error("updating the request's status"))?;
    if let Some(event) = audit_event {
        ctx.audit.record(&event);
    }
    Ok(())
}

/// The audit event of an outcome that hands out, replaces, refuses or takes back a credential
/// (`status` is the one being written); `None` when the credential stays as it was.
fn audit_event(
    request: &KubeconfigRequest,
    outcome: &Outcome,
    status: &KubeconfigRequestStatus,
    newly_failing: bool,
) -> Option<audit::Event> {
    let previous = request.status.as_ref();
    let what = What {
        request: Some(request.name_any()),
        namespace: request.namespace(),
        format: request.spec.format.as_str(),
    };
    match outcome {
        Outcome::Issued {
            credential,
            written: true,
            ..
        } => {
            let action = match previous.and_then(|p| p.expires_at.as_ref()) {
                None => Action::Issue,
                Some(_)
                    if previous.is_some_and(|p| {
                        p.expires_at == status.expires_at && p.credential_id == status.credential_id
                    }) =>
                {
                    return None;
                }
                Some(_) => Action::Renewal,
            };
            let mut event = audit::Event::new(action, audit::Outcome::Success, what);
            event.user = Some(Who::from(&credential.identity));
            event.credential_id = status.credential_id.clone();
            Some(event)
        }
        Outcome::Refused { refusal, .. } if newly_failing => {
            // The Secret that held a credential was deleted for this reason: taken back.
            let taken_back = refusal.reason.policy().revokes
                && previous.is_some_and(|p| p.secret_name.is_some())
                && status.secret_name.is_none();
            let action = match taken_back {
                true => Action::Revocation,
                false => Action::Refusal,
            };
            let mut event = audit::Event::new(action, audit::Outcome::Failure, what);
            event.reason = Some(refusal.reason.as_str());
            if taken_back {
                event.credential_id = previous.and_then(|p| p.credential_id.clone());
            }
            Some(event)
        }
        Outcome::Issued { .. } | Outcome::Refused { .. } => None,
    }
}

/// Records an Event on the request ([`crate::events::publish`]: best effort).
pub(super) async fn publish(
    ctx: &Context,
    request: &KubeconfigRequest,
    type_: EventType,
    reason: &str,
    note: String,
) {
    crate::events::publish(
        ctx.client.clone(),
        request.object_ref(&()),
        crate::events::Record {
            type_,
            reason,
            action: "Issue",
            note,
            controller: FIELD_MANAGER,
            instance: &ctx.reporting_instance,
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeDelta};
    use serde_json::json;

    use super::*;
    use crate::{
        controller::fixtures::{REQUEST, TARGET_SECRET, request},
        oidc::token::{CREDENTIAL_ID_KEY, IdToken, Identity},
    };

    fn credential(jti: &str, expires_at: DateTime<Utc>) -> Credential {
        Credential {
            token: IdToken::from("header.payload.signature".to_owned()),
            identity: Identity {
                username: "alice@example.com".into(),
                groups: vec!["team-a".into()],
                uid: String::new(),
                extra: [(CREDENTIAL_ID_KEY.to_owned(), vec![format!("JTI={jti}")])].into(),
                expires_at,
                issued_at: None,
            },
            expires_at,
            renew_at: expires_at,
            granted_seconds: None,
            confirmed: None,
        }
    }

    /// The status that `credential` would be reported with.
    fn issued_status(credential: &Credential) -> KubeconfigRequestStatus {
        KubeconfigRequestStatus {
            secret_name: Some(TARGET_SECRET.into()),
            expires_at: Some(status_time(credential.expires_at)),
            credential_id: credential.id(Format::Token).map(str::to_owned),
            ..KubeconfigRequestStatus::default()
        }
    }

    fn with_status(status: &KubeconfigRequestStatus) -> KubeconfigRequest {
        let mut stored = request(json!({}));
        stored.status = Some(status.clone());
        stored
    }

    #[test]
    fn a_new_credential_is_an_issue_a_replaced_one_a_renewal_and_a_rewrite_nothing() {
        let expires = Utc::now() + TimeDelta::hours(1);
        let first = credential("one", expires);
        let status = issued_status(&first);
        let outcome = Outcome::issued(first, TARGET_SECRET, true);
        let event = audit_event(&request(json!({})), &outcome, &status, false).unwrap();
        let line = serde_json::to_value(&event).unwrap();
        assert_eq!(line["action"], "issue");
        assert_eq!(line["outcome"], "success");
        assert_eq!(line["credentialId"], "JTI=one");
        assert_eq!(line["user"]["username"], "alice@example.com");
        assert_eq!(line["object"]["request"], REQUEST);
        assert_eq!(line["object"]["format"], "token");
        assert!(!line.to_string().contains("signature"), "{line}");

        let stored = with_status(&status);
        assert!(audit_event(&stored, &outcome, &status, false).is_none());
        let second = credential("two", expires + TimeDelta::hours(1));
        let renewed = issued_status(&second);
        let outcome = Outcome::issued(second, TARGET_SECRET, true);
        let event = audit_event(&stored, &outcome, &renewed, false).unwrap();
        assert_eq!(event.action, Action::Renewal);
        assert_eq!(event.credential_id.as_deref(), Some("JTI=two"));
    }

    #[test]
    fn a_refusal_that_deletes_the_secret_is_a_revocation_of_its_credential() {
        let status = issued_status(&credential("one", Utc::now()));
        let stored = with_status(&status);
        let refused = KubeconfigRequestStatus::default();
        let revoked = Outcome::refused(Refusal::new(Reason::Revoked, "revoked"), None);
        let event = audit_event(&stored, &revoked, &refused, true).unwrap();
        assert_eq!(
            (event.action, event.outcome, event.reason),
            (Action::Revocation, audit::Outcome::Failure, Some("Revoked"))
        );
        assert_eq!(event.credential_id.as_deref(), Some("JTI=one"));

        let missing = Outcome::refused(Refusal::new(Reason::TokenSecretNotFound, "gone"), None);
        let event = audit_event(&request(json!({})), &missing, &refused, true).unwrap();
        assert_eq!(event.action, Action::Refusal);
        assert_eq!(event.credential_id, None);
        // Reported once, when it starts failing.
        assert!(audit_event(&stored, &missing, &refused, false).is_none());
    }
}
