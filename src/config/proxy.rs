//! The `proxy` section: the authenticating proxy in front of the API server (see
//! `server::proxy`). Without `proxy.listen` there is no proxy.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use url::Url;

use super::{
    checks::{
        ConfigError, TlsFiles, address, https_url, positive, read_pem_file, readable_file,
        tls_files,
    },
    kubeconfig::KubeconfigSettings,
};
use crate::ca::CaBundle;

/// kubelet's default `--streaming-connection-idle-timeout`.
const DEFAULT_STREAM_IDLE_TIMEOUT_SECONDS: u64 = 4 * 60 * 60;

#[derive(Debug, Default, Clone, clap::Args, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxySection {
    /// Serve the authenticating API server proxy on this address; unset: no proxy [file: proxy.listen].
    #[arg(
        id = "proxy-listen",
        long = "proxy-listen",
        env = "KUBECONFIG_OPERATOR_PROXY_LISTEN"
    )]
    pub listen: Option<String>,
    /// PEM certificate chain the proxy serves [file: proxy.tlsCertFile; required with the proxy].
    #[arg(
        id = "proxy-tls-cert-file",
        long = "proxy-tls-cert-file",
        env = "KUBECONFIG_OPERATOR_PROXY_TLS_CERT_FILE"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the proxy's certificate [file: proxy.tlsKeyFile; required with the proxy].
    #[arg(
        id = "proxy-tls-key-file",
        long = "proxy-tls-key-file",
        env = "KUBECONFIG_OPERATOR_PROXY_TLS_KEY_FILE"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// https URL clients reach the proxy at; issued kubeconfigs name it instead of `server` [file: proxy.url; required with the proxy].
    #[arg(
        id = "proxy-url",
        long = "proxy-url",
        env = "KUBECONFIG_OPERATOR_PROXY_URL"
    )]
    pub url: Option<String>,
    /// PEM file of the CA that signed the proxy's certificate, put into issued kubeconfigs [file: proxy.caFile; default none: system roots].
    #[arg(
        id = "proxy-ca-file",
        long = "proxy-ca-file",
        env = "KUBECONFIG_OPERATOR_PROXY_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,
    /// https URL of the API server the proxy forwards to [file: proxy.upstreamUrl; default server].
    #[arg(
        id = "proxy-upstream-url",
        long = "proxy-upstream-url",
        env = "KUBECONFIG_OPERATOR_PROXY_UPSTREAM_URL"
    )]
    pub upstream_url: Option<String>,
    /// PEM file of the API server's CA [file: proxy.upstreamCaFile; default certificateAuthority*].
    #[arg(
        id = "proxy-upstream-ca-file",
        long = "proxy-upstream-ca-file",
        env = "KUBECONFIG_OPERATOR_PROXY_UPSTREAM_CA_FILE"
    )]
    pub upstream_ca_file: Option<PathBuf>,
    /// File holding the proxy's own bearer token, of the ServiceAccount in config/proxy, re-read every minute [file: proxy.tokenFile; required with the proxy].
    #[arg(
        id = "proxy-token-file",
        long = "proxy-token-file",
        env = "KUBECONFIG_OPERATOR_PROXY_TOKEN_FILE"
    )]
    pub token_file: Option<PathBuf>,
    /// Connections the proxy serves at once, upgraded streams included [file: proxy.maxConnections; default 1024].
    #[arg(
        id = "proxy-max-connections",
        long = "proxy-max-connections",
        env = "KUBECONFIG_OPERATOR_PROXY_MAX_CONNECTIONS"
    )]
    pub max_connections: Option<usize>,
    /// Connections one client address (an IPv6 /64) may hold at once; the next gets 429 with Retry-After [file: proxy.maxConnectionsPerClient; default 256].
    #[arg(
        id = "proxy-max-connections-per-client",
        long = "proxy-max-connections-per-client",
        env = "KUBECONFIG_OPERATOR_PROXY_MAX_CONNECTIONS_PER_CLIENT"
    )]
    pub max_connections_per_client: Option<usize>,
    /// Requests one verified user may have in flight at once, watches and upgraded streams included; the next gets 429 with Retry-After [file: proxy.maxRequestsPerUser; default 128].
    #[arg(
        id = "proxy-max-requests-per-user",
        long = "proxy-max-requests-per-user",
        env = "KUBECONFIG_OPERATOR_PROXY_MAX_REQUESTS_PER_USER"
    )]
    pub max_requests_per_user: Option<usize>,
    /// An upgraded stream (exec, attach, port-forward, WebSocket watch) with no bytes either way for this long is closed; kubelet's default [file: proxy.streamIdleTimeoutSeconds; default 14400].
    #[arg(
        id = "proxy-stream-idle-timeout-seconds",
        long = "proxy-stream-idle-timeout-seconds",
        env = "KUBECONFIG_OPERATOR_PROXY_STREAM_IDLE_TIMEOUT_SECONDS"
    )]
    pub stream_idle_timeout_seconds: Option<u64>,
}

/// The authenticating proxy in front of the API server (see `server::proxy`).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    /// The API server, https, no path.
    pub upstream: Url,
    /// The API server's CA, followed when it comes from a file.
    pub upstream_ca: CaBundle,
    /// The proxy's own bearer token, re-read while running.
    pub token_file: PathBuf,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub max_requests_per_user: usize,
    pub stream_idle_timeout: Duration,
}

impl ProxySection {
    /// With `proxy.url`, kubeconfigs name the proxy (with `proxy.caFile`), whether this process
    /// serves it (`proxy.listen`) or other replicas do: the operator's pods and config/proxy's
    /// read one file, and a Secret the controller writes must name what the proxy's download
    /// names. Only with `proxy.listen` is there a proxy here, and `server` with its CA becomes
    /// its upstream unless `proxy.upstream*` say otherwise; the fields that serve it mean
    /// nothing without it, so a replica that serves none ignores them.
    pub(super) fn resolve(
        self,
        kubeconfig: KubeconfigSettings,
    ) -> Result<(KubeconfigSettings, Option<ProxyConfig>), ConfigError> {
        let Some(listen) = self.listen else {
            let kubeconfig = match self.url {
                Some(url) => naming_the_proxy(kubeconfig, url, self.ca_file)?,
                None => kubeconfig,
            };
            return Ok((kubeconfig, None));
        };
        let listen = address("proxy.listen", &listen)?;
        let tls = tls_files(
            "proxy",
            readable_file("proxy.tlsCertFile", self.tls_cert_file)?,
            readable_file("proxy.tlsKeyFile", self.tls_key_file)?,
        )?
        .ok_or_else(|| {
            ConfigError::new(
                "proxy.tlsCertFile",
                "is required with proxy.listen: the proxy serves HTTPS only",
            )
        })?;
        let url = self
            .url
            .ok_or_else(|| ConfigError::new("proxy.url", "is required"))?;
        let upstream_text = self
            .upstream_url
            .unwrap_or_else(|| kubeconfig.server.clone());
        let upstream = https_url("proxy.upstreamUrl", Some(upstream_text.clone()))?.0;
        if !matches!(upstream.path(), "" | "/") {
            return Err(ConfigError::new(
                "proxy.upstreamUrl",
                format!("{upstream_text:?} must not have a path"),
            ));
        }
        // The kubeconfig's own bundle when defaulted: it follows certificateAuthorityFile.
        let upstream_ca = match self.upstream_ca_file {
            Some(path) => {
                let pem = read_pem_file("proxy.upstreamCaFile", &path)?;
                CaBundle::from_file(path, pem)
            }
            None if kubeconfig.ca.current().is_some() => kubeconfig.ca.clone(),
            None => {
                return Err(ConfigError::new(
                    "proxy.upstreamCaFile",
                    "is required when certificateAuthority* is not set (in a pod: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)",
                ));
            }
        };
        // Required rather than defaulting to the pod's own token: the operator's ServiceAccount
        // may read Secrets, and the proxy must act with nothing but the right to impersonate.
        let token_file = readable_file("proxy.tokenFile", self.token_file)?.ok_or_else(|| {
            ConfigError::new(
                "proxy.tokenFile",
                "is required with proxy.listen: a token of the proxy's own ServiceAccount (config/proxy), not the operator's",
            )
        })?;
        let max_connections =
            positive("proxy.maxConnections", self.max_connections.unwrap_or(1024))?;
        // Below the global pool by default, so that neither one address nor one user can take
        // every slot: four of either leave the rest of the pool to the others.
        let max_connections_per_client = positive(
            "proxy.maxConnectionsPerClient",
            self.max_connections_per_client.unwrap_or(256),
        )?;
        let max_requests_per_user = positive(
            "proxy.maxRequestsPerUser",
            self.max_requests_per_user.unwrap_or(128),
        )?;
        let idle = positive(
            "proxy.streamIdleTimeoutSeconds",
            self.stream_idle_timeout_seconds
                .unwrap_or(DEFAULT_STREAM_IDLE_TIMEOUT_SECONDS),
        )?;
        Ok((
            naming_the_proxy(kubeconfig, url, self.ca_file)?,
            Some(ProxyConfig {
                listen,
                tls,
                upstream,
                upstream_ca,
                token_file,
                max_connections,
                max_connections_per_client,
                max_requests_per_user,
                stream_idle_timeout: Duration::from_secs(idle),
            }),
        ))
    }
}

/// `kubeconfig` with the proxy's URL and CA in place of `server` and its CA.
fn naming_the_proxy(
    kubeconfig: KubeconfigSettings,
    url: String,
    ca_file: Option<PathBuf>,
) -> Result<KubeconfigSettings, ConfigError> {
    let server = https_url("proxy.url", Some(url))?.1;
    // Followed like certificateAuthorityFile: a rotated proxy CA reaches issued kubeconfigs.
    let ca = match readable_file("proxy.caFile", ca_file)? {
        Some(path) => {
            let pem = read_pem_file("proxy.caFile", &path)?;
            CaBundle::from_file(path, pem)
        }
        None => CaBundle::default(),
    };
    Ok(KubeconfigSettings {
        server,
        ca,
        ..kubeconfig
    })
}
