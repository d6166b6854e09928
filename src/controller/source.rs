//! Where a request's credential comes from. Every source yields the same [`Credential`], so the
//! rest of the controller (the Secret, the status, renewal) does not care how the token was made:
//! an ID token the user put into a Secret, or a ServiceAccount token the controller mints.

use std::{collections::BTreeMap, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{Secret, ServiceAccount},
    },
};
use kube::{Api, Resource, ResourceExt, api::PostParams};
use serde::Deserialize;

use super::{
    Context, Error,
    cache::SecretRead,
    creator,
    credential::Credential,
    kube_error,
    refusal::{Reason, Refusal},
    renewals, secret,
};
use crate::{
    confirm::ConfirmError,
    crd::{KubeconfigRequest, KubeconfigRequestSpec, ServiceAccountSource, TokenSecretRef},
    oidc::jwt::MAX_TOKEN_BYTES,
    oidc::token::{CREDENTIAL_ID_KEY, IdToken, Identity, TokenError, credential_id},
};

/// The annotation by which a ServiceAccount's owner allows kubeconfigs to be issued for it.
pub const ISSUABLE_ANNOTATION: &str = "kubeconfig.dev/issuable";

/// When to renew a token issued at `issued_at` that expires at `expires_at`: `renewBefore` or
/// `renewBeforePercentage` ahead of expiry, by default a third of the lifetime, as cert-manager
/// does for certificates. `Err` is a refusal for a `renewBefore` the controller cannot use.
pub fn renewal_time(
    spec: &KubeconfigRequestSpec,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<DateTime<Utc>, Refusal> {
    let lifetime = (expires_at - issued_at).max(TimeDelta::zero());
    let before = match (&spec.renew_before, spec.renew_before_percentage) {
        (Some(text), _) => {
            let duration = humantime::parse_duration(text).map_err(|error| {
                Refusal::new(
                    Reason::InvalidSpec,
                    format!("spec.renewBefore {text:?} is not a duration such as \"20m\": {error}"),
                )
            })?;
            TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
        }
        (None, Some(percent)) => lifetime * i32::from(percent) / 100,
        (None, None) => lifetime / 3,
    };
    // A renewBefore longer than the lifetime would renew at once, forever: renew at issuance.
    Ok((expires_at - before).max(issued_at))
}

/// A token Secret's data as far as the controller keeps it: values too large to be a token are
/// kept as their size only, so a tenant's huge Secrets cost memory once, during the read.
#[derive(Clone, Debug)]
pub enum TokenSecretValue {
    Token(Vec<u8>),
    Oversized(usize),
}

/// `None` when the Secret does not exist.
pub type TokenSecretData = Option<BTreeMap<String, TokenSecretValue>>;

async fn read_token_secret(
    secrets: &Api<Secret>,
    name: &str,
) -> Result<SecretRead<TokenSecretData>, Error> {
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(kube_error("reading the token Secret"))?;
    Ok(SecretRead {
        resource_version: secret
            .as_ref()
            .and_then(|secret| secret.metadata.resource_version.clone()),
        value: secret.map(|secret| {
            secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(key, ByteString(bytes))| {
                    let value = if bytes.len() > MAX_TOKEN_BYTES {
                        TokenSecretValue::Oversized(bytes.len())
                    } else {
                        TokenSecretValue::Token(bytes)
                    };
                    (key, value)
                })
                .collect()
        }),
    })
}

/// Reads the ID token from the request's token Secret and verifies it.
pub(super) async fn id_token(
    request: &KubeconfigRequest,
    reference: &TokenSecretRef,
    ctx: &Context,
    secrets: &Api<Secret>,
) -> Result<Result<Credential, Refusal>, Error> {
    let namespace = request.namespace().ok_or(Error::NotStored)?;
    let data = ctx
        .token_reads
        .get_or_read((namespace, reference.name.clone()), || {
            read_token_secret(secrets, &reference.name)
        })
        .await?;
    let Some(data) = data else {
        return Ok(Err(Refusal::new(
            Reason::TokenSecretNotFound,
            format!(
                "Secret {:?} does not exist in this namespace; create it with the ID token under key {:?}",
                reference.name, reference.key
            ),
        )));
    };
    let raw = match data.get(&reference.key) {
        Some(TokenSecretValue::Token(bytes)) if !bytes.is_empty() => bytes,
        Some(TokenSecretValue::Oversized(size)) => {
            ctx.authenticator
                .count_refusal(&TokenError::Malformed("the token is too long"));
            return Ok(Err(Refusal::new(
                Reason::TokenInvalid,
                format!(
                    "Malformed: key {:?} of Secret {:?} holds {size} bytes; ID tokens are at most {MAX_TOKEN_BYTES}",
                    reference.key, reference.name
                ),
            )));
        }
        _ => {
            return Ok(Err(Refusal::new(
                Reason::TokenKeyMissing,
                format!(
                    "Secret {:?} has no non-empty key {:?}",
                    reference.name, reference.key
                ),
            )));
        }
    };
    let Ok(text) = std::str::from_utf8(raw) else {
        ctx.authenticator
            .count_refusal(&TokenError::Malformed("the token is not text"));
        return Ok(Err(Refusal::new(
            Reason::TokenInvalid,
            format!(
                "Malformed: key {:?} of Secret {:?} is not text",
                reference.key, reference.name
            ),
        )));
    };
    let token = IdToken::from(text.trim().to_owned());
    let identity = match ctx.authenticator.authenticate(&token).await {
        Ok(identity) => identity,
        Err(error) => {
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
    let issued_at = identity
        .issued_at
        .unwrap_or_else(Utc::now)
        .min(identity.expires_at);
    let renew_at = match renewal_time(&request.spec, issued_at, identity.expires_at) {
        Ok(at) => at,
        Err(refusal) => return Ok(Err(refusal)),
    };
    Ok(Ok(Credential {
        expires_at: identity.expires_at,
        renew_at,
        token,
        identity,
        granted_seconds: None,
        confirmed: None,
    }))
}

/// The ServiceAccount a request names, if its owner allows kubeconfigs for it.
pub(super) async fn issuable_service_account(
    source: &ServiceAccountSource,
    ctx: &Context,
    namespace: &str,
) -> Result<Result<ServiceAccount, Refusal>, Error> {
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(account) = accounts
        .get_opt(&source.name)
        .await
        .map_err(kube_error("reading the ServiceAccount"))?
    else {
        return Ok(Err(Refusal::new(
            Reason::ServiceAccountNotFound,
            format!(
                "ServiceAccount {:?} does not exist in this namespace",
                source.name
            ),
        )));
    };
    if account
        .annotations()
        .get(ISSUABLE_ANNOTATION)
        .map(String::as_str)
        != Some("true")
    {
        return Ok(Err(Refusal::new(
            Reason::ServiceAccountNotIssuable,
            format!(
                "ServiceAccount {name:?} does not allow kubeconfigs to be issued for it; its owner can allow it with: kubectl annotate serviceaccount {name} {ISSUABLE_ANNOTATION}=true",
                name = source.name
            ),
        )));
    }
    Ok(Ok(account))
}

/// The identity the API server gives a ServiceAccount's token: with its `jti` as the credential
/// id, as the API server's ServiceAccount authenticator adds it.
fn service_account_identity(
    namespace: &str,
    name: &str,
    expires_at: DateTime<Utc>,
    jti: Option<&str>,
) -> Identity {
    Identity {
        username: format!("system:serviceaccount:{namespace}:{name}"),
        groups: vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{namespace}"),
        ],
        expires_at,
        issued_at: None,
        uid: String::new(),
        extra: jti
            .filter(|jti| !jti.is_empty())
            .map(|jti| (CREDENTIAL_ID_KEY.to_owned(), vec![credential_id(jti)]))
            .into_iter()
            .collect(),
    }
}

/// The claims of a ServiceAccount token that say whom it is for and what it is bound to.
#[derive(Deserialize)]
struct BoundTokenClaims {
    sub: String,
    iat: i64,
    exp: i64,
    jti: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
}

impl BoundTokenClaims {
    /// The claims of a token the API server signed, read without verifying it (see
    /// [`reusable_token`] for why that is enough).
    fn read(token: &str) -> Option<Self> {
        let payload = token.split('.').nth(1)?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }
}

#[derive(Deserialize)]
struct KubernetesClaims {
    secret: Option<BoundObject>,
}

#[derive(Deserialize)]
struct BoundObject {
    uid: String,
}

/// The credential already in the kubeconfig Secret, if it is a token this request minted for
/// this very Secret and it is not due for renewal. Its claims are read without verifying the
/// signature: the API server signed it, and a token someone edited in fails these checks or
/// stops working, either of which a fresh token fixes.
pub(super) fn reusable_token(
    request: &KubeconfigRequest,
    source: &ServiceAccountSource,
    secret: &Secret,
    token: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Credential> {
    let namespace = request.namespace()?;
    let token = token?;
    let claims = BoundTokenClaims::read(token)?;
    let identity = service_account_identity(
        &namespace,
        &source.name,
        DateTime::from_timestamp(claims.exp, 0)?,
        claims.jti.as_deref(),
    );
    let bound_to = claims.kubernetes?.secret?.uid;
    if claims.sub != identity.username || Some(&bound_to) != secret.metadata.uid.as_ref() {
        return None;
    }
    let issued_at = DateTime::from_timestamp(claims.iat, 0)?;
    let renew_at = renewals::spread(
        &request.uid()?,
        issued_at,
        renewal_time(&request.spec, issued_at, identity.expires_at).ok()?,
    );
    (now < renew_at).then(|| Credential {
        token: IdToken::from(token.to_owned()),
        expires_at: identity.expires_at,
        renew_at,
        granted_seconds: Some(claims.exp - claims.iat),
        identity,
        confirmed: None,
    })
}

/// Mints a token for the ServiceAccount with the TokenRequest API, bound to the kubeconfig
/// Secret (`secret_name`, `secret_uid`): deleting the Secret makes the token worthless.
pub(super) async fn mint(
    request: &KubeconfigRequest,
    source: &ServiceAccountSource,
    ctx: &Context,
    secret_name: &str,
    secret_uid: &str,
) -> Result<Result<Credential, Refusal>, Error> {
    let namespace = request.namespace().ok_or(Error::NotStored)?;
    let requested = source
        .expiration_seconds
        .min(ctx.controller.max_expiration_seconds);
    let token_request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: source.audiences.clone(),
            expiration_seconds: Some(requested),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
                name: Some(secret_name.to_owned()),
                uid: Some(secret_uid.to_owned()),
            }),
        },
        ..TokenRequest::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &namespace);
    let issued_at = Utc::now();
    let minted = match accounts
        .create_token_request(&source.name, &PostParams::default(), &token_request)
        .await
    {
        Ok(minted) => minted,
        Err(kube::Error::Api(status)) if status.code == 400 || status.code == 422 => {
            return Ok(Err(Refusal::new(
                Reason::InvalidSpec,
                format!(
                    "the API server refused to mint a token for ServiceAccount {:?}: {}",
                    source.name, status.message
                ),
            )));
        }
        Err(error) => return Err(kube_error("minting a ServiceAccount token")(error)),
    };
    let status = minted.status.ok_or(Error::NoTokenMinted)?;
    let expires_at = DateTime::from_timestamp(status.expiration_timestamp.0.as_second(), 0)
        .unwrap_or(issued_at + Duration::from_secs(requested.unsigned_abs()));
    let renew_at = match renewal_time(&request.spec, issued_at, expires_at) {
        Ok(at) => renewals::spread(&request.uid().ok_or(Error::NotStored)?, issued_at, at),
        Err(refusal) => return Ok(Err(refusal)),
    };
    let jti = BoundTokenClaims::read(&status.token).and_then(|claims| claims.jti);
    Ok(Ok(Credential {
        identity: service_account_identity(&namespace, &source.name, expires_at, jti.as_deref()),
        token: IdToken::from(status.token),
        expires_at,
        renew_at,
        granted_seconds: Some(granted_seconds(requested, issued_at, expires_at)),
        confirmed: None,
    }))
}

/// The lifetime the API server granted: what was asked for when its expiry says so (it states
/// expiry in whole seconds, so a second either way is only rounding), else what the expiry gives
/// (the API server may cap lifetimes with --service-account-max-token-expiration).
fn granted_seconds(requested: i64, issued_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> i64 {
    let lifetime = (expires_at - issued_at).num_seconds();
    if (lifetime - requested).abs() <= 2 {
        requested
    } else {
        lifetime
    }
}

/// The token already in the Secret while it is not due for renewal and no renewal was asked for
/// with a new value of the renew annotation, or a newly minted one bound to the Secret (created
/// empty first when it does not exist, since binding needs its uid).
pub(super) async fn service_account(
    request: &KubeconfigRequest,
    account: &ServiceAccountSource,
    ctx: &Context,
    secrets: &Api<Secret>,
    target: &str,
    ours: Option<&Secret>,
) -> Result<Result<Credential, Refusal>, Error> {
    let namespace = request.namespace().ok_or(Error::NotStored)?;
    if let Err(refusal) = issuable_service_account(account, ctx, &namespace).await? {
        return Ok(Err(refusal));
    }
    let renew_now = match renewals::renew_request(request) {
        Ok(asked) => {
            asked.is_some()
                && asked
                    != request
                        .status
                        .as_ref()
                        .and_then(|status| status.last_renew_request.as_deref())
        }
        Err(refusal) => return Ok(Err(refusal)),
    };
    if !renew_now
        && let Some(secret) = ours
        && let Some(credential) = reusable_token(
            request,
            account,
            secret,
            secret::current_token(request, secret).as_deref(),
            Utc::now(),
        )
        // A token the API server no longer accepts (say, its ServiceAccount was deleted and
        // created again) is not reused but replaced.
        && let Ok(confirmed) = confirm(ctx, credential).await?
    {
        return Ok(Ok(confirmed));
    }
    // Every new token is one its creator could have minted themselves, or none is minted.
    if let Err(refusal) = creator::still_allowed(request, account, ctx).await? {
        return Ok(Err(refusal));
    }
    let uid = match ours.and_then(|secret| secret.metadata.uid.clone()) {
        Some(uid) => uid,
        None => {
            let owner = request.controller_owner_ref(&()).ok_or(Error::NotStored)?;
            match secret::create_empty(request, ctx, secrets, target, owner).await? {
                Ok(created) => created.metadata.uid.ok_or(Error::NotStored)?,
                Err(refusal) => return Ok(Err(refusal)),
            }
        }
    };
    let minted = match mint(request, account, ctx, target, &uid).await? {
        Ok(minted) => minted,
        refused => return Ok(refused),
    };
    match confirm(ctx, minted).await? {
        // A token the API server refuses right after minting it was minted for other audiences
        // than the API server's: that is the spec's doing, and the Secret made to bind it to
        // would stay empty, so it goes.
        Err(refused)
            if refused.reason == Reason::RejectedByAPIServer && !account.audiences.is_empty() =>
        {
            if ours.is_none_or(|secret| secret.data.as_ref().is_none_or(BTreeMap::is_empty)) {
                secret::delete_if_ours(
                    request,
                    ctx,
                    secrets,
                    target,
                    "its token could not be used",
                )
                .await?;
            }
            Ok(Err(Refusal::new(
                Reason::InvalidSpec,
                format!(
                    "the API server does not accept the token minted for spec.serviceAccount.audiences {:?}, so a kubeconfig with it could not work: kubectl needs a token for the API server's own audience. Remove spec.serviceAccount.audiences (empty means the API server's audience), or add the API server's audience to it",
                    account.audiences
                ),
            )))
        }
        judged => Ok(judged),
    }
}

/// The credential with the API server's word on its token, when confirmation is on: the identity
/// it answers goes into status; its refusal refuses the request, since a kubeconfig holding the
/// token could not work. A minted ServiceAccount token is confirmed too: that proves the token
/// bound to the Secret works, for one cheap call that the verdict cache shares.
pub(super) async fn confirm(
    ctx: &Context,
    credential: Credential,
) -> Result<Result<Credential, Refusal>, Error> {
    let Some(confirmer) = &ctx.confirmer else {
        return Ok(Ok(credential));
    };
    match confirmer
        .confirm(&credential.token, credential.expires_at)
        .await
    {
        Ok(user) => Ok(Ok(Credential {
            confirmed: Some(Box::new(user)),
            ..credential
        })),
        Err(refused @ ConfirmError::Refused) => Ok(Err(Refusal::new(
            Reason::RejectedByAPIServer,
            refused.to_string(),
        ))),
        Err(unavailable) => Err(Error::Confirm(unavailable)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::KubeconfigRequestSpec;

    fn spec(extra: serde_json::Value) -> KubeconfigRequestSpec {
        let mut value = serde_json::json!({ "serviceAccount": { "name": "deployer" } });
        value
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn granted_lifetime_is_the_request_unless_the_api_server_cut_it() {
        let issued = DateTime::from_timestamp_millis(1_000_000_900).unwrap();
        let at = |seconds: i64| DateTime::from_timestamp(1_000_000 + seconds, 0).unwrap();
        assert_eq!(granted_seconds(3600, issued, at(3600)), 3600);
        assert_eq!(granted_seconds(3600, issued, at(3601)), 3600);
        assert_eq!(granted_seconds(86400, issued, at(3600)), 3599);
    }

    #[test]
    fn renewal_defaults_to_a_third_of_the_lifetime_before_expiry() {
        let issued = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let expires = issued + TimeDelta::seconds(3600);
        let cases = [
            (serde_json::json!({}), 2400),
            (serde_json::json!({ "renewBefore": "10m" }), 3000),
            (serde_json::json!({ "renewBefore": "1h5m" }), 0),
            (serde_json::json!({ "renewBeforePercentage": 25 }), 2700),
        ];
        for (extra, seconds_after_issue) in cases {
            let at = renewal_time(&spec(extra.clone()), issued, expires).unwrap();
            assert_eq!((at - issued).num_seconds(), seconds_after_issue, "{extra}");
        }
        let refusal = renewal_time(
            &spec(serde_json::json!({ "renewBefore": "soon" })),
            issued,
            expires,
        )
        .unwrap_err();
        assert_eq!(refusal.reason, Reason::InvalidSpec);
        assert!(refusal.message.contains("soon"), "{}", refusal.message);
    }
}
