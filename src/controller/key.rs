//! How the state the controller keeps as long as a request exists (the request index, the
//! renewal wake-ups) names the request, and finds it again from kube-runtime's reference.

use std::{
    borrow::Borrow,
    cmp::Ordering,
    hash::{Hash, Hasher},
    sync::Arc,
};

use super::stored::Request;

/// A request's namespace, shared by all the namespace's requests, and its name. A [`Request`]
/// is 96 bytes before its two strings, and this 32; kube-runtime's controller is handed a
/// [`Request`], made when one is due.
#[derive(Debug)]
pub(super) struct Key {
    namespace: Arc<str>,
    name: Box<str>,
}

impl Key {
    pub fn new(namespace: Arc<str>, name: &str) -> Self {
        Self {
            namespace,
            name: name.into(),
        }
    }

    pub fn request(&self) -> Request {
        Request::new(&self.name).within(&self.namespace)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

/// One allocation per request, shared by every table of the request index that files it and
/// by the request's renewal wake-up, and kept across the request's changes: with 10,000
/// requests, a copy of the reference in each table (with its uid and resourceVersion, which
/// equality ignores) made the index 2.3 KB a request (heaptrack). Its namespace is the index's
/// table of the namespace's own.
pub(super) type Filed = Arc<Key>;

/// A request's namespace and name, however they are held: tables keyed by [`Key`] are searched
/// with a [`Request`] through `dyn Named`, without making a key for each lookup.
pub(super) trait Named {
    fn namespace_and_name(&self) -> (&str, &str);
}

impl Named for Key {
    fn namespace_and_name(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

impl Named for (&str, &str) {
    fn namespace_and_name(&self) -> (&str, &str) {
        *self
    }
}

impl Named for Request {
    fn namespace_and_name(&self) -> (&str, &str) {
        (self.namespace.as_deref().unwrap_or_default(), &self.name)
    }
}

impl Hash for dyn Named + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.namespace_and_name().hash(state);
    }
}

impl PartialEq for dyn Named + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.namespace_and_name() == other.namespace_and_name()
    }
}

impl Eq for dyn Named + '_ {}

// A shared key hashes and compares as its `dyn Named` does, as `Borrow` asks.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn Named).hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn Named) == (other as &dyn Named)
    }
}

impl Eq for Key {}

/// In the order of namespaces and names: it only keeps two requests' wake-ups at the same time
/// apart (`renewals.rs`).
impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.namespace_and_name().cmp(&other.namespace_and_name())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<'a> Borrow<dyn Named + 'a> for Arc<Key> {
    fn borrow(&self) -> &(dyn Named + 'a) {
        &**self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Tables keyed by [`Filed`] are searched with kube-runtime's reference: both must hash and
    /// compare alike, or a lookup misses the request it names.
    #[test]
    fn a_key_is_found_by_the_reference_it_names_and_by_no_other() {
        let filed: Filed = Arc::new(Key::new("team-a".into(), "alice"));
        let mut table = HashMap::new();
        table.insert(Arc::clone(&filed), ());
        let found = |request: &dyn Named| table.contains_key(request);
        assert!(found(&Request::new("alice").within("team-a")));
        assert!(found(&("team-a", "alice")));
        assert!(found(&*filed));
        assert!(!found(&Request::new("alice").within("team-b")));
        assert!(!found(&Request::new("alice")));
        assert!(!found(&("team", "a-alice")));
        assert_eq!(filed.request(), Request::new("alice").within("team-a"));
    }
}
