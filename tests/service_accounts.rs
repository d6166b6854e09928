//! Credentials that stay alive (issue 7), end to end on the local cluster: ServiceAccount-backed
//! requests, the opt-in and admission rules around them, the admin's lifetime cap, renewal with
//! overlapping tokens, self-healing Secrets, and Expiring before TokenExpired for ID tokens.

#[path = "support/deploy.rs"]
mod deploy;
#[path = "support/node.rs"]
mod node;
mod support;

use std::{collections::BTreeSet, time::Duration};

use sha2::{Digest, Sha256};

use support::{
    Cluster, Namespace, cluster, eventually, id_token, id_token_short_lived, kubectl,
    kubectl_as_token, kubectl_result,
    operator::{Issuer, Operator},
    requests::{
        apply_request, apply_request_as, decoded_secret_key, event_reasons, put_token_secret,
        wait_for_reason, write_temp,
    },
};

const ACCOUNT: &str = "deployer";

/// A ServiceAccount, annotated as issuable when `issuable`.
fn service_account(cluster: &Cluster, namespace: &str, name: &str, issuable: bool) {
    let annotations = if issuable {
        "\n  annotations:\n    kubeconfig.dev/issuable: \"true\""
    } else {
        ""
    };
    let file = write_temp(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {namespace}{annotations}\n"
    ));
    kubectl(cluster, &["apply", "-f", file.path().to_str().unwrap()]);
}

/// An issuable ServiceAccount `deployer` and a Ready request `request` for it.
fn issue_for_account(cluster: &Cluster, namespace: &str, request: &str, extra_spec: &str) {
    service_account(cluster, namespace, ACCOUNT, true);
    apply_request(
        cluster,
        namespace,
        request,
        &format!("serviceAccount: {{name: {ACCOUNT}}}{extra_spec}"),
    );
    wait_ready(cluster, namespace, request);
}

fn wait_ready(cluster: &Cluster, namespace: &str, request: &str) {
    kubectl(
        cluster,
        &[
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            &format!("kcr/{request}"),
            "--timeout=60s",
        ],
    );
}

fn status(cluster: &Cluster, namespace: &str, request: &str) -> serde_json::Value {
    serde_json::from_str(&kubectl(
        cluster,
        &[
            "get",
            "kcr",
            request,
            "-n",
            namespace,
            "-o",
            "jsonpath={.status}",
        ],
    ))
    .expect("status is JSON")
}

fn kubeconfig_token(kubeconfig: &str) -> String {
    let parsed: serde_json::Value = serde_yaml::from_str(kubeconfig).expect("kubeconfig is YAML");
    parsed["users"][0]["user"]["token"]
        .as_str()
        .expect("a user token")
        .to_owned()
}

fn secret_token(cluster: &Cluster, namespace: &str, secret: &str) -> String {
    kubeconfig_token(&decoded_secret_key(
        cluster,
        namespace,
        secret,
        "kubeconfig",
    ))
}

/// Whether the API server authenticates `token` (TokenReview as admin; the token goes through a
/// file, never a command line).
fn authenticates(cluster: &Cluster, token: &str) -> bool {
    let review = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": { "token": token },
    });
    let file = write_temp(&review.to_string());
    let answer: serde_json::Value = serde_json::from_str(&kubectl(
        cluster,
        &["create", "-f", file.path().to_str().unwrap(), "-o", "json"],
    ))
    .expect("a TokenReview answer");
    answer["status"]["authenticated"] == true
}

/// `kubectl` with the kubeconfig stored in `secret`.
fn with_kubeconfig(
    cluster: &Cluster,
    namespace: &str,
    secret: &str,
    args: &[&str],
) -> Result<String, String> {
    let file = write_temp(&decoded_secret_key(
        cluster,
        namespace,
        secret,
        "kubeconfig",
    ));
    let mut full = vec!["--kubeconfig", file.path().to_str().unwrap()];
    full.extend_from_slice(args);
    support::kubectl_plain(&full)
}

/// bob, the least-privileged tenant who may manage requests in `namespace` and mint tokens of
/// the ServiceAccount `deployer` (what the admission policy asks of a ServiceAccount request),
/// read the Secret of the request `request`, and nothing else. Returns his Dex ID token.
fn tenant(cluster: &Cluster, namespace: &str, request: &str) -> String {
    support::grant(
        cluster,
        namespace,
        "request-manager",
        &cluster.bob_username,
        "create,get,list,watch,update,patch,delete",
        "kubeconfigrequests.kubeconfig.dev",
        &[],
    );
    support::grant(
        cluster,
        namespace,
        "token-maker",
        &cluster.bob_username,
        "create",
        "serviceaccounts/token",
        &[ACCOUNT],
    );
    support::grant(
        cluster,
        namespace,
        "secret-reader",
        &cluster.bob_username,
        "get",
        "secrets",
        &[&format!("{request}-kubeconfig")],
    );
    id_token(cluster, "bob")
}

/// `kubectl ARGS` as bob, expected to succeed.
fn as_tenant(cluster: &Cluster, bob: &str, args: &[&str]) -> String {
    kubectl_as_token(cluster, bob, args).unwrap_or_else(|error| panic!("{args:?}: {error}"))
}

/// bob asks for a renewal now: `kubeconfig.dev/renew=<value>` on the request.
fn ask_renewal(cluster: &Cluster, bob: &str, namespace: &str, request: &str, value: &str) {
    as_tenant(
        cluster,
        bob,
        &[
            "annotate",
            "kcr",
            request,
            "-n",
            namespace,
            "--overwrite",
            &format!("kubeconfig.dev/renew={value}"),
        ],
    );
}

/// The token in the request's kubeconfig Secret, read as bob.
fn tenant_secret_token(cluster: &Cluster, bob: &str, namespace: &str, request: &str) -> String {
    let encoded = as_tenant(
        cluster,
        bob,
        &[
            "get",
            "secret",
            &format!("{request}-kubeconfig"),
            "-n",
            namespace,
            "-o",
            "jsonpath={.data.kubeconfig}",
        ],
    );
    let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
        .expect("the Secret's data is base64");
    kubeconfig_token(&String::from_utf8(decoded).expect("a kubeconfig is text"))
}

/// Issue 24: `kubeconfig.dev/renew: <timestamp>` renews a ServiceAccount request's token now,
/// once per value, as `cmctl renew` does; status records the value handled. A value that is no
/// timestamp is refused with the command that works.
#[test]
fn the_renew_annotation_renews_once_per_value() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-sa-renew-now");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    service_account(cluster, &ns.name, ACCOUNT, true);
    let bob = tenant(cluster, &ns.name, "pipeline");
    apply_request_as(
        cluster,
        &bob,
        &ns.name,
        "pipeline",
        &format!("serviceAccount: {{name: {ACCOUNT}}}"),
    )
    .expect("bob may create the request");
    wait_ready(cluster, &ns.name, "pipeline");
    let first = tenant_secret_token(cluster, &bob, &ns.name, "pipeline");

    let annotate = |value: &str| ask_renewal(cluster, &bob, &ns.name, "pipeline", value);
    let handled = || status(cluster, &ns.name, "pipeline")["lastRenewRequest"].clone();
    annotate("2026-12-05T04:00:00Z");
    eventually(
        Duration::from_secs(20),
        "the token is renewed on demand",
        || tenant_secret_token(cluster, &bob, &ns.name, "pipeline") != first,
    );
    eventually(Duration::from_secs(10), "status records the value", || {
        handled() == "2026-12-05T04:00:00Z"
    });
    let second = tenant_secret_token(cluster, &bob, &ns.name, "pipeline");
    assert!(authenticates(cluster, &second));

    // A reconciliation for another cause (an edit to the Secret, undone by the controller) does
    // not renew again for the value already handled.
    kubectl(
        cluster,
        &[
            "label",
            "secret",
            "pipeline-kubeconfig",
            "-n",
            &ns.name,
            "app.kubernetes.io/managed-by=someone-else",
            "--overwrite",
        ],
    );
    eventually(
        Duration::from_secs(20),
        "the controller undoes the edit",
        || {
            kubectl(
                cluster,
                &[
                    "get",
                    "secret",
                    "pipeline-kubeconfig",
                    "-n",
                    &ns.name,
                    "-o",
                    "jsonpath={.metadata.labels.app\\.kubernetes\\.io/managed-by}",
                ],
            ) == "kubeconfig-operator"
        },
    );
    assert_eq!(
        tenant_secret_token(cluster, &bob, &ns.name, "pipeline"),
        second
    );

    // A new value renews again.
    annotate("2026-12-05T04:05:00Z");
    eventually(Duration::from_secs(20), "a new value renews again", || {
        tenant_secret_token(cluster, &bob, &ns.name, "pipeline") != second
    });

    annotate("now please");
    let message = wait_for_reason(cluster, &ns.name, "pipeline", "InvalidSpec");
    assert!(
        message.contains("must be an RFC 3339 timestamp")
            && message.contains("kubectl annotate kcr pipeline kubeconfig.dev/renew="),
        "{message}"
    );
}

/// Issue 26: a ServiceAccount request whose audiences exclude the API server's is refused as
/// InvalidSpec with advice about the audiences, and leaves no empty Secret behind.
#[test]
fn audiences_without_the_api_server_are_an_invalid_spec_and_leave_no_secret() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-sa-audiences");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    service_account(cluster, &ns.name, ACCOUNT, true);
    let bob = tenant(cluster, &ns.name, "vault");
    apply_request_as(
        cluster,
        &bob,
        &ns.name,
        "vault",
        &format!("serviceAccount: {{name: {ACCOUNT}, audiences: [vault.example.com]}}"),
    )
    .expect("bob may create the request");
    let message = wait_for_reason(cluster, &ns.name, "vault", "InvalidSpec");
    assert!(
        message.contains("spec.serviceAccount.audiences")
            && message.contains("vault.example.com")
            && !message.contains("confirmWithApiServer"),
        "{message}"
    );
    eventually(Duration::from_secs(10), "no Secret is left", || {
        kubectl_result(
            cluster,
            &["get", "secret", "vault-kubeconfig", "-n", &ns.name],
        )
        .is_err_and(|error| error.contains("NotFound"))
    });
}

/// The Secret's keys, each written to a file of its name in `dir`, as the kubelet projects a
/// mounted Secret. Returns the data as written.
fn project_secret(
    cluster: &Cluster,
    bob: &str,
    namespace: &str,
    secret: &str,
    dir: &std::path::Path,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let object: serde_json::Value = serde_json::from_str(&as_tenant(
        cluster,
        bob,
        &["get", "secret", secret, "-n", namespace, "-o", "json"],
    ))
    .expect("a Secret is JSON");
    let data: std::collections::BTreeMap<String, Vec<u8>> = object["data"]
        .as_object()
        .expect("the Secret has data")
        .iter()
        .map(|(key, value)| {
            let bytes = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                value.as_str().expect("data values are strings"),
            )
            .expect("data values are base64");
            (key.clone(), bytes)
        })
        .collect();
    for (key, bytes) in &data {
        std::fs::write(dir.join(key), bytes).expect("write a projected key");
    }
    data
}

/// bob's Ready `format: tokenFile` request `worker` for the ServiceAccount `deployer`, which may
/// list pods in `namespace`: the shortest lifetime the schema allows, renewed 10 s after each
/// issuance. Returns bob's token.
fn token_file_worker(cluster: &Cluster, namespace: &str) -> String {
    service_account(cluster, namespace, ACCOUNT, true);
    let account = format!("system:serviceaccount:{namespace}:{ACCOUNT}");
    support::grant(
        cluster,
        namespace,
        "pod-reader",
        &account,
        "list",
        "pods",
        &[],
    );
    let bob = tenant(cluster, namespace, "worker");
    apply_request_as(
        cluster,
        &bob,
        namespace,
        "worker",
        &format!(
            "serviceAccount: {{name: {ACCOUNT}, expirationSeconds: 600}}\n  renewBefore: 590s\n  format: tokenFile"
        ),
    )
    .expect("bob may create the request");
    wait_ready(cluster, namespace, "worker");
    bob
}

/// Issue 24: `format: tokenFile` writes `token` and `ca.crt` beside a kubeconfig whose user
/// reads `tokenFile: token`. A client on the host reading the projected files keeps working
/// across ServiceAccount renewals while the kubeconfig file itself never changes, and it really
/// reads the token from the file.
#[test]
fn a_token_file_kubeconfig_keeps_working_across_renewals() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-sa-token-file");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    let bob = token_file_worker(cluster, &ns.name);

    let mount = tempfile::tempdir().expect("a directory for the projected Secret");
    let kubeconfig = mount.path().join("kubeconfig");
    let kubeconfig_path = kubeconfig.to_str().unwrap();
    let list_pods = || {
        support::kubectl_plain(&[
            "--kubeconfig",
            kubeconfig_path,
            "get",
            "pods",
            "-n",
            &ns.name,
            "-o",
            "name",
        ])
    };
    let first = project_secret(cluster, &bob, &ns.name, "worker-kubeconfig", mount.path());
    assert_eq!(
        first.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ca.crt", "kubeconfig", "token"]
    );
    let token_file: serde_json::Value =
        serde_yaml::from_slice(&first["kubeconfig"]).expect("kubeconfig is YAML");
    assert_eq!(token_file["users"][0]["user"]["tokenFile"], "token");
    list_pods().expect("the kubeconfig works as the ServiceAccount");

    let mut previous = first.clone();
    for renewal in 1..=2 {
        eventually(
            Duration::from_secs(40),
            &format!("renewal {renewal} replaces the token"),
            || {
                let now =
                    project_secret(cluster, &bob, &ns.name, "worker-kubeconfig", mount.path());
                now["token"] != previous["token"]
            },
        );
        let now = project_secret(cluster, &bob, &ns.name, "worker-kubeconfig", mount.path());
        assert_eq!(
            now["kubeconfig"], first["kubeconfig"],
            "the kubeconfig is unchanged"
        );
        assert!(authenticates(
            cluster,
            std::str::from_utf8(&now["token"]).unwrap()
        ));
        list_pods().unwrap_or_else(|error| panic!("after renewal {renewal}: {error}"));
        previous = now;
    }
    // Elsewhere the ServiceAccount has no rights: the kubeconfig is exactly it.
    let elsewhere = support::kubectl_plain(&[
        "--kubeconfig",
        kubeconfig_path,
        "get",
        "pods",
        "-n",
        "default",
    ]);
    assert!(elsewhere.is_err_and(|error| error.contains("Forbidden")));

    // The client reads the token from the file beside the kubeconfig, not from the kubeconfig.
    std::fs::write(mount.path().join("token"), "not-a-token").unwrap();
    let refused = list_pods().expect_err("a broken token file breaks the client");
    assert!(
        refused.contains("Unauthorized") || refused.contains("logged in"),
        "{refused}"
    );
}

/// Issue 24: a long-running client-go program in a pod on the node (`kctools follow`), with the
/// request's Secret mounted as a volume and `KUBECONFIG` in it, follows ServiceAccount renewals
/// without a restart: every list it makes succeeds, and the token it sends moves on to tokens
/// the operator wrote later. The operator is the one installed from `config/` (`make deploy`).
#[test]
fn a_pod_on_a_mounted_token_file_secret_follows_renewals() {
    let (cluster, _turn) = deploy::deployed();
    let ns = Namespace::new(cluster, "kcr-sa-token-file-pod");
    let bob = token_file_worker(cluster, &ns.name);

    // Every token the Secret holds, by the fingerprint kctools prints, recorded from before the
    // pod starts: renewals come about every 10 s, the kubelet updates the volume within about a
    // minute and client-go re-reads the file every minute, so the program skips some tokens.
    let fingerprint = |token: &[u8]| {
        Sha256::digest(token)[..6]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    };
    let written = std::sync::Mutex::new(BTreeSet::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let used = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let mount = tempfile::tempdir().unwrap();
                let data =
                    project_secret(cluster, &bob, &ns.name, "worker-kubeconfig", mount.path());
                written.lock().unwrap().insert(fingerprint(&data["token"]));
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let _stop = scopeguard(|| done.store(true, std::sync::atomic::Ordering::Relaxed));
        std::thread::sleep(Duration::from_secs(2));
        follower_pod(cluster, &ns.name);
        let mut used = Vec::<String>::new();
        eventually(
            Duration::from_secs(300),
            "the program sends three of the Secret's tokens in turn",
            || {
                let log = node::logs(cluster, &ns.name, "follower");
                assert!(!log.contains("failed"), "a list failed:\n{log}");
                used.clear();
                for token in log.lines().filter_map(|line| line.strip_prefix("ok ")) {
                    if used.last().is_none_or(|last| last != token) {
                        used.push(token.to_owned());
                    }
                }
                used.len() >= 3
            },
        );
        used
    });
    let written = written.into_inner().unwrap();
    for token in &used {
        assert!(
            written.contains(token),
            "the program sent a token the Secret never held ({token}; written: {written:?})"
        );
    }
}

/// Stops the Secret watcher however the test ends, so that a failed assertion is not left
/// waiting for a thread that never ends.
fn scopeguard(stop: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(stop) = self.0.take() {
                stop();
            }
        }
    }
    Guard(Some(stop))
}

/// `kctools follow` in a pod of the node's tools image, with Secret `worker-kubeconfig` mounted
/// and `KUBECONFIG` in it; waits until it runs.
fn follower_pod(cluster: &Cluster, namespace: &str) {
    node::apply(
        cluster,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: follower
  namespace: {namespace}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
    - name: follow
      image: {image}
      imagePullPolicy: Never
      args: [follow, {namespace}]
      env: [{{name: KUBECONFIG, value: /var/run/kubeconfig/kubeconfig}}]
      volumeMounts: [{{name: kubeconfig, mountPath: /var/run/kubeconfig, readOnly: true}}]
      securityContext:
        runAsNonRoot: true
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {{drop: [ALL]}}
  volumes: [{{name: kubeconfig, secret: {{secretName: worker-kubeconfig}}}}]
"#,
            image = node::env(cluster, "TOOLS_IMAGE"),
        ),
    );
    node::wait_phase(
        cluster,
        namespace,
        "follower",
        "Running",
        Duration::from_secs(60),
    );
}

#[test]
fn an_opted_in_service_account_gets_a_kubeconfig_that_acts_as_exactly_it() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-sa");
    let elsewhere = Namespace::new(cluster, "kcr-sa-elsewhere");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    issue_for_account(cluster, &ns.name, "pipeline", "");
    let status = status(cluster, &ns.name, "pipeline");
    let username = format!("system:serviceaccount:{}:{ACCOUNT}", ns.name);
    assert_eq!(status["username"], username.as_str());
    assert_eq!(status["secretName"], "pipeline-kubeconfig");
    assert_eq!(status["grantedExpirationSeconds"], 3600);

    let whoami = with_kubeconfig(
        cluster,
        &ns.name,
        "pipeline-kubeconfig",
        &["auth", "whoami", "-o", "json"],
    )
    .expect("the ServiceAccount can ask who it is");
    let whoami: serde_json::Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(whoami["status"]["userInfo"]["username"], username.as_str());

    kubectl(
        cluster,
        &[
            "create",
            "rolebinding",
            "deployer-edit",
            "-n",
            &ns.name,
            "--clusterrole=edit",
            &format!("--serviceaccount={}:{ACCOUNT}", ns.name),
        ],
    );
    eventually(
        Duration::from_secs(30),
        "the ServiceAccount may list configmaps where bound",
        || {
            with_kubeconfig(
                cluster,
                &ns.name,
                "pipeline-kubeconfig",
                &["get", "configmaps", "-n", &ns.name],
            )
            .is_ok()
        },
    );
    let refused = with_kubeconfig(
        cluster,
        &ns.name,
        "pipeline-kubeconfig",
        &["get", "configmaps", "-n", &elsewhere.name],
    )
    .expect_err("not bound there");
    assert!(
        refused.contains("forbidden") && refused.contains(&username),
        "{refused}"
    );
}

#[test]
fn a_service_account_without_the_opt_in_is_refused_and_opting_out_revokes() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-sa-optin");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    service_account(cluster, &ns.name, ACCOUNT, false);
    apply_request(
        cluster,
        &ns.name,
        "pipeline",
        &format!("serviceAccount: {{name: {ACCOUNT}}}"),
    );
    let message = wait_for_reason(cluster, &ns.name, "pipeline", "ServiceAccountNotIssuable");
    assert!(
        message.contains("kubeconfig.dev/issuable=true"),
        "{message}"
    );
    assert!(
        kubectl_result(
            cluster,
            &["get", "secret", "pipeline-kubeconfig", "-n", &ns.name]
        )
        .is_err()
    );

    // Opting in issues; opting out again deletes the Secret, and the bound token dies with it.
    service_account(cluster, &ns.name, ACCOUNT, true);
    wait_for_reason(cluster, &ns.name, "pipeline", "Issued");
    let token = secret_token(cluster, &ns.name, "pipeline-kubeconfig");
    assert!(authenticates(cluster, &token));
    kubectl(
        cluster,
        &[
            "annotate",
            "serviceaccount",
            ACCOUNT,
            "-n",
            &ns.name,
            "kubeconfig.dev/issuable-",
        ],
    );
    wait_for_reason(cluster, &ns.name, "pipeline", "ServiceAccountNotIssuable");
    eventually(
        Duration::from_secs(30),
        "the opted-out token stops authenticating",
        || !authenticates(cluster, &token),
    );
    assert!(
        kubectl_result(
            cluster,
            &["get", "secret", "pipeline-kubeconfig", "-n", &ns.name]
        )
        .is_err()
    );
}

#[test]
fn the_api_server_refuses_both_sources_or_neither_with_the_rules_message() {
    let cluster = cluster();
    support::operator::operator_kubeconfig(cluster);
    let ns = Namespace::new(cluster, "kcr-sa-schema");
    for spec in [
        format!("serviceAccount: {{name: {ACCOUNT}}}\n  tokenSecretRef: {{name: t}}"),
        "namespace: default".to_owned(),
    ] {
        let file = write_temp(&support::requests::request_manifest(
            &ns.name, "both", &spec,
        ));
        let refused = kubectl_result(cluster, &["apply", "-f", file.path().to_str().unwrap()])
            .expect_err("the schema refuses it");
        assert!(
            refused.contains("exactly one of spec.tokenSecretRef"),
            "{refused}"
        );
    }
    let file = write_temp(&support::requests::request_manifest(
        &ns.name,
        "short",
        &format!("serviceAccount: {{name: {ACCOUNT}, expirationSeconds: 60}}"),
    ));
    let refused = kubectl_result(cluster, &["apply", "-f", file.path().to_str().unwrap()])
        .expect_err("too short a lifetime");
    assert!(refused.contains("expirationSeconds"), "{refused}");
}

#[test]
fn a_user_who_may_not_create_the_accounts_tokens_is_refused_at_admission() {
    let cluster = cluster();
    support::operator::operator_kubeconfig(cluster);
    let ns = Namespace::new(cluster, "kcr-sa-deputy");
    service_account(cluster, &ns.name, ACCOUNT, true);
    support::grant(
        cluster,
        &ns.name,
        "request-maker",
        &cluster.bob_username,
        "create,get,list",
        "kubeconfigrequests.kubeconfig.dev",
        &[],
    );
    // Bob may read where the request would write; only the right to mint is missing.
    support::grant(
        cluster,
        &ns.name,
        "secret-reader",
        &cluster.bob_username,
        "get",
        "secrets",
        &["borrow-kubeconfig"],
    );
    let bob = id_token(cluster, "bob");
    let manifest = write_temp(&support::requests::request_manifest(
        &ns.name,
        "borrow",
        &format!("serviceAccount: {{name: {ACCOUNT}}}"),
    ));
    let create = || {
        kubectl_as_token(
            cluster,
            &bob,
            &["create", "-f", manifest.path().to_str().unwrap()],
        )
    };
    eventually(
        Duration::from_secs(30),
        "bob is refused by the admission policy",
        || {
            create().is_err_and(|refused| {
                refused.contains(&format!(
                    "may not create tokens for ServiceAccount {ACCOUNT}"
                ))
            })
        },
    );

    // With the right to mint the account's tokens himself, the same request is admitted.
    support::grant(
        cluster,
        &ns.name,
        "token-maker",
        &cluster.bob_username,
        "create",
        "serviceaccounts/token",
        &[ACCOUNT],
    );
    eventually(Duration::from_secs(30), "bob's request is admitted", || {
        create().is_ok()
    });
}

/// Issue 26, item 4: renewal stops, with a reason saying why, once the request's creator may no
/// longer create the account's tokens, and the Secret keeps its last token. The admission policy
/// records who the creator is; neither a claim at creation nor a later patch changes the record.
#[test]
fn renewal_stops_once_the_creator_may_no_longer_mint_the_accounts_tokens() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-sa-creator");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    service_account(cluster, &ns.name, ACCOUNT, true);
    let bob = tenant(cluster, &ns.name, "pipeline");
    let admin = r#"{username: kubernetes-admin, groups: ["system:masters"]}"#;
    // 600 s tokens renewed 10 s after issuance; bob claims to be admin.
    apply_request_as(
        cluster,
        &bob,
        &ns.name,
        "pipeline",
        &format!(
            "serviceAccount: {{name: {ACCOUNT}, expirationSeconds: 600}}\n  renewBefore: 590s\n  creator: {admin}"
        ),
    )
    .expect("bob may create the request");
    let creator = || -> serde_json::Value {
        serde_json::from_str(&as_tenant(
            cluster,
            &bob,
            &[
                "get",
                "kcr",
                "pipeline",
                "-n",
                &ns.name,
                "-o",
                "jsonpath={.spec.creator}",
            ],
        ))
        .expect("spec.creator is JSON")
    };
    let recorded = creator();
    assert_eq!(
        recorded["username"],
        cluster.bob_username.as_str(),
        "{recorded}"
    );
    assert!(
        !recorded["groups"].to_string().contains("system:masters"),
        "{recorded}"
    );
    // Bob's later attempt to change the record leaves it as it was.
    let _ = kubectl_as_token(
        cluster,
        &bob,
        &[
            "patch",
            "kcr",
            "pipeline",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"spec":{"creator":{"username":"kubernetes-admin","groups":["system:masters"]}}}"#,
        ],
    );
    assert_eq!(creator(), recorded);

    wait_ready(cluster, &ns.name, "pipeline");
    let first = tenant_secret_token(cluster, &bob, &ns.name, "pipeline");
    eventually(Duration::from_secs(40), "the token is renewed", || {
        tenant_secret_token(cluster, &bob, &ns.name, "pipeline") != first
    });

    // An admin takes away bob's right to mint the account's tokens.
    kubectl(
        cluster,
        &[
            "delete",
            "rolebinding",
            "token-maker-binding",
            "-n",
            &ns.name,
        ],
    );
    let may_mint = || {
        support::can_i_as_token(
            cluster,
            &bob,
            &[
                "create",
                &format!("serviceaccounts/{ACCOUNT}"),
                "--subresource=token",
                "-n",
                &ns.name,
            ],
        )
    };
    eventually(Duration::from_secs(30), "bob may no longer mint", || {
        !may_mint()
    });
    let message = wait_for_reason(cluster, &ns.name, "pipeline", "CreatorForbidden");
    assert!(
        message.contains(&format!(
            "{}, who created this request, may no longer create tokens for ServiceAccount {ACCOUNT}",
            cluster.bob_username
        )),
        "{message}"
    );
    assert!(event_reasons(cluster, &ns.name, "pipeline").contains("CreatorForbidden"));
    let kept = tenant_secret_token(cluster, &bob, &ns.name, "pipeline");
    assert!(authenticates(cluster, &kept), "the last token lives on");
    // Asking for a renewal does not get bob a token either.
    ask_renewal(cluster, &bob, &ns.name, "pipeline", "2026-12-05T08:00:00Z");
    // A refusal that stays the same changes nothing visible: give the reconciliation time.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        tenant_secret_token(cluster, &bob, &ns.name, "pipeline"),
        kept
    );
    assert_eq!(
        support::requests::ready_reason(cluster, &ns.name, "pipeline").as_deref(),
        Some("CreatorForbidden")
    );

    // With the right back, the next renewal mints again.
    kubectl(
        cluster,
        &[
            "create",
            "rolebinding",
            "token-maker-binding",
            "-n",
            &ns.name,
            "--role=token-maker",
            &format!("--user={}", cluster.bob_username),
        ],
    );
    eventually(Duration::from_secs(30), "bob may mint again", may_mint);
    ask_renewal(cluster, &bob, &ns.name, "pipeline", "2026-12-05T08:01:00Z");
    wait_for_reason(cluster, &ns.name, "pipeline", "Issued");
    assert_ne!(
        tenant_secret_token(cluster, &bob, &ns.name, "pipeline"),
        kept
    );
}

#[test]
fn renewal_replaces_the_token_and_both_stay_valid_and_the_admin_cap_applies() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-sa-renew");
    let operator = Operator::start(
        cluster,
        &ns.name,
        Issuer::Main,
        &["--max-expiration-seconds", "900"],
    );
    service_account(cluster, &ns.name, ACCOUNT, true);
    // Asks for an hour, gets the admin's 15 minutes; renews 10 s after issuance.
    apply_request(
        cluster,
        &ns.name,
        "pipeline",
        &format!(
            "serviceAccount: {{name: {ACCOUNT}, expirationSeconds: 3600}}\n  renewBefore: 890s"
        ),
    );
    wait_ready(cluster, &ns.name, "pipeline");
    let first_status = status(cluster, &ns.name, "pipeline");
    assert_eq!(
        first_status["grantedExpirationSeconds"], 900,
        "{first_status}"
    );
    let first = secret_token(cluster, &ns.name, "pipeline-kubeconfig");
    eventually(
        Duration::from_secs(40),
        "the token in the Secret is replaced",
        || secret_token(cluster, &ns.name, "pipeline-kubeconfig") != first,
    );
    let second = secret_token(cluster, &ns.name, "pipeline-kubeconfig");
    assert!(
        authenticates(cluster, &first),
        "the old token lives until its own expiry"
    );
    assert!(authenticates(cluster, &second));

    // The expiry metrics say what status says.
    let status = status(cluster, &ns.name, "pipeline");
    let expires =
        chrono::DateTime::parse_from_rfc3339(status["expiresAt"].as_str().unwrap()).unwrap();
    let renews =
        chrono::DateTime::parse_from_rfc3339(status["renewalTime"].as_str().unwrap()).unwrap();
    let metrics = operator.metrics();
    let labels = format!("{{namespace=\"{}\",name=\"pipeline\"}}", ns.name);
    let metric = |name: &str| -> i64 {
        metrics
            .lines()
            .find(|line| line.starts_with(&format!("kubeconfig_operator_{name}{labels} ")))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} for the request in\n{metrics}"))
    };
    // A renewal may land between reading status and metrics; they agree within one cycle.
    assert!((metric("request_expiration_timestamp_seconds") - expires.timestamp()).abs() <= 15);
    assert!((metric("request_renewal_timestamp_seconds") - renews.timestamp()).abs() <= 15);
    assert!(metrics.contains(&format!(
        "kubeconfig_operator_request_ready_status{{namespace=\"{}\",name=\"pipeline\",condition=\"True\"}} 1",
        ns.name
    )));
}

#[test]
fn a_deleted_or_edited_secret_is_restored_and_a_moved_one_deleted() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-sa-heal");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    issue_for_account(cluster, &ns.name, "pipeline", "");
    let secret = "pipeline-kubeconfig";
    let first = secret_token(cluster, &ns.name, secret);
    assert!(authenticates(cluster, &first));

    // Deleting the Secret kills its bound token; the Secret comes back with a fresh one.
    kubectl(cluster, &["delete", "secret", secret, "-n", &ns.name]);
    eventually(Duration::from_secs(30), "the Secret is re-created", || {
        kubectl_result(cluster, &["get", "secret", secret, "-n", &ns.name]).is_ok()
            && secret_token(cluster, &ns.name, secret) != first
    });
    eventually(
        Duration::from_secs(30),
        "the deleted Secret's token stops authenticating",
        || !authenticates(cluster, &first),
    );
    let second = secret_token(cluster, &ns.name, secret);
    assert!(authenticates(cluster, &second));

    // Hand edits of the data and of a managed label are undone.
    kubectl(
        cluster,
        &[
            "patch",
            "secret",
            secret,
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"data":{"kubeconfig":"Z2FyYmFnZQ=="},"metadata":{"labels":{"kubeconfig.dev/request":"other"}}}"#,
        ],
    );
    eventually(Duration::from_secs(30), "the hand edit is undone", || {
        let label = kubectl(
            cluster,
            &[
                "get",
                "secret",
                secret,
                "-n",
                &ns.name,
                "-o",
                "jsonpath={.metadata.labels.kubeconfig\\.dev/request}",
            ],
        );
        let kubeconfig = decoded_secret_key(cluster, &ns.name, secret, "kubeconfig");
        label == "pipeline" && kubeconfig.contains("current-context")
    });
    let restored = secret_token(cluster, &ns.name, secret);
    assert!(authenticates(cluster, &restored));

    // Moving the output deletes the old Secret once the new one is written.
    apply_request(
        cluster,
        &ns.name,
        "pipeline",
        &format!("serviceAccount: {{name: {ACCOUNT}}}\n  secretName: moved"),
    );
    eventually(
        Duration::from_secs(30),
        "the old Secret is gone and the new one named",
        || {
            kubectl_result(cluster, &["get", "secret", secret, "-n", &ns.name]).is_err()
                && status(cluster, &ns.name, "pipeline")["secretName"] == "moved"
        },
    );
    assert!(with_kubeconfig(cluster, &ns.name, "moved", &["auth", "whoami"]).is_ok());
    eventually(
        Duration::from_secs(30),
        "the old Secret's token stops authenticating",
        || !authenticates(cluster, &restored),
    );
}

#[test]
fn an_id_token_request_reports_expiring_before_token_expired() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-expiring");
    let _operator = Operator::start(cluster, &ns.name, Issuer::ShortLived, &[]);
    put_token_secret(
        cluster,
        &ns.name,
        "alice-token",
        "token",
        &id_token_short_lived(cluster, "alice"),
    );
    // The short-lived Dex's tokens live 5 s; renewal is due after 1 % of that.
    apply_request(
        cluster,
        &ns.name,
        "alice",
        "tokenSecretRef: {name: alice-token}\n  renewBeforePercentage: 99",
    );
    let expiring = |cluster: &Cluster| {
        kubectl(
            cluster,
            &[
                "get",
                "kcr",
                "alice",
                "-n",
                &ns.name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}/{.status.conditions[?(@.type==\"Expiring\")].status}",
            ],
        )
    };
    eventually(
        Duration::from_secs(20),
        "Ready=True with Expiring=True",
        || expiring(cluster) == "True/True",
    );
    let events = event_reasons(cluster, &ns.name, "alice");
    assert!(events.contains("TokenExpiring"), "{events}");
    wait_for_reason(cluster, &ns.name, "alice", "TokenExpired");
}

/// Issue 26: an exec kubeconfig holds no token (kubelogin logs in and refreshes by itself), so
/// its request neither reports Expiring nor TokenExpired when the ID token that proved who
/// asked for it expires, not even when it is reconciled afterwards.
#[test]
fn an_exec_request_stays_ready_after_its_id_token_expires() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-exec-expiry");
    let _operator = Operator::start(
        cluster,
        &ns.name,
        Issuer::ShortLived,
        &["--exec-client-id", &cluster.env["OIDC_PUBLIC_CLIENT_ID"]],
    );
    put_token_secret(
        cluster,
        &ns.name,
        "bob-token",
        "token",
        &id_token_short_lived(cluster, "bob"),
    );
    let bob = tenant(cluster, &ns.name, "laptop");
    support::grant(
        cluster,
        &ns.name,
        "token-reader",
        &cluster.bob_username,
        "get",
        "secrets",
        &["bob-token"],
    );
    apply_request_as(
        cluster,
        &bob,
        &ns.name,
        "laptop",
        "tokenSecretRef: {name: bob-token}\n  format: exec\n  renewBeforePercentage: 99",
    )
    .expect("bob may create the request");
    wait_ready(cluster, &ns.name, "laptop");
    // The short-lived Dex's tokens live 5 s: wait until bob's is well past its renewal time and
    // its expiry, then have the request reconciled again (its token Secret changed).
    std::thread::sleep(Duration::from_secs(10));
    kubectl(
        cluster,
        &[
            "label",
            "secret",
            "bob-token",
            "-n",
            &ns.name,
            "touched=after-expiry",
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    let status = status(cluster, &ns.name, "laptop");
    let conditions: Vec<(String, String, String)> = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            let field = |name: &str| c[name].as_str().unwrap_or_default().to_owned();
            (field("type"), field("status"), field("reason"))
        })
        .collect();
    assert_eq!(
        conditions,
        [("Ready".to_owned(), "True".to_owned(), "Issued".to_owned())],
        "{status}"
    );
    assert!(status.get("expiresAt").is_none(), "{status}");
    let events = event_reasons(cluster, &ns.name, "laptop");
    assert!(
        !events.contains("TokenExpiring") && !events.contains("TokenExpired"),
        "{events}"
    );
}

#[test]
fn a_rotated_ca_file_reaches_issued_kubeconfigs_and_downloads() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-ca-rotation");
    let ca_file = write_temp(&std::fs::read_to_string(&cluster.kube_ca_file).unwrap());
    let operator = Operator::start(
        cluster,
        &ns.name,
        Issuer::Main,
        &["--ca-file", ca_file.path().to_str().unwrap()],
    );
    issue_for_account(cluster, &ns.name, "pipeline", "");
    let ca_of = |kubeconfig: &str| -> String {
        let parsed: serde_json::Value = serde_yaml::from_str(kubeconfig).unwrap();
        parsed["clusters"][0]["cluster"]["certificate-authority-data"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let encode = |path: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
    };
    let secret_ca = || {
        ca_of(&decoded_secret_key(
            cluster,
            &ns.name,
            "pipeline-kubeconfig",
            "kubeconfig",
        ))
    };
    assert_eq!(secret_ca(), encode(&cluster.kube_ca_file));

    // Rotation: another valid CA replaces the file (here Dex's, which is just another PEM).
    std::fs::copy(&cluster.oidc_ca_file, ca_file.path()).unwrap();
    let rotated = encode(&cluster.oidc_ca_file);
    eventually(
        Duration::from_secs(30),
        "the issued kubeconfig carries the new CA",
        || secret_ca() == rotated,
    );
    let alice = id_token(cluster, "alice");
    let download = support::requests::http_get_kubeconfig(&operator.base_url, Some(&alice), "");
    assert_eq!(download.status, 200);
    assert_eq!(ca_of(&download.body), rotated);

    // Garbage in the file is ignored: the last good CA stays.
    std::fs::write(ca_file.path(), "not a certificate").unwrap();
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(secret_ca(), rotated);
    assert!(
        operator
            .logs()
            .contains("ignoring the CA file's new content")
    );
}
