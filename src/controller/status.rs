//! What a person sees of a request: the Ready condition, its reason and message, and the Events
//! that `kubectl describe` lists. An [`Outcome`] is built only here, from what `reconcile` and
//! the other rooms found; nothing here decides, it reports.

use chrono::{DateTime, Utc};
use k8s_openapi::{
    api::events::v1::Event,
    apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta, Time},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::events::EventType,
};
use serde_json::json;
use tracing::warn;

use super::{
    Context, Error, FIELD_MANAGER,
    credential::Credential,
    kube_error,
    refusal::{Reason, Refusal},
    renewals::renew_request,
};
use crate::{
    crd::{Format, KubeconfigRequest, KubeconfigRequestStatus},
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
                    "Secret {secret_name} holds a kubeconfig for {}, valid until {}",
                    credential.identity.username,
                    format_time(credential.expires_at)
                ),
            },
            Outcome::Refused { refusal, .. } => refusal.message.clone(),
        }
    }
}

const READY: &str = "Ready";
const EXPIRING: &str = "Expiring";

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
            status.granted_expiration_seconds = credential.granted_seconds;
            // An exec kubeconfig holds no token: kubelogin logs in and refreshes by itself, so
            // the ID token that proved who asked for it sets no expiry and needs no renewal.
            let holds_token = request.spec.format != Format::Exec;
            if holds_token {
                status.expires_at = Some(format_time(credential.expires_at));
                status.renewal_time = Some(format_time(credential.renew_at));
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
                    format_time(credential.expires_at)
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
            let previous = request.status.as_ref();
            status.last_renew_request = previous.and_then(|p| p.last_renew_request.clone());
            status.secret_name = kept_secret.clone();
            if kept_secret.is_some()
                && previous.and_then(|p| p.secret_name.as_ref()) == kept_secret.as_ref()
            {
                status.expires_at = previous.and_then(|p| p.expires_at.clone());
                status.credential = previous.and_then(|p| p.credential.clone());
            }
        }
    }
    // The Event for a written Secret goes out beside the status write, not before it: one round
    // trip fewer in every issuance. (A Warning still precedes the status that reports it.)
    let issued_event = async {
        if let Outcome::Issued { written: true, .. } = outcome {
            let note = outcome.message(request.spec.format);
            publish(ctx, request, EventType::Normal, reason.as_str(), note).await;
        }
    };
    if request.status.as_ref() == Some(&status) {
        issued_event.await;
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
    Ok(())
}

pub(super) fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The longest note the API server accepts on an Event.
const MAX_NOTE_BYTES: usize = 1024;

/// Records an Event on the request. Events are best effort: a failure to record one must not
/// fail the reconciliation. They are written directly rather than through kube's `Recorder`,
/// whose series cache keeps every Event for six minutes after the request is gone; the
/// controller only records transitions, so it has no repeats to fold into a series.
pub(super) async fn publish(
    ctx: &Context,
    request: &KubeconfigRequest,
    type_: EventType,
    reason: &str,
    mut note: String,
) {
    let Some(namespace) = request.namespace() else {
        return;
    };
    if note.len() > MAX_NOTE_BYTES {
        let mut end = MAX_NOTE_BYTES;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    let now = k8s_openapi::jiff::Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            // As client-go names Events: the object's name and a nanosecond timestamp.
            name: Some(format!("{}.{:x}", request.name_any(), now.as_nanosecond())),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(
            match type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_owned(),
        ),
        reason: Some(reason.to_owned()),
        note: Some(note),
        action: Some("Issue".to_owned()),
        regarding: Some(request.object_ref(&())),
        reporting_controller: Some(FIELD_MANAGER.to_owned()),
        reporting_instance: Some(ctx.reporting_instance.clone()),
        ..Event::default()
    };
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Err(error) = events.create(&PostParams::default(), &event).await {
        warn!(request = %request.name_any(), %error, "cannot record event");
    }
}
