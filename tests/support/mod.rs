//! Shared helpers for integration tests that run against the real local cluster
//! (etcd + kube-apiserver + kube-controller-manager + Dex, see `tests/cluster/` and
//! README, "Local cluster"). Use it from a test file with `mod support;`.
//!
//! The cluster is brought up at most once per test binary (`make cluster-up`, which is a quick
//! no-op when it is already healthy) and left running for the next binary; `make test` tears it
//! down at the end. Tests never skip when the cluster is missing: they panic with the log tail.
#![allow(dead_code)]

pub mod accounts;
pub mod load;
pub mod operator;
pub mod proxy;
pub mod requests;
pub mod tokens;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// The values of `target/cluster/env` (written by `make cluster-up`).
#[derive(Clone)]
pub struct Cluster {
    /// The cluster's state directory (`target/cluster` unless `CLUSTER_DIR` is set).
    pub dir: PathBuf,
    /// The env file itself, for scripts that `source` it.
    pub env_file: PathBuf,
    /// Admin kubeconfig (client certificate in `system:masters`).
    pub kubeconfig: String,
    pub kube_server: String,
    pub kube_ca_file: String,
    /// Main Dex issuer: ID tokens valid 24 h; kube-apiserver trusts it.
    pub oidc_issuer_url: String,
    /// Second Dex (same users, clients and CA), ID tokens expire after 5 s.
    pub oidc_short_issuer_url: String,
    pub oidc_ca_file: String,
    pub oidc_client_id: String,
    pub oidc_client_secret: String,
    pub oidc_other_client_id: String,
    pub oidc_other_client_secret: String,
    /// `alice@example.com`, in group `team-a`.
    pub alice_username: String,
    pub alice_password: String,
    /// `bob@example.com`, in no group.
    pub bob_username: String,
    pub bob_password: String,
    /// Every `export NAME=value` of the env file.
    pub env: BTreeMap<String, String>,
}

impl std::fmt::Debug for Cluster {
    // No passwords or client secrets in panic messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir)
            .field("kube_server", &self.kube_server)
            .field("oidc_issuer_url", &self.oidc_issuer_url)
            .field("oidc_short_issuer_url", &self.oidc_short_issuer_url)
            .finish_non_exhaustive()
    }
}

/// The first `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The repository root (where the Makefile is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The state directory of the cluster the tests use: `$CLUSTER_DIR` or `target/cluster`.
pub fn cluster_dir() -> PathBuf {
    match std::env::var_os("CLUSTER_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        _ => repo_root().join("target/cluster"),
    }
}

/// Parses an env file of `export NAME=value` lines (values as written by bash's `printf %q`
/// for plain words, optionally single- or double-quoted).
pub fn parse_env_file(path: &Path) -> BTreeMap<String, String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut env = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = if value.len() >= 2
            && ((value.starts_with('\'') && value.ends_with('\''))
                || (value.starts_with('"') && value.ends_with('"')))
        {
            &value[1..value.len() - 1]
        } else {
            value
        };
        env.insert(name.trim().to_owned(), value.replace("\\ ", " "));
    }
    env
}

impl Cluster {
    /// Reads the env file of the cluster in `dir`, without starting anything.
    pub fn from_dir(dir: &Path) -> Cluster {
        let env_file = dir.join("env");
        let env = parse_env_file(&env_file);
        let get = |name: &str| {
            env.get(name)
                .cloned()
                .unwrap_or_else(|| panic!("{} has no {name}", env_file.display()))
        };
        Cluster {
            dir: dir.to_owned(),
            kubeconfig: get("KUBECONFIG"),
            kube_server: get("KUBE_SERVER"),
            kube_ca_file: get("KUBE_CA_FILE"),
            oidc_issuer_url: get("OIDC_ISSUER_URL"),
            oidc_short_issuer_url: get("OIDC_SHORT_ISSUER_URL"),
            oidc_ca_file: get("OIDC_CA_FILE"),
            oidc_client_id: get("OIDC_CLIENT_ID"),
            oidc_client_secret: get("OIDC_CLIENT_SECRET"),
            oidc_other_client_id: get("OIDC_OTHER_CLIENT_ID"),
            oidc_other_client_secret: get("OIDC_OTHER_CLIENT_SECRET"),
            alice_username: get("ALICE_USERNAME"),
            alice_password: get("ALICE_PASSWORD"),
            bob_username: get("BOB_USERNAME"),
            bob_password: get("BOB_PASSWORD"),
            env_file: env_file.clone(),
            env,
        }
    }

    /// True when the admin credential gets `ok` from `/readyz`.
    pub fn is_ready(&self) -> bool {
        Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["get", "--raw", "/readyz", "--request-timeout=10s"])
            .stdin(Stdio::null())
            .output()
            .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok")
            .unwrap_or(false)
    }
}

/// Runs `make TARGET` at the repository root with `CLUSTER_DIR=dir`.
pub fn make(target: &str, dir: &Path) -> Output {
    Command::new("make")
        .arg("--no-print-directory")
        .arg(target)
        .current_dir(repo_root())
        .env("CLUSTER_DIR", dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run make {target}: {e}"))
}

/// Last `lines` lines of every log in `dir/logs`.
pub fn log_tails(dir: &Path, lines: usize) -> String {
    let mut out = String::new();
    let Ok(entries) = fs::read_dir(dir.join("logs")) else {
        return format!("(no logs in {})", dir.display());
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let text = fs::read_to_string(&path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        out.push_str(&format!(
            "---- {} (last {} lines)\n{}\n",
            path.display(),
            tail.len(),
            tail.join("\n")
        ));
    }
    out
}

/// Brings up (or reuses) the cluster in `dir` and returns its env values; panics with the
/// output of `make cluster-up` and the log tails if that fails.
pub fn ensure_cluster(dir: &Path) -> Cluster {
    if dir.join("env").is_file() {
        let existing = Cluster::from_dir(dir);
        if existing.is_ready() {
            return existing;
        }
    }
    let output = make("cluster-up", dir);
    if !output.status.success() {
        panic!(
            "`make cluster-up` (CLUSTER_DIR={}) failed with {}\n---- stdout\n{}\n---- stderr\n{}\n{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            log_tails(dir, 30)
        );
    }
    let cluster = Cluster::from_dir(dir);
    assert!(
        cluster.is_ready(),
        "cluster in {} is up but /readyz is not ok\n{}",
        dir.display(),
        log_tails(dir, 30)
    );
    cluster
}

/// The shared cluster, brought up once per test binary.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| ensure_cluster(&cluster_dir()))
}

fn describe(args: &[&str], output: &Output) -> String {
    format!(
        "kubectl {} failed ({})\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(mut command: Command, args: &[&str]) -> Result<String, String> {
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(describe(args, &output))
    }
}

/// `kubectl` with the admin kubeconfig; `Ok(trimmed stdout)` or `Err(status, stdout and stderr)`.
pub fn kubectl_result(cluster: &Cluster, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("kubectl");
    command.env("KUBECONFIG", &cluster.kubeconfig);
    run(command, args)
}

/// `kubectl` with the admin kubeconfig; panics on failure, returns trimmed stdout.
pub fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    kubectl_result(cluster, args).unwrap_or_else(|e| panic!("{e}"))
}

/// `kubectl` with no credentials at all (an empty kubeconfig): pass `--kubeconfig FILE` or
/// `--server/--token/...` in `args`.
pub fn kubectl_plain(args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("kubectl");
    command.env("KUBECONFIG", "/dev/null");
    run(command, args)
}

/// `kubectl --token TOKEN` against the cluster, with its CA and no admin credentials.
pub fn kubectl_as_token(cluster: &Cluster, token: &str, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("kubectl");
    command.env("KUBECONFIG", "/dev/null").args([
        "--kubeconfig=/dev/null",
        &format!("--server={}", cluster.kube_server),
        &format!("--certificate-authority={}", cluster.kube_ca_file),
        &format!("--token={token}"),
    ]);
    run(command, args)
}

/// Gives `user` a Role `role` in `namespace` with `verbs` on `resources` (kubectl's
/// `--resource` syntax), limited to `names` when any: how tests hand out exactly the rights a
/// scenario names.
pub fn grant(
    cluster: &Cluster,
    namespace: &str,
    role: &str,
    user: &str,
    verbs: &str,
    resources: &str,
    names: &[&str],
) {
    let verbs = format!("--verb={verbs}");
    let resources = format!("--resource={resources}");
    let mut create_role = vec!["create", "role", role, "-n", namespace, &verbs, &resources];
    let names: Vec<String> = names
        .iter()
        .map(|name| format!("--resource-name={name}"))
        .collect();
    create_role.extend(names.iter().map(String::as_str));
    kubectl(cluster, &create_role);
    kubectl(
        cluster,
        &[
            "create",
            "rolebinding",
            &format!("{role}-binding"),
            "-n",
            namespace,
            &format!("--role={role}"),
            &format!("--user={user}"),
        ],
    );
}

/// `kubectl auth can-i ARGS` as the holder of `token`: true for "yes", false for "no".
pub fn can_i_as_token(cluster: &Cluster, token: &str, args: &[&str]) -> bool {
    let mut full = vec!["auth", "can-i"];
    full.extend_from_slice(args);
    match kubectl_as_token(cluster, token, &full) {
        Ok(out) => out == "yes",
        Err(e) if e.contains("\nno") => false,
        Err(e) => panic!("{e}"),
    }
}

/// Which Dex client a token is issued to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// `kubeconfig-operator`: aud = [kubeconfig-operator] (what the apiserver accepts).
    Operator,
    /// `other-app`: aud = [other-app] (wrong audience).
    Other,
    /// Requested by `kubeconfig-operator` with `audience:server:client_id:other-app`:
    /// aud = [other-app, kubeconfig-operator], azp = kubeconfig-operator.
    OperatorForOther,
    /// Requested by `other-app` with `audience:server:client_id:kubeconfig-operator`:
    /// aud = [kubeconfig-operator, other-app], azp = other-app.
    OtherForOperator,
}

fn id_token_with(cluster: &Cluster, user: &str, extra: &[&str]) -> String {
    let script = repo_root().join("tests/cluster/id-token");
    let output = Command::new(&script)
        .arg(user)
        .args(extra)
        .env("CLUSTER_ENV", &cluster.env_file)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "tests/cluster/id-token {user} {} failed: {}",
        extra.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert_eq!(
        token.split('.').count(),
        3,
        "id-token printed something that is not a JWT"
    );
    token
}

/// A fresh 24 h ID token for `user` ("alice" or "bob") from the main Dex, for `kubeconfig-operator`.
pub fn id_token(cluster: &Cluster, user: &str) -> String {
    id_token_with(cluster, user, &[])
}

/// A fresh ID token for `user` from the main Dex, issued as described by `client`.
pub fn id_token_for_client(cluster: &Cluster, user: &str, client: Client) -> String {
    let extra: &[&str] = match client {
        Client::Operator => &[],
        Client::Other => &["--client", "other"],
        Client::OperatorForOther => &["--audience-also", "other"],
        Client::OtherForOperator => &["--client", "other", "--audience-also", "operator"],
    };
    id_token_with(cluster, user, extra)
}

/// A fresh ID token for `user` from the short-lived Dex: expires 5 s after issue.
pub fn id_token_short_lived(cluster: &Cluster, user: &str) -> String {
    id_token_with(cluster, user, &["--short"])
}

/// Polls `condition` (every 250 ms) until it holds; panics after `timeout` naming `what`.
pub fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// A namespace with a unique name, deleted (without waiting) when dropped.
pub struct Namespace {
    pub name: String,
    kubeconfig: String,
}

impl Namespace {
    pub fn new(cluster: &Cluster, prefix: &str) -> Namespace {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(30)
            .collect();
        let name = format!(
            "{}-{}-{}-{:x}",
            prefix.trim_matches('-'),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            nanos
        );
        kubectl(cluster, &["create", "namespace", &name]);
        Namespace {
            name,
            kubeconfig: cluster.kubeconfig.clone(),
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Binds alice to `view` in `namespace` and waits until the authorizer knows it.
pub fn alice_may_view(cluster: &Cluster, alice: &str, namespace: &str) {
    kubectl(
        cluster,
        &[
            "create",
            "rolebinding",
            "alice-view",
            "-n",
            namespace,
            "--clusterrole=view",
            &format!("--user={}", cluster.alice_username),
        ],
    );
    // `view` is an aggregated ClusterRole (filled in by the controller manager), and RBAC
    // changes reach the authorizer's cache within moments, not at once.
    eventually(Duration::from_secs(60), "alice may list pods", || {
        can_i_as_token(cluster, alice, &["list", "pods", "-n", namespace])
    });
}

/// Sum of every sample of metric `name` (all label sets) whose labels contain `labels`, in a
/// Prometheus text exposition such as [`operator::Operator::metrics`]; 0 when there is none.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, label_part) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (metric_name == name && label_part.contains(labels))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
