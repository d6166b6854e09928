//! Hostile neighbours in one namespace (issue 8), on the local cluster, Dex and the real operator
//! binary. The attacker is bob with exactly the rights named in each test, acting with his own Dex
//! token (`kubectl --token`), never as admin: he cannot squat on another request's Secret, nor have
//! the operator write a Secret of his choice. Conflicts clear on their own, names the operator
//! could not use are refused at apply time, what still fails is reported as InvalidSpec, status
//! keeps naming a Secret that holds a live credential, and a stripped ownerReference is put back.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    Cluster, Namespace,
    accounts::ClusterAccount,
    can_i_as_token, cluster, eventually, id_token, kubectl, kubectl_as_token, kubectl_result,
    operator::{Issuer, Operator, operator_kubeconfig},
    requests::{
        apply_request, decoded_secret_key, event_reasons, manifest_as, put_token_secret,
        ready_reason, request_with_token, wait_for_reason, whoami_with_kubeconfig, write_temp,
    },
};

/// How soon a request must react to a change of a Secret it depends on.
const PROMPTLY: Duration = Duration::from_secs(15);

/// A KubeconfigRequest manifest as JSON, so that names with spaces or newlines survive intact.
fn request(namespace: &str, name: &str, spec: Value) -> String {
    json!({
        "apiVersion": "kubeconfig.dev/v1alpha1",
        "kind": "KubeconfigRequest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
    .to_string()
}

/// `kubectl create -f` of `manifest` as the holder of `token`.
fn create_as(cluster: &Cluster, token: &str, manifest: &str) -> Result<String, String> {
    manifest_as(cluster, token, "create", manifest)
}

/// `kubectl create -f` of `manifest` as admin.
fn create_as_admin(cluster: &Cluster, manifest: &str) -> Result<String, String> {
    let file = write_temp(manifest);
    kubectl_result(cluster, &["create", "-f", file.path().to_str().unwrap()])
}

/// A Role with one rule and a RoleBinding of it to `user`.
fn grant(
    cluster: &Cluster,
    namespace: &str,
    role: &str,
    verbs: &str,
    resource: &str,
    resource_name: Option<&str>,
    user: &str,
) {
    let verbs = format!("--verb={verbs}");
    let resource = format!("--resource={resource}");
    let mut args = vec!["create", "role", role, "-n", namespace, &verbs, &resource];
    let resource_name = resource_name.map(|name| format!("--resource-name={name}"));
    if let Some(name) = &resource_name {
        args.push(name);
    }
    kubectl(cluster, &args);
    kubectl(
        cluster,
        &[
            "create",
            "rolebinding",
            role,
            "-n",
            namespace,
            &format!("--role={role}"),
            &format!("--user={user}"),
        ],
    );
}

/// Waits until the authorizer answers `can-i ARGS` with yes for the holder of `token` (RBAC
/// changes reach its cache within moments, not at once).
fn wait_until_allowed(cluster: &Cluster, token: &str, args: &[&str]) {
    eventually(
        Duration::from_secs(30),
        &format!("the user may {}", args.join(" ")),
        || can_i_as_token(cluster, token, args),
    );
}

/// The Secrets bob's requests (`bob`, `mine`, `payroll`) write, which he may read.
const BOBS_KUBECONFIGS: [&str; 3] = ["bob-kubeconfig", "mine-kubeconfig", "payroll-kubeconfig"];

/// Gives bob his Dex token in Secret `bob-token` (put there by admin) and exactly these rights in
/// `namespace`: `request_verbs` on KubeconfigRequests, `get` on Secret `bob-token` and on
/// [`BOBS_KUBECONFIGS`], and `create`
/// on Secrets only when `may_create_secrets`. Returns his token.
fn bob_with_rights(
    cluster: &Cluster,
    namespace: &str,
    request_verbs: &str,
    may_create_secrets: bool,
) -> String {
    let bob = id_token(cluster, "bob");
    put_token_secret(cluster, namespace, "bob-token", "token", &bob);
    grant(
        cluster,
        namespace,
        "bob-requests",
        request_verbs,
        "kubeconfigrequests.kubeconfig.dev",
        None,
        &cluster.bob_username,
    );
    grant(
        cluster,
        namespace,
        "bob-reads-his-token",
        "get",
        "secrets",
        Some("bob-token"),
        &cluster.bob_username,
    );
    // Where each of his requests writes its kubeconfig: he must be allowed to read it.
    support::grant(
        cluster,
        namespace,
        "bob-reads-his-kubeconfigs",
        &cluster.bob_username,
        "get",
        "secrets",
        &BOBS_KUBECONFIGS,
    );
    if may_create_secrets {
        grant(
            cluster,
            namespace,
            "bob-creates-secrets",
            "create",
            "secrets",
            None,
            &cluster.bob_username,
        );
        wait_until_allowed(cluster, &bob, &["create", "secrets", "-n", namespace]);
    }
    wait_until_allowed(
        cluster,
        &bob,
        &[
            "create",
            "kubeconfigrequests.kubeconfig.dev",
            "-n",
            namespace,
        ],
    );
    wait_until_allowed(cluster, &bob, &["get", "secret/bob-token", "-n", namespace]);
    assert_eq!(
        can_i_as_token(cluster, &bob, &["create", "secrets", "-n", namespace]),
        may_create_secrets,
        "bob's right to create Secrets in {namespace}"
    );
    bob
}

/// Bob's request `name` for his own token, without spec.secretName: admitted.
fn bob_requests_his_own(cluster: &Cluster, bob: &str, namespace: &str, name: &str) {
    let spec = json!({"tokenSecretRef": {"name": "bob-token"}});
    create_as(cluster, bob, &request(namespace, name, spec))
        .expect("bob may create a request for his own token without spec.secretName");
}

/// Bob's request `bob` turns Issued, with a kubeconfig of his own in `bob-kubeconfig`.
fn bobs_request_is_issued(cluster: &Cluster, namespace: &str) {
    wait_for_reason(cluster, namespace, "bob", "Issued");
    assert_names_secret_of(
        cluster,
        namespace,
        "bob",
        "bob-kubeconfig",
        &cluster.bob_username,
    );
}

/// A request `name` for alice's ID token in Secret `<name>-token`, as admin.
fn request_for_alice(cluster: &Cluster, namespace: &str, name: &str) {
    request_with_token(cluster, namespace, name, &id_token(cluster, "alice"));
}

/// A Secret that no request owns, created by admin, holding `content` under `kubeconfig`.
fn foreign_secret(cluster: &Cluster, namespace: &str, name: &str, content: &str) {
    let literal = format!("--from-literal=kubeconfig={content}");
    let args = [
        "create", "secret", "generic", name, "-n", namespace, &literal,
    ];
    kubectl(cluster, &args);
}

/// One field of an object, read as admin with a jsonpath.
fn field(cluster: &Cluster, namespace: &str, object: &str, jsonpath: &str) -> String {
    kubectl(
        cluster,
        &[
            "get",
            object,
            "-n",
            namespace,
            "-o",
            &format!("jsonpath={jsonpath}"),
        ],
    )
}

fn exists(cluster: &Cluster, namespace: &str, object: &str) -> bool {
    kubectl_result(cluster, &["get", object, "-n", namespace]).is_ok()
}

/// The username the API server sees for the kubeconfig in Secret `secret`.
fn whoami(cluster: &Cluster, namespace: &str, secret: &str) -> String {
    let kubeconfig = decoded_secret_key(cluster, namespace, secret, "kubeconfig");
    let user = whoami_with_kubeconfig(&kubeconfig)
        .unwrap_or_else(|e| panic!("the kubeconfig in Secret {secret} does not authenticate: {e}"));
    user["username"]
        .as_str()
        .expect("whoami names a user")
        .to_owned()
}

/// The request's status names `secret`, and the kubeconfig in it authenticates as `username`.
fn assert_names_secret_of(
    cluster: &Cluster,
    namespace: &str,
    request: &str,
    secret: &str,
    username: &str,
) {
    assert_eq!(status_secret_name(cluster, namespace, request), secret);
    assert_eq!(
        whoami(cluster, namespace, secret),
        username,
        "the kubeconfig in Secret {secret}"
    );
}

/// The uid of the request, as the ownerReference of its Secret must name it.
fn request_uid(cluster: &Cluster, namespace: &str, name: &str) -> String {
    field(
        cluster,
        namespace,
        &format!("kcr/{name}"),
        "{.metadata.uid}",
    )
}

/// The uids of the Secret's controller ownerReferences.
fn controller_uids(cluster: &Cluster, namespace: &str, secret: &str) -> Vec<String> {
    let references = field(
        cluster,
        namespace,
        &format!("secret/{secret}"),
        "{.metadata.ownerReferences}",
    );
    if references.is_empty() {
        return Vec::new();
    }
    let references: Vec<Value> = serde_json::from_str(&references).expect("ownerReferences");
    references
        .iter()
        .filter(|reference| reference["controller"] == json!(true))
        .filter_map(|reference| reference["uid"].as_str().map(str::to_owned))
        .collect()
}

fn status_secret_name(cluster: &Cluster, namespace: &str, name: &str) -> String {
    field(
        cluster,
        namespace,
        &format!("kcr/{name}"),
        "{.status.secretName}",
    )
}

#[test]
fn a_user_without_create_secrets_cannot_squat_on_the_name_another_request_derives() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-squat");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    let bob = bob_with_rights(cluster, &ns.name, "create,get", false);

    // (a) Bob asks first for the name alice's request `alice` will derive: refused at admission.
    let refused = create_as(
        cluster,
        &bob,
        &request(
            &ns.name,
            "squat",
            json!({"tokenSecretRef": {"name": "bob-token"}, "secretName": "alice-kubeconfig"}),
        ),
    )
    .expect_err("bob may not choose the Secret name alice's request derives");
    assert!(
        refused.contains(&format!(
            "user {} may not create Secrets in namespace {}",
            cluster.bob_username, ns.name
        )) && refused.contains("cannot choose the Secret name alice-kubeconfig"),
        "{refused}"
    );
    assert!(!exists(cluster, &ns.name, "kcr/squat"));

    // (b) Without spec.secretName bob's request is admitted and writes under its own name.
    bob_requests_his_own(cluster, &bob, &ns.name, "bob");
    bobs_request_is_issued(cluster, &ns.name);

    request_for_alice(cluster, &ns.name, "alice");
    wait_for_reason(cluster, &ns.name, "alice", "Issued");
    assert_names_secret_of(
        cluster,
        &ns.name,
        "alice",
        "alice-kubeconfig",
        &cluster.alice_username,
    );
    // And bob cannot read what the operator wrote for alice.
    let forbidden = kubectl_as_token(
        cluster,
        &bob,
        &["get", "secret", "alice-kubeconfig", "-n", &ns.name],
    )
    .expect_err("bob may not read alice's kubeconfig");
    assert!(forbidden.contains("forbidden"), "{forbidden}");
}

#[test]
fn a_user_without_create_secrets_cannot_make_the_operator_write_a_secret_of_his_choice() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-writer");
    let control = Namespace::new(cluster, "kcr-writer-ok");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    // `patch` as well, so that the update path of the admission policy is tried too.
    let bob = bob_with_rights(cluster, &ns.name, "create,get,patch", false);
    let chosen = json!({
        "tokenSecretRef": {"name": "bob-token"},
        "secretName": "chosen",
        "secretTemplate": {"labels": {"app.kubernetes.io/part-of": "payroll"}},
    });

    let refused = create_as(cluster, &bob, &request(&ns.name, "mine", chosen.clone()))
        .expect_err("bob may not name the Secret");
    assert!(
        refused.contains("may not create Secrets")
            && refused.contains("leave spec.secretName unset"),
        "{refused}"
    );

    // Created without a name, then changed to name one: refused on update as well.
    bob_requests_his_own(cluster, &bob, &ns.name, "mine");
    wait_for_reason(cluster, &ns.name, "mine", "Issued");
    let refused = kubectl_as_token(
        cluster,
        &bob,
        &[
            "patch",
            "kcr",
            "mine",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"spec":{"secretName":"chosen"}}"#,
        ],
    )
    .expect_err("bob may not add spec.secretName later");
    assert!(refused.contains("may not create Secrets"), "{refused}");

    // The one name he does choose, `<request>-kubeconfig`, never overwrites a Secret that exists.
    foreign_secret(cluster, &ns.name, "payroll-kubeconfig", "precious");
    bob_requests_his_own(cluster, &bob, &ns.name, "payroll");
    wait_for_reason(cluster, &ns.name, "payroll", "SecretConflict");
    assert_eq!(
        decoded_secret_key(cluster, &ns.name, "payroll-kubeconfig", "kubeconfig"),
        "precious"
    );
    assert!(controller_uids(cluster, &ns.name, "payroll-kubeconfig").is_empty());
    assert!(
        !exists(cluster, &ns.name, "secret/chosen"),
        "the operator wrote a Secret whose name bob chose"
    );
    assert_eq!(
        field(cluster, &ns.name, "kcr/mine", "{.spec.secretName}"),
        ""
    );

    // Where bob may create Secrets himself, the very same request is admitted.
    let bob_there = bob_with_rights(cluster, &control.name, "create,get", true);
    create_as(cluster, &bob_there, &request(&control.name, "mine", chosen))
        .expect("bob may name the Secret where he may create Secrets");
}

#[test]
fn a_conflict_clears_within_seconds_once_the_foreign_secret_is_gone() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-conflict");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    foreign_secret(cluster, &ns.name, "x-kubeconfig", "someone-elses");
    request_for_alice(cluster, &ns.name, "x");
    let message = wait_for_reason(cluster, &ns.name, "x", "SecretConflict");
    assert!(message.contains("x-kubeconfig"), "{message}");
    let generation = field(cluster, &ns.name, "kcr/x", "{.metadata.generation}");

    // Nothing but the conflicting Secret changes.
    kubectl(
        cluster,
        &["delete", "secret", "x-kubeconfig", "-n", &ns.name],
    );
    eventually(PROMPTLY, "kcr/x is Ready after the conflict went", || {
        ready_reason(cluster, &ns.name, "x").as_deref() == Some("Issued")
    });
    assert_eq!(
        field(cluster, &ns.name, "kcr/x", "{.metadata.generation}"),
        generation
    );
    assert_eq!(
        controller_uids(cluster, &ns.name, "x-kubeconfig"),
        [request_uid(cluster, &ns.name, "x")]
    );
    assert_names_secret_of(
        cluster,
        &ns.name,
        "x",
        "x-kubeconfig",
        &cluster.alice_username,
    );
}

#[test]
fn names_the_operator_could_not_use_are_refused_when_applied() {
    let cluster = cluster();
    // Installs the CRD under test; no operator takes part in validation.
    operator_kubeconfig(cluster);
    let ns = Namespace::new(cluster, "kcr-schema");
    let token_ref = |name: &str| json!({"tokenSecretRef": {"name": name}});
    let with_labels = |labels: Value| json!({"tokenSecretRef": {"name": "alice-token"}, "secretTemplate": {"labels": labels}});
    let name_rule = "spec.tokenSecretRef.name in body should match";
    let cases: Vec<(&str, Value, &str)> = vec![
        ("a space", token_ref("alice b"), name_rule),
        ("a newline", token_ref("alice\nb"), name_rule),
        ("a path", token_ref("../../x/secrets/y"), name_rule),
        ("a query", token_ref("alice-b?pretty=true"), name_rule),
        (
            "a bad secretName",
            json!({"tokenSecretRef": {"name": "alice-token"}, "secretName": "Alice_Kubeconfig"}),
            "spec.secretName in body should match",
        ),
        (
            "a bad ServiceAccount name",
            json!({"serviceAccount": {"name": "deployer/token"}}),
            "spec.serviceAccount.name in body should match",
        ),
        (
            "a label value with a space and '!'",
            with_labels(json!({"team": "bad value!"})),
            "label values must be at most 63 characters",
        ),
        (
            "a label key starting with '-'",
            with_labels(json!({"-x": "a"})),
            "label keys must be valid Kubernetes label keys",
        ),
        (
            "a label key whose prefix is over 253 characters",
            with_labels(Value::Object(
                [(format!("{0}.{0}.{0}.{0}/team", "a".repeat(63)), json!("a"))]
                    .into_iter()
                    .collect(),
            )),
            "label keys must be valid Kubernetes label keys",
        ),
        (
            "an annotation key with a space",
            json!({
                "tokenSecretRef": {"name": "alice-token"},
                "secretTemplate": {"annotations": {"bad key": "a"}},
            }),
            "annotation keys must be valid Kubernetes annotation keys",
        ),
        (
            "both sources",
            json!({"tokenSecretRef": {"name": "alice-token"}, "serviceAccount": {"name": "deployer"}}),
            "exactly one of spec.tokenSecretRef",
        ),
        ("no source", json!({}), "exactly one of spec.tokenSecretRef"),
    ];
    for (index, (case, spec, rule)) in cases.into_iter().enumerate() {
        let name = format!("bad-{index}");
        let file = write_temp(&request(&ns.name, &name, spec));
        let refused = kubectl_result(cluster, &["apply", "-f", file.path().to_str().unwrap()])
            .expect_err(&format!(
                "a request with {case} must be refused when applied"
            ));
        assert!(refused.contains(rule), "{case}: {refused}");
        assert!(!exists(cluster, &ns.name, &format!("kcr/{name}")), "{case}");
    }
    // The refusals come from the rules, not from a broken manifest: a good one is stored.
    let good = with_labels(json!({"example.com/team": "a-1.b_2"}));
    let file = write_temp(&request(&ns.name, "good", good));
    kubectl(cluster, &["apply", "-f", file.path().to_str().unwrap()]);
}

#[test]
fn a_secret_the_api_server_refuses_is_reported_as_invalid_spec_not_retried() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-invalid");
    let operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    put_token_secret(
        cluster,
        &ns.name,
        "big-token",
        "token",
        &id_token(cluster, "alice"),
    );
    kubectl(
        cluster,
        &["create", "serviceaccount", "deployer", "-n", &ns.name],
    );
    kubectl(
        cluster,
        &[
            "annotate",
            "serviceaccount",
            "deployer",
            "-n",
            &ns.name,
            "kubeconfig.dev/issuable=true",
        ],
    );
    // Each annotation passes the schema, but together they exceed the API server's 256 KiB limit
    // for a Secret's annotations. (`kubectl create`, since `apply` would copy the spec into an
    // annotation of the request itself.)
    let annotations: serde_json::Map<String, Value> = (0..64)
        .map(|i| (format!("example.com/note-{i}"), json!("x".repeat(4096))))
        .collect();
    let template = json!({"annotations": annotations});
    let sources = [
        ("big", json!({"tokenSecretRef": {"name": "big-token"}})),
        ("minted", json!({"serviceAccount": {"name": "deployer"}})),
    ];
    for (name, mut spec) in sources {
        spec["secretTemplate"] = template.clone();
        create_as_admin(cluster, &request(&ns.name, name, spec)).expect("the request is valid");
        let message = wait_for_reason(cluster, &ns.name, name, "InvalidSpec");
        assert!(message.contains(&format!("{name}-kubeconfig")), "{message}");
        let events = event_reasons(cluster, &ns.name, name);
        assert!(events.contains("InvalidSpec"), "{name}: events {events}");
    }
    // Not an API error to retry with backoff: no further attempts while nothing changes.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !operator.log_events_with("request cache synced").is_empty(),
        "the operator's log is read as JSON events"
    );
    let failures = operator.log_events_with("reconcile failed");
    assert!(
        failures.is_empty(),
        "the refusal was retried as an error: {failures:?}"
    );
    for secret in ["secret/big-kubeconfig", "secret/minted-kubeconfig"] {
        assert!(!exists(cluster, &ns.name, secret), "{secret}");
    }
}

#[test]
fn a_secret_holding_a_live_credential_stays_named_and_a_stripped_owner_is_put_back() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-lifecycle");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    request_for_alice(cluster, &ns.name, "alice");
    wait_for_reason(cluster, &ns.name, "alice", "Issued");
    let uid = request_uid(cluster, &ns.name, "alice");
    assert_eq!(
        controller_uids(cluster, &ns.name, "alice-kubeconfig"),
        [uid.as_str()]
    );

    // Someone strips the ownerReference: the operator re-adopts its own Secret.
    kubectl(
        cluster,
        &[
            "patch",
            "secret",
            "alice-kubeconfig",
            "-n",
            &ns.name,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/ownerReferences"}]"#,
        ],
    );
    let stripped = Instant::now();
    let mut reasons = Vec::new();
    eventually(PROMPTLY, "the Secret has its ownerReference back", || {
        reasons.extend(ready_reason(cluster, &ns.name, "alice"));
        controller_uids(cluster, &ns.name, "alice-kubeconfig") == [uid.as_str()]
    });
    // Give a late SecretConflict the chance to show.
    while stripped.elapsed() < Duration::from_secs(3) {
        reasons.extend(ready_reason(cluster, &ns.name, "alice"));
        std::thread::sleep(Duration::from_millis(250));
    }
    reasons.extend(ready_reason(cluster, &ns.name, "alice"));
    assert!(
        reasons.iter().all(|reason| reason == "Issued"),
        "the request left Ready: {reasons:?}"
    );

    // The token Secret goes: the kubeconfig Secret still holds a live token, so status names it.
    kubectl(
        cluster,
        &["delete", "secret", "alice-token", "-n", &ns.name],
    );
    eventually(PROMPTLY, "kcr/alice reports TokenSecretNotFound", || {
        ready_reason(cluster, &ns.name, "alice").as_deref() == Some("TokenSecretNotFound")
    });
    assert_names_secret_of(
        cluster,
        &ns.name,
        "alice",
        "alice-kubeconfig",
        &cluster.alice_username,
    );
    assert_eq!(
        controller_uids(cluster, &ns.name, "alice-kubeconfig"),
        [uid.as_str()]
    );
}

#[test]
fn a_changed_secret_name_deletes_the_old_secret_once_the_new_one_is_written() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-rename");
    let _operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    request_for_alice(cluster, &ns.name, "alice");
    wait_for_reason(cluster, &ns.name, "alice", "Issued");
    assert!(exists(cluster, &ns.name, "secret/alice-kubeconfig"));

    // First to a name that is taken: the new Secret cannot be written, so the old one stays, and
    // stays named in status.
    foreign_secret(cluster, &ns.name, "renamed", "someone-elses");
    apply_request(
        cluster,
        &ns.name,
        "alice",
        "tokenSecretRef: {name: alice-token}\n  secretName: renamed",
    );
    wait_for_reason(cluster, &ns.name, "alice", "SecretConflict");
    assert!(exists(cluster, &ns.name, "secret/alice-kubeconfig"));
    assert_eq!(
        status_secret_name(cluster, &ns.name, "alice"),
        "alice-kubeconfig"
    );

    // Once it can be written, the old one goes.
    kubectl(cluster, &["delete", "secret", "renamed", "-n", &ns.name]);
    eventually(PROMPTLY, "the old Secret is deleted", || {
        !exists(cluster, &ns.name, "secret/alice-kubeconfig")
    });
    assert_names_secret_of(
        cluster,
        &ns.name,
        "alice",
        "renamed",
        &cluster.alice_username,
    );
    assert_eq!(
        ready_reason(cluster, &ns.name, "alice").as_deref(),
        Some("Issued")
    );
}

/// Issue 26, item 2: an update that keeps every reference as it was grants nothing new, so the
/// admission policy lets through identities that lack the creator's rights. A GitOps identity
/// with only `update`/`patch` on requests adds a label, but cannot point the request at another
/// Secret; Kubernetes' garbage collector (its real account, impersonated: the local
/// controller-manager runs with one privileged identity) removes a finalizer from a request
/// being deleted, and the deletion finishes.
#[test]
fn updates_that_keep_the_references_pass_for_gitops_and_the_garbage_collector() {
    let cluster = cluster();
    // Installs the CRD and the admission policy under test.
    operator_kubeconfig(cluster);
    let ns = Namespace::new(cluster, "kcr-unchanged");
    let bob = bob_with_rights(
        cluster,
        &ns.name,
        "create,get,list,watch,update,patch,delete",
        false,
    );
    bob_requests_his_own(cluster, &bob, &ns.name, "bob");

    grant(
        cluster,
        &ns.name,
        "gitops",
        "get,update,patch",
        "kubeconfigrequests.kubeconfig.dev",
        None,
        "gitops",
    );
    let as_gitops = |args: &[&str]| {
        let mut full = vec!["--as=gitops", "-n", ns.name.as_str()];
        full.extend_from_slice(args);
        kubectl_result(cluster, &full)
    };
    eventually(Duration::from_secs(30), "gitops may patch requests", || {
        as_gitops(&[
            "auth",
            "can-i",
            "patch",
            "kubeconfigrequests.kubeconfig.dev",
        ])
        .is_ok_and(|answer| answer == "yes")
    });
    as_gitops(&["label", "kcr", "bob", "team=b"])
        .expect("a label leaves every reference as it was");
    as_gitops(&["annotate", "kcr", "bob", "argocd.argoproj.io/tracking-id=b"])
        .expect("an annotation leaves every reference as it was");
    let moved = as_gitops(&[
        "patch",
        "kcr",
        "bob",
        "--type=merge",
        "-p",
        r#"{"spec":{"tokenSecretRef":{"name":"alice-token"}}}"#,
    ])
    .expect_err("a new reference is judged against the one who makes it");
    assert!(
        moved.contains("user gitops may not get Secret alice-token"),
        "{moved}"
    );

    // Bob holds his request back with a finalizer, as a foreground deletion does, and deletes it.
    kubectl_as_token(
        cluster,
        &bob,
        &[
            "patch",
            "kcr",
            "bob",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":["kubeconfig.dev/test-hold"]}}"#,
        ],
    )
    .expect("bob may add a finalizer to his own request");
    kubectl_as_token(
        cluster,
        &bob,
        &["delete", "kcr", "bob", "-n", &ns.name, "--wait=false"],
    )
    .expect("bob may delete his request");
    let collector = [
        "--as=system:serviceaccount:kube-system:generic-garbage-collector",
        "--as-group=system:serviceaccounts",
        "--as-group=system:serviceaccounts:kube-system",
        "--as-group=system:authenticated",
    ];
    let mut remove = collector.to_vec();
    remove.extend_from_slice(&[
        "patch",
        "kcr",
        "bob",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    kubectl_result(cluster, &remove)
        .expect("the garbage collector may remove a finalizer it did not add the references of");
    eventually(Duration::from_secs(15), "the request is gone", || {
        !exists(cluster, &ns.name, "kcr/bob")
    });
}

/// Issue 26, item 8: a second operator installation (its own ServiceAccount, its own settings)
/// whose scope overlaps the first's. Both used to rewrite the Secret after every write of the
/// other; now the first to see its write undone reports SecondWriter, both stop writing within a
/// handful of Secret versions, and deleting the Secret once one installation is left resumes it.
#[test]
fn two_installations_with_overlapping_scopes_stop_with_second_writer() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-second-writer");
    let installed = operator_kubeconfig(cluster);
    let second_account =
        ClusterAccount::bound(cluster, &ns.name, "second-operator", "kubeconfig-operator");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let second_kubeconfig = dir.path().join("second.kubeconfig");
    std::fs::copy(installed, &second_kubeconfig).expect("copy the operator's kubeconfig");
    support::kubectl_plain(&[
        "config",
        "--kubeconfig",
        second_kubeconfig.to_str().unwrap(),
        "set-credentials",
        "operator",
        &format!("--token={}", second_account.token),
    ])
    .expect("the second installation's credential");

    let first = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    let mut second = Operator::start_with_kubeconfig(
        cluster,
        &ns.name,
        Issuer::Main,
        &["--user-name", "second"],
        Some(&second_kubeconfig),
    );
    let bob = bob_with_rights(cluster, &ns.name, "create,get", false);
    bob_requests_his_own(cluster, &bob, &ns.name, "bob");

    let message = wait_for_reason(cluster, &ns.name, "bob", "SecondWriter");
    assert!(
        message.contains(&format!(
            "system:serviceaccount:{}:second-operator",
            ns.name
        )) && message.contains("system:serviceaccount:kubeconfig-operator:kubeconfig-operator")
            && message.contains("delete Secret bob-kubeconfig"),
        "{message}"
    );
    let writes = || {
        first.log_events_with("kubeconfig Secret written").len()
            + second.log_events_with("kubeconfig Secret written").len()
    };
    let settled = writes();
    assert!(settled <= 6, "{settled} writes of the Secret");
    // Both have stopped: no more writes, and the condition stays.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(writes(), settled);
    assert_eq!(
        ready_reason(cluster, &ns.name, "bob").as_deref(),
        Some("SecondWriter")
    );
    assert!(event_reasons(cluster, &ns.name, "bob").contains("SecondWriter"));

    // One installation left, the Secret deleted: it is written again.
    second.kill();
    kubectl(
        cluster,
        &["delete", "secret", "bob-kubeconfig", "-n", &ns.name],
    );
    bobs_request_is_issued(cluster, &ns.name);
}

/// Issue 26, item 6: with only `create` on requests, bob learns nothing about Secrets he may not
/// read: a request whose kubeconfig would go to one is refused at admission with the same message
/// whether that Secret exists or not. Nor can he have the operator write a Secret carrying the
/// labels by which Cluster API or Argo CD pick Secrets up, unless he may create Secrets himself.
#[test]
fn a_request_tells_bob_nothing_about_secrets_he_may_not_read_nor_carries_consumer_labels() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "kcr-oracle");
    let control = Namespace::new(cluster, "kcr-oracle-ok");
    operator_kubeconfig(cluster);
    let bob = bob_with_rights(cluster, &ns.name, "create,get", false);
    let spec = json!({"tokenSecretRef": {"name": "bob-token"}});
    let refusal = |name: &str| {
        create_as(cluster, &bob, &request(&ns.name, name, spec.clone()))
            .expect_err("bob may not have a kubeconfig written where he cannot read it")
            .split_once("denied request: ")
            .map(|(_, message)| message.replace(name, "NAME"))
            .expect("the admission policy's message")
    };
    foreign_secret(cluster, &ns.name, "prod-kubeconfig", "a workload cluster's");
    let existing = refusal("prod");
    let missing = refusal("staging");
    assert!(
        existing.contains(&format!(
            "user {} may not get Secret NAME-kubeconfig in namespace {}",
            cluster.bob_username, ns.name
        )),
        "{existing}"
    );
    assert_eq!(
        existing, missing,
        "the answer differs with the Secret's existence"
    );
    assert!(!exists(cluster, &ns.name, "kcr/prod") && !exists(cluster, &ns.name, "kcr/staging"));

    // His own request is admitted, but not with a consumer's label, unless he may create
    // Secrets himself.
    let bob_there = bob_with_rights(cluster, &control.name, "create,get", true);
    for (name, key, value) in [
        ("bob", "cluster.x-k8s.io/cluster-name", "prod"),
        ("mine", "argocd.argoproj.io/secret-type", "cluster"),
    ] {
        let labelled = json!({
            "tokenSecretRef": {"name": "bob-token"},
            "secretTemplate": {"labels": {key: value}},
        });
        let refused = create_as(cluster, &bob, &request(&ns.name, name, labelled.clone()))
            .expect_err("bob may not label his Secret as a consumer's");
        assert!(
            refused.contains("cannot give its Secret the labels by which Cluster API"),
            "{key}: {refused}"
        );
        create_as(cluster, &bob_there, &request(&control.name, name, labelled))
            .expect("bob may label what he could have written himself");
    }
    bob_requests_his_own(cluster, &bob, &ns.name, "bob");
}
