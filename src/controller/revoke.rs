//! Deleting a request revokes the ID token it held. The kubeconfig Secret goes with the request,
//! but a copy of its kubeconfig would keep working until the token expires; so a request whose
//! Secret holds an ID token carries a finalizer, and before it lets the request go, the
//! controller writes a `KubeconfigRevocation` for that one token (`status.credential`). Every
//! replica follows the revocations, so the proxy refuses the token everywhere within seconds,
//! and across restarts.
//!
//! The credential comes from the status, which only the operator writes: a tenant who deletes a
//! request revokes the token that request held, and nothing else.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::info;

use super::{Context, Error, FIELD_MANAGER, kube_error};
use crate::{
    crd::{Format, KubeconfigRequest},
    oidc::revocations::{RevokedBecause, revoke_credential},
};

/// Held by every request whose Secret holds an ID token, until that token is revoked.
pub const FINALIZER: &str = "kubeconfig.dev/revoke-id-token";

/// The annotation of a revocation that names the request (`<namespace>/<name>`) it came from.
pub const REQUEST_ANNOTATION: &str = "kubeconfig.dev/request";

/// Whether the Secret `request` asks for holds an ID token that a copy could go on using: an
/// exec kubeconfig holds none, and a ServiceAccount token dies with its Secret.
pub(super) fn holds_id_token(request: &KubeconfigRequest) -> bool {
    request.spec.token_secret_ref.is_some() && request.spec.format != Format::Exec
}

/// Adds the finalizer before the Secret receives a token, so that no token is handed out that
/// a deletion would not revoke.
pub(super) async fn hold(request: &KubeconfigRequest, ctx: &Context) -> Result<(), Error> {
    if request.finalizers().iter().any(|held| held == FINALIZER) {
        return Ok(());
    }
    let mut finalizers = request.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    set_finalizers(request, ctx, finalizers).await
}

/// The deletion path: revokes the token the request held, if it has not expired, then lets the
/// request go.
pub(super) async fn on_deletion(
    request: &KubeconfigRequest,
    ctx: &Context,
) -> Result<Action, Error> {
    if !request.finalizers().iter().any(|held| held == FINALIZER) {
        return Ok(Action::await_change());
    }
    let namespace = request.namespace().ok_or(Error::NotStored)?;
    let name = request.name_any();
    let status = request.status.as_ref();
    let expires_at = status
        .and_then(|status| status.expires_at.as_deref())
        .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
        .map(|at| at.with_timezone(&Utc));
    if let (Some(credential), Some(expires_at)) = (
        status.and_then(|status| status.credential.clone()),
        expires_at,
    ) {
        revoke_credential(
            ctx.client.clone(),
            credential,
            expires_at,
            RevokedBecause::RequestDeleted,
            format!("KubeconfigRequest {namespace}/{name} was deleted"),
            BTreeMap::from([(REQUEST_ANNOTATION.to_owned(), format!("{namespace}/{name}"))]),
        )
        .await
        .map_err(kube_error("revoking the ID token of a deleted request"))?;
        info!(request = %name, %namespace, "revoked the ID token of a deleted request");
    }
    let finalizers = request
        .finalizers()
        .iter()
        .filter(|held| *held != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(request, ctx, finalizers).await?;
    Ok(Action::await_change())
}

/// A merge patch of the whole list, conditional on the resourceVersion it was computed from: a
/// finalizer someone else added or removed meanwhile makes it fail (409), and the retry starts
/// from the new list.
async fn set_finalizers(
    request: &KubeconfigRequest,
    ctx: &Context,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let api: Api<KubeconfigRequest> = Api::namespaced(
        ctx.client.clone(),
        &request.namespace().ok_or(Error::NotStored)?,
    );
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": request.resource_version(),
        }
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(&request.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(kube_error("updating the request's finalizers"))?;
    Ok(())
}
