//! Fault injection against the real operator on the local cluster: the API server restarting in
//! the middle of a batch, Dex going away and coming back with new signing keys, the operator being
//! SIGKILLed mid-batch, and a slow and then unreachable API server (through a TCP proxy).
//!
//! Each test disturbs components every test shares, so the tests of this binary run one at a
//! time (a static mutex), and every disturbed component is started again by a guard's `Drop`,
//! even when an assertion fails. Assertions are on counts and outcomes, never on wall-clock
//! speed; every wait is bounded.

#[path = "support/api_proxy.rs"]
mod api_proxy;
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use kubeconfig_operator::testing::TestIssuer;
use serde_json::{Value, json};
use support::{
    Cluster, Namespace, cluster, eventually, id_token, kubectl, kubectl_as_token, kubectl_result,
    metric,
    operator::{Issuer, Operator, operator_kubeconfig},
    proxy::Proxy,
    requests::{
        apply_request, http_get, http_get_kubeconfig, put_token_secret, ready_reason,
        wait_for_reason, write_temp,
    },
};

// ---------------------------------------------------------------------------------------------
// Serialisation and restoring components

/// One fault at a time: every test here disturbs a component the others rely on.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next test still runs (its guard restored the cluster).
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ctl(cluster: &Cluster, command: &str, component: &str) -> Result<(), String> {
    let script = support::repo_root().join("tests/cluster/ctl");
    let output = Command::new(&script)
        .args([command, component])
        .env("CLUSTER_DIR", &cluster.dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "tests/cluster/ctl {command} {component} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn ctl_ok(cluster: &Cluster, command: &str, component: &str) {
    ctl(cluster, command, component).unwrap_or_else(|e| panic!("{e}"));
}

/// Starts `component` again when dropped (a no-op when it runs), so a failing assertion never
/// leaves the shared cluster without it.
struct Restore<'a> {
    cluster: &'a Cluster,
    component: &'static str,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if let Err(error) = ctl(self.cluster, "start", self.component) {
            eprintln!("restoring {}: {error}", self.component);
        }
    }
}

fn restore<'a>(cluster: &'a Cluster, component: &'static str) -> Restore<'a> {
    Restore { cluster, component }
}

// ---------------------------------------------------------------------------------------------
// Objects in bulk, and reading them back

/// Creates every document of `documents` with `kubectl create`, `per_file` documents per file.
fn create_all(cluster: &Cluster, documents: &[String], per_file: usize) {
    for chunk in documents.chunks(per_file) {
        let file = write_temp(&chunk.join("\n---\n"));
        kubectl(cluster, &["create", "-f", file.path().to_str().unwrap()]);
    }
}

fn token_secret_doc(namespace: &str, name: &str, token: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "stringData": {"token": token},
    })
    .to_string()
}

fn request_doc(namespace: &str, name: &str, token_secret: &str, secret_name: &str) -> String {
    json!({
        "apiVersion": "kubeconfig.dev/v1alpha1",
        "kind": "KubeconfigRequest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"tokenSecretRef": {"name": token_secret}, "secretName": secret_name},
    })
    .to_string()
}

/// `count` token Secrets `token-NNN` (all holding `token`) and requests `req-NNN`, each asking
/// for its own kubeconfig Secret `kc-NNN`.
fn create_batch(cluster: &Cluster, namespace: &str, token: &str, count: usize) {
    let secrets: Vec<String> = (0..count)
        .map(|i| token_secret_doc(namespace, &format!("token-{i:03}"), token))
        .collect();
    create_all(cluster, &secrets, 100);
    let requests: Vec<String> = (0..count)
        .map(|i| {
            request_doc(
                namespace,
                &format!("req-{i:03}"),
                &format!("token-{i:03}"),
                &format!("kc-{i:03}"),
            )
        })
        .collect();
    create_all(cluster, &requests, 100);
}

#[derive(Debug)]
struct RequestState {
    uid: String,
    secret_name: Option<String>,
    ready: Option<String>,
    reason: Option<String>,
}

fn get_json(cluster: &Cluster, args: &[&str]) -> Result<Value, String> {
    let mut full = args.to_vec();
    full.extend(["-o", "json", "--request-timeout=30s"]);
    let text = kubectl_result(cluster, &full)?;
    serde_json::from_str(&text).map_err(|e| format!("kubectl printed no JSON: {e}"))
}

/// Every request in `namespace` by name; `Err` when the API server cannot be asked.
fn requests(cluster: &Cluster, namespace: &str) -> Result<BTreeMap<String, RequestState>, String> {
    let list = get_json(cluster, &["get", "kcr", "-n", namespace])?;
    let mut out = BTreeMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let ready = item["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready");
        out.insert(
            item["metadata"]["name"].as_str().unwrap_or("").to_owned(),
            RequestState {
                uid: item["metadata"]["uid"].as_str().unwrap_or("").to_owned(),
                secret_name: item["spec"]["secretName"].as_str().map(str::to_owned),
                ready: ready.and_then(|c| c["status"].as_str()).map(str::to_owned),
                reason: ready.and_then(|c| c["reason"].as_str()).map(str::to_owned),
            },
        );
    }
    Ok(out)
}

fn ready_count(states: &BTreeMap<String, RequestState>) -> usize {
    states
        .values()
        .filter(|s| s.ready.as_deref() == Some("True"))
        .count()
}

#[derive(Debug)]
struct WrittenSecret {
    request_label: String,
    resource_version: String,
    /// uids of controller ownerReferences of kind KubeconfigRequest.
    controllers: Vec<String>,
    owner_refs: usize,
    has_kubeconfig: bool,
}

/// Every Secret in `namespace` carrying the `kubeconfig.dev/request` label, by name.
fn written_secrets(cluster: &Cluster, namespace: &str) -> BTreeMap<String, WrittenSecret> {
    let list = get_json(
        cluster,
        &[
            "get",
            "secrets",
            "-n",
            namespace,
            "-l",
            "kubeconfig.dev/request",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut out = BTreeMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let meta = &item["metadata"];
        let owners: Vec<&Value> = meta["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        out.insert(
            meta["name"].as_str().unwrap_or("").to_owned(),
            WrittenSecret {
                request_label: meta["labels"]["kubeconfig.dev/request"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                resource_version: meta["resourceVersion"].as_str().unwrap_or("").to_owned(),
                controllers: owners
                    .iter()
                    .filter(|o| o["kind"] == "KubeconfigRequest" && o["controller"] == true)
                    .map(|o| o["uid"].as_str().unwrap_or("").to_owned())
                    .collect(),
                owner_refs: owners.len(),
                has_kubeconfig: item["data"]["kubeconfig"]
                    .as_str()
                    .is_some_and(|v| !v.is_empty()),
            },
        );
    }
    out
}

/// Every Secret in `namespace` by name (to find Secrets written under a name nobody asked for).
fn all_secret_names(cluster: &Cluster, namespace: &str) -> BTreeSet<String> {
    let list =
        get_json(cluster, &["get", "secrets", "-n", namespace]).unwrap_or_else(|e| panic!("{e}"));
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// Waits (bounded) until all `expected` requests are Ready=True; returns the final states and
/// the names of those that never got there.
fn wait_all_ready(
    cluster: &Cluster,
    namespace: &str,
    expected: usize,
    timeout: Duration,
) -> (BTreeMap<String, RequestState>, Vec<String>) {
    let deadline = Instant::now() + timeout;
    let mut last = BTreeMap::new();
    loop {
        if let Ok(states) = requests(cluster, namespace) {
            let done = states.len() == expected && ready_count(&states) == expected;
            last = states;
            if done {
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_secs(1));
    }
    let missing = last
        .iter()
        .filter(|(_, s)| s.ready.as_deref() != Some("True"))
        .map(|(name, s)| format!("{name} ({:?}/{:?})", s.ready, s.reason))
        .collect();
    (last, missing)
}

/// One kubeconfig Secret per request, named as the request asked, controlled by it and labelled
/// with it; no Secret without a request and no request without its Secret.
fn assert_one_secret_per_request(
    cluster: &Cluster,
    namespace: &str,
    states: &BTreeMap<String, RequestState>,
) -> BTreeMap<String, WrittenSecret> {
    let secrets = written_secrets(cluster, namespace);
    let mut problems = Vec::new();
    let mut claimed = BTreeSet::new();
    for (name, state) in states {
        let secret_name = state.secret_name.clone().expect("spec.secretName is set");
        claimed.insert(secret_name.clone());
        match secrets.get(&secret_name) {
            None => problems.push(format!("{name}: no Secret {secret_name}")),
            Some(secret) => {
                if secret.controllers != vec![state.uid.clone()] || secret.owner_refs != 1 {
                    problems.push(format!(
                        "{name}: Secret {secret_name} is controlled by {:?} ({} ownerReferences), not only by uid {}",
                        secret.controllers, secret.owner_refs, state.uid
                    ));
                }
                if &secret.request_label != name {
                    problems.push(format!(
                        "{name}: Secret {secret_name} is labelled for request {:?}",
                        secret.request_label
                    ));
                }
                if !secret.has_kubeconfig {
                    problems.push(format!("{name}: Secret {secret_name} has no kubeconfig"));
                }
            }
        }
    }
    for extra in secrets.keys().filter(|name| !claimed.contains(*name)) {
        problems.push(format!("Secret {extra} belongs to no request"));
    }
    // A Secret under the default per-user name would mean a request was issued without its spec.
    for name in all_secret_names(cluster, namespace) {
        if name.starts_with("kubeconfig-") {
            problems.push(format!("unexpected Secret {name} under a derived name"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) with the kubeconfig Secrets ({} Secrets for {} requests):\n{}",
        problems.len(),
        secrets.len(),
        states.len(),
        problems.join("\n")
    );
    assert_eq!(
        secrets.len(),
        states.len(),
        "exactly one Secret per request"
    );
    secrets
}

// ---------------------------------------------------------------------------------------------
// The operator process

/// Counts of `kubeconfig Secret written` log events (each is one write of a kubeconfig Secret).
fn secrets_written(operator: &Operator) -> usize {
    operator.log_events_with("kubeconfig Secret written").len()
}

/// The process is alive (not exited, not a zombie), still answers `/healthz`, and never
/// panicked.
fn assert_operator_healthy(operator: &Operator) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", operator.pid()))
        .unwrap_or_else(|_| panic!("the operator process is gone:\n{}", tail(operator)));
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("?");
    assert!(
        state != "Z" && state != "X",
        "the operator process has exited (state {state}):\n{}",
        tail(operator)
    );
    let health = http_get(&operator.base_url, "/healthz", None, "");
    assert_eq!(health.status, 200, "/healthz");
    let logs = operator.logs();
    assert!(
        !logs.contains("panicked"),
        "the operator's log reports a panic:\n{}",
        logs.lines()
            .filter(|l| l.contains("panicked"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn tail(operator: &Operator) -> String {
    let logs = operator.logs();
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits until `reconciliations_total` has not moved for `still`; returns its value.
fn wait_until_quiet(operator: &Operator, still: Duration, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    let mut last = metric(
        &operator.metrics(),
        "kubeconfig_operator_reconciliations_total",
        "",
    );
    let mut since = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(250));
        let now = metric(
            &operator.metrics(),
            "kubeconfig_operator_reconciliations_total",
            "",
        );
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= still {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the operator kept reconciling for {timeout:?} ({last} reconciliations)"
        );
    }
}

/// `reconcile failed` log events by request name.
fn failures_by_request(events: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for event in events.iter().filter(|e| e["message"] == "reconcile failed") {
        let name = event["request"].as_str().unwrap_or_default().to_owned();
        *out.entry(name).or_insert(0) += 1;
    }
    out
}

/// Polls the operator's log until `count` Secrets have been written; panics after `timeout`.
fn wait_for_secrets_written(operator: &Operator, count: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let written = secrets_written(operator);
        if written >= count {
            return written;
        }
        assert!(
            Instant::now() < deadline,
            "only {written} kubeconfig Secrets written after {timeout:?}:\n{}",
            tail(operator)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

fn header_kid(token: &str) -> String {
    let header = token.split('.').next().expect("a JWT header");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"]
        .as_str()
        .expect("Dex tokens carry a kid")
        .to_owned()
}

/// A token for alice with correct claims, signed by a throwaway RSA key under `kid`.
fn forged_token(cluster: &Cluster, kid: &str) -> String {
    let key = TestIssuer::generate(kid);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
    let claims = json!({
        "iss": cluster.oidc_issuer_url,
        "aud": cluster.oidc_client_id,
        "sub": "forged",
        "email": cluster.alice_username,
        "email_verified": true,
        "groups": ["team-a"],
        "iat": now,
        "exp": now + 3600,
    });
    key.sign_raw(&header, &claims)
}

fn request_for(cluster: &Cluster, namespace: &str, name: &str, token: &str) {
    put_token_secret(cluster, namespace, &format!("{name}-token"), "token", token);
    apply_request(
        cluster,
        namespace,
        name,
        &format!("tokenSecretRef: {{name: {name}-token}}\n  secretName: {name}-kubeconfig"),
    );
}

// ---------------------------------------------------------------------------------------------
// 1. The API server restarts while the operator works through 500 requests

#[test]
fn apiserver_restart_mid_batch() {
    const COUNT: usize = 500;
    let _serial = serial();
    let cluster = cluster();
    let ns = Namespace::new(cluster, "faults-apiserver");
    let token = id_token(cluster, "alice");
    // The CRD must be installed before the batch is created; on a fresh cluster nothing else
    // has installed it yet when this binary runs first.
    operator_kubeconfig(cluster);
    let started = Instant::now();
    // Everything exists before the operator starts, so the restart lands in the middle of its
    // work rather than in the middle of ours.
    create_batch(cluster, &ns.name, &token, COUNT);
    println!(
        "created {COUNT} token Secrets and {COUNT} requests in {:?}",
        started.elapsed()
    );

    let operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    let written_before = wait_for_secrets_written(&operator, 25, Duration::from_secs(120));
    {
        let _restore = restore(cluster, "apiserver");
        let restart = Instant::now();
        ctl_ok(cluster, "restart", "apiserver");
        println!(
            "apiserver restarted after {written_before} of {COUNT} Secrets were written (restart took {:?}; {} written by then)",
            restart.elapsed(),
            secrets_written(&operator)
        );
    }
    assert!(
        written_before < COUNT,
        "the operator finished before the restart; the fault did not land mid-batch"
    );

    let converging = Instant::now();
    let (states, missing) = wait_all_ready(cluster, &ns.name, COUNT, Duration::from_secs(300));
    let lost = COUNT - ready_count(&states);
    println!(
        "requests: {COUNT}, Ready: {}, lost: {lost}, converged {:?} after the restart",
        ready_count(&states),
        converging.elapsed()
    );
    assert_eq!(states.len(), COUNT, "every request still exists");
    assert!(
        missing.is_empty(),
        "{lost} request(s) lost after the apiserver restart: {}",
        missing
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_one_secret_per_request(cluster, &ns.name, &states);

    let text = operator.metrics();
    println!(
        "reconciliations: {}, reconcile errors: {}, Secret writes logged: {}",
        metric(&text, "kubeconfig_operator_reconciliations_total", ""),
        metric(&text, "kubeconfig_operator_reconcile_errors_total", ""),
        secrets_written(&operator)
    );
    assert_operator_healthy(&operator);
}

// ---------------------------------------------------------------------------------------------
// 2. Dex goes away and comes back with new signing keys

const DEX_DB_FILES: [&str; 4] = ["dex.db", "dex.db-wal", "dex.db-shm", "dex.db-journal"];

/// Dex keeps its keys in SQLite (see README, "Local cluster"), so a plain restart keeps them.
/// `rotate` (with Dex stopped) sets its database aside, so Dex starts as a fresh (or in-memory)
/// Dex does: with a new signing key under a new kid, the old one gone. kube-apiserver does not
/// refetch keys for an unknown kid, so the cluster would refuse new tokens from then on; `Drop`
/// therefore puts the original database back and restarts Dex, and everything that cached the
/// original keys (the API server) works as before.
struct DexKeys<'a> {
    cluster: &'a Cluster,
    dir: PathBuf,
}

impl<'a> DexKeys<'a> {
    fn rotate(cluster: &'a Cluster) -> Self {
        let dir = cluster.dir.join("dex");
        for name in DEX_DB_FILES {
            let path = dir.join(name);
            if path.exists() {
                std::fs::rename(&path, dir.join(format!("{name}.faults-backup")))
                    .unwrap_or_else(|e| panic!("set {} aside: {e}", path.display()));
            }
        }
        DexKeys { cluster, dir }
    }
}

impl Drop for DexKeys<'_> {
    fn drop(&mut self) {
        if let Err(error) = ctl(self.cluster, "stop", "dex") {
            eprintln!("stopping dex to restore its keys: {error}");
        }
        for name in DEX_DB_FILES {
            let _ = std::fs::remove_file(self.dir.join(name));
            let backup = self.dir.join(format!("{name}.faults-backup"));
            if backup.exists()
                && let Err(error) = std::fs::rename(&backup, self.dir.join(name))
            {
                eprintln!("restoring {}: {error}", backup.display());
            }
        }
        if let Err(error) = ctl(self.cluster, "start", "dex") {
            eprintln!("starting dex with its original keys: {error}");
        }
    }
}

/// Sleeps until the key set's refetch limit (10 s) has passed since `keys_fetched`, after which
/// an unknown kid makes the operator ask the issuer again.
fn wait_past_the_refetch_limit(keys_fetched: Instant) {
    let wait = (keys_fetched + Duration::from_secs(11)).saturating_duration_since(Instant::now());
    thread::sleep(wait);
}

/// Through the proxy, an unknown kid while Dex is down is a 503 that says to retry in 1 s,
/// kube-apiserver's own wait: kubectl (client-go) waits out a 5xx's `Retry-After` up to ten
/// times, and the download's 10 s would hold it for 100 s.
#[test]
fn the_proxy_asks_for_a_retry_in_1_s_while_the_issuer_is_down() {
    let _serial = serial();
    let cluster = cluster();
    let ns = Namespace::new(cluster, "faults-proxy-dex");
    let proxied = api_proxy::Proxied::start(cluster, &ns.name);
    // Ready means the keys were fetched, no later than now.
    let keys_fetched = Instant::now();
    let _restore = restore(cluster, "dex");
    ctl_ok(cluster, "stop", "dex");

    wait_past_the_refetch_limit(keys_fetched);
    let forged = forged_token(cluster, "never-seen-by-the-proxy");
    let list = proxied.list_configmaps(&ns.name, &forged);
    let (_, head) = api_proxy::runtime().block_on(proxied.open(&list));
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{head}"
    );
}

#[test]
fn dex_down_and_back() {
    let _serial = serial();
    let cluster = cluster();
    let ns = Namespace::new(cluster, "faults-dex");
    let before_token = id_token(cluster, "alice");
    let old_kid = header_kid(&before_token);
    // The API server keeps trusting Dex's original key (restored at the end), not the rotated one
    // this test gives Dex, and would rightly refuse its tokens. This test is about the operator's
    // own key cache, so the operator does not ask the API server to confirm.
    let operator = Operator::start(
        cluster,
        &ns.name,
        Issuer::Main,
        &["--confirm-with-api-server=false"],
    );
    // Ready means the keys were fetched, no later than now.
    let keys_fetched = Instant::now();

    let _restore = restore(cluster, "dex");
    ctl_ok(cluster, "stop", "dex");

    // Known keys keep validating while Dex is down, on both paths.
    let response = http_get_kubeconfig(&operator.base_url, Some(&before_token), "");
    assert_eq!(
        response.status, 200,
        "known key, Dex down: {}",
        response.body
    );
    request_for(cluster, &ns.name, "known", &before_token);
    wait_for_reason(cluster, &ns.name, "known", "Issued");

    wait_past_the_refetch_limit(keys_fetched);
    let forged = forged_token(cluster, "never-seen");
    let response = http_get_kubeconfig(&operator.base_url, Some(&forged), "");
    assert_eq!(
        response.status, 503,
        "unknown kid while Dex is down: {}",
        response.body
    );
    assert!(
        !response.header("retry-after").is_empty(),
        "a 503 says when to retry"
    );
    assert!(!response.body.contains(&forged), "the token is not echoed");
    request_for(cluster, &ns.name, "unknown", &forged);
    let message = wait_for_reason(cluster, &ns.name, "unknown", "IssuerUnavailable");
    println!("unknown kid, Dex down: {message}");

    // Dex comes back with a new signing key.
    let rotated = DexKeys::rotate(cluster);
    ctl_ok(cluster, "start", "dex");
    let fresh = id_token(cluster, "alice");
    let new_kid = header_kid(&fresh);
    assert_ne!(new_kid, old_kid, "the restarted Dex signs with a new key");

    // The operator learns the new key without a restart, at once: its last fetch failed (Dex
    // was down), so an unknown kid refetches immediately instead of waiting out the 10 s
    // refetch limit, which used to answer 503 here for up to 10 s.
    let response = http_get_kubeconfig(&operator.base_url, Some(&fresh), "");
    assert_eq!(
        response.status, 200,
        "the first request with Dex's new kid after Dex returned: {}",
        response.body
    );
    request_for(cluster, &ns.name, "fresh", &fresh);
    wait_for_reason(cluster, &ns.name, "fresh", "Issued");

    // The request stuck on IssuerUnavailable retries on its own and learns the key is unknown.
    let message = wait_for_reason(cluster, &ns.name, "unknown", "TokenInvalid");
    assert!(message.starts_with("UnknownKey"), "{message}");
    assert_eq!(
        ready_reason(cluster, &ns.name, "known").as_deref(),
        Some("Issued"),
        "the request issued while Dex was down stays Issued"
    );

    // Dex gets its original keys back, which the API server still trusts.
    drop(rotated);
    let restored = id_token(cluster, "alice");
    assert_eq!(
        header_kid(&restored),
        old_kid,
        "Dex has its original key again"
    );
    eventually(
        Duration::from_secs(30),
        "the apiserver accepts Dex's tokens again",
        || kubectl_as_token(cluster, &restored, &["auth", "whoami"]).is_ok(),
    );

    let text = operator.metrics();
    println!(
        "old kid {old_kid}, new kid {new_kid}; 503s in all: {}, IssuerUnavailable failures: {}",
        metric(
            &text,
            "kubeconfig_operator_http_requests_total",
            "code=\"503\""
        ),
        metric(
            &text,
            "kubeconfig_operator_token_validation_failures_total",
            "reason=\"IssuerUnavailable\""
        )
    );
    assert!(
        metric(
            &text,
            "kubeconfig_operator_token_validation_failures_total",
            "reason=\"IssuerUnavailable\""
        ) >= 1.0
    );
    assert_operator_healthy(&operator);
}

// ---------------------------------------------------------------------------------------------
// 3. The operator is SIGKILLed mid-batch and a new one takes over

#[test]
fn operator_killed_mid_batch() {
    const COUNT: usize = 200;
    let _serial = serial();
    let cluster = cluster();
    let ns = Namespace::new(cluster, "faults-kill");
    let token = id_token(cluster, "alice");
    create_batch(cluster, &ns.name, &token, COUNT);

    let mut first = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    // Completed reconciliations (the duration histogram's count) are requests whose status was
    // written; kill once some, not all, are done.
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(
        &first.metrics(),
        "kubeconfig_operator_reconcile_duration_seconds_count",
        "",
    ) < 10.0
    {
        assert!(Instant::now() < deadline, "no progress:\n{}", tail(&first));
        thread::sleep(Duration::from_millis(10));
    }
    first.kill();
    let written = secrets_written(&first);
    let ready_at_kill = ready_count(&requests(cluster, &ns.name).expect("list the requests"));
    let secrets_at_kill = written_secrets(cluster, &ns.name).len();
    println!(
        "SIGKILL after {written} Secret writes: {ready_at_kill} of {COUNT} requests Ready, {secrets_at_kill} Secrets"
    );
    assert!(
        0 < ready_at_kill && ready_at_kill < COUNT,
        "{ready_at_kill} of {COUNT} Ready at the kill; the fault did not land mid-batch"
    );
    assert!(!first.logs().contains("panicked"));

    let second = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    let (states, missing) = wait_all_ready(cluster, &ns.name, COUNT, Duration::from_secs(180));
    println!(
        "after the new operator: {} of {COUNT} Ready, lost: {}",
        ready_count(&states),
        missing.len()
    );
    assert!(missing.is_empty(), "requests never Ready: {missing:?}");
    let converged = assert_one_secret_per_request(cluster, &ns.name, &states);
    let request_versions = |cluster: &Cluster| -> BTreeMap<String, String> {
        let list = get_json(cluster, &["get", "kcr", "-n", &ns.name]).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["metadata"]["name"].as_str().unwrap().to_owned(),
                    i["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect()
    };
    let requests_converged = request_versions(cluster);
    let writes_converged = secrets_written(&second);

    // Idle with the operator running: nothing is rewritten.
    thread::sleep(Duration::from_secs(10));
    let idle = written_secrets(cluster, &ns.name);
    let rewritten: Vec<&String> = converged
        .iter()
        .filter(|(name, s)| {
            idle.get(*name).map(|i| &i.resource_version) != Some(&s.resource_version)
        })
        .map(|(name, _)| name)
        .collect();
    let requests_idle = request_versions(cluster);
    let status_rewritten = requests_converged
        .iter()
        .filter(|(name, rv)| requests_idle.get(*name) != Some(rv))
        .count();
    println!(
        "Secret writes by the new operator: {writes_converged} (for {} Secrets missing at the kill); rewritten while idle: {} Secrets, {status_rewritten} requests",
        COUNT - secrets_at_kill,
        rewritten.len()
    );
    assert!(
        rewritten.is_empty(),
        "{} Secrets were rewritten while idle: {:?}",
        rewritten.len(),
        rewritten.iter().take(10).collect::<Vec<_>>()
    );
    assert_eq!(
        status_rewritten, 0,
        "no request status is rewritten while idle"
    );
    assert_eq!(
        secrets_written(&second),
        writes_converged,
        "no Secret writes while idle"
    );
    assert_eq!(
        writes_converged,
        COUNT - secrets_at_kill,
        "the new operator writes exactly the Secrets missing at the kill, and rewrites none of the {secrets_at_kill} already there"
    );
    assert_operator_healthy(&second);
}

// ---------------------------------------------------------------------------------------------
// 4. A slow API server, then an unreachable one

/// A copy of the operator's kubeconfig whose server is `proxy`.
fn proxied_kubeconfig(cluster: &Cluster, proxy: SocketAddr) -> tempfile::NamedTempFile {
    let original = std::fs::read_to_string(operator_kubeconfig(cluster))
        .expect("read the operator's kubeconfig");
    assert!(
        original.contains(&cluster.kube_server),
        "the operator's kubeconfig names {}",
        cluster.kube_server
    );
    let proxied = original.replace(&cluster.kube_server, &format!("https://{proxy}"));
    write_temp(&proxied)
}

#[test]
fn slow_and_failing_api_server() {
    const COUNT: usize = 20;
    const OUTAGE: Duration = Duration::from_secs(20);
    let _serial = serial();
    let cluster = cluster();
    let ns = Namespace::new(cluster, "faults-proxy");
    let upstream: SocketAddr = cluster
        .kube_server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .expect("KUBE_SERVER is https://IP:PORT");
    let proxy = Proxy::start(upstream);
    let kubeconfig = proxied_kubeconfig(cluster, proxy.addr);
    proxy.set_latency(Duration::from_millis(300));
    let operator = Operator::start_with_kubeconfig(
        cluster,
        &ns.name,
        Issuer::Main,
        &[],
        Some(kubeconfig.path()),
    );

    // With 300 ms on every chunk, a batch still converges.
    let token = id_token(cluster, "alice");
    create_batch(cluster, &ns.name, &token, COUNT);
    let (states, missing) = wait_all_ready(cluster, &ns.name, COUNT, Duration::from_secs(180));
    assert!(
        missing.is_empty(),
        "slow API server, never Ready: {missing:?}"
    );
    assert_one_secret_per_request(cluster, &ns.name, &states);
    println!(
        "latency 300 ms: {COUNT} requests Ready over {} proxied connections",
        proxy.connections()
    );

    // A new request; once its reconciliation has begun (its first call takes >= 600 ms through
    // the proxy), the API server becomes unreachable.
    put_token_secret(cluster, &ns.name, "late-token", "token", &token);
    // The operator's own writes trigger one more (idle) pass per request; let those finish so
    // the outage meets the new request alone.
    let quiet = wait_until_quiet(&operator, Duration::from_secs(5), Duration::from_secs(120));
    println!("operator idle after {quiet} reconciliations");
    let before = operator.metrics();
    let reconciled_before = metric(&before, "kubeconfig_operator_reconciliations_total", "");
    apply_request(
        cluster,
        &ns.name,
        "late",
        "tokenSecretRef: {name: late-token}\n  secretName: late-kubeconfig",
    );
    eventually(
        Duration::from_secs(30),
        "the operator starts on the new request",
        || {
            metric(
                &operator.metrics(),
                "kubeconfig_operator_reconciliations_total",
                "",
            ) > reconciled_before
        },
    );
    let at_outage = operator.metrics();
    let events_at_outage = operator.log_events().len();
    let connections_before = proxy.connections();
    proxy.set_dropping(true);
    thread::sleep(OUTAGE);
    let after = operator.metrics();
    let outage_events = operator.log_events().split_off(events_at_outage);
    let connections_during = proxy.connections() - connections_before;
    let dropped = proxy.dropped_connections();
    proxy.set_dropping(false);

    let attempts = metric(&after, "kubeconfig_operator_reconciliations_total", "")
        - metric(&at_outage, "kubeconfig_operator_reconciliations_total", "");
    let errors = metric(&after, "kubeconfig_operator_reconcile_errors_total", "")
        - metric(&at_outage, "kubeconfig_operator_reconcile_errors_total", "");
    println!(
        "outage of {OUTAGE:?}: {attempts} reconcile attempts started, {errors} reconcile errors, {connections_during} connections to the proxy ({dropped} dropped)"
    );
    let failures_by_request = failures_by_request(&outage_events);
    println!("failed reconciliations during the outage, by request: {failures_by_request:?}");
    assert_eq!(
        failures_by_request.keys().collect::<Vec<_>>(),
        vec!["late"],
        "only the request in flight is retried during the outage"
    );
    assert!(
        errors >= 1.0,
        "the outage hit the request's reconciliation (errors {errors})"
    );
    assert!(
        attempts <= 15.0 && errors <= 15.0,
        "exponential backoff keeps retries few: {attempts} attempts, {errors} errors in {OUTAGE:?}"
    );
    assert!(
        connections_during <= 100,
        "{connections_during} connection attempts in {OUTAGE:?}: the client hammers a dead API server"
    );

    // Back: the interrupted request converges, and the watches are up again (a request created
    // after the outage is seen and issued).
    wait_for_reason(cluster, &ns.name, "late", "Issued");
    request_for(cluster, &ns.name, "after", &token);
    eventually(
        Duration::from_secs(120),
        "a request created after the outage is Issued",
        || ready_reason(cluster, &ns.name, "after").as_deref() == Some("Issued"),
    );
    let states = requests(cluster, &ns.name).expect("list the requests");
    assert_eq!(ready_count(&states), COUNT + 2, "every request Ready");
    assert_one_secret_per_request(cluster, &ns.name, &states);
    let text = operator.metrics();
    println!(
        "after the outage: reconciliations {}, reconcile errors {}, proxied connections {}",
        metric(&text, "kubeconfig_operator_reconciliations_total", ""),
        metric(&text, "kubeconfig_operator_reconcile_errors_total", ""),
        proxy.connections()
    );
    assert_operator_healthy(&operator);
}
