//! The operator serving its API server proxy on 127.0.0.1, for the tests that go through it: a
//! certificate made now by a CA made now, and the proxy ServiceAccount's token (config/proxy).
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::support::{
    Cluster, eventually, kubectl, kubectl_as_token, kubectl_plain,
    operator::{Issuer, Operator, free_port, operator_kubeconfig},
    requests::{http_get_kubeconfig, write_temp},
};

pub const PROXY_NAMESPACE: &str = "kubeconfig-operator";
pub const PROXY_SERVICE_ACCOUNT: &str = "kubeconfig-operator-proxy";

/// Installs config/proxy once per test binary and returns a fresh token of its ServiceAccount,
/// once the API server's authorizer lets that ServiceAccount impersonate: the authorizer learns
/// of new RBAC objects from its own watch, so a grant can be refused for a moment after it is
/// made.
pub fn proxy_token(cluster: &Cluster) -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        // Creates the operator's namespace, among the rest.
        operator_kubeconfig(cluster);
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/proxy");
        kubectl(cluster, &["apply", "-n", PROXY_NAMESPACE, "-k", config]);
        let token = kubectl(
            cluster,
            &[
                "create",
                "token",
                PROXY_SERVICE_ACCOUNT,
                "-n",
                PROXY_NAMESPACE,
                "--duration=2h",
            ],
        );
        eventually(
            Duration::from_secs(30),
            "the API server lets the proxy's ServiceAccount impersonate users",
            || {
                kubectl_as_token(cluster, &token, &["auth", "can-i", "impersonate", "users"])
                    .is_ok_and(|answer| answer.trim() == "yes")
            },
        );
        token
    })
}

/// Grants the proxy's ServiceAccount the impersonation of the extra fields `keys` (a
/// ClusterRole and its binding, both `name`), as README "What the proxy's ServiceAccount is
/// granted" shows, and returns once the API server's authorizer has the grant (see
/// [`proxy_token`]).
pub fn grant_proxy_extras(cluster: &Cluster, name: &str, keys: &[&str]) {
    let token = proxy_token(cluster);
    grant_extras(
        cluster,
        name,
        (PROXY_NAMESPACE, PROXY_SERVICE_ACCOUNT),
        token,
        keys,
    );
}

/// As [`grant_proxy_extras`], to the ServiceAccount `account` (namespace, name) whose token is
/// `token`.
pub fn grant_extras(
    cluster: &Cluster,
    name: &str,
    account: (&str, &str),
    token: &str,
    keys: &[&str],
) {
    let resources: Vec<String> = keys.iter().map(|key| format!("userextras/{key}")).collect();
    let extras = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name},
                "rules": [{
                    "apiGroups": ["authentication.k8s.io"],
                    "resources": resources,
                    "verbs": ["impersonate"],
                }],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": [{
                    "kind": "ServiceAccount",
                    "name": account.1,
                    "namespace": account.0,
                }],
            },
        ],
    });
    let file = write_temp(&extras.to_string());
    kubectl(cluster, &["apply", "-f", file.path().to_str().unwrap()]);
    // `kubectl auth can-i` cannot name an extra (it looks `userextras` up in discovery and
    // finds nothing), so the wait asks the API server directly; without client-side
    // validation, which would list CRDs, something the ServiceAccount may not do.
    for key in keys {
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {
                "group": "authentication.k8s.io",
                "resource": "userextras",
                "subresource": key,
                "verb": "impersonate",
            }},
        });
        let review = write_temp(&review.to_string());
        let create = [
            "create",
            "--validate=false",
            "-f",
            review.path().to_str().unwrap(),
            "-o",
            "jsonpath={.status.allowed}",
        ];
        eventually(
            Duration::from_secs(30),
            &format!("the API server lets the proxy's ServiceAccount impersonate the extra {key}"),
            || {
                kubectl_as_token(cluster, token, &create)
                    .is_ok_and(|allowed| allowed.trim() == "true")
            },
        );
    }
}

/// The operator with its proxy on 127.0.0.1, a certificate made now by a CA made now, and the
/// proxy ServiceAccount's token.
pub struct Proxied {
    pub operator: Operator,
    pub address: SocketAddr,
    pub url: String,
    pub ca_pem: String,
    pub proxy_token: String,
    pub dir: tempfile::TempDir,
}

impl Proxied {
    pub fn start(cluster: &Cluster, namespace: &str) -> Self {
        Self::start_with(cluster, namespace, Issuer::Main, &[])
    }

    /// As [`Proxied::start`], for `issuer`'s tokens and with further `run` flags.
    pub fn start_with(cluster: &Cluster, namespace: &str, issuer: Issuer, flags: &[&str]) -> Self {
        Self::start_as(
            cluster,
            namespace,
            issuer,
            flags,
            proxy_token(cluster).to_owned(),
        )
    }

    /// As [`Proxied::start_with`], the proxy holding `proxy_token` in place of the token of
    /// config/proxy's ServiceAccount.
    pub fn start_as(
        cluster: &Cluster,
        namespace: &str,
        issuer: Issuer,
        flags: &[&str],
        proxy_token: String,
    ) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let certificate = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let file = |name: &str, content: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let cert_file = file("tls.crt", &certificate.pem());
        let key_file = file("tls.key", &key.serialize_pem());
        let ca_file = file("ca.crt", &ca.pem());
        let token_file = file("token", &proxy_token);
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let url = format!("https://{address}");
        let proxy_listen = address.to_string();
        let mut args = vec![
            "--proxy-listen",
            &proxy_listen,
            "--proxy-tls-cert-file",
            &cert_file,
            "--proxy-tls-key-file",
            &key_file,
            "--proxy-url",
            &url,
            "--proxy-ca-file",
            &ca_file,
            "--proxy-token-file",
            &token_file,
        ];
        args.extend_from_slice(flags);
        let operator = Operator::start(cluster, namespace, issuer, &args);
        Proxied {
            operator,
            address,
            url,
            ca_pem: ca.pem(),
            proxy_token,
            dir,
        }
    }

    /// The kubeconfig the operator issues for `token`, written to a file.
    pub fn kubeconfig_for(&self, token: &str, name: &str) -> PathBuf {
        let response = http_get_kubeconfig(&self.operator.base_url, Some(token), "");
        assert_eq!(response.status, 200, "{}", response.body);
        let path = self.dir.path().join(name);
        std::fs::write(&path, &response.body).unwrap();
        path
    }

    pub fn tls(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls_pemfile::certs(&mut self.ca_pem.as_bytes()) {
            roots.add(certificate.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    /// A WebSocket watch of the ConfigMaps in `namespace`, as a client writes it, with
    /// `credential` (an `Authorization` or `Sec-WebSocket-Protocol` header line).
    pub fn websocket_watch(&self, namespace: &str, credential: &str) -> String {
        format!(
            "GET /api/v1/namespaces/{namespace}/configmaps?watch=true HTTP/1.1\r\nHost: {}\r\n{credential}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nOrigin: https://127.0.0.1\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            self.address
        )
    }

    /// A list of the ConfigMaps in `namespace` with `token`, on a connection that closes after.
    pub fn list_configmaps(&self, namespace: &str, token: &str) -> String {
        format!(
            "GET /api/v1/namespaces/{namespace}/configmaps HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
            self.address
        )
    }

    /// Opens a TLS connection, sends `request` and reads the answer's head, leaving the
    /// connection open (a watch goes on streaming).
    pub async fn open(
        &self,
        request: &str,
    ) -> (tokio_rustls::client::TlsStream<TcpStream>, String) {
        let tcp = TcpStream::connect(self.address).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = self.tls().connect(name, tcp).await.unwrap();
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            while !head.ends_with(b"\r\n\r\n") {
                if tls.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
        })
        .await;
        assert!(read.is_ok(), "no answer within 20 s: {head:?}");
        (tls, String::from_utf8_lossy(&head).into_owned())
    }

    /// Sends `request` as written (header names in any case, duplicates as given) over TLS and
    /// reads until the proxy closes the connection, or `timeout`.
    pub fn raw(&self, request: &[u8], timeout: Duration) -> String {
        runtime().block_on(async {
            let tcp = TcpStream::connect(self.address).await.unwrap();
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = self.tls().connect(name, tcp).await.unwrap();
            tls.write_all(request).await.unwrap();
            let mut answer = Vec::new();
            let read = tokio::time::timeout(timeout, tls.read_to_end(&mut answer)).await;
            let mut text = String::from_utf8_lossy(&answer).into_owned();
            if read.is_err() {
                text.push_str("\n<still open>");
            }
            text
        })
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let mut full = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
    full.extend_from_slice(args);
    kubectl_plain(&full)
}
