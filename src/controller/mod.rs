//! The controller: turns each `KubeconfigRequest` into a kubeconfig Secret and reports the outcome
//! in status conditions and Events. `reconcile` reads like the steps it takes: find the
//! credential (`source`), write the Secret (`secret`), report (`status`).
//!
//! A refusal (missing Secret, bad token, conflict) is an outcome, not an error: it is written to the
//! status with a reason a person can act on, and the request waits for a change. Only failures to
//! talk to the API server are errors; those are retried with a growing delay.

mod secret;
mod source;
mod status;

#[cfg(test)]
mod fixtures;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller,
        controller::Action,
        events::{Recorder, Reporter},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tracing::{info, warn};

pub use secret::{
    EXPIRES_ANNOTATION, KUBECONFIG_KEY, REQUEST_LABEL, USER_LABEL, USERNAME_ANNOTATION,
    derived_secret_name, label_value,
};
pub use source::Credential;
pub use status::{Reason, Refusal};

use crate::{
    config::KubeconfigSettings,
    crd::KubeconfigRequest,
    metrics::{Metrics, ReasonLabels},
    token::Verifier,
};
use status::Outcome;

/// The single field manager for everything the operator writes, so server-side apply knows which
/// fields are ours.
pub const FIELD_MANAGER: &str = "kubeconfig-operator";

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

    let outcome = match source::id_token(request, ctx, &secrets).await? {
        Ok(credential) => secret::write(request, ctx, &secrets, credential).await?,
        Err(refusal) => Outcome::Refused(refusal),
    };
    status::update(request, ctx, &outcome).await?;

    Ok(match &outcome {
        Outcome::Issued { credential, .. } => {
            // Wake at expiry to report TokenExpired; the Secret stays for inspection.
            let until_expiry = (credential.expires_at - Utc::now())
                .to_std()
                .unwrap_or_default();
            Action::requeue(until_expiry + Duration::from_secs(1))
        }
        Outcome::Refused(Refusal {
            reason: Reason::IssuerUnavailable,
            ..
        }) => Action::requeue(ISSUER_RETRY),
        Outcome::Refused(_) => Action::await_change(),
    })
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
mod tests;
