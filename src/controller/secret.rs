//! The kubeconfig Secret: its name, what it should hold, who owns it, and writing it. A Secret
//! that some other owner controls is never overwritten.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams},
    runtime::events::EventType,
};
use sha2::{Digest, Sha256};
use tracing::info;

use super::{
    Context, Error, FIELD_MANAGER, kube_error,
    source::Credential,
    status::{self, Outcome, Reason, Refusal, format_time},
};
use crate::{crd::KubeconfigRequest, kubeconfig};

/// Key of the written Secret that holds the kubeconfig.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
pub const REQUEST_LABEL: &str = "kubeconfig.dev/request";
pub const USER_LABEL: &str = "kubeconfig.dev/user";
pub const USERNAME_ANNOTATION: &str = "kubeconfig.dev/username";
pub const EXPIRES_ANNOTATION: &str = "kubeconfig.dev/expires-at";

/// Writes the kubeconfig Secret unless it already holds exactly this content, and refuses to
/// touch a Secret that some other owner controls.
pub(super) async fn write(
    request: &KubeconfigRequest,
    ctx: &Context,
    secrets: &Api<Secret>,
    credential: Credential,
) -> Result<Outcome, Error> {
    let owner = request.controller_owner_ref(&()).ok_or(Error::NotStored)?;
    let secret_name = request
        .spec
        .secret_name
        .clone()
        .unwrap_or_else(|| derived_secret_name(&credential.identity.username));
    let existing = secrets
        .get_opt(&secret_name)
        .await
        .map_err(kube_error("reading the kubeconfig Secret"))?;
    if let Some(existing) = &existing
        && !is_controlled_by(existing, &owner)
    {
        return Ok(Outcome::Refused(Refusal::new(
            Reason::SecretConflict,
            format!(
                "Secret {secret_name:?} already exists and is not owned by this request; choose another spec.secretName or delete that Secret"
            ),
        )));
    }

    let rendered = kubeconfig::render(
        &ctx.settings,
        &credential.token,
        request
            .spec
            .namespace
            .as_deref()
            .or(ctx.settings.default_namespace.as_deref()),
    )?;
    let desired = desired(request, &credential, &secret_name, owner, rendered);
    if existing
        .as_ref()
        .is_none_or(|existing| !already_matches(existing, &desired))
    {
        secrets
            .patch(
                &secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
            .map_err(kube_error("applying the kubeconfig Secret"))?;
        info!(request = %request.name_any(), secret = %secret_name, user = %credential.identity.username, "kubeconfig Secret written");
        status::publish(
            ctx,
            request,
            EventType::Normal,
            Reason::Issued,
            format!(
                "Wrote a kubeconfig for {} to Secret {secret_name}, valid until {}",
                credential.identity.username,
                format_time(credential.expires_at)
            ),
        )
        .await;
    }
    Ok(Outcome::Issued {
        credential,
        secret_name,
    })
}

/// True when `owner` is the Secret's controller. The uid alone would do for objects this
/// operator made, but kind and apiVersion are checked too, so a reference that merely reuses a
/// request's uid for another kind of owner never counts.
pub(super) fn is_controlled_by(secret: &Secret, owner: &OwnerReference) -> bool {
    secret.owner_references().iter().any(|reference| {
        reference.controller == Some(true)
            && reference.uid == owner.uid
            && reference.kind == owner.kind
            && reference.api_version == owner.api_version
    })
}

fn desired(
    request: &KubeconfigRequest,
    credential: &Credential,
    secret_name: &str,
    owner: OwnerReference,
    kubeconfig: String,
) -> Secret {
    let template = request.spec.secret_template.clone().unwrap_or_default();
    let mut labels = template.labels;
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels.insert(REQUEST_LABEL.into(), label_value(&request.name_any()));
    labels.insert(
        USER_LABEL.into(),
        label_value(&credential.identity.username),
    );
    let mut annotations = template.annotations;
    annotations.insert(
        USERNAME_ANNOTATION.into(),
        credential.identity.username.clone(),
    );
    annotations.insert(
        EXPIRES_ANNOTATION.into(),
        credential.expires_at.to_rfc3339(),
    );
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.to_owned()),
            namespace: request.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            KUBECONFIG_KEY.to_owned(),
            ByteString(kubeconfig.into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// True when applying `desired` would change nothing we manage, so GitOps diffs and watchers stay
/// quiet on resyncs.
fn already_matches(existing: &Secret, desired: &Secret) -> bool {
    let contains_all = |have: Option<&BTreeMap<String, String>>,
                        want: Option<&BTreeMap<String, String>>| {
        want.into_iter()
            .flatten()
            .all(|(key, value)| have.and_then(|have| have.get(key)) == Some(value))
    };
    existing.data == desired.data
        && existing.type_ == desired.type_
        && contains_all(
            existing.metadata.labels.as_ref(),
            desired.metadata.labels.as_ref(),
        )
        && contains_all(
            existing.metadata.annotations.as_ref(),
            desired.metadata.annotations.as_ref(),
        )
}

/// `kubeconfig-<readable part of the username>-<hash>`: stable for a user, distinct between users
/// whose names differ only in characters a Secret name cannot hold.
pub fn derived_secret_name(username: &str) -> String {
    let readable = dns_safe(username, 40);
    let hash = short_hash(username);
    if readable.is_empty() {
        format!("kubeconfig-{hash}")
    } else {
        format!("kubeconfig-{readable}-{hash}")
    }
}

/// A label value (at most 63 characters of `[a-z0-9A-Z._-]`) standing for `value`; when the value
/// has to be altered to fit, a hash keeps distinct values distinct.
pub fn label_value(value: &str) -> String {
    let fits = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric());
    if fits {
        return value.to_owned();
    }
    let readable = dns_safe(value, 54);
    let hash = short_hash(value);
    if readable.is_empty() {
        hash
    } else {
        format!("{readable}-{hash}")
    }
}

fn dns_safe(value: &str, max: usize) -> String {
    let mut out = String::with_capacity(max);
    for c in value.chars().flat_map(char::to_lowercase) {
        if out.len() >= max {
            break;
        }
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

fn short_hash(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .take(4)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_secret_names_are_dns_safe_stable_and_distinct() {
        let alice = derived_secret_name("alice@example.com");
        assert!(alice.starts_with("kubeconfig-alice-example-com-"));
        assert_eq!(alice, derived_secret_name("alice@example.com"));
        assert_ne!(alice, derived_secret_name("alice.example.com"));
        for name in ["alice@example.com", "oidc:Bob", "ÜÜÜ", "", &"x".repeat(500)] {
            let derived = derived_secret_name(name);
            assert!(derived.len() <= 63, "{derived}");
            assert!(crate::config::is_dns_label(&derived), "{derived}");
        }
    }

    #[test]
    fn label_values_fit_kubernetes_rules() {
        assert_eq!(label_value("alice-request"), "alice-request");
        let altered = label_value("alice@example.com");
        assert!(altered.starts_with("alice-example-com-"));
        assert_ne!(altered, label_value("alice.example@com"));
        assert!(label_value(&"a".repeat(100)).len() <= 63);
        assert!(!label_value("-x-").starts_with('-'));
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "kubeconfig.dev/v1alpha1".into(),
            kind: "KubeconfigRequest".into(),
            name: "alice".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn only_the_requests_own_controller_reference_counts() {
        let cases: [(&str, Vec<OwnerReference>, bool); 8] = [
            ("no owners", vec![], false),
            ("this request as controller", vec![owner()], true),
            (
                "this request, but not as controller",
                vec![OwnerReference {
                    controller: None,
                    ..owner()
                }],
                false,
            ),
            (
                "another request",
                vec![OwnerReference {
                    uid: "uid-2".into(),
                    ..owner()
                }],
                false,
            ),
            (
                "same uid, another kind",
                vec![OwnerReference {
                    kind: "Deployment".into(),
                    ..owner()
                }],
                false,
            ),
            (
                "same uid, another apiVersion",
                vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    ..owner()
                }],
                false,
            ),
            (
                "controlled by something else, this request a plain owner",
                vec![
                    OwnerReference {
                        controller: Some(false),
                        ..owner()
                    },
                    OwnerReference {
                        uid: "uid-9".into(),
                        kind: "Deployment".into(),
                        ..owner()
                    },
                ],
                false,
            ),
            (
                "this request among other plain owners",
                vec![
                    OwnerReference {
                        controller: Some(false),
                        uid: "uid-9".into(),
                        ..owner()
                    },
                    owner(),
                ],
                true,
            ),
        ];
        for (case, references, expected) in cases {
            let secret = Secret {
                metadata: ObjectMeta {
                    owner_references: Some(references),
                    ..ObjectMeta::default()
                },
                ..Secret::default()
            };
            assert_eq!(is_controlled_by(&secret, &owner()), expected, "{case}");
        }
    }

    #[test]
    fn unchanged_secret_is_not_rewritten() {
        let desired = Secret {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([("a".into(), "1".into())])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                "kubeconfig".into(),
                ByteString(b"x".to_vec()),
            )])),
            ..Secret::default()
        };
        let mut existing = desired.clone();
        existing
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("added-by-someone".into(), "y".into());
        assert!(already_matches(&existing, &desired));
        existing.data = Some(BTreeMap::from([(
            "kubeconfig".into(),
            ByteString(b"old".to_vec()),
        )]));
        assert!(!already_matches(&existing, &desired));
    }
}
