//! `reconcile` against a scripted API server: each test asserts the exact requests made, in
//! order, and that nothing else was asked.

use std::{sync::Arc, time::Duration};

use axum::http::Method;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::{controller::Action, watcher};
use serde_json::{Value, json};

use super::{
    Context,
    fixtures::*,
    reconcile,
    stored::{self, StoredRequest},
};
use crate::{
    crd::{KubeconfigRequest, KubeconfigRequestSpec},
    testing,
};

const ALICE: &str = "alice@example.com";
const ACCOUNT: &str = "deployer";
const SECRET_UID: &str = "secret-uid-1";
const MINTED_JTI: &str = "minted-1";

fn alice_token() -> String {
    testing::issuer().token_for(ALICE, &["team-a"], 600)
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == type_))
}

fn ready(status: &Value) -> &Value {
    condition(status, "Ready").expect("a Ready condition")
}

fn kubeconfig_token(secret: &Value) -> String {
    let data = secret["data"]["kubeconfig"]
        .as_str()
        .expect("kubeconfig data");
    let text = String::from_utf8(STANDARD.decode(data).unwrap()).unwrap();
    let kubeconfig: Value = crate::yaml::from_str(&text).unwrap();
    kubeconfig["users"][0]["user"]["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `request` as the controller's store hands it to `reconcile`: filed in the index (with its
/// status's digest) first, then in its stored form, as the request watch does.
fn stored(ctx: &Context, request: KubeconfigRequest) -> Arc<StoredRequest> {
    ctx.index.observe(&watcher::Event::Apply(request.clone()));
    Arc::new(request.into())
}

/// Runs `reconcile` for `request` while `script` answers the API calls, then checks that nothing
/// else was asked.
async fn reconcile_with<F, Fut>(request: KubeconfigRequest, script: F) -> Action
where
    F: FnOnce(ApiServer) -> Fut + Send + 'static,
    Fut: Future<Output = ApiServer> + Send + 'static,
{
    let (ctx, api) = context();
    reconcile_in(ctx, api, request, script).await
}

async fn reconcile_in<F, Fut>(
    ctx: Arc<Context>,
    api: ApiServer,
    request: KubeconfigRequest,
    script: F,
) -> Action
where
    F: FnOnce(ApiServer) -> Fut + Send + 'static,
    Fut: Future<Output = ApiServer> + Send + 'static,
{
    let script = tokio::spawn(script(api));
    let action = reconcile(stored(&ctx, request), ctx)
        .await
        .expect("reconcile succeeds");
    let api = script.await.expect("the script ran to its end");
    api.assert_done().await;
    action
}

impl ApiServer {
    async fn absent(&mut self, name: &str) {
        self.expect(Method::GET, &secret_path(name))
            .await
            .not_found();
    }

    async fn token_secret(&mut self, token: &str) {
        self.expect(Method::GET, &secret_path(TOKEN_SECRET))
            .await
            .reply(200, token_secret(token));
    }

    /// The kubeconfig Secret as the request wrote it before.
    async fn existing(&mut self, secret: Value) {
        self.expect(Method::GET, &secret_path(TARGET_SECRET))
            .await
            .reply(200, secret);
    }

    /// The reads of a request seen for the first time: only `token` in its token Secret (the
    /// kubeconfig Secret is presumed absent, and created only if it is).
    async fn first_reads(&mut self, token: &str) {
        self.token_secret(token).await;
    }

    /// Answers the status patch and returns what was patched.
    async fn status(&mut self) -> Value {
        let status = self.expect(Method::PATCH, &status_path()).await;
        status.assert_applied();
        let body = status.body.clone();
        status.echo_request();
        body
    }

    /// The kubeconfig Secret exists as `secret`, and the ServiceAccount opted in.
    async fn secret_and_issuable_account(&mut self, secret: Value) {
        self.expect(Method::GET, &secret_path(TARGET_SECRET))
            .await
            .reply(200, secret);
        self.expect(Method::GET, &account_path())
            .await
            .reply(200, account(true));
    }

    /// Answers the SubjectAccessReview that asks whether the request's creator may still create
    /// tokens for the ServiceAccount.
    async fn creator_may_mint(&mut self, allowed: bool) {
        let review = self
            .expect(
                Method::POST,
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            )
            .await;
        let spec = &review.body["spec"];
        assert_eq!(
            (&spec["user"], &spec["groups"]),
            (&json!(CREATOR), &json!(["team-a", "system:authenticated"]))
        );
        assert_eq!(
            spec["resourceAttributes"],
            json!({ "namespace": NAMESPACE, "verb": "create", "group": "", "resource": "serviceaccounts", "subresource": "token", "name": ACCOUNT })
        );
        let mut answer = review.body.clone();
        answer["status"] = json!({ "allowed": allowed });
        review.reply(201, answer);
    }

    /// Answers the TokenRequest, which must bind to `secret_uid`, with `token`.
    async fn mint(&mut self, secret_uid: &str, token: String) {
        let mint = self
            .expect(Method::POST, &format!("{}/token", account_path()))
            .await;
        assert_eq!(mint.body["spec"]["boundObjectRef"]["uid"], secret_uid);
        let mut answer = mint.body.clone();
        answer["status"] = json!({ "token": token, "expirationTimestamp": "2099-01-01T00:00:00Z" });
        mint.reply(201, answer);
    }

    /// The status patch and the Issued Event, which go out together, in either order; returns
    /// what was patched.
    async fn issued_and_status(&mut self) -> Value {
        let (first, second) = (self.next().await, self.next().await);
        let (event, status) = if first.path == events_path() {
            (first, second)
        } else {
            (second, first)
        };
        assert_eq!(
            (&event.method, event.path.as_str(), &event.body["reason"]),
            (&Method::POST, events_path().as_str(), &json!("Issued")),
            "{}",
            event.body
        );
        assert_eq!(
            (&status.method, status.path.as_str()),
            (&Method::PATCH, status_path().as_str())
        );
        status.assert_applied();
        let body = status.body.clone();
        event.echo();
        status.echo_request();
        body
    }

    async fn event(&mut self, reason: &str, type_: &str) -> Value {
        let event = self.expect(Method::POST, &events_path()).await;
        assert_eq!(
            (&event.body["reason"], &event.body["type"]),
            (&json!(reason), &json!(type_)),
            "{}",
            event.body
        );
        let body = event.body.clone();
        event.echo();
        body
    }
}

#[tokio::test]
async fn a_valid_token_is_issued_into_a_secret_named_after_the_request() {
    let token = alice_token();
    let (ctx, api) = context();
    let issued = request(json!({}));
    let reference = stored::reference(&issued);
    let action = reconcile_in(Arc::clone(&ctx), api, issued, move |mut api| async move {
        api.first_reads(&token).await;
        let apply = api.expect(Method::PATCH, &secret_path(TARGET_SECRET)).await;
        apply.assert_applied();
        assert_eq!(
            apply.body["metadata"]["resourceVersion"], "18446744073709551615",
            "created only if absent: no Secret has this version"
        );
        assert_eq!(
            apply.body["metadata"]["ownerReferences"],
            json!([owner_reference()])
        );
        assert_eq!(
            apply.body["metadata"]["labels"]["kubeconfig.dev/request"],
            REQUEST
        );
        assert_eq!(kubeconfig_token(&apply.body), token);
        apply.echo();
        let status = api.issued_and_status().await;
        let ready = ready(&status);
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("True"), &json!("Issued"))
        );
        assert_eq!(status["status"]["username"], ALICE);
        assert_eq!(status["status"]["groups"], json!(["team-a"]));
        assert_eq!(status["status"]["secretName"], TARGET_SECRET);
        assert!(status["status"]["renewalTime"].is_string());
        assert!(condition(&status, "Expiring").is_none());
        // The test issuer's token has no jti: no id is made up for it.
        assert!(status["status"].get("credentialId").is_none(), "{status}");
        let message = ready["message"].as_str().unwrap();
        assert!(message.contains("has no jti"), "{message}");
        api
    })
    .await;
    // Woken by the controller's own wake-ups, not kube-runtime's requeue, at the renewal time:
    // 400 s after the token was signed (a third of 600 s before expiry).
    assert_eq!(action, Action::await_change());
    let wait = ctx
        .renewals
        .due_at(&reference)
        .expect("a wake-up is scheduled")
        - tokio::time::Instant::now();
    assert!(
        (Duration::from_secs(300)..=Duration::from_secs(402)).contains(&wait),
        "{wait:?}"
    );
}

#[tokio::test]
async fn the_finalizer_is_added_before_the_secret_receives_an_id_token() {
    let token = alice_token();
    let mut fresh = request(json!({}));
    fresh.metadata.finalizers = Some(vec!["example.com/other".into()]);
    fresh.metadata.resource_version = Some("41".into());
    reconcile_with(fresh, move |mut api| async move {
        api.first_reads(&token).await;
        let hold = api.expect(Method::PATCH, &request_path()).await;
        assert_eq!(
            hold.body,
            json!({"metadata": {
                "finalizers": ["example.com/other", "kubeconfig.dev/revoke-id-token"],
                "resourceVersion": "41",
            }}),
            "a merge patch conditional on the version it was computed from"
        );
        hold.reply(200, serde_json::to_value(request(json!({}))).unwrap());
        api.expect(Method::PATCH, &secret_path(TARGET_SECRET))
            .await
            .echo();
        let status = api.issued_and_status().await;
        // The test issuer's tokens have no jti: the token's digest names it, never the token.
        use sha2::Digest as _;
        assert_eq!(
            status["status"]["credential"],
            format!("SHA256={:x}", sha2::Sha256::digest(token.as_bytes()))
        );
        api
    })
    .await;
}

#[tokio::test]
async fn deleting_a_request_revokes_its_id_token_then_lets_it_go() {
    let mut deleted = request(json!({}));
    deleted.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    deleted.metadata.finalizers = Some(vec![
        "kubeconfig.dev/revoke-id-token".into(),
        "example.com/other".into(),
    ]);
    deleted.metadata.resource_version = Some("52".into());
    let expires_at = chrono::Utc::now() + chrono::Duration::hours(1);
    deleted.status = Some(crate::crd::KubeconfigRequestStatus {
        credential: Some("JTI=abc".into()),
        expires_at: Some(expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ..Default::default()
    });
    let action = reconcile_with(deleted, move |mut api| async move {
        let revocation = api
            .expect(
                Method::POST,
                "/apis/kubeconfig.dev/v1alpha1/kubeconfigrevocations",
            )
            .await;
        assert_eq!(revocation.body["spec"]["credential"], "JTI=abc");
        assert_eq!(
            revocation.body["spec"]["expiresAt"],
            expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        assert_eq!(
            revocation.body["metadata"]["labels"]["kubeconfig.dev/revoked-because"],
            "RequestDeleted"
        );
        assert_eq!(
            revocation.body["metadata"]["annotations"]["kubeconfig.dev/request"],
            format!("{NAMESPACE}/{REQUEST}")
        );
        // A retry finds the revocation it made before.
        revocation.reply(
            409,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409}),
        );
        let release = api.expect(Method::PATCH, &request_path()).await;
        assert_eq!(
            release.body,
            json!({"metadata": {"finalizers": ["example.com/other"], "resourceVersion": "52"}})
        );
        release.reply(200, serde_json::to_value(request(json!({}))).unwrap());
        api
    })
    .await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_secret_owned_by_someone_else_is_not_touched() {
    let token = alice_token();
    reconcile_with(request(json!({})), move |mut api| async move {
        api.first_reads(&token).await;
        // Applied only if no Secret has this version, that is, if none exists: refused.
        let apply = api.expect(Method::PATCH, &secret_path(TARGET_SECRET)).await;
        assert_eq!(
            apply.body["metadata"]["resourceVersion"],
            "18446744073709551615"
        );
        apply.reply(
            409,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409}),
        );
        api.expect(Method::GET, &secret_path(TARGET_SECRET))
            .await
            .reply(
                200,
                json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": { "name": TARGET_SECRET, "namespace": NAMESPACE },
                    "data": { "kubeconfig": "b3RoZXI=" },
                }),
            );
        api.event("SecretConflict", "Warning").await;
        let status = api.status().await;
        let ready = ready(&status);
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("False"), &json!("SecretConflict"))
        );
        assert!(status["status"].get("secretName").is_none());
        api
    })
    .await;
}

#[tokio::test]
async fn a_token_for_another_user_is_refused_without_writing_a_secret() {
    let token = alice_token();
    let spec = json!({ "user": "bob@example.com" });
    reconcile_with(request(spec), move |mut api| async move {
        api.first_reads(&token).await;
        api.absent(TARGET_SECRET).await;
        api.event("UserMismatch", "Warning").await;
        let status = api.status().await;
        let ready = ready(&status);
        assert_eq!(ready["reason"], "UserMismatch");
        let message = ready["message"].as_str().unwrap();
        assert!(
            message.contains("bob@example.com") && message.contains(ALICE),
            "{message}"
        );
        assert!(!message.contains(&token));
        api
    })
    .await;
}

/// What one reconcile of an unissued `request` writes: (the Secret, the status).
async fn first_issue(request: KubeconfigRequest, token: String) -> (Value, Value) {
    let (ctx, mut api) = context();
    let script = tokio::spawn(async move {
        api.first_reads(&token).await;
        let apply = api.expect(Method::PATCH, &secret_path(TARGET_SECRET)).await;
        let written = apply.body.clone();
        apply.echo();
        let status = api.issued_and_status().await;
        (written, status["status"].clone())
    });
    reconcile(stored(&ctx, request), ctx).await.unwrap();
    script.await.unwrap()
}

#[tokio::test]
async fn nothing_changed_means_nothing_written() {
    let token = alice_token();
    let (written_secret, written_status) = first_issue(request(json!({})), token.clone()).await;
    let mut stored = request(json!({}));
    stored.status = Some(serde_json::from_value(written_status).unwrap());
    reconcile_with(stored, move |mut api| async move {
        api.existing(written_secret).await;
        api.token_secret(&token).await;
        api
    })
    .await;
}

/// A request whose status names no Secret although it wrote one (say, the operator stopped
/// between the two writes): the Secret it presumed absent is found its own, and kept as it is.
#[tokio::test]
async fn a_secret_of_its_own_that_status_does_not_name_is_found_and_kept() {
    let token = alice_token();
    let (written_secret, _) = first_issue(request(json!({})), token.clone()).await;
    reconcile_with(request(json!({})), move |mut api| async move {
        api.first_reads(&token).await;
        api.expect(Method::PATCH, &secret_path(TARGET_SECRET))
            .await
            .reply(
                409,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409}),
            );
        api.existing(written_secret).await;
        let status = api.status().await;
        assert_eq!(ready(&status)["reason"], "Issued");
        assert_eq!(status["status"]["secretName"], TARGET_SECRET);
        api
    })
    .await;
}

#[tokio::test]
async fn a_secret_whose_owner_reference_was_stripped_is_adopted_again() {
    let token = alice_token();
    let (mut written_secret, written_status) = first_issue(request(json!({})), token.clone()).await;
    written_secret["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    let mut stored = request(json!({}));
    stored.status = Some(serde_json::from_value(written_status).unwrap());
    reconcile_with(stored, move |mut api| async move {
        api.existing(written_secret).await;
        api.token_secret(&token).await;
        let apply = api.expect(Method::PATCH, &secret_path(TARGET_SECRET)).await;
        assert_eq!(
            apply.body["metadata"]["ownerReferences"],
            json!([owner_reference()])
        );
        apply.echo();
        api.event("Issued", "Normal").await;
        api
    })
    .await;
}

#[tokio::test]
async fn a_changed_secret_name_deletes_the_old_secret_after_writing_the_new_one() {
    let token = alice_token();
    let (_, written_status) = first_issue(request(json!({})), token.clone()).await;
    let mut moved = request(json!({ "secretName": "moved" }));
    moved.status = Some(serde_json::from_value(written_status).unwrap());
    reconcile_with(moved, move |mut api| async move {
        api.absent("moved").await;
        api.token_secret(&token).await;
        api.expect(Method::PATCH, &secret_path("moved"))
            .await
            .echo();
        api.expect(Method::GET, &secret_path(TARGET_SECRET))
            .await
            .reply(
                200,
                json!({
                    "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                    "metadata": {
                        "name": TARGET_SECRET, "namespace": NAMESPACE, "uid": "old-uid",
                        "ownerReferences": [owner_reference()],
                    },
                }),
            );
        let delete = api
            .expect(Method::DELETE, &secret_path(TARGET_SECRET))
            .await;
        assert_eq!(delete.body["preconditions"]["uid"], "old-uid");
        delete.reply(
            200,
            json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success" }),
        );
        api.event("SecretDeleted", "Normal").await;
        let status = api.issued_and_status().await;
        assert_eq!(status["status"]["secretName"], "moved");
        api
    })
    .await;
}

#[tokio::test]
async fn a_missing_token_secret_is_reported() {
    reconcile_with(request(json!({})), |mut api| async move {
        api.absent(TOKEN_SECRET).await;
        // Refused: whether the request has a Secret of its own to keep naming is read now.
        api.absent(TARGET_SECRET).await;
        api.event("TokenSecretNotFound", "Warning").await;
        let status = api.status().await;
        assert_eq!(ready(&status)["reason"], "TokenSecretNotFound");
        api
    })
    .await;
}

#[tokio::test]
async fn a_secret_the_api_server_refuses_is_an_invalid_spec_not_a_retry() {
    let token = alice_token();
    // Without the finalizer yet: it is added once, before the first write.
    let mut fresh = request(json!({}));
    fresh.metadata.finalizers = None;
    let action = reconcile_with(fresh, move |mut api| async move {
        api.first_reads(&token).await;
        api.expect(Method::PATCH, &request_path())
            .await
            .reply(200, serde_json::to_value(request(json!({}))).unwrap());
        let invalid = || {
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "metadata.labels: Invalid value", "reason": "Invalid", "code": 422,
            })
        };
        // Refused when created unread; read then, found absent, and refused again.
        api.expect(Method::PATCH, &secret_path(TARGET_SECRET))
            .await
            .reply(422, invalid());
        api.absent(TARGET_SECRET).await;
        api.expect(Method::PATCH, &secret_path(TARGET_SECRET))
            .await
            .reply(422, invalid());
        api.event("InvalidSpec", "Warning").await;
        let status = api.status().await;
        let ready = ready(&status);
        assert_eq!(ready["reason"], "InvalidSpec");
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("metadata.labels")
        );
        api
    })
    .await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn an_id_token_past_its_renewal_time_is_reported_expiring_but_stays_ready() {
    let token = alice_token();
    // A renewBefore longer than the token's whole life: renewal is due at once.
    let spec = json!({ "renewBefore": "15m" });
    reconcile_with(request(spec), move |mut api| async move {
        api.first_reads(&token).await;
        api.expect(Method::PATCH, &secret_path(TARGET_SECRET))
            .await
            .echo();
        let event = api.event("TokenExpiring", "Warning").await;
        assert!(event["note"].as_str().unwrap().contains("fresh token"));
        let status = api.issued_and_status().await;
        assert_eq!(ready(&status)["status"], "True");
        let expiring = condition(&status, "Expiring").expect("an Expiring condition");
        assert_eq!(
            (&expiring["status"], &expiring["reason"]),
            (&json!("True"), &json!("TokenExpiring"))
        );
        api
    })
    .await;
}

fn account(annotated: bool) -> Value {
    let mut account = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": { "name": ACCOUNT, "namespace": NAMESPACE },
    });
    if annotated {
        account["metadata"]["annotations"] = json!({ "kubeconfig.dev/issuable": "true" });
    }
    account
}

fn account_path() -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{ACCOUNT}")
}

/// A token shaped like a bound ServiceAccount token (its signature is never checked here).
fn bound_token(secret_uid: &str, issued_at: i64, lifetime: i64) -> String {
    let claims = json!({
        "sub": format!("system:serviceaccount:{NAMESPACE}:{ACCOUNT}"),
        "iat": issued_at,
        "exp": issued_at + lifetime,
        "jti": MINTED_JTI,
        "kubernetes.io": { "namespace": NAMESPACE, "secret": { "name": TARGET_SECRET, "uid": secret_uid } },
    });
    let encode =
        |value: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    format!(
        "{}.{}.c2ln",
        encode(&json!({ "alg": "RS256" })),
        encode(&claims)
    )
}

#[tokio::test]
async fn a_service_account_without_the_opt_in_is_refused() {
    let spec = json!({ "tokenSecretRef": null, "serviceAccount": { "name": ACCOUNT } });
    reconcile_with(request(spec), |mut api| async move {
        api.absent(TARGET_SECRET).await;
        api.expect(Method::GET, &account_path())
            .await
            .reply(200, account(false));
        api.event("ServiceAccountNotIssuable", "Warning").await;
        let status = api.status().await;
        let message = ready(&status)["message"].as_str().unwrap().to_owned();
        assert!(
            message
                .contains("kubectl annotate serviceaccount deployer kubeconfig.dev/issuable=true"),
            "{message}"
        );
        api
    })
    .await;
}

#[tokio::test]
async fn a_service_account_token_is_minted_bound_to_the_secret_and_capped() {
    // Asks for more than the admin's cap of two hours.
    let spec = json!({ "tokenSecretRef": null, "serviceAccount": { "name": ACCOUNT, "expirationSeconds": 86400, "audiences": ["https://kubernetes.default.svc"] } });
    reconcile_with(request(spec), |mut api| async move {
        api.absent(TARGET_SECRET).await;
        api.expect(Method::GET, &account_path())
            .await
            .reply(200, account(true));
        api.creator_may_mint(true).await;
        let create = api.expect(Method::PATCH, &secret_path(TARGET_SECRET)).await;
        create.assert_applied();
        assert!(create.body.get("data").is_none(), "{}", create.body);
        let mut created = create.body.clone();
        created["metadata"]["uid"] = json!(SECRET_UID);
        create.reply(201, created);
        let mint = api
            .expect(Method::POST, &format!("{}/token", account_path()))
            .await;
        assert_eq!(mint.body["spec"]["expirationSeconds"], MAX_EXPIRATION_SECONDS);
        assert_eq!(mint.body["spec"]["audiences"], json!(["https://kubernetes.default.svc"]));
        assert_eq!(
            mint.body["spec"]["boundObjectRef"],
            json!({ "apiVersion": "v1", "kind": "Secret", "name": TARGET_SECRET, "uid": SECRET_UID })
        );
        let now = chrono::Utc::now().timestamp();
        let minted = bound_token(SECRET_UID, now, MAX_EXPIRATION_SECONDS);
        let expiry = chrono::DateTime::from_timestamp(now + MAX_EXPIRATION_SECONDS, 0).unwrap();
        let mut answer = mint.body.clone();
        answer["status"] = json!({ "token": minted, "expirationTimestamp": expiry.to_rfc3339_opts(chrono::SecondsFormat::Secs, true) });
        mint.reply(201, answer);
        let apply = api.expect(Method::PATCH, &secret_path(TARGET_SECRET)).await;
        assert_eq!(kubeconfig_token(&apply.body), minted);
        // The id the API server's audit log records the token's requests under, as it derives
        // it from the minted token's jti.
        assert_eq!(
            apply.body["metadata"]["annotations"]["kubeconfig.dev/credential-id"],
            "JTI=minted-1"
        );
        apply.echo();
        let status = api.issued_and_status().await;
        assert_eq!(ready(&status)["reason"], "Issued");
        assert_eq!(status["status"]["credentialId"], "JTI=minted-1");
        let message = ready(&status)["message"].as_str().unwrap();
        assert!(message.contains("credential id JTI=minted-1"), "{message}");
        assert_eq!(status["status"]["username"], format!("system:serviceaccount:{NAMESPACE}:{ACCOUNT}"));
        assert_eq!(status["status"]["grantedExpirationSeconds"], MAX_EXPIRATION_SECONDS);
        api
    })
    .await;
}

fn kubeconfig_secret(uid: &str, token: &str) -> Value {
    let crate::kubeconfig::Rendered::Kubeconfig(rendered) = crate::kubeconfig::render(
        &settings(),
        crate::crd::Format::Token,
        &crate::oidc::token::IdToken::from(token.to_owned()),
        None,
    )
    .unwrap() else {
        panic!("the token format renders a kubeconfig");
    };
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": TARGET_SECRET, "namespace": NAMESPACE, "uid": uid,
            "ownerReferences": [owner_reference()],
            "labels": { "app.kubernetes.io/managed-by": "kubeconfig-operator", "kubeconfig.dev/request": REQUEST },
        },
        "type": "Opaque",
        "data": { "kubeconfig": STANDARD.encode(rendered) },
    })
}

#[tokio::test]
async fn a_service_account_token_not_yet_due_is_kept_and_one_due_is_replaced() {
    let spec = json!({ "tokenSecretRef": null, "serviceAccount": { "name": ACCOUNT } });
    let now = chrono::Utc::now().timestamp();
    // Issued a minute ago for an hour: renewal (at 40 minutes) is not due; only labels and
    // annotations of the token's own are re-applied.
    let fresh = bound_token(SECRET_UID, now - 60, 3600);
    let kept = kubeconfig_secret(SECRET_UID, &fresh);
    reconcile_with(request(spec.clone()), move |mut api| async move {
        api.secret_and_issuable_account(kept).await;
        let apply = api.expect(Method::PATCH, &secret_path(TARGET_SECRET)).await;
        assert_eq!(kubeconfig_token(&apply.body), fresh, "the token is kept");
        apply.echo();
        api.issued_and_status().await;
        api
    })
    .await;

    // Issued 50 minutes ago: past its renewal time, so a new token is minted.
    let due = bound_token(SECRET_UID, now - 3000, 3600);
    let stale = kubeconfig_secret(SECRET_UID, &due);
    reconcile_with(request(spec.clone()), move |mut api| async move {
        api.secret_and_issuable_account(stale).await;
        api.creator_may_mint(true).await;
        api.mint(SECRET_UID, bound_token(SECRET_UID, now, 3600))
            .await;
        let apply = api.expect(Method::PATCH, &secret_path(TARGET_SECRET)).await;
        assert_ne!(kubeconfig_token(&apply.body), due);
        apply.echo();
        api.issued_and_status().await;
        api
    })
    .await;

    // A token bound to another Secret (this one was deleted and re-created) is replaced too.
    let orphan = kubeconfig_secret("new-uid", &bound_token(SECRET_UID, now - 60, 3600));
    reconcile_with(request(spec), move |mut api| async move {
        api.secret_and_issuable_account(orphan).await;
        api.creator_may_mint(true).await;
        api.mint("new-uid", bound_token("new-uid", now, 3600)).await;
        api.expect(Method::PATCH, &secret_path(TARGET_SECRET))
            .await
            .echo();
        api.issued_and_status().await;
        api
    })
    .await;
}

/// Issue 26, item 4: a token due for renewal is not replaced once its request's creator may no
/// longer mint the account's tokens; the Secret keeps the last one, and stays named in status.
#[tokio::test]
async fn a_due_token_is_not_replaced_once_the_creator_lost_the_right_to_mint_it() {
    let spec = json!({ "tokenSecretRef": null, "serviceAccount": { "name": ACCOUNT } });
    let now = chrono::Utc::now().timestamp();
    let due = kubeconfig_secret(SECRET_UID, &bound_token(SECRET_UID, now - 3000, 3600));
    reconcile_with(request(spec.clone()), move |mut api| async move {
        api.secret_and_issuable_account(due).await;
        api.creator_may_mint(false).await;
        let event = api.event("CreatorForbidden", "Warning").await;
        let note = event["note"].as_str().unwrap_or_default().to_owned();
        assert!(
            note.contains(&format!("{CREATOR}, who created this request, may no longer create tokens for ServiceAccount {ACCOUNT}")),
            "{note}"
        );
        let status = api.status().await;
        assert_eq!(ready(&status)["reason"], "CreatorForbidden");
        assert_eq!(status["status"]["secretName"], TARGET_SECRET);
        api
    })
    .await;

    // A request stored before creators were recorded cannot be checked: it is not renewed.
    let mut unrecorded = request(spec);
    unrecorded.spec.creator = None;
    let due = kubeconfig_secret(SECRET_UID, &bound_token(SECRET_UID, now - 3000, 3600));
    reconcile_with(unrecorded, move |mut api| async move {
        api.secret_and_issuable_account(due).await;
        api.event("CreatorForbidden", "Warning").await;
        let status = api.status().await;
        let message = ready(&status)["message"].as_str().unwrap_or_default();
        assert!(message.contains("create the request again"), "{message}");
        api
    })
    .await;
}

/// A ServiceAccount request of generation 1 whose status names its Secret and holds only the
/// Ready condition: `ready` ("True" or "False") for `reason`, since `since`.
fn account_request_reporting(ready: &str, reason: &str, since: &str) -> KubeconfigRequest {
    let mut request =
        request(json!({ "tokenSecretRef": null, "serviceAccount": { "name": ACCOUNT } }));
    request.status = Some(
        serde_json::from_value(json!({
            "conditions": [{
                "type": "Ready", "status": ready, "reason": reason,
                "message": format!("reported as {reason}"),
                "observedGeneration": 1, "lastTransitionTime": since,
            }],
            "secretName": TARGET_SECRET,
            "observedGeneration": 1,
        }))
        .unwrap(),
    );
    request
}

/// Issue 26, item 8: once either installation reported SecondWriter for this generation, a
/// reconciliation neither mints, nor writes the Secret, nor rewrites the status, and looks again
/// later.
#[tokio::test]
async fn a_reported_second_writer_is_left_alone() {
    let reported = account_request_reporting("False", "SecondWriter", "2026-12-05T08:00:00Z");
    let now = chrono::Utc::now().timestamp();
    let due = kubeconfig_secret(SECRET_UID, &bound_token(SECRET_UID, now - 3000, 3600));
    let action = reconcile_with(reported, move |mut api| async move {
        api.existing(due).await;
        api
    })
    .await;
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
}

/// Issue 26, item 8: a Secret this installation wrote, rewritten since by another one, is left
/// as it is and reported as SecondWriter, looked at again within seconds: the other's status
/// write for its overwrite may land just after this report and replace it.
#[tokio::test]
async fn a_secret_another_installation_rewrote_is_reported_and_soon_looked_at_again() {
    let token = alice_token();
    let (mut rewritten, written_status) = first_issue(request(json!({})), token.clone()).await;
    let other = "system:serviceaccount:second:kubeconfig-operator";
    rewritten["metadata"]["annotations"][crate::controller::WRITER_ANNOTATION] = json!(other);
    rewritten["metadata"]["resourceVersion"] = json!("100");
    let mut issued = request(json!({}));
    issued.status = Some(serde_json::from_value(written_status).unwrap());
    let (ctx, api) = context();
    let filed = stored(&ctx, issued);
    // This installation's own last write came before the other's.
    ctx.index
        .wrote(NAMESPACE, TARGET_SECRET, Some("99".to_owned()));
    let script = tokio::spawn(async move {
        let mut api = api;
        api.existing(rewritten).await;
        api.token_secret(&token).await;
        let warning = api.event("SecondWriter", "Warning").await;
        let note = warning["note"].as_str().unwrap_or_default().to_owned();
        assert!(note.contains(other) && note.contains(OPERATOR), "{note}");
        let status = api.status().await;
        assert_eq!(ready(&status)["reason"], "SecondWriter");
        api
    });
    let action = reconcile(filed, ctx).await.expect("reconcile succeeds");
    script.await.expect("the script ran").assert_done().await;
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
}

/// Once the Secret was deleted and written again by the installation left, its status says
/// Issued. A reconciliation that starts before the store caught up with that status still sees
/// SecondWriter; it must not write that back, or the request stays refused with nobody
/// writing it.
#[tokio::test]
async fn a_second_writer_report_from_a_lagging_store_is_not_written_back() {
    let lagging = account_request_reporting("False", "SecondWriter", "2026-12-05T08:00:00Z");
    let issued = account_request_reporting("True", "Issued", "2026-12-05T08:05:00Z");
    let (ctx, api) = context();
    // The watch delivered the Issued status while the reconciliation held the version before.
    ctx.index.observe(&watcher::Event::Apply(issued));
    let now = chrono::Utc::now().timestamp();
    let rewritten = kubeconfig_secret(SECRET_UID, &bound_token(SECRET_UID, now - 60, 3600));
    let script = tokio::spawn(async move {
        let mut api = api;
        api.existing(rewritten).await;
        api
    });
    // Asking anything beyond the Secret (the status patch) would wait for an answer forever.
    let action = tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(Arc::new(lagging.into()), ctx),
    )
    .await
    .expect("the reconciliation reads the Secret and nothing else")
    .expect("reconcile succeeds");
    script.await.expect("the script ran").assert_done().await;
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
}

/// A burst of due requests must not leave a reconciliation per request waiting inside
/// kube-runtime, whose runner polls every one it holds each time one of them finishes. A request
/// whose namespace has no free slot ends at once, without a call to the API server (the script
/// answers none, so a call would never return), and is handed the next slot given back.
#[tokio::test]
async fn a_request_without_a_free_slot_ends_at_once_and_is_handed_the_next() {
    let (ctx, _api) = context();
    let mut handoffs = ctx.namespaces.handoffs().boxed();
    let busy: Vec<_> = (0..super::PER_NAMESPACE_CONCURRENCY)
        .map(|i| {
            ctx.namespaces
                .take(&stored::Request::new(&format!("busy-{i}")).within(NAMESPACE))
                .unwrap()
        })
        .collect();
    let waiting = stored(&ctx, request(json!({})));
    let action = tokio::time::timeout(
        Duration::from_secs(5),
        reconcile(Arc::clone(&waiting), Arc::clone(&ctx)),
    )
    .await
    .expect("ends at once")
    .expect("not an error");
    assert_eq!(action, Action::await_change());
    drop(busy);
    assert_eq!(
        handoffs.next().await,
        Some(stored::reference(waiting.as_ref()))
    );
}

#[tokio::test]
async fn a_deleted_request_leaves_no_backoff_state_behind() {
    let (ctx, _api) = context();
    let request: Arc<StoredRequest> = Arc::new(request(json!({})).into());
    let error = super::Error::NotStored;
    super::error_policy(Arc::clone(&request), &error, Arc::clone(&ctx));
    assert_eq!(ctx.tracked_failures(), 1);
    ctx.forget(&stored::reference(request.as_ref()));
    assert_eq!(ctx.tracked_failures(), 0);
}

#[tokio::test]
async fn a_write_refused_because_the_namespace_is_terminating_is_not_retried() {
    let (ctx, _api) = context();
    let request: Arc<StoredRequest> = Arc::new(request(json!({})).into());
    let refused = |message: &str| super::Error::Kube {
        action: "applying the kubeconfig Secret",
        source: kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(403)
                .boxed(),
        ),
    };
    let terminating = refused(
        "secrets \"alice-kubeconfig\" is forbidden: unable to create new content in namespace team because it is being terminated",
    );
    assert_eq!(
        super::error_policy(Arc::clone(&request), &terminating, Arc::clone(&ctx)),
        Action::await_change()
    );
    assert_eq!(ctx.tracked_failures(), 0);
    // Any other 403 is retried with backoff.
    let forbidden = refused("secrets is forbidden: User cannot create resource");
    assert_ne!(
        super::error_policy(Arc::clone(&request), &forbidden, Arc::clone(&ctx)),
        Action::await_change()
    );
    assert_eq!(ctx.tracked_failures(), 1);
}

mod confirm;
mod memory;

#[test]
fn the_store_keeps_what_reconciling_reads_and_nothing_else() {
    let mut stored = request(json!({}));
    stored.metadata.resource_version = Some("41".into());
    stored.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    stored.metadata.managed_fields = Some(vec![Default::default()]);
    stored.metadata.labels = Some([("team".to_owned(), "payments".to_owned())].into());
    stored.metadata.annotations = Some(
        [
            (
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                "{\"spec\":{}}".to_owned(),
            ),
            ("team".to_owned(), "payments".to_owned()),
            (
                crate::crd::RENEW_ANNOTATION.to_owned(),
                "2026-12-05T10:00:00Z".to_owned(),
            ),
        ]
        .into(),
    );
    let read_back = json!({
        "secretName": TARGET_SECRET, "credentialId": "JTI=one", "credential": "abc",
        "expiresAt": "2026-12-05T12:00:00Z", "renewalTime": "2026-12-05T11:40:00Z",
        "lastUsedAt": "2026-12-05T10:30:00Z", "lastRenewRequest": "2026-12-05T09:00:00Z",
    });
    let mut status = read_back.clone();
    status["conditions"] = json!([
        { "type": "Ready", "status": "True", "reason": "Issued", "message": "Secret alice-kubeconfig holds",
          "observedGeneration": 1, "lastTransitionTime": "2026-12-05T08:00:00Z" },
        { "type": "Expiring", "status": "True", "reason": "TokenExpiring", "message": "put a fresh token",
          "observedGeneration": 1, "lastTransitionTime": "2026-12-05T08:00:00Z" },
    ]);
    status["username"] = json!(ALICE);
    status["groups"] = json!(["team-a"]);
    status["identity"] = json!({ "username": ALICE, "groups": ["team-a"] });
    status["grantedExpirationSeconds"] = json!(3600);
    status["observedGeneration"] = json!(1);
    stored.status = Some(serde_json::from_value(status).unwrap());
    let spec_before = stored.spec.clone();

    let stored = StoredRequest::from(stored).request().unwrap();

    assert_eq!(stored.metadata.managed_fields, None);
    assert_eq!(stored.metadata.labels, None);
    assert_eq!(
        stored.metadata.annotations,
        Some(
            [(
                crate::crd::RENEW_ANNOTATION.to_owned(),
                "2026-12-05T10:00:00Z".to_owned()
            )]
            .into()
        )
    );
    // What reconciling reads of the metadata stays as it was.
    let full = request(json!({}));
    assert_eq!(
        (
            &stored.metadata.name,
            &stored.metadata.namespace,
            &stored.metadata.uid,
            stored.metadata.generation,
            &stored.metadata.finalizers,
        ),
        (
            &full.metadata.name,
            &full.metadata.namespace,
            &full.metadata.uid,
            full.metadata.generation,
            &full.metadata.finalizers,
        )
    );
    assert_eq!(stored.metadata.resource_version.as_deref(), Some("41"));
    assert!(stored.metadata.deletion_timestamp.is_some());
    // The creator is read only before minting a ServiceAccount token.
    assert!(spec_before.creator.is_some());
    assert_eq!(
        stored.spec,
        KubeconfigRequestSpec {
            creator: None,
            ..spec_before
        }
    );
    let mut kept = serde_json::to_value(stored.status.as_ref().unwrap()).unwrap();
    let conditions = kept.as_object_mut().unwrap().remove("conditions").unwrap();
    assert_eq!(kept, read_back);
    assert_eq!(conditions[0]["message"], "");
    assert_eq!(conditions[1]["message"], "");
    assert_eq!(
        (
            &conditions[0]["lastTransitionTime"],
            &conditions[0]["observedGeneration"]
        ),
        (&json!("2026-12-05T08:00:00Z"), &json!(1))
    );
}

/// The store holds the finalizers and the status's times in a compact form when they are in
/// the form the operator writes them; any other form is kept as it is.
#[test]
fn the_store_gives_back_finalizers_and_times_as_they_were() {
    let mut usual = request(json!({}));
    usual.status = Some(
        serde_json::from_value(json!({
            "expiresAt": "2026-12-05T12:00:00Z", "renewalTime": "2026-12-05T11:40:00Z",
        }))
        .unwrap(),
    );
    let stored = StoredRequest::from(usual.clone());
    assert_eq!(
        kube::Resource::meta(&stored).finalizers,
        None,
        "held as a flag"
    );
    let read_back = stored.request().unwrap();
    assert_eq!(read_back.metadata.finalizers, usual.metadata.finalizers);
    assert_eq!(read_back.status, usual.status);

    let mut unusual = usual;
    unusual.metadata.finalizers = Some(vec![
        "example.com/other".into(),
        super::revoke::FINALIZER.into(),
    ]);
    unusual.status = Some(
        serde_json::from_value(json!({
            "expiresAt": "2026-12-05T12:00:00.250Z", "renewalTime": "2026-12-05T12:40:00+01:00",
        }))
        .unwrap(),
    );
    let read_back = StoredRequest::from(unusual.clone()).request().unwrap();
    assert_eq!(read_back.metadata.finalizers, unusual.metadata.finalizers);
    assert_eq!(read_back.status, unusual.status);
}

/// kube-runtime's store copies a stored request's uid and resourceVersion into its key, where
/// nothing reads them: the store keeps them beside the metadata, and gives them back, with a
/// uid in any other form than the API server's, and a time of the epoch itself.
#[test]
fn the_store_gives_back_uid_and_resource_version_as_they_were() {
    let mut usual = request(json!({}));
    usual.metadata.uid = Some("0b4a7c52-1f0e-4c8e-9a51-00000000002a".into());
    usual.metadata.resource_version = Some("1200042".into());
    let stored = StoredRequest::from(usual.clone());
    let meta = kube::Resource::meta(&stored);
    assert_eq!((&meta.uid, &meta.resource_version), (&None, &None));
    assert_eq!(stored.uid().as_deref(), usual.metadata.uid.as_deref());
    let read_back = stored.request().unwrap();
    assert_eq!(read_back.metadata, usual.metadata);

    let mut unusual = usual;
    unusual.metadata.uid = Some("0B4A7C52-1F0E-4C8E-9A51-00000000002A".into());
    unusual.status = Some(
        serde_json::from_value(json!({
            "expiresAt": "1970-01-01T00:00:00Z", "renewalTime": "1970-01-01T00:00:01Z",
        }))
        .unwrap(),
    );
    let stored = StoredRequest::from(unusual.clone());
    assert_eq!(stored.uid().as_deref(), unusual.metadata.uid.as_deref());
    let read_back = stored.request().unwrap();
    assert_eq!(read_back.metadata, unusual.metadata);
    assert_eq!(read_back.status, unusual.status);
}

/// Every field of a ServiceAccount request's spec is read back as it was, its creator included
/// (asked before each token is minted).
#[test]
fn the_store_keeps_a_whole_service_account_spec() {
    let full = request(json!({
        "tokenSecretRef": null,
        "serviceAccount": { "name": ACCOUNT, "expirationSeconds": 7200, "audiences": ["vault"] },
        "user": ALICE, "namespace": "apps", "secretName": "deploy-config", "format": "argocd",
        "secretKeys": ["value", "kubeconfig"],
        "secretTemplate": { "labels": { "team": "a" }, "annotations": { "note": "x" } },
        "renewBeforePercentage": 30,
    }));
    assert!(full.spec.creator.is_some() && full.spec.token_secret_ref.is_none());
    let read_back = StoredRequest::from(full.clone()).request().unwrap();
    assert_eq!(read_back.spec, full.spec);
    assert_eq!(read_back.status, None);
}

/// The store drops what the status says of the identity; a status that differs from the one
/// due only there is still written again.
#[tokio::test]
async fn a_status_differing_only_in_what_the_store_drops_is_written_again() {
    let token = alice_token();
    let (written_secret, mut written_status) = first_issue(request(json!({})), token.clone()).await;
    written_status["username"] = json!("mallory@example.com");
    written_status["groups"] = json!(["admins"]);
    let mut stored = request(json!({}));
    stored.status = Some(serde_json::from_value(written_status).unwrap());
    reconcile_with(stored, move |mut api| async move {
        api.existing(written_secret).await;
        api.token_secret(&token).await;
        let status = api.status().await;
        assert_eq!(status["status"]["username"], ALICE);
        assert_eq!(status["status"]["groups"], json!(["team-a"]));
        api
    })
    .await;
}
