//! Issuance at the scale of a real cluster, and the operator's memory (issue 12). Every time is
//! a ratio to plain writes through the same API server, with the same client concurrency, in
//! the same run:
//!
//! - N requests created at once, each right after its token Secret, until all are Ready, against
//!   N plain Secrets and against 4N plain Secrets: the writes a request inherently causes (its
//!   token Secret, the request, the kubeconfig Secret, one status update);
//! - N ServiceAccount requests naming one opted-in ServiceAccount, against N TokenRequests for it;
//! - apply-to-Ready p50 and p99 of single requests on an idle operator;
//! - the API server's request counter and the operator's CPU, per request;
//! - the operator's RSS: idle, with N Ready, after they are all deleted, with each of
//!   MEMORY_REQUESTS Ready (the memory a further request costs is the difference between two),
//!   after UNRELATED_SECRETS 2 KiB Secrets in another namespace, and after a restart; at each
//!   of MEMORY_REQUESTS, where it is: live heap objects, the allocator's pages beyond them (the
//!   operator's own heap metrics), and the rest of the process;
//! - the API server's CPU per plain write and per plain read (the latest, and from its cache);
//! - issuance's calls alone, as a floor: with no operator running, N requests' own calls made
//!   back to back by the bench (the two creates, then the operator's read, finalizer patch,
//!   Secret apply, status apply and Event, with the payloads the operator wrote for one of its
//!   requests), against 4N plain Secrets timed just before.
//!
//! One operator process (release build) watches the whole cluster, as deployed. Nothing is
//! asserted. Settings (environment): ISSUANCE_SIZES (default `1000,5000`), MEMORY_REQUESTS
//! (`10000,20000`, totals), UNRELATED_SECRETS (20000), SINGLE_SAMPLES (30). Run through `bench/issuance.sh`,
//! which appends the table (lines starting `|`) to bench/results.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    ops::Range,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::{ObjectReference, Secret, ServiceAccount},
        events::v1::Event,
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{GetParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use kubeconfig_operator::{
    controller::{FIELD_MANAGER, ISSUABLE_ANNOTATION, PER_NAMESPACE_CONCURRENCY},
    crd::KubeconfigRequest,
};
use serde_json::json;
use support::{
    Cluster, Namespace, cluster, id_token,
    load::{
        admin_client, create_unrelated_secrets, peak_rss_kib, percentile, rss_kib, socket_count,
    },
    metric,
    operator::{Issuer, Operator},
};
use tokio::sync::Notify;

/// Client calls in flight at once, for the plain writes and the requests alike.
const CONCURRENCY: usize = 16;
const UNRELATED_SECRET_BYTES: usize = 2048;
/// How long memory is left to settle before it is read.
const SETTLE: Duration = Duration::from_secs(5);
/// After deletions: past the controller's 30 s sweep, which drops what it kept for deleted
/// requests and hands freed pages back.
const AFTER_SWEEP: Duration = Duration::from_secs(35);
/// After a burst: the kube client closes a pooled connection idle for 90 s (hyper-util's
/// default), at a check every 90 s, so the burst's own connections to the API server are gone
/// within 180 s of its end. With 10,000 requests they were 32 sockets and 2 to 3 MiB of
/// buffers, still open past two sweeps (bench/results.md, 2026-12-06T18:50Z).
const CONNECTIONS_CLOSED: Duration = Duration::from_secs(185);

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// User plus system CPU seconds a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 2..]
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // CLK_TCK is 100 on Linux (x86_64 and aarch64).
    ticks / 100.0
}

fn process_id(cluster: &Cluster, component: &str) -> u32 {
    fs::read_to_string(cluster.dir.join("run").join(format!("{component}.pid")))
        .expect("the component's pid file")
        .trim()
        .parse()
        .expect("a pid")
}

/// The operator's reconciliation count and total seconds (its `reconcile_duration_seconds`
/// histogram), read from its metrics endpoint.
fn reconcile_totals(operator: &Operator) -> (f64, f64) {
    let text = operator.metrics();
    (
        metric(
            &text,
            "kubeconfig_operator_reconcile_duration_seconds_count",
            "",
        ),
        metric(
            &text,
            "kubeconfig_operator_reconcile_duration_seconds_sum",
            "",
        ),
    )
}

/// Where the operator's resident memory is, in KiB: live heap objects, the allocator's resident
/// pages beyond them, and the rest of the process (code, stacks, the runtime's own).
struct Memory {
    live: f64,
    allocator: f64,
    outside: f64,
}

impl Memory {
    fn of(operator: &Operator) -> Self {
        // Read before the scrape, whose text (every request's series) takes megabytes.
        let rss = rss_kib(operator.pid()) as f64;
        let text = operator.metrics();
        let live = metric(&text, "kubeconfig_operator_heap_allocated_bytes", "") / 1024.0;
        let resident = metric(&text, "kubeconfig_operator_heap_resident_bytes", "") / 1024.0;
        Self {
            live,
            allocator: resident - live,
            outside: rss - resident,
        }
    }

    /// The row for `requests` Ready against `idle`, in MiB, and in KiB per request over idle.
    fn row(&self, idle: &Self, requests: usize) -> String {
        let per_request = |now: f64, then: f64| (now - then) / requests as f64;
        format!(
            "| operator memory with {requests} Ready, settled: live heap objects / the allocator's pages beyond them / outside the heap | {:.1} / {:.1} / {:.1} MiB | over idle, per request: {:.2} / {:.2} / {:.2} KiB |",
            self.live / 1024.0,
            self.allocator / 1024.0,
            self.outside / 1024.0,
            per_request(self.live, idle.live),
            per_request(self.allocator, idle.allocator),
            per_request(self.outside, idle.outside),
        )
    }
}

/// `apiserver_request_total` summed by verb and resource (with subresource), as the API server
/// counts them.
async fn api_request_counts(client: &Client) -> BTreeMap<String, f64> {
    let request = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .unwrap();
    let text = client
        .request_text(request)
        .await
        .expect("the API server's metrics");
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(labels) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = labels.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let subresource = label("subresource");
        let key = format!(
            "{} {}{}",
            label("verb"),
            label("resource"),
            if subresource.is_empty() {
                String::new()
            } else {
                format!("/{subresource}")
            }
        );
        *counts.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    counts
}

fn token_secret(name: &str, token: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([("token".to_owned(), token.to_owned())])),
        ..Secret::default()
    }
}

fn request(name: &str, spec: serde_json::Value) -> KubeconfigRequest {
    serde_json::from_value(json!({
        "apiVersion": "kubeconfig.dev/v1alpha1",
        "kind": "KubeconfigRequest",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a KubeconfigRequest")
}

fn is_ready(request: &KubeconfigRequest) -> bool {
    request
        .ready_condition()
        .is_some_and(|condition| condition.status == "True")
}

/// Watches the namespace's requests from now on and resolves once `expected` of them are Ready
/// (each counted once), besides the `already` Ready before. Started before the requests are
/// created, so no transition is missed.
fn ready_counter(
    api: Api<KubeconfigRequest>,
    expected: usize,
    already: usize,
) -> (Arc<Notify>, tokio::task::JoinHandle<Instant>) {
    let expected = expected + already;
    let started = Arc::new(Notify::new());
    let signal = Arc::clone(&started);
    let task = tokio::spawn(async move {
        let mut ready = HashSet::new();
        let stream = watcher(api, watcher::Config::default()).applied_objects();
        futures::pin_mut!(stream);
        signal.notify_one();
        while let Some(request) = stream.next().await {
            let Ok(request) = request else { continue };
            if is_ready(&request) {
                ready.insert(request.name_any());
                if ready.len() >= expected {
                    return Instant::now();
                }
            }
        }
        panic!(
            "the watch of requests ended with {} of {expected} Ready",
            ready.len()
        );
    });
    (started, task)
}

/// Creates `n` objects with `make(i)`, CONCURRENCY at a time; returns how long it took.
async fn create_all<F, Fut>(n: usize, make: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(make)
        .buffer_unordered(CONCURRENCY)
        .collect::<()>()
        .await;
    started.elapsed()
}

async fn plain_secrets(client: &Client, namespace: &str, n: usize, token: &str) -> Duration {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    create_all(n, |i| {
        let api = api.clone();
        async move {
            api.create(
                &PostParams::default(),
                &token_secret(&format!("plain-{i}"), token),
            )
            .await
            .expect("create a plain Secret");
        }
    })
    .await
}

/// Reads `reads` of the plain Secrets back (`plain-0` onwards, each in turn), CONCURRENCY at a
/// time, with `params`: no resourceVersion is the latest, a quorum read through etcd, as the
/// operator reads a request's Secrets; `GetParams::any()` is served from the API server's watch
/// cache.
async fn plain_reads(
    client: &Client,
    namespace: &str,
    reads: usize,
    secrets: usize,
    params: GetParams,
) -> Duration {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    create_all(reads, |i| {
        let (api, params) = (api.clone(), params.clone());
        async move {
            api.get_with(&format!("plain-{}", i % secrets), &params)
                .await
                .expect("read a plain Secret");
        }
    })
    .await
}

/// Creates the token Secrets and requests numbered `numbers`, and times until all are Ready.
async fn issue(client: &Client, namespace: &str, numbers: Range<usize>, token: &str) -> Duration {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let requests: Api<KubeconfigRequest> = Api::namespaced(client.clone(), namespace);
    let (first, n) = (numbers.start, numbers.len());
    let (watching, all_ready) = ready_counter(requests.clone(), n, first);
    watching.notified().await;
    let started = Instant::now();
    create_all(n, |i| {
        let i = first + i;
        let (secrets, requests) = (secrets.clone(), requests.clone());
        async move {
            let secret = format!("token-{i}");
            secrets
                .create(&PostParams::default(), &token_secret(&secret, token))
                .await
                .expect("create a token Secret");
            requests
                .create(
                    &PostParams::default(),
                    &request(
                        &format!("r-{i}"),
                        json!({"tokenSecretRef": {"name": secret}}),
                    ),
                )
                .await
                .expect("create a request");
        }
    })
    .await;
    all_ready.await.expect("the Ready watch") - started
}

/// What the operator wrote for one issued request: its status, its kubeconfig Secret and its
/// `Issued` Event, the payloads [`calls_alone`] writes again for requests of its own.
struct Written {
    finalizers: Vec<String>,
    status: serde_json::Value,
    secret: Secret,
    event: Event,
}

async fn written_for(client: &Client, namespace: &str, name: &str) -> Written {
    let request = Api::<KubeconfigRequest>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .expect("an issued request");
    let finalizers = request.finalizers().to_vec();
    let status = request.status.expect("an issued request's status");
    let secret_name = status
        .secret_name
        .clone()
        .expect("the status names its Secret");
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(&secret_name)
        .await
        .expect("the request's kubeconfig Secret");
    let event = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().fields(&format!("regarding.name={name}")))
        .await
        .expect("the request's Events")
        .items
        .into_iter()
        .find(|event| event.reason.as_deref() == Some("Issued"))
        .expect("the request's Issued Event");
    Written {
        finalizers,
        status: serde_json::to_value(status).expect("a status serializes"),
        secret,
        event,
    }
}

/// Issuance's calls with nothing between them: for each of `n` requests, the bench's two creates,
/// then what the operator's reconciliation sends (read the token Secret, patch the finalizer on,
/// apply the kubeconfig Secret, then apply the status beside the Event), CONCURRENCY requests at
/// a time, as fast as the API server answers. No watch, no queue, no verification and no
/// rendering: the time the calls alone need. Run with no operator, which would otherwise
/// reconcile these requests too; [`unfinalize`] takes their finalizers off afterwards.
async fn calls_alone(
    client: &Client,
    namespace: &str,
    n: usize,
    token: &str,
    written: &Written,
) -> Duration {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let requests: Api<KubeconfigRequest> = Api::namespaced(client.clone(), namespace);
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    create_all(n, |i| {
        let (secrets, requests, events, apply) = (
            secrets.clone(),
            requests.clone(),
            events.clone(),
            apply.clone(),
        );
        async move {
            let (token_name, name) = (format!("token-{i}"), format!("r-{i}"));
            secrets
                .create(&PostParams::default(), &token_secret(&token_name, token))
                .await
                .expect("create a token Secret");
            let created = requests
                .create(
                    &PostParams::default(),
                    &request(&name, json!({"tokenSecretRef": {"name": token_name}})),
                )
                .await
                .expect("create a request");
            secrets
                .get(&token_name)
                .await
                .expect("read the token Secret");
            let finalizers = json!({"metadata": {
                "finalizers": written.finalizers,
                "resourceVersion": created.resource_version(),
            }});
            let patched = requests
                .patch(
                    &name,
                    &PatchParams {
                        field_manager: Some(FIELD_MANAGER.to_owned()),
                        ..PatchParams::default()
                    },
                    &Patch::Merge(&finalizers),
                )
                .await
                .expect("patch the finalizer on");
            let mut secret = written.secret.clone();
            secret.metadata = ObjectMeta {
                name: Some(format!("{name}-kubeconfig")),
                labels: secret.metadata.labels.clone(),
                annotations: secret.metadata.annotations.clone(),
                owner_references: Some(vec![OwnerReference {
                    uid: patched.uid().expect("a created request's uid"),
                    name: name.clone(),
                    ..secret
                        .metadata
                        .owner_references
                        .as_ref()
                        .and_then(|owners| owners.first().cloned())
                        .expect("the kubeconfig Secret's owner")
                }]),
                ..ObjectMeta::default()
            };
            secrets
                .patch(
                    &format!("{name}-kubeconfig"),
                    &apply,
                    &Patch::Apply(&secret),
                )
                .await
                .expect("apply the kubeconfig Secret");
            let mut status = written.status.clone();
            status["secretName"] = json!(format!("{name}-kubeconfig"));
            let status = json!({
                "apiVersion": KubeconfigRequest::api_version(&()),
                "kind": KubeconfigRequest::kind(&()),
                "status": status,
            });
            let event = Event {
                metadata: ObjectMeta {
                    name: Some(format!("{name}.issued")),
                    ..ObjectMeta::default()
                },
                regarding: Some(ObjectReference {
                    name: Some(name.clone()),
                    namespace: Some(namespace.to_owned()),
                    uid: patched.uid(),
                    resource_version: patched.resource_version(),
                    ..written.event.regarding.clone().unwrap_or_default()
                }),
                event_time: written.event.event_time.clone(),
                ..written.event.clone()
            };
            let (status, create) = (Patch::Apply(&status), PostParams::default());
            let (status, event) = tokio::join!(
                requests.patch_status(&name, &apply, &status),
                events.create(&create, &event)
            );
            status.expect("apply the status");
            event.expect("record the Event");
        }
    })
    .await
}

/// Takes [`calls_alone`]'s finalizers off its `n` requests, so that their namespace can go with no
/// operator running.
async fn unfinalize(client: &Client, namespace: &str, n: usize) {
    let requests: Api<KubeconfigRequest> = Api::namespaced(client.clone(), namespace);
    let unfinalized = json!({"metadata": {"finalizers": null}});
    create_all(n, |i| {
        let (requests, unfinalized) = (requests.clone(), &unfinalized);
        async move {
            requests
                .patch(
                    &format!("r-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(unfinalized),
                )
                .await
                .expect("take the finalizer off");
        }
    })
    .await;
}

/// Takes the finalizers off the requests in `namespace` if the bench panics while
/// [`calls_alone`]'s requests are there: no operator runs then to take them off, and their
/// namespace would stay Terminating for good.
struct UnfinalizeOnPanic<'a> {
    cluster: &'a Cluster,
    namespace: String,
}

impl Drop for UnfinalizeOnPanic<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let namespace = self.namespace.as_str();
        let listed = ["get", "kubeconfigrequests", "-n", namespace, "-o", "name"];
        let Ok(names) = support::kubectl_result(self.cluster, &listed) else {
            return;
        };
        for name in names.lines() {
            let unfinalized = r#"{"metadata":{"finalizers":null}}"#;
            let patch = [
                "patch",
                name,
                "-n",
                namespace,
                "--type=merge",
                "-p",
                unfinalized,
            ];
            let _ = support::kubectl_result(self.cluster, &patch);
        }
    }
}

async fn service_account_issuance(
    client: &Client,
    namespace: &str,
    n: usize,
) -> (Duration, Duration) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("deployer".into()),
            annotations: Some(BTreeMap::from([(
                ISSUABLE_ANNOTATION.into(),
                "true".into(),
            )])),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    accounts
        .create(&PostParams::default(), &account)
        .await
        .expect("create the ServiceAccount");
    let plain = create_all(n, |_| {
        let accounts = accounts.clone();
        async move {
            let token_request = TokenRequest {
                spec: TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                },
                ..TokenRequest::default()
            };
            accounts
                .create_token_request("deployer", &PostParams::default(), &token_request)
                .await
                .expect("a TokenRequest");
        }
    })
    .await;
    let requests: Api<KubeconfigRequest> = Api::namespaced(client.clone(), namespace);
    let (watching, all_ready) = ready_counter(requests.clone(), n, 0);
    watching.notified().await;
    let started = Instant::now();
    create_all(n, |i| {
        let requests = requests.clone();
        async move {
            requests
                .create(
                    &PostParams::default(),
                    &request(
                        &format!("sa-{i}"),
                        json!({"serviceAccount": {"name": "deployer", "expirationSeconds": 3600}}),
                    ),
                )
                .await
                .expect("create a ServiceAccount request");
        }
    })
    .await;
    (all_ready.await.expect("the Ready watch") - started, plain)
}

/// Apply-to-Ready of single requests, one at a time, in milliseconds, sorted.
async fn single_requests(
    client: &Client,
    namespace: &str,
    samples: usize,
    token: &str,
) -> Vec<f64> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    secrets
        .create(&PostParams::default(), &token_secret("single-token", token))
        .await
        .expect("create the token Secret");
    let requests: Api<KubeconfigRequest> = Api::namespaced(client.clone(), namespace);
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let name = format!("single-{i}");
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(requests.clone(), config);
        futures::pin_mut!(stream);
        // The watch is established once its (empty) initial list is through; timing from before
        // that counted the bench's own list and new connection into the operator's latency.
        while let Some(event) = stream.try_next().await.expect("the request watch") {
            if matches!(event, watcher::Event::InitDone) {
                break;
            }
        }
        let started = Instant::now();
        requests
            .create(
                &PostParams::default(),
                &request(&name, json!({"tokenSecretRef": {"name": "single-token"}})),
            )
            .await
            .expect("create a request");
        while let Some(event) = stream.try_next().await.expect("the request watch") {
            if let watcher::Event::Apply(request) = event
                && is_ready(&request)
            {
                break;
            }
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times
}

/// Deletes `namespace` and waits until the API server no longer has it (its objects gone): up to
/// 10 minutes, or 20 ms for each of the `requests` it holds, whose finalizers the operator takes
/// off one by one.
fn delete_namespace(cluster: &Cluster, namespace: Namespace, requests: usize) {
    let seconds = (requests / 50).max(600);
    support::kubectl(
        cluster,
        &[
            "delete",
            "namespace",
            &namespace.name,
            "--wait=true",
            &format!("--timeout={seconds}s"),
        ],
    );
}

fn main() {
    // SAFETY: set before any thread starts; the operator inherits it.
    unsafe { std::env::set_var("TEST_OPERATOR_LOG", "info") };
    let sizes: Vec<usize> = setting("ISSUANCE_SIZES", "1000,5000")
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("ISSUANCE_SIZES: numbers separated by commas")
        })
        .collect();
    // Totals of Ready requests to measure at, each step adding to the one before: the memory a
    // further request costs is the difference between two totals.
    let memory_totals: Vec<usize> = setting("MEMORY_REQUESTS", "10000,20000")
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("MEMORY_REQUESTS: numbers separated by commas")
        })
        .filter(|&n| n > 0)
        .collect();
    let unrelated: usize = setting("UNRELATED_SECRETS", "20000")
        .parse()
        .expect("UNRELATED_SECRETS");
    let samples: usize = setting("SINGLE_SAMPLES", "30")
        .parse()
        .expect("SINGLE_SAMPLES");

    let cluster = cluster();
    // Deleting a request revokes the ID token it held (`controller/revoke.rs`): each phase that
    // deletes its requests afterwards, and the phase after it, takes a token of its own.
    let fresh_token = || id_token(cluster, "alice");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let client = runtime.block_on(admin_client(&cluster.kubeconfig));
    let apiserver = process_id(cluster, "apiserver");
    let mut operator = Operator::start(cluster, "", Issuer::Main, &[]);
    thread::sleep(SETTLE);
    let idle = rss_kib(operator.pid());
    let idle_memory = Memory::of(&operator);
    let idle_sockets = socket_count(operator.pid());
    let mut rows = vec![format!(
        "| operator RSS, idle | {} MiB | 1.00× idle |",
        mib(idle)
    )];

    let single_ns = Namespace::new(cluster, "bench-single");
    let reconciles_before = reconcile_totals(&operator);
    let single = runtime.block_on(single_requests(
        &client,
        &single_ns.name,
        samples,
        &fresh_token(),
    ));
    let reconciles_after = reconcile_totals(&operator);
    // What of the wait is the operator's own work, and what the API server's and the watches'.
    let reconcile_mean_ms = (reconciles_after.1 - reconciles_before.1) * 1000.0
        / (reconciles_after.0 - reconciles_before.0).max(1.0);
    rows.push(format!(
        "| apply-to-Ready of a single request, idle operator ({samples} samples) | p50 {:.0} ms, p99 {:.0} ms | a reconciliation's mean: {reconcile_mean_ms:.1} ms |",
        percentile(&single, 50.0),
        percentile(&single, 99.0)
    ));
    delete_namespace(cluster, single_ns, 0);

    // The operator's payloads for one request of the first size, for the calls-alone phase.
    let mut written = None;
    for &n in &sizes {
        let token = fresh_token();
        let plain_ns = Namespace::new(cluster, "bench-plain");
        let plain = runtime.block_on(plain_secrets(&client, &plain_ns.name, n, &token));
        let plain4_ns = Namespace::new(cluster, "bench-plain4");
        let apiserver_before = cpu_seconds(apiserver);
        let plain4 = runtime.block_on(plain_secrets(&client, &plain4_ns.name, 4 * n, &token));
        let write_cpu = cpu_seconds(apiserver) - apiserver_before;
        // What a request's two reads cost the API server, read as the operator reads and from
        // its cache, against the writes: whether fewer reads could close the gap.
        let mut reads = Vec::new();
        for params in [GetParams::default(), GetParams::any()] {
            let before = cpu_seconds(apiserver);
            let took =
                runtime.block_on(plain_reads(&client, &plain4_ns.name, 2 * n, 4 * n, params));
            reads.push((took, cpu_seconds(apiserver) - before));
        }
        delete_namespace(cluster, plain_ns, 0);
        delete_namespace(cluster, plain4_ns, 0);

        let issue_ns = Namespace::new(cluster, "bench-issue");
        let calls_before = runtime.block_on(api_request_counts(&client));
        let (operator_cpu, apiserver_cpu) = (cpu_seconds(operator.pid()), cpu_seconds(apiserver));
        let reconciles_before = reconcile_totals(&operator);
        let issued = runtime.block_on(issue(&client, &issue_ns.name, 0..n, &token));
        // Let the reconciles the last writes cause finish before counting.
        thread::sleep(SETTLE);
        let operator_cpu = cpu_seconds(operator.pid()) - operator_cpu;
        let apiserver_cpu = cpu_seconds(apiserver) - apiserver_cpu;
        let calls_after = runtime.block_on(api_request_counts(&client));
        let reconciles_after = reconcile_totals(&operator);
        let reconciles = reconciles_after.0 - reconciles_before.0;
        let reconcile_seconds = reconciles_after.1 - reconciles_before.1;
        let with_n = rss_kib(operator.pid());
        let per_request: Vec<String> = calls_after
            .iter()
            .filter_map(|(key, after)| {
                let delta = after - calls_before.get(key).copied().unwrap_or(0.0);
                (delta >= n as f64 / 10.0).then(|| format!("{key} {:.2}", delta / n as f64))
            })
            .collect();
        let total_calls: f64 =
            calls_after.values().sum::<f64>() - calls_before.values().sum::<f64>();
        if written.is_none() {
            written = Some(runtime.block_on(written_for(&client, &issue_ns.name, "r-0")));
        }
        delete_namespace(cluster, issue_ns, n);
        thread::sleep(AFTER_SWEEP);
        let after_delete = rss_kib(operator.pid());

        rows.push(format!(
            "| {n} requests with their token Secrets, created until all Ready | {:.1} s | {:.2}× {} plain Secrets ({:.1} s), {:.2}× {n} plain Secrets ({:.1} s) |",
            issued.as_secs_f64(),
            issued.as_secs_f64() / plain4.as_secs_f64(),
            4 * n,
            plain4.as_secs_f64(),
            issued.as_secs_f64() / plain.as_secs_f64(),
            plain.as_secs_f64()
        ));
        rows.push(format!(
            "| API server CPU per plain write ({}) / per read of those Secrets ({}), latest (etcd) / from its watch cache (resourceVersion 0) | {:.2} ms / {:.2} ms / {:.2} ms | the reads took {:.2}× / {:.2}× the writes' time ({:.1} s / {:.1} s) |",
            4 * n,
            2 * n,
            write_cpu * 1000.0 / (4 * n) as f64,
            reads[0].1 * 1000.0 / (2 * n) as f64,
            reads[1].1 * 1000.0 / (2 * n) as f64,
            reads[0].0.as_secs_f64() / plain4.as_secs_f64(),
            reads[1].0.as_secs_f64() / plain4.as_secs_f64(),
            reads[0].0.as_secs_f64(),
            reads[1].0.as_secs_f64()
        ));
        rows.push(format!(
            "| API calls per request ({n}), all clients, the bench's own 2 creates included | {:.2} | {} |",
            total_calls / n as f64,
            per_request.join(", ")
        ));
        // One namespace's requests take turns in its slots, so the burst lasts at least this long.
        let slot_bound = reconcile_seconds / PER_NAMESPACE_CONCURRENCY as f64;
        rows.push(format!(
            "| reconciliations ({n}): per request / mean duration / their total over the namespace's {PER_NAMESPACE_CONCURRENCY} slots | {:.2} / {:.1} ms / {:.1} s | {:.2}× the time until all Ready |",
            reconciles / n as f64,
            reconcile_seconds * 1000.0 / reconciles.max(1.0),
            slot_bound,
            slot_bound / issued.as_secs_f64()
        ));
        rows.push(format!(
            "| CPU per request ({n}): operator / API server | {:.2} ms / {:.2} ms | |",
            operator_cpu * 1000.0 / n as f64,
            apiserver_cpu * 1000.0 / n as f64
        ));
        rows.push(format!(
            "| operator RSS with {n} Ready / after they are deleted | {} / {} MiB | {:.2}× / {:.2}× idle |",
            mib(with_n),
            mib(after_delete),
            with_n as f64 / idle as f64,
            after_delete as f64 / idle as f64
        ));
    }

    let sa_n = sizes[0];
    let sa_ns = Namespace::new(cluster, "bench-sa");
    let (sa_issued, token_requests) =
        runtime.block_on(service_account_issuance(&client, &sa_ns.name, sa_n));
    rows.push(format!(
        "| {sa_n} ServiceAccount requests, created until all Ready | {:.1} s | {:.2}× {sa_n} TokenRequests ({:.1} s) |",
        sa_issued.as_secs_f64(),
        sa_issued.as_secs_f64() / token_requests.as_secs_f64(),
        token_requests.as_secs_f64()
    ));
    delete_namespace(cluster, sa_ns, 0);

    // MEMORY_REQUESTS=0 (as bench/profile.sh sets it) skips the memory phase.
    if let Some(&memory_requests) = memory_totals.last() {
        let memory_ns = Namespace::new(cluster, "bench-memory");
        let token = fresh_token();
        let mut issued = 0;
        let mut steps = Vec::new();
        for &total in &memory_totals {
            runtime.block_on(issue(&client, &memory_ns.name, issued..total, &token));
            let all_ready = Instant::now();
            issued = total;
            thread::sleep(SETTLE);
            let with_many = rss_kib(operator.pid());
            // A token read is dropped by the first sweep that finds it unused for a whole
            // interval.
            thread::sleep(2 * AFTER_SWEEP);
            let with_many_swept = rss_kib(operator.pid());
            let burst_sockets = socket_count(operator.pid());
            thread::sleep(CONNECTIONS_CLOSED.saturating_sub(all_ready.elapsed()));
            let settled = rss_kib(operator.pid());
            let settled_sockets = socket_count(operator.pid());
            let memory = Memory::of(&operator);
            let peak = peak_rss_kib(operator.pid());
            rows.push(format!(
                "| operator RSS with {total} Ready: 5 s after / past two sweeps / settled, {} s after, the burst's connections closed (peak so far) | {} / {} / {} MiB ({} MiB) | {:.2}× / {:.2}× / {:.2}× idle |",
                CONNECTIONS_CLOSED.as_secs(),
                mib(with_many),
                mib(with_many_swept),
                mib(settled),
                mib(peak),
                with_many as f64 / idle as f64,
                with_many_swept as f64 / idle as f64,
                settled as f64 / idle as f64
            ));
            rows.push(format!(
                "| operator sockets with {total} Ready: past two sweeps / settled | {burst_sockets} / {settled_sockets} | idle: {idle_sockets} |"
            ));
            rows.push(memory.row(&idle_memory, total));
            steps.push((total, settled, peak));
        }
        for pair in steps.windows(2) {
            let ((from, settled_from, peak_from), (to, settled_to, peak_to)) = (pair[0], pair[1]);
            let per_request =
                |from_kib: u64, to_kib: u64| (to_kib as f64 - from_kib as f64) / (to - from) as f64;
            rows.push(format!(
                "| memory per further Ready request, {from} to {to}: settled / peak so far | {:.2} KiB / {:.2} KiB | |",
                per_request(settled_from, settled_to),
                per_request(peak_from, peak_to)
            ));
        }
        let settled = steps.last().map_or(idle, |step| step.1);
        let unrelated_ns = Namespace::new(cluster, "bench-unrelated");
        runtime.block_on(create_unrelated_secrets(
            &client,
            &unrelated_ns.name,
            unrelated,
            UNRELATED_SECRET_BYTES,
            CONCURRENCY,
        ));
        thread::sleep(SETTLE);
        let with_unrelated = rss_kib(operator.pid());
        operator.terminate();
        operator.wait_exit(Duration::from_secs(30));
        drop(operator);
        let restarted = Operator::start(cluster, "", Issuer::Main, &[]);
        // The restart is the operator's peak: it lists every request and reconciles them all at
        // once. Read 5 s after the start, the peak was still 20 MiB ahead (20,000 requests), and
        // read as the last reconciliation ended, 2.6 MiB ahead (10,000): the peak (VmHWM, the
        // highest so far) is read once that burst's reads and connections are gone, with the
        // resident size then.
        // 10 minutes covered 20,000; a larger run is given 10 ms a request.
        let limit =
            Duration::from_millis(10 * memory_requests as u64).max(Duration::from_secs(600));
        let started = Instant::now();
        while reconcile_totals(&restarted).0 < memory_requests as f64 && started.elapsed() < limit {
            thread::sleep(Duration::from_secs(1));
        }
        thread::sleep(CONNECTIONS_CLOSED);
        let after_restart = rss_kib(restarted.pid());
        let restart_peak = peak_rss_kib(restarted.pid());
        rows.push(format!(
        "| operator RSS with {memory_requests} Ready plus {unrelated} unrelated 2 KiB Secrets in another namespace | {} MiB | {:.2}× without them |",
        mib(with_unrelated),
        with_unrelated as f64 / settled as f64
    ));
        rows.push(format!(
        "| … after a restart, which reconciles all {memory_requests} again: settled (peak since the restart) | {} MiB ({} MiB) | {:.2}× ({:.2}×) before the restart |",
        mib(after_restart),
        mib(restart_peak),
        after_restart as f64 / with_unrelated as f64,
        restart_peak as f64 / with_unrelated as f64
    ));
        delete_namespace(cluster, unrelated_ns, 0);
        // With the operator still running: each request's finalizer waits for it to revoke the
        // request's token (`controller/revoke.rs`), and the namespace for the finalizers.
        delete_namespace(cluster, memory_ns, memory_requests);
        drop(restarted);
    } else {
        operator.terminate();
        operator.wait_exit(Duration::from_secs(30));
        drop(operator);
    }

    // No operator runs from here on.
    if let Some(written) = &written {
        let n = sizes[0];
        let token = fresh_token();
        let plain4_ns = Namespace::new(cluster, "bench-alone-plain4");
        let before = cpu_seconds(apiserver);
        let plain4 = runtime.block_on(plain_secrets(&client, &plain4_ns.name, 4 * n, &token));
        let plain4_cpu = cpu_seconds(apiserver) - before;
        delete_namespace(cluster, plain4_ns, 0);
        let alone_ns = Namespace::new(cluster, "bench-alone");
        let _unfinalize = UnfinalizeOnPanic {
            cluster,
            namespace: alone_ns.name.clone(),
        };
        let before = cpu_seconds(apiserver);
        let alone = runtime.block_on(calls_alone(&client, &alone_ns.name, n, &token, written));
        let alone_cpu = cpu_seconds(apiserver) - before;
        runtime.block_on(unfinalize(&client, &alone_ns.name, n));
        delete_namespace(cluster, alone_ns, 0);
        rows.push(format!(
            "| issuance's calls alone, no operator running ({n} requests, {CONCURRENCY} at a time: the 2 creates, then the read, finalizer patch, Secret apply, status apply and Event with the operator's payloads) | {:.1} s | {:.2}× {} plain Secrets ({:.1} s, just before); API server CPU {:.2} ms per request, {:.2}× the four writes' ({:.2} ms each) |",
            alone.as_secs_f64(),
            alone.as_secs_f64() / plain4.as_secs_f64(),
            4 * n,
            plain4.as_secs_f64(),
            alone_cpu * 1000.0 / n as f64,
            alone_cpu / plain4_cpu,
            plain4_cpu * 1000.0 / (4 * n) as f64
        ));
    }

    println!("| measurement | figure | ratio to the same run's baseline |");
    println!("|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
