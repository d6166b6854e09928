//! When each issued request is next due: its renewal time (spread, or now when the renew
//! annotation asks), then its expiry. The controller could ask kube-runtime to requeue it
//! instead, but its scheduler keeps two full copies of the request's reference and a timer-wheel
//! slot per wake-up: with 10,000 Ready requests that was 13 MB of the operator's 41 MB live heap,
//! and the emptied tables kept their size after the requests went (heaptrack). Here a wake-up is
//! one shared reference and two table entries, and a deleted request's wake-up goes with it.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::Stream;
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use tokio::{sync::Notify, time::Instant};

use super::{
    key::{Filed, Key, Named},
    refusal::{Reason, Refusal},
    stored::Request,
};
use crate::{
    capacity::release_spare_capacity,
    crd::{KubeconfigRequest, RENEW_ANNOTATION},
};

/// The value of the renew annotation, checked to be an RFC 3339 timestamp, so that the value
/// status records stays small and means what it says. `Err` is a refusal for any other value;
/// the value is not repeated in it (a tenant's annotation may be hundreds of kilobytes).
pub fn renew_request(request: &KubeconfigRequest) -> Result<Option<&str>, Refusal> {
    let Some(value) = request.annotations().get(RENEW_ANNOTATION) else {
        return Ok(None);
    };
    match DateTime::parse_from_rfc3339(value) {
        Ok(_) => Ok(Some(value)),
        Err(_) => Err(Refusal::new(
            Reason::InvalidSpec,
            format!(
                "the annotation {RENEW_ANNOTATION} must be an RFC 3339 timestamp; renew with: kubectl annotate kcr {} {RENEW_ANNOTATION}=$(date -u +%Y-%m-%dT%H:%M:%SZ) --overwrite",
                request.name_any()
            ),
        )),
    }
}

/// How far, in millionths of the wait from issuance to renewal, a renewal may come early:
/// requests created together (a GitOps sync, a restored backup) would otherwise all mint in the
/// same second, and again at every renewal after it.
const SPREAD_MILLIONTHS: u64 = 100_000;

/// `renew_at`, brought forward by up to a tenth of its wait from `issued_at`, by an amount
/// derived from `seed` (the request's uid). Derived, not random: each reconciliation computes
/// the same time again, so a token read back from the Secret is renewed when the one minted was
/// scheduled to be, and a renewal never lands before nine tenths of its wait.
pub(super) fn spread(
    seed: &str,
    issued_at: DateTime<Utc>,
    renew_at: DateTime<Utc>,
) -> DateTime<Utc> {
    let digest = Sha256::digest(seed.as_bytes());
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    let share = i32::try_from(u64::from_be_bytes(first) % SPREAD_MILLIONTHS).unwrap_or_default();
    let wait = (renew_at - issued_at).max(chrono::TimeDelta::zero());
    // Divided first: a token may live for a century, and its wait times 100,000 overflows.
    renew_at - wait / 1_000_000 * share
}

pub(super) struct Renewals {
    inner: Mutex<Inner>,
    /// Wakes the stream when a wake-up earlier than all others is added.
    earlier: Notify,
    /// What wake-up times count from: as nanoseconds since it, a time takes 8 bytes where an
    /// `Instant` takes 16, in both tables.
    origin: Instant,
}

impl Default for Renewals {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            earlier: Notify::new(),
            origin: Instant::now(),
        }
    }
}

/// Nanoseconds since [`Renewals::origin`].
type Ticks = u64;

#[derive(Default)]
struct Inner {
    /// Wake-ups in time order; a request has one at most, so it keeps two at the same time
    /// apart.
    queue: BTreeSet<(Ticks, Filed)>,
    /// Each request's time in `queue`, so a new wake-up replaces its old one.
    scheduled: HashMap<Filed, Ticks>,
}

impl Inner {
    fn remove(&mut self, request: &dyn Named) {
        if let Some((filed, at)) = self.scheduled.remove_entry(request) {
            self.queue.remove(&(at, filed));
        }
    }
}

impl Renewals {
    /// Replaces `request`'s wake-up with one at `at`. The reference is the request index's own
    /// ([`Filed`]), which lives as long as the request: a copy of its own was 0.17 KB a
    /// request here.
    pub fn schedule(&self, request: Filed, at: Instant) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.remove(&*request);
        let at = self.ticks(at);
        let earliest = inner.queue.first().is_none_or(|(first, _)| at < *first);
        inner.queue.insert((at, Arc::clone(&request)));
        inner.scheduled.insert(request, at);
        drop(inner);
        if earliest {
            self.earlier.notify_one();
        }
    }

    pub fn cancel(&self, request: &dyn Named) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.remove(request);
        }
    }

    /// Drops the wake-ups of requests `exists` no longer knows (say, one deleted while it was
    /// being reconciled, which scheduled its wake-up after the deletion was seen).
    pub fn retain(&self, exists: impl Fn(&Key) -> bool) {
        if let Ok(mut inner) = self.inner.lock() {
            let Inner {
                queue, scheduled, ..
            } = &mut *inner;
            scheduled.retain(|request, at| {
                let keep = exists(request);
                if !keep {
                    queue.remove(&(*at, Arc::clone(request)));
                }
                keep
            });
            release_spare_capacity(scheduled);
        }
    }

    /// Forgets every wake-up: a replica that loses its lease stops reconciling, and the one that
    /// takes over schedules its own.
    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner = Inner::default();
        }
    }

    /// `at` as [`Ticks`]; a time before the origin is due as soon as one at the origin.
    fn ticks(&self, at: Instant) -> Ticks {
        let since = at.saturating_duration_since(self.origin).as_nanos();
        Ticks::try_from(since).unwrap_or(Ticks::MAX)
    }

    fn instant(&self, at: Ticks) -> Instant {
        self.origin + Duration::from_nanos(at)
    }

    #[cfg(test)]
    pub fn due_at(&self, request: &dyn Named) -> Option<Instant> {
        let inner = self.inner.lock().ok()?;
        inner.scheduled.get(request).map(|at| self.instant(*at))
    }

    fn take_due(&self, now: Instant) -> (Vec<Request>, Option<Instant>) {
        let Ok(mut inner) = self.inner.lock() else {
            return (Vec::new(), None);
        };
        let now = self.ticks(now);
        let mut due = Vec::new();
        while inner.queue.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, request)) = inner.queue.pop_first() {
                inner.scheduled.remove(&request);
                due.push(request.request());
            }
        }
        let next = inner.queue.first().map(|(at, _)| self.instant(*at));
        (due, next)
    }

    /// The requests as they fall due, for the controller's `reconcile_on`. Each is taken out as
    /// it is yielded: its reconciliation schedules the next wake-up.
    pub fn due(self: Arc<Self>) -> impl Stream<Item = Request> + Send + 'static {
        let batches = futures::stream::unfold(self, |renewals| async move {
            loop {
                let (due, next) = renewals.take_due(Instant::now());
                if !due.is_empty() {
                    return Some((futures::stream::iter(due), renewals));
                }
                match next {
                    Some(at) => tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = renewals.earlier.notified() => {}
                    },
                    None => renewals.earlier.notified().await,
                }
            }
        });
        futures::StreamExt::flatten(batches)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn named(name: &str) -> Filed {
        Arc::new(Key::new("team".into(), name))
    }

    #[tokio::test(start_paused = true)]
    async fn requests_fall_due_in_time_order_with_the_latest_schedule_winning() {
        let renewals = Arc::new(Renewals::default());
        let start = Instant::now();
        renewals.schedule(named("b"), start + Duration::from_secs(20));
        renewals.schedule(named("a"), start + Duration::from_secs(10));
        renewals.schedule(named("gone"), start + Duration::from_secs(5));
        renewals.cancel(&*named("gone"));
        // Rescheduled: only the later wake-up counts.
        renewals.schedule(named("c"), start + Duration::from_secs(1));
        renewals.schedule(named("c"), start + Duration::from_secs(30));

        let mut due = std::pin::pin!(Arc::clone(&renewals).due());
        let mut order = Vec::new();
        for _ in 0..3 {
            let request = due.next().await.expect("a request falls due");
            order.push((request.name.clone(), (Instant::now() - start).as_secs()));
        }
        assert_eq!(
            order,
            [
                ("a".to_owned(), 10),
                ("b".to_owned(), 20),
                ("c".to_owned(), 30)
            ]
        );
        assert_eq!(renewals.due_at(&*named("c")), None);
    }

    /// Requests created together are often due at the same time: each has its wake-up.
    #[tokio::test(start_paused = true)]
    async fn wake_ups_at_the_same_time_all_fall_due() {
        let renewals = Arc::new(Renewals::default());
        let at = Instant::now() + Duration::from_secs(10);
        for name in ["a", "b", "c"] {
            renewals.schedule(named(name), at);
        }
        renewals.cancel(&*named("b"));
        let due = Arc::clone(&renewals).due();
        let mut names: Vec<String> = due.take(2).map(|request| request.name).collect().await;
        names.sort();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(Instant::now(), at);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_wake_up_added_while_waiting_is_not_missed() {
        let renewals = Arc::new(Renewals::default());
        let start = Instant::now();
        renewals.schedule(named("late"), start + Duration::from_secs(3600));
        let due = Arc::clone(&renewals).due();
        let waiting = tokio::spawn(async move {
            let mut due = std::pin::pin!(due);
            due.next().await.map(|request| request.name)
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        renewals.schedule(named("soon"), start + Duration::from_secs(2));
        assert_eq!(waiting.await.unwrap().as_deref(), Some("soon"));
        assert!(Instant::now() - start < Duration::from_secs(3600));
    }

    /// A thousand requests issued in the same second with a 40-minute wait before renewal: no
    /// second holds more than a handful of their renewals, and none comes before 36 minutes.
    #[test]
    fn renewals_of_requests_issued_together_spread_over_a_tenth_of_the_wait() {
        let issued = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let renew = issued + chrono::TimeDelta::minutes(40);
        let mut per_second: HashMap<i64, u32> = HashMap::new();
        for n in 0..1000 {
            let uid = format!("6f1c3e2a-0000-4000-8000-{n:012}");
            let at = spread(&uid, issued, renew);
            assert_eq!(at, spread(&uid, issued, renew), "derived, not random");
            assert!(
                at <= renew && at >= renew - chrono::TimeDelta::minutes(4),
                "{at}"
            );
            *per_second.entry(at.timestamp()).or_default() += 1;
        }
        // 1,000 over 240 seconds is 4.2 a second on average; all 1,000 in one without spread.
        assert!(
            per_second.len() > 200,
            "{} distinct seconds",
            per_second.len()
        );
        let busiest = per_second.values().max().copied().unwrap_or_default();
        assert!(busiest <= 16, "{busiest} renewals in one second");
        // No wait, no spread: a token due at issuance stays due at issuance.
        assert_eq!(spread("any", issued, issued), issued);
    }

    #[test]
    fn wake_ups_of_requests_that_no_longer_exist_are_dropped() {
        let renewals = Renewals::default();
        let at = Instant::now() + Duration::from_secs(60);
        renewals.schedule(named("kept"), at);
        renewals.schedule(named("deleted"), at);
        renewals.retain(|request| request.namespace_and_name() == ("team", "kept"));
        assert_eq!(renewals.due_at(&*named("kept")), Some(at));
        assert_eq!(renewals.due_at(&*named("deleted")), None);
    }
}
