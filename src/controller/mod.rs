//! The controller: turns each `KubeconfigRequest` into a kubeconfig Secret and reports the outcome
//! in status conditions and Events. `reconcile` reads like the steps it takes: find the
//! credential (`source`), have the API server confirm it (`crate::confirm`), write the Secret
//! (`secret`), report (`status`).
//!
//! A refusal (missing Secret, bad token, conflict) is an outcome, not an error: it is written to the
//! status with a reason a person can act on, and the request waits for a change. Only failures to
//! talk to the API server are errors; those are retried with a growing delay.

mod cache;
mod index;
pub mod leader;
mod refusal;
mod renewals;
mod secret;
mod source;
mod status;

#[cfg(test)]
pub(crate) mod fixtures;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        predicates,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tracing::{debug, info, warn};

pub use cache::PER_NAMESPACE_CONCURRENCY;
pub use refusal::{Reason, Refusal};
pub use secret::{
    EXPIRES_ANNOTATION, KUBECONFIG_KEY, REQUEST_LABEL, USER_LABEL, USERNAME_ANNOTATION, label_value,
};
pub use source::Credential;
pub use source::ISSUABLE_ANNOTATION;

use crate::{
    config::{ControllerSettings, KubeconfigSettings},
    confirm::{ConfirmError, Confirmer},
    crd::KubeconfigRequest,
    metrics::{Metrics, ReasonLabels},
    oidc::authenticator::Authenticator,
};
use status::Outcome;

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
    pub settings: KubeconfigSettings,
    pub controller: ControllerSettings,
    /// Names this replica in the Events it records (`reportingInstance`).
    pub reporting_instance: String,
    pub metrics: Arc<Metrics>,
    /// Asks the API server about each credential before it is written; `None` when
    /// confirmation is turned off.
    confirmer: Option<Confirmer>,
    /// Consecutive failures per request, for exponential backoff in `error_policy`.
    failures: Mutex<HashMap<ObjectRef<KubeconfigRequest>, u32>>,
    token_reads: cache::SecretReads<source::TokenSecretData>,
    namespaces: cache::NamespaceLimits,
    index: index::RequestIndex,
    renewals: Arc<renewals::Renewals>,
}

impl Context {
    pub fn new(
        client: Client,
        authenticator: Arc<Authenticator>,
        settings: KubeconfigSettings,
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
            controller,
            metrics,
            confirmer,
            failures: Mutex::default(),
            token_reads: cache::SecretReads::default(),
            namespaces: cache::NamespaceLimits::default(),
            index: index::RequestIndex::default(),
            renewals: Arc::default(),
        }
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
        self.token_reads.forget_unused(SWEEP_INTERVAL);
        self.index.release_spare_capacity();
        // The authenticator's verdicts and the Confirmer's answers are shared with the HTTP
        // server, which sweeps them on every replica, leader or not.
    }

    /// Called when the controller finds a request gone: its retry state and wake-up go too.
    fn forget(&self, request: &ObjectRef<KubeconfigRequest>) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(request);
        }
        self.renewals.cancel(request);
    }

    #[cfg(test)]
    fn tracked_failures(&self) -> usize {
        self.failures
            .lock()
            .map(|failures| failures.len())
            .unwrap_or(0)
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

/// kube-runtime spawns a task for every request that is due at once, and most of a burst waits
/// here for its namespace's slot. The reconciliation's own future is boxed, so that a waiting
/// task holds a few hundred bytes rather than the whole state machine: at 10,000 requests
/// applied at once, the waiting tasks had been half the operator's peak heap (heaptrack).
pub async fn reconcile(
    request: Arc<KubeconfigRequest>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _slot = ctx
        .namespaces
        .acquire(&request.namespace().unwrap_or_default())
        .await;
    ctx.metrics.reconciliations.inc();
    let started = Instant::now();
    let result = Box::pin(reconcile_inner(&request, &ctx)).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.record_success(&ObjectRef::from_obj(request.as_ref()));
    }
    result
}

pub fn error_policy(request: Arc<KubeconfigRequest>, error: &Error, ctx: Arc<Context>) -> Action {
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
    let owner = request.controller_owner_ref(&()).ok_or(Error::NotStored)?;
    let target = secret::target_name(request);
    let existing = secrets
        .get_opt(&target)
        .await
        .map_err(kube_error("reading the kubeconfig Secret"))?;

    let outcome = match secret::ours(request, &owner, existing) {
        Err(conflict) => Outcome::Refused {
            refusal: conflict,
            kept_secret: None,
        },
        Ok(ours) => {
            let credential = match (
                &request.spec.token_secret_ref,
                &request.spec.service_account,
            ) {
                (Some(reference), _) => source::id_token(request, reference, ctx, &secrets).await?,
                (None, Some(account)) => {
                    service_account_credential(
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
            let credential = match credential {
                Ok(credential) if credential.confirmed.is_none() => {
                    confirm(ctx, credential).await?
                }
                judged => judged,
            };
            match credential {
                Ok(credential) => {
                    secret::write(request, ctx, &secrets, &target, ours.as_ref(), credential)
                        .await?
                }
                Err(refusal) if refusal.reason.policy().revokes && ours.is_some() => {
                    secret::delete_if_ours(
                        request,
                        ctx,
                        &secrets,
                        &target,
                        refusal.reason.as_str(),
                    )
                    .await?;
                    Outcome::Refused {
                        refusal,
                        kept_secret: None,
                    }
                }
                Err(refusal) => Outcome::Refused {
                    refusal,
                    kept_secret: ours.map(|_| target.clone()),
                },
            }
        }
    };
    // A Secret left behind by a changed spec.secretName goes once the new one is written; while
    // the new one cannot be written, the old one stays named in status.
    let previous = request
        .status
        .as_ref()
        .and_then(|status| status.secret_name.clone())
        .filter(|previous| *previous != target);
    let outcome = match (outcome, previous) {
        (outcome @ Outcome::Issued { .. }, Some(previous)) => {
            secret::delete_if_ours(
                request,
                ctx,
                &secrets,
                &previous,
                "spec.secretName now names another Secret",
            )
            .await?;
            outcome
        }
        (
            Outcome::Refused {
                refusal,
                kept_secret: None,
            },
            Some(previous),
        ) if !refusal.reason.policy().revokes => {
            let kept = secrets
                .get_metadata_opt(&previous)
                .await
                .map_err(kube_error("reading the previous kubeconfig Secret"))?
                .filter(|secret| secret::controls(secret.owner_references(), &owner))
                .map(|_| previous);
            Outcome::Refused {
                refusal,
                kept_secret: kept,
            }
        }
        (outcome, _) => outcome,
    };
    status::update(request, ctx, &outcome).await?;

    let reference = ObjectRef::from_obj(request);
    Ok(match &outcome {
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
            ctx.renewals
                .schedule(&reference, tokio::time::Instant::now() + wait);
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

/// The token already in the Secret while it is not due for renewal, or a newly minted one bound
/// to the Secret (created empty first when it does not exist, since binding needs its uid).
async fn service_account_credential(
    request: &KubeconfigRequest,
    account: &crate::crd::ServiceAccountSource,
    ctx: &Context,
    secrets: &Api<Secret>,
    target: &str,
    ours: Option<&Secret>,
) -> Result<Result<Credential, Refusal>, Error> {
    let namespace = request.namespace().ok_or(Error::NotStored)?;
    if let Err(refusal) = source::issuable_service_account(account, ctx, &namespace).await? {
        return Ok(Err(refusal));
    }
    if let Some(secret) = ours
        && let Some(credential) = source::reusable_token(
            request,
            account,
            secret,
            secret::current_token(request, secret).as_deref(),
            Utc::now(),
        )
        // A token the API server no longer accepts (say, its ServiceAccount was deleted and
        // created again) is not reused but replaced.
        && let Ok(confirmed) = confirm(ctx, credential).await?
    {
        return Ok(Ok(confirmed));
    }
    let uid = match ours.and_then(|secret| secret.metadata.uid.clone()) {
        Some(uid) => uid,
        None => {
            let owner = request.controller_owner_ref(&()).ok_or(Error::NotStored)?;
            match secret::create_empty(request, secrets, target, owner).await? {
                Ok(created) => created.metadata.uid.ok_or(Error::NotStored)?,
                Err(refusal) => return Ok(Err(refusal)),
            }
        }
    };
    source::mint(request, account, ctx, target, &uid).await
}

/// The credential with the API server's word on its token, when confirmation is on: the identity
/// it answers goes into status; its refusal refuses the request, since a kubeconfig holding the
/// token could not work. A minted ServiceAccount token is confirmed too: that proves the token
/// bound to the Secret works, for one cheap call that the verdict cache shares.
async fn confirm(
    ctx: &Context,
    credential: Credential,
) -> Result<Result<Credential, Refusal>, Error> {
    let Some(confirmer) = &ctx.confirmer else {
        return Ok(Ok(credential));
    };
    match confirmer
        .confirm(&credential.token, credential.expires_at)
        .await
    {
        Ok(user) => Ok(Ok(Credential {
            confirmed: Some(Box::new(user)),
            ..credential
        })),
        Err(refused @ ConfirmError::Refused) => Ok(Err(Refusal::new(
            Reason::RejectedByAPIServer,
            refused.to_string(),
        ))),
        Err(unavailable) => Err(Error::Confirm(unavailable)),
    }
}

/// How often state kept for deleted requests is swept away.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Runs the controller until `shutdown` resolves. `ready` turns true once the request cache is
/// synced, which is what `/readyz` reports.
pub async fn run(
    ctx: Arc<Context>,
    watch_namespace: Option<&str>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Wake-ups left by a previous term as leader belong to requests that may have changed since.
    ctx.renewals.clear();
    // Secrets and ServiceAccounts are watched as metadata only: the controller needs their
    // names, owners and versions, and unrelated Secrets' data must cost it nothing.
    let client = ctx.client.clone();
    let (requests, secrets, accounts): (
        Api<KubeconfigRequest>,
        Api<PartialObjectMeta<Secret>>,
        Api<PartialObjectMeta<ServiceAccount>>,
    ) = match watch_namespace {
        Some(namespace) => (
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client, namespace),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    // The request watch feeds, in order: the index (which requests a Secret concerns), then the
    // store (trimmed: it holds every request). Only spec changes trigger a reconciliation: the
    // operator's own status writes must not start another one.
    //
    // Every list is paged (500 objects a page, the watcher's default): with "any" semantics the
    // API server answers from its cache in one piece whatever the page size, and one piece of
    // 20,000 Secrets' metadata took the operator from 15 to 85 MiB at start-up.
    let (store, writer) = reflector::store();
    let index_ctx = Arc::clone(&ctx);
    let request_stream = watcher(requests, watcher::Config::default())
        .default_backoff()
        .modify(trim_for_store)
        .inspect_ok(move |event| {
            for gone in index_ctx.index.observe(event) {
                index_ctx.forget(&gone);
            }
        })
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let controller = Controller::for_stream(request_stream, store.clone());
    ctx.metrics.requests.export(Some(store.clone()));
    let ready_store = store.clone();
    tokio::spawn(async move {
        // Each wait is bounded and repeated: with the controller's applier waiting on the same
        // store, a single long wait here was observed never to wake (kube-runtime 5.0).
        loop {
            match tokio::time::timeout(Duration::from_millis(250), ready_store.wait_until_ready())
                .await
            {
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
    let sweeper = {
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                ticks.tick().await;
                ctx.forget_deleted();
            }
        })
    };
    // A rotated CA changes every kubeconfig: re-render them all.
    let ca_rotations =
        futures::stream::unfold(ctx.settings.ca.changes(), |mut changes| async move {
            changes.changed().await.ok()?;
            Some(((), changes))
        });
    let secret_ctx = Arc::clone(&ctx);
    let account_ctx = Arc::clone(&ctx);
    let forget_ctx = Arc::clone(&ctx);
    let metrics = Arc::clone(&ctx.metrics);
    controller
        .watches(secrets, watcher::Config::default(), move |secret| {
            requests_affected_by(&secret_ctx, &secret)
        })
        .watches(accounts, watcher::Config::default(), move |account| {
            account_ctx.index.for_account(
                &account.namespace().unwrap_or_default(),
                &account.name_any(),
            )
        })
        .reconcile_all_on(ca_rotations)
        .reconcile_on(Arc::clone(&ctx.renewals).due())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(move |result| {
            if let Err(kube::runtime::controller::Error::ObjectNotFound(request)) = result {
                let mut gone = ObjectRef::<KubeconfigRequest>::new(&request.name);
                if let Some(namespace) = &request.namespace {
                    gone = gone.within(namespace);
                }
                forget_ctx.forget(&gone);
            }
            futures::future::ready(())
        })
        .await;
    sweeper.abort();
    // A replica that lost its lease no longer knows the requests' state.
    metrics.requests.export(None);
}

/// `kubectl apply` keeps a copy of the whole applied request in an annotation, and each field
/// manager an entry in managedFields: most of a stored request's size, and nothing here reads them.
fn trim_for_store(request: &mut KubeconfigRequest) {
    request.managed_fields_mut().clear();
    request
        .annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// The requests a Secret event concerns (see [`index::RequestIndex::for_secret`]). A token
/// Secret's new resourceVersion is noted, so that the requests naming it read it once, not once
/// each.
fn requests_affected_by(
    ctx: &Context,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<KubeconfigRequest>> {
    let Some(namespace) = secret.namespace() else {
        return Vec::new();
    };
    let name = secret.name_any();
    let owners: Vec<&str> = secret
        .owner_references()
        .iter()
        .filter(|owner| owner.kind == KubeconfigRequest::kind(&()))
        .map(|owner| owner.uid.as_str())
        .collect();
    let affected = ctx.index.for_secret(
        &namespace,
        &name,
        secret.metadata.resource_version.as_deref(),
        &owners,
    );
    if affected.is_token_secret {
        ctx.token_reads
            .saw((namespace, name), secret.metadata.resource_version.clone());
    }
    affected.requests
}

#[cfg(test)]
mod tests;
