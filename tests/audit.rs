//! The trace from an issued credential to the API server's audit log (README "Audit trail"): the
//! README's query, run as written against the harness's audit logs, finds exactly the requests an
//! issued kubeconfig made, and a request through the proxy is recorded with the same identity as
//! the same request made directly.

#[path = "support/api_proxy.rs"]
mod api_proxy;
mod support;

use std::{collections::BTreeMap, path::Path, process::Command, sync::OnceLock, time::Duration};

use api_proxy::{
    PROXY_NAMESPACE, PROXY_SERVICE_ACCOUNT, Proxied, grant_proxy_extras, kubectl_with,
};
use serde_json::Value;
use support::{
    Cluster, Namespace, cluster, eventually, grant, kubectl, kubectl_plain,
    operator::{Issuer, Operator, operator_kubeconfig},
    requests::{
        apply_request, decoded_secret_key, http_get_kubeconfig, request_with_token,
        wait_for_reason, write_temp,
    },
    tokens::test_issuer_token,
};

const CREDENTIAL_ID_KEY: &str = "authentication.kubernetes.io/credential-id";

/// The jq filter of the README's query, exactly as the README writes it.
fn readme_query() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let section = &readme[readme
        .find("## Audit trail")
        .expect("README has \"Audit trail\"")..];
    let opening = "jq -c --arg id \"$CREDENTIAL_ID\" '";
    let start = section.find(opening).expect("the section has the jq query") + opening.len();
    let end = start
        + section[start..]
            .find('\'')
            .expect("the filter ends with a quote");
    section[start..end].to_owned()
}

/// What the README's query prints for `id` over the audit log `log`.
fn audited(log: &Path, id: &str) -> Vec<Value> {
    let output = Command::new("jq")
        .args(["-c", "--arg", "id", id, &readme_query()])
        .arg(log)
        .output()
        .expect("run jq");
    assert!(
        output.status.success(),
        "jq failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("jq prints JSON lines"))
        .collect()
}

/// Each found request as `VERB path code`, the query string left off (kubectl's `?limit=500`).
fn calls(found: &[Value]) -> Vec<String> {
    let mut calls: Vec<String> = found
        .iter()
        .map(|entry| {
            let uri = entry["uri"].as_str().unwrap_or_default();
            let path = uri.split('?').next().unwrap_or_default();
            format!(
                "{} {path} {}",
                entry["verb"].as_str().unwrap_or_default(),
                entry["code"]
            )
        })
        .collect();
    calls.sort();
    calls
}

/// The operator's confirmation of a token is a request made with that token, so the audit log
/// holds it among the credential's own requests.
const CONFIRMATION: &str = "create /apis/authentication.k8s.io/v1/selfsubjectreviews 201";

/// Waits until the query finds `expected` (sorted) besides the operator's confirmations, and
/// asserts that it finds nothing else.
fn assert_audited_exactly(log: &Path, id: &str, expected: &[String]) {
    let own = |found: &[Value]| -> Vec<String> {
        calls(found)
            .into_iter()
            .filter(|call| call != CONFIRMATION)
            .collect()
    };
    eventually(
        Duration::from_secs(30),
        "the audit log has the credential's requests",
        || own(&audited(log, id)).len() >= expected.len(),
    );
    let found = audited(log, id);
    assert_eq!(own(&found), expected, "{found:#?}");
    assert!(
        calls(&found).contains(&CONFIRMATION.to_owned()),
        "the operator confirmed the token with it: {found:#?}"
    );
}

/// `kubectl get configmaps`, one ConfigMap, and Secrets (forbidden) in `namespace`, through
/// `run`; returns what the audit log should show for them.
fn a_few_calls(namespace: &str, run: impl Fn(&[&str]) -> Result<String, String>) -> Vec<String> {
    run(&["get", "configmaps", "-n", namespace]).expect("list ConfigMaps");
    run(&["get", "configmap", "kube-root-ca.crt", "-n", namespace]).expect("get one ConfigMap");
    let forbidden = run(&["get", "secrets", "-n", namespace]).expect_err("Secrets are not granted");
    assert!(forbidden.contains("forbidden"), "{forbidden}");
    let mut calls = vec![
        format!("list /api/v1/namespaces/{namespace}/configmaps 200"),
        format!("get /api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt 200"),
        format!("list /api/v1/namespaces/{namespace}/secrets 403"),
    ];
    calls.sort();
    calls
}

fn kubectl_at(
    server: &str,
    cluster: &Cluster,
    token: &str,
    args: &[&str],
) -> Result<String, String> {
    let mut full = vec![
        "--kubeconfig=/dev/null".to_owned(),
        format!("--server={server}"),
        format!("--certificate-authority={}", cluster.kube_ca_file),
        format!("--token={token}"),
    ];
    full.extend(args.iter().map(|arg| (*arg).to_owned()));
    kubectl_plain(&full.iter().map(String::as_str).collect::<Vec<_>>())
}

fn env<'a>(cluster: &'a Cluster, name: &str) -> &'a str {
    cluster
        .env
        .get(name)
        .unwrap_or_else(|| panic!("the cluster env has no {name}; run make cluster-up"))
}

/// A token of the test issuer for a user of its own, with the `jti` `<namespace>-<suffix>`,
/// who may read ConfigMaps in `namespace`: (email, jti, token).
fn test_issuer_reader(
    cluster: &Cluster,
    namespace: &str,
    suffix: &str,
) -> (String, String, String) {
    let email = format!("{namespace}@example.com");
    grant(
        cluster,
        namespace,
        "reader",
        &format!("test:{email}"),
        "get,list",
        "configmaps",
        &[],
    );
    let jti = format!("{namespace}-{suffix}");
    let token = test_issuer_token(cluster, &email, &jti);
    (email, jti, token)
}

/// The operator with its proxy, verifying tokens with the second API server's authentication
/// configuration, which trusts the test issuer. The proxy impersonates the extras that
/// configuration maps for every such token, so they are granted here, as the README shows, for
/// every test that goes through it (a test that relied on another's grant was refused while the
/// other had not yet made it).
fn proxied_for_test_issuer(cluster: &Cluster, namespace: &str) -> Proxied {
    // Once per binary: two tests applying the same new objects at once race to create them.
    static GRANTED: OnceLock<()> = OnceLock::new();
    GRANTED.get_or_init(|| {
        grant_proxy_extras(
            cluster,
            "kubeconfig-operator-proxy-test-issuer-extras",
            &["example.com/roles", "example.com/tenant"],
        );
    });
    Proxied::start_with(
        cluster,
        namespace,
        Issuer::AuthenticationConfig,
        &[
            "--authentication-config",
            env(cluster, "AUTHENTICATION_CONFIG_FILE"),
        ],
    )
}

/// The operator's own audit stream (`--audit-path`): its lines, and a check that none holds
/// `token` or its signature.
fn stream(path: &Path, token: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !text.contains(token) && !text.contains(signature),
        "the audit stream holds the token:\n{text}"
    );
    text.lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

/// A minted ServiceAccount kubeconfig: its credential id is in status, on the Secret, in the
/// `Issued` Event and in the operator's `issue` audit event, and the README's query over the API
/// server's audit log finds exactly what the kubeconfig did, not what another token of the same
/// ServiceAccount did.
#[test]
fn the_query_finds_exactly_what_a_service_account_kubeconfig_did() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "audit-sa");
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_path = audit_dir.path().join("audit.jsonl");
    let _operator = Operator::start(
        cluster,
        &ns.name,
        Issuer::Main,
        &["--audit-path", audit_path.to_str().unwrap()],
    );
    let account = "deployer";
    let file = write_temp(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {account}\n  namespace: {}\n  annotations:\n    kubeconfig.dev/issuable: \"true\"\n",
        ns.name
    ));
    kubectl(cluster, &["apply", "-f", file.path().to_str().unwrap()]);
    let user = format!("system:serviceaccount:{}:{account}", ns.name);
    grant(
        cluster,
        &ns.name,
        "reader",
        &user,
        "get,list",
        "configmaps",
        &[],
    );
    apply_request(
        cluster,
        &ns.name,
        account,
        &format!("serviceAccount: {{name: {account}}}"),
    );
    wait_for_reason(cluster, &ns.name, account, "Issued");
    let id = kubectl(
        cluster,
        &[
            "get",
            "kcr",
            account,
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.credentialId}",
        ],
    );
    assert!(id.starts_with("JTI="), "status.credentialId is {id:?}");
    let secret = kubectl(
        cluster,
        &[
            "get",
            "kcr",
            account,
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.secretName}",
        ],
    );
    let secret_annotations: BTreeMap<String, String> = serde_json::from_str(&kubectl(
        cluster,
        &[
            "get",
            "secret",
            &secret,
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.metadata.annotations}",
        ],
    ))
    .unwrap();
    assert_eq!(secret_annotations["kubeconfig.dev/credential-id"], id);
    let issued_event = kubectl(
        cluster,
        &[
            "get",
            "events.events.k8s.io",
            "-n",
            &ns.name,
            "--field-selector",
            "reason=Issued",
            "-o",
            "jsonpath={.items[*].note}",
        ],
    );
    assert!(issued_event.contains(&id), "{issued_event}");

    let kubeconfig = write_temp(&decoded_secret_key(
        cluster,
        &ns.name,
        &secret,
        "kubeconfig",
    ));
    let minted = std::fs::read_to_string(kubeconfig.path()).unwrap();
    let minted: Value = serde_yaml::from_str(&minted).unwrap();
    let events = stream(
        &audit_path,
        minted["users"][0]["user"]["token"].as_str().unwrap(),
    );
    let issued: Vec<&Value> = events.iter().filter(|e| e["action"] == "issue").collect();
    assert_eq!(issued.len(), 1, "{events:#?}");
    assert_eq!(issued[0]["outcome"], "success");
    assert_eq!(issued[0]["credentialId"], id.as_str());
    assert_eq!(issued[0]["user"]["username"], user.as_str());
    assert_eq!(
        issued[0]["object"],
        serde_json::json!({"request": account, "namespace": ns.name, "format": "token"})
    );
    assert!(
        issued[0]["auditID"]
            .as_str()
            .is_some_and(|id| id.len() == 36)
    );

    let expected = a_few_calls(&ns.name, |args| kubectl_with(kubeconfig.path(), args));
    // Another token of the same ServiceAccount, which the operator did not issue.
    let other = kubectl(cluster, &["create", "token", account, "-n", &ns.name]);
    kubectl_at(
        &cluster.kube_server,
        cluster,
        &other,
        &["get", "configmaps", "-n", &ns.name],
    )
    .expect("the other token lists ConfigMaps");

    assert_audited_exactly(&cluster.dir.join("logs/audit.log"), &id, &expected);
}

/// A downloaded kubeconfig holding an ID token with `jti`: the download names the credential id
/// in `X-Kubeconfig-Extra` (the API server confirmed it) and its audit event in `Audit-ID`, which
/// the operator's audit stream holds with the token's identity, the credential id and the
/// client's address (and a refused download the same way); the README's query finds exactly the
/// requests made with it, not those of another token of the same user. The token is the
/// harness's test issuer's, which the second API server trusts (Dex's tokens have no `jti`); the
/// operator confirms with that API server.
#[test]
fn the_query_finds_exactly_what_a_downloaded_id_token_did() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "audit-download");
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_path = audit_dir.path().join("audit.jsonl");
    let authn_server = env(cluster, "KUBE_AUTHN_SERVER");
    let operator_client = write_temp(
        &std::fs::read_to_string(operator_kubeconfig(cluster))
            .unwrap()
            .replace(&cluster.kube_server, authn_server),
    );
    let operator = Operator::start_with_kubeconfig(
        cluster,
        &ns.name,
        Issuer::AuthenticationConfig,
        &[
            "--authentication-config",
            env(cluster, "AUTHENTICATION_CONFIG_FILE"),
            "--confirm-with-api-server=true",
            "--audit-path",
            audit_path.to_str().unwrap(),
        ],
        Some(operator_client.path()),
    );
    let (email, jti, token) = test_issuer_reader(cluster, &ns.name, "download");

    let download = http_get_kubeconfig(&operator.base_url, Some(&token), "");
    assert_eq!(download.status, 200, "{}", download.body);
    let extra = download.header("x-kubeconfig-extra");
    assert!(
        extra
            .split(',')
            .any(|pair| pair == format!("{CREDENTIAL_ID_KEY}=JTI%3D{jti}")),
        "{extra}"
    );
    // exec is not configured: a refusal, with its own audit event.
    let refused = http_get_kubeconfig(&operator.base_url, Some(&token), "?format=exec");
    assert_eq!(refused.status, 400, "{}", refused.body);
    let events = stream(&audit_path, &token);
    let event = |response: &support::requests::HttpResponse| {
        let id = response.header("audit-id");
        assert_eq!(id.len(), 36, "Audit-ID {id:?}");
        let found: Vec<&Value> = events.iter().filter(|e| e["auditID"] == id).collect();
        assert_eq!(found.len(), 1, "{id} in {events:#?}");
        found[0].clone()
    };
    let downloaded = event(&download);
    assert_eq!(
        (&downloaded["action"], &downloaded["outcome"]),
        (
            &serde_json::json!("download"),
            &serde_json::json!("success")
        )
    );
    assert_eq!(downloaded["credentialId"], format!("JTI={jti}"));
    assert_eq!(downloaded["user"]["username"], format!("test:{email}"));
    assert_eq!(downloaded["object"]["format"], "token");
    assert_eq!(downloaded["sourceAddress"], "127.0.0.1");
    let refusal = event(&refused);
    assert_eq!(
        (&refusal["action"], &refusal["outcome"], &refusal["reason"]),
        (
            &serde_json::json!("refusal"),
            &serde_json::json!("failure"),
            &serde_json::json!("ExecNotConfigured")
        )
    );
    assert!(refusal.get("credentialId").is_none(), "{refusal}");

    let kubeconfig = write_temp(&download.body);
    let server = format!("--server={authn_server}");
    let expected = a_few_calls(&ns.name, |args| {
        let mut full = vec![server.as_str()];
        full.extend_from_slice(args);
        kubectl_with(kubeconfig.path(), &full)
    });
    let other = test_issuer_token(cluster, &email, &format!("{jti}-other"));
    kubectl_at(
        authn_server,
        cluster,
        &other,
        &["get", "configmaps", "-n", &ns.name],
    )
    .expect("the other token lists ConfigMaps");

    assert_audited_exactly(
        &cluster.dir.join("logs/audit-authn.log"),
        &format!("JTI={jti}"),
        &expected,
    );
}

/// Issue #23's check of the proxy: the audit log records a request through the proxy with the
/// same user, uid, groups and extra (the credential id among them) as the same request made
/// directly with the token, and names the proxy as the one who made it.
#[test]
fn a_proxied_request_is_audited_with_the_identity_of_a_direct_one() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "audit-proxy");
    let proxied = proxied_for_test_issuer(cluster, &ns.name);
    let (email, jti, token) = test_issuer_reader(cluster, &ns.name, "proxy");
    let id = format!("JTI={jti}");

    let list = ["get", "configmaps", "-n", ns.name.as_str()];
    kubectl_at(env(cluster, "KUBE_AUTHN_SERVER"), cluster, &token, &list)
        .expect("the token straight at the API server that trusts its issuer");
    let kubeconfig = proxied.kubeconfig_for(&token, "proxied.kubeconfig");
    kubectl_with(&kubeconfig, &list).expect("the same request through the proxy");

    let one = |log: &str| {
        let log = cluster.dir.join("logs").join(log);
        eventually(
            Duration::from_secs(30),
            "the audit log has the request",
            || !audited(&log, &id).is_empty(),
        );
        let found = audited(&log, &id);
        assert_eq!(found.len(), 1, "{found:#?}");
        found.into_iter().next().unwrap()
    };
    let direct = one("audit-authn.log");
    let through_proxy = one("audit.log");
    // What is compared was really there to lose.
    let user = &direct["user"];
    assert_eq!(user["username"], format!("test:{email}"), "{direct}");
    assert!(
        user["uid"].as_str().is_some_and(|uid| !uid.is_empty()),
        "{direct}"
    );
    assert_eq!(
        user["extra"][CREDENTIAL_ID_KEY],
        serde_json::json!([id]),
        "{direct}"
    );
    assert_eq!(
        user["extra"]["example.com/tenant"],
        serde_json::json!(["acme"]),
        "{direct}"
    );
    assert_eq!(direct["via"], Value::Null, "{direct}");

    assert_eq!(through_proxy["user"], direct["user"]);
    assert_eq!(
        through_proxy["via"],
        format!("system:serviceaccount:{PROXY_NAMESPACE}:{PROXY_SERVICE_ACCOUNT}")
    );
    assert_eq!(
        (&through_proxy["verb"], &through_proxy["code"]),
        (&direct["verb"], &direct["code"])
    );
}

/// Proxy mode: a request's `status.lastUsedAt` says when its kubeconfig last went through the
/// proxy, and a second use within the minute writes nothing (the proxy writes each credential's
/// use at most once a minute).
#[test]
fn the_proxy_records_when_a_requests_credential_was_last_used() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "last-use");
    let _proxied = proxied_for_test_issuer(cluster, &ns.name);
    let (_, jti, token) = test_issuer_reader(cluster, &ns.name, "last-use");
    request_with_token(cluster, &ns.name, "laptop", &token);
    wait_for_reason(cluster, &ns.name, "laptop", "Issued");
    let field = |path: &str| {
        kubectl(
            cluster,
            &[
                "get",
                "kcr",
                "laptop",
                "-n",
                &ns.name,
                "-o",
                &format!("jsonpath={{.status.{path}}}"),
            ],
        )
    };
    assert_eq!(field("credentialId"), format!("JTI={jti}"));
    assert_eq!(field("lastUsedAt"), "", "not used yet");
    let kubeconfig = write_temp(&decoded_secret_key(
        cluster,
        &ns.name,
        &field("secretName"),
        "kubeconfig",
    ));
    let list = ["get", "configmaps", "-n", ns.name.as_str()];

    let before = chrono::Utc::now().timestamp();
    kubectl_with(kubeconfig.path(), &list).expect("the kubeconfig through the proxy");
    eventually(Duration::from_secs(30), "lastUsedAt is written", || {
        !field("lastUsedAt").is_empty()
    });
    let after = chrono::Utc::now().timestamp();
    let first = field("lastUsedAt");
    let used_at = chrono::DateTime::parse_from_rfc3339(&first)
        .expect("lastUsedAt is RFC 3339")
        .timestamp();
    assert!((before..=after).contains(&used_at), "{first}");

    // A second use, a second or more later, within the minute: written values differ by then,
    // so a write would show.
    std::thread::sleep(Duration::from_millis(1500));
    kubectl_with(kubeconfig.path(), &list).expect("the kubeconfig through the proxy again");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(field("lastUsedAt"), first, "at most one write a minute");
}
