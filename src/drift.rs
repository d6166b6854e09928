//! A refused edit of the authentication configuration as a `Warning` Event, beside the metric and
//! the `/readyz` line: the operator keeps its last good configuration while the API server may
//! already hold the edited one, and an administrator who changed the file looks at Events first.
//!
//! The Event goes on the object that stands for this replica: the leader-election Lease when
//! there is one (every replica reads the file itself, so each reports its own refusal, named by
//! `reportingInstance`), else the replica's Pod (`POD_NAME` from the downward API, in the
//! namespace of its ServiceAccount). A process with neither (outside a cluster, without leader
//! election) has nothing to attach an Event to and only logs.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{Client, runtime::events::EventType};
use tokio::sync::watch;

use crate::{
    config::{LeaderElectionSettings, PodEnvironment},
    controller::FIELD_MANAGER,
    events::{self, Record},
    oidc::verify::RefusedEdit,
};

/// The Event's reason, for `kubectl get events --field-selector reason=...`.
pub const REASON: &str = "AuthenticationConfigRejected";

/// The Lease when leader election is on, else this replica's Pod when it knows its name.
pub fn regarding(leader_election: Option<&LeaderElectionSettings>) -> Option<ObjectReference> {
    if let Some(lease) = leader_election {
        return Some(ObjectReference {
            api_version: Some("coordination.k8s.io/v1".into()),
            kind: Some("Lease".into()),
            name: Some(lease.lease_name.clone()),
            namespace: Some(lease.namespace.clone()),
            ..ObjectReference::default()
        });
    }
    let name = std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())?;
    Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name),
        namespace: PodEnvironment::detect().namespace,
        ..ObjectReference::default()
    })
}

/// Runs until the verifier is gone: one Event per refused content (the verifier reports each
/// once), none when the file is back to one in force.
pub async fn report(
    client: Client,
    mut edits: watch::Receiver<Option<RefusedEdit>>,
    regarding: ObjectReference,
    instance: String,
) {
    while edits.changed().await.is_ok() {
        let Some(edit) = edits.borrow_and_update().clone() else {
            continue;
        };
        events::publish(
            client.clone(),
            regarding.clone(),
            Record {
                type_: EventType::Warning,
                reason: REASON,
                action: "Reload",
                note: note(&edit),
                controller: FIELD_MANAGER,
                instance: &instance,
            },
        )
        .await;
    }
}

/// What the Event says: why (the problem names the content's digest) and what stays in force.
fn note(edit: &RefusedEdit) -> String {
    format!(
        "the changed authentication configuration is refused and the previous one stays in force until the file is fixed: {}",
        edit.problem
    )
}
