//! The `KubeconfigRevocation`s in force, as the authenticator consults them on every token,
//! cached verdict or not. They live in the API server, so they hold on every replica and across
//! restarts; each replica follows them with a watch. Until that watch has listed them once, a
//! replica cannot tell a revoked token from a good one, so it refuses every token rather than
//! allow one it should not.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use kube::{
    Api, Client, ResourceExt as _,
    api::DeleteParams,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use tracing::{info, warn};

use super::token::{Identity, TokenError};
use crate::crd::KubeconfigRevocation;

/// How often revocations past their `expiresAt` are looked for and deleted.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

pub struct Revocations {
    store: Store<KubeconfigRevocation>,
    synced: AtomicBool,
    /// Off only where no API server exists (unit tests, benchmarks, the fuzzer).
    enforced: bool,
}

impl Revocations {
    /// No revocations and nothing to follow: for code that runs without an API server.
    pub fn none() -> Arc<Self> {
        let (store, _) = reflector::store();
        Arc::new(Self {
            store,
            synced: AtomicBool::new(true),
            enforced: false,
        })
    }

    /// These revocations, listed and in force, and nothing to follow: for benchmarks and tests.
    #[cfg(any(test, feature = "testing"))]
    pub fn fixed(revocations: Vec<KubeconfigRevocation>) -> Arc<Self> {
        let (store, mut writer) = reflector::store();
        for revocation in revocations {
            writer.apply_watcher_event(&watcher::Event::Apply(revocation));
        }
        Arc::new(Self {
            store,
            synced: AtomicBool::new(true),
            enforced: true,
        })
    }

    /// Whether the revocations have been listed once, so that verdicts can be trusted; `/readyz`
    /// waits for it.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Why `identity`'s token is refused, if a revocation in force covers it.
    pub fn refusal(&self, identity: &Identity, now: DateTime<Utc>) -> Option<TokenError> {
        if !self.enforced {
            return None;
        }
        if !self.is_synced() {
            return Some(TokenError::RevocationsUnknown);
        }
        // `find` walks the store under its lock; `state` would copy it for every token.
        self.store
            .find(|revocation| covers(revocation, identity, now))
            .map(|revocation| TokenError::Revoked {
                revocation: revocation.name_any(),
                message: revocation.spec.message.clone().unwrap_or_default(),
            })
    }

    /// Follows the cluster's revocations for as long as the process runs, and deletes those past
    /// their `expiresAt` (every replica may; a deletion another made first is no error).
    pub async fn follow(client: Client) -> Arc<Self> {
        let api: Api<KubeconfigRevocation> = Api::all(client);
        let (store, writer) = reflector::store();
        let revocations = Arc::new(Self {
            store,
            synced: AtomicBool::new(false),
            enforced: true,
        });
        let stream = reflector::reflector(writer, watcher(api.clone(), watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(problem) = event {
                    warn!(%problem, "watching KubeconfigRevocations failed; retrying");
                }
            }
        });
        let following = Arc::clone(&revocations);
        tokio::spawn(async move {
            if following.store.wait_until_ready().await.is_ok() {
                following.synced.store(true, Ordering::Relaxed);
                info!(
                    count = following.store.state().len(),
                    "KubeconfigRevocations listed"
                );
            }
            let mut ticks = tokio::time::interval(CLEANUP_INTERVAL);
            loop {
                ticks.tick().await;
                following.delete_expired(&api, Utc::now()).await;
            }
        });
        revocations
    }

    async fn delete_expired(&self, api: &Api<KubeconfigRevocation>, now: DateTime<Utc>) {
        for revocation in self.store.state() {
            if !ended(revocation.spec.expires_at.as_ref(), now) {
                continue;
            }
            let name = revocation.name_any();
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    info!(revocation = %name, "deleted a KubeconfigRevocation past its expiresAt")
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(problem) => {
                    warn!(revocation = %name, %problem, "cannot delete an expired KubeconfigRevocation")
                }
            }
        }
    }
}

fn time(at: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(at.0.as_second(), at.0.subsec_nanosecond().unsigned_abs())
}

fn ended(
    expires_at: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    now: DateTime<Utc>,
) -> bool {
    expires_at.and_then(time).is_some_and(|end| end <= now)
}

/// Whether `revocation` refuses `identity`'s token at `now`: it is in force, names the user or
/// one of their groups, and the token was issued before `notBefore` (or says not when).
fn covers(revocation: &KubeconfigRevocation, identity: &Identity, now: DateTime<Utc>) -> bool {
    let spec = &revocation.spec;
    if ended(spec.expires_at.as_ref(), now) {
        return false;
    }
    let named = spec.user.as_ref() == Some(&identity.username)
        || spec
            .group
            .as_ref()
            .is_some_and(|group| identity.groups.contains(group));
    named
        && match (identity.issued_at, time(&spec.not_before)) {
            (Some(issued), Some(not_before)) => issued < not_before,
            _ => true,
        }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::crd::KubeconfigRevocationSpec;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap()
    }

    fn k8s_time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn identity(issued_at: Option<i64>) -> Identity {
        Identity {
            username: "alice@example.com".into(),
            groups: vec!["team-a".into()],
            uid: String::new(),
            extra: Default::default(),
            expires_at: at(10_000),
            issued_at: issued_at.map(at),
        }
    }

    fn revocation(
        user: Option<&str>,
        group: Option<&str>,
        expires_at: Option<i64>,
    ) -> KubeconfigRevocation {
        KubeconfigRevocation::new(
            "r",
            KubeconfigRevocationSpec {
                user: user.map(str::to_owned),
                group: group.map(str::to_owned),
                not_before: k8s_time(1_000),
                expires_at: expires_at.map(k8s_time),
                message: Some("ask security".into()),
            },
        )
    }

    #[test]
    fn tokens_issued_before_not_before_are_covered_by_user_or_group() {
        let now = at(2_000);
        for named in [
            revocation(Some("alice@example.com"), None, None),
            revocation(None, Some("team-a"), None),
        ] {
            assert!(covers(&named, &identity(Some(999)), now));
            assert!(
                covers(&named, &identity(None), now),
                "no iat: issue time unknown"
            );
            assert!(
                !covers(&named, &identity(Some(1_000)), now),
                "issued at notBefore"
            );
            assert!(!covers(&named, &identity(Some(1_500)), now));
        }
        for other in [
            revocation(Some("bob@example.com"), None, None),
            revocation(None, Some("team-b"), None),
        ] {
            assert!(!covers(&other, &identity(Some(999)), now));
        }
        let ended = revocation(Some("alice@example.com"), None, Some(2_000));
        assert!(!covers(&ended, &identity(Some(999)), now));
        assert!(covers(&ended, &identity(Some(999)), at(1_999)));
    }

    #[test]
    fn a_replica_that_has_not_listed_the_revocations_refuses_every_token() {
        let (store, _writer) = reflector::store();
        let revocations = Revocations {
            store,
            synced: AtomicBool::new(false),
            enforced: true,
        };
        assert_eq!(
            revocations.refusal(&identity(Some(5_000)), at(6_000)),
            Some(TokenError::RevocationsUnknown)
        );
        revocations.synced.store(true, Ordering::Relaxed);
        assert_eq!(revocations.refusal(&identity(Some(5_000)), at(6_000)), None);
    }

    #[test]
    fn the_refusal_names_the_revocation_and_its_message() {
        let revocations = Revocations::fixed(vec![revocation(None, Some("team-a"), None)]);
        let refusal = revocations.refusal(&identity(Some(10)), at(2_000)).unwrap();
        assert_eq!(
            refusal,
            TokenError::Revoked {
                revocation: "r".into(),
                message: "ask security".into()
            }
        );
        assert_eq!(refusal.reason(), "Revoked");
    }
}
