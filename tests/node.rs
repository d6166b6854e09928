//! Acceptance tests of the local cluster's node (`make node-up`, on `target/cluster-node`): pods of a locally built image
//! run under containerd and runc, reach the API server through the `kubernetes` Service (kube-proxy's
//! rules in the node's own network namespace), and the API server reaches the kubelet for
//! logs, exec and port-forward.

#[path = "support/node.rs"]
mod node;
mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use node::{env, exec_web_get, logs, node_cluster, tools_pod, wait_phase, wait_ready};
use support::{Namespace, kubectl};

#[test]
fn node_is_ready_and_runs_only_local_images() {
    let cluster = node_cluster();
    let name = env(cluster, "NODE_NAME");
    let ready = kubectl(
        cluster,
        &[
            "get",
            "node",
            name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
    );
    assert_eq!(ready, "True");
    // The runtime is containerd with the sandbox image the harness built.
    let runtime = kubectl(
        cluster,
        &[
            "get",
            "node",
            name,
            "-o",
            "jsonpath={.status.nodeInfo.containerRuntimeVersion}",
        ],
    );
    assert!(runtime.starts_with("containerd://"), "{runtime}");
    let images = kubectl(
        cluster,
        &[
            "get",
            "node",
            name,
            "-o",
            "jsonpath={.status.images[*].names}",
        ],
    );
    assert!(images.contains(env(cluster, "PAUSE_IMAGE")), "{images}");
    assert!(images.contains(env(cluster, "TOOLS_IMAGE")), "{images}");
}

#[test]
fn pod_reaches_the_api_server_through_the_kubernetes_service() {
    let cluster = node_cluster();
    let ns = Namespace::new(cluster, "node-svc");
    let service_ip = kubectl(
        cluster,
        &[
            "get",
            "service",
            "kubernetes",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    assert_eq!(service_ip, "10.0.0.1");
    // In-cluster configuration only: the image holds no kubeconfig, so kubectl goes to
    // KUBERNETES_SERVICE_HOST:PORT with the pod's projected token and the cluster's CA, and -v=6
    // logs the URL it used.
    tools_pod(
        cluster,
        &ns.name,
        "whoami",
        &[
            "kubectl",
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
            "-v=6",
        ],
        "Never",
    );
    wait_phase(
        cluster,
        &ns.name,
        "whoami",
        "Succeeded",
        Duration::from_secs(120),
    );
    let out = logs(cluster, &ns.name, "whoami");
    assert!(
        out.contains("https://10.0.0.1:443/apis/authentication.k8s.io/v1/selfsubjectreviews"),
        "kubectl in the pod did not use the Service's address:\n{out}"
    );
    assert!(
        out.contains(&format!("system:serviceaccount:{}:default", ns.name)),
        "the API server did not see the pod's ServiceAccount:\n{out}"
    );
}

#[test]
fn pod_reaches_the_hosts_issuer_at_its_own_url() {
    // kcluster-loopback: 127.0.0.1:<Dex's port> in a pod leads to the host's Dex, so an
    // operator in a pod can use the issuer URL that is in the tokens.
    let cluster = node_cluster();
    let ns = Namespace::new(cluster, "node-issuer");
    let ca = std::fs::read_to_string(&cluster.oidc_ca_file).unwrap();
    kubectl(
        cluster,
        &[
            "create",
            "configmap",
            "issuer-ca",
            "-n",
            &ns.name,
            &format!("--from-literal=ca.crt={ca}"),
        ],
    );
    let discovery = format!(
        "{}/.well-known/openid-configuration",
        cluster.oidc_issuer_url
    );
    node::apply(
        cluster,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: discovery, namespace: {ns}}}
spec:
  restartPolicy: Never
  containers:
    - name: tools
      image: {image}
      imagePullPolicy: Never
      args: [get, "{discovery}", --cacert, /ca/ca.crt]
      volumeMounts: [{{name: ca, mountPath: /ca}}]
  volumes: [{{name: ca, configMap: {{name: issuer-ca}}}}]
"#,
            ns = ns.name,
            image = env(cluster, "TOOLS_IMAGE"),
        ),
    );
    wait_phase(
        cluster,
        &ns.name,
        "discovery",
        "Succeeded",
        Duration::from_secs(120),
    );
    let doc: serde_json::Value = serde_json::from_str(&logs(cluster, &ns.name, "discovery"))
        .expect("the discovery document is JSON");
    assert_eq!(doc["issuer"], cluster.oidc_issuer_url.as_str());
}

#[test]
fn logs_exec_and_port_forward_reach_the_container() {
    let cluster = node_cluster();
    let ns = Namespace::new(cluster, "node-stream");
    tools_pod(
        cluster,
        &ns.name,
        "web",
        &["serve", "8080", "hello from the pod"],
        "Always",
    );
    wait_ready(cluster, &ns.name, "web", Duration::from_secs(120));

    assert!(logs(cluster, &ns.name, "web").contains("serving on 8080"));

    let got = kubectl(cluster, &exec_web_get(&ns.name));
    assert_eq!(got, "hello from the pod");

    // port-forward: the API server, the kubelet (through netfwd), containerd, the pod.
    let mut pf = Command::new("kubectl")
        .env("KUBECONFIG", &cluster.kubeconfig)
        .args(["port-forward", "-n", &ns.name, "pod/web", ":8080"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kept open until the end: kubectl writes "Handling connection" to it, and dies of a closed pipe.
    let mut out = BufReader::new(pf.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // "Forwarding from 127.0.0.1:PORT -> 8080"
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected port-forward output: {line:?}"));
    let body = Command::new("curl")
        .args(["-sS", "-m", "10", &format!("http://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    let _ = pf.kill();
    let _ = pf.wait();
    drop(out);
    assert_eq!(
        String::from_utf8_lossy(&body.stdout),
        "hello from the pod",
        "{}",
        String::from_utf8_lossy(&body.stderr)
    );
}
