//! Recording one Event (`events.k8s.io/v1`) about an object, for `kubectl describe` and
//! `kubectl get events`: the controller's about requests, the process's about itself
//! ([`Replica`]).

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, Client, api::PostParams, runtime::events::EventType};
use tracing::warn;

use crate::config::{LeaderElectionSettings, PodEnvironment};

/// The longest note the API server accepts on an Event.
const MAX_NOTE_BYTES: usize = 1024;

/// What one Event says, and who says it.
pub struct Record<'a> {
    pub type_: EventType,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: String,
    /// `reportingController`: the operator's field manager name.
    pub controller: &'a str,
    /// `reportingInstance`: this replica.
    pub instance: &'a str,
}

/// Records `record` about `regarding`, in its namespace. Best effort: a failure is logged, never
/// returned, since no Event is worth failing the work it reports on. Written directly rather than
/// through kube's `Recorder`, whose series cache keeps every Event for six minutes after its
/// object is gone; callers only record transitions, so there are no repeats to fold.
pub async fn publish(client: Client, regarding: ObjectReference, record: Record<'_>) {
    let (Some(namespace), Some(name)) = (regarding.namespace.clone(), regarding.name.clone())
    else {
        return;
    };
    let mut note = record.note;
    if note.len() > MAX_NOTE_BYTES {
        let mut end = MAX_NOTE_BYTES;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    let now = k8s_openapi::jiff::Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            // As client-go names Events: the object's name and a nanosecond timestamp.
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(
            match record.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_owned(),
        ),
        reason: Some(record.reason.to_owned()),
        note: Some(note),
        action: Some(record.action.to_owned()),
        regarding: Some(regarding),
        reporting_controller: Some(record.controller.to_owned()),
        reporting_instance: Some(record.instance.to_owned()),
        ..Event::default()
    };
    let events: Api<Event> = Api::namespaced(client, &namespace);
    if let Err(error) = events.create(&PostParams::default(), &event).await {
        warn!(object = %name, %error, "cannot record event");
    }
}

/// This replica as the subject of Events about the process itself, such as a refused edit of the
/// authentication configuration or a grant the proxy lacks: what an administrator would look at
/// first is `kubectl get events` in the operator's namespace.
///
/// The Events go on the object that stands for this replica: the leader-election Lease when
/// there is one (each replica reports what it found itself, named by `reportingInstance`), else
/// the replica's Pod (`POD_NAME` from the downward API, in the namespace of its ServiceAccount).
/// A process with neither (outside a cluster, without leader election) has nothing to attach an
/// Event to and only logs.
#[derive(Clone)]
pub struct Replica {
    client: Client,
    regarding: ObjectReference,
    /// `reportingController`: the operator's field manager name.
    controller: &'static str,
    /// `reportingInstance`: this replica's identity.
    instance: String,
}

impl Replica {
    /// `None` when there is neither a Lease nor a Pod name.
    pub fn find(
        client: Client,
        leader_election: Option<&LeaderElectionSettings>,
        controller: &'static str,
        instance: String,
    ) -> Option<Self> {
        let regarding = match leader_election {
            Some(lease) => ObjectReference {
                api_version: Some("coordination.k8s.io/v1".into()),
                kind: Some("Lease".into()),
                name: Some(lease.lease_name.clone()),
                namespace: Some(lease.namespace.clone()),
                ..ObjectReference::default()
            },
            None => ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(
                    std::env::var("POD_NAME")
                        .ok()
                        .filter(|name| !name.is_empty())?,
                ),
                namespace: PodEnvironment::detect().namespace,
                ..ObjectReference::default()
            },
        };
        Some(Self {
            client,
            regarding,
            controller,
            instance,
        })
    }

    /// Records a `Warning` Event about this replica; best effort, as [`publish`].
    pub async fn warn(&self, reason: &str, action: &str, note: String) {
        publish(
            self.client.clone(),
            self.regarding.clone(),
            Record {
                type_: EventType::Warning,
                reason,
                action,
                note,
                controller: self.controller,
                instance: &self.instance,
            },
        )
        .await;
    }
}
