//! ServiceAccounts with rights across the cluster, for tests that act as a second installation,
//! a proxy or a cluster-wide tool, each with the least those rights need. The ServiceAccount goes
//! with its namespace; what binds it is cluster-scoped and would outlive the test, so it goes
//! when the account is dropped, even when the test panics.

use super::{Cluster, cluster, kubectl, kubectl_result};

pub struct ClusterAccount {
    /// `kubectl create token`'s, for `kubectl --token` or a kubeconfig of the account's own.
    pub token: String,
    /// `{namespace}-{account}`: its binding's name, and its ClusterRole's when made for it.
    pub name: String,
    /// Cluster-scoped objects to delete with the account, as `(kind, name)`.
    made: Vec<(&'static str, String)>,
}

impl ClusterAccount {
    /// `account` in `namespace`, bound to the existing ClusterRole `role`.
    pub fn bound(cluster: &Cluster, namespace: &str, account: &str, role: &str) -> Self {
        Self::make(cluster, namespace, account, role, Vec::new())
    }

    /// `account` in `namespace`, bound to a ClusterRole of its own allowing `verbs` (comma
    /// separated, as `kubectl create clusterrole` takes them) on `resources`.
    pub fn with_role(
        cluster: &Cluster,
        namespace: &str,
        account: &str,
        verbs: &str,
        resources: &str,
    ) -> Self {
        let role = format!("{namespace}-{account}");
        kubectl(
            cluster,
            &[
                "create",
                "clusterrole",
                &role,
                &format!("--verb={verbs}"),
                &format!("--resource={resources}"),
            ],
        );
        Self::make(
            cluster,
            namespace,
            account,
            &role,
            vec![("clusterrole", role.clone())],
        )
    }

    /// A cluster-scoped object made for this account after its creation, deleted with it.
    pub fn owns(&mut self, kind: &'static str, name: &str) {
        self.made.push((kind, name.to_owned()));
    }

    fn make(
        cluster: &Cluster,
        namespace: &str,
        account: &str,
        role: &str,
        made: Vec<(&'static str, String)>,
    ) -> Self {
        // Made first, so that what exists is deleted even if a step below panics.
        let mut created = Self {
            token: String::new(),
            name: format!("{namespace}-{account}"),
            made,
        };
        kubectl(
            cluster,
            &["create", "serviceaccount", account, "-n", namespace],
        );
        created.owns("clusterrolebinding", &created.name.clone());
        kubectl(
            cluster,
            &[
                "create",
                "clusterrolebinding",
                &created.name,
                &format!("--clusterrole={role}"),
                &format!("--serviceaccount={namespace}:{account}"),
            ],
        );
        created.token = kubectl(cluster, &["create", "token", account, "-n", namespace]);
        created
    }
}

impl Drop for ClusterAccount {
    fn drop(&mut self) {
        let cluster = cluster();
        for (kind, name) in &self.made {
            let _ = kubectl_result(cluster, &["delete", kind, name, "--ignore-not-found"]);
        }
    }
}
