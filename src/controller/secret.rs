//! The kubeconfig Secret: its name, what it should hold, who owns it, and writing it. A Secret
//! that some other owner controls is never overwritten.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, Preconditions},
    runtime::events::EventType,
};
use sha2::{Digest, Sha256};
use tracing::info;

use super::{
    Context, Error, FIELD_MANAGER,
    credential::Credential,
    kube_error,
    refusal::{Reason, Refusal},
    status::{self, Outcome},
};
use crate::{
    crd::{KubeconfigRequest, SECRET_NAME_SUFFIX, TokenSecretRef},
    kubeconfig::{self, stored},
};

/// Key of the written Secret that holds the kubeconfig unless `spec.secretKeys` says otherwise.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
pub const REQUEST_LABEL: &str = "kubeconfig.dev/request";
pub const USER_LABEL: &str = "kubeconfig.dev/user";
pub const USERNAME_ANNOTATION: &str = "kubeconfig.dev/username";
pub const EXPIRES_ANNOTATION: &str = "kubeconfig.dev/expires-at";
/// Which operator installation wrote the Secret last: the username of its credential.
pub const WRITER_ANNOTATION: &str = "kubeconfig.dev/written-by";
/// The credential id the API server's audit log records the kubeconfig's requests under.
pub const CREDENTIAL_ID_ANNOTATION: &str = "kubeconfig.dev/credential-id";

/// The Secret a request writes to: `spec.secretName`, or the request's own name followed by
/// `-kubeconfig`. The default comes from the request's name, which is unique in its namespace,
/// so no other user can predict and squat on it with a request of their own.
pub(super) fn target_name(request: &KubeconfigRequest) -> String {
    request
        .spec
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}{SECRET_NAME_SUFFIX}", request.name_any()))
}

/// The existing Secret, if this request may write to it: it is the request's controller, or it
/// is the Secret this request's status names, with this request's label and no controller at
/// all (someone stripped the owner reference; the next write puts it back).
pub(super) fn ours(
    request: &KubeconfigRequest,
    owner: &OwnerReference,
    existing: Option<Secret>,
) -> Result<Option<Secret>, Refusal> {
    let Some(existing) = existing else {
        return Ok(None);
    };
    let name = existing.name_any();
    let adoptable = existing
        .owner_references()
        .iter()
        .all(|reference| reference.controller != Some(true))
        && existing.labels().get(REQUEST_LABEL) == Some(&label_value(&request.name_any()))
        && request
            .status
            .as_ref()
            .and_then(|status| status.secret_name.as_ref())
            == Some(&name);
    if is_controlled_by(&existing, owner) || adoptable {
        Ok(Some(existing))
    } else {
        Err(Refusal::new(
            Reason::SecretConflict,
            format!(
                "Secret {name:?} already exists and is not owned by this request; choose another spec.secretName or delete that Secret"
            ),
        ))
    }
}

/// The token in a Secret this controller wrote in the request's format.
pub(super) fn current_token(request: &KubeconfigRequest, secret: &Secret) -> Option<String> {
    stored::token(
        request.spec.format,
        &request.spec.secret_keys,
        secret.data.as_ref()?,
    )
}

/// Creates the Secret without data, so a ServiceAccount token can be bound to its uid before
/// the token exists. A Secret the API server refuses as invalid is an InvalidSpec refusal, as in
/// [`write`].
pub(super) async fn create_empty(
    request: &KubeconfigRequest,
    ctx: &Context,
    secrets: &Api<Secret>,
    secret_name: &str,
    owner: OwnerReference,
) -> Result<Result<Secret, Refusal>, Error> {
    let mut secret = desired(request, None, secret_name, owner, ctx.writer().await?, None);
    secret.data = None;
    match secrets
        .patch(
            secret_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
    {
        Ok(secret) => Ok(Ok(secret)),
        Err(kube::Error::Api(status)) if refused_as_invalid(&status) => {
            Ok(Err(invalid_secret(secret_name, &status)))
        }
        Err(error) => Err(kube_error("creating the kubeconfig Secret")(error)),
    }
}

/// The API server refused the Secret itself (say, a label or annotations it does not accept):
/// the spec's fault, not a reason to retry.
fn refused_as_invalid(status: &kube::core::Status) -> bool {
    status.code == 400 || status.code == 422
}

fn invalid_secret(secret_name: &str, status: &kube::core::Status) -> Refusal {
    Refusal::new(
        Reason::InvalidSpec,
        format!(
            "the API server refused the kubeconfig Secret {secret_name:?}: {}",
            status.message
        ),
    )
}

/// A resourceVersion no object can have (etcd's revisions are signed 64-bit numbers): applied
/// with it, a Secret is created if it does not exist, and the apply is refused with 409 if it
/// does, whoever owns it.
const NO_OBJECT_HAS_THIS_VERSION: &str = "18446744073709551615";

/// The token Secret of a request that has most likely never had a kubeconfig Secret: an
/// ID-token request whose status names none. Its first issuance skips reading the Secret and
/// creates it only if it does not exist ([`Existing::PresumedAbsent`]). (A ServiceAccount request
/// needs its Secret's uid before it mints.)
pub(super) fn unissued_id_token(request: &KubeconfigRequest) -> Option<&TokenSecretRef> {
    request.spec.token_secret_ref.as_ref().filter(|_| {
        request
            .status
            .as_ref()
            .is_none_or(|status| status.secret_name.is_none())
    })
}

/// The kubeconfig Secret as it is now, if it exists.
pub(super) async fn read(secrets: &Api<Secret>, name: &str) -> Result<Option<Secret>, Error> {
    secrets
        .get_opt(name)
        .await
        .map_err(kube_error("reading the kubeconfig Secret"))
}

/// What [`write`] knows of the Secret before writing it.
#[derive(Clone, Copy)]
pub(super) enum Existing<'a> {
    /// Read: absent, or this request's own.
    Read(Option<&'a Secret>),
    /// Not read ([`unissued_id_token`]): it is created only if it still does not exist, and
    /// otherwise refused as a conflict, which the caller settles by reading it after all.
    PresumedAbsent,
}

/// Writes the kubeconfig Secret unless it already holds exactly this content. A write the API
/// server refuses as invalid (say, a label it does not accept) is the spec's fault, not a reason
/// to retry: it becomes an InvalidSpec refusal.
pub(super) async fn write(
    request: &KubeconfigRequest,
    ctx: &Context,
    secrets: &Api<Secret>,
    secret_name: &str,
    existing: Existing<'_>,
    credential: &Credential,
) -> Result<Result<bool, Refusal>, Error> {
    let (existing, presumed_absent) = match existing {
        Existing::Read(existing) => (existing, false),
        Existing::PresumedAbsent => (None, true),
    };
    let owner = request.controller_owner_ref(&()).ok_or(Error::NotStored)?;
    // Only the API server accepts a ServiceAccount token; the proxy accepts ID tokens.
    let settings = match credential.granted_seconds {
        Some(_) => &ctx.api_server_settings,
        None => &ctx.settings,
    };
    let rendered = match kubeconfig::render(
        settings,
        request.spec.format,
        &credential.token,
        request
            .spec
            .namespace
            .as_deref()
            .or(settings.default_namespace.as_deref()),
    ) {
        Ok(rendered) => rendered,
        Err(error @ kubeconfig::Error::ExecNotConfigured) => {
            return Ok(Err(Refusal::new(Reason::InvalidSpec, error.to_string())));
        }
        Err(error) => return Err(error.into()),
    };
    let data = stored::secret_data(
        rendered,
        request.spec.format,
        &request.spec.secret_keys,
        &credential.token,
        settings.ca.current().as_deref(),
    );
    let writer = ctx.writer().await?;
    let mut desired = desired(
        request,
        Some(credential),
        secret_name,
        owner,
        writer,
        Some(data),
    );
    if presumed_absent {
        desired.metadata.resource_version = Some(NO_OBJECT_HAS_THIS_VERSION.to_owned());
    }
    let written = existing.is_none_or(|existing| !already_matches(existing, &desired));
    if written
        && let Some(existing) = existing
        && let Some(other) = overwritten_by(
            existing,
            ctx.index
                .last_write(&request.namespace().unwrap_or_default(), secret_name)
                .as_deref(),
            writer,
        )
    {
        return Ok(Err(Refusal::new(
            Reason::SecondWriter,
            format!(
                "Secret {secret_name} was rewritten by another operator installation ({other}) after this one ({writer}) wrote it: their scopes overlap, and each would go on overwriting the other's Secret. Neither writes it any more; leave one installation watching this namespace, then delete Secret {secret_name} to have it written again"
            ),
        )));
    }
    if written {
        match secrets
            .patch(
                secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
        {
            Ok(written) => ctx.index.wrote(
                &written.namespace().unwrap_or_default(),
                secret_name,
                written.metadata.resource_version,
            ),
            Err(kube::Error::Api(status)) if refused_as_invalid(&status) => {
                return Ok(Err(invalid_secret(secret_name, &status)));
            }
            Err(kube::Error::Api(status)) if presumed_absent && status.code == 409 => {
                return Ok(Err(Refusal::new(
                    Reason::SecretConflict,
                    format!("Secret {secret_name:?} exists"),
                )));
            }
            Err(error) => return Err(kube_error("applying the kubeconfig Secret")(error)),
        }
        info!(request = %request.name_any(), secret = %secret_name, user = %credential.identity.username, "kubeconfig Secret written");
    }
    Ok(Ok(written))
}

/// The other installation that rewrote `existing` after this process last wrote it (at
/// `last_write`). A hand edit keeps the writer's mark and a replica taking over has no last write
/// of its own, so neither counts.
fn overwritten_by<'a>(
    existing: &'a Secret,
    last_write: Option<&str>,
    writer: &str,
) -> Option<&'a str> {
    let other = existing.annotations().get(WRITER_ANNOTATION)?;
    (last_write.is_some()
        && other != writer
        && existing.metadata.resource_version.as_deref() != last_write)
        .then_some(other.as_str())
}

/// Whether this generation of the request reports `SecondWriter` already, by this installation
/// or the other: both back off, so that the condition stays instead of each reporting its own
/// outcome in turn.
pub(super) fn second_writer_reported(request: &KubeconfigRequest) -> bool {
    request.ready_condition().is_some_and(|ready| {
        ready.reason == Reason::SecondWriter.as_str()
            && ready.observed_generation == request.metadata.generation
    })
}

/// A Secret left behind by a changed `spec.secretName` goes once the new one is written; while
/// the new one cannot be written, the old one stays named in status, since its credential may
/// still be live (unless the refusal revokes it).
pub(super) async fn settle_previous(
    request: &KubeconfigRequest,
    ctx: &Context,
    secrets: &Api<Secret>,
    target: &str,
    owner: &OwnerReference,
    outcome: Outcome,
) -> Result<Outcome, Error> {
    let Some(previous) = request
        .status
        .as_ref()
        .and_then(|status| status.secret_name.clone())
        .filter(|previous| previous != target)
    else {
        return Ok(outcome);
    };
    match &outcome {
        Outcome::Issued { .. } => {
            delete_if_ours(
                request,
                ctx,
                secrets,
                &previous,
                "spec.secretName now names another Secret",
            )
            .await?;
            Ok(outcome)
        }
        Outcome::Refused {
            refusal,
            kept_secret: None,
        } if !refusal.reason.policy().revokes => {
            let kept = secrets
                .get_metadata_opt(&previous)
                .await
                .map_err(kube_error("reading the previous kubeconfig Secret"))?
                .filter(|secret| controls(secret.owner_references(), owner))
                .map(|_| previous);
            Ok(outcome.keeping(kept))
        }
        Outcome::Refused { .. } => Ok(outcome),
    }
}

/// Deletes `name` if this request controls it: the Secret a changed `spec.secretName` left
/// behind, or one whose credential must stop working. Only the very object read is deleted
/// (uid precondition), and only if it is ours.
pub(super) async fn delete_if_ours(
    request: &KubeconfigRequest,
    ctx: &Context,
    secrets: &Api<Secret>,
    name: &str,
    why: &str,
) -> Result<(), Error> {
    let owner = request.controller_owner_ref(&()).ok_or(Error::NotStored)?;
    let Some(secret) = secrets
        .get_metadata_opt(name)
        .await
        .map_err(kube_error("reading a Secret to delete"))?
    else {
        return Ok(());
    };
    if !controls(secret.owner_references(), &owner) {
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match secrets.delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => return Ok(()),
        Err(error) => return Err(kube_error("deleting a kubeconfig Secret")(error)),
    }
    info!(request = %request.name_any(), secret = %name, "kubeconfig Secret deleted: {why}");
    status::publish(
        ctx,
        request,
        EventType::Normal,
        "SecretDeleted",
        format!("Deleted Secret {name}: {why}"),
    )
    .await;
    Ok(())
}

/// True when `owner` is the Secret's controller. The uid alone would do for objects this
/// operator made, but kind and apiVersion are checked too, so a reference that merely reuses a
/// request's uid for another kind of owner never counts.
pub(super) fn is_controlled_by(secret: &Secret, owner: &OwnerReference) -> bool {
    controls(secret.owner_references(), owner)
}

pub(super) fn controls(references: &[OwnerReference], owner: &OwnerReference) -> bool {
    references.iter().any(|reference| {
        reference.controller == Some(true)
            && reference.uid == owner.uid
            && reference.kind == owner.kind
            && reference.api_version == owner.api_version
    })
}

fn desired(
    request: &KubeconfigRequest,
    credential: Option<&Credential>,
    secret_name: &str,
    owner: OwnerReference,
    writer: &str,
    data: Option<BTreeMap<String, ByteString>>,
) -> Secret {
    let template = request.spec.secret_template.clone().unwrap_or_default();
    let mut labels = template.labels;
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels.insert(REQUEST_LABEL.into(), label_value(&request.name_any()));
    if let Some((label, value)) = stored::consumer_label(request.spec.format) {
        labels.insert(label.into(), value.into());
    }
    let mut annotations = template.annotations;
    annotations.insert(WRITER_ANNOTATION.into(), writer.to_owned());
    if let Some(credential) = credential {
        labels.insert(
            USER_LABEL.into(),
            label_value(&credential.identity.username),
        );
        annotations.insert(
            USERNAME_ANNOTATION.into(),
            credential.identity.username.clone(),
        );
        annotations.insert(
            EXPIRES_ANNOTATION.into(),
            credential.expires_at.to_rfc3339(),
        );
        if let Some(id) = credential.id(request.spec.format) {
            annotations.insert(CREDENTIAL_ID_ANNOTATION.into(), id.to_owned());
        }
    }
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
        data,
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
    let owner_kept = desired
        .owner_references()
        .first()
        .is_none_or(|owner| is_controlled_by(existing, owner));
    owner_kept
        && existing.data == desired.data
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
    use k8s_openapi::ByteString;

    use super::*;
    use crate::{
        config::KubeconfigSettings, crd::Format, kubeconfig::stored::ARGOCD_SECRET_TYPE_LABEL,
    };

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

    /// The Secret `request` wants for `token`, as `write` would apply it.
    fn desired_for(request: &KubeconfigRequest, token: &str) -> Secret {
        let settings = crate::controller::fixtures::settings();
        let token = crate::oidc::token::IdToken::from(token.to_owned());
        let rendered = kubeconfig::render(&settings, request.spec.format, &token, None).unwrap();
        let data = stored::secret_data(
            rendered,
            request.spec.format,
            &request.spec.secret_keys,
            &token,
            settings.ca.current().as_deref(),
        );
        desired(request, None, "out", owner(), "operator", Some(data))
    }

    #[test]
    fn secret_keys_each_get_the_kubeconfig_and_the_token_reads_back() {
        use crate::controller::fixtures::request;
        let one = request(serde_json::json!({}));
        let secret = desired_for(&one, "t.o.k");
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["kubeconfig"]);
        assert_eq!(current_token(&one, &secret).as_deref(), Some("t.o.k"));

        let both = request(serde_json::json!({ "secretKeys": ["value", "kubeconfig"] }));
        let secret = desired_for(&both, "t.o.k");
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["kubeconfig", "value"]);
        assert_eq!(data["kubeconfig"], data["value"]);
        assert_eq!(current_token(&both, &secret).as_deref(), Some("t.o.k"));
        assert!(!secret.labels().contains_key(ARGOCD_SECRET_TYPE_LABEL));
    }

    #[test]
    fn argocd_secret_has_argo_cds_label_and_keys_and_its_token_reads_back() {
        use crate::controller::fixtures::request;
        let argo = request(serde_json::json!({ "format": "argocd",
            "secretTemplate": { "labels": { ARGOCD_SECRET_TYPE_LABEL: "repository" } } }));
        let secret = desired_for(&argo, "t.o.k");
        assert_eq!(secret.labels()[ARGOCD_SECRET_TYPE_LABEL], "cluster");
        let data = secret.data.as_ref().unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["config", "name", "server"]
        );
        assert_eq!(current_token(&argo, &secret).as_deref(), Some("t.o.k"));
        // A token-format request reads no token out of an Argo CD Secret, and the reverse.
        let token_format = request(serde_json::json!({}));
        assert_eq!(current_token(&token_format, &secret), None);
        let kubeconfig_secret = desired_for(&token_format, "t.o.k");
        assert_eq!(current_token(&argo, &kubeconfig_secret), None);
    }

    #[test]
    fn exec_secret_holds_no_token() {
        use crate::controller::fixtures::request;
        let exec = request(serde_json::json!({ "format": "exec" }));
        let settings = KubeconfigSettings {
            exec: Some(crate::config::ExecSettings {
                issuer: "https://dex.example.com/dex".into(),
                client_id: "kubelogin".into(),
                extra_scopes: vec![],
                issuer_ca_pem: None,
                command: crate::config::ExecCommand::Kubectl,
            }),
            ..crate::controller::fixtures::settings()
        };
        let t = crate::oidc::token::IdToken::from("t.o.k".to_owned());
        let rendered = kubeconfig::render(&settings, Format::Exec, &t, None).unwrap();
        let data = stored::secret_data(rendered, Format::Exec, &exec.spec.secret_keys, &t, None);
        let secret = desired(&exec, None, "out", owner(), "operator", Some(data));
        let text =
            String::from_utf8(secret.data.as_ref().unwrap()["kubeconfig"].0.clone()).unwrap();
        assert!(
            text.contains("oidc-login") && !text.contains("t.o.k"),
            "{text}"
        );
        assert_eq!(current_token(&exec, &secret), None);
    }

    #[test]
    fn only_another_installations_write_after_ours_counts_as_a_second_writer() {
        let written = |writer: Option<&str>, version: &str| Secret {
            metadata: ObjectMeta {
                annotations: writer.map(|writer| {
                    BTreeMap::from([(WRITER_ANNOTATION.to_owned(), writer.to_owned())])
                }),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        let us = "system:serviceaccount:a:kubeconfig-operator";
        let them = "system:serviceaccount:b:kubeconfig-operator";
        let cases = [
            ("still our write", written(Some(us), "7"), Some("7"), None),
            (
                "edited by hand since",
                written(Some(us), "8"),
                Some("7"),
                None,
            ),
            (
                "rewritten by them",
                written(Some(them), "8"),
                Some("7"),
                Some(them),
            ),
            (
                "theirs, we never wrote it",
                written(Some(them), "8"),
                None,
                None,
            ),
            ("unmarked", written(None, "8"), Some("7"), None),
        ];
        for (case, existing, last_write, expected) in cases {
            assert_eq!(
                overwritten_by(&existing, last_write, us),
                expected,
                "{case}"
            );
        }
    }

    #[test]
    fn unchanged_secret_is_not_rewritten() {
        let desired = Secret {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([("a".into(), "1".into())])),
                owner_references: Some(vec![owner()]),
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
        let mut orphaned = existing.clone();
        orphaned.metadata.owner_references = None;
        assert!(!already_matches(&orphaned, &desired));
        existing.data = Some(BTreeMap::from([(
            "kubeconfig".into(),
            ByteString(b"old".to_vec()),
        )]));
        assert!(!already_matches(&existing, &desired));
    }
}
