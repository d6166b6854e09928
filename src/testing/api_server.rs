//! A scripted API server for unit tests, in the style of kube-rs's controller-rs: the test answers
//! each request the code under test makes, in order, and asserts what it was (method, path,
//! query, body). When the code is done and drops its client, the script must have nothing left,
//! so an unexpected extra call fails the test too. The controller's `reconcile` and the
//! Confirmer's SelfSubjectReviews are both tested against it.

use std::{collections::BTreeMap, time::Duration};

use axum::http::{HeaderMap, Method, Request, Response};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

/// How long the script waits for the next request before failing the test.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for `namespace` whose every request goes to the returned script.
pub fn client(namespace: &str) -> (Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, namespace), ApiServer(handle))
}

pub struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// One request the code under test made, waiting for its answer.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: HeaderMap,
    pub body: Value,
    respond: SendResponse<Response<Body>>,
}

impl ApiServer {
    /// The code's next request; fails the test if none comes.
    pub async fn next(&mut self) -> Call {
        let (request, respond) = tokio::time::timeout(STEP_TIMEOUT, self.0.next_request())
            .await
            .expect("no further request came")
            .expect("the code under test's client is gone");
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

    /// Fails if the code under test made any request beyond those already answered.
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
