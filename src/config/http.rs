//! The `http` section: the listener of `GET /kube-config`, the page and the probes, and the
//! metrics' own listener.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};
use url::Url;

use super::checks::{ConfigError, TlsFiles, address, positive, readable_file, tls_files};

#[derive(Debug, Default, Clone, clap::Args, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSection {
    /// Address the HTTP server listens on [file: http.listen; default 127.0.0.1:8000].
    #[arg(long, env = "KUBECONFIG_OPERATOR_LISTEN")]
    pub listen: Option<String>,
    /// Address /metrics is served on, apart from the download so that the download's Service does not expose it [file: http.metricsListen; default 127.0.0.1:9090].
    #[arg(long, env = "KUBECONFIG_OPERATOR_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
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
    /// Origin of a web page allowed to call GET /kube-config from a browser (CORS), exactly as browsers send it, e.g. https://console.example.com; repeat the flag or separate with commas [file: http.allowedOrigins; default none].
    #[arg(
        long = "allowed-origin",
        env = "KUBECONFIG_OPERATOR_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub max_connections: usize,
    pub requests_per_minute_per_client: u32,
    /// Origins (`scheme://host[:port]`, as a browser's `Origin` header has them) whose pages may
    /// call `GET /kube-config` cross-origin; empty allows none.
    pub allowed_origins: Vec<String>,
}

impl HttpSection {
    pub(super) fn resolve(self) -> Result<HttpConfig, ConfigError> {
        Ok(HttpConfig {
            listen: address(
                "http.listen",
                self.listen.as_deref().unwrap_or("127.0.0.1:8000"),
            )?,
            metrics_listen: address(
                "http.metricsListen",
                self.metrics_listen.as_deref().unwrap_or("127.0.0.1:9090"),
            )?,
            tls: tls_files(
                "http",
                readable_file("http.tlsCertFile", self.tls_cert_file)?,
                readable_file("http.tlsKeyFile", self.tls_key_file)?,
            )?,
            max_connections: positive("http.maxConnections", self.max_connections.unwrap_or(1024))?,
            requests_per_minute_per_client: positive(
                "http.requestsPerMinutePerClient",
                self.requests_per_minute_per_client.unwrap_or(600),
            )?,
            allowed_origins: origins(self.allowed_origins.unwrap_or_default())?,
        })
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
