//! Configuration: one YAML file (`--config`), each field overridable by a flag or an environment
//! variable. Everything is checked before start-up so that a bad value stops the process with one
//! line naming the field, instead of surfacing later as a confusing runtime failure.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use url::Url;

use crate::ca::CaBundle;

/// A day: long enough for a pipeline, short enough that a leaked kubeconfig dies on its own.
const DEFAULT_MAX_EXPIRATION_SECONDS: i64 = 86_400;
/// The TokenRequest API refuses shorter lifetimes.
const MIN_EXPIRATION_SECONDS: i64 = 600;

/// A configuration problem, naming the field so a person knows what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    /// Control characters (from paths or parser messages) become spaces, so the error stays on
    /// the one line that start-up prints.
    pub(crate) fn new(field: &str, problem: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            problem: problem
                .into()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        }
    }
}

/// The file's shape. Unknown keys are refused: a typo must not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    pub cluster_name: Option<String>,
    pub server: Option<String>,
    pub certificate_authority_data: Option<String>,
    pub certificate_authority_file: Option<PathBuf>,
    pub user_name: Option<String>,
    pub default_namespace: Option<String>,
    pub watch_namespace: Option<String>,
    pub confirm_with_api_server: Option<bool>,
    #[serde(default)]
    pub exec: FileExec,
    #[serde(default)]
    pub oidc: FileOidc,
    #[serde(default)]
    pub http: FileHttp,
    #[serde(default)]
    pub controller: FileController,
    /// Present (with `listen`) to serve the authenticating API server proxy.
    pub proxy: Option<FileProxy>,
    #[serde(default)]
    pub leader_election: FileLeaderElection,
    /// Present to serve the login and download page (see `server::console`).
    pub console: Option<crate::server::console::FileConsole>,
}

/// The `exec` kubeconfig format (kubelogin); off until `clientId` is set.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileExec {
    pub client_id: Option<String>,
    pub extra_scopes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileProxy {
    pub listen: Option<String>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub url: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub upstream_url: Option<String>,
    pub upstream_ca_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub stream_idle_timeout_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileLeaderElection {
    pub enabled: Option<bool>,
    pub lease_name: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileController {
    pub max_expiration_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileOidc {
    pub authentication_config: Option<PathBuf>,
    pub issuer_url: Option<String>,
    pub client_id: Option<String>,
    pub username_claim: Option<String>,
    pub username_prefix: Option<String>,
    pub groups_claim: Option<String>,
    pub groups_prefix: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub signing_algorithms: Option<Vec<String>>,
    pub require_authorized_party: Option<bool>,
    pub require_key_id: Option<bool>,
    pub strict_names: Option<bool>,
    /// Removed: only 0 is accepted, so that old files keep working and others learn why.
    pub leeway_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileHttp {
    pub listen: Option<String>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub requests_per_minute_per_client: Option<u32>,
    pub allowed_origins: Option<Vec<String>>,
}

/// Flags and environment variables; each one wins over the same field in the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConfigArgs {
    /// YAML configuration file (see config/operator.yaml for every field).
    #[arg(long, env = "KUBECONFIG_OPERATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Name of the cluster and context in issued kubeconfigs [file: clusterName].
    #[arg(long, env = "KUBECONFIG_OPERATOR_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// URL kubectl talks to: the API server or its proxy [file: server].
    #[arg(long, env = "KUBECONFIG_OPERATOR_SERVER")]
    pub server: Option<String>,
    /// Base64 PEM of the CA that signed the server's certificate [file: certificateAuthorityData].
    #[arg(long, env = "KUBECONFIG_OPERATOR_CA_DATA")]
    pub ca_data: Option<String>,
    /// PEM file of the CA that signed the server's certificate [file: certificateAuthorityFile].
    #[arg(long, env = "KUBECONFIG_OPERATOR_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Name of the user entry in issued kubeconfigs [file: userName; default OIDCUser].
    #[arg(long, env = "KUBECONFIG_OPERATOR_USER_NAME")]
    pub user_name: Option<String>,
    /// Public OIDC client (no secret) that kubelogin logs in with in `exec` kubeconfigs; unset: no exec format [file: exec.clientId].
    #[arg(long, env = "KUBECONFIG_OPERATOR_EXEC_CLIENT_ID")]
    pub exec_client_id: Option<String>,
    /// Comma-separated scopes kubelogin requests besides openid: the claims the API server reads, and offline_access for refresh [file: exec.extraScopes; default email,groups,offline_access].
    #[arg(
        long,
        env = "KUBECONFIG_OPERATOR_EXEC_EXTRA_SCOPES",
        value_delimiter = ','
    )]
    pub exec_extra_scopes: Option<Vec<String>>,
    /// Namespace of the context when the request names none [file: defaultNamespace].
    #[arg(long, env = "KUBECONFIG_OPERATOR_DEFAULT_NAMESPACE")]
    pub default_namespace: Option<String>,
    /// Reconcile requests in this namespace only; all namespaces when unset [file: watchNamespace].
    #[arg(long, env = "KUBECONFIG_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Before writing a kubeconfig Secret or answering GET /kube-config, ask the API server (SelfSubjectReview with the token) who the token's holder is, and refuse tokens it does not accept; turn off when issued kubeconfigs point at a proxy that authenticates tokens the API server itself does not accept [file: confirmWithApiServer; default true, false with proxy.listen].
    #[arg(long, env = "KUBECONFIG_OPERATOR_CONFIRM_WITH_API_SERVER", num_args = 0..=1, default_missing_value = "true")]
    pub confirm_with_api_server: Option<bool>,
    /// kube-apiserver's AuthenticationConfiguration file (its --authentication-config), instead of the oidc.issuerUrl/clientId/claim settings; reloaded when it changes [file: oidc.authenticationConfig].
    #[arg(long, env = "KUBECONFIG_OPERATOR_AUTHENTICATION_CONFIG")]
    pub authentication_config: Option<PathBuf>,
    /// OIDC issuer URL, exactly as in the tokens' `iss` claim [file: oidc.issuerUrl].
    #[arg(long, env = "KUBECONFIG_OPERATOR_OIDC_ISSUER_URL")]
    pub oidc_issuer_url: Option<String>,
    /// OIDC client ID that tokens must be issued for (their audience) [file: oidc.clientId].
    #[arg(long, env = "KUBECONFIG_OPERATOR_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,
    /// Claim that holds the username [file: oidc.usernameClaim; default email].
    #[arg(long, env = "KUBECONFIG_OPERATOR_OIDC_USERNAME_CLAIM")]
    pub oidc_username_claim: Option<String>,
    /// Prefix put before the username, as kube-apiserver's --oidc-username-prefix: unset or empty
    /// means `<issuer>#` for claims other than email, `-` means none [file: oidc.usernamePrefix].
    #[arg(long, env = "KUBECONFIG_OPERATOR_OIDC_USERNAME_PREFIX")]
    pub oidc_username_prefix: Option<String>,
    /// Claim that holds the groups [file: oidc.groupsClaim; default groups].
    #[arg(long, env = "KUBECONFIG_OPERATOR_OIDC_GROUPS_CLAIM")]
    pub oidc_groups_claim: Option<String>,
    /// Prefix put before each group [file: oidc.groupsPrefix].
    #[arg(long, env = "KUBECONFIG_OPERATOR_OIDC_GROUPS_PREFIX")]
    pub oidc_groups_prefix: Option<String>,
    /// PEM file of the CA that signed the issuer's certificate [file: oidc.caFile].
    #[arg(long, env = "KUBECONFIG_OPERATOR_OIDC_CA_FILE")]
    pub oidc_ca_file: Option<PathBuf>,
    /// Comma-separated signing algorithms accepted [file: oidc.signingAlgorithms; default RS256].
    #[arg(
        long,
        env = "KUBECONFIG_OPERATOR_OIDC_SIGNING_ALGORITHMS",
        value_delimiter = ','
    )]
    pub oidc_signing_algorithms: Option<Vec<String>>,
    /// Stricter than kube-apiserver: a token with several audiences needs `azp` equal to the client ID [file: oidc.requireAuthorizedParty; default false].
    #[arg(long, env = "KUBECONFIG_OPERATOR_OIDC_REQUIRE_AUTHORIZED_PARTY", num_args = 0..=1, default_missing_value = "true")]
    pub oidc_require_authorized_party: Option<bool>,
    /// Stricter than kube-apiserver: refuse tokens without a `kid` header instead of trying every key [file: oidc.requireKeyId; default false].
    #[arg(long, env = "KUBECONFIG_OPERATOR_OIDC_REQUIRE_KEY_ID", num_args = 0..=1, default_missing_value = "true")]
    pub oidc_require_key_id: Option<bool>,
    /// Stricter than kube-apiserver: refuse an empty username and control characters in the username or groups [file: oidc.strictNames; default false].
    #[arg(long, env = "KUBECONFIG_OPERATOR_OIDC_STRICT_NAMES", num_args = 0..=1, default_missing_value = "true")]
    pub oidc_strict_names: Option<bool>,
    /// Removed: kube-apiserver allows no leeway on exp, so only 0 is accepted.
    #[arg(long, env = "KUBECONFIG_OPERATOR_OIDC_LEEWAY_SECONDS", hide = true)]
    pub oidc_leeway_seconds: Option<u64>,
    /// Address the HTTP server listens on [file: http.listen; default 127.0.0.1:8000].
    #[arg(long, env = "KUBECONFIG_OPERATOR_LISTEN")]
    pub listen: Option<String>,
    /// PEM certificate chain for serving HTTPS [file: http.tlsCertFile].
    #[arg(long, env = "KUBECONFIG_OPERATOR_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for serving HTTPS [file: http.tlsKeyFile].
    #[arg(long, env = "KUBECONFIG_OPERATOR_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Connections served at once; more wait in the accept queue [file: http.maxConnections; default 1024].
    #[arg(long, env = "KUBECONFIG_OPERATOR_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Requests per minute one client address may make before getting 429 [file: http.requestsPerMinutePerClient; default 600].
    #[arg(long, env = "KUBECONFIG_OPERATOR_REQUESTS_PER_MINUTE_PER_CLIENT")]
    pub requests_per_minute_per_client: Option<u32>,
    /// Longest lifetime granted to a minted ServiceAccount token, in seconds; requests asking for more get this [file: controller.maxExpirationSeconds; default 86400, at least 600].
    #[arg(long, env = "KUBECONFIG_OPERATOR_MAX_EXPIRATION_SECONDS")]
    pub max_expiration_seconds: Option<i64>,
    /// Origin of a web page allowed to call GET /kube-config from a browser (CORS), exactly as browsers send it, e.g. https://console.example.com; repeat the flag or separate with commas [file: http.allowedOrigins; default none].
    #[arg(
        long = "allowed-origin",
        env = "KUBECONFIG_OPERATOR_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// Serve the authenticating API server proxy on this address; unset: no proxy [file: proxy.listen].
    #[arg(long, env = "KUBECONFIG_OPERATOR_PROXY_LISTEN")]
    pub proxy_listen: Option<String>,
    /// PEM certificate chain the proxy serves [file: proxy.tlsCertFile; required with the proxy].
    #[arg(long, env = "KUBECONFIG_OPERATOR_PROXY_TLS_CERT_FILE")]
    pub proxy_tls_cert_file: Option<PathBuf>,
    /// PEM private key of the proxy's certificate [file: proxy.tlsKeyFile; required with the proxy].
    #[arg(long, env = "KUBECONFIG_OPERATOR_PROXY_TLS_KEY_FILE")]
    pub proxy_tls_key_file: Option<PathBuf>,
    /// https URL clients reach the proxy at; issued kubeconfigs name it instead of `server` [file: proxy.url; required with the proxy].
    #[arg(long, env = "KUBECONFIG_OPERATOR_PROXY_URL")]
    pub proxy_url: Option<String>,
    /// PEM file of the CA that signed the proxy's certificate, put into issued kubeconfigs [file: proxy.caFile; default none: system roots].
    #[arg(long, env = "KUBECONFIG_OPERATOR_PROXY_CA_FILE")]
    pub proxy_ca_file: Option<PathBuf>,
    /// https URL of the API server the proxy forwards to [file: proxy.upstreamUrl; default server].
    #[arg(long, env = "KUBECONFIG_OPERATOR_PROXY_UPSTREAM_URL")]
    pub proxy_upstream_url: Option<String>,
    /// PEM file of the API server's CA [file: proxy.upstreamCaFile; default the certificateAuthority* setting].
    #[arg(long, env = "KUBECONFIG_OPERATOR_PROXY_UPSTREAM_CA_FILE")]
    pub proxy_upstream_ca_file: Option<PathBuf>,
    /// File holding the proxy's own bearer token, of the ServiceAccount in config/proxy, re-read every minute [file: proxy.tokenFile; required with the proxy].
    #[arg(long, env = "KUBECONFIG_OPERATOR_PROXY_TOKEN_FILE")]
    pub proxy_token_file: Option<PathBuf>,
    /// Connections the proxy serves at once, upgraded streams included [file: proxy.maxConnections; default 1024].
    #[arg(long, env = "KUBECONFIG_OPERATOR_PROXY_MAX_CONNECTIONS")]
    pub proxy_max_connections: Option<usize>,
    /// An upgraded stream (exec, attach, port-forward, WebSocket watch) with no bytes either way for this long is closed [file: proxy.streamIdleTimeoutSeconds; default 14400, kubelet's].
    #[arg(long, env = "KUBECONFIG_OPERATOR_PROXY_STREAM_IDLE_TIMEOUT_SECONDS")]
    pub proxy_stream_idle_timeout_seconds: Option<u64>,
    /// Run the controller only while holding a Lease, so that of several replicas exactly one reconciles (all serve HTTP) [file: leaderElection.enabled; default true in a pod, false elsewhere].
    #[arg(long = "leader-elect", env = "KUBECONFIG_OPERATOR_LEADER_ELECT", num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: Option<bool>,
    /// Name of the Lease the replicas compete for [file: leaderElection.leaseName; default kubeconfig-operator].
    #[arg(long, env = "KUBECONFIG_OPERATOR_LEADER_ELECTION_LEASE_NAME")]
    pub leader_election_lease_name: Option<String>,
    /// Namespace of that Lease [file: leaderElection.namespace; default the pod's namespace, else kubeconfig-operator].
    #[arg(long, env = "KUBECONFIG_OPERATOR_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
}

/// kubelet's default `--streaming-connection-idle-timeout`.
const DEFAULT_STREAM_IDLE_TIMEOUT_SECONDS: u64 = 4 * 60 * 60;

/// The validated configuration the rest of the crate runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub kubeconfig: KubeconfigSettings,
    pub oidc: OidcSettings,
    pub http: HttpConfig,
    pub controller: ControllerSettings,
    pub watch_namespace: Option<String>,
    /// Whether the API server confirms each token before a kubeconfig holding it is handed out
    /// (see `crate::confirm`).
    pub confirm_with_api_server: bool,
    /// `None` when leader election is off: the controller runs from the start.
    pub leader_election: Option<LeaderElectionSettings>,
    /// The authenticating API server proxy, when configured.
    pub proxy: Option<ProxyConfig>,
    /// The login and download page, when configured.
    pub console: Option<crate::server::console::ConsoleConfig>,
}

/// The authenticating proxy in front of the API server (see `server::proxy`).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    /// The API server, https, no path.
    pub upstream: Url,
    /// PEM bytes of the API server's CA.
    pub upstream_ca_pem: Vec<u8>,
    /// The proxy's own bearer token, re-read while running.
    pub token_file: PathBuf,
    pub max_connections: usize,
    pub stream_idle_timeout: Duration,
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
    /// The admin's cap on minted ServiceAccount token lifetimes.
    pub max_expiration_seconds: i64,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        Self {
            max_expiration_seconds: DEFAULT_MAX_EXPIRATION_SECONDS,
        }
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
}

/// Where the rules for ID tokens come from: kube-apiserver's two mutually exclusive forms.
#[derive(Debug, Clone)]
pub enum OidcSettings {
    /// The flat `oidc.*` settings, meaning what kube-apiserver's `--oidc-*` flags mean.
    Flags(Box<OidcConfig>),
    /// An `AuthenticationConfiguration` file, validated when the verifier loads it.
    AuthenticationConfig {
        path: PathBuf,
        strictness: Strictness,
    },
}

#[cfg(test)]
impl OidcSettings {
    fn flags(&self) -> &OidcConfig {
        match self {
            OidcSettings::Flags(oidc) => oidc,
            OidcSettings::AuthenticationConfig { .. } => panic!("expected the oidc.* settings"),
        }
    }
}

/// How ID tokens are verified; mirrors kube-apiserver's `--oidc-*` flags so both agree on who a
/// token's holder is. Everything stricter than kube-apiserver is in [`Strictness`], off by default.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer_url: Url,
    /// The issuer exactly as configured: `iss` must equal it byte for byte (a trailing slash matters).
    pub issuer: String,
    pub client_id: String,
    pub username_claim: String,
    /// The prefix as kube-apiserver applies it, already resolved from the flag's rules (see
    /// [`username_prefix`]).
    pub username_prefix: String,
    pub groups_claim: Option<String>,
    pub groups_prefix: String,
    pub ca_file: Option<PathBuf>,
    pub algorithms: Vec<Algorithm>,
    pub strictness: Strictness,
}

/// Checks kube-apiserver does not make. Each refuses tokens the API server would accept, so a
/// user would be refused a kubeconfig that works; they are off unless an owner opts in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Strictness {
    /// With several audiences, `azp` must equal the client ID (OIDC Core 3.1.3.7 item 4, which
    /// kube-apiserver does not implement).
    pub require_authorized_party: bool,
    /// A token without `kid` is refused; kube-apiserver (go-oidc) tries every published key.
    pub require_key_id: bool,
    /// An empty username, or control characters in the username or a group, are refused;
    /// kube-apiserver accepts both.
    pub strict_names: bool,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub max_connections: usize,
    pub requests_per_minute_per_client: u32,
    /// Origins (`scheme://host[:port]`, as a browser's `Origin` header has them) whose pages may
    /// call `GET /kube-config` cross-origin; empty allows none.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[cfg(any(test, feature = "testing"))]
impl OidcConfig {
    /// Dex-like settings for unit tests across the crate: client `kubeconfig-operator`, username
    /// from `email`, groups from `groups`, no prefixes, no stricter-than-apiserver checks.
    pub fn for_tests(issuer: &str, algorithms: &[Algorithm]) -> Self {
        Self {
            issuer_url: Url::parse(issuer).expect("test issuer is a URL"),
            issuer: issuer.to_owned(),
            client_id: "kubeconfig-operator".into(),
            username_claim: "email".into(),
            username_prefix: String::new(),
            groups_claim: Some("groups".into()),
            groups_prefix: String::new(),
            ca_file: None,
            algorithms: algorithms.to_vec(),
            strictness: Strictness::default(),
        }
    }
}

impl Config {
    /// Reads the file named by `--config` (if any), applies flags and environment, and validates.
    pub fn load(args: &ConfigArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("--config", format!("cannot read {path:?}: {e}"))
                })?;
                crate::yaml::from_str(&text)
                    .map_err(|e| ConfigError::new("--config", format!("{path:?}: {e}")))?
            }
            None => FileConfig::default(),
        };
        Self::resolve_in(file, args, &PodEnvironment::detect())
    }

    /// Combines file and overrides; separate from `load` so it can be tested without files.
    /// Defaults are those of a process outside any pod.
    pub fn resolve(file: FileConfig, args: &ConfigArgs) -> Result<Self, ConfigError> {
        Self::resolve_in(file, args, &PodEnvironment::default())
    }

    /// As [`Config::resolve`], with the defaults that depend on the pod the process runs in.
    pub fn resolve_in(
        file: FileConfig,
        args: &ConfigArgs,
        pod: &PodEnvironment,
    ) -> Result<Self, ConfigError> {
        let leader_election = leader_election(file.leader_election, args, pod)?;
        let pick = |flag: &Option<String>, from_file: Option<String>| flag.clone().or(from_file);
        let pick_path =
            |flag: &Option<PathBuf>, from_file: Option<PathBuf>| flag.clone().or(from_file);

        let mut kubeconfig = KubeconfigSettings {
            cluster_name: non_empty_name(
                "clusterName",
                pick(&args.cluster_name, file.cluster_name).unwrap_or_else(|| "kubernetes".into()),
            )?,
            server: https_url("server", pick(&args.server, file.server))?.1,
            ca: ca_bundle(
                pick(&args.ca_data, file.certificate_authority_data),
                pick_path(&args.ca_file, file.certificate_authority_file),
            )?,
            user_name: non_empty_name(
                "userName",
                pick(&args.user_name, file.user_name).unwrap_or_else(|| "OIDCUser".into()),
            )?,
            default_namespace: optional_dns_label(
                "defaultNamespace",
                pick(&args.default_namespace, file.default_namespace),
            )?,
            exec: None,
        };

        let strictness = Strictness {
            require_authorized_party: args
                .oidc_require_authorized_party
                .or(file.oidc.require_authorized_party)
                .unwrap_or(false),
            require_key_id: args
                .oidc_require_key_id
                .or(file.oidc.require_key_id)
                .unwrap_or(false),
            strict_names: args
                .oidc_strict_names
                .or(file.oidc.strict_names)
                .unwrap_or(false),
        };
        let authentication_config = readable_file(
            "oidc.authenticationConfig",
            pick_path(
                &args.authentication_config,
                file.oidc.authentication_config.clone(),
            ),
        )?;
        let issuer = pick(&args.oidc_issuer_url, file.oidc.issuer_url.clone());
        let oidc = match (authentication_config, issuer) {
            (Some(_), Some(_)) => {
                // kube-apiserver: "authentication-config file and oidc-* flags are mutually exclusive".
                return Err(ConfigError::new(
                    "oidc.authenticationConfig",
                    "and oidc.issuerUrl are mutually exclusive, as kube-apiserver's --authentication-config and --oidc-* flags are",
                ));
            }
            (Some(path), None) => OidcSettings::AuthenticationConfig { path, strictness },
            (None, issuer) => {
                OidcSettings::Flags(Box::new(legacy_oidc(args, file.oidc, issuer, strictness)?))
            }
        };

        // The exec kubeconfig and the page log in at one issuer; an authentication configuration
        // may name several, and choosing one for the user is not done yet.
        let single_issuer = |field: &str| {
            ConfigError::new(
                field,
                "needs oidc.issuerUrl; it is not available with oidc.authenticationConfig",
            )
        };
        kubeconfig.exec = match &oidc {
            OidcSettings::Flags(flags) => exec_settings(file.exec, args, flags)?,
            OidcSettings::AuthenticationConfig { .. } => {
                if args.exec_client_id.is_some() || file.exec.client_id.is_some() {
                    return Err(single_issuer("exec.clientId"));
                }
                None
            }
        };
        if file.console.is_some() && matches!(oidc, OidcSettings::AuthenticationConfig { .. }) {
            return Err(single_issuer("console"));
        }

        let listen =
            pick(&args.listen, file.http.listen).unwrap_or_else(|| "127.0.0.1:8000".into());
        let http = HttpConfig {
            listen: listen.parse().map_err(|_| {
                ConfigError::new("http.listen", format!("{listen:?} is not an address:port"))
            })?,
            tls: tls_files(
                "http",
                readable_file(
                    "http.tlsCertFile",
                    pick_path(&args.tls_cert_file, file.http.tls_cert_file),
                )?,
                readable_file(
                    "http.tlsKeyFile",
                    pick_path(&args.tls_key_file, file.http.tls_key_file),
                )?,
            )?,
            max_connections: positive(
                "http.maxConnections",
                args.max_connections
                    .or(file.http.max_connections)
                    .unwrap_or(1024),
            )?,
            requests_per_minute_per_client: positive(
                "http.requestsPerMinutePerClient",
                args.requests_per_minute_per_client
                    .or(file.http.requests_per_minute_per_client)
                    .unwrap_or(600),
            )?,
            allowed_origins: origins(
                args.allowed_origins
                    .clone()
                    .or(file.http.allowed_origins)
                    .unwrap_or_default(),
            )?,
        };

        let max_expiration_seconds = args
            .max_expiration_seconds
            .or(file.controller.max_expiration_seconds)
            .unwrap_or(DEFAULT_MAX_EXPIRATION_SECONDS);
        if max_expiration_seconds < MIN_EXPIRATION_SECONDS {
            return Err(ConfigError::new(
                "controller.maxExpirationSeconds",
                format!(
                    "{max_expiration_seconds} is less than {MIN_EXPIRATION_SECONDS}, the shortest lifetime the TokenRequest API grants"
                ),
            ));
        }

        let (kubeconfig, proxy) = proxy(file.proxy.unwrap_or_default(), args, kubeconfig)?;

        Ok(Config {
            // Kubeconfigs that name the operator's own proxy are for an API server that need not
            // accept the token: asking it would refuse every one.
            confirm_with_api_server: args
                .confirm_with_api_server
                .or(file.confirm_with_api_server)
                .unwrap_or(proxy.is_none()),
            kubeconfig,
            oidc,
            http,
            proxy,
            controller: ControllerSettings {
                max_expiration_seconds,
            },
            watch_namespace: optional_dns_label(
                "watchNamespace",
                pick(&args.watch_namespace, file.watch_namespace),
            )?,
            leader_election,
            console: file
                .console
                .map(crate::server::console::ConsoleConfig::resolve)
                .transpose()?,
        })
    }
}

/// The `exec` section: kubelogin logs in at the verifier's issuer, trusting its CA.
fn exec_settings(
    file: FileExec,
    args: &ConfigArgs,
    oidc: &OidcConfig,
) -> Result<Option<ExecSettings>, ConfigError> {
    let Some(client_id) = args.exec_client_id.clone().or(file.client_id) else {
        return Ok(None);
    };
    if client_id.trim().is_empty() || client_id.chars().any(char::is_control) {
        return Err(ConfigError::new(
            "exec.clientId",
            "must be a client ID: not empty, no control characters",
        ));
    }
    let extra_scopes = args
        .exec_extra_scopes
        .clone()
        .or(file.extra_scopes)
        .unwrap_or_else(|| {
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
    }))
}

/// The `proxy` section. Without `proxy.listen` there is no proxy and the kubeconfig settings stay
/// as they are; with it, kubeconfigs name the proxy (`proxy.url`, `proxy.caFile`) and `server`
/// with its CA become the proxy's upstream unless `proxy.upstream*` say otherwise.
fn proxy(
    file: FileProxy,
    args: &ConfigArgs,
    kubeconfig: KubeconfigSettings,
) -> Result<(KubeconfigSettings, Option<ProxyConfig>), ConfigError> {
    let pick = |flag: &Option<String>, from_file: Option<String>| flag.clone().or(from_file);
    let pick_path = |flag: &Option<PathBuf>, from_file: Option<PathBuf>| flag.clone().or(from_file);
    let Some(listen) = pick(&args.proxy_listen, file.listen) else {
        return Ok((kubeconfig, None));
    };
    let listen = listen.parse().map_err(|_| {
        ConfigError::new("proxy.listen", format!("{listen:?} is not an address:port"))
    })?;
    let tls = tls_files(
        "proxy",
        readable_file(
            "proxy.tlsCertFile",
            pick_path(&args.proxy_tls_cert_file, file.tls_cert_file),
        )?,
        readable_file(
            "proxy.tlsKeyFile",
            pick_path(&args.proxy_tls_key_file, file.tls_key_file),
        )?,
    )?
    .ok_or_else(|| {
        ConfigError::new(
            "proxy.tlsCertFile",
            "is required with proxy.listen: the proxy serves HTTPS only",
        )
    })?;
    let url = https_url("proxy.url", pick(&args.proxy_url, file.url))?.1;
    let ca_file = readable_file("proxy.caFile", pick_path(&args.proxy_ca_file, file.ca_file))?;
    let upstream_text = pick(&args.proxy_upstream_url, file.upstream_url)
        .unwrap_or_else(|| kubeconfig.server.clone());
    let upstream = https_url("proxy.upstreamUrl", Some(upstream_text.clone()))?.0;
    if !matches!(upstream.path(), "" | "/") {
        return Err(ConfigError::new(
            "proxy.upstreamUrl",
            format!("{upstream_text:?} must not have a path"),
        ));
    }
    let upstream_ca_pem = match pick_path(&args.proxy_upstream_ca_file, file.upstream_ca_file) {
        Some(path) => read_pem_file("proxy.upstreamCaFile", &path)?,
        None => kubeconfig.ca.current().map(|pem| pem.to_vec()).ok_or_else(|| {
            ConfigError::new(
                "proxy.upstreamCaFile",
                "is required when certificateAuthority* is not set (in a pod: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)",
            )
        })?,
    };
    // Followed like certificateAuthorityFile: a rotated proxy CA reaches issued kubeconfigs.
    let ca = match ca_file {
        Some(path) => {
            let pem = read_pem_file("proxy.caFile", &path)?;
            CaBundle::from_file(path, pem)
        }
        None => CaBundle::default(),
    };
    // Required rather than defaulting to the pod's own token: the operator's ServiceAccount may
    // read Secrets, and the proxy must act with nothing but the right to impersonate.
    let token_file = readable_file(
        "proxy.tokenFile",
        pick_path(&args.proxy_token_file, file.token_file),
    )?
    .ok_or_else(|| {
        ConfigError::new(
            "proxy.tokenFile",
            "is required with proxy.listen: a token of the proxy's own ServiceAccount (config/proxy), not the operator's",
        )
    })?;
    let max_connections = positive(
        "proxy.maxConnections",
        args.proxy_max_connections
            .or(file.max_connections)
            .unwrap_or(1024),
    )?;
    let idle = positive(
        "proxy.streamIdleTimeoutSeconds",
        args.proxy_stream_idle_timeout_seconds
            .or(file.stream_idle_timeout_seconds)
            .unwrap_or(DEFAULT_STREAM_IDLE_TIMEOUT_SECONDS),
    )?;
    let kubeconfig = KubeconfigSettings {
        server: url,
        ca,
        ..kubeconfig
    };
    Ok((
        kubeconfig,
        Some(ProxyConfig {
            listen,
            tls,
            upstream,
            upstream_ca_pem,
            token_file,
            max_connections,
            stream_idle_timeout: Duration::from_secs(idle),
        }),
    ))
}

/// On by default in a pod, where a Deployment may run several replicas; off elsewhere (a
/// developer's `make run`), where there is nobody to compete with.
fn leader_election(
    file: FileLeaderElection,
    args: &ConfigArgs,
    pod: &PodEnvironment,
) -> Result<Option<LeaderElectionSettings>, ConfigError> {
    if !args.leader_elect.or(file.enabled).unwrap_or(pod.in_pod) {
        return Ok(None);
    }
    let lease_name = args
        .leader_election_lease_name
        .clone()
        .or(file.lease_name)
        .unwrap_or_else(|| DEFAULT_LEASE_NAME.into());
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
        args.leader_election_namespace
            .clone()
            .or(file.namespace)
            .or_else(|| pod.namespace.clone()),
    )?
    .unwrap_or_else(|| DEFAULT_LEASE_NAMESPACE.into());
    Ok(Some(LeaderElectionSettings {
        lease_name,
        namespace,
    }))
}

/// RFC 1123 subdomain, the rule Kubernetes applies to most object names.
fn is_dns_subdomain(value: &str) -> bool {
    value.len() <= 253 && value.split('.').all(is_dns_label)
}

/// The flat `oidc.*` settings, with kube-apiserver's `--oidc-*` defaults and rules.
fn legacy_oidc(
    args: &ConfigArgs,
    file: FileOidc,
    issuer: Option<String>,
    strictness: Strictness,
) -> Result<OidcConfig, ConfigError> {
    let pick = |flag: &Option<String>, from_file: Option<String>| flag.clone().or(from_file);
    let pick_path = |flag: &Option<PathBuf>, from_file: Option<PathBuf>| flag.clone().or(from_file);
    let issuer = issuer.ok_or_else(|| {
        ConfigError::new(
            "oidc.issuerUrl",
            "is required (or oidc.authenticationConfig)",
        )
    })?;

    let (issuer_url, issuer) = https_url("oidc.issuerUrl", Some(issuer))?;
    let client_id = pick(&args.oidc_client_id, file.client_id)
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| ConfigError::new("oidc.clientId", "is required"))?;
    let username_claim =
        pick(&args.oidc_username_claim, file.username_claim).unwrap_or_else(|| "email".into());
    if username_claim.is_empty() {
        return Err(ConfigError::new("oidc.usernameClaim", "must not be empty"));
    }
    let groups_claim =
        pick(&args.oidc_groups_claim, file.groups_claim).unwrap_or_else(|| "groups".into());
    if let Some(seconds) = args
        .oidc_leeway_seconds
        .or(file.leeway_seconds)
        .filter(|seconds| *seconds != 0)
    {
        return Err(ConfigError::new(
            "oidc.leewaySeconds",
            format!(
                "{seconds} is no longer accepted: kube-apiserver allows no leeway on exp, so a leeway would issue kubeconfigs it refuses; remove the setting"
            ),
        ));
    }
    let username_prefix = username_prefix(
        pick(&args.oidc_username_prefix, file.username_prefix),
        &username_claim,
        &issuer,
    );
    Ok(OidcConfig {
        issuer_url,
        issuer,
        client_id,
        username_claim,
        username_prefix,
        groups_claim: Some(groups_claim).filter(|claim| !claim.is_empty()),
        groups_prefix: pick(&args.oidc_groups_prefix, file.groups_prefix).unwrap_or_default(),
        ca_file: readable_file("oidc.caFile", pick_path(&args.oidc_ca_file, file.ca_file))?,
        algorithms: signing_algorithms(
            args.oidc_signing_algorithms
                .clone()
                .or(file.signing_algorithms)
                .unwrap_or_else(|| vec!["RS256".into()]),
        )?,
        strictness,
    })
}

/// kube-apiserver's `--oidc-username-prefix` rules: unset (or empty, which a flag cannot tell
/// apart) prefixes every claim but `email` with `<issuer>#` so that, say, `sub` values of two
/// issuers cannot collide; `-` means no prefix at all.
fn username_prefix(configured: Option<String>, claim: &str, issuer: &str) -> String {
    match configured.as_deref() {
        Some("-") => String::new(),
        None | Some("") if claim != "email" => format!("{issuer}#"),
        _ => configured.unwrap_or_default(),
    }
}

fn non_empty_name(field: &str, value: String) -> Result<String, ConfigError> {
    if value.trim().is_empty() || value.chars().any(char::is_control) {
        return Err(ConfigError::new(
            field,
            "must be a non-empty name without control characters",
        ));
    }
    Ok(value)
}

/// Returns the parsed URL and the string as written.
fn https_url(field: &str, value: Option<String>) -> Result<(Url, String), ConfigError> {
    let value = value.ok_or_else(|| ConfigError::new(field, "is required"))?;
    let url = Url::parse(&value)
        .map_err(|e| ConfigError::new(field, format!("{value:?} is not a URL: {e}")))?;
    if url.scheme() != "https" {
        return Err(ConfigError::new(field, format!("{value:?} must use https")));
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            field,
            format!("{value:?} must have a host and no query or fragment"),
        ));
    }
    Ok((url, value))
}

fn ca_bundle(data: Option<String>, file: Option<PathBuf>) -> Result<CaBundle, ConfigError> {
    let (field, pem, file) = match (data, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "certificateAuthorityData",
                "set either certificateAuthorityData or certificateAuthorityFile, not both",
            ));
        }
        (Some(data), None) => (
            "certificateAuthorityData",
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| {
                    ConfigError::new("certificateAuthorityData", format!("is not base64: {e}"))
                })?,
            None,
        ),
        (None, Some(path)) => (
            "certificateAuthorityFile",
            std::fs::read(&path).map_err(|e| {
                ConfigError::new(
                    "certificateAuthorityFile",
                    format!("cannot read {path:?}: {e}"),
                )
            })?,
            Some(path),
        ),
        (None, None) => return Ok(CaBundle::default()),
    };
    crate::ca::parse_pem(&pem).map_err(|problem| ConfigError::new(field, problem))?;
    Ok(match file {
        Some(path) => CaBundle::from_file(path, pem),
        None => CaBundle::fixed(Some(pem)),
    })
}

/// The PEM certificates in `path`, checked as certificateAuthorityFile is.
fn read_pem_file(field: &str, path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::new(field, format!("cannot read {path:?}: {e}")))?;
    crate::ca::parse_pem(&pem).map_err(|problem| ConfigError::new(field, problem))?;
    Ok(pem)
}

fn readable_file(field: &str, path: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
    match path {
        Some(path) if !path.is_file() => Err(ConfigError::new(
            field,
            format!("{path:?} is not a readable file"),
        )),
        other => Ok(other),
    }
}

/// Both files of a section's certificate (`http` or `proxy`), or neither.
fn tls_files(
    section: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert_file), Some(key_file)) => Ok(Some(TlsFiles {
            cert_file,
            key_file,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::new(
            &format!("{section}.tlsKeyFile"),
            format!("is required with {section}.tlsCertFile"),
        )),
        (None, Some(_)) => Err(ConfigError::new(
            &format!("{section}.tlsCertFile"),
            format!("is required with {section}.tlsKeyFile"),
        )),
    }
}

/// Browsers compare the `Origin` header byte for byte, and it is always the serialised form
/// (lowercase host, no default port, no path), so anything else would silently never match: it
/// is refused with the form to write instead. `*` and `null` are refused too: a credential
/// download must name the pages it trusts.
fn origins(values: Vec<String>) -> Result<Vec<String>, ConfigError> {
    const FIELD: &str = "http.allowedOrigins";
    let mut origins: Vec<String> = Vec::with_capacity(values.len());
    for value in values {
        let serialised = Url::parse(&value)
            .ok()
            .filter(|url| matches!(url.scheme(), "https" | "http"))
            .map(|url| url.origin().ascii_serialization())
            .filter(|origin| origin != "null");
        match serialised {
            Some(origin) if origin == value => {
                if !origins.contains(&origin) {
                    origins.push(origin);
                }
            }
            Some(origin) => {
                return Err(ConfigError::new(
                    FIELD,
                    format!("{value:?} is not an origin as browsers send it; write {origin:?}"),
                ));
            }
            None => {
                return Err(ConfigError::new(
                    FIELD,
                    format!(
                        "{value:?} is not an origin; write scheme://host[:port], e.g. https://console.example.com"
                    ),
                ));
            }
        }
    }
    Ok(origins)
}

fn positive<T: PartialOrd + Default + std::fmt::Display>(
    field: &str,
    value: T,
) -> Result<T, ConfigError> {
    if value > T::default() {
        Ok(value)
    } else {
        Err(ConfigError::new(
            field,
            format!("must be greater than zero, got {value}"),
        ))
    }
}

/// The algorithms kube-apiserver accepts for `--oidc-signing-algs` (RS, ES and PS), minus ES512,
/// which jsonwebtoken cannot verify. Anything else would let the operator issue kubeconfigs the
/// API server refuses (EdDSA) or accept forgeries (HMAC with the public key, `none`).
fn signing_algorithms(names: Vec<String>) -> Result<Vec<Algorithm>, ConfigError> {
    const FIELD: &str = "oidc.signingAlgorithms";
    if names.is_empty() {
        return Err(ConfigError::new(FIELD, "must name at least one algorithm"));
    }
    names
        .iter()
        .map(|name| match name.trim() {
            "RS256" => Ok(Algorithm::RS256),
            "RS384" => Ok(Algorithm::RS384),
            "RS512" => Ok(Algorithm::RS512),
            "PS256" => Ok(Algorithm::PS256),
            "PS384" => Ok(Algorithm::PS384),
            "PS512" => Ok(Algorithm::PS512),
            "ES256" => Ok(Algorithm::ES256),
            "ES384" => Ok(Algorithm::ES384),
            "ES512" => Err(ConfigError::new(
                FIELD,
                "\"ES512\" is accepted by kube-apiserver but not supported by this operator",
            )),
            other => Err(ConfigError::new(
                FIELD,
                format!(
                    "{other:?} is not allowed; use RS256, RS384, RS512, PS256, PS384, PS512, ES256 or ES384 (as kube-apiserver's --oidc-signing-algs)"
                ),
            )),
        })
        .collect()
}

fn optional_dns_label(field: &str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    match value {
        Some(value) if value.is_empty() => Ok(None),
        Some(value) if is_dns_label(&value) => Ok(Some(value)),
        Some(value) => Err(ConfigError::new(
            field,
            format!(
                "{value:?} is not a namespace name (a DNS label: lowercase letters, digits and '-', at most 63)"
            ),
        )),
        None => Ok(None),
    }
}

/// RFC 1123 label, the rule Kubernetes applies to namespace names.
pub fn is_dns_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> ConfigArgs {
        ConfigArgs {
            server: Some("https://127.0.0.1:6443".into()),
            oidc_issuer_url: Some("https://dex.example/dex".into()),
            oidc_client_id: Some("kubeconfig-operator".into()),
            ..ConfigArgs::default()
        }
    }

    fn error_field(file: FileConfig, args: &ConfigArgs) -> String {
        Config::resolve(file, args)
            .expect_err("configuration must be refused")
            .field
    }

    /// A proxy section with readable files: (directory, CA file, token file).
    fn proxy_files() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap();
        (dir, ca, token)
    }

    fn with_proxy(ca: &std::path::Path, token: &std::path::Path) -> ConfigArgs {
        ConfigArgs {
            ca_file: Some(ca.to_owned()),
            proxy_listen: Some("127.0.0.1:8443".into()),
            proxy_tls_cert_file: Some(ca.to_owned()),
            proxy_tls_key_file: Some(ca.to_owned()),
            proxy_url: Some("https://proxy.example:8443".into()),
            proxy_token_file: Some(token.to_owned()),
            ..minimal()
        }
    }

    #[test]
    fn without_proxy_listen_there_is_no_proxy() {
        let config = Config::resolve(FileConfig::default(), &minimal()).unwrap();
        assert!(config.proxy.is_none());
        assert_eq!(config.kubeconfig.server, "https://127.0.0.1:6443");
    }

    #[test]
    fn with_the_proxy_kubeconfigs_name_it_and_server_becomes_the_upstream() {
        let (_dir, ca, token) = proxy_files();
        let config = Config::resolve(FileConfig::default(), &with_proxy(&ca, &token)).unwrap();
        let proxy = config.proxy.expect("a proxy");
        assert_eq!(proxy.upstream.as_str(), "https://127.0.0.1:6443/");
        assert_eq!(proxy.upstream_ca_pem, std::fs::read(&ca).unwrap());
        assert_eq!(proxy.token_file, token);
        assert_eq!(proxy.stream_idle_timeout, Duration::from_secs(14_400));
        assert_eq!(config.kubeconfig.server, "https://proxy.example:8443");
        assert_eq!(config.kubeconfig.ca.current(), None);

        let args = ConfigArgs {
            proxy_ca_file: Some(ca.clone()),
            proxy_upstream_url: Some("https://10.0.0.1".into()),
            ..with_proxy(&ca, &token)
        };
        let config = Config::resolve(FileConfig::default(), &args).unwrap();
        assert_eq!(
            config.kubeconfig.ca.current().as_deref(),
            Some(std::fs::read(&ca).unwrap().as_slice())
        );
        assert_eq!(config.proxy.unwrap().upstream.as_str(), "https://10.0.0.1/");
    }

    #[test]
    fn an_incomplete_proxy_section_names_the_missing_field() {
        let (_dir, ca, token) = proxy_files();
        for (args, field) in [
            (
                ConfigArgs {
                    proxy_tls_cert_file: None,
                    proxy_tls_key_file: None,
                    ..with_proxy(&ca, &token)
                },
                "proxy.tlsCertFile",
            ),
            (
                ConfigArgs {
                    proxy_tls_key_file: None,
                    ..with_proxy(&ca, &token)
                },
                "proxy.tlsKeyFile",
            ),
            (
                ConfigArgs {
                    proxy_url: None,
                    ..with_proxy(&ca, &token)
                },
                "proxy.url",
            ),
            (
                ConfigArgs {
                    proxy_url: Some("http://proxy.example".into()),
                    ..with_proxy(&ca, &token)
                },
                "proxy.url",
            ),
            (
                ConfigArgs {
                    ca_file: None,
                    ..with_proxy(&ca, &token)
                },
                "proxy.upstreamCaFile",
            ),
            (
                ConfigArgs {
                    proxy_upstream_url: Some("https://api.example/prefix".into()),
                    ..with_proxy(&ca, &token)
                },
                "proxy.upstreamUrl",
            ),
            (
                ConfigArgs {
                    proxy_token_file: Some("/nonexistent/token".into()),
                    ..with_proxy(&ca, &token)
                },
                "proxy.tokenFile",
            ),
            (
                ConfigArgs {
                    proxy_token_file: None,
                    ..with_proxy(&ca, &token)
                },
                "proxy.tokenFile",
            ),
            (
                ConfigArgs {
                    proxy_listen: Some("8443".into()),
                    ..with_proxy(&ca, &token)
                },
                "proxy.listen",
            ),
        ] {
            assert_eq!(error_field(FileConfig::default(), &args), field);
        }
    }

    #[test]
    fn the_proxy_section_reads_from_the_file() {
        let (_dir, ca, token) = proxy_files();
        let yaml = format!(
            "server: https://127.0.0.1:6443\ncertificateAuthorityFile: {ca}\noidc: {{issuerUrl: https://dex.example/dex, clientId: c}}\nproxy:\n  listen: 0.0.0.0:8443\n  tlsCertFile: {ca}\n  tlsKeyFile: {ca}\n  url: https://proxy.example\n  tokenFile: {token}\n  maxConnections: 7\n  streamIdleTimeoutSeconds: 60\n",
            ca = ca.display(),
            token = token.display()
        );
        let file: FileConfig = crate::yaml::from_str(&yaml).unwrap();
        let config = Config::resolve(file, &ConfigArgs::default()).unwrap();
        let proxy = config.proxy.unwrap();
        assert_eq!(proxy.max_connections, 7);
        assert_eq!(proxy.stream_idle_timeout, Duration::from_secs(60));
        assert_eq!(config.kubeconfig.server, "https://proxy.example");
    }

    #[test]
    fn exec_format_is_off_until_a_public_client_is_named() {
        let config = Config::resolve(FileConfig::default(), &minimal()).unwrap();
        assert_eq!(config.kubeconfig.exec, None);

        let (_dir, ca, _token) = proxy_files();
        let file: FileConfig = crate::yaml::from_str("exec:\n  clientId: kubelogin\n").unwrap();
        let args = ConfigArgs {
            oidc_ca_file: Some(ca.clone()),
            ..minimal()
        };
        let exec = Config::resolve(file, &args)
            .unwrap()
            .kubeconfig
            .exec
            .unwrap();
        assert_eq!(
            exec,
            ExecSettings {
                issuer: "https://dex.example/dex".into(),
                client_id: "kubelogin".into(),
                extra_scopes: vec!["email".into(), "groups".into(), "offline_access".into()],
                issuer_ca_pem: Some(std::fs::read(&ca).unwrap()),
            }
        );

        let args = ConfigArgs {
            exec_client_id: Some("from-flag".into()),
            exec_extra_scopes: Some(vec!["groups".into(), "audience:server:client_id:x".into()]),
            ..minimal()
        };
        let exec = Config::resolve(FileConfig::default(), &args)
            .unwrap()
            .kubeconfig
            .exec
            .unwrap();
        assert_eq!(exec.client_id, "from-flag");
        assert_eq!(exec.extra_scopes, ["groups", "audience:server:client_id:x"]);
        assert_eq!(exec.issuer_ca_pem, None);
    }

    #[test]
    fn exec_client_and_scopes_must_be_well_formed() {
        for (client, scopes) in [
            (" ", None),
            ("kube\nlogin", None),
            ("kubelogin", Some(vec!["groups offline_access".to_owned()])),
            ("kubelogin", Some(vec![String::new()])),
        ] {
            let args = ConfigArgs {
                exec_client_id: Some(client.into()),
                exec_extra_scopes: scopes.clone(),
                ..minimal()
            };
            let field = error_field(FileConfig::default(), &args);
            assert!(field.starts_with("exec."), "{client:?} {scopes:?}: {field}");
        }
    }

    #[test]
    fn an_authentication_configuration_replaces_the_flat_oidc_settings() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_owned();
        let args = ConfigArgs {
            oidc_issuer_url: None,
            oidc_client_id: None,
            authentication_config: Some(path.clone()),
            oidc_strict_names: Some(true),
            ..minimal()
        };
        match Config::resolve(FileConfig::default(), &args).unwrap().oidc {
            OidcSettings::AuthenticationConfig {
                path: read,
                strictness,
            } => {
                assert_eq!(read, path);
                assert!(strictness.strict_names, "the stricter options still apply");
            }
            other => panic!("{other:?}"),
        }
        // As kube-apiserver: the file and the --oidc-* flags are mutually exclusive.
        let both = ConfigArgs {
            authentication_config: Some(path),
            ..minimal()
        };
        let error = Config::resolve(FileConfig::default(), &both).unwrap_err();
        assert_eq!(error.field, "oidc.authenticationConfig");
        assert!(
            error.problem.contains("mutually exclusive"),
            "{}",
            error.problem
        );
        let missing = ConfigArgs {
            oidc_issuer_url: None,
            authentication_config: Some("/nonexistent/authn.yaml".into()),
            ..minimal()
        };
        assert_eq!(
            error_field(FileConfig::default(), &missing),
            "oidc.authenticationConfig"
        );
    }

    #[test]
    fn minimal_configuration_gets_documented_defaults() {
        let config = Config::resolve(FileConfig::default(), &minimal()).unwrap();
        assert_eq!(config.kubeconfig.user_name, "OIDCUser");
        assert_eq!(config.kubeconfig.cluster_name, "kubernetes");
        assert_eq!(config.oidc.flags().username_claim, "email");
        assert_eq!(config.oidc.flags().groups_claim.as_deref(), Some("groups"));
        assert_eq!(config.oidc.flags().algorithms, vec![Algorithm::RS256]);
        assert_eq!(config.oidc.flags().issuer, "https://dex.example/dex");
        assert_eq!(config.http.listen, "127.0.0.1:8000".parse().unwrap());
        assert!(config.http.tls.is_none());
        assert!(config.kubeconfig.ca.current().is_none());
    }

    #[test]
    fn confirmation_is_on_unless_the_file_or_a_flag_turns_it_off() {
        let resolve = |yaml: &str, flag: Option<bool>| {
            let file: FileConfig = crate::yaml::from_str(yaml).unwrap();
            let args = ConfigArgs {
                confirm_with_api_server: flag,
                ..minimal()
            };
            Config::resolve(file, &args)
                .unwrap()
                .confirm_with_api_server
        };
        assert!(resolve("{}", None));
        assert!(!resolve("confirmWithApiServer: false", None));
        assert!(resolve("confirmWithApiServer: false", Some(true)));
        assert!(!resolve("{}", Some(false)));
        // Kubeconfigs that name the operator's own proxy: off unless asked for.
        let (_dir, ca, token) = proxy_files();
        let with_proxy = format!(
            "certificateAuthorityFile: {ca}\nproxy: {{listen: 0.0.0.0:8443, tlsCertFile: {ca}, tlsKeyFile: {ca}, url: https://proxy.example, tokenFile: {token}}}",
            ca = ca.display(),
            token = token.display()
        );
        assert!(!resolve(&with_proxy, None));
        assert!(resolve(
            &format!("{with_proxy}\nconfirmWithApiServer: true"),
            None
        ));
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: FileConfig = crate::yaml::from_str(
            "clusterName: from-file\nuserName: file-user\noidc:\n  usernameClaim: sub\n",
        )
        .unwrap();
        let args = ConfigArgs {
            cluster_name: Some("from-flag".into()),
            ..minimal()
        };
        let config = Config::resolve(file, &args).unwrap();
        assert_eq!(config.kubeconfig.cluster_name, "from-flag");
        assert_eq!(config.kubeconfig.user_name, "file-user");
        assert_eq!(config.oidc.flags().username_claim, "sub");
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let result: Result<FileConfig, _> = crate::yaml::from_str("servr: https://x\n");
        assert!(result.unwrap_err().to_string().contains("servr"));
    }

    #[test]
    fn missing_required_fields_are_named() {
        let no_server = ConfigArgs {
            server: None,
            ..minimal()
        };
        assert_eq!(error_field(FileConfig::default(), &no_server), "server");
        let no_issuer = ConfigArgs {
            oidc_issuer_url: None,
            ..minimal()
        };
        assert_eq!(
            error_field(FileConfig::default(), &no_issuer),
            "oidc.issuerUrl"
        );
        let blank_client = ConfigArgs {
            oidc_client_id: Some(" ".into()),
            ..minimal()
        };
        assert_eq!(
            error_field(FileConfig::default(), &blank_client),
            "oidc.clientId"
        );
    }

    #[test]
    fn plain_http_and_garbage_urls_are_refused() {
        for bad in [
            "http://127.0.0.1:6443",
            "not a url",
            "https://",
            "https://h/?q=1",
        ] {
            let args = ConfigArgs {
                server: Some(bad.into()),
                ..minimal()
            };
            assert_eq!(error_field(FileConfig::default(), &args), "server", "{bad}");
            let args = ConfigArgs {
                oidc_issuer_url: Some(bad.into()),
                ..minimal()
            };
            assert_eq!(
                error_field(FileConfig::default(), &args),
                "oidc.issuerUrl",
                "{bad}"
            );
        }
    }

    #[test]
    fn symmetric_and_unknown_algorithms_are_refused() {
        for bad in ["HS256", "none", "rs256", "XYZ", "EdDSA", "ES512"] {
            let args = ConfigArgs {
                oidc_signing_algorithms: Some(vec!["RS256".into(), bad.into()]),
                ..minimal()
            };
            let error = Config::resolve(FileConfig::default(), &args).unwrap_err();
            assert_eq!(error.field, "oidc.signingAlgorithms");
            assert!(error.problem.contains(bad));
        }
        let empty = ConfigArgs {
            oidc_signing_algorithms: Some(vec![]),
            ..minimal()
        };
        assert_eq!(
            error_field(FileConfig::default(), &empty),
            "oidc.signingAlgorithms"
        );
    }

    #[test]
    fn certificate_authority_must_be_one_pem_source() {
        let both = ConfigArgs {
            ca_data: Some("AAAA".into()),
            ca_file: Some("/etc/hostname".into()),
            ..minimal()
        };
        assert_eq!(
            error_field(FileConfig::default(), &both),
            "certificateAuthorityData"
        );
        let not_base64 = ConfigArgs {
            ca_data: Some("***".into()),
            ..minimal()
        };
        assert_eq!(
            error_field(FileConfig::default(), &not_base64),
            "certificateAuthorityData"
        );
        let not_pem = ConfigArgs {
            ca_data: Some("aGVsbG8=".into()),
            ..minimal()
        };
        let error = Config::resolve(FileConfig::default(), &not_pem).unwrap_err();
        assert_eq!(error.problem, "holds no PEM certificate");
        let missing = ConfigArgs {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..minimal()
        };
        assert_eq!(
            error_field(FileConfig::default(), &missing),
            "certificateAuthorityFile"
        );
    }

    #[test]
    fn namespaces_must_be_dns_labels() {
        for bad in ["Team", "-a", "a-", "a_b", &"a".repeat(64)] {
            let args = ConfigArgs {
                default_namespace: Some(bad.into()),
                ..minimal()
            };
            assert_eq!(
                error_field(FileConfig::default(), &args),
                "defaultNamespace",
                "{bad}"
            );
        }
        let args = ConfigArgs {
            watch_namespace: Some("UPPER".into()),
            ..minimal()
        };
        assert_eq!(error_field(FileConfig::default(), &args), "watchNamespace");
        assert!(is_dns_label("team-a1"));
    }

    #[test]
    fn http_settings_are_checked() {
        let bad_listen = ConfigArgs {
            listen: Some("localhost".into()),
            ..minimal()
        };
        assert_eq!(
            error_field(FileConfig::default(), &bad_listen),
            "http.listen"
        );
        let half_tls = ConfigArgs {
            tls_cert_file: Some("/etc/hostname".into()),
            ..minimal()
        };
        assert_eq!(
            error_field(FileConfig::default(), &half_tls),
            "http.tlsKeyFile"
        );
        let zero = ConfigArgs {
            max_connections: Some(0),
            ..minimal()
        };
        assert_eq!(
            error_field(FileConfig::default(), &zero),
            "http.maxConnections"
        );
        let zero_rate = ConfigArgs {
            requests_per_minute_per_client: Some(0),
            ..minimal()
        };
        assert_eq!(
            error_field(FileConfig::default(), &zero_rate),
            "http.requestsPerMinutePerClient"
        );
    }

    #[test]
    fn allowed_origins_come_from_the_file_or_the_flag_as_browsers_send_them() {
        let config = Config::resolve(FileConfig::default(), &minimal()).unwrap();
        assert!(config.http.allowed_origins.is_empty());

        let file: FileConfig = crate::yaml::from_str(
            "http:\n  allowedOrigins: [\"https://console.example.com\", \"http://localhost:3000\"]\n",
        )
        .unwrap();
        let config = Config::resolve(file, &minimal()).unwrap();
        assert_eq!(
            config.http.allowed_origins,
            ["https://console.example.com", "http://localhost:3000"]
        );

        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ConfigArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "operator",
            "--allowed-origin",
            "https://a.example,https://b.example:8443",
            "--allowed-origin",
            "https://a.example",
        ])
        .unwrap();
        let args = ConfigArgs {
            allowed_origins: cli.args.allowed_origins,
            ..minimal()
        };
        let file: FileConfig =
            crate::yaml::from_str("http:\n  allowedOrigins: [\"https://file.example\"]\n").unwrap();
        let config = Config::resolve(file, &args).unwrap();
        assert_eq!(
            config.http.allowed_origins,
            ["https://a.example", "https://b.example:8443"],
            "the flag replaces the file's list; repeats count once"
        );
    }

    #[test]
    fn allowed_origins_that_a_browser_would_never_send_are_refused() {
        for (value, hint) in [
            (
                "https://console.example.com/",
                "write \"https://console.example.com\"",
            ),
            (
                "https://Console.Example.com",
                "write \"https://console.example.com\"",
            ),
            (
                "https://console.example.com:443",
                "write \"https://console.example.com\"",
            ),
            (
                "https://console.example.com/app",
                "write \"https://console.example.com\"",
            ),
            ("*", "scheme://host[:port]"),
            ("null", "scheme://host[:port]"),
            ("console.example.com", "scheme://host[:port]"),
            ("file:///tmp/page.html", "scheme://host[:port]"),
            ("ftp://console.example.com", "scheme://host[:port]"),
        ] {
            let args = ConfigArgs {
                allowed_origins: Some(vec![value.to_owned()]),
                ..minimal()
            };
            let error = Config::resolve(FileConfig::default(), &args).unwrap_err();
            assert_eq!(error.field, "http.allowedOrigins", "{value}");
            assert!(error.to_string().contains(hint), "{value}: {error}");
        }
    }

    #[test]
    fn paths_with_newlines_still_give_one_line() {
        let args = ConfigArgs {
            ca_file: Some("/nonexistent/a\nb".into()),
            ..minimal()
        };
        let error = Config::resolve(FileConfig::default(), &args).unwrap_err();
        assert!(!error.to_string().contains('\n'), "{error}");
        let args = ConfigArgs {
            config: Some("/nonexistent/x\ny.yaml".into()),
            ..minimal()
        };
        assert!(!Config::load(&args).unwrap_err().to_string().contains('\n'));
    }

    #[test]
    fn error_names_the_field_on_one_line() {
        let error = Config::resolve(FileConfig::default(), &ConfigArgs::default()).unwrap_err();
        let line = error.to_string();
        assert_eq!(line, "invalid configuration: server: is required");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn username_prefix_follows_kube_apiserver_flag_rules() {
        let resolve = |claim: &str, prefix: Option<&str>| {
            let args = ConfigArgs {
                oidc_username_claim: Some(claim.into()),
                oidc_username_prefix: prefix.map(Into::into),
                ..minimal()
            };
            Config::resolve(FileConfig::default(), &args)
                .unwrap()
                .oidc
                .flags()
                .username_prefix
                .clone()
        };
        assert_eq!(resolve("email", None), "");
        assert_eq!(resolve("sub", None), "https://dex.example/dex#");
        assert_eq!(resolve("sub", Some("")), "https://dex.example/dex#");
        assert_eq!(resolve("sub", Some("-")), "");
        assert_eq!(resolve("email", Some("-")), "");
        assert_eq!(resolve("sub", Some("oidc:")), "oidc:");
        assert_eq!(resolve("email", Some("oidc:")), "oidc:");
    }

    #[test]
    fn stricter_checks_are_off_unless_asked_for() {
        let config = Config::resolve(FileConfig::default(), &minimal()).unwrap();
        assert_eq!(config.oidc.flags().strictness, Strictness::default());
        let file: FileConfig = crate::yaml::from_str(
            "oidc:\n  requireAuthorizedParty: true\n  requireKeyId: true\n  strictNames: true\n",
        )
        .unwrap();
        let config = Config::resolve(file, &minimal()).unwrap();
        assert_eq!(
            config.oidc.flags().strictness,
            Strictness {
                require_authorized_party: true,
                require_key_id: true,
                strict_names: true,
            }
        );
    }

    #[test]
    fn a_leeway_is_refused_with_the_reason() {
        let zero = ConfigArgs {
            oidc_leeway_seconds: Some(0),
            ..minimal()
        };
        assert!(Config::resolve(FileConfig::default(), &zero).is_ok());
        let file: FileConfig = crate::yaml::from_str("oidc:\n  leewaySeconds: 30\n").unwrap();
        let error = Config::resolve(file, &minimal()).unwrap_err();
        assert_eq!(error.field, "oidc.leewaySeconds");
        assert!(error.problem.contains("no leeway on exp"), "{error}");
    }

    #[test]
    fn leader_election_is_on_in_a_pod_and_off_elsewhere_unless_asked() {
        let resolve = |file: &str, args: &ConfigArgs, pod: &PodEnvironment| {
            let file: FileConfig = crate::yaml::from_str(file).unwrap();
            Config::resolve_in(file, args, pod).map(|config| config.leader_election)
        };
        let outside = PodEnvironment::default();
        let pod = PodEnvironment {
            in_pod: true,
            namespace: Some("operators".into()),
        };
        assert_eq!(resolve("{}", &minimal(), &outside), Ok(None));
        let defaults_in_pod = Some(LeaderElectionSettings {
            lease_name: "kubeconfig-operator".into(),
            namespace: "operators".into(),
        });
        assert_eq!(resolve("{}", &minimal(), &pod), Ok(defaults_in_pod));
        let off = ConfigArgs {
            leader_elect: Some(false),
            ..minimal()
        };
        assert_eq!(resolve("{}", &off, &pod), Ok(None));
        assert_eq!(
            resolve("leaderElection: {enabled: false}", &minimal(), &pod),
            Ok(None)
        );
        // Asked for outside a pod: the namespace config/default installs into.
        let on = ConfigArgs {
            leader_elect: Some(true),
            ..minimal()
        };
        assert_eq!(
            resolve("{}", &on, &outside),
            Ok(Some(LeaderElectionSettings {
                lease_name: "kubeconfig-operator".into(),
                namespace: "kubeconfig-operator".into(),
            }))
        );
        // The flag wins over the file, the file over the pod.
        let named = ConfigArgs {
            leader_election_lease_name: Some("ha.kubeconfig.dev".into()),
            ..minimal()
        };
        assert_eq!(
            resolve(
                "leaderElection: {leaseName: from-file, namespace: from-file}",
                &named,
                &pod
            ),
            Ok(Some(LeaderElectionSettings {
                lease_name: "ha.kubeconfig.dev".into(),
                namespace: "from-file".into(),
            }))
        );
    }

    #[test]
    fn leader_election_names_are_checked() {
        for (file, field) in [
            (
                "leaderElection: {enabled: true, leaseName: Lease_1}",
                "leaderElection.leaseName",
            ),
            (
                "leaderElection: {enabled: true, leaseName: a..b}",
                "leaderElection.leaseName",
            ),
            (
                "leaderElection: {enabled: true, namespace: a.b}",
                "leaderElection.namespace",
            ),
        ] {
            let file: FileConfig = crate::yaml::from_str(file).unwrap();
            assert_eq!(error_field(file, &minimal()), field);
        }
        // Not checked while leader election is off.
        let file: FileConfig =
            crate::yaml::from_str("leaderElection: {enabled: false, leaseName: Lease_1}").unwrap();
        assert!(Config::resolve(file, &minimal()).is_ok());
    }
}
