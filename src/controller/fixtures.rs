//! A scripted API server for unit tests of `reconcile`, in the style of kube-rs's controller-rs:
//! the test answers each request the reconciler makes, in order, and asserts what it was (method,
//! path, field manager, body). When the reconciler is done and drops its client, the script must
//! have nothing left, so an unexpected extra write fails the test too.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::http::{HeaderMap, Method, Request, Response};
use base64::Engine as _;
use kube::{Client, client::Body};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

use super::Context;
use crate::{
    config::{ControllerSettings, KubeconfigSettings},
    confirm::Confirmer,
    crd::{KubeconfigRequest, KubeconfigRequestSpec},
    metrics::Metrics,
    testing,
};

pub const NAMESPACE: &str = "team-a";
pub const REQUEST: &str = "alice";
pub const REQUEST_UID: &str = "0f1e2d3c-uid";
pub const TOKEN_SECRET: &str = "alice-token";
pub const TARGET_SECRET: &str = "alice-kubeconfig";
/// The admin's cap in tests: two hours.
pub const MAX_EXPIRATION_SECONDS: i64 = 7200;

/// How long the script waits for the reconciler's next request before failing the test.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn settings() -> KubeconfigSettings {
    KubeconfigSettings::for_tests("local", "https://127.0.0.1:6443")
}

/// A context whose client talks to the returned script instead of a cluster, with confirmation
/// by the API server turned off.
pub fn context() -> (Arc<Context>, ApiServer) {
    build_context(false)
}

/// As [`context`], with each credential confirmed by a SelfSubjectReview that the script answers
/// too.
pub fn confirming_context() -> (Arc<Context>, ApiServer) {
    build_context(true)
}

fn build_context(confirm: bool) -> (Arc<Context>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NAMESPACE);
    let metrics = Arc::new(Metrics::default());
    let confirmer = confirm.then(|| Confirmer::with_client(client.clone(), Arc::clone(&metrics)));
    let context = Context::new(
        client,
        testing::issuer().authenticator(Arc::clone(&metrics)),
        settings(),
        ControllerSettings {
            max_expiration_seconds: MAX_EXPIRATION_SECONDS,
        },
        metrics,
        confirmer,
    );
    (Arc::new(context), ApiServer(handle))
}

/// A stored request (namespace, uid, generation) for alice's token Secret.
pub fn request(spec: Value) -> KubeconfigRequest {
    let mut spec_json = json!({ "tokenSecretRef": { "name": TOKEN_SECRET } });
    if let (Some(base), Some(extra)) = (spec_json.as_object_mut(), spec.as_object()) {
        base.extend(extra.clone());
    }
    let spec: KubeconfigRequestSpec = serde_json::from_value(spec_json).expect("a valid spec");
    let mut request = KubeconfigRequest::new(REQUEST, spec);
    request.metadata.namespace = Some(NAMESPACE.into());
    request.metadata.uid = Some(REQUEST_UID.into());
    request.metadata.generation = Some(1);
    request
}

/// The token Secret as the API server returns it.
pub fn token_secret(token: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": TOKEN_SECRET, "namespace": NAMESPACE, "resourceVersion": "7" },
        "data": { "token": base64::engine::general_purpose::STANDARD.encode(token) },
    })
}

/// The owner reference the request puts on the Secrets it controls.
pub fn owner_reference() -> Value {
    json!({
        "apiVersion": "kubeconfig.dev/v1alpha1",
        "kind": "KubeconfigRequest",
        "name": REQUEST,
        "uid": REQUEST_UID,
        "controller": true,
    })
}

pub fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/secrets/{name}")
}

pub fn status_path() -> String {
    format!(
        "/apis/kubeconfig.dev/v1alpha1/namespaces/{NAMESPACE}/kubeconfigrequests/{REQUEST}/status"
    )
}

pub fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events")
}

pub struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// One request the reconciler made, waiting for its answer.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: HeaderMap,
    pub body: Value,
    respond: SendResponse<Response<Body>>,
}

impl ApiServer {
    /// The reconciler's next request; fails the test if none comes.
    pub async fn next(&mut self) -> Call {
        let (request, respond) = tokio::time::timeout(STEP_TIMEOUT, self.0.next_request())
            .await
            .expect("the reconciler made no further request")
            .expect("the reconciler's client is gone");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("read the request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON request body")
        };
        Call {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
            headers: parts.headers,
            body,
            respond,
        }
    }

    /// The next request, which must be `method` on `path`.
    pub async fn expect(&mut self, method: Method, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&method, path),
            "unexpected request, body {}",
            call.body
        );
        call
    }

    /// Fails if the reconciler made any request beyond those already answered.
    pub async fn assert_done(mut self) {
        if let Ok(Some((request, _))) =
            tokio::time::timeout(STEP_TIMEOUT, self.0.next_request()).await
        {
            panic!(
                "unexpected extra request {} {}",
                request.method(),
                request.uri()
            );
        }
    }
}

impl Call {
    /// Asserts a server-side apply under the operator's one field manager.
    pub fn assert_applied(&self) {
        assert_eq!(self.method, Method::PATCH);
        assert_eq!(
            self.query.get("fieldManager").map(String::as_str),
            Some(super::FIELD_MANAGER)
        );
        assert_eq!(self.query.get("force").map(String::as_str), Some("true"));
    }

    pub fn reply(self, status: u16, body: Value) {
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string().into_bytes()))
            .expect("a response");
        self.respond.send_response(response);
    }

    /// Answers with what was sent, as the API server does for a successful write.
    pub fn echo(self) {
        let body = self.body.clone();
        self.reply(200, body);
    }

    /// Answers a status patch with a whole request carrying the patched status.
    pub fn echo_request(self) {
        let mut stored = serde_json::to_value(request(json!({}))).expect("a request as JSON");
        stored["status"] = self.body["status"].clone();
        self.reply(200, stored);
    }

    pub fn not_found(self) {
        self.reply(
            404,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "not found", "reason": "NotFound", "code": 404,
            }),
        );
    }
}
