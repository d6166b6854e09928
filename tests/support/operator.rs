//! Runs the real `kubeconfig-operator` binary against the local cluster, with the RBAC from
//! `config/rbac` (a ServiceAccount token, not the admin credential), scoped to one test namespace
//! so tests run side by side without two controllers fighting over a request.

use std::{
    fs,
    io::{Read, Seek},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use super::Cluster;

/// Which Dex the operator trusts: the main one (24 h tokens) or the short-lived one (5 s tokens);
/// or none from flags, because the test passes `--authentication-config`. The API server the
/// operator talks to (the one with `--oidc-*` flags) trusts only the main one, so with the others
/// the operator does not ask it to confirm tokens, unless a test passes `--confirm-with-api-server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issuer {
    Main,
    ShortLived,
    AuthenticationConfig,
}

pub struct Operator {
    child: Child,
    pub base_url: String,
    /// Where `/metrics` is served: a port of its own, apart from the download.
    pub metrics_url: String,
    pub namespace: String,
    log_path: PathBuf,
}

/// Installs the CRD, the admission policy and the operator's RBAC once per test binary (with the
/// same script `make run` uses), and returns a kubeconfig holding the operator ServiceAccount's
/// token.
pub fn operator_kubeconfig(cluster: &Cluster) -> &'static Path {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-dev.sh");
        let output = Command::new(script)
            .arg(&cluster.env_file)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/install-dev.sh");
        assert!(
            output.status.success(),
            "scripts/install-dev.sh failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("find a free port on 127.0.0.1")
}

impl Operator {
    /// Starts the operator for `namespace` and waits until `/readyz` answers 200.
    pub fn start(cluster: &Cluster, namespace: &str, issuer: Issuer, extra_args: &[&str]) -> Self {
        Self::start_with_kubeconfig(cluster, namespace, issuer, extra_args, None)
    }

    /// As [`Operator::start`], with another kubeconfig for the operator's own API client (e.g. a
    /// copy of [`operator_kubeconfig`] whose server goes through a proxy).
    pub fn start_with_kubeconfig(
        cluster: &Cluster,
        namespace: &str,
        issuer: Issuer,
        extra_args: &[&str],
        kubeconfig: Option<&Path>,
    ) -> Self {
        let mut operator = Self::spawn(cluster, namespace, issuer, extra_args, kubeconfig);
        operator.wait_ready();
        operator
    }

    /// As [`Operator::start_with_kubeconfig`], without waiting: for a test of how it fails.
    pub fn spawn(
        cluster: &Cluster,
        namespace: &str,
        issuer: Issuer,
        extra_args: &[&str],
        kubeconfig: Option<&Path>,
    ) -> Self {
        let installed = operator_kubeconfig(cluster);
        let kubeconfig = kubeconfig.unwrap_or(installed);
        // A test that needs a known address (e.g. a redirect URL registered at Dex) passes its
        // own --listen; otherwise the kernel picks the ports and the log says which, since a port
        // found free and released beforehand may be taken by then.
        let own_listen = extra_args.contains(&"--listen");
        let issuer_url = match issuer {
            Issuer::Main => Some(&cluster.oidc_issuer_url),
            Issuer::ShortLived => Some(&cluster.oidc_short_issuer_url),
            Issuer::AuthenticationConfig => None,
        };
        let log_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-operator/logs");
        fs::create_dir_all(&log_dir).expect("create the operator log directory");
        let scope = if namespace.is_empty() {
            "all-namespaces"
        } else {
            namespace
        };
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let log_path = log_dir.join(format!(
            "{scope}-{}-{}.log",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let log = fs::File::create(&log_path).expect("create the operator log file");
        let child = Command::new(env!("CARGO_BIN_EXE_kubeconfig-operator"))
            .arg("run")
            .args(["--cluster-name", "local"])
            .args(["--server", &cluster.kube_server])
            // The cluster's CA unless the test brings its own CA file.
            .args(
                (!extra_args.contains(&"--ca-file"))
                    .then_some(["--ca-file", cluster.kube_ca_file.as_str()])
                    .into_iter()
                    .flatten(),
            )
            .args(issuer_url.into_iter().flat_map(|url| {
                [
                    "--oidc-issuer-url",
                    url,
                    "--oidc-client-id",
                    &cluster.oidc_client_id,
                    "--oidc-ca-file",
                    &cluster.oidc_ca_file,
                ]
            }))
            .args(
                (issuer != Issuer::Main
                    && !extra_args
                        .iter()
                        .any(|arg| arg.starts_with("--confirm-with-api-server")))
                .then_some("--confirm-with-api-server=false"),
            )
            // An empty namespace: the whole cluster, as a deployed operator watches it.
            .args(
                (!namespace.is_empty())
                    .then_some(["--watch-namespace", namespace])
                    .into_iter()
                    .flatten(),
            )
            .args(
                (!own_listen)
                    .then_some(["--listen", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .args(
                (!extra_args.contains(&"--metrics-listen"))
                    .then_some(["--metrics-listen", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            // One JSON object per line, so tests read fields instead of parsing text.
            .args(["--log-format", "json"])
            .args(extra_args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            // The most verbose level, so leak checks see everything the operator could ever log;
            // benchmarks lower it with TEST_OPERATOR_LOG so logging does not dominate them.
            .env(
                "RUST_LOG",
                std::env::var("TEST_OPERATOR_LOG").unwrap_or_else(|_| "trace".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log)
            .spawn()
            .expect("start the kubeconfig-operator binary");
        Operator {
            child,
            base_url: String::new(),
            metrics_url: String::new(),
            namespace: namespace.to_owned(),
            log_path,
        }
    }

    /// Waits for both listeners' log lines (`info`, which benchmarks keep), then for `/readyz`.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the operator exited with {status} before becoming ready:\n{}",
                    self.logs()
                );
            }
            if self.base_url.is_empty() || self.metrics_url.is_empty() {
                for event in self.log_events() {
                    let url =
                        || format!("http://{}", event["address"].as_str().unwrap_or_default());
                    match event["message"].as_str() {
                        Some("HTTP server listening") => self.base_url = url(),
                        Some("metrics listening") => self.metrics_url = url(),
                        _ => {}
                    }
                }
            } else if http_status(&format!("{}/readyz", self.base_url)) == Some(200) {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the operator did not become ready within 60 s:\n{}",
            self.logs()
        );
    }

    /// Everything the operator has written to stdout and stderr so far.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&self.log_path) {
            let _ = file.rewind();
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// The log events written so far, one JSON object each (`--log-format json`), in order. The
    /// fields of an event are at the top level: `level`, `message`, and those of the log call,
    /// such as `request`. Lines that are not JSON (a panic message) are left out.
    pub fn log_events(&self) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .filter(serde_json::Value::is_object)
            .collect()
    }

    /// The operator's `/metrics` text; anything but a 200 fails the test.
    pub fn metrics(&self) -> String {
        let response = super::requests::http_get(&self.metrics_url, "/metrics", None, "");
        assert_eq!(response.status, 200, "/metrics answers");
        response.body
    }

    /// The log events whose message is `message`.
    pub fn log_events_with(&self, message: &str) -> Vec<serde_json::Value> {
        self.log_events()
            .into_iter()
            .filter(|event| event["message"] == message)
            .collect()
    }

    /// Ends the process at once, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, as the kubelet does when a pod is stopped, without waiting for the exit.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `host:port` the HTTP server listens on.
    pub fn address(&self) -> &str {
        self.base_url.trim_start_matches("http://")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A bare HTTP/1.1 status probe, so readiness waits need no async runtime.
fn http_status(url: &str) -> Option<u16> {
    use std::io::Write;
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Where the operator's leader-election Role lets it keep Leases (`scripts/install-dev.sh`).
pub const LEASE_NAMESPACE: &str = "kubeconfig-operator";

/// The Events about the operator's `lease` in [`LEASE_NAMESPACE`], as JSON objects: what a
/// replica with a Lease records about itself.
pub fn lease_events(cluster: &Cluster, lease: &str) -> Vec<serde_json::Value> {
    let listed = super::kubectl(
        cluster,
        &[
            "get",
            "events.events.k8s.io",
            "-n",
            LEASE_NAMESPACE,
            "-o",
            "json",
        ],
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("kubectl prints JSON");
    listed["items"]
        .as_array()
        .expect("a list of Events")
        .iter()
        .filter(|event| {
            event["regarding"]["kind"] == "Lease" && event["regarding"]["name"] == lease
        })
        .cloned()
        .collect()
}

/// The one Event about `lease`, checked to be a `Warning` with `reason`: a replica reports each
/// problem about itself once.
pub fn the_only_warning(cluster: &Cluster, lease: &str, reason: &str) -> serde_json::Value {
    let events = lease_events(cluster, lease);
    let [event] = events.as_slice() else {
        panic!("one Event about {lease}: {events:?}");
    };
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(event["reason"], reason, "{event}");
    event.clone()
}
