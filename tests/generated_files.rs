//! Files that are generated or declared twice must agree with their source, so that a change in
//! one place cannot silently leave the other behind.

use std::{collections::BTreeSet, process::Command};

fn repo_file(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {full}: {e}"))
}

#[test]
fn checked_in_crds_equal_the_generated_ones() {
    for plural in ["kubeconfigrequests", "kubeconfigrevocations"] {
        let output = Command::new(env!("CARGO_BIN_EXE_kubeconfig-operator"))
            .args(["crd", plural])
            .output()
            .expect("run kubeconfig-operator crd");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let generated = String::from_utf8(output.stdout).expect("CRD YAML is UTF-8");
        let file = format!("crds/kubeconfig.dev_{plural}.yaml");
        assert_eq!(
            repo_file(&file),
            generated,
            "crds/ is stale: run `cargo run -- crd {plural} > {file}`"
        );
    }
}

/// (API group, resource, verb) triples.
type Permissions = BTreeSet<(String, String, String)>;

/// The rules of `path` (a ClusterRole or Role of `kind`).
fn role_permissions(path: &str, kind: &str) -> Permissions {
    let role: serde_yaml::Value =
        serde_yaml::from_str(&repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(role["kind"].as_str(), Some(kind), "{path} is a {kind}");
    let strings = |value: &serde_yaml::Value| -> Vec<String> {
        value
            .as_sequence()
            .expect("a list")
            .iter()
            .map(|item| item.as_str().expect("a string").to_owned())
            .collect()
    };
    let mut permissions = Permissions::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    permissions.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    permissions
}

/// The table between `<!-- {marker}:begin -->` and `<!-- {marker}:end -->` in the README.
fn readme_permissions(marker: &str) -> Permissions {
    let readme = repo_file("README.md");
    let table = readme
        .split(&format!("<!-- {marker}:begin -->"))
        .nth(1)
        .and_then(|rest| rest.split(&format!("<!-- {marker}:end -->")).next())
        .unwrap_or_else(|| panic!("README has a table between its {marker} markers"));
    let mut permissions = Permissions::new();
    for row in table.lines().filter(|line| line.starts_with('|')).skip(2) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(
            cells.len(),
            3,
            "permissions row {row:?} needs group, resource, verbs"
        );
        let group = if cells[0] == "(core)" { "" } else { cells[0] };
        for verb in cells[2].split(',').map(str::trim) {
            permissions.insert((group.to_owned(), cells[1].to_owned(), verb.to_owned()));
        }
    }
    permissions
}

fn assert_same(role: &Permissions, declared: &Permissions, path: &str) {
    let undeclared: Vec<_> = role.difference(declared).collect();
    let unused: Vec<_> = declared.difference(role).collect();
    assert!(
        undeclared.is_empty(),
        "{path} grants permissions the README does not declare: {undeclared:?}"
    );
    assert!(
        unused.is_empty(),
        "the README declares permissions {path} does not grant: {unused:?}"
    );
    assert!(
        !role.iter().any(|(_, _, verb)| verb == "*"),
        "no wildcard verbs in {path}"
    );
    assert!(
        !role.iter().any(|(_, resource, _)| resource == "*"),
        "no wildcard resources in {path}"
    );
}

#[test]
fn operator_cluster_role_matches_the_permissions_the_readme_declares() {
    let path = "config/rbac/role.yaml";
    let role = role_permissions(path, "ClusterRole");
    assert_same(&role, &readme_permissions("permissions"), path);
    assert!(
        !role
            .iter()
            .any(|(group, _, _)| group == "coordination.k8s.io"),
        "Leases belong to the leader-election Role in the operator's namespace, not the ClusterRole"
    );
}

#[test]
fn leader_election_role_matches_the_permissions_the_readme_declares() {
    let path = "config/rbac/leader_election_role.yaml";
    let role = role_permissions(path, "Role");
    assert_same(
        &role,
        &readme_permissions("leader-election-permissions"),
        path,
    );
    let kustomization = repo_file("config/rbac/kustomization.yaml");
    for file in [
        "leader_election_role.yaml",
        "leader_election_role_binding.yaml",
    ] {
        assert!(
            kustomization.contains(file),
            "config/rbac/kustomization.yaml installs {file}"
        );
    }
}

#[test]
fn proxy_cluster_role_only_impersonates_users_and_groups_as_the_readme_declares() {
    let path = "config/proxy/role.yaml";
    let role = role_permissions(path, "ClusterRole");
    assert_same(&role, &readme_permissions("proxy-permissions"), path);
    assert!(
        role.iter().all(|(_, _, verb)| verb == "impersonate"),
        "the proxy may only impersonate: {role:?}"
    );
    assert!(
        !role
            .iter()
            .any(|(_, resource, _)| resource == "serviceaccounts"),
        "the proxy may not impersonate ServiceAccounts: {role:?}"
    );
}
