//! Fair shares between namespaces: at most [`PER_NAMESPACE_CONCURRENCY`] reconciliations of one
//! namespace run at once, and the rest of that namespace wait in line, in order, while other
//! namespaces go ahead.
//!
//! A request that finds its namespace's slots taken does not wait inside kube-runtime. Its
//! reconciliation ends at once and the request joins its namespace's line; a slot given back goes
//! to the first in line, which [`Slots::handoffs`] wakes through the controller. kube-runtime's
//! runner polls every reconciliation it holds each time one of them finishes. When each waited
//! there for its slot, a restart with 20,000 requests spent most of its CPU on that polling
//! (bench/results.md, 2026-12-06T10:36Z), and the runner's table and the tracing registry kept
//! room for the whole burst for good.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use futures::Stream;
use tokio::sync::mpsc;

use super::stored::Request;
use crate::capacity::release_spare_capacity;

/// At most this many reconciliations of one namespace run at once; the rest of that namespace
/// waits, while other namespaces go ahead. Measured on 2 cores (`benches/issuance.rs`,
/// `benches/noisy_neighbour.rs`): 1,000 requests in one namespace took 10 s with 8 slots, 6.8 s
/// with 16 and 7.9 s with 32, while a flood's peak RSS went from 1.69× idle (8) to 1.75× (16)
/// and 1.96× (32), against a bar of 2×.
pub const PER_NAMESPACE_CONCURRENCY: usize = 16;

#[derive(Default)]
pub struct Slots {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    lines: HashMap<String, Line>,
    /// Wakes the first in line when a slot is handed to it; `None` while no controller runs.
    handoffs: Option<mpsc::UnboundedSender<Request>>,
    /// The controller's term; a slot of an earlier term gives nothing back to this one's lines.
    term: u64,
}

#[derive(Default)]
struct Line {
    /// Slots running a reconciliation or handed to a request not yet back.
    busy: usize,
    waiting: VecDeque<Arc<Request>>,
    /// The same requests as `waiting`, so that a request woken twice joins the line once.
    queued: HashSet<Arc<Request>>,
    /// Requests a slot was handed to.
    handed: HashSet<Request>,
}

impl Line {
    fn is_idle(&self) -> bool {
        self.busy == 0 && self.waiting.is_empty()
    }
}

/// A namespace's slot, given back when dropped.
pub struct Slot<'a> {
    slots: &'a Slots,
    namespace: String,
    term: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        if inner.term == self.term {
            inner.give_back(&self.namespace);
        }
    }
}

impl Slots {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change below leaves the counts whole before anything can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The requests slots are handed to, for the controller to reconcile. Starts a new term: the
    /// lines of an earlier one are dropped, as its controller no longer runs.
    pub fn handoffs(&self) -> impl Stream<Item = Request> + Send + 'static {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        inner.lines.clear();
        inner.handoffs = Some(sender);
        inner.term += 1;
        futures::stream::unfold(receiver, |mut receiver| async move {
            let next = receiver.recv().await?;
            Some((next, receiver))
        })
    }

    /// One of the slots of `request`'s namespace, or `None` if they are all taken: the request
    /// is then in line, and will be woken through [`Slots::handoffs`].
    pub fn take(&self, request: &Request) -> Option<Slot<'_>> {
        let namespace = request.namespace.clone().unwrap_or_default();
        let mut inner = self.lock();
        let term = inner.term;
        let line = inner.lines.entry(namespace.clone()).or_default();
        if !line.handed.remove(request) {
            if line.busy == PER_NAMESPACE_CONCURRENCY {
                let request = Arc::new(request.clone());
                if line.queued.insert(Arc::clone(&request)) {
                    line.waiting.push_back(request);
                }
                return None;
            }
            line.busy += 1;
        }
        Some(Slot {
            slots: self,
            namespace,
            term,
        })
    }

    /// `request` is gone: its place in line goes, and a slot handed to it goes to the next.
    pub fn abandon(&self, request: &Request) {
        let namespace = request.namespace.as_deref().unwrap_or_default();
        let mut inner = self.lock();
        let Some(line) = inner.lines.get_mut(namespace) else {
            return;
        };
        if line.queued.remove(request) {
            line.waiting.retain(|waiting| **waiting != *request);
        }
        if line.handed.remove(request) {
            inner.give_back(namespace);
        }
    }

    /// Drops the lines of namespaces `keep` no longer wants, unless some slot is in use.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut inner = self.lock();
        inner
            .lines
            .retain(|namespace, line| keep(namespace) || !line.is_idle());
        release_spare_capacity(&mut inner.lines);
    }
}

impl Inner {
    /// A slot of `namespace` is free: it goes to the first in line, if anyone waits and a
    /// controller runs to wake them.
    fn give_back(&mut self, namespace: &str) {
        let Some(line) = self.lines.get_mut(namespace) else {
            return;
        };
        while let Some(next) = line.waiting.pop_front() {
            line.queued.remove(&next);
            let next = Arc::unwrap_or_clone(next);
            if let Some(handoffs) = &self.handoffs
                && handoffs.send(next.clone()).is_ok()
            {
                line.handed.insert(next);
                return;
            }
        }
        line.busy = line.busy.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    fn request(namespace: &str, name: &str) -> Request {
        Request::new(name).within(namespace)
    }

    fn fill<'a>(slots: &'a Slots, namespace: &str) -> Vec<Slot<'a>> {
        (0..PER_NAMESPACE_CONCURRENCY)
            .map(|i| {
                slots
                    .take(&request(namespace, &format!("busy-{i}")))
                    .unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn one_namespace_cannot_take_the_slots_of_another() {
        let slots = Slots::default();
        let _handoffs = slots.handoffs();
        let busy = fill(&slots, "flood");
        let more = request("flood", "more");
        assert!(slots.take(&more).is_none());
        assert!(slots.take(&request("quiet", "one")).is_some());
        slots.retain(|_| false);
        assert!(slots.lock().lines.contains_key("flood"), "in use, kept");
        drop(busy);
        slots.retain(|_| false);
        assert!(
            slots.lock().lines.contains_key("flood"),
            "a slot handed to the request in line, kept"
        );
        slots.abandon(&more);
        slots.retain(|_| false);
        assert!(slots.lock().lines.is_empty());
    }

    #[tokio::test]
    async fn a_slot_given_back_goes_to_the_first_in_line_in_order() {
        let slots = Slots::default();
        let mut handoffs = slots.handoffs().boxed();
        let mut busy = fill(&slots, "team");
        let (first, second) = (request("team", "first"), request("team", "second"));
        assert!(slots.take(&first).is_none());
        assert!(slots.take(&second).is_none());
        assert!(slots.take(&first).is_none(), "woken again, still in line");

        busy.pop();
        assert_eq!(handoffs.next().await, Some(first.clone()));
        assert!(
            slots.take(&request("team", "newcomer")).is_none(),
            "the slot is first's, not a newcomer's"
        );
        let first_slot = slots.take(&first).expect("the slot handed to first");
        busy.pop();
        assert_eq!(handoffs.next().await, Some(second.clone()));
        drop(first_slot);
        assert_eq!(
            handoffs.next().await,
            Some(request("team", "newcomer")),
            "each is handed a slot once"
        );
        assert_eq!(slots.lock().lines["team"].busy, PER_NAMESPACE_CONCURRENCY);
    }

    #[tokio::test]
    async fn a_request_gone_gives_up_its_place_and_its_slot() {
        let slots = Slots::default();
        let mut handoffs = slots.handoffs().boxed();
        let mut busy = fill(&slots, "team");
        let (gone, waiting, next) = (
            request("team", "gone"),
            request("team", "waiting"),
            request("team", "next"),
        );
        for request in [&gone, &waiting, &next] {
            assert!(slots.take(request).is_none());
        }
        slots.abandon(&waiting);
        busy.pop();
        assert_eq!(handoffs.next().await, Some(gone.clone()));
        slots.abandon(&gone);
        assert_eq!(handoffs.next().await, Some(next.clone()), "not waiting");
        slots.abandon(&next);
        assert_eq!(
            slots.lock().lines["team"].busy,
            PER_NAMESPACE_CONCURRENCY - 1,
            "nobody left in line: the slot is free"
        );
        assert!(slots.take(&request("team", "newcomer")).is_some());
    }

    #[tokio::test]
    async fn a_new_term_starts_with_free_slots_and_no_line() {
        let slots = Slots::default();
        let _first_term = slots.handoffs();
        let busy = fill(&slots, "team");
        assert!(slots.take(&request("team", "waiting")).is_none());
        let mut handoffs = slots.handoffs().boxed();
        drop(busy);
        let new_term = fill(&slots, "team");
        assert!(slots.take(&request("team", "over")).is_none());
        assert_eq!(slots.lock().lines["team"].busy, PER_NAMESPACE_CONCURRENCY);
        drop(new_term);
        assert_eq!(handoffs.next().await, Some(request("team", "over")));
    }

    #[test]
    fn without_a_controller_nobody_waits_for_a_handoff() {
        let slots = Slots::default();
        let busy = fill(&slots, "team");
        assert!(slots.take(&request("team", "waiting")).is_none());
        drop(busy);
        let line = &slots.lock().lines["team"];
        assert!(line.is_idle(), "{} busy", line.busy);
    }
}
