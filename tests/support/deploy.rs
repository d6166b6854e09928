//! The operator installed from `config/` on the node's cluster (`make deploy`;
//! `node::node_cluster_dir`, not the cluster of the tests that run their own operator
//! processes: the installed one reconciles every namespace). Use it beside `mod support;` and
//! `#[path = "support/node.rs"] mod node;` with `#[path = "support/deploy.rs"] mod deploy;`.
#![allow(dead_code)]

use std::{
    path::Path,
    sync::{Mutex, MutexGuard, OnceLock},
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
