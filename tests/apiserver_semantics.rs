//! The operator's verdict must be kube-apiserver's verdict, shown with real parts: the real Dex,
//! the real kube-apiserver (started with `--oidc-*` flags for the main Dex) and the real operator
//! binary. Two cases where the operator used to disagree with the API server:
//! - a token whose `aud` holds both clients and whose `azp` is the other client (Dex
//!   `trustedPeers`): kube-apiserver accepts it, so the operator must issue a kubeconfig, and that
//!   kubeconfig must work;
//! - a token expired 10 s ago: kube-apiserver allows no leeway on `exp`, so the operator must
//!   refuse it, on both paths (it used to allow 30 s).

mod support;

use std::{thread, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::Value;
use support::{
    Client, Namespace, cluster, id_token_for_client, id_token_short_lived, kubectl,
    kubectl_as_token, kubectl_plain,
    operator::{Issuer, Operator},
    requests::{http_get_kubeconfig, request_with_token, wait_for_reason, write_temp},
};

/// The token's claims, read without verification (the test's own tokens, for their `exp`, `aud`
/// and `azp`).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
        .expect("JSON payload")
}

#[test]
fn a_token_for_two_clients_with_the_other_as_azp_gets_a_working_kubeconfig() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "azp");
    let operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    // Requested by other-app with audience:server:client_id:kubeconfig-operator.
    let token = id_token_for_client(cluster, "alice", Client::OtherForOperator);
    let seen = claims(&token);
    let audiences = seen["aud"].as_array().expect("several audiences");
    assert!(
        audiences.contains(&Value::from(cluster.oidc_client_id.as_str()))
            && audiences.contains(&Value::from(cluster.oidc_other_client_id.as_str())),
        "aud holds both clients: {audiences:?}"
    );
    assert_eq!(
        seen["azp"], cluster.oidc_other_client_id,
        "azp is the other client"
    );

    // The API server itself accepts the token as alice.
    let direct = kubectl_as_token(cluster, &token, &["auth", "whoami", "-o", "json"])
        .expect("kube-apiserver accepts the token");
    assert!(direct.contains(&cluster.alice_username), "{direct}");

    // So the operator issues a kubeconfig, and it works with kubectl as the same user.
    let response = http_get_kubeconfig(&operator.base_url, Some(&token), "");
    assert_eq!(response.status, 200, "{}", response.body);
    let file = write_temp(&response.body);
    let path = file.path().to_str().expect("UTF-8 temp path");
    let whoami = kubectl_plain(&["--kubeconfig", path, "auth", "whoami", "-o", "json"])
        .expect("the issued kubeconfig works");
    let identity: Value = serde_json::from_str(&whoami).expect("whoami answers JSON");
    assert_eq!(
        identity["status"]["userInfo"]["username"], cluster.alice_username,
        "{whoami}"
    );
    let direct: Value = serde_json::from_str(&direct).expect("whoami answers JSON");
    assert_eq!(
        identity["status"]["userInfo"], direct["status"]["userInfo"],
        "the kubeconfig's identity is the token's identity at the API server"
    );

    // The CRD path agrees.
    request_with_token(cluster, &ns.name, "alice", &token);
    wait_for_reason(cluster, &ns.name, "alice", "Issued");
}

#[test]
fn a_token_expired_ten_seconds_ago_is_refused_on_both_paths() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "expired");
    let operator = Operator::start(cluster, &ns.name, Issuer::ShortLived, &[]);
    // The short-lived Dex's tokens expire 5 s after issue.
    let token = id_token_short_lived(cluster, "alice");
    let exp = claims(&token)["exp"].as_i64().expect("exp is a number");
    let expired_for = chrono::Utc::now().timestamp() - exp;
    if expired_for < 10 {
        thread::sleep(Duration::from_secs((10 - expired_for) as u64));
    }
    let expired_for = chrono::Utc::now().timestamp() - exp;
    assert!(
        (10..30).contains(&expired_for),
        "the token expired {expired_for} s ago: inside the old 30 s leeway"
    );

    let response = http_get_kubeconfig(&operator.base_url, Some(&token), "");
    assert_eq!(response.status, 401, "{}", response.body);
    assert!(response.body.starts_with("Expired"), "{}", response.body);
    assert!(!response.body.contains(&token), "the token is not echoed");

    request_with_token(cluster, &ns.name, "alice", &token);
    let message = wait_for_reason(cluster, &ns.name, "alice", "TokenExpired");
    assert!(message.contains("Expired"), "{message}");
    // Never issued in between (with a leeway it would have been, and the Secret kept).
    let written = kubectl(
        cluster,
        &[
            "get",
            "secrets",
            "-n",
            &ns.name,
            "-l",
            "app.kubernetes.io/managed-by=kubeconfig-operator",
            "-o",
            "name",
        ],
    );
    assert!(written.is_empty(), "kubeconfig Secrets written: {written}");
}
