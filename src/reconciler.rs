//! The controller: turns each `KubeconfigRequest` into a kubeconfig Secret and reports the outcome
//! in status conditions and Events.
//!
//! A refusal (missing Secret, bad token, conflict) is an outcome, not an error: it is written to the
//! status with a reason a person can act on, and the request waits for a change. Only failures to
//! talk to the API server are errors; those are retried with a growing delay.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::{
    config::KubeconfigSettings,
    crd::{KubeconfigRequest, KubeconfigRequestStatus},
    kubeconfig,
    metrics::{Metrics, ReasonLabels},
    token::{IdToken, Identity, TokenError, Verifier},
};

/// The single field manager for everything the operator writes, so server-side apply knows which
/// fields are ours.
pub const FIELD_MANAGER: &str = "kubeconfig-operator";
/// Key of the written Secret that holds the kubeconfig.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
pub const REQUEST_LABEL: &str = "kubeconfig.dev/request";
pub const USER_LABEL: &str = "kubeconfig.dev/user";
pub const USERNAME_ANNOTATION: &str = "kubeconfig.dev/username";
pub const EXPIRES_ANNOTATION: &str = "kubeconfig.dev/expires-at";

/// How soon to look again when the issuer could not be reached.
const ISSUER_RETRY: Duration = Duration::from_secs(15);
/// Bounds of the per-request retry delay after API errors.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why a reconciliation could not finish; all of these are worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed while {action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("cannot render the kubeconfig: {0}")]
    Render(#[from] crate::yaml::Error),
    #[error("the request has no namespace or uid; it is not a stored object")]
    NotStored,
}

impl Error {
    fn kind(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubeApi",
            Error::Render(_) => "Render",
            Error::NotStored => "NotStored",
        }
    }
}

fn kube_error(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

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

    fn for_token_error(error: &TokenError) -> Self {
        match error {
            TokenError::Expired { .. } => Reason::TokenExpired,
            TokenError::IssuerUnavailable(_) => Reason::IssuerUnavailable,
            _ => Reason::TokenInvalid,
        }
    }
}

/// What the reconciler shares with every reconciliation.
pub struct Context {
    pub client: Client,
    pub verifier: Arc<Verifier>,
    pub settings: KubeconfigSettings,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per request, for exponential backoff in `error_policy`.
    failures: Mutex<HashMap<ObjectRef<KubeconfigRequest>, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        verifier: Arc<Verifier>,
        settings: KubeconfigSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            verifier,
            settings,
            metrics,
            failures: Mutex::default(),
        }
    }

    fn record_success(&self, request: &ObjectRef<KubeconfigRequest>) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(request);
        }
    }

    fn next_backoff(&self, request: ObjectRef<KubeconfigRequest>) -> Duration {
        let attempts = match self.failures.lock() {
            Ok(mut failures) => {
                let attempts = failures.entry(request).or_insert(0);
                *attempts = attempts.saturating_add(1);
                *attempts
            }
            Err(_) => 1,
        };
        let exponent = attempts.saturating_sub(1).min(16);
        MIN_BACKOFF.saturating_mul(1 << exponent).min(MAX_BACKOFF)
    }
}

/// The decision for one request, before anything is written.
struct Outcome {
    reason: Reason,
    message: String,
    identity: Option<Identity>,
    secret_name: Option<String>,
}

impl Outcome {
    fn refused(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            identity: None,
            secret_name: None,
        }
    }
}

pub async fn reconcile(
    request: Arc<KubeconfigRequest>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.metrics.reconciliations.inc();
    let started = Instant::now();
    let result = reconcile_inner(&request, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.record_success(&ObjectRef::from_obj(request.as_ref()));
    }
    result
}

pub fn error_policy(request: Arc<KubeconfigRequest>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ReasonLabels {
            reason: error.kind(),
        })
        .inc();
    let delay = ctx.next_backoff(ObjectRef::from_obj(request.as_ref()));
    warn!(request = %request.name_any(), namespace = ?request.namespace(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_inner(request: &KubeconfigRequest, ctx: &Context) -> Result<Action, Error> {
    if request.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = request.namespace().ok_or(Error::NotStored)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);

    let outcome = decide(request, ctx, &secrets).await?;
    let outcome = match outcome {
        Ok((identity, token)) => write_secret(request, ctx, &secrets, identity, &token).await?,
        Err(refusal) => refusal,
    };
    update_status(request, ctx, &outcome).await?;

    let now = Utc::now();
    Ok(match (&outcome.reason, &outcome.identity) {
        (Reason::Issued, Some(identity)) => {
            // Wake at expiry to report TokenExpired; the Secret stays for inspection.
            let until_expiry = (identity.expires_at - now).to_std().unwrap_or_default();
            Action::requeue(until_expiry + Duration::from_secs(1))
        }
        (Reason::IssuerUnavailable, _) => Action::requeue(ISSUER_RETRY),
        _ => Action::await_change(),
    })
}

/// Reads the referenced token and validates it; `Err` carries the refusal to report.
async fn decide(
    request: &KubeconfigRequest,
    ctx: &Context,
    secrets: &Api<Secret>,
) -> Result<Result<(Identity, IdToken), Outcome>, Error> {
    let reference = &request.spec.token_secret_ref;
    let Some(token_secret) = secrets
        .get_opt(&reference.name)
        .await
        .map_err(kube_error("reading the token Secret"))?
    else {
        return Ok(Err(Outcome::refused(
            Reason::TokenSecretNotFound,
            format!(
                "Secret {:?} does not exist in this namespace; create it with the ID token under key {:?}",
                reference.name, reference.key
            ),
        )));
    };
    let raw = token_secret
        .data
        .as_ref()
        .and_then(|data| data.get(&reference.key))
        .map(|bytes| bytes.0.as_slice())
        .filter(|bytes| !bytes.is_empty());
    let Some(raw) = raw else {
        return Ok(Err(Outcome::refused(
            Reason::TokenKeyMissing,
            format!(
                "Secret {:?} has no non-empty key {:?}",
                reference.name, reference.key
            ),
        )));
    };
    let Ok(text) = std::str::from_utf8(raw) else {
        ctx.metrics.count_token_failure("Malformed");
        return Ok(Err(Outcome::refused(
            Reason::TokenInvalid,
            format!(
                "Malformed: key {:?} of Secret {:?} is not text",
                reference.key, reference.name
            ),
        )));
    };
    let token = IdToken::from(text.trim().to_owned());
    let identity = match ctx.verifier.verify(&token).await {
        Ok(identity) => identity,
        Err(error) => {
            ctx.metrics.count_token_failure(error.reason());
            return Ok(Err(Outcome::refused(
                Reason::for_token_error(&error),
                format!("{}: {error}", error.reason()),
            )));
        }
    };
    if let Some(expected) = &request.spec.user
        && expected != &identity.username
    {
        return Ok(Err(Outcome::refused(
            Reason::UserMismatch,
            format!(
                "the token belongs to {:?}, but spec.user asks for {expected:?}",
                identity.username
            ),
        )));
    }
    Ok(Ok((identity, token)))
}

/// Writes the kubeconfig Secret unless it already holds exactly this content, and refuses to
/// touch a Secret that some other owner controls.
async fn write_secret(
    request: &KubeconfigRequest,
    ctx: &Context,
    secrets: &Api<Secret>,
    identity: Identity,
    token: &IdToken,
) -> Result<Outcome, Error> {
    let owner = request.controller_owner_ref(&()).ok_or(Error::NotStored)?;
    let secret_name = request
        .spec
        .secret_name
        .clone()
        .unwrap_or_else(|| derived_secret_name(&identity.username));
    let existing = secrets
        .get_opt(&secret_name)
        .await
        .map_err(kube_error("reading the kubeconfig Secret"))?;
    if let Some(existing) = &existing
        && !is_controlled_by(existing, &owner)
    {
        return Ok(Outcome::refused(
            Reason::SecretConflict,
            format!(
                "Secret {secret_name:?} already exists and is not owned by this request; choose another spec.secretName or delete that Secret"
            ),
        ));
    }

    let rendered = kubeconfig::render(
        &ctx.settings,
        token,
        request
            .spec
            .namespace
            .as_deref()
            .or(ctx.settings.default_namespace.as_deref()),
    )?;
    let desired = desired_secret(request, &identity, &secret_name, owner, rendered);
    if existing
        .as_ref()
        .is_none_or(|existing| !already_matches(existing, &desired))
    {
        secrets
            .patch(
                &secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
            .map_err(kube_error("applying the kubeconfig Secret"))?;
        info!(request = %request.name_any(), secret = %secret_name, user = %identity.username, "kubeconfig Secret written");
        publish(
            ctx,
            request,
            EventType::Normal,
            Reason::Issued,
            format!(
                "Wrote a kubeconfig for {} to Secret {secret_name}, valid until {}",
                identity.username,
                identity.expires_at.to_rfc3339()
            ),
        )
        .await;
    }
    Ok(Outcome {
        reason: Reason::Issued,
        message: format!(
            "Secret {secret_name} holds a kubeconfig for {}, valid until {}",
            identity.username,
            identity.expires_at.to_rfc3339()
        ),
        identity: Some(identity),
        secret_name: Some(secret_name),
    })
}

fn is_controlled_by(secret: &Secret, owner: &OwnerReference) -> bool {
    secret
        .owner_references()
        .iter()
        .any(|reference| reference.controller == Some(true) && reference.uid == owner.uid)
}

fn desired_secret(
    request: &KubeconfigRequest,
    identity: &Identity,
    secret_name: &str,
    owner: OwnerReference,
    kubeconfig: String,
) -> Secret {
    let template = request.spec.secret_template.clone().unwrap_or_default();
    let mut labels = template.labels;
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels.insert(REQUEST_LABEL.into(), label_value(&request.name_any()));
    labels.insert(USER_LABEL.into(), label_value(&identity.username));
    let mut annotations = template.annotations;
    annotations.insert(USERNAME_ANNOTATION.into(), identity.username.clone());
    annotations.insert(EXPIRES_ANNOTATION.into(), identity.expires_at.to_rfc3339());
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.to_owned()),
            namespace: request.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            KUBECONFIG_KEY.to_owned(),
            ByteString(kubeconfig.into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// True when applying `desired` would change nothing we manage, so GitOps diffs and watchers stay
/// quiet on resyncs.
fn already_matches(existing: &Secret, desired: &Secret) -> bool {
    let contains_all = |have: Option<&BTreeMap<String, String>>,
                        want: Option<&BTreeMap<String, String>>| {
        want.into_iter()
            .flatten()
            .all(|(key, value)| have.and_then(|have| have.get(key)) == Some(value))
    };
    existing.data == desired.data
        && existing.type_ == desired.type_
        && contains_all(
            existing.metadata.labels.as_ref(),
            desired.metadata.labels.as_ref(),
        )
        && contains_all(
            existing.metadata.annotations.as_ref(),
            desired.metadata.annotations.as_ref(),
        )
}

async fn update_status(
    request: &KubeconfigRequest,
    ctx: &Context,
    outcome: &Outcome,
) -> Result<(), Error> {
    let previous = request.ready_condition();
    let ready = outcome.reason == Reason::Issued;
    let status_text = if ready { "True" } else { "False" };
    let unchanged_condition =
        previous.is_some_and(|c| c.status == status_text && c.reason == outcome.reason.as_str());
    let condition = Condition {
        type_: "Ready".into(),
        status: status_text.into(),
        reason: outcome.reason.as_str().into(),
        message: outcome.message.clone(),
        observed_generation: request.metadata.generation,
        last_transition_time: previous
            .filter(|c| c.status == status_text)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now())),
    };
    let status = KubeconfigRequestStatus {
        conditions: vec![condition],
        username: outcome.identity.as_ref().map(|i| i.username.clone()),
        groups: outcome
            .identity
            .as_ref()
            .map(|i| i.groups.clone())
            .unwrap_or_default(),
        secret_name: outcome.secret_name.clone(),
        expires_at: outcome.identity.as_ref().map(|i| format_time(i.expires_at)),
        observed_generation: request.metadata.generation,
    };
    if request.status.as_ref() == Some(&status) {
        return Ok(());
    }
    if !unchanged_condition && !ready {
        publish(
            ctx,
            request,
            EventType::Warning,
            outcome.reason,
            outcome.message.clone(),
        )
        .await;
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

fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Events are best effort: a failure to record one must not fail the reconciliation.
async fn publish(
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

/// `kubeconfig-<readable part of the username>-<hash>`: stable for a user, distinct between users
/// whose names differ only in characters a Secret name cannot hold.
pub fn derived_secret_name(username: &str) -> String {
    let readable = dns_safe(username, 40);
    let hash = short_hash(username);
    if readable.is_empty() {
        format!("kubeconfig-{hash}")
    } else {
        format!("kubeconfig-{readable}-{hash}")
    }
}

/// A label value (at most 63 characters of `[a-z0-9A-Z._-]`) standing for `value`; when the value
/// has to be altered to fit, a hash keeps distinct values distinct.
pub fn label_value(value: &str) -> String {
    let fits = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric());
    if fits {
        return value.to_owned();
    }
    let readable = dns_safe(value, 54);
    let hash = short_hash(value);
    if readable.is_empty() {
        hash
    } else {
        format!("{readable}-{hash}")
    }
}

fn dns_safe(value: &str, max: usize) -> String {
    let mut out = String::with_capacity(max);
    for c in value.chars().flat_map(char::to_lowercase) {
        if out.len() >= max {
            break;
        }
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

fn short_hash(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .take(4)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Runs the controller until `shutdown` resolves. `ready` turns true once the request cache is
/// synced, which is what `/readyz` reports.
pub async fn run(
    ctx: Arc<Context>,
    watch_namespace: Option<&str>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (requests, secrets): (Api<KubeconfigRequest>, Api<Secret>) = match watch_namespace {
        Some(namespace) => (
            Api::namespaced(ctx.client.clone(), namespace),
            Api::namespaced(ctx.client.clone(), namespace),
        ),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let controller = Controller::new(requests, watcher::Config::default().any_semantic());
    let store = controller.store();
    let mapper_store = store.clone();
    tokio::spawn(async move {
        // Each wait is bounded and repeated: with the controller's applier waiting on the same
        // store, a single long wait here was observed never to wake (kube-runtime 5.0).
        loop {
            match tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    ready.store(true, Ordering::Relaxed);
                    info!("request cache synced");
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) => continue,
            }
        }
    });
    controller
        .watches(
            secrets,
            watcher::Config::default().any_semantic(),
            move |secret| requests_affected_by(&mapper_store, &secret),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// A Secret matters to a request when it is the request's token Secret or the Secret the request
/// wrote (someone edited or deleted it).
fn requests_affected_by(
    store: &Store<KubeconfigRequest>,
    secret: &Secret,
) -> Vec<ObjectRef<KubeconfigRequest>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    let owners: Vec<&str> = secret
        .owner_references()
        .iter()
        .filter(|owner| owner.kind == "KubeconfigRequest")
        .map(|owner| owner.uid.as_str())
        .collect();
    store
        .state()
        .into_iter()
        .filter(|request| request.namespace() == namespace)
        .filter(|request| {
            request.spec.token_secret_ref.name == name
                || request
                    .uid()
                    .is_some_and(|uid| owners.contains(&uid.as_str()))
        })
        .map(|request| ObjectRef::from_obj(request.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_secret_names_are_dns_safe_stable_and_distinct() {
        let alice = derived_secret_name("alice@example.com");
        assert!(alice.starts_with("kubeconfig-alice-example-com-"));
        assert_eq!(alice, derived_secret_name("alice@example.com"));
        assert_ne!(alice, derived_secret_name("alice.example.com"));
        for name in ["alice@example.com", "oidc:Bob", "ÜÜÜ", "", &"x".repeat(500)] {
            let derived = derived_secret_name(name);
            assert!(derived.len() <= 63, "{derived}");
            assert!(crate::config::is_dns_label(&derived), "{derived}");
        }
    }

    #[test]
    fn label_values_fit_kubernetes_rules() {
        assert_eq!(label_value("alice-request"), "alice-request");
        let altered = label_value("alice@example.com");
        assert!(altered.starts_with("alice-example-com-"));
        assert_ne!(altered, label_value("alice.example@com"));
        assert!(label_value(&"a".repeat(100)).len() <= 63);
        assert!(!label_value("-x-").starts_with('-'));
    }

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

    #[test]
    fn unchanged_secret_is_not_rewritten() {
        let desired = Secret {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([("a".into(), "1".into())])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                "kubeconfig".into(),
                ByteString(b"x".to_vec()),
            )])),
            ..Secret::default()
        };
        let mut existing = desired.clone();
        existing
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("added-by-someone".into(), "y".into());
        assert!(already_matches(&existing, &desired));
        existing.data = Some(BTreeMap::from([(
            "kubeconfig".into(),
            ByteString(b"old".to_vec()),
        )]));
        assert!(!already_matches(&existing, &desired));
    }
}
