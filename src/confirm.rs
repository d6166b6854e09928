//! The API server's own verdict on a token: a `SelfSubjectReview` sent with nothing but that
//! token. The operator verifies tokens itself, but only the API server's answer says whether a
//! kubeconfig holding the token will work, and as whom (username, uid, groups and extra, after
//! every prefix and mapping the API server applies). The controller asks before it writes a
//! Secret, the download before it answers.
//!
//! The question goes to the API server the operator itself talks to, found the way its own client
//! is (in-cluster settings or `KUBECONFIG`: URL, CA, TLS server name, HTTP proxy), but with every
//! credential of the operator's removed, so the only identity the API server can see is the
//! token's. That is not always the `server` written into kubeconfigs: when that is a proxy which
//! authenticates tokens itself (this operator's `proxy`, or another), the API server may not
//! accept the token directly at all, and confirmation must be turned off.

use std::{sync::Arc, time::Duration};

use axum::http::{HeaderValue, header};
use chrono::{DateTime, Utc};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, UserInfo};
use kube::{Client, Resource, api::PostParams, config::AuthInfo};

use crate::{
    crd::Format,
    metrics::Metrics,
    oidc::token::{IdToken, Identity, credential_id_in},
    verdicts::Verdicts,
};

/// A review the API server has not answered by then is treated as the API server being down:
/// a reconcile or a download must not hang on it.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// The reason a refusal by the API server is reported under: a status condition, an HTTP
/// challenge, a metric label.
pub const REJECTED_BY_API_SERVER: &str = "RejectedByAPIServer";

/// The id under which the API server's audit log records every request of a kubeconfig in
/// `format` holding the token (`authentication.kubernetes.io/credential-id`, `JTI=<jti>`), so
/// that one query finds them: the API server's own answer when it was asked (`confirmed`), else
/// the operator's reading of the token (`identity`). `None` for a token without `jti`, whose
/// requests the audit log cannot tell apart, and for an `exec` kubeconfig, which holds no token:
/// its requests carry the tokens kubelogin fetches.
pub fn credential_id<'a>(
    format: Format,
    confirmed: Option<&'a UserInfo>,
    identity: &'a Identity,
) -> Option<&'a str> {
    match (format, confirmed) {
        (Format::Exec, _) => None,
        (_, Some(user)) => user.extra.as_ref().and_then(credential_id_in),
        (_, None) => credential_id_in(&identity.extra),
    }
}

/// Why the API server gave no identity for a token.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// 401: the API server does not accept the token, so a kubeconfig holding it cannot work.
    #[error(
        "the API server does not accept this token (SelfSubjectReview answered 401 Unauthorized): it does not trust the token's issuer or audience, or judges its claims differently from the operator; a kubeconfig with it would not work. Use a token the API server accepts, or, if issued kubeconfigs point at a proxy that authenticates tokens itself, turn confirmWithApiServer off"
    )]
    Refused,
    /// Anything else (unreachable, 5xx, 429, a 403 for SelfSubjectReview itself): nothing is
    /// known about the token, so this is worth retrying and never the token's fault.
    #[error("cannot ask the API server who the token belongs to: {0}")]
    Unavailable(String),
}

/// Sends SelfSubjectReviews. Cheap to share: one connection pool for every token, each review
/// carrying its own `Authorization` header, and one cache of answers, so the controller, the
/// download and the page together ask about a token once per 10 s.
#[derive(Clone)]
pub struct Confirmer {
    /// A client without credentials of its own.
    anonymous: Client,
    answers: Arc<Verdicts<UserInfo>>,
    /// Each refusal counts in `token_validation_failures_total`, whichever path asked.
    metrics: Arc<Metrics>,
}

impl Confirmer {
    /// A confirmer reaching the API server as `config` does, with all of `config`'s credentials
    /// (token, client certificate, exec plugin, impersonation, extra headers) removed.
    pub fn new(config: &kube::Config, metrics: Arc<Metrics>) -> Result<Self, kube::Error> {
        let mut config = config.clone();
        config.auth_info = AuthInfo::default();
        config.headers.clear();
        Ok(Self::with_client(Client::try_from(config)?, metrics))
    }

    /// A confirmer over a client that must carry no credentials (unit tests script it).
    pub fn with_client(anonymous: Client, metrics: Arc<Metrics>) -> Self {
        Self {
            anonymous,
            answers: Arc::default(),
            metrics,
        }
    }

    /// Who the API server says `token`'s holder is; `expires_at` bounds how long the answer is
    /// reused.
    pub async fn confirm(
        &self,
        token: &IdToken,
        expires_at: DateTime<Utc>,
    ) -> Result<UserInfo, ConfirmError> {
        let answer = self
            .answers
            .get_or_judge(token, || async {
                Ok((self.review(token).await?, expires_at))
            })
            .await;
        if let Err(ConfirmError::Refused) = answer {
            self.metrics.count_token_failure(REJECTED_BY_API_SERVER);
        }
        answer
    }

    /// See [`Verdicts::forget_expired`].
    pub fn forget_expired(&self) {
        self.answers.forget_expired();
    }

    async fn review(&self, token: &IdToken) -> Result<UserInfo, ConfirmError> {
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", token.expose()))
            // A token that cannot even be sent is one the API server cannot accept.
            .map_err(|_| ConfirmError::Refused)?;
        authorization.set_sensitive(true);
        let body = serde_json::to_vec(&SelfSubjectReview::default())
            .map_err(|error| ConfirmError::Unavailable(error.to_string()))?;
        let mut request = kube::core::Request::new(SelfSubjectReview::url_path(&(), None))
            .create(&PostParams::default(), body)
            .map_err(|error| ConfirmError::Unavailable(error.to_string()))?;
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, authorization);
        let review: SelfSubjectReview =
            match tokio::time::timeout(REVIEW_TIMEOUT, self.anonymous.request(request)).await {
                Err(_) => {
                    return Err(ConfirmError::Unavailable(format!(
                        "no answer within {REVIEW_TIMEOUT:?}"
                    )));
                }
                Ok(Err(kube::Error::Api(status))) if status.code == 401 => {
                    return Err(ConfirmError::Refused);
                }
                Ok(Err(error)) => return Err(ConfirmError::Unavailable(error.to_string())),
                Ok(Ok(review)) => review,
            };
        review
            .status
            .and_then(|status| status.user_info)
            .ok_or_else(|| {
                ConfirmError::Unavailable("the SelfSubjectReview came back without userInfo".into())
            })
    }
}
