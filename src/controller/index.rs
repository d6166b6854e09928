//! Which requests a Secret or ServiceAccount event concerns, kept current from the request watch
//! itself. Every Secret in the cluster passes through the Secret watch; looking each one up here
//! costs a hash lookup, where scanning every request for every Secret cost the operator most of
//! its CPU once requests numbered in the thousands.
//!
//! The index also remembers the resourceVersion of each Secret the operator wrote last, so the
//! watch event caused by its own write does not start another reconciliation, and a digest of
//! each request's status as the API server holds it, so the store can keep only the part of the
//! status that reconciling reads back (`stored.rs`) while an unchanged status is
//! still not written again.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    num::NonZeroU64,
    sync::{Arc, LazyLock, Mutex, MutexGuard},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt, runtime::watcher};

use crate::{
    capacity::{nonzero_hash, release_spare_capacity},
    crd::KubeconfigRequest,
};

use super::{
    cache::SecretKey,
    key::{Filed, Key, Named},
    secret, status,
    stored::{self, Request},
};

/// A Secret's or ServiceAccount's name within its namespace's tables, shared with the filings
/// that name it.
type Name = Arc<str>;

/// The requests an event maps to, and whether the Secret is some request's token Secret.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Affected {
    pub requests: Vec<Request>,
    pub is_token_secret: bool,
}

#[derive(Default)]
pub(super) struct RequestIndex {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Each namespace's tables, gone with the namespace's last request.
    namespaces: HashMap<Arc<str>, Tables>,
    /// What each request is filed under, so a change or deletion can unfile exactly that.
    filed: HashMap<Filed, Filing>,
    /// Requests seen since a re-list began; the rest are gone when it ends.
    relisted: Option<HashSet<Filed>>,
}

/// One namespace's part of the index, keyed by bare names. With 10,000 requests, keys of
/// (namespace, name) and a hash set per key made up most of the index's 11.6 MB (heaptrack); a
/// name is usually read or written by a single request.
#[derive(Default)]
struct Tables {
    /// Token Secret -> the requests that read it.
    token_secrets: HashMap<Name, Vec<Filed>>,
    /// Kubeconfig Secret (the one a request writes, or the one its status names) -> requests,
    /// and the operator's own last write to it.
    written_secrets: HashMap<Name, Written>,
    /// ServiceAccount -> the requests that name it.
    accounts: HashMap<Name, Vec<Filed>>,
    /// How many requests are filed here.
    requests: usize,
}

impl Tables {
    fn release_spare_capacity(&mut self) {
        release_spare_capacity(&mut self.token_secrets);
        release_spare_capacity(&mut self.written_secrets);
        release_spare_capacity(&mut self.accounts);
    }
}

/// The requests writing a kubeconfig Secret, and the resourceVersion of the operator's own last
/// write to it, which goes with the last of them. In one table rather than two, a Secret's
/// name is filed once.
#[derive(Default)]
struct Written {
    requests: Vec<Filed>,
    own_write: Option<Box<str>>,
}

/// The requests filed under a name.
trait Filers: Default {
    fn requests(&mut self) -> &mut Vec<Filed>;
}

impl Filers for Vec<Filed> {
    fn requests(&mut self) -> &mut Vec<Filed> {
        self
    }
}

impl Filers for Written {
    fn requests(&mut self) -> &mut Vec<Filed> {
        &mut self.requests
    }
}

/// Held as long as the request exists: no field takes more room than it needs.
struct Filing {
    token_secret: Option<Name>,
    /// The Secret the request writes, and the one its status names if that is another.
    written_secrets: (Name, Option<Name>),
    account: Option<Name>,
    /// [`uid_digest`] of the request's uid. A Secret's owner reference names the request, and
    /// the uid tells it from an earlier request of the same name (whose Secret the garbage
    /// collector is about to delete).
    uid: Option<NonZeroU64>,
    /// [`status::digest`] of the request's whole status as last seen.
    status: Option<NonZeroU64>,
    /// What a change must touch to be reconciled, as last let through
    /// ([`RequestIndex::trigger_changed`]). Kept here, it goes with the request; kube-runtime's
    /// predicate cache kept its own copy of each request's name, namespace and uid, 0.25 KB, and
    /// a deleted request's for up to two hours.
    trigger: Option<NonZeroU64>,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<Filing>() == 88);

/// Keyed once per process, as the status digests are (`status.rs`): two uids with the same
/// digest would only make a Secret's events reconcile a request they do not concern.
static UID_KEYS: LazyLock<RandomState> = LazyLock::new(RandomState::new);

fn uid_digest(uid: &str) -> NonZeroU64 {
    nonzero_hash(UID_KEYS.hash_one(uid))
}

/// Files `request` under `name`, sharing the name with the other requests filed there. A name
/// is usually filed by one request: a new list has room for one, where a first push makes room
/// for four (24 bytes more for each name, in each table); a second grows it as usual.
fn file(map: &mut HashMap<Name, impl Filers>, name: &str, request: &Filed) -> Name {
    let shared = match map.get_key_value(name) {
        Some((shared, _)) => Arc::clone(shared),
        None => Arc::from(name),
    };
    let requests = map.entry(Arc::clone(&shared)).or_default().requests();
    if requests.is_empty() {
        requests.reserve_exact(1);
    }
    requests.push(Arc::clone(request));
    shared
}

/// Takes `request` out of `name`'s requests; a name left without requests goes, and with it
/// what else was kept for it (the operator's own last write).
fn unfile(map: &mut HashMap<Name, impl Filers>, name: &str, request: &Filed) {
    let Some(requests) = map.get_mut(name).map(Filers::requests) else {
        return;
    };
    if let Some(at) = requests
        .iter()
        .position(|filed| Arc::ptr_eq(filed, request))
    {
        requests.swap_remove(at);
    }
    if requests.is_empty() {
        map.remove(name);
    }
}

/// The requests behind shared references, as the controller takes them.
fn unshared<'a>(requests: impl IntoIterator<Item = &'a Filed>) -> Vec<Request> {
    requests.into_iter().map(|filed| filed.request()).collect()
}

/// How a watched request is looked up in tables keyed by [`Filed`].
fn named(request: &KubeconfigRequest) -> (&str, &str) {
    (
        request.metadata.namespace.as_deref().unwrap_or_default(),
        request.metadata.name.as_deref().unwrap_or_default(),
    )
}

impl Inner {
    fn remove(&mut self, request: &dyn Named) {
        if let Some((filed, filing)) = self.filed.remove_entry(request) {
            self.unfile(&filed, &filing);
        }
    }

    /// Takes `filed` out of every table its `filing` put it in. The record of the operator's own
    /// write to a Secret goes only with the last request writing that Secret.
    fn unfile(&mut self, filed: &Filed, filing: &Filing) {
        let namespace = filed.namespace();
        let Some(tables) = self.namespaces.get_mut(namespace) else {
            return;
        };
        if let Some(name) = &filing.token_secret {
            unfile(&mut tables.token_secrets, name, filed);
        }
        let (target, named) = &filing.written_secrets;
        for name in std::iter::once(target).chain(named) {
            unfile(&mut tables.written_secrets, name, filed);
        }
        if let Some(name) = &filing.account {
            unfile(&mut tables.accounts, name, filed);
        }
        tables.requests -= 1;
        if tables.requests == 0 {
            self.namespaces.remove(namespace);
        }
    }

    /// Files the request's current state first and then takes out its previous filing, so that
    /// what a name keeps across the change stays: most changes of a request are the operator's
    /// own status write, which follows its Secret write, and dropping the record of that write
    /// let the Secret's watch event, when it came second, start a needless reconciliation.
    fn insert(&mut self, request: &KubeconfigRequest) -> Option<Filed> {
        let namespace = request.namespace()?;
        let shared_namespace = match self.namespaces.get_key_value(namespace.as_str()) {
            Some((shared, _)) => Arc::clone(shared),
            None => {
                let shared = Arc::from(namespace.as_str());
                self.namespaces
                    .insert(Arc::clone(&shared), Tables::default());
                shared
            }
        };
        // The reference already filed, and the trigger last let through, which goes with it.
        let (reference, trigger) = match self.filed.get_key_value(&named(request) as &dyn Named) {
            Some((filed, filing)) => (Arc::clone(filed), filing.trigger),
            None => (
                Arc::new(Key::new(shared_namespace, &request.name_any())),
                None,
            ),
        };
        let tables = self.namespaces.get_mut(namespace.as_str())?;
        tables.requests += 1;
        let target = secret::target_name(request);
        let written_secrets = (
            file(&mut tables.written_secrets, &target, &reference),
            request
                .status
                .as_ref()
                .and_then(|s| s.secret_name.as_deref())
                .filter(|named| *named != target)
                .map(|named| file(&mut tables.written_secrets, named, &reference)),
        );
        let filing = Filing {
            token_secret: request
                .spec
                .token_secret_ref
                .as_ref()
                .map(|source| file(&mut tables.token_secrets, &source.name, &reference)),
            written_secrets,
            account: request
                .spec
                .service_account
                .as_ref()
                .map(|source| file(&mut tables.accounts, &source.name, &reference)),
            uid: request.metadata.uid.as_deref().map(uid_digest),
            status: request.status.as_ref().map(status::digest),
            trigger,
        };
        let previous = self.filed.insert(Arc::clone(&reference), filing);
        if let Some(previous) = previous {
            // The reference is the same allocation in both filings: this takes out one of its
            // places under each name the previous filing used.
            self.unfile(&reference, &previous);
        }
        Some(reference)
    }
}

impl RequestIndex {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Follows the request watch, before the reflector's store does. Returns the requests a
    /// deletion or a re-list removed, so their other state can go too.
    pub fn observe(&self, event: &watcher::Event<KubeconfigRequest>) -> Vec<Request> {
        let mut inner = self.lock();
        match event {
            watcher::Event::Apply(request) => {
                inner.insert(request);
                Vec::new()
            }
            watcher::Event::Delete(request) => {
                let reference = stored::reference(request);
                inner.remove(&reference);
                vec![reference]
            }
            watcher::Event::Init => {
                inner.relisted = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(request) => {
                if let Some(filed) = inner.insert(request)
                    && let Some(relisted) = inner.relisted.as_mut()
                {
                    relisted.insert(filed);
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let relisted = inner.relisted.take().unwrap_or_default();
                let gone = unshared(
                    inner
                        .filed
                        .keys()
                        .filter(|request| !relisted.contains(*request)),
                );
                for request in &gone {
                    inner.remove(request);
                }
                gone
            }
        }
    }

    /// The requests a Secret event concerns: those reading it as their token, writing it (so a
    /// conflict clears once it goes), having written it before, or owning it. None when the
    /// event reports the operator's own last write, which changes nothing it has not seen.
    pub fn for_secret(
        &self,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
        owners: &[OwnerReference],
    ) -> Affected {
        let inner = self.lock();
        let tables = inner.namespaces.get(namespace);
        let token_readers = tables.and_then(|tables| tables.token_secrets.get(name));
        let written = tables.and_then(|tables| tables.written_secrets.get(name));
        if token_readers.is_none()
            && resource_version.is_some()
            && written.and_then(|written| written.own_write.as_deref()) == resource_version
        {
            return Affected::default();
        }
        let mut requests: HashSet<&Filed> = HashSet::new();
        requests.extend(token_readers.into_iter().flatten());
        requests.extend(written.into_iter().flat_map(|written| &written.requests));
        requests.extend(
            owners
                .iter()
                .filter(|owner| owner.kind == KubeconfigRequest::kind(&()))
                .filter_map(|owner| {
                    let named: &dyn Named = &(namespace, owner.name.as_str());
                    let (filed, filing) = inner.filed.get_key_value(named)?;
                    (filing.uid == Some(uid_digest(&owner.uid))).then_some(filed)
                }),
        );
        Affected {
            requests: unshared(requests),
            is_token_secret: token_readers.is_some(),
        }
    }

    /// The requests naming a ServiceAccount.
    pub fn for_account(&self, namespace: &str, name: &str) -> Vec<Request> {
        let inner = self.lock();
        unshared(
            inner
                .namespaces
                .get(namespace)
                .and_then(|tables| tables.accounts.get(name))
                .into_iter()
                .flatten(),
        )
    }

    /// Notes the resourceVersion the operator's write of a kubeconfig Secret produced.
    pub fn wrote(&self, namespace: &str, name: &str, resource_version: Option<String>) {
        let mut inner = self.lock();
        let Some(tables) = inner.namespaces.get_mut(namespace) else {
            return;
        };
        if let Some(written) = tables.written_secrets.get_mut(name) {
            written.own_write = resource_version.map(String::into_boxed_str);
        }
    }

    /// The resourceVersion of this process's last write of a kubeconfig Secret, while a request
    /// still writes it.
    pub fn last_write(&self, namespace: &str, name: &str) -> Option<String> {
        self.lock()
            .namespaces
            .get(namespace)
            .and_then(|tables| tables.written_secrets.get(name)?.own_write.as_deref())
            .map(str::to_owned)
    }

    /// Whether some request reads this token Secret (its cached reads are still worth keeping).
    pub fn is_token_secret(&self, (namespace, name): &SecretKey) -> bool {
        self.lock()
            .namespaces
            .get(namespace.as_str())
            .is_some_and(|tables| tables.token_secrets.contains_key(name.as_str()))
    }

    /// The digest of the request's status as the watch last delivered it, before the store
    /// trimmed it.
    pub fn status_digest(&self, request: &KubeconfigRequest) -> Option<NonZeroU64> {
        self.lock()
            .filed
            .get(&named(request) as &dyn Named)
            .and_then(|filing| filing.status)
    }

    /// Whether `trigger` differs from the one last let through for `request`, which it then
    /// becomes. A request the index does not hold is always let through.
    pub fn trigger_changed(&self, request: &dyn Named, trigger: NonZeroU64) -> bool {
        self.lock()
            .filed
            .get_mut(request)
            .is_none_or(|filing| filing.trigger.replace(trigger) != Some(trigger))
    }

    /// Whether the request is known, i.e. it exists as of the watch.
    pub fn contains(&self, request: &dyn Named) -> bool {
        self.lock().filed.contains_key(request)
    }

    /// The index's own reference to a request it knows, for state kept as long as the request.
    pub fn filed(&self, request: &dyn Named) -> Option<Filed> {
        self.lock()
            .filed
            .get_key_value(request)
            .map(|(filed, _)| Arc::clone(filed))
    }

    /// Shrinks the tables a burst of requests, since deleted, left oversized.
    pub fn release_spare_capacity(&self) {
        let mut inner = self.lock();
        release_spare_capacity(&mut inner.filed);
        release_spare_capacity(&mut inner.namespaces);
        for tables in inner.namespaces.values_mut() {
            tables.release_spare_capacity();
        }
    }

    /// Whether any known request lives in the namespace.
    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.lock().namespaces.contains_key(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::KubeconfigRequestStatus;

    fn request(name: &str, uid: &str, spec: serde_json::Value) -> KubeconfigRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubeconfig.dev/v1alpha1",
            "kind": "KubeconfigRequest",
            "metadata": {"name": name, "namespace": "team", "uid": uid},
            "spec": spec,
        }))
        .unwrap()
    }

    fn owner(name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            kind: KubeconfigRequest::kind(&()).into(),
            name: name.into(),
            uid: uid.into(),
            ..OwnerReference::default()
        }
    }

    fn names(affected: &Affected) -> Vec<String> {
        let mut names: Vec<String> = affected.requests.iter().map(|r| r.name.clone()).collect();
        names.sort();
        names
    }

    #[test]
    fn secrets_map_to_readers_writers_and_owners_and_follow_changes() {
        let index = RequestIndex::default();
        let alice = request(
            "alice",
            "uid-a",
            serde_json::json!({"tokenSecretRef": {"name": "shared"}}),
        );
        let bob = request(
            "bob",
            "uid-b",
            serde_json::json!({"tokenSecretRef": {"name": "shared"}, "secretName": "bob-out"}),
        );
        index.observe(&watcher::Event::Apply(alice.clone()));
        index.observe(&watcher::Event::Apply(bob.clone()));

        let shared = index.for_secret("team", "shared", Some("1"), &[]);
        assert_eq!(names(&shared), ["alice", "bob"]);
        assert!(shared.is_token_secret);
        assert_eq!(
            names(&index.for_secret("team", "alice-kubeconfig", None, &[])),
            ["alice"]
        );
        assert_eq!(
            names(&index.for_secret("team", "bob-out", None, &[])),
            ["bob"]
        );
        assert_eq!(
            names(&index.for_secret("team", "unrelated", None, &[owner("bob", "uid-b")])),
            ["bob"]
        );
        let not_a_request = OwnerReference {
            kind: "ConfigMap".into(),
            ..owner("bob", "uid-b")
        };
        assert!(
            index
                .for_secret("team", "unrelated", None, &[not_a_request])
                .requests
                .is_empty(),
            "an owner of another kind is not a request"
        );
        assert!(
            index
                .for_secret("other", "shared", None, &[])
                .requests
                .is_empty()
        );

        // bob moves to another Secret name and keeps the old one in status: both map to him.
        let mut moved = request(
            "bob",
            "uid-b",
            serde_json::json!({"tokenSecretRef": {"name": "own"}, "secretName": "bob-new"}),
        );
        moved.status = Some(KubeconfigRequestStatus {
            secret_name: Some("bob-out".into()),
            ..KubeconfigRequestStatus::default()
        });
        index.observe(&watcher::Event::Apply(moved));
        assert_eq!(
            names(&index.for_secret("team", "shared", None, &[])),
            ["alice"]
        );
        assert_eq!(
            names(&index.for_secret("team", "bob-new", None, &[])),
            ["bob"]
        );
        assert_eq!(
            names(&index.for_secret("team", "bob-out", None, &[])),
            ["bob"]
        );
        assert_eq!(
            names(&index.for_secret("team", "unrelated", None, &[owner("bob", "uid-b")])),
            ["bob"],
            "a changed request is still found by its uid"
        );

        let gone = index.observe(&watcher::Event::Delete(alice));
        assert_eq!(gone.len(), 1);
        assert!(
            index
                .for_secret("team", "alice-kubeconfig", None, &[])
                .requests
                .is_empty()
        );
        assert!(!index.is_token_secret(&("team".into(), "shared".into())));
        assert!(index.is_token_secret(&("team".into(), "own".into())));
        assert!(index.has_namespace("team"));

        // The namespace's tables go with its last request.
        index.observe(&watcher::Event::Delete(bob));
        assert!(!index.has_namespace("team"));
        assert!(!index.is_token_secret(&("team".into(), "own".into())));
        assert!(
            index
                .for_secret("team", "bob-out", None, &[owner("bob", "uid-b")])
                .requests
                .is_empty()
        );
    }

    #[test]
    fn the_event_of_the_operators_own_write_maps_to_nothing_but_a_later_change_does() {
        let index = RequestIndex::default();
        index.observe(&watcher::Event::Apply(request(
            "alice",
            "uid-a",
            serde_json::json!({"tokenSecretRef": {"name": "t"}}),
        )));
        index.wrote("team", "alice-kubeconfig", Some("7".into()));
        assert!(
            index
                .for_secret(
                    "team",
                    "alice-kubeconfig",
                    Some("7"),
                    &[owner("alice", "uid-a")]
                )
                .requests
                .is_empty()
        );
        assert_eq!(
            names(&index.for_secret(
                "team",
                "alice-kubeconfig",
                Some("8"),
                &[owner("alice", "uid-a")]
            )),
            ["alice"]
        );
        // The request's own status write arrives as a change of the request: the Secret's
        // version is still the operator's own.
        let mut issued = request(
            "alice",
            "uid-a",
            serde_json::json!({"tokenSecretRef": {"name": "t"}}),
        );
        issued.status = Some(KubeconfigRequestStatus {
            secret_name: Some("alice-kubeconfig".into()),
            ..KubeconfigRequestStatus::default()
        });
        index.observe(&watcher::Event::Apply(issued));
        assert!(
            index
                .for_secret(
                    "team",
                    "alice-kubeconfig",
                    Some("7"),
                    &[owner("alice", "uid-a")]
                )
                .requests
                .is_empty()
        );
        // Nothing is remembered for a Secret no request writes.
        index.wrote("team", "stranger", Some("9".into()));
        assert_eq!(
            index
                .for_secret("team", "stranger", Some("9"), &[owner("alice", "uid-a")])
                .requests
                .len(),
            1
        );
    }

    /// What keeps state as long as a request lives (its renewal wake-up) holds the index's own
    /// reference, so the reference must outlive the request's changes, a recreation under the
    /// same name included, whose new uid replaces the old.
    #[test]
    fn a_request_keeps_one_reference_across_its_changes() {
        let index = RequestIndex::default();
        let spec = serde_json::json!({"tokenSecretRef": {"name": "token"}});
        index.observe(&watcher::Event::Apply(request(
            "alice",
            "uid-1",
            spec.clone(),
        )));
        let reference = stored::reference(&request("alice", "uid-1", spec.clone()));
        let filed = index.filed(&reference).expect("alice is filed");

        let mut changed = request("alice", "uid-1", spec.clone());
        changed.status = Some(KubeconfigRequestStatus {
            secret_name: Some("alice-kubeconfig".into()),
            ..KubeconfigRequestStatus::default()
        });
        index.observe(&watcher::Event::Apply(changed));
        index.observe(&watcher::Event::Apply(request(
            "alice",
            "uid-2",
            spec.clone(),
        )));
        assert!(Arc::ptr_eq(&filed, &index.filed(&reference).unwrap()));
        assert!(
            index
                .for_secret("team", "other", None, &[owner("alice", "uid-1")])
                .requests
                .is_empty()
        );
        assert_eq!(
            names(&index.for_secret("team", "other", None, &[owner("alice", "uid-2")])),
            ["alice"]
        );
        assert_eq!(
            names(&index.for_secret("team", "token", None, &[])),
            ["alice"]
        );

        index.observe(&watcher::Event::Delete(request("alice", "uid-2", spec)));
        assert!(index.filed(&reference).is_none());
    }

    #[test]
    fn a_trigger_lets_a_request_through_once_per_change_and_goes_with_it() {
        let index = RequestIndex::default();
        let alice = request(
            "alice",
            "uid-a",
            serde_json::json!({"tokenSecretRef": {"name": "t"}}),
        );
        let reference = stored::reference(&alice);
        let (one, two) = (NonZeroU64::MIN, NonZeroU64::MIN.saturating_add(1));
        index.observe(&watcher::Event::Apply(alice.clone()));
        assert!(index.trigger_changed(&reference, one), "first seen");
        assert!(!index.trigger_changed(&reference, one), "unchanged");
        // The operator's own status write files the request anew: the trigger stays.
        index.observe(&watcher::Event::Apply(alice.clone()));
        assert!(
            !index.trigger_changed(&reference, one),
            "after a status write"
        );
        // So does a re-list that still lists it.
        index.observe(&watcher::Event::Init);
        index.observe(&watcher::Event::InitApply(alice.clone()));
        index.observe(&watcher::Event::InitDone);
        assert!(!index.trigger_changed(&reference, one), "after a re-list");
        assert!(index.trigger_changed(&reference, two), "changed");

        index.observe(&watcher::Event::Delete(alice.clone()));
        assert!(!index.contains(&reference));
        // Recreated under the same name: let through again, whatever its trigger.
        index.observe(&watcher::Event::Apply(alice));
        assert!(index.trigger_changed(&reference, two), "recreated");
    }

    #[test]
    fn a_relist_drops_the_requests_it_no_longer_lists() {
        let index = RequestIndex::default();
        let alice = request(
            "alice",
            "uid-a",
            serde_json::json!({"serviceAccount": {"name": "ci"}}),
        );
        let bob = request(
            "bob",
            "uid-b",
            serde_json::json!({"serviceAccount": {"name": "ci"}}),
        );
        index.observe(&watcher::Event::Apply(alice.clone()));
        index.observe(&watcher::Event::Apply(bob));
        assert_eq!(index.for_account("team", "ci").len(), 2);

        index.observe(&watcher::Event::Init);
        index.observe(&watcher::Event::InitApply(alice.clone()));
        let gone = index.observe(&watcher::Event::InitDone);
        assert_eq!(
            gone.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["bob"]
        );
        assert_eq!(index.for_account("team", "ci"), [stored::reference(&alice)]);
        assert!(index.contains(&stored::reference(&alice)));
    }

    #[test]
    fn the_tables_of_a_deleted_burst_shrink_and_the_survivors_stay_filed() {
        let index = RequestIndex::default();
        let burst: Vec<KubeconfigRequest> = (0..5_000)
            .map(|n| {
                request(
                    &format!("r{n}"),
                    &format!("uid-{n}"),
                    serde_json::json!({"tokenSecretRef": {"name": format!("token-{n}")}}),
                )
            })
            .collect();
        for request in &burst {
            index.observe(&watcher::Event::Apply(request.clone()));
        }
        let full = index.lock().filed.capacity();
        for request in &burst[1..] {
            index.observe(&watcher::Event::Delete(request.clone()));
        }
        index.release_spare_capacity();

        let inner = index.lock();
        let tables = &inner.namespaces["team"];
        for capacity in [
            inner.filed.capacity(),
            tables.token_secrets.capacity(),
            tables.written_secrets.capacity(),
        ] {
            assert!(capacity < full / 10, "{capacity} of {full}");
        }
        drop(inner);
        let survivor = index.for_secret("team", "token-0", Some("1"), &[]);
        assert_eq!(names(&survivor), ["r0"]);
    }
}
