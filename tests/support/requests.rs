//! Helpers for tests that drive KubeconfigRequests and the HTTP endpoint.

use std::{io::Write, time::Duration};

use base64::Engine as _;

use super::{Cluster, eventually, kubectl, kubectl_result};

/// A file that lives as long as the returned handle.
pub fn write_temp(content: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("create a temporary file");
    file.write_all(content.as_bytes())
        .expect("write a temporary file");
    file.flush().expect("flush a temporary file");
    file
}

/// Creates or updates a Secret holding `token` under `key`, without putting the token on a
/// command line.
pub fn put_token_secret(cluster: &Cluster, namespace: &str, name: &str, key: &str, token: &str) {
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "stringData": {key: token},
    });
    let file = write_temp(&manifest.to_string());
    kubectl(cluster, &["apply", "-f", file.path().to_str().unwrap()]);
}

/// Applies a KubeconfigRequest; `spec` is the YAML body under `spec:` (continuation lines
/// indented by two spaces).
pub fn apply_request(cluster: &Cluster, namespace: &str, name: &str, spec: &str) {
    let file = write_temp(&request_manifest(namespace, name, spec));
    kubectl(cluster, &["apply", "-f", file.path().to_str().unwrap()]);
}

/// Applies a KubeconfigRequest as the holder of `token` (`kubectl --token`), so a test acts as
/// the least-privileged tenant rather than admin.
pub fn apply_request_as(
    cluster: &Cluster,
    token: &str,
    namespace: &str,
    name: &str,
    spec: &str,
) -> Result<String, String> {
    manifest_as(
        cluster,
        token,
        "apply",
        &request_manifest(namespace, name, spec),
    )
}

/// `kubectl <verb> -f` of `manifest` as the holder of `token`, the manifest (which may hold a
/// token) in a file rather than on a command line.
pub fn manifest_as(
    cluster: &Cluster,
    token: &str,
    verb: &str,
    manifest: &str,
) -> Result<String, String> {
    let file = write_temp(manifest);
    super::kubectl_as_token(cluster, token, &[verb, "-f", file.path().to_str().unwrap()])
}

/// A KubeconfigRequest `name` reading `token` from the Secret `<name>-token` (key `token`): the
/// usual pair, in one call.
pub fn request_with_token(cluster: &Cluster, namespace: &str, name: &str, token: &str) {
    let secret = format!("{name}-token");
    put_token_secret(cluster, namespace, &secret, "token", token);
    apply_request(
        cluster,
        namespace,
        name,
        &format!("tokenSecretRef: {{name: {secret}}}"),
    );
}

pub fn request_manifest(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: kubeconfig.dev/v1alpha1\nkind: KubeconfigRequest\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  {spec}\n"
    )
}

pub fn decoded_secret_key(cluster: &Cluster, namespace: &str, name: &str, key: &str) -> String {
    let encoded = kubectl(
        cluster,
        &[
            "get",
            "secret",
            name,
            "-n",
            namespace,
            "-o",
            &format!("jsonpath={{.data.{key}}}"),
        ],
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .expect("Secret data is base64");
    String::from_utf8(bytes).expect("Secret data is UTF-8")
}

/// `kubectl auth whoami -o json` with `kubeconfig` (YAML): the API server's `userInfo` for it, or
/// kubectl's complaint.
pub fn whoami_with_kubeconfig(kubeconfig: &str) -> Result<serde_json::Value, String> {
    let file = write_temp(kubeconfig);
    let answer = super::kubectl_plain(&[
        "--kubeconfig",
        file.path().to_str().unwrap(),
        "auth",
        "whoami",
        "-o",
        "json",
    ])?;
    let review: serde_json::Value = serde_json::from_str(&answer).expect("whoami prints JSON");
    Ok(review["status"]["userInfo"].clone())
}

/// The reasons of the Events recorded about the request `name`, space-separated, as admin.
pub fn event_reasons(cluster: &Cluster, namespace: &str, name: &str) -> String {
    kubectl(
        cluster,
        &[
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "jsonpath={.items[*].reason}",
        ],
    )
}

/// The Ready condition's reason, if any.
pub fn ready_reason(cluster: &Cluster, namespace: &str, name: &str) -> Option<String> {
    ready_field(cluster, namespace, name, "reason")
}

fn ready_field(cluster: &Cluster, namespace: &str, name: &str, field: &str) -> Option<String> {
    let jsonpath = format!("jsonpath={{.status.conditions[?(@.type==\"Ready\")].{field}}}");
    kubectl_result(
        cluster,
        &["get", "kcr", name, "-n", namespace, "-o", &jsonpath],
    )
    .ok()
    .filter(|value| !value.is_empty())
}

/// Waits until the request's Ready condition has `reason`, and returns its message.
pub fn wait_for_reason(cluster: &Cluster, namespace: &str, name: &str, reason: &str) -> String {
    eventually(
        Duration::from_secs(90),
        &format!("kcr/{name} in {namespace} reports reason {reason}"),
        || ready_reason(cluster, namespace, name).as_deref() == Some(reason),
    );
    ready_field(cluster, namespace, name, "message").unwrap_or_default()
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The header's value, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .unwrap_or("")
    }
}

/// `GET /kube-config` with an optional bearer token; `query` starts with `?` or is empty.
pub fn http_get_kubeconfig(base_url: &str, token: Option<&str>, query: &str) -> HttpResponse {
    http_get(base_url, "/kube-config", token, query)
}

pub fn http_get(base_url: &str, path: &str, token: Option<&str>, query: &str) -> HttpResponse {
    let authorization = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .iter()
        .map(|value| ("authorization", value.as_str()))
        .collect();
    http_request(
        base_url,
        reqwest::Method::GET,
        &format!("{path}{query}"),
        &headers,
    )
}

/// Any method on `path` (with its query), with the given headers.
pub fn http_request(
    base_url: &str,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    runtime.block_on(async {
        let mut request = reqwest::Client::new().request(method, format!("{base_url}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the operator answers HTTP");
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = response.text().await.expect("read the response body");
        HttpResponse {
            status,
            headers,
            body,
        }
    })
}
