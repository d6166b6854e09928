//! The API server proxy installed as README "Deployment" says (`make deploy`: config/proxy, a
//! Deployment of its own whose ServiceAccount token is a projected volume), used as its users
//! use it, against real containers on the node (tests/support/node.rs). Alice downloads her
//! kubeconfig from the proxy's Service and runs kubectl with nothing else: `exec`, `attach`,
//! `logs -f` and `port-forward`, over WebSocket (kubectl 1.37's default) and over SPDY (its
//! fallback, chosen with `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false` and
//! `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`). Her kubectl (the host's binary) runs in the network
//! namespace of a client pod, on the pod network where the Service's address exists, as a
//! user's machine is on the network of the proxy's address. The API server's audit log tells which
//! protocol reached it: a WebSocket upgrade is a GET, audited as `get`; a SPDY one is a POST,
//! audited as `create`. Alice holds exactly the rights the streams need; bob, without
//! `pods/exec`, is refused by the API server through the proxy.

#[path = "support/deploy.rs"]
mod deploy;
#[path = "support/node.rs"]
mod node;
mod support;

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use deploy::{NAMESPACE, PROXY, deployed, lease_holder, ready_pods, rolled_out, service_ip};
use node::{exec_web_get, in_pod_network, tools_pod, wait_ready};
use support::{Cluster, Namespace, eventually, grant, id_token, kubectl, requests::write_temp};
use tempfile::NamedTempFile;

const HELLO: &str = "hello from the pod";

/// The streaming protocol kubectl is told to use.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Protocol {
    WebSocket,
    Spdy,
}

impl Protocol {
    /// kubectl's switch for both remote commands (exec, attach) and port-forward.
    fn websockets(self) -> &'static str {
        match self {
            Protocol::WebSocket => "true",
            Protocol::Spdy => "false",
        }
    }

    /// How kube-apiserver audits the upgrade: a WebSocket handshake is a GET, SPDY's a POST.
    fn audited_verb(self) -> &'static str {
        match self {
            Protocol::WebSocket => "get",
            Protocol::Spdy => "create",
        }
    }
}

/// A namespace with a pod for each stream and one (`client`) whose network kubectl uses, in
/// which alice may read pods and their logs and exec, attach and port-forward; bob may only
/// read.
fn namespace_with_pods(cluster: &Cluster, prefix: &str) -> Namespace {
    let ns = Namespace::new(cluster, prefix);
    tools_pod(
        cluster,
        &ns.name,
        "web",
        &["serve", "8080", HELLO],
        "Always",
    );
    tools_pod(cluster, &ns.name, "echo", &["echo"], "Always");
    tools_pod(cluster, &ns.name, "tick", &["tick"], "Always");
    tools_pod(cluster, &ns.name, "client", &["sleep"], "Always");
    let reader = "get,list";
    grant(
        cluster,
        &ns.name,
        "alice-read",
        &cluster.alice_username,
        reader,
        "pods,pods/log",
        &[],
    );
    grant(
        cluster,
        &ns.name,
        "bob-read",
        &cluster.bob_username,
        reader,
        "pods,pods/log",
        &[],
    );
    // kube-apiserver 1.37 authorizes a WebSocket upgrade (a GET) as both get and create.
    grant(
        cluster,
        &ns.name,
        "alice-streams",
        &cluster.alice_username,
        "get,create",
        "pods/exec,pods/attach,pods/portforward",
        &[],
    );
    for pod in ["web", "echo", "tick", "client"] {
        wait_ready(cluster, &ns.name, pod, Duration::from_secs(120));
    }
    ns
}

/// `user`'s kubeconfig as the installed proxy's pods issue it (`GET /kube-config` through the
/// proxy's Service, with the user's ID token), checked to name the proxy.
fn kubeconfig_from_the_proxy(cluster: &Cluster, ns: &str, user: &str) -> NamedTempFile {
    let header = write_temp(&format!(
        "Authorization: Bearer {}\n",
        id_token(cluster, user)
    ));
    let file = NamedTempFile::new().expect("a temporary file");
    let proxy = service_ip(cluster, PROXY);
    let output = in_pod_network(cluster, ns, "client", "curl")
        .args(["-sS", "--fail-with-body", "-m", "20", "-H"])
        .arg(format!("@{}", header.path().display()))
        .arg("-o")
        .arg(file.path())
        .arg(format!("http://{proxy}/kube-config"))
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "downloading {user}'s kubeconfig from the proxy's Service: {}{}",
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(file.path()).unwrap_or_default()
    );
    let server = kubectl_with(
        cluster,
        ns,
        file.path(),
        Protocol::WebSocket,
        &[
            "config",
            "view",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    )
    .unwrap();
    assert_eq!(server, format!("https://{proxy}"));
    file
}

/// kubectl on the network of `ns`'s client pod with nothing but `kubeconfig`, told to stream
/// over `protocol`.
fn kubectl_command(
    cluster: &Cluster,
    ns: &str,
    kubeconfig: &Path,
    protocol: Protocol,
    args: &[&str],
) -> Command {
    let mut command = in_pod_network(cluster, ns, "client", "kubectl");
    command
        .env("KUBECONFIG", "/dev/null")
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", protocol.websockets())
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", protocol.websockets())
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args);
    command
}

/// [`kubectl_command`] run to its end: `Ok(trimmed stdout)` or `Err(stderr)`.
fn kubectl_with(
    cluster: &Cluster,
    ns: &str,
    kubeconfig: &Path,
    protocol: Protocol,
    args: &[&str],
) -> Result<String, String> {
    let output = kubectl_command(cluster, ns, kubeconfig, protocol, args)
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// A running kubectl whose stdout lines arrive on a channel; killed when dropped.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    fn start(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run kubectl");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Streaming { child, lines }
    }

    /// The next line of output, or panics after `timeout` naming `what`.
    fn next_line(&self, timeout: Duration, what: &str) -> String {
        self.lines
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no {what} from kubectl within {timeout:?}: {e}"))
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// exec, attach and port-forward over `protocol`, as alice through the installed proxy.
fn streams_reach_the_container(protocol: Protocol) {
    let (cluster, turn) = deployed();
    drop(turn);
    rolled_out(cluster, PROXY);
    let ns = namespace_with_pods(cluster, &format!("proxy-node-{protocol:?}"));
    let alice = kubeconfig_from_the_proxy(cluster, &ns.name, "alice");

    // exec: a command in the container, its output back.
    let got = kubectl_with(
        cluster,
        &ns.name,
        alice.path(),
        protocol,
        &exec_web_get(&ns.name),
    )
    .unwrap_or_else(|e| panic!("exec through the proxy over {protocol:?}: {e}"));
    assert_eq!(got, HELLO);

    // attach: a line to the running process's stdin, its answer from its stdout.
    let mut attach = Streaming::start(kubectl_command(
        cluster,
        &ns.name,
        alice.path(),
        protocol,
        &["attach", "-i", "echo", "-n", &ns.name],
    ));
    let line = format!("over {protocol:?}");
    let stdin = attach.child.stdin.as_mut().unwrap();
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = format!("echo: {line}");
    while attach.next_line(Duration::from_secs(30), &want) != want {
        assert!(Instant::now() < deadline, "no {want:?} from attach");
    }
    drop(attach);

    // port-forward: a local port in the node's namespace to the container's 8080.
    let forward = Streaming::start(kubectl_command(
        cluster,
        &ns.name,
        alice.path(),
        protocol,
        &[
            "port-forward",
            "pod/web",
            "-n",
            &ns.name,
            "--address=127.0.0.1",
            ":8080",
        ],
    ));
    // "Forwarding from 127.0.0.1:PORT -> 8080"
    let line = forward.next_line(Duration::from_secs(30), "Forwarding from ...");
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected port-forward output: {line:?}"))
        .to_owned();
    let body = in_pod_network(cluster, &ns.name, "client", "curl")
        .args(["-sS", "-m", "10", &format!("http://127.0.0.1:{port}/")])
        .output()
        .expect("run curl");
    assert_eq!(
        String::from_utf8_lossy(&body.stdout),
        HELLO,
        "{}",
        String::from_utf8_lossy(&body.stderr)
    );
    drop(forward);

    // Each stream reached the API server over `protocol`, as the proxy's account impersonating
    // alice, with the token projected into a proxy pod (bound to it); none went around the proxy.
    for subresource in ["exec", "attach", "portforward"] {
        eventually(
            Duration::from_secs(30),
            &format!(
                "the audit log has alice's pods/{subresource} in {}",
                ns.name
            ),
            || !audit_events(cluster, &ns.name, subresource, &cluster.alice_username).is_empty(),
        );
        for event in audit_events(cluster, &ns.name, subresource, &cluster.alice_username) {
            assert_eq!(
                (event.verb.as_str(), event.user.as_str(), event.code),
                (protocol.audited_verb(), proxy_account().as_str(), 101),
                "pods/{subresource} over {protocol:?}"
            );
            assert!(
                event.pod.starts_with(&format!("{PROXY}-")),
                "pods/{subresource}: the proxy's token is bound to {:?}, not a proxy pod",
                event.pod
            );
        }
    }
}

#[test]
fn exec_attach_and_port_forward_through_the_installed_proxy_over_websocket() {
    streams_reach_the_container(Protocol::WebSocket);
}

#[test]
fn exec_attach_and_port_forward_through_the_installed_proxy_over_spdy() {
    streams_reach_the_container(Protocol::Spdy);
}

#[test]
fn logs_follow_through_the_installed_proxy() {
    let (cluster, turn) = deployed();
    drop(turn);
    rolled_out(cluster, PROXY);
    let ns = namespace_with_pods(cluster, "proxy-node-logs");
    let alice = kubeconfig_from_the_proxy(cluster, &ns.name, "alice");
    // Not an upgrade but a response that never ends: lines the container prints after the
    // request started arrive while it lasts (`--tail=1`: one line of history).
    let follow = Streaming::start(kubectl_command(
        cluster,
        &ns.name,
        alice.path(),
        Protocol::WebSocket,
        &["logs", "-f", "--tail=1", "tick", "-n", &ns.name],
    ));
    let ticks: Vec<u64> = (0..5)
        .map(|_| {
            let line = follow.next_line(Duration::from_secs(30), "tick N");
            line.strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected log line {line:?}"))
        })
        .collect();
    assert!(
        ticks.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{ticks:?}"
    );
}

#[test]
fn a_user_without_pods_exec_is_refused_through_the_installed_proxy() {
    let (cluster, turn) = deployed();
    drop(turn);
    rolled_out(cluster, PROXY);
    let ns = namespace_with_pods(cluster, "proxy-node-refused");
    let bob = kubeconfig_from_the_proxy(cluster, &ns.name, "bob");
    // He may read the pod through the proxy, so it is his rights that refuse the exec.
    let phase = kubectl_with(
        cluster,
        &ns.name,
        bob.path(),
        Protocol::WebSocket,
        &[
            "get",
            "pod",
            "web",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.phase}",
        ],
    );
    assert_eq!(phase.as_deref(), Ok("Running"));
    for protocol in [Protocol::WebSocket, Protocol::Spdy] {
        let refused = kubectl_with(
            cluster,
            &ns.name,
            bob.path(),
            protocol,
            &exec_web_get(&ns.name),
        )
        .expect_err("bob's exec succeeded");
        assert!(
            refused.contains(&format!("User \"{}\" cannot", cluster.bob_username))
                && refused.contains("pods/exec"),
            "over {protocol:?}: {refused}"
        );
    }
    // The API server's own 403, to the proxy's account impersonating bob, once per protocol.
    eventually(
        Duration::from_secs(30),
        "the audit log has bob's refused pods/exec over both protocols",
        || {
            let events = audit_events(cluster, &ns.name, "exec", &cluster.bob_username);
            [Protocol::WebSocket, Protocol::Spdy]
                .iter()
                .all(|protocol| {
                    events.iter().any(|event| {
                        event.verb == protocol.audited_verb()
                            && event.user == proxy_account()
                            && event.code == 403
                    })
                })
        },
    );
}

/// The proxy's ServiceAccount, as the API server names the user of its token.
fn proxy_account() -> String {
    format!("system:serviceaccount:{NAMESPACE}:{PROXY}")
}

/// What the audit log says of one request.
struct AuditEvent {
    verb: String,
    user: String,
    /// The pod a bound ServiceAccount token names (a token of a Secret names none).
    pod: String,
    code: u64,
}

/// The API server's completed `pods/<subresource>` requests in `namespace` impersonating
/// `user` (the node cluster's audit log; its policy records these subresources).
fn audit_events(
    cluster: &Cluster,
    namespace: &str,
    subresource: &str,
    user: &str,
) -> Vec<AuditEvent> {
    std::fs::read_to_string(cluster.dir.join("logs/audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| {
            event["stage"] == "ResponseComplete"
                && event["objectRef"]["namespace"] == namespace
                && event["objectRef"]["subresource"] == subresource
                && event["impersonatedUser"]["username"] == user
        })
        .map(|event| AuditEvent {
            verb: event["verb"].as_str().unwrap_or_default().to_owned(),
            user: event["user"]["username"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            pod: event["user"]["extra"]["authentication.kubernetes.io/pod-name"][0]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            code: event["responseStatus"]["code"].as_u64().unwrap_or_default(),
        })
        .collect()
}

/// The proxy's pods run no controller (`--controller-enabled=false`): they never reconcile nor
/// look at the operator's Lease, which their account may not even read, and the Lease stays the
/// operator's.
#[test]
fn the_installed_proxy_runs_no_controller() {
    let (cluster, turn) = deployed();
    drop(turn);
    rolled_out(cluster, PROXY);
    eventually(
        Duration::from_secs(60),
        "an operator replica holds the Lease",
        || lease_holder(cluster).starts_with("kubeconfig-operator-"),
    );
    let holder = lease_holder(cluster);
    assert!(!holder.starts_with(&format!("{PROXY}-")), "{holder}");
    let pods = ready_pods(cluster, PROXY);
    assert!(!pods.is_empty(), "no proxy pods");
    for pod in &pods {
        let log = kubectl(cluster, &["logs", pod, "-n", NAMESPACE]);
        assert!(log.contains("serving without reconciling"), "{pod}: {log}");
        assert!(!log.contains("the Lease"), "{pod}: {log}");
    }
    // Its one write: Events about its own pods, such as a refused edit of the authentication
    // configuration (`drift.rs`), in its own namespace only.
    let can_i = |verb: &str, resource: &str, namespace: &str| {
        support::kubectl_result(
            cluster,
            &[
                "auth",
                "can-i",
                verb,
                resource,
                "-n",
                namespace,
                &format!("--as={}", proxy_account()),
            ],
        )
    };
    for verb in ["create", "patch"] {
        let answer = can_i(verb, "events.events.k8s.io", NAMESPACE);
        assert!(
            answer.as_ref().is_ok_and(|yes| yes.trim() == "yes"),
            "{verb} events: {answer:?}"
        );
    }
    assert!(
        can_i("create", "events.events.k8s.io", "default").is_err(),
        "Events outside its namespace"
    );
    // `kubectl auth can-i` answers "no" on stdout with exit status 1.
    for (verb, resource) in [("get", "leases"), ("get", "secrets"), ("list", "secrets")] {
        let answer = can_i(verb, resource, NAMESPACE);
        assert!(
            answer
                .as_ref()
                .is_err_and(|e| e.contains("exit status: 1") && e.contains("\nno")),
            "{verb} {resource}: {answer:?}"
        );
    }
}
