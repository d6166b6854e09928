//! The local cluster's node (`make node-up`: kube-scheduler, containerd, kubelet and kube-proxy
//! in a network namespace of their own, see README "Local cluster"), for tests that run pods.
//! Use it beside `mod support;` with `#[path = "support/node.rs"] mod node;`.
#![allow(dead_code)]

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use crate::support::{Cluster, cluster_dir, eventually, kubectl, kubectl_result, log_tails, make};

/// `$NODE_CLUSTER_DIR`, else the tests' cluster directory with `-node` appended
/// (`target/cluster-node`): a cluster of its own, because a node changes what other tests see
/// (pods they create without one get scheduled), and the operator `make deploy` installs there
/// reconciles every namespace.
pub fn node_cluster_dir() -> PathBuf {
    match std::env::var_os("NODE_CLUSTER_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let mut dir = cluster_dir().into_os_string();
            dir.push("-node");
            PathBuf::from(dir)
        }
    }
}

/// The node's cluster with its node up, brought up once per test binary (`make node-up` is a
/// quick no-op when everything is healthy). Panics with the make output and log tails otherwise.
pub fn node_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let dir = node_cluster_dir();
        let output = make("node-up", &dir);
        if !output.status.success() {
            panic!(
                "`make node-up` (CLUSTER_DIR={}) failed with {}\n---- stdout\n{}\n---- stderr\n{}\n{}",
                dir.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                log_tails(&dir, 30)
            );
        }
        let cluster = Cluster::from_dir(&dir);
        assert!(
            cluster.env.contains_key("TOOLS_IMAGE"),
            "make node-up left no node in {}/env",
            dir.display()
        );
        cluster
    })
}

/// A value of the env file that the node adds (`TOOLS_IMAGE`, `NODE_NETNS`, ...).
pub fn env<'a>(cluster: &'a Cluster, name: &str) -> &'a str {
    cluster
        .env
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not in the cluster's env file"))
}

/// The host's pid of the running pod's (first) container, from the node's containerd.
pub fn container_pid(cluster: &Cluster, namespace: &str, pod: &str) -> String {
    let id = kubectl(
        cluster,
        &[
            "get",
            "pod",
            pod,
            "-n",
            namespace,
            "-o",
            "jsonpath={.status.containerStatuses[0].containerID}",
        ],
    );
    let id = id
        .strip_prefix("containerd://")
        .unwrap_or_else(|| panic!("{namespace}/{pod}: {id}"));
    let tasks = Command::new("ctr")
        .args([
            "--address",
            env(cluster, "CONTAINERD_ADDRESS"),
            "--namespace",
            "k8s.io",
            "tasks",
            "ls",
        ])
        .output()
        .expect("run ctr");
    let tasks = String::from_utf8_lossy(&tasks.stdout);
    tasks
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.first() == Some(&id)).then(|| fields[1].to_owned())
        })
        .unwrap_or_else(|| panic!("no task {id} of {namespace}/{pod} in:\n{tasks}"))
}

/// The host's `program` in the network namespace of the running pod `namespace/pod`: a client
/// on the pod network, where Service addresses exist (the node's own namespace has no route to
/// them), as a user's machine is on the network of the address they reach the cluster at.
pub fn in_pod_network(cluster: &Cluster, namespace: &str, pod: &str, program: &str) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!(
            "--net=/proc/{}/ns/net",
            container_pid(cluster, namespace, pod)
        ))
        .arg(program);
    command
}

/// `kubectl apply -f -` with the admin kubeconfig, the manifest on stdin.
pub fn apply(cluster: &Cluster, manifest: &str) {
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", &cluster.kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl apply");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "kubectl apply failed: {}\n{manifest}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A pod of the tools image (`kcluster.local/tools`, never pulled) running `kctools ARGS`.
pub fn tools_pod(cluster: &Cluster, namespace: &str, name: &str, args: &[&str], restart: &str) {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    apply(
        cluster,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{app: {name}}}
spec:
  restartPolicy: {restart}
  terminationGracePeriodSeconds: 1
  containers:
    - name: tools
      image: {image}
      imagePullPolicy: Never
      args: [{args}]
      stdin: true
      securityContext:
        runAsNonRoot: true
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {{drop: [ALL]}}
"#,
            image = env(cluster, "TOOLS_IMAGE"),
            args = args.join(", ")
        ),
    );
}

/// `kubectl` arguments that run, in the pod `web` of `namespace` (`kctools serve 8080`), a GET
/// of its own server: what `exec` through each path must bring back.
pub fn exec_web_get(namespace: &str) -> [&str; 8] {
    [
        "exec",
        "web",
        "-n",
        namespace,
        "--",
        "/kctools",
        "get",
        "http://127.0.0.1:8080/",
    ]
}

/// The pod's phase (`Pending`, `Running`, `Succeeded`, `Failed`), or "" when it has none yet.
pub fn pod_phase(cluster: &Cluster, namespace: &str, name: &str) -> String {
    kubectl_result(
        cluster,
        &[
            "get",
            "pod",
            name,
            "-n",
            namespace,
            "-o",
            "jsonpath={.status.phase}",
        ],
    )
    .unwrap_or_default()
}

/// Waits until the pod's phase is `phase`; panics with its description and the node's logs.
pub fn wait_phase(cluster: &Cluster, namespace: &str, name: &str, phase: &str, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = pod_phase(cluster, namespace, name);
        if now == phase {
            return;
        }
        if std::time::Instant::now() >= deadline {
            let describe = kubectl_result(cluster, &["describe", "pod", name, "-n", namespace])
                .unwrap_or_else(|e| e);
            panic!(
                "pod {namespace}/{name} is {now:?}, not {phase} after {timeout:?}\n{describe}\n{}",
                log_tails(&cluster.dir, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the pod's container is ready (Running and its probes pass).
pub fn wait_ready(cluster: &Cluster, namespace: &str, name: &str, timeout: Duration) {
    wait_phase(cluster, namespace, name, "Running", timeout);
    eventually(timeout, &format!("pod {namespace}/{name} is Ready"), || {
        kubectl(
            cluster,
            &[
                "get",
                "pod",
                name,
                "-n",
                namespace,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        ) == "True"
    });
}

/// The container's log (all of it).
pub fn logs(cluster: &Cluster, namespace: &str, name: &str) -> String {
    kubectl(cluster, &["logs", name, "-n", namespace])
}
