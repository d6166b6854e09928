//! Whether the request's creator still holds the rights that admission checked when they created
//! it. A minted token is a credential its creator could have made with `kubectl create token`;
//! once they lose that right, renewing it would hand them what they can no longer get, so each
//! renewal asks the API server again (a SubjectAccessReview for the recorded `spec.creator`).

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::{Api, ResourceExt, api::PostParams};

use super::{
    Context, Error, kube_error,
    refusal::{Reason, Refusal},
};
use crate::crd::{KubeconfigRequest, ServiceAccountSource};

/// One right the admission policy required of the creator, and how a refusal names it.
struct Right {
    attributes: ResourceAttributes,
    /// Completes "may no longer ...".
    what: String,
}

/// The rights config/policy checks at admission for a ServiceAccount request: tokens for the
/// account, and Secrets in the namespace when the request chose its Secret's name.
fn rights(
    request: &KubeconfigRequest,
    source: &ServiceAccountSource,
    namespace: &str,
) -> Vec<Right> {
    let mut rights = vec![Right {
        attributes: ResourceAttributes {
            namespace: Some(namespace.to_owned()),
            verb: Some("create".into()),
            group: Some(String::new()),
            resource: Some("serviceaccounts".into()),
            subresource: Some("token".into()),
            name: Some(source.name.clone()),
            ..ResourceAttributes::default()
        },
        what: format!(
            "create tokens for ServiceAccount {} (serviceaccounts/token)",
            source.name
        ),
    }];
    if let Some(secret_name) = &request.spec.secret_name {
        rights.push(Right {
            attributes: ResourceAttributes {
                namespace: Some(namespace.to_owned()),
                verb: Some("create".into()),
                group: Some(String::new()),
                resource: Some("secrets".into()),
                ..ResourceAttributes::default()
            },
            what: format!("create Secrets in this namespace, which choosing spec.secretName {secret_name} needs"),
        });
    }
    rights
}

/// `Ok(())` when the recorded creator may still do everything admission checked; a
/// `CreatorForbidden` refusal naming the first right they lost, or saying that no creator is
/// recorded (a request stored before the policy recorded it), otherwise.
pub(super) async fn still_allowed(
    request: &KubeconfigRequest,
    source: &ServiceAccountSource,
    ctx: &Context,
) -> Result<Result<(), Refusal>, Error> {
    let namespace = request.namespace().ok_or(Error::NotStored)?;
    let Some(creator) = request.spec.creator.as_ref().filter(|creator| {
        creator
            .username
            .as_ref()
            .is_some_and(|name| !name.is_empty())
    }) else {
        return Ok(Err(Refusal::new(
            Reason::CreatorForbidden,
            "spec.creator does not record who created this request (it was stored before the admission policy recorded creators), so whether they may still mint its tokens cannot be checked; create the request again",
        )));
    };
    let username = creator.username.clone().unwrap_or_default();
    let reviews: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
    for right in rights(request, source, &namespace) {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(username.clone()),
                uid: creator.uid.clone().filter(|uid| !uid.is_empty()),
                groups: creator.groups.clone(),
                extra: creator.extra.clone(),
                resource_attributes: Some(right.attributes),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(kube_error(
                "asking whether the request's creator may still mint its tokens",
            ))?;
        if !answer.status.is_some_and(|status| status.allowed) {
            return Ok(Err(Refusal::new(
                Reason::CreatorForbidden,
                format!(
                    "renewal stopped: {username}, who created this request, may no longer {}; the token already in the Secret lives until it expires. Once the right is granted again, renew with: kubectl annotate kcr {} kubeconfig.dev/renew=$(date -u +%Y-%m-%dT%H:%M:%SZ) --overwrite",
                    right.what,
                    request.name_any()
                ),
            )));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::request as stored;

    #[test]
    fn a_chosen_secret_name_adds_the_right_to_create_secrets() {
        let source = ServiceAccountSource {
            name: "deployer".into(),
            expiration_seconds: 3600,
            audiences: vec![],
        };
        let derived = stored(serde_json::json!({}));
        let checked: Vec<_> = rights(&derived, &source, "team-a")
            .into_iter()
            .map(|right| right.attributes)
            .collect();
        assert_eq!(checked.len(), 1);
        assert_eq!(
            (
                checked[0].resource.as_deref(),
                checked[0].subresource.as_deref(),
                checked[0].name.as_deref(),
                checked[0].namespace.as_deref(),
            ),
            (
                Some("serviceaccounts"),
                Some("token"),
                Some("deployer"),
                Some("team-a")
            )
        );
        let chosen = stored(serde_json::json!({ "secretName": "mine" }));
        let checked: Vec<_> = rights(&chosen, &source, "team-a")
            .into_iter()
            .map(|right| {
                (
                    right.attributes.resource,
                    right.attributes.verb,
                    right.attributes.name,
                )
            })
            .collect();
        assert_eq!(
            checked[1],
            (Some("secrets".into()), Some("create".into()), None)
        );
    }
}
