//! The controller: turns each `KubeconfigRequest` into a kubeconfig Secret and reports the outcome
//! in status conditions and Events. `reconcile` reads like the steps it takes: find the
//! credential (`source`), have the API server confirm it (`crate::confirm`), write the Secret
//! (`secret`), report (`status`).
//!
//! A refusal (missing Secret, bad token, conflict) is an outcome, not an error: it is written to the
//! status with a reason a person can act on, and the request waits for a change. Only failures to
//! talk to the API server are errors; those are retried with a growing delay.

mod cache;
mod creator;
mod credential;
mod index;
mod key;
pub mod leader;
mod refusal;
mod renewals;
mod revoke;
mod secret;
mod slots;
mod source;
mod status;
mod stored;
mod watch;

#[cfg(test)]
pub(crate) mod fixtures;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use k8s_openapi::{
    api::{authentication::v1::SelfSubjectReview, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{Api, Client, Resource, ResourceExt, api::PostParams, runtime::controller::Action};
use tracing::{debug, warn};

pub use credential::Credential;
pub use refusal::{Reason, Refusal};
pub use secret::{
    CREDENTIAL_ID_ANNOTATION, EXPIRES_ANNOTATION, KUBECONFIG_KEY, REQUEST_LABEL, USER_LABEL,
    USERNAME_ANNOTATION, WRITER_ANNOTATION, label_value,
};
pub use slots::PER_NAMESPACE_CONCURRENCY;
pub use source::ISSUABLE_ANNOTATION;
pub use watch::run;

use crate::{
    audit::AuditLog,
    config::{ControllerSettings, KubeconfigSettings},
    confirm::{ConfirmError, Confirmer},
    crd::{Format, KubeconfigRequest, TokenSecretRef},
    metrics::{Metrics, ReasonLabels},
    oidc::authenticator::Authenticator,
};
use secret::Existing;
use status::Outcome;
use stored::{Request, StoredRequest};

/// The single field manager for everything the operator writes, so server-side apply knows which
/// fields are ours.
pub const FIELD_MANAGER: &str = "kubeconfig-operator";

/// Bounds of the per-request retry delay after API errors.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why a reconciliation could not finish; all of these are worth retrying.
#[derive(Debug, thiserror::Error, strum::IntoStaticStr)]
pub enum Error {
    #[error("Kubernetes API call failed while {action}: {source}")]
    #[strum(serialize = "KubeApi")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("cannot render the kubeconfig: {0}")]
    Render(#[from] crate::kubeconfig::Error),
    #[error("the request has no namespace or uid; it is not a stored object")]
    NotStored,
    #[error("the API server answered a TokenRequest without a token")]
    NoTokenMinted,
    #[error(transparent)]
    Confirm(ConfirmError),
    #[error(transparent)]
    Stored(stored::Unreadable),
}

impl Error {
    /// The API server refused a write because the namespace is terminating; it says so only in
    /// the message (the status cause `NamespaceTerminating` is not surfaced by kube's error).
    fn is_namespace_terminating(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(status), .. }
            if status.code == 403 && status.message.contains("because it is being terminated"))
    }

    /// The metrics label of a failed reconciliation: the variant's name.
    fn kind(&self) -> &'static str {
        self.into()
    }
}

fn kube_error(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

/// What the reconciler shares with every reconciliation.
pub struct Context {
    pub client: Client,
    /// Shared with the HTTP server: one verdict per token for the whole process.
    pub authenticator: Arc<Authenticator>,
    /// What kubeconfigs holding an ID token name (the proxy, when configured).
    pub settings: KubeconfigSettings,
    /// What kubeconfigs holding a minted ServiceAccount token name: the API server itself.
    pub api_server_settings: KubeconfigSettings,
    pub controller: ControllerSettings,
    /// Names this replica in the Events it records (`reportingInstance`).
    pub reporting_instance: String,
    pub metrics: Arc<Metrics>,
    /// Asks the API server about each credential before it is written; `None` when
    /// confirmation is turned off.
    confirmer: Option<Confirmer>,
    /// Consecutive failures per request, for exponential backoff in `error_policy`.
    failures: Mutex<HashMap<Request, u32>>,
    token_reads: cache::SecretReads<source::TokenSecretData>,
    namespaces: slots::Slots,
    index: index::RequestIndex,
    renewals: Arc<renewals::Renewals>,
    /// Who this installation is (its credential's username), once asked; see [`Context::writer`].
    writer: tokio::sync::OnceCell<String>,
    /// Where each credential issued, renewed, refused or revoked is recorded (`audit.path`).
    audit: Arc<AuditLog>,
}

impl Context {
    pub fn new(
        client: Client,
        authenticator: Arc<Authenticator>,
        settings: KubeconfigSettings,
        api_server_settings: KubeconfigSettings,
        controller: ControllerSettings,
        metrics: Arc<Metrics>,
        confirmer: Option<Confirmer>,
    ) -> Self {
        Self {
            reporting_instance: std::env::var("POD_NAME")
                .unwrap_or_else(|_| FIELD_MANAGER.to_owned()),
            client,
            authenticator,
            settings,
            api_server_settings,
            controller,
            metrics,
            confirmer,
            failures: Mutex::default(),
            token_reads: cache::SecretReads::default(),
            namespaces: slots::Slots::default(),
            index: index::RequestIndex::default(),
            renewals: Arc::default(),
            writer: tokio::sync::OnceCell::new(),
            audit: Arc::default(),
        }
    }

    /// The username the API server gives this operator's credential, asked once: it marks each
    /// Secret this installation writes, so that a second installation whose scope overlaps is
    /// told apart from a replica of this one taking over (replicas share the ServiceAccount).
    async fn writer(&self) -> Result<&str, Error> {
        self.writer
            .get_or_try_init(|| async {
                let review = Api::<SelfSubjectReview>::all(self.client.clone())
                    .create(&PostParams::default(), &SelfSubjectReview::default())
                    .await
                    .map_err(kube_error("asking the API server who this operator is"))?;
                Ok(review
                    .status
                    .and_then(|status| status.user_info)
                    .and_then(|user| user.username)
                    .unwrap_or_default())
            })
            .await
            .map(String::as_str)
    }

    /// The context with its outcomes recorded in `audit`.
    pub fn with_audit(self, audit: Arc<AuditLog>) -> Self {
        Self { audit, ..self }
    }

    /// Drops everything kept for requests that no longer exist: backoff counts, wake-ups, idle
    /// namespace slots, cached reads of Secrets that no request names any more (or that nobody
    /// used since the last sweep). Runs against the index, so it costs time linear in what is
    /// kept, however many requests there are.
    fn forget_deleted(&self) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.retain(|reference, _| self.index.contains(reference));
            crate::capacity::release_spare_capacity(&mut failures);
        }
        self.renewals
            .retain(|reference| self.index.contains(reference));
        self.namespaces
            .retain(|namespace| self.index.has_namespace(namespace));
        self.token_reads
            .retain(|key| self.index.is_token_secret(key));
        self.token_reads.forget_unused(watch::SWEEP_INTERVAL);
        self.index.release_spare_capacity();
        // The authenticator's verdicts and the Confirmer's answers are shared with the HTTP
        // server, which sweeps them on every replica, leader or not.
    }

    /// Called when the controller finds a request gone: its retry state, wake-up and place in
    /// its namespace's line go too.
    fn forget(&self, request: &Request) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(request);
        }
        self.renewals.cancel(request);
        self.namespaces.abandon(request);
    }

    #[cfg(test)]
    fn tracked_failures(&self) -> usize {
        self.failures
            .lock()
            .map(|failures| failures.len())
            .unwrap_or(0)
    }

    fn record_success(&self, request: &Request) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(request);
        }
    }

    fn next_backoff(&self, request: Request) -> Duration {
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

/// A request whose namespace has no free slot ends here and waits in line (`slots.rs`), to be
/// woken when a slot is handed to it.
pub async fn reconcile(stored: Arc<StoredRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let request = stored::reference(stored.as_ref());
    let Some(_slot) = ctx.namespaces.take(&request) else {
        return Ok(Action::await_change());
    };
    ctx.metrics.reconciliations.inc();
    let started = Instant::now();
    let result = reconcile_stored(&stored, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.record_success(&request);
    }
    result
}

pub fn error_policy(request: Arc<StoredRequest>, error: &Error, ctx: Arc<Context>) -> Action {
    // The namespace is being deleted, and the request with it: retrying would only re-create
    // what the garbage collector is removing (the API server refuses that with 403).
    if error.is_namespace_terminating() {
        debug!(request = %request.name_any(), namespace = ?request.namespace(), "namespace is being deleted; not retrying");
        return Action::await_change();
    }
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ReasonLabels {
            reason: error.kind(),
        })
        .inc();
    let delay = ctx.next_backoff(stored::reference(request.as_ref()));
    warn!(request = %request.name_any(), namespace = ?request.namespace(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_stored(stored: &StoredRequest, ctx: &Context) -> Result<Action, Error> {
    let request = stored.request().map_err(Error::Stored)?;
    reconcile_inner(&request, ctx).await
}

async fn reconcile_inner(request: &KubeconfigRequest, ctx: &Context) -> Result<Action, Error> {
    if request.meta().deletion_timestamp.is_some() {
        return revoke::on_deletion(request, ctx).await;
    }
    let namespace = request.namespace().ok_or(Error::NotStored)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let owner = request.controller_owner_ref(&()).ok_or(Error::NotStored)?;
    let target = secret::target_name(request);
    let outcome = if let Some(reference) = secret::unissued_id_token(request) {
        issue_unread(request, reference, ctx, &secrets, &target, &owner).await?
    } else {
        let existing = secret::read(&secrets, &target).await?;
        match secret::ours(request, &owner, existing) {
            Err(conflict) => Outcome::refused(conflict, None),
            // Another installation overwrote this request's Secret; until it is deleted,
            // neither writes it again, nor mints for it, nor reports anything: the status says
            // it already. Written again, a report read from a store that has not yet caught up
            // would take back the Issued this installation wrote once the Secret was deleted.
            Ok(Some(_)) if secret::second_writer_reported(request) => {
                ctx.renewals.cancel(&stored::reference(request));
                return Ok(Action::requeue(refusal::SECOND_WRITER_RECHECK));
            }
            Ok(ours) => {
                let credential = match (
                    &request.spec.token_secret_ref,
                    &request.spec.service_account,
                ) {
                    (Some(reference), _) => {
                        source::id_token(request, reference, ctx, &secrets).await?
                    }
                    (None, Some(account)) => {
                        source::service_account(
                            request,
                            account,
                            ctx,
                            &secrets,
                            &target,
                            ours.as_ref(),
                        )
                        .await?
                    }
                    (None, None) => Err(Refusal::new(
                        Reason::InvalidSpec,
                        "set spec.tokenSecretRef or spec.serviceAccount",
                    )),
                };
                let credential = confirmed(ctx, credential).await?;
                // An exec kubeconfig holds no token and logs in by itself: the ID token that
                // proved who asked for it may expire without the kubeconfig stopping. Only a
                // changed spec (a new generation) needs a live one again.
                if let Err(refusal) = &credential
                    && refusal.reason == Reason::TokenExpired
                    && request.spec.format == Format::Exec
                    && ours.is_some()
                    && request.ready_condition().is_some_and(|ready| {
                        ready.status == "True"
                            && ready.observed_generation == request.metadata.generation
                    })
                {
                    return Ok(Action::await_change());
                }
                match credential {
                    Ok(credential) => {
                        issue(request, ctx, &secrets, &target, ours.as_ref(), credential).await?
                    }
                    Err(refusal) => {
                        refused(request, ctx, &secrets, &target, ours.as_ref(), refusal).await?
                    }
                }
            }
        }
    };
    let outcome = secret::settle_previous(request, ctx, &secrets, &target, &owner, outcome).await?;
    status::update(request, ctx, &outcome).await?;

    let reference = stored::reference(request);
    Ok(match &outcome {
        // Nothing in an exec kubeconfig is due: kubelogin renews its own tokens.
        Outcome::Issued { .. } if request.spec.format == Format::Exec => {
            ctx.renewals.cancel(&reference);
            Action::await_change()
        }
        Outcome::Issued { credential, .. } => {
            // Wake at the renewal time (a ServiceAccount token is replaced, an ID token reported
            // Expiring), then at expiry to report TokenExpired.
            let now = Utc::now();
            let next = if credential.renew_at > now {
                credential.renew_at
            } else {
                credential.expires_at
            };
            let wait = (next - now).to_std().unwrap_or_default() + Duration::from_secs(1);
            // A request the index no longer knows was deleted meanwhile: nothing is due.
            if let Some(filed) = ctx.index.filed(&reference) {
                ctx.renewals
                    .schedule(filed, tokio::time::Instant::now() + wait);
            }
            Action::await_change()
        }
        Outcome::Refused { refusal, .. } => {
            ctx.renewals.cancel(&reference);
            match refusal.reason.policy().retry_after {
                Some(delay) => Action::requeue(delay),
                None => Action::await_change(),
            }
        }
    })
}

/// A credential the API server has not yet confirmed goes to it (unless confirmation is off).
async fn confirmed(
    ctx: &Context,
    credential: Result<Credential, Refusal>,
) -> Result<Result<Credential, Refusal>, Error> {
    match credential {
        Ok(credential) if credential.confirmed.is_none() => source::confirm(ctx, credential).await,
        judged => Ok(judged),
    }
}

/// Writes `credential` into the Secret, which is absent or `ours`, once the request holds the
/// finalizer that revokes an ID token when the request is deleted.
async fn issue(
    request: &KubeconfigRequest,
    ctx: &Context,
    secrets: &Api<Secret>,
    target: &str,
    ours: Option<&Secret>,
    credential: Credential,
) -> Result<Outcome, Error> {
    if revoke::holds_id_token(request) {
        revoke::hold(request, ctx).await?;
    }
    write(request, ctx, secrets, target, ours, credential).await
}

/// [`issue`] past the finalizer: a Secret this request wrote earlier stays named in status if
/// the write is refused, since its credential may still be live.
async fn write(
    request: &KubeconfigRequest,
    ctx: &Context,
    secrets: &Api<Secret>,
    target: &str,
    ours: Option<&Secret>,
    credential: Credential,
) -> Result<Outcome, Error> {
    Ok(
        match secret::write(
            request,
            ctx,
            secrets,
            target,
            Existing::Read(ours),
            &credential,
        )
        .await?
        {
            Ok(written) => Outcome::issued(credential, target, written),
            Err(refusal) => Outcome::refused(refusal, ours.map(|_| target.to_owned())),
        },
    )
}

/// A refused credential: the Secret this request wrote earlier goes if the refusal revokes its
/// credential, and otherwise stays named in status, since that credential may still be live.
async fn refused(
    request: &KubeconfigRequest,
    ctx: &Context,
    secrets: &Api<Secret>,
    target: &str,
    ours: Option<&Secret>,
    refusal: Refusal,
) -> Result<Outcome, Error> {
    if refusal.reason.policy().revokes && ours.is_some() {
        secret::delete_if_ours(request, ctx, secrets, target, refusal.reason.as_str()).await?;
        return Ok(Outcome::refused(refusal, None));
    }
    Ok(Outcome::refused(refusal, ours.map(|_| target.to_owned())))
}

/// The first issuance of an ID-token request, without reading its Secret first
/// ([`secret::unissued_id_token`]): one API call fewer per request. The Secret is created only
/// if it does not exist; whatever does not go straight through (a refusal, or a Secret there
/// after all, someone else's or this request's own) reads it then and ends as the way with the
/// read would have. What differs for a request naming someone else's Secret: its token was read
/// and judged, and the finalizer added, before the conflict was found (nothing is written to
/// that Secret, and the outcome is the same SecretConflict).
async fn issue_unread(
    request: &KubeconfigRequest,
    reference: &TokenSecretRef,
    ctx: &Context,
    secrets: &Api<Secret>,
    target: &str,
    owner: &OwnerReference,
) -> Result<Outcome, Error> {
    let credential = source::id_token(request, reference, ctx, secrets).await?;
    let credential = match confirmed(ctx, credential).await? {
        Ok(credential) => credential,
        Err(refusal) => {
            let existing = secret::read(secrets, target).await?;
            return match secret::ours(request, owner, existing) {
                Err(conflict) => Ok(Outcome::refused(conflict, None)),
                Ok(ours) => refused(request, ctx, secrets, target, ours.as_ref(), refusal).await,
            };
        }
    };
    if revoke::holds_id_token(request) {
        revoke::hold(request, ctx).await?;
    }
    if let Ok(written) = secret::write(
        request,
        ctx,
        secrets,
        target,
        Existing::PresumedAbsent,
        &credential,
    )
    .await?
    {
        return Ok(Outcome::issued(credential, target, written));
    }
    // The finalizer is held already (the request in hand is from before it was added).
    let existing = secret::read(secrets, target).await?;
    match secret::ours(request, owner, existing) {
        Err(conflict) => Ok(Outcome::refused(conflict, None)),
        Ok(ours) => write(request, ctx, secrets, target, ours.as_ref(), credential).await,
    }
}

#[cfg(test)]
mod tests;
