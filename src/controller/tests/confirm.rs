//! The API server's confirmation of each credential: its identity goes into status, its refusal
//! refuses the request, its silence is retried.

use super::*;

const REVIEWS: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";

/// Runs `reconcile` on `ctx` while `script` answers, then checks nothing else was asked.
async fn reconcile_on<F, Fut>(
    ctx: Arc<super::super::Context>,
    api: ApiServer,
    request: KubeconfigRequest,
    script: F,
) -> Result<Action, super::super::Error>
where
    F: FnOnce(ApiServer) -> Fut + Send + 'static,
    Fut: Future<Output = ApiServer> + Send + 'static,
{
    let script = tokio::spawn(script(api));
    let result = reconcile(stored(&ctx, request), ctx).await;
    script
        .await
        .expect("the script ran to its end")
        .assert_done()
        .await;
    result
}

fn user_info() -> Value {
    json!({
        "username": ALICE,
        "uid": "alice-uid",
        "groups": ["team-a", "system:authenticated"],
        "extra": { "example.com/tenant": ["a"] },
    })
}

impl ApiServer {
    /// Answers the SelfSubjectReview, which must carry `token` and nothing of the operator's,
    /// with `status` and, for 201, `user_info`.
    async fn review(&mut self, token: &str, status: u16) {
        let review = self.expect(Method::POST, REVIEWS).await;
        assert_eq!(
            review.headers[axum::http::header::AUTHORIZATION],
            format!("Bearer {token}").as_str()
        );
        assert_eq!(review.body["kind"], "SelfSubjectReview");
        match status {
            201 => {
                let mut answer = review.body.clone();
                answer["status"] = json!({ "userInfo": user_info() });
                review.reply(201, answer);
            }
            code => review.reply(
                code,
                json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "Unauthorized", "reason": "Unauthorized", "code": code,
                }),
            ),
        }
    }
}

#[tokio::test]
async fn a_confirmed_token_is_issued_with_the_api_servers_identity_asked_once() {
    let token = alice_token();
    let (ctx, api) = confirming_context();
    let script = tokio::spawn(async move {
        let mut api = api;
        api.token_secret(&token).await;
        api.review(&token, 201).await;
        let apply = api.expect(Method::PATCH, &secret_path(TARGET_SECRET)).await;
        assert_eq!(kubeconfig_token(&apply.body), token);
        let written = apply.body.clone();
        apply.echo();
        let status = api.issued_and_status().await;
        assert_eq!(ready(&status)["reason"], "Issued");
        assert_eq!(status["status"]["identity"], user_info());
        (api, written, status["status"].clone())
    });
    reconcile(stored(&ctx, request(json!({}))), Arc::clone(&ctx))
        .await
        .expect("reconcile succeeds");
    let (api, written_secret, written_status) = script.await.unwrap();
    // Within the verdict's 10 s, the same token is not reviewed again: nothing changed, so
    // nothing is written either.
    let mut stored = request(json!({}));
    stored.status = Some(serde_json::from_value(written_status).unwrap());
    reconcile_on(ctx, api, stored, move |mut api| async move {
        api.expect(Method::GET, &secret_path(TARGET_SECRET))
            .await
            .reply(200, written_secret);
        api
    })
    .await
    .expect("reconcile succeeds");
}

#[tokio::test]
async fn a_token_the_api_server_refuses_is_rejected_and_no_secret_written() {
    let token = alice_token();
    let (ctx, api) = confirming_context();
    let metrics = Arc::clone(&ctx.metrics);
    let action = reconcile_on(ctx, api, request(json!({})), move |mut api| async move {
        api.token_secret(&token).await;
        api.review(&token, 401).await;
        api.absent(TARGET_SECRET).await;
        api.event("RejectedByAPIServer", "Warning").await;
        let status = api.status().await;
        let ready = ready(&status);
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("False"), &json!("RejectedByAPIServer"))
        );
        let message = ready["message"].as_str().unwrap();
        assert!(message.contains("401"), "{message}");
        assert!(message.contains("confirmWithApiServer"), "{message}");
        assert!(!message.contains(&token));
        assert!(status["status"].get("identity").is_none());
        api
    })
    .await
    .expect("a refusal is an outcome, not an error");
    assert_eq!(action, Action::await_change());
    assert!(
        metrics
            .render()
            .contains(r#"token_validation_failures_total{reason="RejectedByAPIServer"} 1"#)
    );
}

#[tokio::test]
async fn an_api_server_that_cannot_answer_is_retried_not_a_refusal() {
    let token = alice_token();
    let (ctx, api) = confirming_context();
    let error = reconcile_on(ctx, api, request(json!({})), move |mut api| async move {
        api.token_secret(&token).await;
        api.review(&token, 503).await;
        api
    })
    .await
    .expect_err("an unanswered review is retried");
    assert!(
        matches!(
            error,
            super::super::Error::Confirm(crate::confirm::ConfirmError::Unavailable(_))
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_kept_service_account_token_the_api_server_refuses_is_replaced() {
    let spec = json!({ "tokenSecretRef": null, "serviceAccount": { "name": ACCOUNT } });
    let now = chrono::Utc::now().timestamp();
    // Not due for renewal, but the API server no longer accepts it.
    let dead = bound_token(SECRET_UID, now - 60, 3600);
    let kept = kubeconfig_secret(SECRET_UID, &dead);
    let (ctx, api) = confirming_context();
    reconcile_on(ctx, api, request(spec), move |mut api| async move {
        api.secret_and_issuable_account(kept).await;
        api.review(&dead, 401).await;
        let fresh = bound_token(SECRET_UID, now, 3600);
        api.creator_may_mint(true).await;
        api.mint(SECRET_UID, fresh.clone()).await;
        api.review(&fresh, 201).await;
        let apply = api.expect(Method::PATCH, &secret_path(TARGET_SECRET)).await;
        assert_eq!(kubeconfig_token(&apply.body), fresh);
        apply.echo();
        let status = api.issued_and_status().await;
        assert_eq!(ready(&status)["reason"], "Issued");
        assert_eq!(status["status"]["identity"]["uid"], "alice-uid");
        api
    })
    .await
    .expect("reconcile succeeds");
}
