//! The operator end to end, on the local cluster and Dex: requests become Ready, the issued
//! kubeconfig works with real kubectl within alice's RBAC, the HTTP download agrees with the
//! Secret, bad tokens are refused with the right reason on both paths, and the admission policy
//! stops confused-deputy requests.

mod support;

use std::{net::TcpListener, time::Duration};

use support::{
    Cluster, Namespace, cluster, id_token, kubectl, kubectl_result,
    operator::{Issuer, Operator},
    requests::{
        apply_request, decoded_secret_key, http_get_kubeconfig, put_token_secret, ready_reason,
        wait_for_reason, write_temp,
    },
};

fn alice(cluster: &Cluster) -> String {
    id_token(cluster, "alice")
}

fn users_token(kubeconfig_yaml: &str) -> String {
    let parsed: serde_json::Value =
        serde_yaml::from_str(kubeconfig_yaml).expect("kubeconfig is YAML");
    parsed["users"][0]["user"]["token"]
        .as_str()
        .expect("the kubeconfig has a user token")
        .to_owned()
}

/// Stores `token` in Secret `alice-token`, requests a kubeconfig from it with `spec` (default
/// when empty), waits with `kubectl wait` as a user would, and returns the issued Secret's name.
fn issue_for_alice(cluster: &Cluster, namespace: &str, token: &str, extra_spec: &str) -> String {
    put_token_secret(cluster, namespace, "alice-token", "token", token);
    apply_request(
        cluster,
        namespace,
        "alice",
        &format!("tokenSecretRef: {{name: alice-token}}{extra_spec}"),
    );
    kubectl(
        cluster,
        &[
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            "kcr/alice",
            "--timeout=60s",
        ],
    );
    issued_secret_name(cluster, namespace, "alice")
}

fn issued_secret_name(cluster: &Cluster, namespace: &str, request: &str) -> String {
    kubectl(
        cluster,
        &[
            "get",
            "kcr",
            request,
            "-n",
            namespace,
            "-o",
            "jsonpath={.status.secretName}",
        ],
    )
}

#[test]
fn request_for_alice_becomes_ready_and_its_kubeconfig_acts_as_alice_within_rbac() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-ready");
    let other = Namespace::new(cluster, "kcr-elsewhere");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    // `kubectl wait` is what users script against; it must return.
    issue_for_alice(cluster, &ns.name, &alice(cluster), "\n  namespace: default");
    let status: serde_json::Value = serde_json::from_str(&kubectl(
        cluster,
        &[
            "get",
            "kcr",
            "alice",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status}",
        ],
    ))
    .unwrap();
    assert_eq!(status["username"], cluster.alice_username);
    assert_eq!(status["groups"], serde_json::json!(["team-a"]));
    let secret_name = status["secretName"]
        .as_str()
        .expect("status names the Secret")
        .to_owned();
    assert!(status["expiresAt"].as_str().is_some());

    let kubeconfig = decoded_secret_key(cluster, &ns.name, &secret_name, "kubeconfig");
    let file = write_temp(&kubeconfig);
    let as_alice = |args: &[&str]| {
        let mut full = vec!["--kubeconfig", file.path().to_str().unwrap()];
        full.extend_from_slice(args);
        support::kubectl_plain(&full)
    };
    let whoami = as_alice(&["auth", "whoami", "-o", "json"]).expect("alice can ask who she is");
    assert!(whoami.contains(&cluster.alice_username), "{whoami}");
    assert!(whoami.contains("team-a"), "{whoami}");

    // Allowed where a RoleBinding allows her, forbidden elsewhere.
    support::alice_may_view(cluster, &alice(cluster), &ns.name);
    as_alice(&["get", "configmaps", "-n", &ns.name])
        .expect("alice may list configmaps where bound");
    let refused =
        as_alice(&["get", "configmaps", "-n", &other.name]).expect_err("alice is not bound there");
    assert!(refused.contains("forbidden"), "{refused}");
    let secrets =
        as_alice(&["get", "secrets", "-n", &ns.name]).expect_err("view does not grant Secrets");
    assert!(secrets.contains("forbidden"), "{secrets}");
}

#[test]
fn http_download_gives_an_equivalent_kubeconfig() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-http");
    let operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    let token = alice(cluster);
    let secret_name = issue_for_alice(cluster, &ns.name, &token, "");
    let from_secret = decoded_secret_key(cluster, &ns.name, &secret_name, "kubeconfig");

    let response = http_get_kubeconfig(&operator.base_url, Some(&token), "");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response
            .header("content-type")
            .starts_with("application/yaml")
    );
    assert!(
        response
            .header("content-disposition")
            .starts_with("attachment")
    );
    // Same inputs, same renderer: byte-identical.
    assert_eq!(response.body, from_secret);

    let file = write_temp(&response.body);
    let whoami = support::kubectl_plain(&[
        "--kubeconfig",
        file.path().to_str().unwrap(),
        "auth",
        "whoami",
    ])
    .expect("the downloaded kubeconfig works");
    assert!(whoami.contains(&cluster.alice_username), "{whoami}");

    let scoped = http_get_kubeconfig(&operator.base_url, Some(&token), "?namespace=team-a");
    assert_eq!(scoped.status, 200);
    assert!(scoped.body.contains("namespace: team-a"));
}

#[test]
fn bad_tokens_give_401_and_ready_false_with_the_matching_reason() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-bad");
    let operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    let wrong_audience = support::id_token_for_client(cluster, "alice", support::Client::Other);
    let cases = [
        ("garbage", "not-a-jwt".to_owned(), "Malformed"),
        ("wrong-audience", wrong_audience, "WrongAudience"),
    ];
    for (name, token, reason) in &cases {
        let response = http_get_kubeconfig(&operator.base_url, Some(token), "");
        assert_eq!(response.status, 401, "{name}: {}", response.body);
        assert!(
            response
                .header("www-authenticate")
                .contains("invalid_token"),
            "{name}: {:?}",
            response.headers
        );
        assert!(response.body.contains(reason), "{name}: {}", response.body);

        put_token_secret(cluster, &ns.name, name, "token", token);
        apply_request(
            cluster,
            &ns.name,
            name,
            &format!("tokenSecretRef: {{name: {name}}}"),
        );
        let message = wait_for_reason(cluster, &ns.name, name, "TokenInvalid");
        assert!(message.contains(reason), "{name}: {message}");
    }
    let missing = http_get_kubeconfig(&operator.base_url, None, "");
    assert_eq!(missing.status, 401);
}

#[test]
fn expired_tokens_are_refused_and_an_issued_request_turns_expired_keeping_its_secret() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-expiry");
    let operator = Operator::start(
        cluster,
        &ns.name,
        Issuer::ShortLived,
        &["--oidc-leeway-seconds", "0"],
    );
    let token = support::id_token_short_lived(cluster, "alice");
    put_token_secret(cluster, &ns.name, "alice-token", "token", &token);
    apply_request(
        cluster,
        &ns.name,
        "alice",
        "tokenSecretRef: {name: alice-token}",
    );
    wait_for_reason(cluster, &ns.name, "alice", "Issued");
    let secret_name = issued_secret_name(cluster, &ns.name, "alice");

    // Dex's short-lived issuer signs 5 s tokens; the operator requeues at expiry by itself.
    let message = wait_for_reason(cluster, &ns.name, "alice", "TokenExpired");
    assert!(message.contains("Expired"), "{message}");
    assert!(
        kubectl_result(cluster, &["get", "secret", &secret_name, "-n", &ns.name]).is_ok(),
        "the Secret is kept after expiry"
    );
    let response = http_get_kubeconfig(&operator.base_url, Some(&token), "");
    assert_eq!(response.status, 401);
    assert!(response.body.contains("Expired"), "{}", response.body);
}

#[test]
fn updating_the_token_secret_reissues_and_deleting_the_request_deletes_its_secret() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-update");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    let first = alice(cluster);
    let secret_name = issue_for_alice(cluster, &ns.name, &first, "");
    assert_eq!(
        users_token(&decoded_secret_key(
            cluster,
            &ns.name,
            &secret_name,
            "kubeconfig"
        )),
        first
    );

    // Dex tokens carry iat, so a token fetched a second later differs.
    std::thread::sleep(Duration::from_millis(1100));
    let second = alice(cluster);
    assert_ne!(first, second);
    put_token_secret(cluster, &ns.name, "alice-token", "token", &second);
    support::eventually(
        Duration::from_secs(30),
        "the Secret holds the new token",
        || {
            users_token(&decoded_secret_key(
                cluster,
                &ns.name,
                &secret_name,
                "kubeconfig",
            )) == second
        },
    );

    kubectl(
        cluster,
        &["delete", "kcr", "alice", "-n", &ns.name, "--wait=true"],
    );
    support::eventually(
        Duration::from_secs(60),
        "the garbage collector deletes the Secret",
        || kubectl_result(cluster, &["get", "secret", &secret_name, "-n", &ns.name]).is_err(),
    );
}

#[test]
fn refusals_name_what_to_fix() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-refusals");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    let token = alice(cluster);

    apply_request(
        cluster,
        &ns.name,
        "no-secret",
        "tokenSecretRef: {name: absent}",
    );
    let message = wait_for_reason(cluster, &ns.name, "no-secret", "TokenSecretNotFound");
    assert!(message.contains("absent"), "{message}");

    put_token_secret(cluster, &ns.name, "alice-token", "token", &token);
    apply_request(
        cluster,
        &ns.name,
        "no-key",
        "tokenSecretRef: {name: alice-token, key: id-token}",
    );
    let message = wait_for_reason(cluster, &ns.name, "no-key", "TokenKeyMissing");
    assert!(message.contains("id-token"), "{message}");

    apply_request(
        cluster,
        &ns.name,
        "not-bob",
        &format!(
            "tokenSecretRef: {{name: alice-token}}\n  user: {}",
            cluster.bob_username
        ),
    );
    let message = wait_for_reason(cluster, &ns.name, "not-bob", "UserMismatch");
    assert!(message.contains(&cluster.bob_username), "{message}");

    // A Secret that belongs to someone else is never taken over.
    kubectl(
        cluster,
        &[
            "create",
            "secret",
            "generic",
            "taken",
            "-n",
            &ns.name,
            "--from-literal=kubeconfig=precious",
        ],
    );
    apply_request(
        cluster,
        &ns.name,
        "conflict",
        "tokenSecretRef: {name: alice-token}\n  secretName: taken",
    );
    wait_for_reason(cluster, &ns.name, "conflict", "SecretConflict");
    assert_eq!(
        decoded_secret_key(cluster, &ns.name, "taken", "kubeconfig"),
        "precious"
    );

    // The token never appears in status or events.
    let everything = kubectl(
        cluster,
        &["get", "kcr,events", "-n", &ns.name, "-o", "yaml"],
    );
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !everything.contains(signature),
        "a token signature leaked into status or events"
    );
    assert_eq!(
        ready_reason(cluster, &ns.name, "conflict").as_deref(),
        Some("SecretConflict")
    );
}

#[test]
fn admission_refuses_requests_for_secrets_the_creator_cannot_read() {
    let cluster = cluster();
    // The CRD and the admission policy under test; no operator needs to run for admission.
    support::operator::operator_kubeconfig(cluster);
    let ns = Namespace::new(cluster, "kcr-deputy");
    put_token_secret(
        cluster,
        &ns.name,
        "admin-token",
        "token",
        "whatever-the-admin-keeps-here",
    );
    support::grant(
        cluster,
        &ns.name,
        "request-maker",
        &cluster.bob_username,
        "create,get,list",
        "kubeconfigrequests.kubeconfig.dev",
        &[],
    );
    let bob = id_token(cluster, "bob");
    let manifest = write_temp(&format!(
        "apiVersion: kubeconfig.dev/v1alpha1\nkind: KubeconfigRequest\nmetadata:\n  name: steal\n  namespace: {}\nspec:\n  tokenSecretRef: {{name: admin-token}}\n",
        ns.name
    ));
    // Until bob's Role reaches the authorizer he is refused for lacking `create`; after that,
    // only the admission policy stands between him and the admin's token.
    let create = || {
        support::kubectl_as_token(
            cluster,
            &bob,
            &["create", "-f", manifest.path().to_str().unwrap()],
        )
    };
    support::eventually(
        Duration::from_secs(30),
        "bob is refused by the admission policy",
        || create().is_err_and(|refused| refused.contains("may not get Secret admin-token")),
    );

    support::grant(
        cluster,
        &ns.name,
        "read-admin-token",
        &cluster.bob_username,
        "get",
        "secrets",
        // And where the request writes: a request is admitted only where its creator may read.
        &["admin-token", "steal-kubeconfig"],
    );
    support::eventually(
        Duration::from_secs(30),
        "bob is admitted once he may read the Secret",
        || create().is_ok(),
    );
}

/// A listener that cannot bind ends the process with the reason: a replica serving nothing while
/// its controller runs would only ever be unready, with nothing in its log to say why.
#[test]
fn a_taken_metrics_address_ends_the_process_naming_it() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "taken-port");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port to take");
    let address = taken.local_addr().unwrap().to_string();
    let mut operator = Operator::spawn(
        cluster,
        &ns.name,
        Issuer::Main,
        &["--metrics-listen", &address],
        None,
    );
    let status = operator
        .wait_exit(Duration::from_secs(60))
        .expect("the operator exits when it cannot bind");
    assert!(!status.success(), "exit status {status}");
    assert!(
        operator.logs().contains(&address),
        "the log names the address:\n{}",
        operator.logs()
    );
}
