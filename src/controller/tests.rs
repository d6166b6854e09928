//! `reconcile` against a scripted API server: each test asserts the exact requests made.

use std::sync::Arc;

use axum::http::Method;
use serde_json::{Value, json};

use super::{fixtures::*, reconcile};
use crate::{crd::KubeconfigRequest, testing};

const ALICE: &str = "alice@example.com";

fn alice_token() -> String {
    testing::issuer().token_for(ALICE, &["team-a"], 600)
}

fn target_secret() -> String {
    super::derived_secret_name(ALICE)
}

fn ready(status: &Value) -> &Value {
    status["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == "Ready"))
        .expect("a Ready condition")
}

/// Runs `reconcile` for `request` while `script` answers the API calls, then checks that nothing
/// else was asked.
async fn reconcile_with<F, Fut>(
    request: KubeconfigRequest,
    script: F,
) -> kube::runtime::controller::Action
where
    F: FnOnce(ApiServer) -> Fut + Send + 'static,
    Fut: Future<Output = ApiServer> + Send + 'static,
{
    let (ctx, api) = context();
    let script = tokio::spawn(script(api));
    let action = reconcile(Arc::new(request), ctx)
        .await
        .expect("reconcile succeeds");
    let api = script.await.expect("the script ran to its end");
    api.assert_done().await;
    action
}

#[tokio::test]
async fn a_valid_token_is_issued_into_a_new_secret() {
    let token = alice_token();
    let secret = target_secret();
    let action = reconcile_with(request(json!({})), move |mut api| async move {
        api.expect(Method::GET, &secret_path(TOKEN_SECRET))
            .await
            .reply(200, token_secret(&token));
        api.expect(Method::GET, &secret_path(&secret))
            .await
            .not_found();
        let apply = api.expect(Method::PATCH, &secret_path(&secret)).await;
        apply.assert_applied();
        assert_eq!(
            apply.body["metadata"]["ownerReferences"],
            json!([owner_reference()])
        );
        assert_eq!(
            apply.body["metadata"]["labels"]["kubeconfig.dev/request"],
            REQUEST
        );
        let kubeconfig = apply.body["data"]["kubeconfig"]
            .as_str()
            .expect("kubeconfig data");
        let kubeconfig =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, kubeconfig).unwrap();
        let kubeconfig: Value =
            crate::yaml::from_str(std::str::from_utf8(&kubeconfig).unwrap()).unwrap();
        assert_eq!(kubeconfig["users"][0]["user"]["token"], token.as_str());
        apply.echo();
        let event = api.expect(Method::POST, &events_path()).await;
        assert_eq!(event.body["reason"], "Issued");
        assert_eq!(event.body["type"], "Normal");
        event.echo();
        let status = api.expect(Method::PATCH, &status_path()).await;
        status.assert_applied();
        let condition = ready(&status.body);
        assert_eq!(
            (&condition["status"], &condition["reason"]),
            (&json!("True"), &json!("Issued"))
        );
        assert_eq!(status.body["status"]["username"], ALICE);
        assert_eq!(status.body["status"]["groups"], json!(["team-a"]));
        assert_eq!(status.body["status"]["secretName"], secret.as_str());
        status.echo_request();
        api
    })
    .await;
    // Woken at expiry to report TokenExpired.
    assert!(
        format!("{action:?}").contains("requeue_after: Some"),
        "{action:?}"
    );
}

#[tokio::test]
async fn a_secret_owned_by_someone_else_is_not_touched() {
    let token = alice_token();
    let secret = target_secret();
    reconcile_with(request(json!({})), move |mut api| async move {
        api.expect(Method::GET, &secret_path(TOKEN_SECRET))
            .await
            .reply(200, token_secret(&token));
        api.expect(Method::GET, &secret_path(&secret)).await.reply(
            200,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": secret, "namespace": NAMESPACE },
                "data": { "kubeconfig": "b3RoZXI=" },
            }),
        );
        let event = api.expect(Method::POST, &events_path()).await;
        assert_eq!(
            (&event.body["reason"], &event.body["type"]),
            (&json!("SecretConflict"), &json!("Warning"))
        );
        event.echo();
        let status = api.expect(Method::PATCH, &status_path()).await;
        let condition = ready(&status.body);
        assert_eq!(
            (&condition["status"], &condition["reason"]),
            (&json!("False"), &json!("SecretConflict"))
        );
        assert!(status.body["status"].get("secretName").is_none());
        status.echo_request();
        api
    })
    .await;
}

#[tokio::test]
async fn a_token_for_another_user_is_refused_without_writing_a_secret() {
    let token = alice_token();
    reconcile_with(
        request(json!({ "user": "bob@example.com" })),
        move |mut api| async move {
            api.expect(Method::GET, &secret_path(TOKEN_SECRET))
                .await
                .reply(200, token_secret(&token));
            let event = api.expect(Method::POST, &events_path()).await;
            assert_eq!(event.body["reason"], "UserMismatch");
            event.echo();
            let status = api.expect(Method::PATCH, &status_path()).await;
            let condition = ready(&status.body);
            assert_eq!(condition["reason"], "UserMismatch");
            let message = condition["message"].as_str().unwrap();
            assert!(
                message.contains("bob@example.com") && message.contains(ALICE),
                "{message}"
            );
            assert!(!message.contains(&token));
            status.echo_request();
            api
        },
    )
    .await;
}

#[tokio::test]
async fn nothing_changed_means_nothing_written() {
    let token = alice_token();
    let secret = target_secret();
    // First pass: learn exactly what the reconciler writes.
    let (written_secret, written_status) = {
        let (ctx, mut api) = context();
        let token = token.clone();
        let secret = secret.clone();
        let script = tokio::spawn(async move {
            api.expect(Method::GET, &secret_path(TOKEN_SECRET))
                .await
                .reply(200, token_secret(&token));
            api.expect(Method::GET, &secret_path(&secret))
                .await
                .not_found();
            let apply = api.expect(Method::PATCH, &secret_path(&secret)).await;
            let written = apply.body.clone();
            apply.echo();
            api.expect(Method::POST, &events_path()).await.echo();
            let status = api.expect(Method::PATCH, &status_path()).await;
            let written_status = status.body["status"].clone();
            status.echo_request();
            (written, written_status)
        });
        reconcile(Arc::new(request(json!({}))), ctx).await.unwrap();
        script.await.unwrap()
    };
    // Second pass: the Secret and the status already say exactly that.
    let mut stored = request(json!({}));
    stored.status = Some(serde_json::from_value(written_status).unwrap());
    reconcile_with(stored, move |mut api| async move {
        api.expect(Method::GET, &secret_path(TOKEN_SECRET))
            .await
            .reply(200, token_secret(&token));
        api.expect(Method::GET, &secret_path(&secret))
            .await
            .reply(200, written_secret);
        api
    })
    .await;
}

#[tokio::test]
async fn a_missing_token_secret_is_reported_once() {
    reconcile_with(request(json!({})), |mut api| async move {
        api.expect(Method::GET, &secret_path(TOKEN_SECRET))
            .await
            .not_found();
        api.expect(Method::POST, &events_path()).await.echo();
        let status = api.expect(Method::PATCH, &status_path()).await;
        assert_eq!(ready(&status.body)["reason"], "TokenSecretNotFound");
        status.echo_request();
        api
    })
    .await;
}
