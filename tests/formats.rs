//! Output formats (issue 11), end to end on the local cluster: the exec kubeconfig's login
//! against the real Dex and kube-apiserver, `spec.secretKeys`, Argo CD cluster Secrets, and the
//! schema rules around them, all as a user with nothing but the rights a tenant gets.

mod support;

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use base64::Engine as _;
use support::{
    Cluster, Namespace, alice_may_view, can_i_as_token, cluster, eventually, grant, id_token,
    kubectl, kubectl_as_token, kubectl_plain,
    operator::{Issuer, Operator},
    requests::{
        apply_request_as, http_get_kubeconfig, put_token_secret, wait_for_reason, write_temp,
    },
};

const ALICE_TOKEN_SECRET: &str = "alice-token";

/// A namespace where alice may create KubeconfigRequests, read her own token Secret (which an
/// admin put there, as a tenant's setup would) and read the Secrets named in `readable`.
fn tenant_namespace(cluster: &Cluster, prefix: &str, readable: &[&str]) -> (Namespace, String) {
    let namespace = Namespace::new(cluster, prefix);
    let ns = namespace.name.as_str();
    let alice = id_token(cluster, "alice");
    put_token_secret(cluster, ns, ALICE_TOKEN_SECRET, "token", &alice);
    grant(
        cluster,
        ns,
        "alice-requests",
        &cluster.alice_username,
        "get,list,create,update,patch",
        "kubeconfigrequests.kubeconfig.dev",
        &[],
    );
    let mut names = vec![ALICE_TOKEN_SECRET];
    names.extend_from_slice(readable);
    grant(
        cluster,
        ns,
        "alice-reads-secrets",
        &cluster.alice_username,
        "get",
        "secrets",
        &names,
    );
    eventually(Duration::from_secs(30), "alice's Roles take effect", || {
        can_i_as_token(
            cluster,
            &alice,
            &["create", "kubeconfigrequests.kubeconfig.dev", "-n", ns],
        ) && can_i_as_token(
            cluster,
            &alice,
            &["get", &format!("secret/{ALICE_TOKEN_SECRET}"), "-n", ns],
        )
    });
    (namespace, alice)
}

/// A Secret's data, decoded, as the holder of `token` reads it.
fn secret_data_as(
    cluster: &Cluster,
    token: &str,
    namespace: &str,
    secret: &str,
) -> BTreeMap<String, String> {
    let data = kubectl_as_token(
        cluster,
        token,
        &[
            "get",
            "secret",
            secret,
            "-n",
            namespace,
            "-o",
            "jsonpath={.data}",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let data: BTreeMap<String, String> =
        serde_json::from_str(&data).expect("Secret data is a JSON object of strings");
    data.into_iter()
        .map(|(key, encoded)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .expect("Secret data is base64");
            (key, String::from_utf8(bytes).expect("Secret data is UTF-8"))
        })
        .collect()
}

/// Applies a request for alice's token Secret with `extra` spec lines, as alice, and waits until
/// it is Issued.
fn issue_as_alice(cluster: &Cluster, alice: &str, namespace: &str, name: &str, extra: &str) {
    let spec = format!("tokenSecretRef: {{name: {ALICE_TOKEN_SECRET}}}{extra}");
    apply_request_as(cluster, alice, namespace, name, &spec).unwrap_or_else(|e| panic!("{e}"));
    wait_for_reason(cluster, namespace, name, "Issued");
}

fn whoami(cluster: &Cluster, token: &str) -> serde_json::Value {
    let out = kubectl_as_token(cluster, token, &["auth", "whoami", "-o", "json"])
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str::<serde_json::Value>(&out).expect("whoami prints JSON")["status"]
        ["userInfo"]
        .clone()
}

#[test]
fn secret_keys_kubeconfig_and_value_both_hold_a_working_kubeconfig() {
    let cluster = cluster();
    let (namespace, alice) = tenant_namespace(
        cluster,
        "formats-keys",
        &["both-kubeconfig", "one-kubeconfig"],
    );
    let ns = namespace.name.as_str();
    let _operator = Operator::start(cluster, ns, Issuer::Main, &[]);
    issue_as_alice(
        cluster,
        &alice,
        ns,
        "both",
        "\n  secretKeys: [kubeconfig, value]",
    );

    let data = secret_data_as(cluster, &alice, ns, "both-kubeconfig");
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["kubeconfig", "value"]
    );
    assert_eq!(data["kubeconfig"], data["value"]);
    let file = write_temp(&data["value"]);
    let out = kubectl_plain(&[
        "--kubeconfig",
        file.path().to_str().unwrap(),
        "auth",
        "whoami",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("alice@example.com"), "{out}");

    // The default stays one key: a request without secretKeys writes only "kubeconfig".
    issue_as_alice(cluster, &alice, ns, "one", "");
    let data = secret_data_as(cluster, &alice, ns, "one-kubeconfig");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["kubeconfig"]);
}

#[test]
fn argocd_request_writes_a_cluster_secret_whose_bearer_token_works() {
    let cluster = cluster();
    let (namespace, alice) = tenant_namespace(cluster, "formats-argocd", &["argo-kubeconfig"]);
    let ns = namespace.name.as_str();
    let _operator = Operator::start(cluster, ns, Issuer::Main, &[]);
    issue_as_alice(cluster, &alice, ns, "argo", "\n  format: argocd");

    let label = kubectl_as_token(
        cluster,
        &alice,
        &[
            "get",
            "secret",
            "argo-kubeconfig",
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.labels.argocd\\.argoproj\\.io/secret-type}",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(label, "cluster");
    let data = secret_data_as(cluster, &alice, ns, "argo-kubeconfig");
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["config", "name", "server"]
    );
    assert_eq!(data["name"], "local");
    assert_eq!(data["server"], cluster.kube_server);

    let config: serde_json::Value = serde_json::from_str(&data["config"]).expect("config is JSON");
    assert_eq!(config["tlsClientConfig"]["insecure"], false);
    let ca = base64::engine::general_purpose::STANDARD
        .decode(
            config["tlsClientConfig"]["caData"]
                .as_str()
                .expect("caData"),
        )
        .expect("caData is base64");
    assert_eq!(ca, std::fs::read(&cluster.kube_ca_file).unwrap());
    let bearer = config["bearerToken"].as_str().expect("bearerToken");
    // The CA from the Secret, not the test's own file: Argo CD has only the Secret.
    let ca_file = write_temp(std::str::from_utf8(&ca).unwrap());
    let out = kubectl_plain(&[
        &format!("--server={}", cluster.kube_server),
        &format!("--certificate-authority={}", ca_file.path().display()),
        &format!("--token={bearer}"),
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, cluster.alice_username);
}

#[test]
fn the_schema_refuses_unknown_formats_and_keys_and_meaningless_combinations() {
    let cluster = cluster();
    let (namespace, alice) = tenant_namespace(cluster, "formats-schema", &[]);
    let ns = namespace.name.as_str();
    let token_ref = format!("tokenSecretRef: {{name: {ALICE_TOKEN_SECRET}}}");
    for (spec, expected) in [
        (format!("{token_ref}\n  format: yaml"), "format"),
        (format!("{token_ref}\n  format: ArgoCD"), "format"),
        (
            format!("{token_ref}\n  secretKeys: [value, value]"),
            "secretKeys",
        ),
        (format!("{token_ref}\n  secretKeys: [config]"), "secretKeys"),
        (format!("{token_ref}\n  secretKeys: []"), "secretKeys"),
        (
            format!("{token_ref}\n  format: argocd\n  secretKeys: [value]"),
            "an argocd Secret always has the keys name, server and config",
        ),
        (
            "serviceAccount: {name: deployer}\n  format: exec".to_owned(),
            "spec.format exec needs spec.tokenSecretRef",
        ),
    ] {
        let refusal = apply_request_as(cluster, &alice, ns, "bad", &spec)
            .expect_err(&format!("the API server accepted {spec:?}"));
        assert!(refusal.contains(expected), "{spec:?}: {refusal}");
    }
}

/// The exec kubeconfig names a public client, scopes and a CA with which a login at the real
/// Dex yields a token the real kube-apiserver accepts as alice, with her groups and a refresh
/// token: the login kubelogin makes, done here with the password grant from the kubeconfig's own
/// arguments; and without kubelogin on PATH, real kubectl says it runs the plugin the file
/// names. kubelogin itself runs the file in `tests/kubelogin.rs`.
#[test]
fn exec_kubeconfig_logs_in_at_dex_as_a_public_client_and_kube_apiserver_accepts_it() {
    let cluster = cluster();
    let namespace = Namespace::new(cluster, "formats-exec");
    let public_client = &cluster.env["OIDC_PUBLIC_CLIENT_ID"];
    let scopes = format!(
        "email,groups,offline_access,audience:server:client_id:{}",
        cluster.oidc_client_id
    );
    let operator = Operator::start(
        cluster,
        &namespace.name,
        Issuer::Main,
        &[
            "--exec-client-id",
            public_client,
            "--exec-extra-scopes",
            &scopes,
        ],
    );
    let alice = id_token(cluster, "alice");
    let response = http_get_kubeconfig(&operator.base_url, Some(&alice), "?format=exec");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        !response.body.contains(&alice),
        "the exec kubeconfig carries a token"
    );
    assert!(!response.body.contains(&cluster.oidc_client_secret));
    let kubeconfig: serde_json::Value = serde_yaml::from_str(&response.body).unwrap();
    let exec = &kubeconfig["users"][0]["user"]["exec"];
    assert_eq!(exec["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(exec["interactiveMode"], "IfAvailable");
    let args: Vec<&str> = exec["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    let values = |flag: &str| -> Vec<&str> {
        args.iter()
            .filter_map(|arg| arg.strip_prefix(flag)?.strip_prefix('='))
            .collect()
    };
    assert_eq!(&args[..2], ["oidc-login", "get-token"]);
    let issuer = values("--oidc-issuer-url");
    assert_eq!(issuer, [cluster.oidc_issuer_url.as_str()]);
    assert_eq!(values("--oidc-client-id"), [public_client.as_str()]);
    let ca = base64::engine::general_purpose::STANDARD
        .decode(values("--certificate-authority-data")[0])
        .unwrap();
    assert_eq!(ca, std::fs::read(&cluster.oidc_ca_file).unwrap());

    // The login kubelogin makes: openid plus the extra scopes, as the public client, trusting
    // only the CA from the file.
    let mut scope = vec!["openid"];
    scope.extend(values("--oidc-extra-scope"));
    let ca_file = write_temp(std::str::from_utf8(&ca).unwrap());
    let answer = password_grant(
        issuer[0],
        ca_file.path().to_str().unwrap(),
        public_client,
        &scope.join(" "),
        &cluster.alice_username,
        &cluster.alice_password,
    );
    assert!(
        answer["refresh_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "no refresh token: offline_access is missing from the scopes"
    );
    let id_token = answer["id_token"].as_str().expect("an ID token");
    let user = whoami(cluster, id_token);
    assert_eq!(user["username"], cluster.alice_username.as_str());
    assert!(
        user["groups"]
            .as_array()
            .unwrap()
            .contains(&"team-a".into()),
        "{user}"
    );

    // Real kubectl reads the file and runs what its user entry names: without kubelogin on
    // PATH, `kubectl oidc-login` is an unknown command, and nothing else is wrong with the file.
    let file = write_temp(&response.body);
    let kubectl_dir = tempfile::tempdir().unwrap();
    let kubectl_path = support::which("kubectl").expect("kubectl on PATH");
    std::os::unix::fs::symlink(&kubectl_path, kubectl_dir.path().join("kubectl")).unwrap();
    let output = Command::new(&kubectl_path)
        .args([
            "--kubeconfig",
            file.path().to_str().unwrap(),
            "auth",
            "whoami",
        ])
        .env_clear()
        .env("PATH", kubectl_dir.path())
        .env("HOME", kubectl_dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("oidc-login"), "{stderr}");
    assert!(stderr.contains("exec"), "{stderr}");
}

/// The OAuth 2.0 password grant as a public client (no secret), as kubelogin's
/// `--grant-type=password` makes it. Credentials go to curl on stdin, never on a command line.
fn password_grant(
    issuer: &str,
    ca_file: &str,
    client_id: &str,
    scope: &str,
    username: &str,
    password: &str,
) -> serde_json::Value {
    let mut child = Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "-m",
            "30",
            "--cacert",
            ca_file,
            "--config",
            "-",
        ])
        .arg(format!("{issuer}/token"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run curl");
    let config = format!(
        "data-urlencode = \"grant_type=password\"\ndata-urlencode = \"client_id={client_id}\"\ndata-urlencode = \"scope={scope}\"\ndata-urlencode = \"username={username}\"\ndata-urlencode = \"password={password}\"\n"
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "Dex refused the public client's password grant: {body} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&body).expect("Dex answers JSON")
}

/// The GitOps case: an Argo CD cluster Secret for a ServiceAccount, whose token the controller
/// keeps while it is not due (read back from `config`) and renews when it is, in place.
#[test]
fn argocd_secret_for_a_service_account_keeps_its_token_until_renewal_replaces_it() {
    const ACCOUNT: &str = "deployer";
    // The request's default Secret name: naming another needs the right to create Secrets.
    const SECRET: &str = "gitops-kubeconfig";
    let cluster = cluster();
    let (namespace, alice) = tenant_namespace(cluster, "formats-argocd-sa", &[SECRET]);
    let ns = namespace.name.as_str();
    let account = write_temp(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {ACCOUNT}\n  namespace: {ns}\n  annotations:\n    kubeconfig.dev/issuable: \"true\"\n"
    ));
    support::kubectl(cluster, &["apply", "-f", account.path().to_str().unwrap()]);
    grant(
        cluster,
        ns,
        "alice-mints",
        &cluster.alice_username,
        "create",
        "serviceaccounts/token",
        &[ACCOUNT],
    );
    let _operator = Operator::start(
        cluster,
        ns,
        Issuer::Main,
        &["--max-expiration-seconds", "900"],
    );
    let spec = |extra: &str| {
        format!(
            "serviceAccount: {{name: {ACCOUNT}, expirationSeconds: 900}}\n  format: argocd{extra}"
        )
    };
    let apply = |extra: &str| {
        eventually(
            Duration::from_secs(30),
            "alice's request is admitted",
            || apply_request_as(cluster, &alice, ns, "gitops", &spec(extra)).is_ok(),
        );
    };
    let bearer = || {
        let data = secret_data_as(cluster, &alice, ns, SECRET);
        let config: serde_json::Value = serde_json::from_str(&data["config"]).unwrap();
        config["bearerToken"].as_str().unwrap().to_owned()
    };
    let observed = |generation: i64| {
        eventually(
            Duration::from_secs(60),
            &format!("generation {generation} is reconciled"),
            || {
                support::kubectl(
                    cluster,
                    &[
                        "get",
                        "kcr",
                        "gitops",
                        "-n",
                        ns,
                        "-o",
                        "jsonpath={.status.observedGeneration}",
                    ],
                ) == generation.to_string()
            },
        );
    };
    let service_account = format!("system:serviceaccount:{ns}:{ACCOUNT}");

    apply("");
    wait_for_reason(cluster, ns, "gitops", "Issued");
    let first = bearer();
    assert_eq!(
        whoami(cluster, &first)["username"],
        service_account.as_str()
    );

    // A spec change that does not touch the credential: the token read back from `config` is
    // not due, so it is kept rather than minted again.
    apply("\n  secretTemplate: {labels: {team: a}}");
    observed(2);
    // Compared, not printed: a failure must not put a live token into CI logs.
    assert!(bearer() == first, "the not-yet-due token was minted again");

    // Renewal due 10 s after issuance: a new token replaces it in the same Secret, and the old
    // one stays valid until its own expiry, as for kubeconfig Secrets.
    apply("\n  secretTemplate: {labels: {team: a}}\n  renewBefore: 890s");
    observed(3);
    eventually(
        Duration::from_secs(60),
        "the Argo CD token is renewed",
        || bearer() != first,
    );
    let second = bearer();
    assert_eq!(
        whoami(cluster, &second)["username"],
        service_account.as_str()
    );
    assert_eq!(
        whoami(cluster, &first)["username"],
        service_account.as_str()
    );
    let label = support::kubectl(
        cluster,
        &[
            "get",
            "secret",
            SECRET,
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.labels.argocd\\.argoproj\\.io/secret-type}",
        ],
    );
    assert_eq!(label, "cluster");
}

/// Two clusters' kubeconfigs merged the way people merge them, by real kubectl
/// (`KUBECONFIG=a:b kubectl config view --flatten`): with the seed's shared user name the second
/// cluster's context silently sends the first one's token; with a user name per cluster each
/// context keeps its own user.
#[test]
fn per_cluster_user_names_keep_each_users_token_through_kubectls_merge() {
    use kubeconfig_operator::{
        ca::CaBundle,
        config::KubeconfigSettings,
        crd::Format,
        kubeconfig::{self, Rendered},
        oidc::token::IdToken,
    };
    let cluster = cluster();
    let alice = id_token(cluster, "alice");
    let bob = id_token(cluster, "bob");
    let ca = std::fs::read(&cluster.kube_ca_file).unwrap();
    let file_for = |name: &str, user_name: &str, token: &str| {
        let settings = KubeconfigSettings {
            ca: CaBundle::fixed(Some(ca.clone())),
            user_name: user_name.into(),
            ..KubeconfigSettings::for_tests(name, &cluster.kube_server)
        };
        let Rendered::Kubeconfig(yaml) = kubeconfig::render(
            &settings,
            Format::Token,
            &IdToken::from(token.to_owned()),
            None,
        )
        .unwrap() else {
            panic!("the token format renders a kubeconfig");
        };
        write_temp(&yaml)
    };
    let user_of_context =
        |a: &tempfile::NamedTempFile, b: &tempfile::NamedTempFile, context: &str| {
            let path = format!("{}:{}", a.path().display(), b.path().display());
            let run = |args: &[&str]| {
                let output = Command::new("kubectl")
                    .args(args)
                    .env("KUBECONFIG", &path)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                String::from_utf8(output.stdout).unwrap()
            };
            let merged = write_temp(&run(&["config", "view", "--flatten"]));
            kubectl_plain(&[
                "--kubeconfig",
                merged.path().to_str().unwrap(),
                "--context",
                context,
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ])
            .unwrap_or_else(|e| panic!("{e}"))
        };

    let shared = (
        file_for("cluster-a", "OIDCUser", &alice),
        file_for("cluster-b", "OIDCUser", &bob),
    );
    assert_eq!(
        user_of_context(&shared.0, &shared.1, "cluster-b"),
        cluster.alice_username,
        "kubectl's merge keeps the first OIDCUser entry"
    );

    let own = (
        file_for("cluster-a", "oidc@cluster-a", &alice),
        file_for("cluster-b", "oidc@cluster-b", &bob),
    );
    assert_eq!(
        user_of_context(&own.0, &own.1, "cluster-a"),
        cluster.alice_username
    );
    assert_eq!(
        user_of_context(&own.0, &own.1, "cluster-b"),
        cluster.bob_username
    );
}

/// A ServiceAccount that may only read the Secret `secret`: the management identity in Cluster
/// API's and Flux's terms, Argo CD's controller in Argo CD's. It may list no pods, so whatever a
/// loader lists, it lists with the credential it loaded. Returns its token.
fn secret_reader(cluster: &Cluster, namespace: &str, secret: &str) -> String {
    kubectl(
        cluster,
        &["create", "serviceaccount", "management", "-n", namespace],
    );
    let account = format!("system:serviceaccount:{namespace}:management");
    grant(
        cluster,
        namespace,
        "management-reads",
        &account,
        "get",
        "secrets",
        &[secret],
    );
    let token = kubectl(cluster, &["create", "token", "management", "-n", namespace]);
    eventually(
        Duration::from_secs(30),
        "the reader's Role takes effect",
        || {
            can_i_as_token(
                cluster,
                &token,
                &["get", &format!("secret/{secret}"), "-n", namespace],
            )
        },
    );
    assert!(!can_i_as_token(
        cluster,
        &token,
        &["list", "pods", "-n", namespace]
    ));
    token
}

/// Runs the consumers' own loaders (`tests/consumers`, built by `tests/cluster/up.sh` into the
/// cluster's bin directory as `kubeconfig-consumers`) with `reader`'s token as the caller's
/// kubeconfig; their output, or a panic with their error.
fn consumer(cluster: &Cluster, reader: &str, args: &[&str]) -> String {
    let binary = support::which("kubeconfig-consumers").expect(
        "kubeconfig-consumers is on PATH (tests/cluster/up.sh builds it; run make cluster-up)",
    );
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": cluster.kube_server,
            "certificate-authority": cluster.kube_ca_file,
        }}],
        "users": [{"name": "reader", "user": {"token": reader}}],
        "contexts": [{"name": "reader", "context": {"cluster": "local", "user": "reader"}}],
        "current-context": "reader",
    });
    let file = write_temp(&kubeconfig.to_string());
    let output = Command::new(binary)
        .args(args)
        .env("KUBECONFIG", file.path())
        .stdin(Stdio::null())
        .output()
        .expect("run kubeconfig-consumers");
    assert!(
        output.status.success(),
        "kubeconfig-consumers {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Issue 24: Cluster API's loader (`controllers/remote.RESTConfig` over
/// `util/kubeconfig.FromSecret`, the Secret `<cluster>-kubeconfig`, key `value`) and Flux's
/// (`runtime/client.Impersonator` for `spec.kubeConfig.secretRef`) read what the operator wrote,
/// and the client each builds acts as alice: allowed where she may list pods, forbidden elsewhere.
#[test]
fn cluster_api_and_flux_load_the_value_key_with_their_own_code() {
    let cluster = cluster();
    let (namespace, alice) = tenant_namespace(cluster, "formats-loaders", &["workload-kubeconfig"]);
    let ns = namespace.name.as_str();
    let elsewhere = Namespace::new(cluster, "formats-loaders-elsewhere");
    let _operator = Operator::start(cluster, ns, Issuer::Main, &[]);
    issue_as_alice(cluster, &alice, ns, "workload", "\n  secretKeys: [value]");
    alice_may_view(cluster, &alice, ns);
    let reader = secret_reader(cluster, ns, "workload-kubeconfig");
    let expected = format!("{ns} allowed\n{} forbidden\n", elsewhere.name);

    // Cluster API names the Secret after the Cluster: "workload" reads workload-kubeconfig.
    let capi = consumer(
        cluster,
        &reader,
        &["cluster-api", ns, "workload", ns, &elsewhere.name],
    );
    assert_eq!(capi, expected);
    let flux = consumer(
        cluster,
        &reader,
        &["flux", ns, "workload-kubeconfig", ns, &elsewhere.name],
    );
    assert_eq!(flux, expected);
}

/// Issue 24: Argo CD's own conversion (`util/db.SecretToCluster`, then `Cluster.RESTConfig`)
/// reads the `argocd` Secret, and its client acts as alice.
#[test]
fn argo_cds_own_conversion_reads_the_cluster_secret() {
    let cluster = cluster();
    let (namespace, alice) = tenant_namespace(cluster, "formats-argo-loader", &["argo-kubeconfig"]);
    let ns = namespace.name.as_str();
    let elsewhere = Namespace::new(cluster, "formats-argo-elsewhere");
    let _operator = Operator::start(cluster, ns, Issuer::Main, &[]);
    issue_as_alice(cluster, &alice, ns, "argo", "\n  format: argocd");
    alice_may_view(cluster, &alice, ns);
    let reader = secret_reader(cluster, ns, "argo-kubeconfig");

    let argo = consumer(
        cluster,
        &reader,
        &["argocd", ns, "argo-kubeconfig", ns, &elsewhere.name],
    );
    assert_eq!(
        argo,
        format!(
            "argocd cluster \"local\" at {}\n{ns} allowed\n{} forbidden\n",
            cluster.kube_server, elsewhere.name
        )
    );
}
