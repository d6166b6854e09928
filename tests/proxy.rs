//! The authenticating API server proxy, end to end on the local cluster and Dex: the operator
//! serves the proxy with a real ServiceAccount token that may only impersonate (config/proxy),
//! real kubectl uses the kubeconfig the operator issues in proxy mode, and the API server judges
//! every request as the token's user.

#[path = "support/api_proxy.rs"]
mod api_proxy;
mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use base64::Engine as _;
use futures::StreamExt as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use tokio::{io::AsyncReadExt, net::TcpStream};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use api_proxy::{
    PROXY_NAMESPACE, Proxied, grant_extras, grant_proxy_extras, kubectl_with, proxy_token, runtime,
};
use support::{
    Client, Cluster, Namespace,
    accounts::ClusterAccount,
    can_i_as_token, cluster, eventually, id_token, id_token_for_client, kubectl, kubectl_as_token,
    kubectl_plain,
    operator::{Issuer, LEASE_NAMESPACE, lease_events, the_only_warning},
    requests::write_temp,
};

/// alice may get, list, watch, create and delete ConfigMaps in `namespace`, nothing else.
fn let_alice_use_configmaps(cluster: &Cluster, namespace: &str) {
    kubectl(
        cluster,
        &[
            "create",
            "role",
            "configmaps",
            "--verb=get,list,watch,create,delete",
            "--resource=configmaps",
            "-n",
            namespace,
        ],
    );
    kubectl(
        cluster,
        &[
            "create",
            "rolebinding",
            "alice-configmaps",
            "--role=configmaps",
            &format!("--user={}", cluster.alice_username),
            "-n",
            namespace,
        ],
    );
}

fn user_info(whoami_json: &str) -> serde_json::Value {
    let review: serde_json::Value = serde_json::from_str(whoami_json).expect("whoami JSON");
    review["status"]["userInfo"].clone()
}

#[test]
fn kubectl_through_the_proxy_acts_as_alice_within_her_rbac() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-rbac");
    let other = Namespace::new(cluster, "proxy-elsewhere");
    let_alice_use_configmaps(cluster, &ns.name);
    let proxied = Proxied::start(cluster, &ns.name);
    let alice_token = id_token(cluster, "alice");
    let alice = proxied.kubeconfig_for(&alice_token, "alice.kubeconfig");

    // The issued kubeconfig names the proxy and its CA, not the API server.
    let parsed: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&alice).unwrap()).unwrap();
    let cluster_entry = &parsed["clusters"][0]["cluster"];
    assert_eq!(cluster_entry["server"], proxied.url.as_str());
    let ca = base64::engine::general_purpose::STANDARD
        .decode(
            cluster_entry["certificate-authority-data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(String::from_utf8(ca).unwrap(), proxied.ca_pem);

    // The API server sees exactly the user it sees with the token itself.
    let through_proxy = kubectl_with(&alice, &["auth", "whoami", "-o", "json"]).unwrap();
    let direct =
        kubectl_as_token(cluster, &alice_token, &["auth", "whoami", "-o", "json"]).unwrap();
    assert_eq!(user_info(&through_proxy), user_info(&direct));
    assert_eq!(
        user_info(&through_proxy),
        serde_json::json!({
            "username": cluster.alice_username,
            "groups": ["team-a", "system:authenticated"],
        })
    );

    let n = ns.name.as_str();
    kubectl_with(
        &alice,
        &[
            "create",
            "configmap",
            "made-by-alice",
            "--from-literal=a=b",
            "-n",
            n,
        ],
    )
    .unwrap();
    assert_eq!(
        kubectl_with(
            &alice,
            &[
                "get",
                "configmap",
                "made-by-alice",
                "-n",
                n,
                "-o",
                "jsonpath={.data.a}"
            ]
        )
        .unwrap(),
        "b"
    );
    let listed = kubectl_with(&alice, &["get", "configmaps", "-n", n, "-o", "name"]).unwrap();
    assert!(listed.contains("configmap/made-by-alice"), "{listed}");
    kubectl_with(&alice, &["delete", "configmap", "made-by-alice", "-n", n]).unwrap();
    assert!(
        kubectl(cluster, &["get", "configmaps", "-n", n, "-o", "name"])
            .lines()
            .all(|line| line != "configmap/made-by-alice")
    );

    // Beyond her RoleBinding the answer is the API server's own 403, naming her.
    for args in [
        &["get", "configmaps", "-n", other.name.as_str()][..],
        &["get", "secrets", "-n", n],
        &["create", "configmap", "x", "-n", other.name.as_str()],
    ] {
        let refused = kubectl_with(&alice, args).unwrap_err();
        assert!(
            refused.to_lowercase().contains("forbidden")
                && refused.contains(&format!("User \"{}\" cannot", cluster.alice_username)),
            "{refused}"
        );
    }
    // bob, through the same proxy, has none of alice's rights.
    let bob = proxied.kubeconfig_for(&id_token(cluster, "bob"), "bob.kubeconfig");
    let refused = kubectl_with(&bob, &["get", "configmaps", "-n", n]).unwrap_err();
    assert!(
        refused.contains(&format!("User \"{}\" cannot list", cluster.bob_username)),
        "{refused}"
    );

    let metrics = proxied.operator.metrics();
    for series in [
        r#"kubeconfig_operator_proxy_requests_total{verb="create",code="201"}"#,
        r#"kubeconfig_operator_proxy_requests_total{verb="get",code="200"}"#,
        r#"kubeconfig_operator_proxy_requests_total{verb="list",code="200"}"#,
        r#"kubeconfig_operator_proxy_requests_total{verb="delete",code="200"}"#,
        r#"kubeconfig_operator_proxy_requests_total{verb="list",code="403"}"#,
        "kubeconfig_operator_proxy_upstream_duration_seconds_count",
    ] {
        assert!(metrics.contains(series), "{series} missing in\n{metrics}");
    }

    let path = format!("/api/v1/namespaces/{n}/configmaps");
    let access = proxied.operator.log_events_with("proxied");
    assert!(
        access
            .iter()
            .any(|event| event["user"] == cluster.alice_username.as_str()
                && event["verb"] == "create"
                && event["path"] == path.as_str()
                && event["code"] == 201),
        "no access log event for alice's create in {access:?}"
    );
    let logs = proxied.operator.logs();
    for secret in [alice_token.as_str(), proxied.proxy_token.as_str()] {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(signature),
            "a token is in the operator's log"
        );
    }
}

#[test]
fn a_watch_through_the_proxy_streams_objects_created_after_it_began() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-watch");
    let_alice_use_configmaps(cluster, &ns.name);
    let proxied = Proxied::start(cluster, &ns.name);
    let alice = proxied.kubeconfig_for(&id_token(cluster, "alice"), "alice.kubeconfig");
    kubectl(cluster, &["create", "configmap", "before", "-n", &ns.name]);

    let mut watch = Command::new("kubectl")
        .env("KUBECONFIG", "/dev/null")
        .args(["--kubeconfig", alice.to_str().unwrap()])
        .args(["get", "configmaps", "-w", "-o", "name", "-n", &ns.name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kubectl get -w");
    let (lines, received) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |wanted: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match received.recv_timeout(left) {
                Ok(line) if line == wanted => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    };
    assert!(wait_for("configmap/before"), "the watch did not list");
    // Longer than the listener's idle keep-alive limit: a streaming answer is not idle.
    std::thread::sleep(Duration::from_secs(12));
    kubectl(cluster, &["create", "configmap", "after", "-n", &ns.name]);
    let seen = wait_for("configmap/after");
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        seen,
        "the watch did not stream an object created after it began"
    );
    assert!(
        proxied
            .operator
            .metrics()
            .contains(r#"kubeconfig_operator_proxy_requests_total{verb="watch",code="200"}"#)
    );
}

/// What the API server said for a SelfSubjectReview sent through the proxy.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Refused(u16),
    Saw(serde_json::Value),
}

fn self_subject_review(proxied: &Proxied, header_lines: &[String]) -> (Outcome, String) {
    let body = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    // HTTP/1.0, so the answer's body runs to the end of the connection, unchunked.
    let mut request = format!(
        "POST /apis/authentication.k8s.io/v1/selfsubjectreviews HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        proxied.address,
        body.len()
    );
    for line in header_lines {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    let answer = proxied.raw(request.as_bytes(), Duration::from_secs(20));
    let code: u16 = answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let outcome = if code == 201 {
        let json = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap();
        let review: serde_json::Value = serde_json::from_str(json).expect("a review");
        Outcome::Saw(review["status"]["userInfo"].clone())
    } else {
        Outcome::Refused(code)
    };
    (outcome, answer)
}

#[test]
fn smuggled_identity_headers_gain_nothing() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-smuggling");
    let proxied = Proxied::start(cluster, &ns.name);
    let alice = id_token(cluster, "alice");
    let bob = id_token(cluster, "bob");
    let other_app = id_token_for_client(cluster, "alice", Client::Other);
    let exactly_alice = Outcome::Saw(serde_json::json!({
        "username": cluster.alice_username,
        "groups": ["team-a", "system:authenticated"],
    }));
    let as_alice = format!("Authorization: Bearer {alice}");
    let lines = |extra: &[&str]| -> Vec<String> {
        std::iter::once(as_alice.clone())
            .chain(extra.iter().map(|line| (*line).to_owned()))
            .collect()
    };
    let ours = "refuses requests that carry their own";
    let cases: Vec<(&str, Vec<String>, Outcome, Option<&str>)> = vec![
        ("plain", lines(&[]), exactly_alice.clone(), None),
        (
            "Impersonate-User",
            lines(&["Impersonate-User: admin"]),
            Outcome::Refused(403),
            Some(ours),
        ),
        (
            "Impersonate-Group",
            lines(&["Impersonate-Group: system:masters"]),
            Outcome::Refused(403),
            Some(ours),
        ),
        (
            "upper case",
            lines(&["IMPERSONATE-GROUP: system:masters"]),
            Outcome::Refused(403),
            Some(ours),
        ),
        (
            "lower case",
            lines(&["impersonate-group: system:masters"]),
            Outcome::Refused(403),
            Some(ours),
        ),
        (
            "mixed case",
            lines(&["iMpErSoNaTe-GrOuP: system:masters"]),
            Outcome::Refused(403),
            Some(ours),
        ),
        (
            "underscore",
            lines(&["Impersonate_Group: system:masters"]),
            Outcome::Refused(403),
            Some(ours),
        ),
        (
            "duplicated",
            lines(&[
                "Impersonate-Group: system:masters",
                "Impersonate-Group: system:masters",
            ]),
            Outcome::Refused(403),
            Some(ours),
        ),
        (
            "extra",
            lines(&["Impersonate-Extra-Groups: system:masters"]),
            Outcome::Refused(403),
            Some(ours),
        ),
        (
            "uid",
            lines(&["Impersonate-Uid: 0"]),
            Outcome::Refused(403),
            Some(ours),
        ),
        (
            "hidden behind Connection",
            lines(&["Connection: Impersonate-User", "Impersonate-User: admin"]),
            Outcome::Refused(403),
            Some(ours),
        ),
        // Naming the proxy's own headers in Connection must not strip them.
        (
            "Connection names Impersonate-User",
            lines(&["Connection: Impersonate-User, Impersonate-Group"]),
            exactly_alice.clone(),
            None,
        ),
        (
            "Connection names Authorization",
            lines(&["Connection: Authorization"]),
            exactly_alice.clone(),
            None,
        ),
        // Front-proxy headers count only with the front proxy's client certificate.
        (
            "front-proxy headers",
            lines(&["X-Remote-User: admin", "X-Remote-Group: system:masters"]),
            exactly_alice.clone(),
            None,
        ),
        (
            "two Authorization headers",
            lines(&[&format!("Authorization: Bearer {bob}")]),
            Outcome::Refused(401),
            None,
        ),
        (
            "the same token twice",
            lines(&[as_alice.as_str()]),
            Outcome::Refused(401),
            None,
        ),
        (
            "a token for other-app",
            vec![format!("Authorization: Bearer {other_app}")],
            Outcome::Refused(401),
            Some("WrongAudience"),
        ),
        (
            "other-app with impersonation",
            vec![
                format!("Authorization: Bearer {other_app}"),
                "Impersonate-User: admin".into(),
            ],
            Outcome::Refused(401),
            None,
        ),
        (
            "no token",
            vec!["Impersonate-User: admin".into()],
            Outcome::Refused(401),
            None,
        ),
    ];
    for (name, header_lines, expected, says) in cases {
        let (outcome, answer) = self_subject_review(&proxied, &header_lines);
        assert_eq!(outcome, expected, "{name}: {answer}");
        if let Some(says) = says {
            assert!(answer.contains(says), "{name}: {answer}");
        }
        assert!(
            !answer.contains(&alice) && !answer.contains(&proxied.proxy_token),
            "{name}: a token came back"
        );
    }
    // Nor can the proxy be used as a tunnel.
    let tunnel = proxied.raw(
        format!("CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n{as_alice}\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(2),
    );
    assert!(
        tunnel.starts_with("HTTP/1.1 405 ") && tunnel.contains("does not open tunnels"),
        "{tunnel}"
    );
    // An asterisk-form request is the client's mistake, not a failed upstream (issue 26).
    let asterisk = proxied.raw(
        format!("OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n{as_alice}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(5),
    );
    assert!(
        asterisk.starts_with("HTTP/1.1 400 ") && asterisk.contains("asterisk"),
        "{asterisk}"
    );
}

/// bob holds every request the proxy lets one user have: watches, which never end. The pool
/// (8 connections) would hold more of his, but each beyond his share gets 429 with Retry-After
/// and its connection closes, so alice, from the same address, is still served. Before the
/// per-user cap, bob's eight watches took the whole pool and alice waited for a slot.
#[test]
fn a_tenant_holding_his_share_of_watches_leaves_the_others_served() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-fair-share");
    let n = ns.name.as_str();
    let_alice_use_configmaps(cluster, n);
    kubectl(
        cluster,
        &[
            "create",
            "rolebinding",
            "bob-configmaps",
            "--role=configmaps",
            &format!("--user={}", cluster.bob_username),
            "-n",
            n,
        ],
    );
    let proxied = Proxied::start_with(
        cluster,
        n,
        Issuer::Main,
        &[
            "--proxy-max-connections",
            "8",
            "--proxy-max-requests-per-user",
            "3",
        ],
    );
    let bob = id_token(cluster, "bob");
    let watch = format!(
        "GET /api/v1/namespaces/{n}/configmaps?watch=true HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {bob}\r\n\r\n",
        proxied.address
    );
    let runtime = runtime();
    let (held, refused) = runtime.block_on(async {
        let mut held = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..8 {
            let (mut stream, head) = proxied.open(&watch).await;
            if head.starts_with("HTTP/1.1 200 ") {
                held.push(stream);
                continue;
            }
            let mut rest = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest))
                    .await
                    .is_ok();
            refused.push((head, String::from_utf8_lossy(&rest).into_owned(), closed));
        }
        (held, refused)
    });
    assert_eq!(held.len(), 3, "bob's watches: {refused:?}");
    assert_eq!(refused.len(), 5);
    for (head, body, closed) in &refused {
        assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 1\r\n"),
            "{head}"
        );
        assert!(
            body.contains("as many requests and streams open through the proxy as one user may"),
            "{body}"
        );
        assert!(closed, "a refused connection stays open and holds its slot");
    }
    let alice = proxied.kubeconfig_for(&id_token(cluster, "alice"), "alice.kubeconfig");
    let listed = kubectl_with(&alice, &["get", "configmaps", "-n", n, "-o", "name"]);
    assert!(listed.is_ok(), "{listed:?}");
    assert!(
        proxied
            .operator
            .metrics()
            .contains(r#"kubeconfig_operator_proxy_requests_total{verb="watch",code="429"} 5"#)
    );
    // bob's share comes back once his watches end.
    drop(held);
    support::eventually(Duration::from_secs(10), "bob may watch again", || {
        let (_stream, head) = runtime.block_on(proxied.open(&watch));
        head.starts_with("HTTP/1.1 200 ")
    });
}

#[test]
fn the_proxys_service_account_may_only_impersonate() {
    let cluster = cluster();
    let token = proxy_token(cluster);
    let refused =
        kubectl_as_token(cluster, token, &["get", "secrets", "-n", PROXY_NAMESPACE]).unwrap_err();
    assert!(refused.contains("Forbidden"), "{refused}");
    for denied in [
        &["get", "secrets", "--all-namespaces"][..],
        &["list", "configmaps", "--all-namespaces"],
        &["create", "pods", "-n", "default"],
        &["impersonate", "serviceaccounts", "-n", "default"],
    ] {
        assert!(!can_i_as_token(cluster, token, denied), "{denied:?}");
    }
    for allowed in [&["impersonate", "users"][..], &["impersonate", "groups"]] {
        assert!(can_i_as_token(cluster, token, allowed), "{allowed:?}");
    }
    // UIDs and the credential-id extra, which the proxy forwards, but no other extra unless
    // granted. kubectl auth can-i cannot name resources no API serves; ask the API server.
    for (resource, subresource, expected) in [
        ("uids", "", "true"),
        (
            "userextras",
            "authentication.kubernetes.io/credential-id",
            "true",
        ),
        ("userextras", "scopes", "false"),
    ] {
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {
                "verb": "impersonate",
                "group": "authentication.k8s.io",
                "resource": resource,
                "subresource": subresource,
            }},
        });
        let file = write_temp(&review.to_string());
        let allowed = kubectl_as_token(
            cluster,
            token,
            &[
                "create",
                "--validate=false",
                "-f",
                file.path().to_str().unwrap(),
                "-o",
                "jsonpath={.status.allowed}",
            ],
        )
        .unwrap();
        assert_eq!(allowed, expected, "impersonate {resource}/{subresource}");
    }
}

#[test]
fn a_refused_upgrade_is_returned_and_its_connection_closed() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-upgrade-refused");
    let elsewhere = Namespace::new(cluster, "proxy-upgrade-elsewhere");
    let proxied = Proxied::start(cluster, &ns.name);
    let alice = id_token(cluster, "alice");
    // A WebSocket watch where alice may not watch, with a second request pipelined behind it:
    // after the refusal the connection must close, so the second is never answered.
    let upgrade = format!(
        "GET /api/v1/namespaces/{}/configmaps?watch=true HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {alice}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nOrigin: https://127.0.0.1\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        elsewhere.name, proxied.address
    );
    let pipelined = format!(
        "GET /api/v1/namespaces/{}/configmaps HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {alice}\r\n\r\n",
        ns.name, proxied.address
    );
    let answer = proxied.raw(
        format!("{upgrade}{pipelined}").as_bytes(),
        Duration::from_secs(20),
    );
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(
        answer.contains(&format!(
            "User \\\"{}\\\" cannot watch",
            cluster.alice_username
        )),
        "{answer}"
    );
    assert!(
        !answer.contains("<still open>"),
        "the connection stayed open: {answer}"
    );
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(
        proxied
            .operator
            .metrics()
            .contains(r#"kubeconfig_operator_proxy_requests_total{verb="watch",code="403"} 1"#)
    );
}

#[test]
fn a_websocket_watch_is_upgraded_through_the_proxy_and_streams_events() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-websocket");
    let_alice_use_configmaps(cluster, &ns.name);
    let proxied = Proxied::start(cluster, &ns.name);
    let alice = id_token(cluster, "alice");
    let runtime = runtime();
    let mut socket = runtime.block_on(async {
        let tcp = TcpStream::connect(proxied.address).await.unwrap();
        let tls = proxied
            .tls()
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let mut request = format!(
            "wss://{}/api/v1/namespaces/{}/configmaps?watch=true",
            proxied.address, ns.name
        )
        .into_client_request()
        .unwrap();
        let headers = request.headers_mut();
        headers.insert("authorization", format!("Bearer {alice}").parse().unwrap());
        headers.insert("origin", "https://127.0.0.1".parse().unwrap());
        let (socket, response) = tokio_tungstenite::client_async(request, tls)
            .await
            .expect("the WebSocket handshake through the proxy");
        assert_eq!(response.status(), 101);
        socket
    });
    assert!(
        proxied
            .operator
            .metrics()
            .contains("kubeconfig_operator_proxy_upgraded_streams 1"),
        "{}",
        proxied.operator.metrics()
    );
    kubectl(
        cluster,
        &["create", "configmap", "over-websocket", "-n", &ns.name],
    );
    let event = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(message) = socket.next().await {
                let text = match message.expect("a WebSocket message") {
                    Message::Text(text) => text.to_string(),
                    Message::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    _ => continue,
                };
                let event: serde_json::Value = serde_json::from_str(&text).expect("a watch event");
                if event["object"]["metadata"]["name"] == "over-websocket" {
                    return event;
                }
            }
            panic!("the WebSocket closed before the event came");
        })
        .await
        .expect("the event within 30 s")
    });
    assert_eq!(event["type"], "ADDED");
    runtime.block_on(async {
        let _ = socket.close(None).await;
    });
    drop(socket);
    support::eventually(Duration::from_secs(10), "the stream gauge drops", || {
        proxied
            .operator
            .metrics()
            .contains("kubeconfig_operator_proxy_upgraded_streams 0")
    });
}

/// The API server's own account of who a request is (its `SelfSubjectReview`) is the same
/// through the proxy as with the token straight at an API server that trusts the issuer: the
/// second API server of the harness, configured with the `AuthenticationConfiguration` the
/// operator reads, which maps a UID (`sub`) and an extra field (`example.com/name`) for Dex.
/// The extra's key is granted to the proxy the way the README shows, by a ClusterRole of its own.
#[test]
fn the_proxy_forwards_the_whole_identity() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-identity");
    let env = |name: &str| cluster.env[name].clone();
    let proxied = Proxied::start_with(
        cluster,
        &ns.name,
        Issuer::AuthenticationConfig,
        &[
            "--authentication-config",
            &env("AUTHENTICATION_CONFIG_FILE"),
        ],
    );
    proxy_token(cluster);
    grant_proxy_extras(
        cluster,
        "kubeconfig-operator-proxy-extras",
        &["example.com/name"],
    );

    let token = id_token(cluster, "alice");
    let direct = user_info(
        &kubectl_plain(&[
            "--server",
            &env("KUBE_AUTHN_SERVER"),
            "--certificate-authority",
            &cluster.kube_ca_file,
            "--token",
            &token,
            "--kubeconfig",
            "/dev/null",
            "auth",
            "whoami",
            "-o",
            "json",
        ])
        .expect("alice's token straight at the API server"),
    );
    // What is compared was really there to lose.
    assert!(
        direct["uid"].as_str().is_some_and(|uid| !uid.is_empty()),
        "{direct}"
    );
    assert!(direct["extra"]["example.com/name"].is_array(), "{direct}");
    let alice = proxied.kubeconfig_for(&token, "alice.kubeconfig");
    let proxied_info = user_info(
        &kubectl_with(&alice, &["auth", "whoami", "-o", "json"]).expect("whoami through the proxy"),
    );
    assert_eq!(proxied_info, direct);
}

/// kubectl's first requests are discovery, which shows a refusal's `Status` body as `Forbidden:
/// unknown`: the proxy's own refusals are plain text, which kubectl prints wherever it comes.
#[test]
fn kubectl_prints_the_proxys_own_refusals() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-refusal-text");
    let proxied = Proxied::start(cluster, &ns.name);
    let alice = proxied.kubeconfig_for(&id_token(cluster, "alice"), "alice.kubeconfig");
    let refused = kubectl_with(&alice, &["--as=bob", "get", "configmaps", "-n", &ns.name])
        .expect_err("kubectl --as through the proxy is refused");
    assert!(
        refused.contains(
            "Error from server (Forbidden): the proxy refuses requests that carry their own impersonate-user header"
        ),
        "{refused}"
    );
}

/// A ServiceAccount in `namespace` bound to config/proxy's ClusterRole and to nothing else, as a
/// proxy's is when its installer skipped README's grant for the mapped extra fields: the shared
/// proxy ServiceAccount may hold that grant from another test.
fn bare_proxy_account(cluster: &Cluster, namespace: &str) -> ClusterAccount {
    // Installs config/proxy's ClusterRole.
    proxy_token(cluster);
    let account = ClusterAccount::bound(
        cluster,
        namespace,
        "bare-proxy",
        "kubeconfig-operator-proxy",
    );
    eventually(
        Duration::from_secs(30),
        "the API server lets the bare ServiceAccount impersonate users",
        || can_i_as_token(cluster, &account.token, &["impersonate", "users"]),
    );
    account
}

/// The authentication configuration maps the extra field `example.com/name`, and the proxy's
/// ServiceAccount was not granted its impersonation. The API server refuses alice's requests
/// through the proxy without naming what is missing; the proxy names it, to alice through
/// kubectl and to the administrator in its log, its metrics and one Warning Event on its Lease.
/// Once the grant is made, a refusal by alice's own RBAC is no longer taken for it, alice is
/// served, and the proxy says so, without a restart.
#[test]
fn a_missing_grant_for_an_extra_field_is_named_to_the_user_and_the_administrator() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-grants");
    let mut account = bare_proxy_account(cluster, &ns.name);
    let config = cluster.env["AUTHENTICATION_CONFIG_FILE"].clone();
    let lease = format!("{}-lease", ns.name);
    let proxied = Proxied::start_as(
        cluster,
        &ns.name,
        Issuer::AuthenticationConfig,
        &[
            "--authentication-config",
            &config,
            "--leader-elect=true",
            "--leader-election-namespace",
            LEASE_NAMESPACE,
            "--leader-election-lease-name",
            &lease,
        ],
        account.token.clone(),
    );
    let resource = "userextras/example.com/name";
    let denied = |value: u8| {
        format!("kubeconfig_operator_proxy_impersonation_denied{{resource=\"{resource}\"}} {value}")
    };
    eventually(
        Duration::from_secs(30),
        "the proxy finds the grant missing",
        || proxied.operator.metrics().contains(&denied(1)),
    );
    let logged = proxied
        .operator
        .log_events()
        .into_iter()
        .filter(|event| event["level"] == "ERROR" && event["resource"] == resource)
        .count();
    assert_eq!(logged, 1, "{}", proxied.operator.logs());
    eventually(
        Duration::from_secs(30),
        "the missing grant is recorded as an Event",
        || !lease_events(cluster, &lease).is_empty(),
    );
    // Grants the proxy holds are not reported.
    let metrics = proxied.operator.metrics();
    for held in [
        "users",
        "groups",
        "uids",
        "userextras/authentication.kubernetes.io/credential-id",
    ] {
        assert!(
            metrics.contains(&format!(
                "kubeconfig_operator_proxy_impersonation_denied{{resource=\"{held}\"}} 0"
            )),
            "{metrics}"
        );
    }

    let alice = proxied.kubeconfig_for(&id_token(cluster, "alice"), "alice.kubeconfig");
    // Any authenticated user may read discovery, so only the impersonation can be refused.
    let discovery = ["get", "--raw", "/api"];
    let refused =
        kubectl_with(&alice, &discovery).expect_err("alice refused for want of the grant");
    assert!(
        refused.contains(&format!("may not impersonate {resource}")),
        "{refused}"
    );

    let extras = format!("{}-extras", account.name);
    account.owns("clusterrolebinding", &extras);
    account.owns("clusterrole", &extras);
    grant_extras(
        cluster,
        &extras,
        (&ns.name, "bare-proxy"),
        &account.token,
        &["example.com/name"],
    );
    // At once, before the proxy has looked again: a refusal by alice's own RBAC is the API
    // server's, not taken for the missing grant.
    let secrets = format!("/api/v1/namespaces/{}/secrets", ns.name);
    let own =
        kubectl_with(&alice, &["get", "--raw", &secrets]).expect_err("alice may not list Secrets");
    assert!(
        own.contains("cannot list resource \"secrets\"") && !own.contains("may not impersonate"),
        "{own}"
    );
    eventually(
        Duration::from_secs(30),
        "alice is served through the proxy",
        || kubectl_with(&alice, &discovery).is_ok(),
    );
    // Her answer told the proxy to look again.
    eventually(
        Duration::from_secs(20),
        "the proxy finds the grant made",
        || proxied.operator.metrics().contains(&denied(0)),
    );

    // One Event for the one time the grant went missing, a Warning naming what was missing
    // (not what the proxy holds), and the remedy.
    let event = the_only_warning(
        cluster,
        &lease,
        kubeconfig_operator::server::proxy::DENIED_REASON,
    );
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!("may not impersonate {resource}"))
            && note.contains("grant it the verb impersonate")
            && !note.contains("credential-id"),
        "{note}"
    );
}

/// An upgraded stream leaves the listener's count of connections, so one address could open
/// streams without bound; they count against its share (`proxy.maxConnectionsPerClient`, 1 here)
/// on their own: with alice's WebSocket watch open, a plain request from the address is served,
/// but bob's WebSocket watch from it is refused with 429.
#[test]
fn upgraded_streams_count_against_their_address() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-streams-per-client");
    let n = ns.name.as_str();
    let_alice_use_configmaps(cluster, n);
    let proxied = Proxied::start_with(
        cluster,
        n,
        Issuer::Main,
        &["--proxy-max-connections-per-client", "1"],
    );
    let watch = |token: &str| proxied.websocket_watch(n, &format!("Authorization: Bearer {token}"));
    let alice = id_token(cluster, "alice");
    let runtime = runtime();
    let (_stream, head) = runtime.block_on(proxied.open(&watch(&alice)));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let list = proxied.list_configmaps(n, &alice);
    support::eventually(
        Duration::from_secs(10),
        "the address's connection slot is free again",
        || {
            proxied
                .raw(list.as_bytes(), Duration::from_secs(20))
                .starts_with("HTTP/1.1 200 ")
        },
    );
    let bob = id_token(cluster, "bob");
    let refused = proxied.raw(watch(&bob).as_bytes(), Duration::from_secs(20));
    assert!(refused.starts_with("HTTP/1.1 429 "), "{refused}");
    assert!(
        refused.contains("as many streams open through the proxy as one client may"),
        "{refused}"
    );
}

/// The proxy follows its upstream CA file: started with a CA the API server's certificate does
/// not chain to, it cannot reach the API server (502); once the file holds the right CA, it
/// does, without a restart.
#[test]
fn the_proxy_follows_a_rotated_upstream_ca_file() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-ca-rotation");
    let n = ns.name.as_str();
    let_alice_use_configmaps(cluster, n);
    let dir = tempfile::tempdir().unwrap();
    let upstream_ca = dir.path().join("upstream-ca.crt");
    let mut wrong = CertificateParams::new(Vec::<String>::new()).unwrap();
    wrong.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let wrong = CertifiedIssuer::self_signed(wrong, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(&upstream_ca, wrong.pem()).unwrap();
    let proxied = Proxied::start_with(
        cluster,
        n,
        Issuer::Main,
        &["--proxy-upstream-ca-file", upstream_ca.to_str().unwrap()],
    );
    let alice = id_token(cluster, "alice");
    let list = proxied.list_configmaps(n, &alice);
    let answer = proxied.raw(list.as_bytes(), Duration::from_secs(20));
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");

    std::fs::write(&upstream_ca, std::fs::read(&cluster.kube_ca_file).unwrap()).unwrap();
    support::eventually(
        Duration::from_secs(30),
        "the proxy trusts the new CA",
        || {
            proxied
                .raw(list.as_bytes(), Duration::from_secs(20))
                .starts_with("HTTP/1.1 200 ")
        },
    );
}

/// Browsers cannot set `Authorization` on a WebSocket, so clients such as Headlamp send the token
/// as a subprotocol, which kube-apiserver accepts. Through the proxy: alice's watch is upgraded,
/// bob's token the same way is judged as bob (403 naming him), and a token subprotocol with no
/// other beside it is refused with 401, as the API server refuses it.
#[test]
fn a_bearer_token_in_the_websocket_subprotocol_is_accepted_as_the_api_server_accepts_it() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-ws-subprotocol");
    let n = ns.name.as_str();
    let_alice_use_configmaps(cluster, n);
    let proxied = Proxied::start(cluster, n);
    let encode = |token: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    let upgrade = |token: &str, protocols: &str| {
        proxied.websocket_watch(
            n,
            &format!(
                "Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.{}{protocols}",
                encode(token)
            ),
        )
    };
    let runtime = runtime();
    let alice = id_token(cluster, "alice");
    let (_socket, head) =
        runtime.block_on(proxied.open(&upgrade(&alice, ", base64.binary.k8s.io")));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: base64.binary.k8s.io\r\n"),
        "the API server answers with the protocol left after the token's: {head}"
    );

    let bob = id_token(cluster, "bob");
    let refused = proxied.raw(
        upgrade(&bob, ", base64.binary.k8s.io").as_bytes(),
        Duration::from_secs(20),
    );
    assert!(refused.starts_with("HTTP/1.1 403 "), "{refused}");
    assert!(
        refused.contains(&format!(
            "User \\\"{}\\\" cannot watch",
            cluster.bob_username
        )),
        "{refused}"
    );

    let alone = proxied.raw(upgrade(&alice, "").as_bytes(), Duration::from_secs(5));
    assert!(alone.starts_with("HTTP/1.1 401 "), "{alone}");
    assert!(alone.contains("needs another subprotocol"), "{alone}");
}

/// The harness has no kubelet, so no exec or port-forward session can open. What it can show is
/// who the API server authorizes the upgrade as: bob, who may read the pod but not exec into it,
/// gets the API server's 403 naming him; alice, who may, gets past authorization to the API
/// server's own complaint that the pod has no node. Without impersonation on the upgrade the
/// API server would see the proxy's ServiceAccount and refuse both alike.
#[test]
fn exec_and_port_forward_upgrades_are_authorized_as_the_user() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-exec");
    let n = ns.name.as_str();
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "target", "namespace": n},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{"name": "main", "image": "registry.invalid/none:1"}],
        },
    });
    let manifest = write_temp(&pod.to_string());
    kubectl(
        cluster,
        &["create", "-f", manifest.path().to_str().unwrap()],
    );
    // kubectl port-forward refuses a pod that is not Running before it dials.
    kubectl(
        cluster,
        &[
            "patch",
            "pod",
            "target",
            "-n",
            n,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running"}}"#,
        ],
    );
    kubectl(
        cluster,
        &[
            "create",
            "role",
            "read-pods",
            "--verb=get,list",
            "--resource=pods",
            "-n",
            n,
        ],
    );
    // WebSocket upgrades are GETs, SPDY ones POSTs: kube-apiserver 1.33 authorizes them as get
    // and create on the subresource.
    kubectl(
        cluster,
        &[
            "create",
            "role",
            "exec",
            "--verb=get,create",
            "--resource=pods/exec,pods/portforward",
            "-n",
            n,
        ],
    );
    for (role, user) in [
        ("read-pods", &cluster.alice_username),
        ("read-pods", &cluster.bob_username),
        ("exec", &cluster.alice_username),
    ] {
        kubectl(
            cluster,
            &[
                "create",
                "rolebinding",
                &format!("{role}-{}", user.replace(['@', '.'], "-")),
                &format!("--role={role}"),
                &format!("--user={user}"),
                "-n",
                n,
            ],
        );
    }
    let proxied = Proxied::start(cluster, n);
    let alice = proxied.kubeconfig_for(&id_token(cluster, "alice"), "alice.kubeconfig");
    let bob = proxied.kubeconfig_for(&id_token(cluster, "bob"), "bob.kubeconfig");
    let exec = ["exec", "target", "-n", n, "--", "true"];
    let port_forward = [
        "port-forward",
        "pod/target",
        "-n",
        n,
        "--address=127.0.0.1",
        "0:80",
    ];

    for args in [&exec[..], &port_forward] {
        let refused = kubectl_with(&bob, args).unwrap_err();
        assert!(
            refused.contains(&format!("User \"{}\" cannot", cluster.bob_username))
                && (refused.contains("pods/exec") || refused.contains("pods/portforward")),
            "{refused}"
        );
        let authorized = kubectl_with(&alice, args).unwrap_err();
        assert!(
            authorized.contains("does not have a host assigned") && !authorized.contains("cannot"),
            "{authorized}"
        );
    }
    // The API server's audit log says who each exec and port-forward was authorized as: the
    // proxy's account, impersonating exactly the token's user, and refused for bob.
    let audit_log = cluster.dir.join("logs/audit.log");
    let events = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| {
                event["objectRef"]["namespace"] == n && event["stage"] == "ResponseComplete"
            })
            .collect()
    };
    for subresource in ["exec", "portforward"] {
        for (user, refused) in [
            (&cluster.alice_username, false),
            (&cluster.bob_username, true),
        ] {
            support::eventually(
                Duration::from_secs(15),
                &format!("the audit log has {user}'s pods/{subresource} through the proxy"),
                || {
                    events().iter().any(|event| {
                        event["objectRef"]["subresource"] == subresource
                            && event["impersonatedUser"]["username"] == user.as_str()
                            && event["user"]["username"]
                                .as_str()
                                .is_some_and(|proxy| proxy.starts_with("system:serviceaccount:"))
                            && (event["responseStatus"]["code"] == 403) == refused
                    })
                },
            );
        }
    }
    assert!(
        !events()
            .iter()
            .any(|event| event["objectRef"]["subresource"].is_string()
                && event["impersonatedUser"].is_null()),
        "every exec and port-forward through the proxy is impersonated"
    );
    let metrics = proxied.operator.metrics();
    for series in [
        r#"kubeconfig_operator_proxy_requests_total{verb="connect",code="403"}"#,
        r#"kubeconfig_operator_proxy_requests_total{verb="connect",code="400"}"#,
    ] {
        assert!(metrics.contains(series), "{series} missing in\n{metrics}");
    }
}

/// Issue 26, item 1: with the proxy on, a ServiceAccount request's kubeconfig (and an Argo CD
/// Secret of one) names the API server, not the proxy, which accepts only ID tokens: kubectl
/// with it acts as exactly the account, where through the proxy it would get 401.
#[test]
fn service_account_kubeconfigs_name_the_api_server_in_proxy_mode() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "proxy-sa");
    let proxied = Proxied::start(cluster, &ns.name);
    let account = write_temp(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: deployer\n  namespace: {}\n  annotations:\n    kubeconfig.dev/issuable: \"true\"\n",
        ns.name
    ));
    kubectl(cluster, &["apply", "-f", account.path().to_str().unwrap()]);
    support::requests::apply_request(
        cluster,
        &ns.name,
        "deployer",
        "serviceAccount: {name: deployer}",
    );
    support::requests::apply_request(
        cluster,
        &ns.name,
        "argo",
        "serviceAccount: {name: deployer}\n  format: argocd",
    );
    for request in ["deployer", "argo"] {
        support::requests::wait_for_reason(cluster, &ns.name, request, "Issued");
    }
    let kubeconfig = support::requests::decoded_secret_key(
        cluster,
        &ns.name,
        "deployer-kubeconfig",
        "kubeconfig",
    );
    let parsed: serde_json::Value = serde_yaml::from_str(&kubeconfig).expect("a kubeconfig");
    assert_eq!(
        parsed["clusters"][0]["cluster"]["server"],
        cluster.kube_server.as_str()
    );
    assert_ne!(
        parsed["clusters"][0]["cluster"]["server"],
        proxied.url.as_str()
    );
    let file = write_temp(&kubeconfig);
    let whoami = kubectl_plain(&[
        "--kubeconfig",
        file.path().to_str().unwrap(),
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])
    .expect("the ServiceAccount's kubeconfig works");
    assert_eq!(
        whoami,
        format!("system:serviceaccount:{}:deployer", ns.name)
    );
    let argo_server =
        support::requests::decoded_secret_key(cluster, &ns.name, "argo-kubeconfig", "server");
    assert_eq!(argo_server, cluster.kube_server);
    // An ID token's kubeconfig still names the proxy.
    let alice = proxied.kubeconfig_for(&id_token(cluster, "alice"), "alice.kubeconfig");
    let alice: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(alice).unwrap()).expect("a kubeconfig");
    assert_eq!(
        alice["clusters"][0]["cluster"]["server"],
        proxied.url.as_str()
    );
}
