//! Revocation in one verb (README "Revocation"): a `KubeconfigRevocation`, created by an identity
//! that holds nothing but the right to create them, refuses a group's tokens issued before its
//! `notBefore` on every operator, including one started afterwards, for the download and through
//! the API server proxy, and accepts the tokens the group's members get after it. A tenant cannot revoke anyone. Revocations past their
//! `expiresAt` are deleted.
//!
//! Deleting a KubeconfigRequest revokes the ID token it held: its kubeconfig is refused through
//! the proxy of every replica, and after a restart, while the neighbour's goes on working; the
//! tenant who deletes it can revoke nothing else.

#[path = "support/api_proxy.rs"]
mod api_proxy;
mod support;

use std::{
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::Duration,
};

use api_proxy::{PROXY_NAMESPACE, Proxied, kubectl_with, runtime};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use support::{
    Cluster, Namespace,
    accounts::ClusterAccount,
    cluster, eventually, grant, id_token, kubectl, kubectl_as_token, kubectl_result,
    operator::{Issuer, Operator, operator_kubeconfig},
    requests::{
        apply_request, apply_request_as, http_get_kubeconfig, manifest_as, put_token_secret,
        wait_for_reason,
    },
};
use tokio::io::AsyncReadExt as _;

/// Revocations are cluster-wide: a test that revokes alice's group must not run while another
/// expects her tokens to work.
fn alone() -> MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::new(());
    ALONE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A watch of the ConfigMaps in `namespace` with `token`, on a connection that closes when the
/// watch ends.
fn watch_request(proxied: &Proxied, namespace: &str, token: &str) -> String {
    format!(
        "GET /api/v1/namespaces/{namespace}/configmaps?watch=true HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
        proxied.address
    )
}

/// Opens `request` on `proxied` and checks that the answer's head says it streams.
async fn open_stream(proxied: &Proxied, request: &str, status: &str) -> Stream {
    let (stream, head) = proxied.open(request).await;
    assert!(head.starts_with(status), "{head}");
    stream
}

type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Whether the proxy ends `stream` within `timeout`, reading what it still sends.
async fn ends_within(stream: &mut Stream, timeout: Duration) -> bool {
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(timeout, async {
        while let Ok(read) = stream.read(&mut buffer).await {
            if read == 0 {
                return;
            }
        }
    })
    .await
    .is_ok()
}

/// A ServiceAccount whose only right is to manage KubeconfigRevocations (cluster-wide, as the
/// resource is).
fn revoker(cluster: &Cluster, namespace: &str) -> ClusterAccount {
    // The CRDs come with the operator's installation.
    operator_kubeconfig(cluster);
    ClusterAccount::with_role(
        cluster,
        namespace,
        "revoker",
        "create,get,list,delete",
        "kubeconfigrevocations.kubeconfig.dev",
    )
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn revocation(
    name: &str,
    group: &str,
    not_before: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> String {
    serde_json::json!({
        "apiVersion": "kubeconfig.dev/v1alpha1",
        "kind": "KubeconfigRevocation",
        "metadata": {"name": name},
        "spec": {
            "group": group,
            "notBefore": rfc3339(not_before),
            "expiresAt": rfc3339(expires_at),
            "message": "compromised laptop; ask security@example.com",
        },
    })
    .to_string()
}

/// Applies `manifest` with `token`'s identity.
fn apply_as(cluster: &Cluster, token: &str, manifest: &str) -> Result<String, String> {
    manifest_as(cluster, token, "apply", manifest)
}

#[test]
fn a_group_revocation_refuses_older_tokens_everywhere_and_accepts_newer_ones() {
    let _alone = alone();
    let cluster = cluster();
    let namespace = Namespace::new(cluster, "revocation");
    let revoker = revoker(cluster, &namespace.name);
    let proxied = Proxied::start(cluster, &namespace.name);
    let operator = &proxied.operator;
    let before = id_token(cluster, "alice");
    let bob = id_token(cluster, "bob");
    // A kubeconfig naming the proxy, used once: the proxy has cached its verdict on the token.
    let through_proxy = proxied.kubeconfig_for(&before, "alice-before");
    let whoami = [
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ];
    assert_eq!(
        kubectl_with(&through_proxy, &whoami).unwrap(),
        cluster.alice_username
    );

    // Tokens carry whole seconds: notBefore is a second after alice's token was issued.
    thread::sleep(Duration::from_secs(1));
    let not_before = Utc::now();
    let name = format!("{}-team-a", namespace.name);
    let manifest = revocation(
        &name,
        "team-a",
        not_before,
        not_before + chrono::Duration::minutes(10),
    );

    // A tenant cannot revoke anyone: the resource is a verb of its own.
    let refused = apply_as(cluster, &bob, &manifest).unwrap_err();
    assert!(refused.contains("forbidden"), "{refused}");
    apply_as(cluster, &revoker.token, &manifest).expect("the revoker may revoke");

    eventually(
        Duration::from_secs(10),
        "the operator refuses alice's older token",
        || http_get_kubeconfig(&operator.base_url, Some(&before), "").status == 401,
    );
    let refusal = http_get_kubeconfig(&operator.base_url, Some(&before), "");
    assert!(refusal.body.starts_with("Revoked: "), "{}", refusal.body);
    assert!(refusal.body.contains(&name), "{}", refusal.body);
    assert!(
        refusal.body.contains("ask security@example.com"),
        "{}",
        refusal.body
    );
    let refused = kubectl_with(&through_proxy, &whoami).unwrap_err();
    assert!(
        refused.contains("Unauthorized") || refused.contains("logged in"),
        "{refused}"
    );
    let raw = proxied.raw(
        proxied.list_configmaps(&namespace.name, &before).as_bytes(),
        Duration::from_secs(10),
    );
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(raw.contains("Revoked"), "{raw}");
    // bob is not in team-a.
    assert_eq!(
        http_get_kubeconfig(&operator.base_url, Some(&bob), "").status,
        200
    );

    // A token alice gets after notBefore works.
    thread::sleep(Duration::from_secs(1));
    let after = id_token(cluster, "alice");
    let fresh = http_get_kubeconfig(&operator.base_url, Some(&after), "");
    assert_eq!(fresh.status, 200, "{}", fresh.body);

    // The revocation lives in the API server: an operator started now refuses from its first
    // answer, since it is not ready before it has listed the revocations.
    drop(proxied);
    let restarted = Operator::start(cluster, &namespace.name, Issuer::Main, &[]);
    assert_eq!(
        http_get_kubeconfig(&restarted.base_url, Some(&before), "").status,
        401
    );
    assert_eq!(
        http_get_kubeconfig(&restarted.base_url, Some(&after), "").status,
        200
    );
    kubectl_as_token(
        cluster,
        &revoker.token,
        &["delete", "kubeconfigrevocation", &name],
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "deleting the revocation gives alice's older token back",
        || http_get_kubeconfig(&restarted.base_url, Some(&before), "").status == 200,
    );
}

#[test]
fn revocations_past_their_expiry_are_deleted() {
    let cluster = cluster();
    let namespace = Namespace::new(cluster, "revocation-expiry");
    let revoker = revoker(cluster, &namespace.name);
    let name = format!("{}-ended", namespace.name);
    let now = Utc::now();
    // A group no token carries, so the revocation refuses nothing while it lasts.
    let manifest = revocation(
        &name,
        &format!("{}-nobody", namespace.name),
        now - chrono::Duration::minutes(10),
        now + chrono::Duration::seconds(2),
    );
    apply_as(cluster, &revoker.token, &manifest).unwrap();
    thread::sleep(Duration::from_secs(3));
    let _operator = Operator::start(cluster, &namespace.name, Issuer::Main, &[]);
    eventually(
        Duration::from_secs(30),
        "the operator deletes the ended revocation",
        || {
            kubectl(
                cluster,
                &[
                    "get",
                    "kubeconfigrevocations",
                    "-o",
                    "jsonpath={.items[*].metadata.name}",
                ],
            )
            .split_whitespace()
            .all(|existing| existing != name)
        },
    );
}

/// The first line of the proxy's answer to a list of ConfigMaps with `token`, and whether it
/// says `Revoked`.
fn through(proxied: &Proxied, namespace: &str, token: &str) -> (String, bool) {
    let answer = proxied.raw(
        proxied.list_configmaps(namespace, token).as_bytes(),
        Duration::from_secs(10),
    );
    let status = answer.lines().next().unwrap_or_default().to_owned();
    (status, answer.contains("Revoked"))
}

#[test]
fn deleting_a_request_revokes_its_id_token_on_every_replica_and_after_a_restart() {
    let _alone = alone();
    let cluster = cluster();
    let namespace = Namespace::new(cluster, "revoke-deleted");
    let ns = namespace.name.as_str();
    let lease = format!("revoke-{ns}");
    let flags = [
        "--leader-elect=true",
        "--leader-election-namespace",
        PROXY_NAMESPACE,
        "--leader-election-lease-name",
        &lease,
    ];
    let first = Proxied::start_with(cluster, ns, Issuer::Main, &flags);
    let second = Proxied::start_with(cluster, ns, Issuer::Main, &flags);

    // bob may create requests, and manage his own only; read his token Secret and his
    // kubeconfig; list ConfigMaps, to have something to do through the proxy. alice's request
    // is the admin's, beside his.
    let bob = id_token(cluster, "bob");
    let alice = id_token(cluster, "alice");
    let user = &cluster.bob_username;
    grant(
        cluster,
        ns,
        "create-requests",
        user,
        "create",
        "kubeconfigrequests.kubeconfig.dev",
        &[],
    );
    grant(
        cluster,
        ns,
        "own-request",
        user,
        "get,update,patch,delete",
        "kubeconfigrequests.kubeconfig.dev",
        &["bob"],
    );
    grant(
        cluster,
        ns,
        "own-secrets",
        user,
        "get",
        "secrets",
        &["bob-token", "bob-kubeconfig"],
    );
    for (role, who) in [
        ("bob-configmaps", user),
        ("alice-configmaps", &cluster.alice_username),
    ] {
        grant(cluster, ns, role, who, "list,watch", "configmaps", &[]);
    }
    put_token_secret(cluster, ns, "bob-token", "token", &bob);
    put_token_secret(cluster, ns, "alice-token", "token", &alice);
    apply_request(cluster, ns, "alice", "tokenSecretRef: {name: alice-token}");
    let bob_request = "tokenSecretRef: {name: bob-token}";
    eventually(
        Duration::from_secs(10),
        "bob may create his request",
        || apply_request_as(cluster, &bob, ns, "bob", bob_request).is_ok(),
    );
    wait_for_reason(cluster, ns, "bob", "Issued");
    wait_for_reason(cluster, ns, "alice", "Issued");

    // bob's kubeconfig, as he reads it from his Secret: it names the leader's proxy.
    let data = kubectl_as_token(
        cluster,
        &bob,
        &[
            "get",
            "secret",
            "bob-kubeconfig",
            "-n",
            ns,
            "-o",
            "jsonpath={.data.kubeconfig}",
        ],
    )
    .unwrap();
    let kubeconfig = first.dir.path().join("bob-kubeconfig");
    std::fs::write(
        &kubeconfig,
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap(),
    )
    .unwrap();
    let list = ["get", "configmaps", "-n", ns, "-o", "name"];
    kubectl_with(&kubeconfig, &list).expect("bob's kubeconfig works before");
    for proxied in [&first, &second] {
        assert_eq!(through(proxied, ns, &bob).0, "HTTP/1.1 200 OK");
    }

    // A tenant can revoke nothing but what his own requests held.
    let refusals = [
        kubectl_as_token(
            cluster,
            &bob,
            &["delete", "kcr", "alice", "-n", ns, "--wait=false"],
        ),
        kubectl_as_token(
            cluster,
            &bob,
            &[
                "patch",
                "kcr",
                "bob",
                "-n",
                ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"credential":"JTI=alice"}}"#,
            ],
        ),
        apply_request_as(
            cluster,
            &bob,
            ns,
            "bob-steals",
            "tokenSecretRef: {name: alice-token}",
        ),
        apply_as(
            cluster,
            &bob,
            &serde_json::json!({
                "apiVersion": "kubeconfig.dev/v1alpha1",
                "kind": "KubeconfigRevocation",
                "metadata": {"name": format!("{ns}-bob")},
                "spec": {"credential": "JTI=alice", "notBefore": rfc3339(Utc::now())},
            })
            .to_string(),
        ),
    ];
    for refusal in refusals {
        let refusal = refusal.unwrap_err();
        assert!(refusal.contains("forbidden"), "{refusal}");
    }

    // bob's watches through both replicas, and alice's beside them.
    let streams = runtime();
    let mut watches = Vec::new();
    for proxied in [&first, &second] {
        for token in [&bob, &alice] {
            let request = watch_request(proxied, ns, token);
            watches.push(streams.block_on(open_stream(proxied, &request, "HTTP/1.1 200")));
        }
    }

    kubectl_as_token(
        cluster,
        &bob,
        &["delete", "kcr", "bob", "-n", ns, "--wait=false"],
    )
    .expect("bob may delete his request");
    eventually(
        Duration::from_secs(30),
        "the operator lets bob's request go",
        || kubectl_result(cluster, &["get", "kcr", "bob", "-n", ns]).is_err(),
    );
    for proxied in [&first, &second] {
        eventually(
            Duration::from_secs(10),
            "every replica's proxy refuses bob's token as revoked",
            || through(proxied, ns, &bob) == ("HTTP/1.1 401 Unauthorized".to_owned(), true),
        );
        assert_eq!(through(proxied, ns, &alice).0, "HTTP/1.1 200 OK");
    }
    let refused = kubectl_with(&kubeconfig, &list).unwrap_err();
    assert!(
        refused.contains("Unauthorized") || refused.contains("logged in"),
        "{refused}"
    );
    // bob's open watches ended on both replicas; alice's are still open.
    for (index, watch) in watches.iter_mut().enumerate() {
        let bobs = index % 2 == 0;
        let timeout = Duration::from_secs(if bobs { 10 } else { 1 });
        assert_eq!(
            streams.block_on(ends_within(watch, timeout)),
            bobs,
            "watch {index}"
        );
    }

    // The revocation says where it came from, and names the token by its digest only.
    let revocations = kubectl(
        cluster,
        &[
            "get",
            "kcrev",
            "-l",
            "kubeconfig.dev/revoked-because=RequestDeleted",
            "-o",
            "json",
        ],
    );
    let revocations: serde_json::Value = serde_json::from_str(&revocations).unwrap();
    let ours: Vec<&serde_json::Value> = revocations["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["metadata"]["annotations"]["kubeconfig.dev/request"] == format!("{ns}/bob"))
        .collect();
    assert_eq!(ours.len(), 1, "{revocations}");
    let revocation = ours[0];
    let credential = revocation["spec"]["credential"].as_str().unwrap();
    assert!(credential.starts_with("SHA256="), "{credential}");
    assert!(
        !revocation.to_string().contains(&bob),
        "the token itself is never written"
    );
    let name = revocation["metadata"]["name"].as_str().unwrap().to_owned();

    // State in the API server: an operator started afterwards refuses it from its first answer.
    drop(second);
    drop(first);
    let restarted = Proxied::start(cluster, ns);
    assert_eq!(
        through(&restarted, ns, &bob),
        ("HTTP/1.1 401 Unauthorized".to_owned(), true)
    );
    assert_eq!(through(&restarted, ns, &alice).0, "HTTP/1.1 200 OK");

    // alice's request goes while an operator runs, so the namespace is not held up.
    kubectl(
        cluster,
        &[
            "delete",
            "kcr",
            "alice",
            "-n",
            ns,
            "--wait=true",
            "--timeout=30s",
        ],
    );
    let _ = kubectl_result(cluster, &["delete", "kcrev", &name]);
    let _ = kubectl_result(
        cluster,
        &[
            "delete",
            "lease",
            &lease,
            "-n",
            PROXY_NAMESPACE,
            "--ignore-not-found",
        ],
    );
}

#[test]
fn a_group_revocation_closes_the_open_streams_of_its_members() {
    let _alone = alone();
    let cluster = cluster();
    let namespace = Namespace::new(cluster, "revoke-streams");
    let ns = namespace.name.as_str();
    let revoker = revoker(cluster, ns);
    let proxied = Proxied::start(cluster, ns);
    let alice = id_token(cluster, "alice");
    let bob = id_token(cluster, "bob");
    for (role, user) in [
        ("alice", &cluster.alice_username),
        ("bob", &cluster.bob_username),
    ] {
        grant(cluster, ns, role, user, "watch", "configmaps", &[]);
    }
    // A watch over HTTP and one over WebSocket (an upgraded stream, as exec, attach and
    // port-forward are) for alice, who is in team-a; one for bob, who is not.
    let streams = runtime();
    let bearer = |token: &str| format!("Authorization: Bearer {token}");
    let mut alices = [
        streams.block_on(open_stream(
            &proxied,
            &watch_request(&proxied, ns, &alice),
            "HTTP/1.1 200",
        )),
        streams.block_on(open_stream(
            &proxied,
            &proxied.websocket_watch(ns, &bearer(&alice)),
            "HTTP/1.1 101",
        )),
    ];
    let mut bobs = streams.block_on(open_stream(
        &proxied,
        &proxied.websocket_watch(ns, &bearer(&bob)),
        "HTTP/1.1 101",
    ));

    thread::sleep(Duration::from_secs(1));
    let not_before = Utc::now();
    let name = format!("{ns}-team-a");
    let manifest = revocation(
        &name,
        "team-a",
        not_before,
        not_before + chrono::Duration::minutes(10),
    );
    apply_as(cluster, &revoker.token, &manifest).unwrap();
    for (index, watch) in alices.iter_mut().enumerate() {
        assert!(
            streams.block_on(ends_within(watch, Duration::from_secs(10))),
            "alice's stream {index} ends"
        );
    }
    assert!(
        !streams.block_on(ends_within(&mut bobs, Duration::from_secs(1))),
        "bob's stream stays open"
    );
    let log = proxied.operator.logs();
    assert!(
        log.contains("closing a stream whose token was revoked"),
        "{log}"
    );
    assert!(!log.contains(&alice), "no token in the log");
    kubectl_as_token(
        cluster,
        &revoker.token,
        &["delete", "kubeconfigrevocation", &name],
    )
    .unwrap();
}
