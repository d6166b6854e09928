//! An open `kubectl exec` session through the API server proxy ends when a revocation covers its
//! token (README "Revocation"): bob's session, opened with the kubeconfig he downloaded, as
//! the least-privileged user who may exec into the pod. It needs a pod on a node, so it runs on the node's cluster (`NODE_CLUSTER_DIR`, else
//! `target/cluster-node`), which it expects up and does not bring up or down; a binary of its
//! own, since the operator's installation is made once per binary and per cluster.

#[path = "support/api_proxy.rs"]
mod api_proxy;
#[path = "support/node.rs"]
mod node;
mod support;

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use api_proxy::Proxied;
use chrono::{SecondsFormat, Utc};
use node::{node_cluster_dir, tools_pod, wait_ready};
use sha2::{Digest as _, Sha256};
use support::{
    Cluster, Namespace, eventually, grant, id_token, kubectl, kubectl_result, requests::write_temp,
};

/// The node's cluster as it is: a test that finds no node fails.
fn node_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::from_dir(&node_cluster_dir());
        assert!(
            cluster.env.contains_key("TOOLS_IMAGE"),
            "no node in {}: bring it up with `make node-up`",
            cluster.dir.display()
        );
        cluster
    })
}

/// The `kubectl exec` process, ended with the test whatever happens.
struct Session(Child);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_credential_revocation_ends_an_open_exec_session_through_the_proxy() {
    let cluster = node_cluster();
    let namespace = Namespace::new(cluster, "revoke-exec");
    let ns = namespace.name.as_str();
    let proxied = Proxied::start(cluster, ns);
    let bob = id_token(cluster, "bob");
    let user = &cluster.bob_username;
    grant(cluster, ns, "pods", user, "get", "pods", &[]);
    grant(cluster, ns, "exec", user, "get,create", "pods/exec", &[]);
    tools_pod(cluster, ns, "web", &["serve", "8080", "hello"], "Always");
    wait_ready(cluster, ns, "web", Duration::from_secs(120));
    // bob's kubeconfig from this operator's download: it names the proxy.
    let kubeconfig = proxied.kubeconfig_for(&bob, "bob-kubeconfig");

    // A session that lasts until it is ended: a second server in the container.
    let mut session = Session(
        Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args([
                "exec", "-n", ns, "web", "--", "/kctools", "serve", "9090", "x",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(session.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("serving on 9090"), "{line:?}");
    assert!(
        session.0.try_wait().unwrap().is_none(),
        "the session is open"
    );

    // The revocation of this one token, as deleting a request or logging out writes it: the
    // node's cluster is shared, and a revocation by user or group would reach other tests.
    // Tokens carry whole seconds and a pod may be ready within the second bob's token was
    // issued, so notBefore is the next whole second, as the operator writes it: `now`'s own
    // second would not cover a token issued in it.
    let name = format!("{ns}-bob");
    let not_before = Utc::now() + chrono::Duration::seconds(1);
    let revocation = serde_json::json!({
        "apiVersion": "kubeconfig.dev/v1alpha1",
        "kind": "KubeconfigRevocation",
        "metadata": {"name": name},
        "spec": {
            "credential": format!("SHA256={:x}", Sha256::digest(bob.as_bytes())),
            "notBefore": not_before.to_rfc3339_opts(SecondsFormat::Secs, true),
            "expiresAt": (not_before + chrono::Duration::minutes(10)).to_rfc3339_opts(SecondsFormat::Secs, true),
        },
    });
    let file = write_temp(&revocation.to_string());
    kubectl(cluster, &["create", "-f", file.path().to_str().unwrap()]);
    eventually(
        Duration::from_secs(15),
        "the proxy ends bob's exec session",
        || session.0.try_wait().unwrap().is_some(),
    );
    let _ = session.0.wait();
    // The proxy logs the end once it has dropped both connections, so kubectl may exit before
    // the line is written.
    eventually(
        Duration::from_secs(10),
        "the operator logs that the stream closed because its token was revoked",
        || {
            proxied
                .operator
                .logs()
                .contains("upgraded stream closed: its token was revoked")
        },
    );
    assert!(
        !proxied.operator.logs().contains(&bob),
        "no token in the log"
    );
    let _ = kubectl_result(cluster, &["delete", "kcrev", &name]);
    let _ = kubectl_result(cluster, &["delete", "pod", "web", "-n", ns, "--wait=false"]);
}
