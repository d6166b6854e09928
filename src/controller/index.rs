//! Which requests a Secret or ServiceAccount event concerns, kept current from the request watch
//! itself. Every Secret in the cluster passes through the Secret watch; looking each one up here
//! costs a hash lookup, where scanning every request for every Secret cost the operator most of
//! its CPU once requests numbered in the thousands.
//!
//! The index also remembers the resourceVersion of each Secret the operator wrote last, so the
//! watch event caused by its own write does not start another reconciliation.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use kube::{
    ResourceExt,
    runtime::{reflector::ObjectRef, watcher},
};

use crate::crd::KubeconfigRequest;

use super::{cache::release_spare_capacity, secret};

type Request = ObjectRef<KubeconfigRequest>;
/// One allocation per request, shared by every map that files it: with 10,000 requests, a copy
/// of the reference in each map (with its uid and resourceVersion, which equality ignores) made
/// the index 2.3 KB a request (heaptrack).
type Filed = Arc<Request>;
/// A namespaced object's namespace and name.
pub(super) type Key = (String, String);

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
    /// Token Secret -> the requests that read it.
    token_secrets: HashMap<Key, HashSet<Filed>>,
    /// Kubeconfig Secret (the one a request writes, or the one its status names) -> requests.
    written_secrets: HashMap<Key, HashSet<Filed>>,
    /// ServiceAccount -> the requests that name it.
    accounts: HashMap<Key, HashSet<Filed>>,
    /// Request uid -> request, for Secrets that name their owner.
    uids: HashMap<String, Filed>,
    /// What each request is filed under, so a change or deletion can unfile exactly that.
    filed: HashMap<Filed, Filing>,
    /// resourceVersion of the operator's own last write to each kubeconfig Secret.
    own_writes: HashMap<Key, String>,
    /// How many requests each namespace holds.
    namespaces: HashMap<String, usize>,
    /// Requests seen since a re-list began; the rest are gone when it ends.
    relisted: Option<HashSet<Filed>>,
}

#[derive(Default)]
struct Filing {
    token_secret: Option<Key>,
    written_secrets: Vec<Key>,
    account: Option<Key>,
    uid: Option<String>,
}

fn unfile<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, HashSet<Filed>>,
    key: K,
    request: &Request,
) {
    if let Some(requests) = map.get_mut(&key) {
        requests.remove(request);
        if requests.is_empty() {
            map.remove(&key);
        }
    }
}

impl Inner {
    fn remove(&mut self, request: &Request) {
        let Some(filing) = self.filed.remove(request) else {
            return;
        };
        if let Some(key) = filing.token_secret {
            unfile(&mut self.token_secrets, key, request);
        }
        for key in filing.written_secrets {
            self.own_writes.remove(&key);
            unfile(&mut self.written_secrets, key, request);
        }
        if let Some(key) = filing.account {
            unfile(&mut self.accounts, key, request);
        }
        if let Some(uid) = filing.uid {
            self.uids.remove(&uid);
        }
        if let Some(namespace) = &request.namespace
            && let Some(count) = self.namespaces.get_mut(namespace)
        {
            *count -= 1;
            if *count == 0 {
                self.namespaces.remove(namespace);
            }
        }
    }

    fn insert(&mut self, request: &KubeconfigRequest) -> Option<Filed> {
        let namespace = request.namespace()?;
        let reference = Arc::new(Request::new(&request.name_any()).within(&namespace));
        self.remove(&reference);
        let key = |name: &str| (namespace.clone(), name.to_owned());
        let mut written = vec![key(&secret::target_name(request))];
        if let Some(named) = request
            .status
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            && named != written[0].1
        {
            written.push(key(named));
        }
        let filing = Filing {
            token_secret: request
                .spec
                .token_secret_ref
                .as_ref()
                .map(|reference| key(&reference.name)),
            written_secrets: written,
            account: request
                .spec
                .service_account
                .as_ref()
                .map(|source| key(&source.name)),
            uid: request.uid(),
        };
        if let Some(key) = &filing.token_secret {
            self.token_secrets
                .entry(key.clone())
                .or_default()
                .insert(Arc::clone(&reference));
        }
        for key in &filing.written_secrets {
            self.written_secrets
                .entry(key.clone())
                .or_default()
                .insert(Arc::clone(&reference));
        }
        if let Some(key) = &filing.account {
            self.accounts
                .entry(key.clone())
                .or_default()
                .insert(Arc::clone(&reference));
        }
        if let Some(uid) = &filing.uid {
            self.uids.insert(uid.clone(), Arc::clone(&reference));
        }
        self.filed.insert(Arc::clone(&reference), filing);
        *self.namespaces.entry(namespace).or_default() += 1;
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
                let reference = ObjectRef::from_obj(request);
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
                let gone: Vec<Request> = inner
                    .filed
                    .keys()
                    .filter(|request| !relisted.contains(*request))
                    .map(|request| Request::clone(request))
                    .collect();
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
        owner_uids: &[&str],
    ) -> Affected {
        let inner = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let token_readers = inner.token_secrets.get(&key);
        if token_readers.is_none()
            && resource_version.is_some()
            && inner.own_writes.get(&key).map(String::as_str) == resource_version
        {
            return Affected::default();
        }
        let mut requests: HashSet<&Filed> = HashSet::new();
        requests.extend(token_readers.into_iter().flatten());
        requests.extend(inner.written_secrets.get(&key).into_iter().flatten());
        requests.extend(owner_uids.iter().filter_map(|uid| inner.uids.get(*uid)));
        Affected {
            requests: requests
                .into_iter()
                .map(|request| Request::clone(request))
                .collect(),
            is_token_secret: token_readers.is_some(),
        }
    }

    /// The requests naming a ServiceAccount.
    pub fn for_account(&self, namespace: &str, name: &str) -> Vec<Request> {
        let key = (namespace.to_owned(), name.to_owned());
        self.lock()
            .accounts
            .get(&key)
            .map(|requests| {
                requests
                    .iter()
                    .map(|request| Request::clone(request))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Notes the resourceVersion the operator's write of a kubeconfig Secret produced.
    pub fn wrote(&self, namespace: &str, name: &str, resource_version: Option<String>) {
        let key = (namespace.to_owned(), name.to_owned());
        let mut inner = self.lock();
        match resource_version {
            Some(version) if inner.written_secrets.contains_key(&key) => {
                inner.own_writes.insert(key, version);
            }
            _ => {
                inner.own_writes.remove(&key);
            }
        }
    }

    /// Whether some request reads this token Secret (its cached reads are still worth keeping).
    pub fn is_token_secret(&self, key: &Key) -> bool {
        self.lock().token_secrets.contains_key(key)
    }

    /// Whether the request is known, i.e. it exists as of the watch.
    pub fn contains(&self, request: &Request) -> bool {
        self.lock().filed.contains_key(request)
    }

    /// Shrinks the tables a burst of requests, since deleted, left oversized.
    pub fn release_spare_capacity(&self) {
        let mut inner = self.lock();
        release_spare_capacity(&mut inner.token_secrets);
        release_spare_capacity(&mut inner.written_secrets);
        release_spare_capacity(&mut inner.accounts);
        release_spare_capacity(&mut inner.uids);
        release_spare_capacity(&mut inner.filed);
        release_spare_capacity(&mut inner.own_writes);
        release_spare_capacity(&mut inner.namespaces);
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
            names(&index.for_secret("team", "unrelated", None, &["uid-b"])),
            ["bob"]
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

        let gone = index.observe(&watcher::Event::Delete(alice));
        assert_eq!(gone.len(), 1);
        assert!(
            index
                .for_secret("team", "alice-kubeconfig", None, &[])
                .requests
                .is_empty()
        );
        assert!(!index.is_token_secret(&("team".into(), "shared".into())));
        assert!(index.has_namespace("team"));
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
                .for_secret("team", "alice-kubeconfig", Some("7"), &["uid-a"])
                .requests
                .is_empty()
        );
        assert_eq!(
            names(&index.for_secret("team", "alice-kubeconfig", Some("8"), &["uid-a"])),
            ["alice"]
        );
        // Nothing is remembered for a Secret no request writes.
        index.wrote("team", "stranger", Some("9".into()));
        assert_eq!(
            index
                .for_secret("team", "stranger", Some("9"), &["uid-a"])
                .requests
                .len(),
            1
        );
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
        assert_eq!(
            index.for_account("team", "ci"),
            [ObjectRef::from_obj(&alice)]
        );
        assert!(index.contains(&ObjectRef::from_obj(&alice)));
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
        for capacity in [
            inner.filed.capacity(),
            inner.token_secrets.capacity(),
            inner.written_secrets.capacity(),
            inner.uids.capacity(),
        ] {
            assert!(capacity < full / 10, "{capacity} of {full}");
        }
        drop(inner);
        let survivor = index.for_secret("team", "token-0", Some("1"), &[]);
        assert_eq!(names(&survivor), ["r0"]);
    }
}
