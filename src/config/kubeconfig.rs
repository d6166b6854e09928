//! What goes into every issued kubeconfig besides the user's token: the top-level keys of the
//! file, and the `exec` section for kubelogin.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    checks::{
        ConfigError, ca_bundle, https_url, non_empty_name, optional_dns_label, read_pem_file,
    },
    oidc::OidcConfig,
};
use crate::ca::CaBundle;

/// The file's top-level keys (flattened into [`super::Settings`]) and their flags.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeconfigSection {
    /// Name of the cluster and context in issued kubeconfigs [file: clusterName; default kubernetes].
    #[arg(long, env = "KUBECONFIG_OPERATOR_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// URL kubectl talks to: the API server or its proxy [file: server; default required].
    #[arg(long, env = "KUBECONFIG_OPERATOR_SERVER")]
    pub server: Option<String>,
    /// Base64 PEM of the CA that signed the server's certificate [file: certificateAuthorityData].
    #[arg(long = "ca-data", env = "KUBECONFIG_OPERATOR_CA_DATA")]
    pub certificate_authority_data: Option<String>,
    /// PEM file of the CA that signed the server's certificate [file: certificateAuthorityFile].
    #[arg(long = "ca-file", env = "KUBECONFIG_OPERATOR_CA_FILE")]
    pub certificate_authority_file: Option<PathBuf>,
    /// Name of the user entry in issued kubeconfigs [file: userName; default OIDCUser].
    #[arg(long, env = "KUBECONFIG_OPERATOR_USER_NAME")]
    pub user_name: Option<String>,
    /// Namespace of the context when the request names none [file: defaultNamespace].
    #[arg(long, env = "KUBECONFIG_OPERATOR_DEFAULT_NAMESPACE")]
    pub default_namespace: Option<String>,
}

/// The `exec` kubeconfig format (kubelogin); off until `clientId` is set.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecSection {
    /// Public OIDC client (no secret) that kubelogin logs in with in `exec` kubeconfigs; unset: no exec format [file: exec.clientId].
    #[arg(
        id = "exec-client-id",
        long = "exec-client-id",
        env = "KUBECONFIG_OPERATOR_EXEC_CLIENT_ID"
    )]
    pub client_id: Option<String>,
    /// Comma-separated scopes kubelogin requests besides openid: the claims the API server reads, and offline_access for refresh [file: exec.extraScopes; default email,groups,offline_access].
    #[arg(
        id = "exec-extra-scopes",
        long = "exec-extra-scopes",
        env = "KUBECONFIG_OPERATOR_EXEC_EXTRA_SCOPES",
        value_delimiter = ','
    )]
    pub extra_scopes: Option<Vec<String>>,
    /// Program exec kubeconfigs run: kubectl, with kubelogin as its plugin oidc-login; or kubectl-oidc_login, kubelogin itself, so that a kuberc credentialPluginAllowlist can allow kubelogin without allowing kubectl, which runs any plugin [file: exec.command; default kubectl].
    #[arg(
        id = "exec-command",
        long = "exec-command",
        env = "KUBECONFIG_OPERATOR_EXEC_COMMAND",
        value_enum
    )]
    pub command: Option<ExecCommand>,
}

/// The program an `exec` kubeconfig names; its name is the command itself.
#[derive(
    Debug,
    Default,
    Clone,
    Copy,
    PartialEq,
    Eq,
    clap::ValueEnum,
    Deserialize,
    Serialize,
    strum::IntoStaticStr,
)]
pub enum ExecCommand {
    #[default]
    #[serde(rename = "kubectl")]
    #[value(name = "kubectl")]
    #[strum(serialize = "kubectl")]
    Kubectl,
    #[serde(rename = "kubectl-oidc_login")]
    #[value(name = "kubectl-oidc_login")]
    #[strum(serialize = "kubectl-oidc_login")]
    KubectlOidcLogin,
}

impl ExecCommand {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What goes into every issued kubeconfig besides the user's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeconfigSettings {
    pub cluster_name: String,
    /// The server URL exactly as configured (validated as https), so the kubeconfig shows what
    /// the operator's owner wrote rather than a normalised form.
    pub server: String,
    /// The server's CA (PEM), followed when it comes from a file; none leaves kubectl on the
    /// system's trust roots.
    pub ca: CaBundle,
    pub user_name: String,
    pub default_namespace: Option<String>,
    /// The `exec` format's kubelogin arguments; `None` when no public client is configured.
    pub exec: Option<ExecSettings>,
}

/// What an `exec` kubeconfig tells kubelogin: where to log in and as which public client. All of
/// it is public, so the file may be shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSettings {
    /// The issuer exactly as configured, as kube-apiserver expects it in `iss`.
    pub issuer: String,
    pub client_id: String,
    /// The scopes whose claims the API server reads (email, groups), and offline_access so
    /// kubelogin gets a refresh token; the ID token's own `openid` is always requested.
    pub extra_scopes: Vec<String>,
    /// The issuer's CA (`oidc.caFile`), read at start-up and put into the kubeconfig as data, so
    /// the file works on machines that do not have it.
    pub issuer_ca_pem: Option<Vec<u8>>,
    pub command: ExecCommand,
}

#[cfg(any(test, feature = "testing"))]
impl KubeconfigSettings {
    /// Settings for tests across the crate: `cluster_name` at `server`, no CA (the system's
    /// roots), the default user name, no namespace and no exec format. Tests change what they
    /// need with struct update syntax, so a new field is added here once.
    pub fn for_tests(cluster_name: &str, server: &str) -> Self {
        Self {
            cluster_name: cluster_name.to_owned(),
            server: server.to_owned(),
            ca: CaBundle::default(),
            user_name: "OIDCUser".into(),
            default_namespace: None,
            exec: None,
        }
    }
}

impl KubeconfigSection {
    /// The settings without `exec`, which needs the verifier's issuer (see [`ExecSection::resolve`]).
    pub(super) fn resolve(self) -> Result<KubeconfigSettings, ConfigError> {
        Ok(KubeconfigSettings {
            cluster_name: non_empty_name(
                "clusterName",
                self.cluster_name.unwrap_or_else(|| "kubernetes".into()),
            )?,
            server: https_url("server", self.server)?.1,
            ca: ca_bundle(
                self.certificate_authority_data,
                self.certificate_authority_file,
            )?,
            user_name: non_empty_name(
                "userName",
                self.user_name.unwrap_or_else(|| "OIDCUser".into()),
            )?,
            default_namespace: optional_dns_label("defaultNamespace", self.default_namespace)?,
            exec: None,
        })
    }
}

impl ExecSection {
    pub(super) fn is_set(&self) -> bool {
        self.client_id.is_some()
    }

    /// kubelogin logs in at the verifier's issuer, trusting its CA.
    pub(super) fn resolve(self, oidc: &OidcConfig) -> Result<Option<ExecSettings>, ConfigError> {
        let Some(client_id) = self.client_id else {
            return Ok(None);
        };
        if client_id.trim().is_empty() || client_id.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "exec.clientId",
                "must be a client ID: not empty, no control characters",
            ));
        }
        let extra_scopes = self.extra_scopes.unwrap_or_else(|| {
            ["email", "groups", "offline_access"]
                .map(str::to_owned)
                .to_vec()
        });
        if let Some(bad) = extra_scopes.iter().find(|scope| {
            scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c.is_control())
        }) {
            return Err(ConfigError::new(
                "exec.extraScopes",
                format!("{bad:?} is not a scope (OAuth 2.0 scopes are non-empty, without spaces)"),
            ));
        }
        let issuer_ca_pem = match &oidc.ca_file {
            Some(path) => Some(read_pem_file("oidc.caFile", path)?),
            None => None,
        };
        Ok(Some(ExecSettings {
            issuer: oidc.issuer.clone(),
            client_id,
            extra_scopes,
            issuer_ca_pem,
            command: self.command.unwrap_or_default(),
        }))
    }
}
