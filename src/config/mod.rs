//! Configuration: one YAML file (`--config`), each field overridable by a flag or an environment
//! variable. Everything is checked before start-up so that a bad value stops the process with one
//! line naming the field, instead of surfacing later as a confusing runtime failure.
//!
//! Each section of the file is one struct that is both its YAML shape (serde) and its flags
//! (clap), so a field is declared once, with its help; the section's `resolve` states its
//! defaults and checks and returns the validated type the rest of the crate runs on. The
//! README's table is held against the flags' help by a test.

mod audit;
mod checks;
mod console;
mod controller;
mod http;
mod kubeconfig;
mod oidc;
mod proxy;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use audit::{AuditSection, AuditSettings};
use checks::optional_dns_label;
pub use checks::{ConfigError, TlsFiles, is_dns_label};
pub use console::{CALLBACK_ROUTE, ConsoleConfig, ConsoleSection};
pub use controller::{
    ControllerSection, ControllerSettings, LeaderElectionSection, LeaderElectionSettings,
    PodEnvironment,
};
pub use http::{HttpConfig, HttpSection};
pub use kubeconfig::{
    ExecCommand, ExecSection, ExecSettings, KubeconfigSection, KubeconfigSettings,
};
pub use oidc::{OidcConfig, OidcSection, OidcSettings, Strictness};
pub use proxy::{ProxyConfig, ProxySection};

/// The file's shape and the flags: the same type, so that flags and environment can win over
/// the file field by field (see [`Settings::overlaid_with`]). Unknown keys are refused: a typo
/// must not silently fall back to a default.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    /// YAML configuration file (see config/manager/operator.yaml for every field).
    #[arg(long, env = "KUBECONFIG_OPERATOR_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    // The kubeconfig's keys stand at the top of the file.
    #[command(flatten)]
    #[serde(flatten)]
    pub kubeconfig: KubeconfigSection,
    /// Reconcile requests in this namespace only; all namespaces when unset [file: watchNamespace; default all].
    #[arg(long, env = "KUBECONFIG_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Before writing a kubeconfig Secret or answering GET /kube-config, ask the API server (SelfSubjectReview with the token) who the token's holder is, and refuse tokens it does not accept; turn off when issued kubeconfigs point at a proxy that authenticates tokens the API server itself does not accept [file: confirmWithApiServer; default true, false with proxy.url].
    #[arg(long, env = "KUBECONFIG_OPERATOR_CONFIRM_WITH_API_SERVER", num_args = 0..=1, default_missing_value = "true")]
    pub confirm_with_api_server: Option<bool>,
    #[command(flatten)]
    #[serde(default)]
    pub exec: ExecSection,
    #[command(flatten)]
    #[serde(default)]
    pub oidc: OidcSection,
    #[command(flatten)]
    #[serde(default)]
    pub http: HttpSection,
    #[command(flatten)]
    #[serde(default)]
    pub controller: ControllerSection,
    #[command(flatten)]
    #[serde(default)]
    pub proxy: ProxySection,
    #[command(flatten)]
    #[serde(default)]
    pub leader_election: LeaderElectionSection,
    #[command(flatten)]
    #[serde(default)]
    pub audit: AuditSection,
    // Present (in the file, or by any of its flags) to serve the login and download page.
    #[command(flatten)]
    pub console: Option<ConsoleSection>,
}

/// The validated configuration the rest of the crate runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// What kubeconfigs holding an ID token name: the proxy, when it is configured.
    pub kubeconfig: KubeconfigSettings,
    /// What kubeconfigs holding a ServiceAccount token name: always the API server itself, since
    /// the proxy accepts only ID tokens of the configured issuers.
    pub api_server_kubeconfig: KubeconfigSettings,
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
    pub console: Option<ConsoleConfig>,
    pub audit: AuditSettings,
}

impl Settings {
    /// These settings with every field that `flags` sets replaced by the flag's value. Both are
    /// serialised the same way, and a field no flag set is `null`, which leaves the file's.
    pub fn overlaid_with(&self, flags: &Settings) -> Result<Settings, ConfigError> {
        fn overlay(base: &mut serde_json::Value, over: serde_json::Value) {
            match (base, over) {
                (_, serde_json::Value::Null) => {}
                (serde_json::Value::Object(base), serde_json::Value::Object(over)) => {
                    for (key, value) in over {
                        overlay(base.entry(key).or_insert(serde_json::Value::Null), value);
                    }
                }
                (base, over) => *base = over,
            }
        }
        let internal = |e: serde_json::Error| ConfigError::new("--config", e.to_string());
        let mut merged = serde_json::to_value(self).map_err(internal)?;
        overlay(&mut merged, serde_json::to_value(flags).map_err(internal)?);
        serde_json::from_value(merged).map_err(internal)
    }
}

impl Config {
    /// Reads the file named by `--config` (if any), applies flags and environment, and validates.
    pub fn load(flags: &Settings) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("--config", format!("cannot read {path:?}: {e}"))
                })?;
                crate::yaml::from_str(&text)
                    .map_err(|e| ConfigError::new("--config", format!("{path:?}: {e}")))?
            }
            None => Settings::default(),
        };
        Self::resolve_in(file, flags, &PodEnvironment::detect())
    }

    /// Combines file and overrides; separate from `load` so it can be tested without files.
    /// Defaults are those of a process outside any pod.
    pub fn resolve(file: Settings, flags: &Settings) -> Result<Self, ConfigError> {
        Self::resolve_in(file, flags, &PodEnvironment::default())
    }

    /// As [`Config::resolve`], with the defaults that depend on the pod the process runs in.
    pub fn resolve_in(
        file: Settings,
        flags: &Settings,
        pod: &PodEnvironment,
    ) -> Result<Self, ConfigError> {
        let settings = file.overlaid_with(flags)?;
        let controller = settings.controller.resolve()?;
        // A replica that never reconciles has nothing to lead: it leaves the Lease alone.
        let leader_election = match controller.enabled {
            true => settings.leader_election.resolve(pod)?,
            false => None,
        };
        let mut kubeconfig = settings.kubeconfig.resolve()?;
        let oidc = settings.oidc.resolve()?;

        // The exec kubeconfig and the page log in at one issuer; an authentication configuration
        // may name several, and choosing one for the user is not done yet.
        let single_issuer = |field: &str| {
            ConfigError::new(
                field,
                "needs oidc.issuerUrl; it is not available with oidc.authenticationConfig",
            )
        };
        kubeconfig.exec = match &oidc {
            OidcSettings::Flags(flags) => settings.exec.resolve(flags)?,
            OidcSettings::AuthenticationConfig { .. } => {
                if settings.exec.is_set() {
                    return Err(single_issuer("exec.clientId"));
                }
                None
            }
        };
        if settings.console.is_some() && matches!(oidc, OidcSettings::AuthenticationConfig { .. }) {
            return Err(single_issuer("console"));
        }
        let http = settings.http.resolve()?;
        let api_server_kubeconfig = KubeconfigSettings {
            exec: None,
            ..kubeconfig.clone()
        };
        let names_a_proxy = settings.proxy.url.is_some();
        let (kubeconfig, proxy) = settings.proxy.resolve(kubeconfig)?;

        Ok(Config {
            // Kubeconfigs that name a proxy (this process's, or config/proxy's pods') are for an
            // API server that need not accept the token: asking it would refuse every one.
            confirm_with_api_server: settings.confirm_with_api_server.unwrap_or(!names_a_proxy),
            kubeconfig,
            api_server_kubeconfig,
            oidc,
            http,
            proxy,
            controller,
            watch_namespace: optional_dns_label("watchNamespace", settings.watch_namespace)?,
            leader_election,
            console: settings.console.map(ConsoleConfig::resolve).transpose()?,
            audit: settings.audit.resolve()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::Algorithm;

    use super::*;

    /// Flags as given on the command line, in order; each is parsed as `run` would parse it.
    type Flags = Vec<(&'static str, String)>;

    fn minimal() -> Flags {
        vec![
            ("--server", "https://127.0.0.1:6443".into()),
            ("--oidc-issuer-url", "https://dex.example/dex".into()),
            ("--oidc-client-id", "kubeconfig-operator".into()),
        ]
    }

    /// `base` with each named flag replaced, or removed where the value is `None`.
    fn with(mut base: Flags, changes: &[(&'static str, Option<String>)]) -> Flags {
        for (flag, value) in changes {
            base.retain(|(given, _)| given != flag);
            if let Some(value) = value {
                base.push((flag, value.clone()));
            }
        }
        base
    }

    fn parse(flags: &Flags) -> Settings {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        let argv = flags.iter().map(|(flag, value)| format!("{flag}={value}"));
        <Cli as clap::Parser>::try_parse_from(std::iter::once("operator".to_owned()).chain(argv))
            .expect("flags parse")
            .settings
    }

    fn resolve(file: Settings, flags: &Flags) -> Result<Config, ConfigError> {
        Config::resolve(file, &parse(flags))
    }

    fn error_field(file: Settings, flags: &Flags) -> String {
        resolve(file, flags)
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

    fn with_proxy(ca: &std::path::Path, token: &std::path::Path) -> Flags {
        let (ca, token) = (ca.display().to_string(), token.display().to_string());
        with(
            minimal(),
            &[
                ("--ca-file", Some(ca.clone())),
                ("--proxy-listen", Some("127.0.0.1:8443".into())),
                ("--proxy-tls-cert-file", Some(ca.clone())),
                ("--proxy-tls-key-file", Some(ca)),
                ("--proxy-url", Some("https://proxy.example:8443".into())),
                ("--proxy-token-file", Some(token)),
            ],
        )
    }

    #[test]
    fn without_proxy_listen_there_is_no_proxy() {
        let config = resolve(Settings::default(), &minimal()).unwrap();
        assert!(config.proxy.is_none());
        assert_eq!(config.kubeconfig.server, "https://127.0.0.1:6443");
    }

    #[test]
    fn with_the_proxy_kubeconfigs_name_it_and_server_becomes_the_upstream() {
        let (_dir, ca, token) = proxy_files();
        let config = resolve(Settings::default(), &with_proxy(&ca, &token)).unwrap();
        let proxy = config.proxy.expect("a proxy");
        assert_eq!(proxy.upstream.as_str(), "https://127.0.0.1:6443/");
        assert_eq!(
            *proxy.upstream_ca.current().unwrap(),
            std::fs::read(&ca).unwrap()
        );
        assert_eq!(proxy.token_file, token);
        assert_eq!(proxy.stream_idle_timeout, Duration::from_secs(14_400));
        assert_eq!(config.kubeconfig.server, "https://proxy.example:8443");
        assert_eq!(config.kubeconfig.ca.current(), None);
        // The proxy accepts ID tokens only: ServiceAccount kubeconfigs name the API server.
        assert_eq!(
            config.api_server_kubeconfig.server,
            "https://127.0.0.1:6443"
        );
        assert_eq!(
            config.api_server_kubeconfig.ca.current().as_deref(),
            Some(std::fs::read(&ca).unwrap().as_slice())
        );

        let args = with(
            with_proxy(&ca, &token),
            &[
                ("--proxy-ca-file", Some(ca.display().to_string())),
                ("--proxy-upstream-url", Some("https://10.0.0.1".into())),
            ],
        );
        let config = resolve(Settings::default(), &args).unwrap();
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
                with(
                    with_proxy(&ca, &token),
                    &[
                        ("--proxy-tls-cert-file", None),
                        ("--proxy-tls-key-file", None),
                    ],
                ),
                "proxy.tlsCertFile",
            ),
            (
                with(with_proxy(&ca, &token), &[("--proxy-tls-key-file", None)]),
                "proxy.tlsKeyFile",
            ),
            (
                with(with_proxy(&ca, &token), &[("--proxy-url", None)]),
                "proxy.url",
            ),
            (
                with(
                    with_proxy(&ca, &token),
                    &[("--proxy-url", Some("http://proxy.example".into()))],
                ),
                "proxy.url",
            ),
            (
                with(with_proxy(&ca, &token), &[("--ca-file", None)]),
                "proxy.upstreamCaFile",
            ),
            (
                with(
                    with_proxy(&ca, &token),
                    &[(
                        "--proxy-upstream-url",
                        Some("https://api.example/prefix".into()),
                    )],
                ),
                "proxy.upstreamUrl",
            ),
            (
                with(
                    with_proxy(&ca, &token),
                    &[("--proxy-token-file", Some("/nonexistent/token".into()))],
                ),
                "proxy.tokenFile",
            ),
            (
                with(with_proxy(&ca, &token), &[("--proxy-token-file", None)]),
                "proxy.tokenFile",
            ),
            (
                with(
                    with_proxy(&ca, &token),
                    &[("--proxy-listen", Some("8443".into()))],
                ),
                "proxy.listen",
            ),
        ] {
            assert_eq!(error_field(Settings::default(), &args), field);
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
        let file: Settings = crate::yaml::from_str(&yaml).unwrap();
        let config = resolve(file, &Vec::new()).unwrap();
        let proxy = config.proxy.unwrap();
        assert_eq!(proxy.max_connections, 7);
        assert_eq!(proxy.stream_idle_timeout, Duration::from_secs(60));
        assert_eq!(config.kubeconfig.server, "https://proxy.example");
    }

    #[test]
    fn exec_format_is_off_until_a_public_client_is_named() {
        let config = resolve(Settings::default(), &minimal()).unwrap();
        assert_eq!(config.kubeconfig.exec, None);

        let (_dir, ca, _token) = proxy_files();
        let file: Settings = crate::yaml::from_str("exec:\n  clientId: kubelogin\n").unwrap();
        let args = with(
            minimal(),
            &[("--oidc-ca-file", Some(ca.display().to_string()))],
        );
        let exec = resolve(file, &args).unwrap().kubeconfig.exec.unwrap();
        assert_eq!(
            exec,
            ExecSettings {
                issuer: "https://dex.example/dex".into(),
                client_id: "kubelogin".into(),
                extra_scopes: vec!["email".into(), "groups".into(), "offline_access".into()],
                issuer_ca_pem: Some(std::fs::read(&ca).unwrap()),
                command: ExecCommand::Kubectl,
            }
        );

        let args = with(
            minimal(),
            &[
                ("--exec-client-id", Some("from-flag".into())),
                (
                    "--exec-extra-scopes",
                    Some("groups,audience:server:client_id:x".into()),
                ),
                ("--exec-command", Some("kubectl-oidc_login".into())),
            ],
        );
        let exec = resolve(Settings::default(), &args)
            .unwrap()
            .kubeconfig
            .exec
            .unwrap();
        assert_eq!(exec.client_id, "from-flag");
        assert_eq!(exec.extra_scopes, ["groups", "audience:server:client_id:x"]);
        assert_eq!(exec.issuer_ca_pem, None);
        assert_eq!(exec.command, ExecCommand::KubectlOidcLogin);
    }

    #[test]
    fn exec_client_and_scopes_must_be_well_formed() {
        for (client, scopes) in [
            (" ", None),
            ("kube\nlogin", None),
            ("kubelogin", Some("groups offline_access")),
            ("kubelogin", Some("")),
        ] {
            let args = with(
                minimal(),
                &[
                    ("--exec-client-id", Some(client.into())),
                    ("--exec-extra-scopes", scopes.map(str::to_owned)),
                ],
            );
            let field = error_field(Settings::default(), &args);
            assert!(field.starts_with("exec."), "{client:?} {scopes:?}: {field}");
        }
    }

    #[test]
    fn an_authentication_configuration_replaces_the_flat_oidc_settings() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_owned();
        let args = with(
            minimal(),
            &[
                ("--oidc-issuer-url", None),
                ("--oidc-client-id", None),
                ("--authentication-config", Some(path.display().to_string())),
                ("--oidc-strict-names", Some("true".into())),
            ],
        );
        match resolve(Settings::default(), &args).unwrap().oidc {
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
        let both = with(
            minimal(),
            &[("--authentication-config", Some(path.display().to_string()))],
        );
        let error = resolve(Settings::default(), &both).unwrap_err();
        assert_eq!(error.field, "oidc.authenticationConfig");
        assert!(
            error.problem.contains("mutually exclusive"),
            "{}",
            error.problem
        );
        let missing = with(
            minimal(),
            &[
                ("--oidc-issuer-url", None),
                (
                    "--authentication-config",
                    Some("/nonexistent/authn.yaml".into()),
                ),
            ],
        );
        assert_eq!(
            error_field(Settings::default(), &missing),
            "oidc.authenticationConfig"
        );
    }

    #[test]
    fn minimal_configuration_gets_documented_defaults() {
        let config = resolve(Settings::default(), &minimal()).unwrap();
        assert_eq!(config.kubeconfig.user_name, "OIDCUser");
        assert_eq!(config.kubeconfig.cluster_name, "kubernetes");
        assert_eq!(config.oidc.flags().username_claim, "email");
        assert_eq!(config.oidc.flags().groups_claim.as_deref(), Some("groups"));
        assert_eq!(config.oidc.flags().algorithms, vec![Algorithm::RS256]);
        assert_eq!(config.oidc.flags().issuer, "https://dex.example/dex");
        assert_eq!(config.http.listen, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(
            config.http.metrics_listen,
            "127.0.0.1:9090".parse().unwrap()
        );
        assert!(config.http.tls.is_none());
        assert!(config.kubeconfig.ca.current().is_none());
    }

    #[test]
    fn confirmation_is_on_unless_the_file_or_a_flag_turns_it_off() {
        let resolve = |yaml: &str, flag: Option<bool>| {
            let file: Settings = crate::yaml::from_str(yaml).unwrap();
            let args = with(
                minimal(),
                &[("--confirm-with-api-server", flag.map(|on| on.to_string()))],
            );
            resolve(file, &args).unwrap().confirm_with_api_server
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
        let file: Settings = crate::yaml::from_str(
            "clusterName: from-file\nuserName: file-user\noidc:\n  usernameClaim: sub\n",
        )
        .unwrap();
        let args = with(minimal(), &[("--cluster-name", Some("from-flag".into()))]);
        let config = resolve(file, &args).unwrap();
        assert_eq!(config.kubeconfig.cluster_name, "from-flag");
        assert_eq!(config.kubeconfig.user_name, "file-user");
        assert_eq!(config.oidc.flags().username_claim, "sub");
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let result: Result<Settings, _> = crate::yaml::from_str("servr: https://x\n");
        assert!(result.unwrap_err().to_string().contains("servr"));
    }

    #[test]
    fn missing_required_fields_are_named() {
        let no_server = with(minimal(), &[("--server", None)]);
        assert_eq!(error_field(Settings::default(), &no_server), "server");
        let no_issuer = with(minimal(), &[("--oidc-issuer-url", None)]);
        assert_eq!(
            error_field(Settings::default(), &no_issuer),
            "oidc.issuerUrl"
        );
        let blank_client = with(minimal(), &[("--oidc-client-id", Some(" ".into()))]);
        assert_eq!(
            error_field(Settings::default(), &blank_client),
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
            let args = with(minimal(), &[("--server", Some(bad.into()))]);
            assert_eq!(error_field(Settings::default(), &args), "server", "{bad}");
            let args = with(minimal(), &[("--oidc-issuer-url", Some(bad.into()))]);
            assert_eq!(
                error_field(Settings::default(), &args),
                "oidc.issuerUrl",
                "{bad}"
            );
        }
    }

    #[test]
    fn symmetric_and_unknown_algorithms_are_refused() {
        for bad in ["HS256", "none", "rs256", "XYZ", "EdDSA", "ES512"] {
            let args = with(
                minimal(),
                &[("--oidc-signing-algorithms", Some(format!("RS256,{bad}")))],
            );
            let error = resolve(Settings::default(), &args).unwrap_err();
            assert_eq!(error.field, "oidc.signingAlgorithms");
            assert!(error.problem.contains(bad));
        }
        let empty: Settings = crate::yaml::from_str("oidc: {signingAlgorithms: []}").unwrap();
        assert_eq!(error_field(empty, &minimal()), "oidc.signingAlgorithms");
    }

    #[test]
    fn certificate_authority_must_be_one_pem_source() {
        let both = with(
            minimal(),
            &[
                ("--ca-data", Some("AAAA".into())),
                ("--ca-file", Some("/etc/hostname".into())),
            ],
        );
        assert_eq!(
            error_field(Settings::default(), &both),
            "certificateAuthorityData"
        );
        let not_base64 = with(minimal(), &[("--ca-data", Some("***".into()))]);
        assert_eq!(
            error_field(Settings::default(), &not_base64),
            "certificateAuthorityData"
        );
        let not_pem = with(minimal(), &[("--ca-data", Some("aGVsbG8=".into()))]);
        let error = resolve(Settings::default(), &not_pem).unwrap_err();
        assert_eq!(error.problem, "holds no PEM certificate");
        let missing = with(
            minimal(),
            &[("--ca-file", Some("/nonexistent/ca.pem".into()))],
        );
        assert_eq!(
            error_field(Settings::default(), &missing),
            "certificateAuthorityFile"
        );
    }

    #[test]
    fn namespaces_must_be_dns_labels() {
        for bad in ["Team", "-a", "a-", "a_b", &"a".repeat(64)] {
            let args = with(minimal(), &[("--default-namespace", Some(bad.into()))]);
            assert_eq!(
                error_field(Settings::default(), &args),
                "defaultNamespace",
                "{bad}"
            );
        }
        let args = with(minimal(), &[("--watch-namespace", Some("UPPER".into()))]);
        assert_eq!(error_field(Settings::default(), &args), "watchNamespace");
        assert!(is_dns_label("team-a1"));
    }

    #[test]
    fn http_settings_are_checked() {
        let bad_listen = with(minimal(), &[("--listen", Some("localhost".into()))]);
        assert_eq!(error_field(Settings::default(), &bad_listen), "http.listen");
        let bad_metrics = with(minimal(), &[("--metrics-listen", Some(":9090".into()))]);
        assert_eq!(
            error_field(Settings::default(), &bad_metrics),
            "http.metricsListen"
        );
        let half_tls = with(
            minimal(),
            &[("--tls-cert-file", Some("/etc/hostname".into()))],
        );
        assert_eq!(
            error_field(Settings::default(), &half_tls),
            "http.tlsKeyFile"
        );
        let zero = with(minimal(), &[("--max-connections", Some("0".into()))]);
        assert_eq!(
            error_field(Settings::default(), &zero),
            "http.maxConnections"
        );
        let zero_rate = with(
            minimal(),
            &[("--requests-per-minute-per-client", Some("0".into()))],
        );
        assert_eq!(
            error_field(Settings::default(), &zero_rate),
            "http.requestsPerMinutePerClient"
        );
    }

    #[test]
    fn allowed_origins_come_from_the_file_or_the_flag_as_browsers_send_them() {
        let config = resolve(Settings::default(), &minimal()).unwrap();
        assert!(config.http.allowed_origins.is_empty());

        let file: Settings = crate::yaml::from_str(
            "http:\n  allowedOrigins: [\"https://console.example.com\", \"http://localhost:3000\"]\n",
        )
        .unwrap();
        let config = resolve(file, &minimal()).unwrap();
        assert_eq!(
            config.http.allowed_origins,
            ["https://console.example.com", "http://localhost:3000"]
        );

        let mut args = minimal();
        args.push((
            "--allowed-origin",
            "https://a.example,https://b.example:8443".into(),
        ));
        args.push(("--allowed-origin", "https://a.example".into()));
        let file: Settings =
            crate::yaml::from_str("http:\n  allowedOrigins: [\"https://file.example\"]\n").unwrap();
        let config = resolve(file, &args).unwrap();
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
            let args = with(minimal(), &[("--allowed-origin", Some(value.to_owned()))]);
            let error = resolve(Settings::default(), &args).unwrap_err();
            assert_eq!(error.field, "http.allowedOrigins", "{value}");
            assert!(error.to_string().contains(hint), "{value}: {error}");
        }
    }

    #[test]
    fn paths_with_newlines_still_give_one_line() {
        let args = with(
            minimal(),
            &[("--ca-file", Some("/nonexistent/a\nb".into()))],
        );
        let error = resolve(Settings::default(), &args).unwrap_err();
        assert!(!error.to_string().contains('\n'), "{error}");
        let args = with(
            minimal(),
            &[("--config", Some("/nonexistent/x\ny.yaml".into()))],
        );
        assert!(
            !Config::load(&parse(&args))
                .unwrap_err()
                .to_string()
                .contains('\n')
        );
    }

    #[test]
    fn error_names_the_field_on_one_line() {
        let error = resolve(Settings::default(), &Vec::new()).unwrap_err();
        let line = error.to_string();
        assert_eq!(line, "invalid configuration: server: is required");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn username_prefix_follows_kube_apiserver_flag_rules() {
        let resolve = |claim: &str, prefix: Option<&str>| {
            let args = with(
                minimal(),
                &[
                    ("--oidc-username-claim", Some(claim.into())),
                    ("--oidc-username-prefix", prefix.map(Into::into)),
                ],
            );
            resolve(Settings::default(), &args)
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
        let config = resolve(Settings::default(), &minimal()).unwrap();
        assert_eq!(config.oidc.flags().strictness, Strictness::default());
        let file: Settings = crate::yaml::from_str(
            "oidc:\n  requireAuthorizedParty: true\n  requireKeyId: true\n  strictNames: true\n",
        )
        .unwrap();
        let config = resolve(file, &minimal()).unwrap();
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
        let zero = with(minimal(), &[("--oidc-leeway-seconds", Some("0".into()))]);
        assert!(resolve(Settings::default(), &zero).is_ok());
        let file: Settings = crate::yaml::from_str("oidc:\n  leewaySeconds: 30\n").unwrap();
        let error = resolve(file, &minimal()).unwrap_err();
        assert_eq!(error.field, "oidc.leewaySeconds");
        assert!(error.problem.contains("no leeway on exp"), "{error}");
    }

    /// config/proxy's pods: no controller, so no Lease, even where the shared file asks for one.
    #[test]
    fn a_replica_without_the_controller_leaves_the_lease_alone() {
        let pod = PodEnvironment {
            in_pod: true,
            namespace: Some("operators".into()),
        };
        let file: Settings = crate::yaml::from_str("leaderElection: {enabled: true}").unwrap();
        let off = with(minimal(), &[("--controller-enabled", Some("false".into()))]);
        let config = Config::resolve_in(file.clone(), &parse(&off), &pod).unwrap();
        assert!(!config.controller.enabled);
        assert_eq!(config.leader_election, None);
        let config = Config::resolve_in(file, &parse(&minimal()), &pod).unwrap();
        assert!(config.controller.enabled);
        assert!(config.leader_election.is_some());
    }

    /// The operator's pods serve no proxy but share its `proxy.url` with config/proxy's pods:
    /// the Secrets they write name the proxy, as its download does.
    #[test]
    fn proxy_url_without_listen_names_the_proxy_served_elsewhere() {
        let (_dir, ca, _token) = proxy_files();
        let args = with(
            minimal(),
            &[
                ("--ca-file", Some(ca.display().to_string())),
                ("--proxy-url", Some("https://proxy.example".into())),
                ("--proxy-ca-file", Some(ca.display().to_string())),
                // Serving settings without a listener: ignored, as config/manager's pods do.
                ("--proxy-max-connections", Some("7".into())),
            ],
        );
        let config = resolve(Settings::default(), &args).unwrap();
        assert!(config.proxy.is_none());
        assert_eq!(config.kubeconfig.server, "https://proxy.example");
        assert_eq!(
            config.kubeconfig.ca.current().as_deref(),
            Some(std::fs::read(&ca).unwrap().as_slice())
        );
        assert_eq!(
            config.api_server_kubeconfig.server,
            "https://127.0.0.1:6443"
        );
        // The API server need not accept the tokens kubeconfigs naming the proxy hold.
        assert!(!config.confirm_with_api_server);
        let explicit = with(
            args.clone(),
            &[("--confirm-with-api-server", Some("true".into()))],
        );
        assert!(
            resolve(Settings::default(), &explicit)
                .unwrap()
                .confirm_with_api_server
        );
        assert!(
            resolve(Settings::default(), &minimal())
                .unwrap()
                .confirm_with_api_server
        );

        let plain_http = with(
            args.clone(),
            &[("--proxy-url", Some("http://proxy.example".into()))],
        );
        assert_eq!(error_field(Settings::default(), &plain_http), "proxy.url");
        let missing_ca = with(
            args,
            &[("--proxy-ca-file", Some("/nonexistent/ca.crt".into()))],
        );
        assert_eq!(
            error_field(Settings::default(), &missing_ca),
            "proxy.caFile"
        );
    }

    #[test]
    fn leader_election_is_on_in_a_pod_and_off_elsewhere_unless_asked() {
        let resolve = |file: &str, args: &Flags, pod: &PodEnvironment| {
            let file: Settings = crate::yaml::from_str(file).unwrap();
            Config::resolve_in(file, &parse(args), pod).map(|config| config.leader_election)
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
        let off = with(minimal(), &[("--leader-elect", Some("false".into()))]);
        assert_eq!(resolve("{}", &off, &pod), Ok(None));
        assert_eq!(
            resolve("leaderElection: {enabled: false}", &minimal(), &pod),
            Ok(None)
        );
        // Asked for outside a pod: the namespace config/default installs into.
        let on = with(minimal(), &[("--leader-elect", Some("true".into()))]);
        assert_eq!(
            resolve("{}", &on, &outside),
            Ok(Some(LeaderElectionSettings {
                lease_name: "kubeconfig-operator".into(),
                namespace: "kubeconfig-operator".into(),
            }))
        );
        // The flag wins over the file, the file over the pod.
        let named = with(
            minimal(),
            &[(
                "--leader-election-lease-name",
                Some("ha.kubeconfig.dev".into()),
            )],
        );
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
            let file: Settings = crate::yaml::from_str(file).unwrap();
            assert_eq!(error_field(file, &minimal()), field);
        }
        // Not checked while leader election is off.
        let file: Settings =
            crate::yaml::from_str("leaderElection: {enabled: false, leaseName: Lease_1}").unwrap();
        assert!(resolve(file, &minimal()).is_ok());
    }

    /// A row of one of the README's settings tables: its file fields, flags and default.
    struct Documented {
        fields: Vec<String>,
        flags: Vec<String>,
        default: String,
    }

    /// Every row of the README's tables that start with `| file field |`.
    fn documented() -> Vec<Documented> {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let backticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let mut rows = Vec::new();
        let mut lines = readme.lines();
        while let Some(line) = lines.next() {
            if !line.starts_with("| file field |") {
                continue;
            }
            let header: Vec<&str> = line.split('|').map(str::trim).collect();
            let flag_column = header.iter().position(|h| h.starts_with("flag"));
            let default_column = header.iter().position(|h| *h == "default").unwrap();
            for row in lines.by_ref().skip(1) {
                if !row.starts_with('|') {
                    break;
                }
                let cells: Vec<&str> = row.split(" | ").collect();
                let cell = |column: usize| cells.get(column - 1).copied().unwrap_or_default();
                rows.push(Documented {
                    fields: backticked(cell(1)),
                    flags: flag_column
                        .map(|column| backticked(cell(column)))
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|flag| flag.starts_with("--"))
                        .map(|flag| flag.trim_end_matches("[=false]").to_owned())
                        .collect(),
                    default: cell(default_column).to_owned(),
                });
            }
        }
        rows
    }

    /// The README's tables, the flags and their help are one contract: every flag names its file
    /// field in its help (`[file: …; default …]`), the README documents that field with that
    /// flag and the same default, and the README names no flag that does not exist.
    #[test]
    fn the_readme_documents_every_setting_with_its_flag_and_default() {
        let normalise = |text: &str| -> String {
            text.chars()
                .filter(|c| !matches!(c, '`' | '[' | ']' | ' ' | ';' | ','))
                .collect::<String>()
                .to_lowercase()
        };
        let documented = documented();
        let command = <Settings as clap::Args>::augment_args(clap::Command::new("operator"));
        let mut flags = Vec::new();
        let mut problems = Vec::new();
        for arg in command.get_arguments().filter(|arg| !arg.is_hide_set()) {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            flags.push(flag.clone());
            if long == "config" {
                continue;
            }
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let file = help
                .split("[file: ")
                .nth(1)
                .and_then(|rest| rest.split(']').next())
                .unwrap_or_else(|| panic!("{flag}'s help names no [file: …] field"));
            let (field, default) = match file.split_once("; default ") {
                Some((field, default)) => (field, Some(default)),
                None => (file.split(';').next().unwrap(), None),
            };
            let Some(row) = documented
                .iter()
                .find(|row| row.fields.iter().any(|f| f == field))
            else {
                problems.push(format!("the README documents no {field} ({flag})"));
                continue;
            };
            if !row.flags.contains(&flag) {
                problems.push(format!("the README's row for {field} does not name {flag}"));
            }
            if let Some(default) = default
                && !normalise(&row.default).contains(&normalise(default))
            {
                problems.push(format!(
                    "{field}: the help says default {default:?}, the README {:?}",
                    row.default
                ));
            }
        }
        for row in &documented {
            for flag in row.flags.iter().filter(|flag| !flags.contains(flag)) {
                problems.push(format!("the README names {flag}, which does not exist"));
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
