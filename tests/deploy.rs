//! The operator as users install it (README "Deployment"): the image from the Dockerfile, loaded
//! into the node's containerd, and `config/default` with an overlay that sets only the image,
//! the issuer, its CA and the server (`make deploy`), on the node's cluster
//! (`target/cluster-node`, see tests/support/node.rs). The tenant is alice, with exactly the
//! rights each scenario names; she acts with her own ID token, never as admin.

#[path = "support/deploy.rs"]
mod deploy;
#[path = "support/node.rs"]
mod node;
mod support;

use std::{fs, time::Duration};

use deploy::{
    NAMESPACE, OPERATOR, PROXY, ServiceRecord, deployed, lease_holder, ready_pods, service_ip,
};
use node::{env, wait_phase, wait_ready};
use support::{
    Cluster, Namespace, eventually, grant, id_token, kubectl, kubectl_as_token, kubectl_result,
    requests::{manifest_as, request_manifest, write_temp},
};

/// Both replicas Ready and a holder of the Lease among them.
fn wait_settled(cluster: &Cluster) -> (Vec<String>, String) {
    let mut settled = (Vec::new(), String::new());
    eventually(
        Duration::from_secs(180),
        "two operator replicas are Ready and one of them holds the Lease",
        || {
            let pods = ready_pods(cluster, OPERATOR);
            let holder = lease_holder(cluster);
            let ok = pods.len() == 2 && pods.contains(&holder);
            settled = (pods, holder);
            ok
        },
    );
    settled
}

/// A namespace where alice may manage her KubeconfigRequests and the Secrets they read, and
/// her ID token.
fn tenant(cluster: &Cluster, prefix: &str) -> (Namespace, String) {
    let ns = Namespace::new(cluster, prefix);
    grant(
        cluster,
        &ns.name,
        "requests",
        &cluster.alice_username,
        "create,get,list,watch",
        "kubeconfigrequests.kubeconfig.dev",
        &[],
    );
    grant(
        cluster,
        &ns.name,
        "secrets",
        &cluster.alice_username,
        "create,get",
        "secrets",
        &[],
    );
    (ns, id_token(cluster, "alice"))
}

/// As alice: a Secret `token` holding her token (from a file, not the command line).
fn alice_puts_her_token(cluster: &Cluster, ns: &str, token: &str) {
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "token", "namespace": ns},
        "stringData": {"token": token},
    });
    let file = write_temp(&manifest.to_string());
    eventually(
        Duration::from_secs(30),
        "alice may create her Secret",
        || {
            kubectl_as_token(
                cluster,
                token,
                &["apply", "-f", file.path().to_str().unwrap()],
            )
            .is_ok()
        },
    );
}

/// As alice: a KubeconfigRequest `name` for the token in her Secret `token`.
fn alice_requests(cluster: &Cluster, token: &str, ns: &str, name: &str) {
    manifest_as(
        cluster,
        token,
        "create",
        &request_manifest(ns, name, "tokenSecretRef: {name: token}"),
    )
    .unwrap_or_else(|e| panic!("alice cannot create her request: {e}"));
}

fn alice_request_status(cluster: &Cluster, token: &str, ns: &str, name: &str) -> String {
    kubectl_as_token(
        cluster,
        token,
        &[
            "get",
            "kubeconfigrequest",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}/{.status.conditions[?(@.type==\"Ready\")].reason}",
        ],
    )
    .unwrap_or_else(|e| e)
}

/// A pod of the tools image with alice's Secret `secret` (her token Secret `token`, or a
/// kubeconfig Secret) at /token and a writable /work.
fn client_pod(cluster: &Cluster, ns: &str, name: &str, secret: &str, args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    node::apply(
        cluster,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: {image}
      imagePullPolicy: Never
      args: [{args}]
      securityContext: {{readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}}
      volumeMounts:
        - {{name: token, mountPath: /token, readOnly: true}}
        - {{name: work, mountPath: /work}}
  volumes:
    - {{name: token, secret: {{secretName: {secret}}}}}
    - {{name: work, emptyDir: {{}}}}
"#,
            image = env(cluster, "TOOLS_IMAGE"),
            args = args.join(", "),
        ),
    );
}

fn exec(cluster: &Cluster, ns: &str, pod: &str, args: &[&str]) -> Result<String, String> {
    let mut full = vec!["exec", pod, "-n", ns, "--"];
    full.extend_from_slice(args);
    kubectl_result(cluster, &full)
}

/// kubectl in the pod `client` with nothing but the kubeconfig at `kubeconfig` (in the pod).
fn kubectl_in_client(
    cluster: &Cluster,
    ns: &str,
    kubeconfig: &str,
    args: &[&str],
) -> Result<String, String> {
    let mut full = vec!["/kctools", "kubectl", "--kubeconfig", kubeconfig];
    full.extend_from_slice(args);
    exec(cluster, ns, "client", &full)
}

/// The kubeconfig at `kubeconfig` in the pod `client` names the installed proxy, and kubectl
/// with it is alice.
fn alice_through_the_proxy(cluster: &Cluster, ns: &str, kubeconfig: &str) {
    let server = kubectl_in_client(
        cluster,
        ns,
        kubeconfig,
        &[
            "config",
            "view",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    )
    .unwrap();
    assert_eq!(server, format!("https://{}", service_ip(cluster, PROXY)));
    let who = kubectl_in_client(
        cluster,
        ns,
        kubeconfig,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    )
    .unwrap_or_else(|e| panic!("kubectl with {kubeconfig} failed: {e}"));
    assert_eq!(who, cluster.alice_username);
}

#[test]
fn two_replicas_are_ready_and_exactly_one_leads() {
    let (cluster, _turn) = deployed();
    let (pods, holder) = wait_settled(cluster);
    let leading: Vec<&String> = pods
        .iter()
        .filter(|pod| {
            kubectl(cluster, &["logs", pod, "-n", NAMESPACE])
                .contains("leading: starting the controller")
        })
        .collect();
    assert_eq!(
        leading,
        vec![&holder],
        "pods {pods:?}, Lease held by {holder}"
    );
}

#[test]
fn the_other_replica_takes_over_from_a_deleted_leader() {
    let (cluster, _turn) = deployed();
    let (ns, token) = tenant(cluster, "deploy-takeover");
    alice_puts_her_token(cluster, &ns.name, &token);
    let (_, leader) = wait_settled(cluster);

    kubectl(
        cluster,
        &["delete", "pod", &leader, "-n", NAMESPACE, "--wait=false"],
    );
    // Created while the leader goes away, by alice.
    alice_requests(cluster, &token, &ns.name, "meanwhile");

    eventually(
        Duration::from_secs(60),
        "another replica holds the Lease",
        || {
            let holder = lease_holder(cluster);
            !holder.is_empty() && holder != leader
        },
    );
    eventually(Duration::from_secs(60), "alice's request is Ready", || {
        alice_request_status(cluster, &token, &ns.name, "meanwhile") == "True/Issued"
    });
    let (pods, _) = wait_settled(cluster);
    assert!(!pods.contains(&leader), "{leader} is still among {pods:?}");
}

#[test]
fn a_pod_downloads_through_the_service_and_uses_the_kubeconfig_with_kubectl() {
    let (cluster, _turn) = deployed();
    wait_settled(cluster);
    let (ns, token) = tenant(cluster, "deploy-download");
    alice_puts_her_token(cluster, &ns.name, &token);
    client_pod(cluster, &ns.name, "client", "token", &["sleep"]);
    wait_ready(cluster, &ns.name, "client", Duration::from_secs(120));

    let url = format!("http://{}/kube-config", service_ip(cluster, OPERATOR));
    exec(
        cluster,
        &ns.name,
        "client",
        &[
            "/kctools",
            "get",
            &url,
            "--bearer-file",
            "/token/token",
            "--out",
            "/work/kubeconfig",
        ],
    )
    .unwrap_or_else(|e| panic!("download from the pod failed: {e}"));
    // operator.yaml names the proxy (config/proxy), so the operator's download does too.
    alice_through_the_proxy(cluster, &ns.name, "/work/kubeconfig");
    let may = |verb_resource: &[&str]| {
        let mut args = vec!["auth", "can-i"];
        args.extend_from_slice(verb_resource);
        args.extend_from_slice(&["-n", &ns.name]);
        kubectl_in_client(cluster, &ns.name, "/work/kubeconfig", &args).unwrap_or_else(|e| e)
    };
    assert!(may(&["create", "kubeconfigrequests.kubeconfig.dev"]).ends_with("yes"));
    assert!(may(&["create", "pods"]).contains("no"));

    // The metrics name every request in every namespace: the download's Service does not serve
    // them; the pods' own metrics port does, for Prometheus.
    let get = |url: &str| exec(cluster, &ns.name, "client", &["/kctools", "get", url]);
    let through_service = get(&format!("http://{}/metrics", service_ip(cluster, OPERATOR)));
    assert!(
        through_service
            .as_ref()
            .is_err_and(|e| e.contains("HTTP 404")),
        "{through_service:?}"
    );
    let (pods, _) = wait_settled(cluster);
    let pod_ip = kubectl(
        cluster,
        &[
            "get",
            "pod",
            &pods[0],
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.status.podIP}",
        ],
    );
    let scraped = get(&format!("http://{pod_ip}:9090/metrics"))
        .unwrap_or_else(|e| panic!("the metrics port answers: {e}"));
    assert!(scraped.contains("http_requests_total"), "{scraped}");
}

/// The controller runs in the operator's pods, which serve no proxy, and the Secret it writes
/// for alice's ID token names the proxy from operator.yaml with the proxy's CA: kubectl in a pod,
/// with that Secret mounted and nothing else, is alice through the proxy.
#[test]
fn an_id_token_request_names_the_installed_proxy_and_works_from_a_pod() {
    let (cluster, _turn) = deployed();
    wait_settled(cluster);
    let (ns, token) = tenant(cluster, "deploy-proxied");
    alice_puts_her_token(cluster, &ns.name, &token);
    alice_requests(cluster, &token, &ns.name, "proxied");
    eventually(Duration::from_secs(60), "alice's request is Ready", || {
        alice_request_status(cluster, &token, &ns.name, "proxied") == "True/Issued"
    });
    let secret = kubectl_as_token(
        cluster,
        &token,
        &[
            "get",
            "kubeconfigrequest",
            "proxied",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.secretName}",
        ],
    )
    .expect("alice reads her request's status");
    client_pod(cluster, &ns.name, "client", &secret, &["sleep"]);
    wait_ready(cluster, &ns.name, "client", Duration::from_secs(120));
    alice_through_the_proxy(cluster, &ns.name, "/token/kubeconfig");
    // Through the proxy, the API server judges alice's own rights.
    let may_create_pods = kubectl_in_client(
        cluster,
        &ns.name,
        "/token/kubeconfig",
        &["auth", "can-i", "create", "pods", "-n", &ns.name],
    )
    .unwrap_or_else(|e| e);
    assert!(may_create_pods.contains("no"), "{may_create_pods}");
}

#[test]
fn the_security_context_is_enforced_by_the_runtime() {
    let (cluster, _turn) = deployed();
    let (pods, _) = wait_settled(cluster);
    for pod in &pods {
        let pid = node::container_pid(cluster, NAMESPACE, pod);
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        assert_eq!(field("Uid:"), "65532 65532 65532 65532", "{pod}");
        assert_eq!(field("Gid:"), "65532 65532 65532 65532", "{pod}");
        assert_eq!(field("CapEff:"), "0000000000000000", "{pod}");
        assert_eq!(field("NoNewPrivs:"), "1", "{pod}");
        assert_eq!(
            field("Seccomp:"),
            "2",
            "{pod}: RuntimeDefault is a seccomp filter"
        );
        // Even the host's root cannot write to the container's root file system: it is mounted
        // read-only (EROFS), which no permission overrides.
        let probe = format!("/proc/{pid}/root/probe");
        let err = fs::write(&probe, b"x").expect_err("the root file system took a write");
        assert_eq!(err.raw_os_error(), Some(30), "{pod}: {err} (want EROFS)");
    }
}

#[test]
fn a_rollout_restart_loses_no_download() {
    let (cluster, _turn) = deployed();
    let (before, _) = wait_settled(cluster);
    let (ns, token) = tenant(cluster, "deploy-rollout");
    alice_puts_her_token(cluster, &ns.name, &token);
    let url = format!("http://{}/kube-config", service_ip(cluster, OPERATOR));
    // A lost download says what the Service's endpoints and kube-proxy did meanwhile.
    let record = ServiceRecord::start(cluster);
    client_pod(
        cluster,
        &ns.name,
        "loop",
        "token",
        &[
            "get-loop",
            &url,
            "--bearer-file",
            "/token/token",
            "--seconds",
            "90",
        ],
    );
    wait_phase(
        cluster,
        &ns.name,
        "loop",
        "Running",
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_secs(3));

    kubectl(
        cluster,
        &[
            "rollout",
            "restart",
            "deployment/kubeconfig-operator",
            "-n",
            NAMESPACE,
        ],
    );
    kubectl(
        cluster,
        &[
            "rollout",
            "status",
            "deployment/kubeconfig-operator",
            "-n",
            NAMESPACE,
            "--timeout=120s",
        ],
    );
    let (after, _) = wait_settled(cluster);
    assert!(
        after.iter().all(|pod| !before.contains(pod)),
        "the rollout replaced no pod: before {before:?}, after {after:?}"
    );
    assert_eq!(
        node::pod_phase(cluster, &ns.name, "loop"),
        "Running",
        "the download loop ended before the rollout did"
    );
    eventually(
        Duration::from_secs(120),
        "the download loop has ended",
        || {
            matches!(
                node::pod_phase(cluster, &ns.name, "loop").as_str(),
                "Succeeded" | "Failed"
            )
        },
    );
    let log = kubectl(cluster, &["logs", "loop", "-n", &ns.name]);
    let record = record.finish();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains(" failed: ")).collect();
    let summary = log.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("ok=") && summary.ends_with(" failed=0") && failures.is_empty(),
        "{summary}; failed downloads:\n{}\n{record}",
        failures.join("\n")
    );
    assert_eq!(
        node::pod_phase(cluster, &ns.name, "loop"),
        "Succeeded",
        "{log}"
    );
}
