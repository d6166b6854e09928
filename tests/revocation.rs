//! Revocation in one verb (README "Revocation"): a `KubeconfigRevocation`, created by an identity
//! that holds nothing but the right to create them, refuses a group's tokens issued before its
//! `notBefore` on every operator, including one started afterwards, for the download and through
//! the API server proxy, and accepts the tokens the group's members get after it. A tenant cannot revoke anyone. Revocations past their
//! `expiresAt` are deleted.

#[path = "support/api_proxy.rs"]
mod api_proxy;
mod support;

use std::{thread, time::Duration};

use api_proxy::{Proxied, kubectl_with};
use chrono::{DateTime, SecondsFormat, Utc};
use support::{
    Cluster, Namespace, cluster, eventually, id_token, kubectl, kubectl_as_token, kubectl_result,
    operator::{Issuer, Operator, operator_kubeconfig},
    requests::{http_get_kubeconfig, write_temp},
};

/// A ServiceAccount whose only right is to manage KubeconfigRevocations (cluster-wide, as the
/// resource is), and its token; the ClusterRole and its binding go when dropped.
struct Revoker {
    name: String,
    token: String,
}

impl Revoker {
    fn new(cluster: &Cluster, namespace: &str) -> Self {
        // The CRDs come with the operator's installation.
        operator_kubeconfig(cluster);
        let name = format!("{namespace}-revoker");
        kubectl(
            cluster,
            &["create", "serviceaccount", "revoker", "-n", namespace],
        );
        kubectl(
            cluster,
            &[
                "create",
                "clusterrole",
                &name,
                "--verb=create,get,list,delete",
                "--resource=kubeconfigrevocations.kubeconfig.dev",
            ],
        );
        kubectl(
            cluster,
            &[
                "create",
                "clusterrolebinding",
                &name,
                &format!("--clusterrole={name}"),
                &format!("--serviceaccount={namespace}:revoker"),
            ],
        );
        let token = kubectl(cluster, &["create", "token", "revoker", "-n", namespace]);
        Self { name, token }
    }
}

impl Drop for Revoker {
    fn drop(&mut self) {
        let cluster = cluster();
        let _ = kubectl_result(cluster, &["delete", "clusterrolebinding", &self.name]);
        let _ = kubectl_result(cluster, &["delete", "clusterrole", &self.name]);
    }
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
    let file = write_temp(manifest);
    kubectl_as_token(
        cluster,
        token,
        &["apply", "-f", file.path().to_str().unwrap()],
    )
}

#[test]
fn a_group_revocation_refuses_older_tokens_everywhere_and_accepts_newer_ones() {
    let cluster = cluster();
    let namespace = Namespace::new(cluster, "revocation");
    let revoker = Revoker::new(cluster, &namespace.name);
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
    let revoker = Revoker::new(cluster, &namespace.name);
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
