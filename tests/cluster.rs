//! Acceptance tests of the local test cluster itself (tests/cluster, `make cluster-up`):
//! admin access, OIDC login through Dex, RBAC for OIDC users, the garbage collector,
//! ValidatingAdmissionPolicy with `authorizer`, and `make cluster-down` on a second cluster.

mod support;

use std::{fs, path::Path, time::Duration};

use base64::Engine as _;
use support::{
    Client, Namespace, can_i_as_token, cluster, eventually, id_token, id_token_for_client,
    id_token_short_lived, kubectl, kubectl_as_token,
};

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("the payload is base64url");
    serde_json::from_slice(&bytes).expect("the payload is JSON")
}

#[test]
fn admin_lists_namespaces() {
    let cluster = cluster();
    let names = kubectl(cluster, &["get", "ns", "-o", "name"]);
    for ns in [
        "namespace/default",
        "namespace/kube-system",
        "namespace/kube-public",
    ] {
        assert!(
            names.lines().any(|l| l == ns),
            "{ns} missing from:\n{names}"
        );
    }
}

#[test]
fn alice_is_authenticated_by_dex_with_her_group() {
    let cluster = cluster();
    let token = id_token(cluster, "alice");
    let out = kubectl_as_token(cluster, &token, &["auth", "whoami", "-o", "json"])
        .expect("whoami as alice");
    let review: serde_json::Value = serde_json::from_str(&out).expect("whoami prints JSON");
    let user = &review["status"]["userInfo"];
    assert_eq!(user["username"], "alice@example.com", "{out}");
    let groups: Vec<&str> = user["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g.as_str())
        .collect();
    assert!(groups.contains(&"team-a"), "{out}");
    assert!(groups.contains(&"system:authenticated"), "{out}");
}

#[test]
fn bob_is_authenticated_without_groups() {
    let cluster = cluster();
    let token = id_token(cluster, "bob");
    assert!(
        claims(&token).get("groups").is_none(),
        "bob has no groups: {}",
        claims(&token)
    );
    let out = kubectl_as_token(cluster, &token, &["auth", "whoami", "-o", "json"])
        .expect("whoami as bob");
    let review: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        review["status"]["userInfo"]["username"], "bob@example.com",
        "{out}"
    );
    assert_eq!(
        review["status"]["userInfo"]["groups"],
        serde_json::json!(["system:authenticated"]),
        "{out}"
    );
}

#[test]
fn dex_issues_the_token_variants_tests_need() {
    let cluster = cluster();
    let main = claims(&id_token(cluster, "alice"));
    assert_eq!(main["iss"], cluster.oidc_issuer_url);
    assert_eq!(main["aud"], "kubeconfig-operator");
    assert_eq!(main["email"], "alice@example.com");
    assert_eq!(main["groups"], serde_json::json!(["team-a"]));
    assert_eq!(
        main["exp"].as_i64().unwrap() - main["iat"].as_i64().unwrap(),
        24 * 3600
    );

    let other = claims(&id_token_for_client(cluster, "alice", Client::Other));
    assert_eq!(other["aud"], "other-app");

    let both = claims(&id_token_for_client(
        cluster,
        "alice",
        Client::OperatorForOther,
    ));
    assert_eq!(
        both["aud"],
        serde_json::json!(["other-app", "kubeconfig-operator"])
    );
    assert_eq!(both["azp"], "kubeconfig-operator");

    let both_other = claims(&id_token_for_client(
        cluster,
        "alice",
        Client::OtherForOperator,
    ));
    assert_eq!(
        both_other["aud"],
        serde_json::json!(["kubeconfig-operator", "other-app"])
    );
    assert_eq!(both_other["azp"], "other-app");

    let short = claims(&id_token_short_lived(cluster, "alice"));
    assert_eq!(short["iss"], cluster.oidc_short_issuer_url);
    assert_eq!(
        short["exp"].as_i64().unwrap() - short["iat"].as_i64().unwrap(),
        5
    );
}

#[test]
fn apiserver_rejects_a_token_for_another_audience() {
    let cluster = cluster();
    let token = id_token_for_client(cluster, "alice", Client::Other);
    let err = kubectl_as_token(cluster, &token, &["auth", "whoami"])
        .expect_err("other-app token must be refused");
    assert!(
        err.contains("Unauthorized") || err.contains("provide credentials"),
        "{err}"
    );
}

#[test]
fn alice_needs_a_rolebinding_to_list_pods() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "alice-rbac");
    let token = id_token(cluster, "alice");

    assert!(!can_i_as_token(
        cluster,
        &token,
        &["list", "pods", "-n", &ns.name]
    ));
    let err = kubectl_as_token(cluster, &token, &["get", "pods", "-n", &ns.name])
        .expect_err("alice may not list pods yet");
    assert!(err.contains("forbidden"), "{err}");

    support::alice_may_view(cluster, &token, &ns.name);
    kubectl_as_token(cluster, &token, &["get", "pods", "-n", &ns.name]).expect("alice lists pods");
    // Still nothing elsewhere.
    assert!(!can_i_as_token(
        cluster,
        &token,
        &["list", "pods", "-n", "default"]
    ));
}

#[test]
fn garbage_collector_deletes_dependents() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "gc");
    kubectl(
        cluster,
        &[
            "create",
            "configmap",
            "owner",
            "-n",
            &ns.name,
            "--from-literal=a=b",
        ],
    );
    let uid = kubectl(
        cluster,
        &[
            "get",
            "configmap",
            "owner",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    );
    let dependent = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": ns.name,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
        "data": {"c": "d"},
    });
    let file = std::env::temp_dir().join(format!("kcluster-gc-{}.json", ns.name));
    fs::write(&file, dependent.to_string()).unwrap();
    kubectl(cluster, &["create", "-f", file.to_str().unwrap()]);
    let _ = fs::remove_file(&file);

    kubectl(cluster, &["delete", "configmap", "owner", "-n", &ns.name]);
    eventually(
        Duration::from_secs(90),
        "the garbage collector deletes the dependent ConfigMap",
        || {
            kubectl(cluster, &["get", "configmap", "-n", &ns.name, "-o", "name"])
                .lines()
                .all(|l| l != "configmap/dependent")
        },
    );
}

#[test]
fn validating_admission_policy_can_ask_the_authorizer() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "vap");
    kubectl(
        cluster,
        &[
            "label",
            "namespace",
            &ns.name,
            &format!("vap-test={}", ns.name),
        ],
    );
    let policy_name = format!("cm-needs-secret-read-{}", ns.name);
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": policy_name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {"resourceRules": [{
                        "apiGroups": [""], "apiVersions": ["v1"],
                        "operations": ["CREATE"], "resources": ["configmaps"],
                    }]},
                    "validations": [{
                        "expression": "authorizer.group('').resource('secrets').namespace(object.metadata.namespace).check('get').allowed()",
                        "message": "creating ConfigMaps here requires reading Secrets",
                    }],
                },
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": policy_name},
                "spec": {
                    "policyName": policy_name,
                    "validationActions": ["Deny"],
                    "matchResources": {"namespaceSelector": {"matchLabels": {"vap-test": ns.name}}},
                },
            },
        ],
    });
    let file = std::env::temp_dir().join(format!("kcluster-vap-{}.json", ns.name));
    fs::write(&file, manifest.to_string()).unwrap();
    kubectl(cluster, &["create", "-f", file.to_str().unwrap()]);
    let _ = fs::remove_file(&file);
    struct Cleanup<'a>(&'a support::Cluster, String);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = support::kubectl_result(
                self.0,
                &[
                    "delete",
                    "validatingadmissionpolicybinding,validatingadmissionpolicy",
                    &self.1,
                    "--ignore-not-found",
                ],
            );
        }
    }
    let _cleanup = Cleanup(cluster, policy_name.clone());

    // alice may create ConfigMaps but not read Secrets.
    kubectl(
        cluster,
        &[
            "create",
            "role",
            "cm-writer",
            "-n",
            &ns.name,
            "--verb=create,get,list",
            "--resource=configmaps",
        ],
    );
    kubectl(
        cluster,
        &[
            "create",
            "rolebinding",
            "alice-cm-writer",
            "-n",
            &ns.name,
            "--role=cm-writer",
            "--user=alice@example.com",
        ],
    );
    let token = id_token(cluster, "alice");
    let mut n = 0;
    eventually(
        Duration::from_secs(60),
        "the policy denies alice's ConfigMap",
        || {
            n += 1;
            match kubectl_as_token(
                cluster,
                &token,
                &["create", "configmap", &format!("alice-{n}"), "-n", &ns.name],
            ) {
                Ok(_) => false, // policy not active yet
                Err(e) => {
                    assert!(
                        e.contains("requires reading Secrets"),
                        "unexpected refusal: {e}"
                    );
                    true
                }
            }
        },
    );
    // The admin (system:masters) may read Secrets, so the same request is admitted.
    kubectl(
        cluster,
        &["create", "configmap", "admin-cm", "-n", &ns.name],
    );
}

fn pids_of(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir(dir.join("run")).expect("the cluster has a run/ directory") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "pid") {
            pids.push(
                fs::read_to_string(&path)
                    .unwrap()
                    .trim()
                    .parse()
                    .expect("a pid file holds a pid"),
            );
        }
    }
    pids
}

/// Alive = /proc/PID exists and is not a zombie waiting to be reaped.
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

#[test]
fn cluster_down_stops_a_second_cluster_and_removes_its_dir() {
    let dir = support::repo_root().join("target/cluster-gc-test");
    // Leftovers of an earlier, interrupted run.
    let _ = support::make("cluster-down", &dir);

    let second = support::ensure_cluster(&dir);
    assert!(second.is_ready());
    assert_ne!(
        second.kube_server,
        cluster().kube_server,
        "the second cluster has its own ports"
    );
    let pids = pids_of(&dir);
    assert_eq!(
        pids.len(),
        8,
        "etcd, ldap, dex, dex-short, test-issuer, apiserver, apiserver-authn, controller-manager: {pids:?}"
    );
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");

    let output = support::make("cluster-down", &dir);
    assert!(
        output.status.success(),
        "make cluster-down failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let left: Vec<u32> = pids.into_iter().filter(|&p| alive(p)).collect();
    assert!(
        left.is_empty(),
        "still running after cluster-down: {left:?}"
    );
    assert!(!dir.exists(), "{} still exists", dir.display());
    // The shared cluster is untouched.
    assert!(cluster().is_ready());
}
