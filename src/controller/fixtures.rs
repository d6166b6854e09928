//! The controller's unit-test fixtures: a context whose client talks to the scripted API server
//! of [`crate::testing::api_server`], stored requests, and what only the controller's calls
//! assert (one field manager, a whole request echoed for a status patch).

use std::sync::Arc;

use axum::http::Method;
use base64::Engine as _;
use serde_json::{Value, json};

use super::Context;
use crate::{
    config::{ControllerSettings, KubeconfigSettings},
    confirm::Confirmer,
    crd::{KubeconfigRequest, KubeconfigRequestSpec},
    metrics::Metrics,
    testing::{self, api_server},
};
pub use api_server::{ApiServer, Call};

pub const NAMESPACE: &str = "team-a";
pub const REQUEST: &str = "alice";
pub const REQUEST_UID: &str = "0f1e2d3c-uid";
/// The username of the operator's own credential.
pub const OPERATOR: &str = "system:serviceaccount:kubeconfig-operator:kubeconfig-operator";
/// Who created the stored requests, as `spec.creator` records it.
pub const CREATOR: &str = "alice@example.com";
pub const TOKEN_SECRET: &str = "alice-token";
pub const TARGET_SECRET: &str = "alice-kubeconfig";
/// The admin's cap in tests: two hours.
pub const MAX_EXPIRATION_SECONDS: i64 = 7200;

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
    let (client, api) = api_server::client(NAMESPACE);
    let metrics = Arc::new(Metrics::default());
    let confirmer = confirm.then(|| Confirmer::with_client(client.clone(), Arc::clone(&metrics)));
    let context = Context::new(
        client,
        testing::issuer().authenticator(Arc::clone(&metrics)),
        settings(),
        settings(),
        ControllerSettings {
            max_expiration_seconds: MAX_EXPIRATION_SECONDS,
            ..ControllerSettings::default()
        },
        metrics,
        confirmer,
    );
    context
        .writer
        .set(OPERATOR.to_owned())
        .expect("a new context has no writer yet");
    (Arc::new(context), api)
}

/// A stored request (namespace, uid, generation) for alice's token Secret, holding the finalizer
/// that the controller adds before it first writes an ID token.
pub fn request(spec: Value) -> KubeconfigRequest {
    // Every request the API server stores has its creator recorded by the admission policy.
    let mut spec_json = json!({
        "tokenSecretRef": { "name": TOKEN_SECRET },
        "creator": { "username": CREATOR, "groups": ["team-a", "system:authenticated"] },
    });
    if let (Some(base), Some(extra)) = (spec_json.as_object_mut(), spec.as_object()) {
        base.extend(extra.clone());
    }
    let spec: KubeconfigRequestSpec = serde_json::from_value(spec_json).expect("a valid spec");
    let mut request = KubeconfigRequest::new(REQUEST, spec);
    request.metadata.namespace = Some(NAMESPACE.into());
    request.metadata.uid = Some(REQUEST_UID.into());
    request.metadata.generation = Some(1);
    request.metadata.finalizers = Some(vec![super::revoke::FINALIZER.into()]);
    request
}

pub fn request_path() -> String {
    format!("/apis/kubeconfig.dev/v1alpha1/namespaces/{NAMESPACE}/kubeconfigrequests/{REQUEST}")
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
    format!("{}/status", request_path())
}

pub fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events")
}

/// What only the controller's tests ask of a call.
pub trait ControllerCall {
    fn assert_applied(&self);
    fn echo_request(self);
}

impl ControllerCall for Call {
    /// Asserts a server-side apply under the operator's one field manager.
    fn assert_applied(&self) {
        assert_eq!(self.method, Method::PATCH);
        assert_eq!(
            self.query.get("fieldManager").map(String::as_str),
            Some(super::FIELD_MANAGER)
        );
        assert_eq!(self.query.get("force").map(String::as_str), Some("true"));
    }

    /// Answers a status patch with a whole request carrying the patched status.
    fn echo_request(self) {
        let mut stored = serde_json::to_value(request(json!({}))).expect("a request as JSON");
        stored["status"] = self.body["status"].clone();
        self.reply(200, stored);
    }
}
