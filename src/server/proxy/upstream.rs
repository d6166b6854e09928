//! The proxy's side towards the API server: the TLS trust in its CA (followed when the CA file
//! changes), a pool of HTTP/1.1 connections for ordinary requests, fresh connections for
//! upgrades, and the proxy's own credential, read from its ServiceAccount token file and re-read
//! while running.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock as SyncRwLock},
    time::Duration,
};

use axum::{
    body::Body,
    http::{HeaderValue, Uri, uri::PathAndQuery},
};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{net::TcpStream, sync::RwLock};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tracing::warn;
use url::Url;

use crate::{ca::CaBundle, config::ProxyConfig, server::ServeError};

/// How often the token file is re-read. A projected ServiceAccount token is rotated by kubelet
/// well before it expires; client-go re-reads its token file every minute too.
const CREDENTIAL_REFRESH: Duration = Duration::from_secs(60);
/// How long a pooled connection to the API server may sit unused before it is closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long connecting (TCP and TLS) to the API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Upstream {
    /// `https://host:port`, the base of every forwarded URI.
    base: Url,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    pooled: Client<HttpsConnector<HttpConnector>, Body>,
    /// The same trust, with ALPN `http/1.1` only, for upgrade connections.
    tls: TlsConnector,
}

/// Verifies the API server's certificate against the CA as it is now: a rotated CA file (the
/// bundle is watched) applies to every new connection, pooled or fresh, without a restart. A
/// new CA that cannot be used is logged and the last good one stays, as for every CA file.
#[derive(Debug)]
struct FollowedCa {
    ca: CaBundle,
    provider: Arc<CryptoProvider>,
    /// The PEM the verifier was built from, and the verifier.
    current: SyncRwLock<(Arc<[u8]>, Arc<WebPkiServerVerifier>)>,
}

impl FollowedCa {
    fn new(ca: CaBundle, provider: Arc<CryptoProvider>) -> Result<Self, String> {
        let pem = ca
            .current()
            .ok_or_else(|| "there is no upstream CA".to_owned())?;
        let verifier = verifier_for(&pem, &provider)?;
        Ok(Self {
            ca,
            provider,
            current: SyncRwLock::new((pem, verifier)),
        })
    }

    /// The verifier for the bundle's current PEM, rebuilt when it changed.
    fn verifier(&self) -> Arc<WebPkiServerVerifier> {
        let (built_from, verifier) = {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            (Arc::clone(&current.0), Arc::clone(&current.1))
        };
        let Some(pem) = self.ca.current() else {
            return verifier;
        };
        if pem == built_from {
            return verifier;
        }
        match verifier_for(&pem, &self.provider) {
            Ok(fresh) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                    (pem, Arc::clone(&fresh));
                fresh
            }
            Err(problem) => {
                warn!(%problem, "the upstream CA changed but cannot be used; keeping the last good one");
                verifier
            }
        }
    }
}

fn verifier_for(
    pem: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut &pem[..]) {
        let certificate = certificate.map_err(|e| format!("the upstream CA is not PEM: {e}"))?;
        roots
            .add(certificate)
            .map_err(|e| format!("the upstream CA is not usable: {e}"))?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| format!("the upstream CA is not usable: {e}"))
}

impl ServerCertVerifier for FollowedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

impl Upstream {
    pub(super) fn new(config: &ProxyConfig) -> Result<Self, ServeError> {
        let problem = |problem: String| ServeError::Upstream { problem };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            FollowedCa::new(config.upstream_ca.clone(), Arc::clone(&provider)).map_err(problem)?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| problem(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let mut upgrade_tls = tls.clone();
        upgrade_tls.alpn_protocols = vec![b"http/1.1".to_vec()];

        let host = config
            .upstream
            .host_str()
            .ok_or_else(|| problem("the upstream URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = config.upstream.port_or_known_default().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| problem(format!("{host:?} is not a TLS server name: {e}")))?;
        let mut base = config.upstream.clone();
        base.set_path("");

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // As Go's net/http does: a request's head and body must not wait for an ACK.
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let pooled = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(Self {
            base,
            host,
            port,
            server_name,
            pooled,
            tls: TlsConnector::from(Arc::new(upgrade_tls)),
        })
    }

    /// The API server's URI for a request's path and query.
    pub(super) fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, String> {
        let path = path_and_query.map_or("/", PathAndQuery::as_str);
        format!("{}{}", self.base.as_str().trim_end_matches('/'), path)
            .parse()
            .map_err(|e| format!("cannot forward to that path: {e}"))
    }

    /// `host:port` as the `Host` header of an upgrade request names it.
    pub(super) fn authority(&self) -> &str {
        self.base.authority()
    }

    pub(super) fn pooled(&self) -> &Client<HttpsConnector<HttpConnector>, Body> {
        &self.pooled
    }

    /// A new TLS connection, never pooled and never reused: an upgrade gets a connection of its
    /// own, which ends with the upgrade or with the refusal.
    pub(super) async fn connect_fresh(&self) -> std::io::Result<TokioIo<TlsStream<TcpStream>>> {
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            self.tls.connect(self.server_name.clone(), tcp).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(stream) => stream.map(TokioIo::new),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting to the API server timed out",
            )),
        }
    }
}

/// The proxy's bearer token, as an `Authorization` header value marked sensitive (hyper then
/// keeps it out of debug output). Never logged.
pub(super) struct Credential {
    file: PathBuf,
    value: RwLock<HeaderValue>,
}

impl Credential {
    /// Reads the token now, so a missing or empty file stops start-up.
    pub(super) fn load(file: PathBuf) -> Result<Arc<Self>, ServeError> {
        let value = read_token(&file).map_err(|problem| ServeError::Credential {
            path: file.clone(),
            problem,
        })?;
        Ok(Arc::new(Self {
            file,
            value: RwLock::new(value),
        }))
    }

    pub(super) async fn current(&self) -> HeaderValue {
        self.value.read().await.clone()
    }

    /// Re-reads the file every [`CREDENTIAL_REFRESH`], so a rotated token is used without a
    /// restart. A failed read keeps the last token and says why; it ends when the proxy is gone.
    pub(super) fn keep_fresh(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CREDENTIAL_REFRESH).await;
                let Some(credential) = weak.upgrade() else {
                    break;
                };
                match read_token(&credential.file) {
                    Ok(value) => *credential.value.write().await = value,
                    Err(problem) => warn!(
                        file = %credential.file.display(),
                        problem,
                        "cannot re-read the proxy's token; keeping the last one"
                    ),
                }
            }
        });
    }
}

/// `Bearer <the file's content, trimmed>`. Problems name the file, never its content.
fn read_token(file: &std::path::Path) -> Result<HeaderValue, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let token = text.trim();
    if token.is_empty() {
        return Err("the token file is empty".into());
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the token file holds characters a header cannot carry".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    use super::*;

    fn ca_pem() -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    }

    #[test]
    fn the_verifier_is_rebuilt_when_the_ca_changes_and_only_then() {
        let (first, second) = (ca_pem(), ca_pem());
        let bundle = CaBundle::fixed(Some(first.clone().into_bytes()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let followed = FollowedCa::new(bundle.clone(), provider).unwrap();
        let before = followed.verifier();
        assert!(
            Arc::ptr_eq(&before, &followed.verifier()),
            "unchanged, not rebuilt"
        );
        bundle.replace(second.into_bytes()).unwrap();
        let after = followed.verifier();
        assert!(!Arc::ptr_eq(&before, &after), "a new CA, a new verifier");
        assert!(Arc::ptr_eq(&after, &followed.verifier()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rotated_token_is_used_after_the_next_refresh_and_a_broken_file_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "first").unwrap();
        let credential = Credential::load(file.clone()).unwrap();
        credential.keep_fresh();
        std::fs::write(&file, "second").unwrap();
        assert_eq!(credential.current().await, "Bearer first");
        tokio::time::sleep(CREDENTIAL_REFRESH + Duration::from_secs(1)).await;
        assert_eq!(credential.current().await, "Bearer second");
        std::fs::remove_file(&file).unwrap();
        tokio::time::sleep(CREDENTIAL_REFRESH).await;
        assert_eq!(credential.current().await, "Bearer second");
    }

    #[test]
    fn the_token_file_is_trimmed_and_refused_when_empty() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "  abc.def.ghi\n").unwrap();
        let value = read_token(file.path()).unwrap();
        assert_eq!(value, "Bearer abc.def.ghi");
        assert!(value.is_sensitive());
        std::fs::write(file.path(), "\n").unwrap();
        assert_eq!(
            read_token(file.path()).unwrap_err(),
            "the token file is empty"
        );
        std::fs::write(file.path(), "a\nb").unwrap();
        let problem = read_token(file.path()).unwrap_err();
        assert!(!problem.contains("a\nb"), "{problem}");
    }
}
