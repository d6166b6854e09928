//! Where a request's credential comes from. Every source yields the same [`Credential`], so the
//! rest of the controller (the Secret, the status, renewal) does not care how the token was made.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::{
    Context, Error, kube_error,
    status::{Reason, Refusal},
};
use crate::{
    crd::KubeconfigRequest,
    token::{IdToken, Identity},
};

/// A bearer token and who it makes its holder, as the API server will see them.
#[derive(Debug, Clone)]
pub struct Credential {
    pub token: IdToken,
    pub identity: Identity,
    pub expires_at: DateTime<Utc>,
    /// When the controller should act before the token dies: mint a new one, or warn its owner.
    pub renew_at: DateTime<Utc>,
}

/// Reads the ID token from the request's token Secret and verifies it.
pub(super) async fn id_token(
    request: &KubeconfigRequest,
    ctx: &Context,
    secrets: &Api<Secret>,
) -> Result<Result<Credential, Refusal>, Error> {
    let reference = &request.spec.token_secret_ref;
    let Some(token_secret) = secrets
        .get_opt(&reference.name)
        .await
        .map_err(kube_error("reading the token Secret"))?
    else {
        return Ok(Err(Refusal::new(
            Reason::TokenSecretNotFound,
            format!(
                "Secret {:?} does not exist in this namespace; create it with the ID token under key {:?}",
                reference.name, reference.key
            ),
        )));
    };
    let raw = token_secret
        .data
        .as_ref()
        .and_then(|data| data.get(&reference.key))
        .map(|bytes| bytes.0.as_slice())
        .filter(|bytes| !bytes.is_empty());
    let Some(raw) = raw else {
        return Ok(Err(Refusal::new(
            Reason::TokenKeyMissing,
            format!(
                "Secret {:?} has no non-empty key {:?}",
                reference.name, reference.key
            ),
        )));
    };
    let Ok(text) = std::str::from_utf8(raw) else {
        ctx.metrics.count_token_failure("Malformed");
        return Ok(Err(Refusal::new(
            Reason::TokenInvalid,
            format!(
                "Malformed: key {:?} of Secret {:?} is not text",
                reference.key, reference.name
            ),
        )));
    };
    let token = IdToken::from(text.trim().to_owned());
    let identity = match ctx.verifier.verify(&token).await {
        Ok(identity) => identity,
        Err(error) => {
            ctx.metrics.count_token_failure(error.reason());
            return Ok(Err(Refusal::new(
                Reason::for_token_error(&error),
                format!("{}: {error}", error.reason()),
            )));
        }
    };
    if let Some(expected) = &request.spec.user
        && expected != &identity.username
    {
        return Ok(Err(Refusal::new(
            Reason::UserMismatch,
            format!(
                "the token belongs to {:?}, but spec.user asks for {expected:?}",
                identity.username
            ),
        )));
    }
    Ok(Ok(Credential {
        expires_at: identity.expires_at,
        renew_at: identity.expires_at,
        token,
        identity,
    }))
}
