//! The operator installed from `config/` on the node's cluster (`make deploy`;
//! `node::node_cluster_dir`, not the cluster of the tests that run their own operator
//! processes: the installed one reconciles every namespace). Use it beside `mod support;` and
//! `#[path = "support/node.rs"] mod node;` with `#[path = "support/deploy.rs"] mod deploy;`.
#![allow(dead_code)]

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::support::{Cluster, kubectl, kubectl_result, log_tails, make};

pub const NAMESPACE: &str = "kubeconfig-operator";
pub const LEASE: &str = "kubeconfig-operator";
/// The operator's Deployment and Service, and the API server proxy's (config/proxy).
pub const OPERATOR: &str = "kubeconfig-operator";
pub const PROXY: &str = "kubeconfig-operator-proxy";

fn must(target: &str, dir: &Path) {
    let output = make(target, dir);
    if !output.status.success() {
        panic!(
            "`make {target}` (CLUSTER_DIR={}) failed with {}\n---- stdout\n{}\n---- stderr\n{}\n{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            log_tails(dir, 30)
        );
    }
}

/// The deploy cluster, with the node up and the operator installed (once per test binary), and
/// a lock: the tests stop pods and restart the Deployment, so they take turns.
pub fn deployed() -> (&'static Cluster, MutexGuard<'static, ()>) {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cluster = CLUSTER.get_or_init(|| {
        let dir = crate::node::node_cluster_dir();
        must("node-up", &dir);
        must("deploy", &dir);
        Cluster::from_dir(&dir)
    });
    (cluster, turn)
}

/// The Ready pods of `deployment` ([`OPERATOR`] or [`PROXY`]), by name.
pub fn ready_pods(cluster: &Cluster, deployment: &str) -> Vec<String> {
    // jsonpath cannot select "no deletionTimestamp": list all, drop the terminating ones.
    let all = kubectl(
        cluster,
        &[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            &format!("app.kubernetes.io/name={deployment}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ],
    );
    all.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // name, [deletionTimestamp], Ready
            match fields.as_slice() {
                [name, "True"] => Some(name.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// The Lease's holder, or "" when nobody holds it.
pub fn lease_holder(cluster: &Cluster) -> String {
    kubectl_result(
        cluster,
        &[
            "get",
            "lease",
            LEASE,
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    )
    .unwrap_or_default()
}

/// A Service's cluster IP (the cluster has no DNS): [`OPERATOR`]'s or [`PROXY`]'s.
pub fn service_ip(cluster: &Cluster, service: &str) -> String {
    kubectl(
        cluster,
        &[
            "get",
            "service",
            service,
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )
}

/// Waits until the Deployment [`OPERATOR`] or [`PROXY`] has all its replicas updated and Ready.
pub fn rolled_out(cluster: &Cluster, deployment: &str) {
    kubectl(
        cluster,
        &[
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            "-n",
            NAMESPACE,
            "--timeout=180s",
        ],
    );
}

/// What the Service of [`OPERATOR`] led to while it lives: `kubectl get -w` of its
/// EndpointSlices and of its pods, each line with the UTC time it arrived, each change of its
/// nat rules on the node, and what the node's kube-proxy logged meanwhile (its syncs and the
/// endpoints of each, tests/cluster/node.sh).
/// For the message of a test that a lost connection fails.
pub struct ServiceRecord {
    watches: Vec<(Child, JoinHandle<Vec<String>>)>,
    /// Each change of the Service's nat rules in the node's namespace (polled every 100 ms).
    rules: Option<JoinHandle<Vec<String>>>,
    stop: Arc<AtomicBool>,
    proxy_log: PathBuf,
    proxy_log_from: u64,
}

impl ServiceRecord {
    pub fn start(cluster: &Cluster) -> ServiceRecord {
        let slices = "{.type} {.object.metadata.name} rv={.object.metadata.resourceVersion}\
            {range .object.endpoints[*]} {.addresses[0]}/{.targetRef.name}/ready={.conditions.ready},\
            serving={.conditions.serving},terminating={.conditions.terminating}{end}{\"\\n\"}";
        let pods = "{.type} {.object.metadata.name} {.object.status.podIP} {.object.status.phase} \
            deleted={.object.metadata.deletionTimestamp} \
            ready={.object.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}";
        let service = format!("kubernetes.io/service-name={OPERATOR}");
        let app = format!("app.kubernetes.io/name={OPERATOR}");
        let watches = [("endpointslices", service, slices), ("pods", app, pods)]
            .into_iter()
            .map(|(kind, selector, template)| {
                let mut child = Command::new("kubectl")
                    .env("KUBECONFIG", &cluster.kubeconfig)
                    .args(["get", kind, "-n", NAMESPACE, "-l", &selector, "--watch"])
                    .args([
                        "--output-watch-events",
                        "-o",
                        &format!("jsonpath={template}"),
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("run kubectl get --watch");
                let stdout = BufReader::new(child.stdout.take().unwrap());
                let lines = std::thread::spawn(move || {
                    let mut lines = Vec::new();
                    for line in stdout.lines().map_while(Result::ok) {
                        lines.push(format!("{} {kind} {line}", utc_time()));
                    }
                    lines
                });
                (child, lines)
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let netns = format!("--net={}", cluster.env["NODE_NETNS"]);
        let comment = format!("{NAMESPACE}/{OPERATOR}:http");
        let stopped = stop.clone();
        let rules = std::thread::spawn(move || {
            let (mut changes, mut last) = (Vec::new(), None);
            while !stopped.load(Ordering::Relaxed) {
                let save = Command::new("nsenter")
                    .args([&netns, "iptables-save", "-t", "nat"])
                    .output();
                let text = save.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                let now: Vec<String> = (text.unwrap_or_default().lines())
                    .filter(|l| l.contains(&comment))
                    .map(|l| format!("    {l}"))
                    .collect();
                if last.as_ref() != Some(&now) {
                    changes.push(format!("{} nat rules\n{}", utc_time(), now.join("\n")));
                    last = Some(now);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            changes
        });
        let proxy_log = cluster.dir.join("logs/kube-proxy.log");
        let proxy_log_from = fs::metadata(&proxy_log).map(|m| m.len()).unwrap_or(0);
        ServiceRecord {
            watches,
            rules: Some(rules),
            stop,
            proxy_log,
            proxy_log_from,
        }
    }

    /// Ends the watches and tells the rule poller to stop; what they recorded is kept.
    fn end(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (child, _) in &mut self.watches {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Ends the watches; their lines and the rules' changes in the order they came, then
    /// kube-proxy's log since [`ServiceRecord::start`] (its last 300 lines on this Service).
    pub fn finish(mut self) -> String {
        self.end();
        let mut lines = Vec::new();
        for (_, watch) in self.watches.drain(..) {
            lines.extend(watch.join().unwrap_or_default());
        }
        lines.extend(
            self.rules
                .take()
                .and_then(|r| r.join().ok())
                .unwrap_or_default(),
        );
        lines.sort();
        let log = fs::read(&self.proxy_log).unwrap_or_default();
        let log = String::from_utf8_lossy(log.get(self.proxy_log_from as usize..).unwrap_or(&[]));
        // Its syncs, and the endpoints of this Service only.
        let ours = format!("portName=\"{NAMESPACE}/{OPERATOR}:");
        let log: Vec<&str> = (log.lines())
            .filter(|l| !l.contains("portName=") || l.contains(&ours))
            .collect();
        format!(
            "---- the Service's EndpointSlices, pods and nat rules (UTC)\n{}\n---- {} since then (last {})\n{}",
            lines.join("\n"),
            self.proxy_log.display(),
            log.len().min(300),
            log[log.len().saturating_sub(300)..].join("\n")
        )
    }
}

impl Drop for ServiceRecord {
    fn drop(&mut self) {
        self.end();
    }
}

/// The time of day in UTC, `HH:MM:SS.mmm`: the loop's lines and klog's carry the same.
fn utc_time() -> String {
    chrono::Utc::now().format("%H:%M:%S%.3f").to_string()
}
