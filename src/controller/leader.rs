//! Leader election with a `coordination.k8s.io/v1` Lease: of several replicas, exactly one runs
//! the controller, while every replica serves HTTP.
//!
//! The protocol is client-go's `leaderelection` with a Lease lock. A replica reads the Lease; it
//! writes itself in as holder when nobody holds it, when the holder let it go (an empty
//! `holderIdentity`), or when the holder has not renewed it for `leaseDurationSeconds`; a holder
//! renews `renewTime`. Every write is an update with the `resourceVersion` that was read, so two
//! replicas racing for the Lease cannot both win: the API server refuses the second with 409.
//! Expiry is measured on the reader's own clock, from the moment it saw the Lease change (as
//! client-go does), so the replicas' clocks need not agree.
//!
//! kube-lease-manager 0.13 (the crate that follows kube 5) builds against kube 5.0 and
//! k8s-openapi 0.29, but a replica waiting for a held Lease sleeps until that Lease would expire
//! and does not look in between: a Lease released at SIGTERM would be taken over up to a lease
//! duration later, not within 3 s. So the protocol lives here; it needs only `get`, `create`
//! and `update` on Leases.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use crate::config::LeaderElectionSettings;

/// How long a Lease stays held without renewal. After a holder dies without releasing it
/// (SIGKILL, a lost node), another replica takes over at most [`LEASE_DURATION`] +
/// [`RETRY_PERIOD`] after the holder's last renewal, plus an API round trip: about 11 s, within
/// the 15 s the operator promises. Shorter would let a slow API server (5 missed renewals)
/// cost the leadership more often; client-go's default of 15 s would break the promise.
pub const LEASE_DURATION: Duration = Duration::from_secs(10);
/// How often the holder renews: five chances per lease duration, so one slow or failed call
/// costs nothing. A renewal is one small update every 2 s.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(2);
/// A holder that could not renew for this long stops the controller, before anyone else may
/// take over ([`LEASE_DURATION`]): the 3 s between them cover [`STOP_GRACE`] and a slower clock.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(7);
/// How often a replica that does not hold the Lease looks at it. A released Lease is taken
/// over within this plus a round trip, which keeps a SIGTERM takeover under 3 s; the cost is
/// one read per second per waiting replica.
pub const RETRY_PERIOD: Duration = Duration::from_secs(1);
/// How long a controller that must stop (shutdown, lost Lease) may take to finish its current
/// reconciliations before it is aborted. Reconciliation is idempotent, so an aborted one is
/// only redone by the next leader.
pub const STOP_GRACE: Duration = Duration::from_secs(1);
/// Each call to the API server is bounded, so a hung connection cannot hold a renewal past
/// [`RENEW_DEADLINE`].
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why one look at the Lease failed; the election goes on and looks again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} Lease {lease}: {source}")]
    Kube {
        action: &'static str,
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot {action} Lease {lease}: no answer within {CALL_TIMEOUT:?}")]
    Timeout { action: &'static str, lease: String },
}

/// Who may hold the Lease after this look, as one replica sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// This replica holds it: renew.
    Ours,
    /// Nobody holds it (never held, or released): take it.
    Free,
    /// Another replica holds it but has not renewed it in time: take it over.
    Expired,
    /// Another replica holds it: wait.
    HeldByOther,
}

/// `unchanged_for` is how long, on this replica's clock, the Lease has looked the same.
fn verdict(spec: &LeaseSpec, identity: &str, unchanged_for: Duration) -> Verdict {
    match spec
        .holder_identity
        .as_deref()
        .filter(|holder| !holder.is_empty())
    {
        None => Verdict::Free,
        Some(holder) if holder == identity => Verdict::Ours,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .and_then(|seconds| u64::try_from(seconds).ok())
                .map(Duration::from_secs)
                .unwrap_or(LEASE_DURATION);
            if unchanged_for > duration {
                Verdict::Expired
            } else {
                Verdict::HeldByOther
            }
        }
    }
}

/// The spec to write for `verdict` (not [`Verdict::HeldByOther`]): a renewal keeps the term
/// (acquire time, transitions), taking the Lease starts a new one.
fn claimed(spec: &LeaseSpec, identity: &str, verdict: Verdict, now: Timestamp) -> LeaseSpec {
    let duration = i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(i32::MAX);
    let mut next = LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(duration),
        renew_time: Some(MicroTime(now)),
        ..spec.clone()
    };
    if verdict != Verdict::Ours {
        next.acquire_time = Some(MicroTime(now));
        // The first holder of a new Lease starts at 0, as client-go does.
        next.lease_transitions = Some(match spec.holder_identity {
            None if spec.lease_transitions.is_none() => 0,
            _ => spec.lease_transitions.unwrap_or(0).saturating_add(1),
        });
    }
    next
}

/// The spec that gives the Lease up: no holder, so the next replica to look takes it at once.
fn released(spec: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        acquire_time: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..spec.clone()
    }
}

/// The name this replica writes into the Lease: the pod's name (the Deployment sets `POD_NAME`),
/// else `<hostname>-<pid>`, unique among processes on one machine.
pub fn identity() -> String {
    if let Some(pod) = std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "kubeconfig-operator".into());
    format!("{host}-{}", std::process::id())
}

/// One replica's view of the Lease, and the calls that claim, renew and release it.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    /// `namespace/name`, for messages.
    lease: String,
    identity: String,
    /// The Lease's resourceVersion when last read, and when (on this replica's clock) it was
    /// first seen: any write changes the version, so this is when the holder last renewed.
    observed: Option<(String, Instant)>,
}

impl Elector {
    pub fn new(client: Client, settings: &LeaderElectionSettings, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            name: settings.lease_name.clone(),
            lease: format!("{}/{}", settings.namespace, settings.lease_name),
            identity,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Looks at the Lease once and claims or renews it when this replica may. `Ok(true)` when
    /// this replica holds it afterwards; `Ok(false)` when another does (or won a race for it).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let now = Instant::now();
        let Some(mut lease) = self.call("read", self.api.get_opt(&self.name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(claimed(
                    &LeaseSpec::default(),
                    &self.identity,
                    Verdict::Free,
                    Timestamp::now(),
                )),
            };
            let params = PostParams::default();
            let created = self.api.create(&params, &lease);
            let result = self.call("create", created).await;
            return self.won(result, now);
        };
        self.observe(&lease, now);
        let unchanged_for = self.observed.as_ref().map_or(Duration::ZERO, |(_, since)| {
            now.saturating_duration_since(*since)
        });
        let spec = lease.spec.take().unwrap_or_default();
        let verdict = verdict(&spec, &self.identity, unchanged_for);
        if verdict == Verdict::HeldByOther {
            return Ok(false);
        }
        if verdict != Verdict::Ours {
            info!(
                lease = %self.lease,
                previous = spec.holder_identity.as_deref().unwrap_or(""),
                ?verdict,
                "taking the Lease"
            );
        }
        lease.spec = Some(claimed(&spec, &self.identity, verdict, Timestamp::now()));
        self.write(lease, now).await
    }

    /// Gives the Lease up if this replica holds it, so that another takes over without waiting
    /// for it to expire.
    pub async fn release(&mut self) -> Result<(), Error> {
        let Some(mut lease) = self.call("read", self.api.get_opt(&self.name)).await? else {
            return Ok(());
        };
        let spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(released(&spec, Timestamp::now()));
        self.write(lease, Instant::now()).await.map(|_| ())
    }

    /// Replaces the Lease with the `resourceVersion` it was read with: `Ok(false)` when someone
    /// wrote it in between.
    async fn write(&mut self, lease: Lease, now: Instant) -> Result<bool, Error> {
        let params = PostParams::default();
        let replaced = self.api.replace(&self.name, &params, &lease);
        let result = self.call("update", replaced).await;
        self.won(result, now)
    }

    /// Whether a create or update of the Lease went through: 409 (it exists already, or was
    /// written since it was read) means another replica got there first.
    fn won(&mut self, result: Result<Lease, Error>, now: Instant) -> Result<bool, Error> {
        match result {
            Ok(written) => {
                self.observe(&written, now);
                Ok(true)
            }
            Err(Error::Kube {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn observe(&mut self, lease: &Lease, now: Instant) {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().map(|(seen, _)| seen) != Some(&version) {
            self.observed = Some((version, now));
        }
    }

    async fn call<T>(
        &self,
        action: &'static str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(result) => result.map_err(|source| Error::Kube {
                action,
                lease: self.lease.clone(),
                source,
            }),
            Err(_) => Err(Error::Timeout {
                action,
                lease: self.lease.clone(),
            }),
        }
    }
}

/// Resolves when the work must stop.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// Why a term as leader ended.
#[derive(Debug)]
enum TermEnd {
    Shutdown,
    Lost(&'static str),
    WorkEnded,
}

/// Runs `lead` (the controller) while this replica holds the Lease, until `shutdown`.
///
/// A replica that does not hold the Lease looks again every [`RETRY_PERIOD`]; one that holds
/// it renews it every [`RENEW_INTERVAL`]. When the Lease is lost (another replica holds it, or
/// it could not be renewed for [`RENEW_DEADLINE`]), `lead`'s stop signal fires, it gets
/// [`STOP_GRACE`] to finish and is aborted after that; then the replica waits for the Lease
/// again. At `shutdown` the work is stopped the same way and the Lease released at once.
///
/// `controller_ready` feeds `/readyz`: a replica that does not lead sets it (it serves
/// downloads without a controller), and it is cleared whenever a term starts, for the
/// controller to set once its cache has synced.
pub async fn run<W, F>(
    mut elector: Elector,
    shutdown: impl Future<Output = ()>,
    controller_ready: Arc<AtomicBool>,
    mut lead: W,
) where
    W: FnMut(StopSignal) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        controller_ready.store(true, Ordering::Relaxed);
        info!(identity = %elector.identity, lease = %elector.lease, "waiting for the Lease");
        let mut looks = tokio::time::interval(RETRY_PERIOD);
        loop {
            let attempt = tokio::select! {
                _ = &mut shutdown => None,
                _ = looks.tick() => Some(elector.try_acquire_or_renew().await),
            };
            match attempt {
                None => {
                    release(&mut elector).await;
                    return;
                }
                Some(Ok(true)) => break,
                Some(Ok(false)) => {}
                Some(Err(error)) => warn!(%error, "cannot look at the Lease; trying again"),
            }
        }

        info!(identity = %elector.identity, lease = %elector.lease, "leading: starting the controller");
        controller_ready.store(false, Ordering::Relaxed);
        let (stop, stopped) = watch::channel(false);
        let signal: StopSignal = Box::pin(async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|stop| *stop).await;
        });
        let mut work = tokio::spawn(lead(signal));
        let mut renewals =
            tokio::time::interval_at(Instant::now() + RENEW_INTERVAL, RENEW_INTERVAL);
        let mut renewed = Instant::now();
        let end = loop {
            tokio::select! {
                _ = &mut work => break TermEnd::WorkEnded,
                _ = &mut shutdown => break TermEnd::Shutdown,
                _ = renewals.tick() => match elector.try_acquire_or_renew().await {
                    Ok(true) => {
                        debug!(lease = %elector.lease, "renewed the Lease");
                        renewed = Instant::now();
                    }
                    Ok(false) => break TermEnd::Lost("another replica holds the Lease"),
                    Err(error) if renewed.elapsed() >= RENEW_DEADLINE => {
                        warn!(%error, "cannot renew the Lease");
                        break TermEnd::Lost("the Lease could not be renewed in time");
                    }
                    Err(error) => warn!(%error, "cannot renew the Lease; trying again"),
                },
            }
        };
        let _ = stop.send(true);
        if !matches!(end, TermEnd::WorkEnded)
            && tokio::time::timeout(STOP_GRACE, &mut work).await.is_err()
        {
            warn!("the controller did not stop within {STOP_GRACE:?}; aborting it");
            work.abort();
            let _ = work.await;
        }
        match end {
            TermEnd::Shutdown => {
                release(&mut elector).await;
                return;
            }
            TermEnd::Lost(why) => warn!(reason = why, "stopped leading"),
            TermEnd::WorkEnded => {
                warn!("the controller ended on its own; releasing the Lease");
                release(&mut elector).await;
            }
        }
    }
}

async fn release(elector: &mut Elector) {
    match elector.release().await {
        Ok(()) => info!(identity = %elector.identity, lease = %elector.lease, "released the Lease"),
        Err(error) => warn!(%error, "cannot release the Lease; it expires on its own"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: Option<&str>, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: duration,
            lease_transitions: Some(3),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn who_may_take_the_lease() {
        let second = Duration::from_secs(1);
        for (spec, unchanged_for, expected) in [
            (LeaseSpec::default(), Duration::ZERO, Verdict::Free),
            (held_by(None, Some(10)), Duration::ZERO, Verdict::Free),
            // client-go releases with an empty holder rather than none.
            (held_by(Some(""), Some(10)), Duration::ZERO, Verdict::Free),
            (held_by(Some("me"), Some(10)), 60 * second, Verdict::Ours),
            (
                held_by(Some("other"), Some(10)),
                Duration::ZERO,
                Verdict::HeldByOther,
            ),
            (
                held_by(Some("other"), Some(10)),
                10 * second,
                Verdict::HeldByOther,
            ),
            (
                held_by(Some("other"), Some(10)),
                10 * second + Duration::from_millis(1),
                Verdict::Expired,
            ),
            // The holder's duration counts, not ours.
            (
                held_by(Some("other"), Some(30)),
                20 * second,
                Verdict::HeldByOther,
            ),
            (
                held_by(Some("other"), Some(1)),
                2 * second,
                Verdict::Expired,
            ),
            // Without a duration, ours.
            (
                held_by(Some("other"), None),
                9 * second,
                Verdict::HeldByOther,
            ),
            (held_by(Some("other"), None), 11 * second, Verdict::Expired),
            (
                held_by(Some("other"), Some(-5)),
                11 * second,
                Verdict::Expired,
            ),
        ] {
            assert_eq!(
                verdict(&spec, "me", unchanged_for),
                expected,
                "{spec:?} unchanged for {unchanged_for:?}"
            );
        }
    }

    #[test]
    fn renewing_keeps_the_term_and_taking_starts_a_new_one() {
        let now = Timestamp::from_second(1_000).unwrap();
        let current = held_by(Some("me"), Some(10));

        let renewed = claimed(&current, "me", Verdict::Ours, now);
        assert_eq!(renewed.holder_identity.as_deref(), Some("me"));
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(renewed.acquire_time, current.acquire_time);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.lease_duration_seconds, Some(10));

        for verdict in [Verdict::Expired, Verdict::Free] {
            let taken = claimed(&held_by(Some("other"), Some(30)), "me", verdict, now);
            assert_eq!(taken.holder_identity.as_deref(), Some("me"));
            assert_eq!(taken.acquire_time, Some(MicroTime(now)));
            assert_eq!(taken.renew_time, Some(MicroTime(now)));
            assert_eq!(taken.lease_transitions, Some(4));
            assert_eq!(taken.lease_duration_seconds, Some(10));
        }

        let first = claimed(&LeaseSpec::default(), "me", Verdict::Free, now);
        assert_eq!(first.lease_transitions, Some(0));
    }

    #[test]
    fn releasing_leaves_no_holder_and_keeps_the_count() {
        let now = Timestamp::from_second(1_000).unwrap();
        let spec = released(&held_by(Some("me"), Some(10)), now);
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.acquire_time, None);
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(verdict(&spec, "other", Duration::ZERO), Verdict::Free);
        // Taken after a release: one more transition.
        let taken = claimed(&spec, "other", Verdict::Free, now);
        assert_eq!(taken.lease_transitions, Some(4));
    }

    #[test]
    fn the_timings_keep_their_promises() {
        // A holder gives up before anyone may take over, with time to stop its controller.
        assert!(RENEW_DEADLINE + STOP_GRACE < LEASE_DURATION);
        assert!(RENEW_INTERVAL * 3 <= RENEW_DEADLINE);
        // SIGKILL: taken over within 15 s of the last renewal, with 2 s for round trips.
        assert!(LEASE_DURATION + RETRY_PERIOD + Duration::from_secs(2) <= Duration::from_secs(15));
        // SIGTERM: stop, release, and the next look, within 3 s.
        assert!(STOP_GRACE + RETRY_PERIOD < Duration::from_secs(3));
    }
}
