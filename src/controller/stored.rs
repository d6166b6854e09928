//! What the controller's store keeps of each request, which is every request for as long as it
//! exists: the metadata reconciling reads, and the spec with the read-back part of the status in
//! serialized form, turned back into a [`KubeconfigRequest`] for each reconciliation. A
//! `KubeconfigRequest` is 1.1 KB before any of its strings (the spec and the status each about
//! 0.4 KB of mostly empty fields), the largest single part of what a settled request held.
//!
//! The serialized form is compressed against [`DICTIONARY`]. Most of a Ready request's JSON is
//! what every request repeats (field names, its Ready condition, the prefixes of its times and
//! credential), which the dictionary holds once: a Ready request's 320 bytes became 89 (the
//! test below).

use std::{borrow::Cow, num::NonZeroI64, sync::LazyLock};

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::{Resource, runtime::reflector::ObjectRef, runtime::watcher};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{refusal::Reason, revoke::FINALIZER};
use crate::{
    crd::{
        Format, KubeconfigRequest, KubeconfigRequestSpec, KubeconfigRequestStatus, READY,
        RENEW_ANNOTATION, ServiceAccountSource, TokenSecretRef, default_secret_keys, status_time,
    },
    metrics::{ReadyStatus, RequestState},
};

/// How the controller names a request: by namespace and name, as the store keys it.
pub(super) type Request = ObjectRef<StoredRequest>;

/// A request as the store keeps it. It is the same resource as [`KubeconfigRequest`] (group,
/// version, kind, plural), so kube-runtime's controller and store handle it unchanged.
#[derive(Clone, Debug)]
pub struct StoredRequest {
    /// Name, namespace, generation, deletion, finalizers and the renew annotation;
    /// `kubectl apply`'s copy of the request and managedFields were most of a listed request's
    /// size, and labels, other annotations, the creation time and owners are not read.
    metadata: ObjectMeta,
    /// The uid and resourceVersion, kept out of `metadata`: kube-runtime's store copies both
    /// from there into its key for each request, where nothing reads them. A uid that is not a
    /// UUID in its usual form (never from the API server) stays in `metadata`.
    uid: Option<Uuid>,
    resource_version: Option<Box<str>>,
    /// [`Body`] as JSON, compressed: one allocation where the typed spec and status took
    /// sixteen (a Ready ID-token request of the issuance benchmark).
    body: Box<[u8]>,
    /// The JSON's length, which decompressing needs.
    body_len: u32,
    /// What the per-request metrics read at each scrape, decoded once. The status's expiry and
    /// renewal time are left out of `body` when they are these, formatted as the operator
    /// writes them.
    ready: Option<ReadyStatus>,
    /// Seconds since the epoch; the epoch itself stays in `body`.
    expires_at: Option<NonZeroI64>,
    renewal_time: Option<NonZeroI64>,
    /// The finalizers were this operator's alone (`revoke::FINALIZER`), as nearly every
    /// request's are: a flag rather than a list and a string of their own.
    revoke_finalizer_only: bool,
}

/// Within 432 bytes, an `Arc<StoredRequest>` takes 448 of the allocator, where 433 would take 512.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<StoredRequest>() <= 432);

/// The part of a request kept serialized.
#[derive(Serialize, Deserialize)]
struct Body {
    spec: KubeconfigRequestSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<KubeconfigRequestStatus>,
}

/// The stored form could not be read back; it was written by this process, so this is a bug,
/// reported and retried rather than a panic.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("the stored copy of the request cannot be decompressed: {0}")]
    Compressed(#[from] lz4_flex::block::DecompressError),
    #[error("the stored copy of the request cannot be read back: {0}")]
    Json(#[from] serde_json::Error),
}

/// A body of the usual shape, both kinds of request in one, which each stored body is
/// compressed against. Built from the types, so that a renamed field is still in it, and once
/// per process, as the store is: the current time's date is what a status's recent times
/// begin with.
static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let now = Utc::now();
    let usual = Body {
        spec: KubeconfigRequestSpec {
            token_secret_ref: Some(TokenSecretRef {
                name: "token".into(),
                key: "token".into(),
            }),
            service_account: Some(ServiceAccountSource {
                name: String::new(),
                expiration_seconds: 3600,
                audiences: Vec::new(),
            }),
            user: None,
            namespace: None,
            creator: None,
            secret_name: Some("-kubeconfig".into()),
            format: Format::default(),
            secret_keys: default_secret_keys(),
            secret_template: None,
            renew_before: None,
            renew_before_percentage: None,
        },
        status: Some(KubeconfigRequestStatus {
            conditions: vec![Condition {
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
                message: String::new(),
                observed_generation: Some(1),
                reason: Reason::Issued.as_str().into(),
                status: "True".into(),
                type_: READY.into(),
            }],
            secret_name: Some("-kubeconfig".into()),
            credential_id: Some("JTI=".into()),
            expires_at: Some(status_time(now)),
            renewal_time: Some(status_time(now)),
            credential: Some("SHA256=".into()),
            ..KubeconfigRequestStatus::default()
        }),
    };
    serde_json::to_vec(&usual).unwrap_or_default()
});

impl From<KubeconfigRequest> for StoredRequest {
    fn from(request: KubeconfigRequest) -> Self {
        let ready = request
            .ready_condition()
            .map(|ready| ReadyStatus::of(&ready.status));
        let KubeconfigRequest {
            metadata,
            mut spec,
            mut status,
        } = request;
        let annotations = metadata
            .annotations
            .and_then(|annotations| {
                annotations
                    .into_iter()
                    .find(|(key, _)| key == RENEW_ANNOTATION)
            })
            .map(|renew| [renew].into());
        let resource_version = metadata.resource_version;
        let revoke_finalizer_only = metadata
            .finalizers
            .as_deref()
            .is_some_and(|finalizers| finalizers == [FINALIZER]);
        let uid = metadata.uid.as_deref().and_then(usual_uuid);
        let metadata = ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            uid: metadata.uid.filter(|_| uid.is_none()),
            generation: metadata.generation,
            deletion_timestamp: metadata.deletion_timestamp,
            finalizers: metadata.finalizers.filter(|_| !revoke_finalizer_only),
            annotations,
            ..ObjectMeta::default()
        };
        // The creator is read only before a ServiceAccount token is minted (`creator.rs`); an
        // ID-token request never mints.
        if spec.token_secret_ref.is_some() {
            spec.creator = None;
        }
        if let Some(status) = &mut status {
            keep_read_back(status);
        }
        let (expires_at, renewal_time) = match &mut status {
            Some(status) => (
                timestamp(&mut status.expires_at),
                timestamp(&mut status.renewal_time),
            ),
            None => (None, None),
        };
        // Neither fails for these types and sizes; if one did, the empty body would be reported
        // as unreadable when the request is reconciled.
        let json = serde_json::to_vec(&Body { spec, status }).unwrap_or_default();
        let body_len = u32::try_from(json.len()).unwrap_or_default();
        let body = lz4_flex::block::compress_with_dict(&json, &DICTIONARY).into_boxed_slice();
        Self {
            metadata,
            uid,
            resource_version: resource_version.map(String::into_boxed_str),
            body,
            body_len,
            ready,
            expires_at,
            renewal_time,
            revoke_finalizer_only,
        }
    }
}

/// The uid as a UUID, if it is one in the form the API server writes (lowercase, hyphenated),
/// so that it is given back exactly.
fn usual_uuid(uid: &str) -> Option<Uuid> {
    let parsed = Uuid::try_parse(uid).ok()?;
    let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
    (parsed.hyphenated().encode_lower(&mut text) == uid).then_some(parsed)
}

/// A status time as seconds, taken out of `time` when formatting them gives it back exactly.
fn timestamp(time: &mut Option<String>) -> Option<NonZeroI64> {
    let seconds = DateTime::parse_from_rfc3339(time.as_deref()?)
        .ok()?
        .timestamp();
    let seconds = NonZeroI64::new(seconds)?;
    if time.as_deref() == formatted(seconds).as_deref() {
        *time = None;
    }
    Some(seconds)
}

fn formatted(seconds: NonZeroI64) -> Option<String> {
    DateTime::from_timestamp(seconds.get(), 0).map(status_time)
}

/// Leaves in a stored status only what the controller and the metrics read back: the
/// conditions' status, reason, generation and transition time, the Secret, the credential and
/// its times, the renewal asked for. The rest (identity, groups, messages) is written, never
/// read; `digest` still covers it.
fn keep_read_back(status: &mut KubeconfigRequestStatus) {
    for condition in &mut status.conditions {
        condition.message = String::new();
    }
    status.username = None;
    status.groups = Vec::new();
    status.identity = None;
    status.granted_expiration_seconds = None;
    status.observed_generation = None;
}

/// kube-runtime's controller asks that what it stores can be read from the API server's JSON.
impl<'de> Deserialize<'de> for StoredRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        KubeconfigRequest::deserialize(deserializer).map(Self::from)
    }
}

impl StoredRequest {
    /// The request's uid, wherever it is kept, which tells it from an earlier request of the
    /// same name. (`ResourceExt::uid` reads only `metadata`.)
    pub(super) fn uid(&self) -> Option<Cow<'_, str>> {
        match &self.uid {
            Some(uid) => Some(Cow::Owned(uid.hyphenated().to_string())),
            None => self.metadata.uid.as_deref().map(Cow::Borrowed),
        }
    }

    /// The request as reconciling reads it: what the store kept, typed again.
    pub(super) fn request(&self) -> Result<KubeconfigRequest, Unreadable> {
        let json =
            lz4_flex::block::decompress_with_dict(&self.body, self.body_len as usize, &DICTIONARY)?;
        let Body { spec, mut status } = serde_json::from_slice(&json)?;
        if let Some(status) = &mut status {
            if status.expires_at.is_none() {
                status.expires_at = self.expires_at.and_then(formatted);
            }
            if status.renewal_time.is_none() {
                status.renewal_time = self.renewal_time.and_then(formatted);
            }
        }
        let mut metadata = self.metadata.clone();
        metadata.uid = self.uid().map(Cow::into_owned);
        metadata.resource_version = self.resource_version.as_deref().map(str::to_owned);
        if self.revoke_finalizer_only {
            metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
        }
        Ok(KubeconfigRequest {
            metadata,
            spec,
            status,
        })
    }
}

/// How the controller names `request` (see [`Request`]).
pub(super) fn reference(request: &impl Resource) -> Request {
    let meta = request.meta();
    let name = Request::new(meta.name.as_deref().unwrap_or_default());
    match &meta.namespace {
        Some(namespace) => name.within(namespace),
        None => name,
    }
}

/// A watch event on a request, for the store.
pub(super) fn stored(event: watcher::Event<KubeconfigRequest>) -> watcher::Event<StoredRequest> {
    match event {
        watcher::Event::Apply(request) => watcher::Event::Apply(request.into()),
        watcher::Event::Delete(request) => watcher::Event::Delete(request.into()),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(request) => watcher::Event::InitApply(request.into()),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

impl Resource for StoredRequest {
    type DynamicType = ();
    type Scope = <KubeconfigRequest as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        KubeconfigRequest::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        KubeconfigRequest::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        KubeconfigRequest::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        KubeconfigRequest::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl RequestState for StoredRequest {
    fn namespace_and_name(&self) -> Option<(&str, &str)> {
        Some((
            self.metadata.namespace.as_deref()?,
            self.metadata.name.as_deref()?,
        ))
    }

    fn ready(&self) -> Option<ReadyStatus> {
        self.ready
    }

    fn expires_at(&self) -> Option<i64> {
        self.expires_at.map(NonZeroI64::get)
    }

    fn renewal_time(&self) -> Option<i64> {
        self.renewal_time.map(NonZeroI64::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn request(name: &str, status: serde_json::Value) -> KubeconfigRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubeconfig.dev/v1alpha1",
            "kind": "KubeconfigRequest",
            "metadata": {"name": name, "namespace": "team-a", "uid": name},
            "spec": {"tokenSecretRef": {"name": "token"}},
            "status": status,
        }))
        .expect("a valid request")
    }

    #[test]
    fn per_request_series_follow_the_store() {
        use kube::runtime::{reflector, watcher::Event};

        let metrics = Metrics::default();
        let (store, mut writer) = reflector::store::<StoredRequest>();
        let issued = request(
            "alice",
            serde_json::json!({
                "expiresAt": "2033-05-18T03:33:20Z",
                "renewalTime": "2033-05-18T03:13:20Z",
                "conditions": [{"type": "Ready", "status": "True", "reason": "Issued",
                    "message": "", "lastTransitionTime": "2026-11-24T00:00:00Z"}],
            }),
        );
        let refused = request(
            "bob",
            serde_json::json!({
                "conditions": [{"type": "Ready", "status": "False", "reason": "TokenExpired",
                    "message": "", "lastTransitionTime": "2026-11-24T00:00:00Z"}],
            }),
        );
        let unseen = request("carol", serde_json::json!({}));
        let unknown = request(
            "dave",
            serde_json::json!({
                "conditions": [{"type": "Ready", "status": "Unknown", "reason": "Pending",
                    "message": "", "lastTransitionTime": "2026-11-24T00:00:00Z"}],
            }),
        );
        for request in [&issued, &refused, &unseen, &unknown] {
            writer.apply_watcher_event(&Event::Apply(request.clone().into()));
        }
        assert!(
            !metrics.render().contains("alice"),
            "nothing is exported before the controller runs"
        );

        metrics.requests.export(store);
        let text = metrics.render();
        for line in [
            r#"kubeconfig_operator_request_expiration_timestamp_seconds{namespace="team-a",name="alice"} 2000000000"#,
            r#"kubeconfig_operator_request_renewal_timestamp_seconds{namespace="team-a",name="alice"} 1999998800"#,
            r#"kubeconfig_operator_request_ready_status{namespace="team-a",name="alice",condition="True"} 1"#,
            r#"kubeconfig_operator_request_ready_status{namespace="team-a",name="alice",condition="False"} 0"#,
            r#"kubeconfig_operator_request_ready_status{namespace="team-a",name="bob",condition="False"} 1"#,
            r#"kubeconfig_operator_request_ready_status{namespace="team-a",name="dave",condition="True"} 0"#,
            r#"kubeconfig_operator_request_ready_status{namespace="team-a",name="dave",condition="False"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains(r#"timestamp_seconds{namespace="team-a",name="bob"}"#),
            "a refused request has no times: {text}"
        );
        assert!(!text.contains("carol"), "not yet reconciled: {text}");

        writer.apply_watcher_event(&Event::Delete(issued.into()));
        let text = metrics.render();
        assert!(!text.contains("alice"), "{text}");
        assert!(text.contains("bob"), "{text}");

        metrics.requests.clear();
        assert!(!metrics.render().contains("bob"));
    }

    /// A Ready request as the operator leaves it: what the dictionary is for. Its JSON is
    /// mostly the names and values every request repeats, and the credential's 64 hex digits,
    /// which no dictionary can shorten.
    #[test]
    fn a_ready_request_is_stored_in_a_third_of_its_json() {
        let now = status_time(Utc::now());
        let issued = request(
            "alice",
            serde_json::json!({
                "conditions": [{"type": "Ready", "status": "True", "reason": "Issued",
                    "message": "", "observedGeneration": 1, "lastTransitionTime": now}],
                "secretName": "alice-kubeconfig",
                "credential": "SHA256=b0aea8bb9d53497dc30f6238aec8bb3ee563d9db61a230ee4045206934db45d7",
            }),
        );
        let stored = StoredRequest::from(issued.clone());
        let json = stored.body_len as usize;
        assert!(
            stored.body.len() * 3 <= json,
            "{} bytes stored for {json} bytes of JSON",
            stored.body.len()
        );
        assert_eq!(stored.request().unwrap().status, issued.status);
    }
}
