//! The controller's wiring: which watches feed it, what wakes a request besides a change to it
//! (a Secret or ServiceAccount it names, a rotated CA, its renewal time), and the sweep of
//! state kept for requests that are gone.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    num::NonZeroU64,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::{
    Api, ResourceExt,
    core::PartialObjectMeta,
    runtime::{Config, Controller, WatchStreamExt, predicates, reflector, watcher},
};
use tracing::info;

use super::{
    Context, error_policy, reconcile,
    stored::{self, Request, StoredRequest},
};
use crate::{
    capacity::nonzero_hash,
    crd::{KubeconfigRequest, RENEW_ANNOTATION},
};

/// The most reconciliations kube-runtime's runner holds at once: sixteen namespaces' slots. A
/// request waiting for its namespace's slot holds none of them (`slots.rs`), so this bounds only
/// the work in flight across namespaces, and the runner's table and the tracing registry's span
/// slots, which keep their largest size for good, stay this small.
const RECONCILIATIONS_AT_ONCE: u16 = 256;

/// How often state kept for deleted requests is swept away.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

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
    // The request watch feeds, in order: the index (which requests a Secret concerns, and each
    // status's digest), then the store, in the compact form of `stored.rs` (it holds every
    // request). Only spec changes trigger a reconciliation: the operator's own status writes
    // must not start another one.
    //
    // Every list is paged (500 objects a page, the watcher's default): with "any" semantics the
    // API server answers from its cache in one piece whatever the page size, and one piece of
    // 20,000 Secrets' metadata took the operator from 15 to 85 MiB at start-up.
    let (store, writer) = reflector::store();
    let (index_ctx, due_ctx) = (Arc::clone(&ctx), Arc::clone(&ctx));
    let request_stream = watcher(requests, watcher::Config::default())
        .default_backoff()
        .inspect_ok(move |event| {
            for gone in index_ctx.index.observe(event) {
                index_ctx.forget(&gone);
            }
        })
        .map_ok(stored::stored)
        .reflect(writer)
        .applied_objects()
        .try_filter(move |request| {
            let due = spec_or_renew_request(request).is_none_or(|trigger| {
                due_ctx
                    .index
                    .trigger_changed(&stored::reference(request), trigger)
            });
            futures::future::ready(due)
        });
    let controller = Controller::for_stream(request_stream, store.clone())
        .with_config(Config::default().concurrency(RECONCILIATIONS_AT_ONCE));
    ctx.metrics.requests.export(store.clone());
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
    // A rotated CA changes every kubeconfig: re-render them all. The proxy's CA is in the
    // kubeconfigs of ID tokens, the API server's in those of ServiceAccounts.
    let rotations = |ca: &crate::ca::CaBundle| {
        futures::stream::unfold(ca.changes(), |mut changes| async move {
            changes.changed().await.ok()?;
            info!("a kubeconfig CA changed; re-rendering every kubeconfig");
            Some(((), changes))
        })
    };
    let ca_rotations = if ctx.settings.ca == ctx.api_server_settings.ca {
        rotations(&ctx.settings.ca).boxed()
    } else {
        futures::stream::select(
            rotations(&ctx.settings.ca),
            rotations(&ctx.api_server_settings.ca),
        )
        .boxed()
    };
    let reloads = futures::stream::unfold(
        ctx.authenticator.verifier().reloads(),
        |mut reloads| async move {
            reloads.changed().await.ok()?;
            Some(((), reloads))
        },
    );
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
        // A reloaded authentication configuration may refuse tokens it accepted (KEP-3331's
        // revocation rule): every request is judged again.
        .reconcile_all_on(reloads)
        .reconcile_on(Arc::clone(&ctx.renewals).due())
        .reconcile_on(ctx.namespaces.handoffs())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(move |result| {
            if let Err(kube::runtime::controller::Error::ObjectNotFound(request)) = result {
                let mut gone = Request::new(&request.name);
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
    metrics.requests.clear();
}

/// What a change to a request must touch to be reconciled: its spec (the generation) or the
/// renew annotation, which asks for a new token without changing the spec. The uid tells a
/// request recreated under the same name from the one before it.
fn spec_or_renew_request(request: &StoredRequest) -> Option<NonZeroU64> {
    let generation = predicates::generation(request)?;
    let mut hasher = DefaultHasher::new();
    (
        request.uid(),
        generation,
        request.annotations().get(RENEW_ANNOTATION),
    )
        .hash(&mut hasher);
    Some(nonzero_hash(hasher.finish()))
}

/// The requests a Secret event concerns (see [`index::RequestIndex::for_secret`]). A token
/// Secret's new resourceVersion is noted, so that the requests naming it read it once, not once
/// each.
fn requests_affected_by(ctx: &Context, secret: &PartialObjectMeta<Secret>) -> Vec<Request> {
    let Some(namespace) = secret.namespace() else {
        return Vec::new();
    };
    let name = secret.name_any();
    let affected = ctx.index.for_secret(
        &namespace,
        &name,
        secret.metadata.resource_version.as_deref(),
        secret.owner_references(),
    );
    if affected.is_token_secret {
        ctx.token_reads
            .saw((namespace, name), secret.metadata.resource_version.clone());
    }
    affected.requests
}
