//! The `controller` and `leaderElection` sections: what the controller enforces beyond a
//! request's own spec, and the Lease its replicas compete for.

use serde::{Deserialize, Serialize};

use super::checks::{ConfigError, is_dns_label, is_dns_subdomain, optional_dns_label};

/// A day: long enough for a pipeline, short enough that a leaked kubeconfig dies on its own.
const DEFAULT_MAX_EXPIRATION_SECONDS: i64 = 86_400;
/// The TokenRequest API refuses shorter lifetimes.
const MIN_EXPIRATION_SECONDS: i64 = 600;

#[derive(Debug, Default, Clone, clap::Args, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControllerSection {
    /// Reconcile KubeconfigRequests in this process; off for replicas that only serve the proxy and downloads (config/proxy's pods, whose ServiceAccount may not read Secrets), which then never look at the Lease [file: controller.enabled; default true].
    #[arg(id = "controller-enabled", long = "controller-enabled", env = "KUBECONFIG_OPERATOR_CONTROLLER_ENABLED", num_args = 0..=1, default_missing_value = "true")]
    pub enabled: Option<bool>,
    /// Longest lifetime granted to a minted ServiceAccount token, in seconds; requests asking for more get this; at least 600 [file: controller.maxExpirationSeconds; default 86400].
    #[arg(long, env = "KUBECONFIG_OPERATOR_MAX_EXPIRATION_SECONDS")]
    pub max_expiration_seconds: Option<i64>,
}

#[derive(Debug, Default, Clone, clap::Args, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderElectionSection {
    /// Run the controller only while holding a Lease, so that of several replicas exactly one reconciles (all serve HTTP) [file: leaderElection.enabled; default on in a pod, off elsewhere].
    #[arg(id = "leader-elect", long = "leader-elect", env = "KUBECONFIG_OPERATOR_LEADER_ELECT", num_args = 0..=1, default_missing_value = "true")]
    pub enabled: Option<bool>,
    /// Name of the Lease the replicas compete for [file: leaderElection.leaseName; default kubeconfig-operator].
    #[arg(
        id = "leader-election-lease-name",
        long = "leader-election-lease-name",
        env = "KUBECONFIG_OPERATOR_LEADER_ELECTION_LEASE_NAME"
    )]
    pub lease_name: Option<String>,
    /// Namespace of that Lease [file: leaderElection.namespace; default the pod's namespace, else kubeconfig-operator].
    #[arg(
        id = "leader-election-namespace",
        long = "leader-election-namespace",
        env = "KUBECONFIG_OPERATOR_LEADER_ELECTION_NAMESPACE"
    )]
    pub namespace: Option<String>,
}

/// Where the Lease lives that replicas compete for (see `controller::leader`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElectionSettings {
    pub lease_name: String,
    pub namespace: String,
}

/// What the process knows about the pod it runs in, if any: the defaults of leader election
/// depend on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodEnvironment {
    pub in_pod: bool,
    /// The namespace of the pod's ServiceAccount, as the kubelet mounts it.
    pub namespace: Option<String>,
}

impl PodEnvironment {
    /// Inside a pod the kubelet sets `KUBERNETES_SERVICE_HOST` (kube's in-cluster configuration
    /// reads the same variable) and mounts the ServiceAccount's namespace.
    pub fn detect() -> Self {
        const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
        let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());
        Self {
            in_pod,
            namespace: in_pod
                .then(|| std::fs::read_to_string(NAMESPACE_FILE).ok())
                .flatten()
                .map(|namespace| namespace.trim().to_owned())
                .filter(|namespace| is_dns_label(namespace)),
        }
    }
}

/// The Lease's name and namespace when nothing else is said: the names `config/default` installs.
const DEFAULT_LEASE_NAME: &str = "kubeconfig-operator";
const DEFAULT_LEASE_NAMESPACE: &str = "kubeconfig-operator";

/// What the controller enforces beyond a request's own spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSettings {
    /// Whether this process reconciles at all (`controller.enabled`).
    pub enabled: bool,
    /// The admin's cap on minted ServiceAccount token lifetimes.
    pub max_expiration_seconds: i64,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_expiration_seconds: DEFAULT_MAX_EXPIRATION_SECONDS,
        }
    }
}

impl ControllerSection {
    pub(super) fn resolve(self) -> Result<ControllerSettings, ConfigError> {
        let max_expiration_seconds = self
            .max_expiration_seconds
            .unwrap_or(DEFAULT_MAX_EXPIRATION_SECONDS);
        if max_expiration_seconds < MIN_EXPIRATION_SECONDS {
            return Err(ConfigError::new(
                "controller.maxExpirationSeconds",
                format!(
                    "{max_expiration_seconds} is less than {MIN_EXPIRATION_SECONDS}, the shortest lifetime the TokenRequest API grants"
                ),
            ));
        }
        Ok(ControllerSettings {
            enabled: self.enabled.unwrap_or(true),
            max_expiration_seconds,
        })
    }
}

impl LeaderElectionSection {
    /// On by default in a pod, where a Deployment may run several replicas; off elsewhere (a
    /// developer's `make run`), where there is nobody to compete with.
    pub(super) fn resolve(
        self,
        pod: &PodEnvironment,
    ) -> Result<Option<LeaderElectionSettings>, ConfigError> {
        if !self.enabled.unwrap_or(pod.in_pod) {
            return Ok(None);
        }
        let lease_name = self.lease_name.unwrap_or_else(|| DEFAULT_LEASE_NAME.into());
        if !is_dns_subdomain(&lease_name) {
            return Err(ConfigError::new(
                "leaderElection.leaseName",
                format!(
                    "{lease_name:?} is not a Lease name (a DNS subdomain: lowercase letters, digits, '-' and '.', at most 253)"
                ),
            ));
        }
        let namespace = optional_dns_label(
            "leaderElection.namespace",
            self.namespace.or_else(|| pod.namespace.clone()),
        )?
        .unwrap_or_else(|| DEFAULT_LEASE_NAMESPACE.into());
        Ok(Some(LeaderElectionSettings {
            lease_name,
            namespace,
        }))
    }
}
