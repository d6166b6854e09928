//! The API server confirms every issuance: on the real cluster, the identity the operator reports
//! for a request (status.identity) and a download (X-Kubeconfig-* headers) is the one kubectl sees
//! with the issued kubeconfig, and a token that the operator would accept but the API server does
//! not (one from the short-lived Dex, which kube-apiserver does not trust) is refused on both
//! paths, saying so.

mod support;

use base64::Engine as _;
use support::{
    Cluster, Namespace, cluster, grant, id_token, id_token_short_lived, kubectl_as_token,
    kubectl_result,
    operator::{Issuer, Operator},
    requests::{
        apply_request, http_get_kubeconfig, put_token_secret, wait_for_reason,
        whoami_with_kubeconfig, write_temp,
    },
};

/// `kubectl create -f` of `manifest` as the holder of `token`.
fn create_as(cluster: &Cluster, token: &str, manifest: &serde_json::Value) {
    let file = write_temp(&manifest.to_string());
    kubectl_as_token(
        cluster,
        token,
        &["create", "-f", file.path().to_str().unwrap()],
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// `kubectl get -o json` of `object` as the holder of `token`.
fn get_as(cluster: &Cluster, token: &str, namespace: &str, object: &str) -> serde_json::Value {
    let json = kubectl_as_token(
        cluster,
        token,
        &["get", object, "-n", namespace, "-o", "json"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&json).expect("kubectl prints JSON")
}

#[test]
fn status_identity_and_download_headers_are_what_kubectl_auth_whoami_says() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-confirm");
    let operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    // Alice may make her own token Secret and request, and read what she asked for; no more.
    let alice = id_token(cluster, "alice");
    let user = &cluster.alice_username;
    grant(
        cluster,
        &ns.name,
        "alice-requests",
        user,
        "create,get",
        "kubeconfigrequests.kubeconfig.dev",
        &[],
    );
    grant(
        cluster,
        &ns.name,
        "alice-creates-secrets",
        user,
        "create",
        "secrets",
        &[],
    );
    grant(
        cluster,
        &ns.name,
        "alice-reads-hers",
        user,
        "get",
        "secrets",
        &["alice-token", "alice-kubeconfig"],
    );
    create_as(
        cluster,
        &alice,
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "alice-token", "namespace": ns.name },
            "stringData": { "token": alice },
        }),
    );
    create_as(
        cluster,
        &alice,
        &serde_json::json!({
            "apiVersion": "kubeconfig.dev/v1alpha1", "kind": "KubeconfigRequest",
            "metadata": { "name": "alice", "namespace": ns.name },
            "spec": { "tokenSecretRef": { "name": "alice-token" } },
        }),
    );
    wait_for_reason(cluster, &ns.name, "alice", "Issued");
    let request = get_as(cluster, &alice, &ns.name, "kcr/alice");
    let identity = &request["status"]["identity"];

    let secret = get_as(cluster, &alice, &ns.name, "secret/alice-kubeconfig");
    let kubeconfig = secret["data"]["kubeconfig"]
        .as_str()
        .expect("kubeconfig data");
    let kubeconfig = base64::engine::general_purpose::STANDARD
        .decode(kubeconfig)
        .expect("base64");
    let seen = &whoami_with_kubeconfig(std::str::from_utf8(&kubeconfig).expect("UTF-8"))
        .unwrap_or_else(|e| panic!("the issued kubeconfig does not authenticate: {e}"));
    assert_eq!(identity, seen, "status.identity is what kubectl sees");
    assert_eq!(seen["username"].as_str(), Some(user.as_str()));

    let response = http_get_kubeconfig(&operator.base_url, Some(&alice), "");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("x-kubeconfig-user"), user);
    let groups: Vec<&str> = seen["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|group| group.as_str().expect("a group name"))
        .collect();
    assert!(groups.contains(&"system:authenticated"), "{seen}");
    assert_eq!(response.header("x-kubeconfig-groups"), groups.join(","));
    for (name, value) in &response.headers {
        assert!(!value.contains(&alice), "header {name} carries the token");
    }
}

#[test]
fn a_token_the_api_server_does_not_accept_is_refused_on_both_paths() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-unconfirmed");
    // The operator trusts the short-lived Dex; kube-apiserver does not.
    let operator = Operator::start(
        cluster,
        &ns.name,
        Issuer::ShortLived,
        &["--confirm-with-api-server=true"],
    );

    // Tokens live 5 s: each is used at once.
    let token = id_token_short_lived(cluster, "alice");
    let response = http_get_kubeconfig(&operator.base_url, Some(&token), "");
    assert_eq!(response.status, 401, "{}", response.body);
    assert!(
        response.body.starts_with("RejectedByAPIServer: "),
        "{}",
        response.body
    );
    assert!(
        response
            .header("www-authenticate")
            .contains("RejectedByAPIServer"),
        "{:?}",
        response.headers
    );
    assert!(!response.body.contains(&token));
    assert_eq!(response.header("x-kubeconfig-user"), "");

    // The request waits for its token Secret, so the token is judged as soon as it is there.
    apply_request(
        cluster,
        &ns.name,
        "alice",
        "tokenSecretRef: {name: alice-token}",
    );
    wait_for_reason(cluster, &ns.name, "alice", "TokenSecretNotFound");
    let token = id_token_short_lived(cluster, "alice");
    put_token_secret(cluster, &ns.name, "alice-token", "token", &token);
    let message = wait_for_reason(cluster, &ns.name, "alice", "RejectedByAPIServer");
    assert!(message.contains("does not accept this token"), "{message}");
    assert!(!message.contains(&token));
    assert!(
        kubectl_result(
            cluster,
            &["get", "secret", "alice-kubeconfig", "-n", &ns.name]
        )
        .is_err(),
        "no kubeconfig was written"
    );
}
