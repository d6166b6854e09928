//! The `KubeconfigRevocation`s in force, as the authenticator consults them on every token,
//! cached verdict or not. They live in the API server, so they hold on every replica and across
//! restarts; each replica follows them with a watch. Until that watch has listed them once, a
//! replica cannot tell a revoked token from a good one, so it refuses every token rather than
//! allow one it should not.
//!
//! A revocation names a user, a group, or one credential. The operator writes the last kind
//! itself, on behalf of the token's holder: when a request that held an ID token is deleted, and
//! at logout from the download page.

use std::{
    cell::OnceCell,
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, ObjectMeta, PostParams},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::watch;
use tracing::{info, warn};

use sha2::{Digest as _, Sha256};

use super::token::{IdToken, Identity, TokenError, credential_id_in};
use crate::crd::{KubeconfigRevocation, KubeconfigRevocationSpec};

/// How often revocations past their `expiresAt` are looked for and deleted.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

pub struct Revocations {
    store: Store<KubeconfigRevocation>,
    /// Marked changed whenever the watch brings a revocation, so that open streams check
    /// whether they are covered now.
    changes: watch::Sender<()>,
    /// Writes revocations on a token holder's behalf; none where no API server exists.
    client: Option<Client>,
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
            changes: watch::Sender::new(()),
            client: None,
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
            changes: watch::Sender::new(()),
            client: None,
            synced: AtomicBool::new(true),
            enforced: true,
        })
    }

    /// Whether the revocations have been listed once, so that verdicts can be trusted; `/readyz`
    /// waits for it.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Why `token`, held by `identity`, is refused, if a revocation in force covers it.
    pub fn refusal(
        &self,
        token: &IdToken,
        identity: &Identity,
        now: DateTime<Utc>,
    ) -> Option<TokenError> {
        if !self.enforced {
            return None;
        }
        if !self.is_synced() {
            return Some(TokenError::RevocationsUnknown);
        }
        let held = Held::new(token, identity);
        // `find` walks the store under its lock; `state` would copy it for every token.
        self.store
            .find(|revocation| covers(revocation, &held, now))
            .map(|revocation| TokenError::Revoked {
                revocation: revocation.name_any(),
                message: revocation.spec.message.clone().unwrap_or_default(),
            })
    }

    /// Revokes the token whose holder `identity` logs out of the download page, on every
    /// replica, until it expires. Does nothing where no API server exists.
    pub async fn log_out(&self, token: &IdToken, identity: &Identity) -> Result<(), kube::Error> {
        let Some(client) = &self.client else {
            return Ok(());
        };
        revoke_credential(
            client.clone(),
            credential(token, identity),
            identity.expires_at,
            RevokedBecause::LoggedOut,
            format!("{} logged out of the download page", identity.username),
            BTreeMap::new(),
        )
        .await
    }

    /// Notes revocations from now on: taken before a token is judged, so that none that lands
    /// between the verdict and [`Revocations::until_revoked`] goes unseen.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changes.subscribe()
    }

    /// Resolves once a revocation noted by `changes` covers `token`: a stream opened with it (a
    /// watch, an exec session) ends then. Only `Revoked` ends it; a token that expires meanwhile
    /// is the API server's to judge.
    pub async fn until_revoked(
        self: Arc<Self>,
        mut changes: watch::Receiver<()>,
        token: IdToken,
        identity: Identity,
    ) {
        loop {
            if changes.changed().await.is_err() {
                // Nothing can bring a revocation any more.
                return std::future::pending().await;
            }
            if let Some(TokenError::Revoked { revocation, .. }) =
                self.refusal(&token, &identity, Utc::now())
            {
                info!(user = %identity.username, %revocation, "closing a stream whose token was revoked");
                return;
            }
        }
    }

    /// Follows the cluster's revocations for as long as the process runs, and deletes those past
    /// their `expiresAt` (every replica may; a deletion another made first is no error).
    pub async fn follow(client: Client) -> Arc<Self> {
        let api: Api<KubeconfigRevocation> = Api::all(client.clone());
        let (store, writer) = reflector::store();
        let revocations = Arc::new(Self {
            store,
            changes: watch::Sender::new(()),
            client: Some(client),
            synced: AtomicBool::new(false),
            enforced: true,
        });
        // The reflector has stored each revocation before it comes out of the stream.
        let stream = reflector::reflector(writer, watcher(api.clone(), watcher::Config::default()))
            .default_backoff()
            .applied_objects();
        let watching = Arc::clone(&revocations);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => watching.changes.send_replace(()),
                    Err(problem) => {
                        warn!(%problem, "watching KubeconfigRevocations failed; retrying")
                    }
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

/// Why the operator revoked a credential on its holder's behalf: a label of the revocation, so
/// an administrator can tell where it came from.
#[derive(Clone, Copy, Debug, strum::IntoStaticStr)]
pub enum RevokedBecause {
    /// A KubeconfigRequest that held the token was deleted.
    RequestDeleted,
    /// The token's holder logged out of the download page.
    LoggedOut,
}

/// The label that says why the operator revoked a credential.
pub const REVOKED_BECAUSE_LABEL: &str = "kubeconfig.dev/revoked-because";

/// How a revocation names `token` (`spec.credential`): by the credential id the API server puts
/// in its audit log (`JTI=<jti>`) where the token has one, else by the token's SHA-256, which
/// cannot be turned back into the token.
pub fn credential(token: &IdToken, identity: &Identity) -> String {
    credential_id_in(&identity.extra).map_or_else(|| digest(token), str::to_owned)
}

fn digest(token: &IdToken) -> String {
    format!("SHA256={:x}", Sha256::digest(token.expose().as_bytes()))
}

/// Revokes one credential, which expires at `expires_at`, until then: the revocation is deleted
/// once it can no longer match. Its name follows from the credential, so a retry, or a second
/// request holding the same token, finds the revocation already there.
pub async fn revoke_credential(
    client: Client,
    credential: String,
    expires_at: DateTime<Utc>,
    because: RevokedBecause,
    message: String,
    annotations: BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    // Times are whole seconds: a notBefore of the next one covers a token issued this second.
    let not_before = Utc::now() + chrono::TimeDelta::seconds(1);
    if expires_at <= not_before {
        // The token is dead already; the schema would refuse an expiresAt before notBefore.
        return Ok(());
    }
    let revocation = KubeconfigRevocation {
        metadata: ObjectMeta {
            name: Some(revocation_name(&credential)),
            labels: Some(BTreeMap::from([(
                REVOKED_BECAUSE_LABEL.to_owned(),
                <&str>::from(because).to_owned(),
            )])),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: KubeconfigRevocationSpec {
            user: None,
            group: None,
            credential: Some(credential),
            not_before: k8s_time(not_before),
            expires_at: Some(k8s_time(expires_at)),
            message: Some(message),
        },
    };
    let api: Api<KubeconfigRevocation> = Api::all(client);
    match api.create(&PostParams::default(), &revocation).await {
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        created => created.map(drop),
    }
}

/// The name of the revocation of `credential`: a digest, since a `jti` may hold any text.
fn revocation_name(credential: &str) -> String {
    format!("credential-{:.40x}", Sha256::digest(credential.as_bytes()))
}

fn k8s_time(at: DateTime<Utc>) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(at.timestamp())
            .unwrap_or(k8s_openapi::jiff::Timestamp::MAX),
    )
}

/// A token under judgement: who holds it, and its digest, worked out only when a revocation by
/// digest is in force.
struct Held<'a> {
    token: &'a IdToken,
    identity: &'a Identity,
    digest: OnceCell<String>,
}

impl<'a> Held<'a> {
    fn new(token: &'a IdToken, identity: &'a Identity) -> Self {
        Self {
            token,
            identity,
            digest: OnceCell::new(),
        }
    }

    fn is(&self, credential: &str) -> bool {
        if credential.starts_with("SHA256=") {
            self.digest.get_or_init(|| digest(self.token)) == credential
        } else {
            credential_id_in(&self.identity.extra) == Some(credential)
        }
    }
}

/// Whether `revocation` refuses the `held` token at `now`: it is in force, names the user, one
/// of their groups or the token itself, and the token was issued before `notBefore` (or says
/// not when).
fn covers(revocation: &KubeconfigRevocation, held: &Held<'_>, now: DateTime<Utc>) -> bool {
    let spec = &revocation.spec;
    if ended(spec.expires_at.as_ref(), now) {
        return false;
    }
    let identity = held.identity;
    let named = spec.user.as_ref() == Some(&identity.username)
        || spec
            .group
            .as_ref()
            .is_some_and(|group| identity.groups.contains(group))
        || spec
            .credential
            .as_ref()
            .is_some_and(|credential| held.is(credential));
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
    use crate::oidc::token::CREDENTIAL_ID_KEY;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap()
    }

    fn k8s_time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn token() -> IdToken {
        IdToken::from("header.payload.signature".to_owned())
    }

    fn covered(revocation: &KubeconfigRevocation, identity: &Identity, now: DateTime<Utc>) -> bool {
        covers(revocation, &Held::new(&token(), identity), now)
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
                credential: None,
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
            assert!(covered(&named, &identity(Some(999)), now));
            assert!(
                covered(&named, &identity(None), now),
                "no iat: issue time unknown"
            );
            assert!(
                !covered(&named, &identity(Some(1_000)), now),
                "issued at notBefore"
            );
            assert!(!covered(&named, &identity(Some(1_500)), now));
        }
        for other in [
            revocation(Some("bob@example.com"), None, None),
            revocation(None, Some("team-b"), None),
        ] {
            assert!(!covered(&other, &identity(Some(999)), now));
        }
        let ended = revocation(Some("alice@example.com"), None, Some(2_000));
        assert!(!covered(&ended, &identity(Some(999)), now));
        assert!(covered(&ended, &identity(Some(999)), at(1_999)));
    }

    #[test]
    fn a_credential_revocation_covers_that_token_only() {
        let now = at(2_000);
        let by = |credential: String| {
            let mut revocation = revocation(None, None, None);
            revocation.spec.credential = Some(credential);
            revocation
        };
        let holder = identity(Some(999));
        let digest = credential(&token(), &holder);
        assert!(digest.starts_with("SHA256="), "{digest}");
        assert_eq!(digest.len(), "SHA256=".len() + 64);
        assert!(covered(&by(digest.clone()), &holder, now));
        let other = IdToken::from("header.payload.other".to_owned());
        assert!(!covers(&by(digest), &Held::new(&other, &holder), now));

        let mut with_jti = identity(Some(999));
        with_jti
            .extra
            .insert(CREDENTIAL_ID_KEY.to_owned(), vec!["JTI=abc".into()]);
        assert_eq!(credential(&token(), &with_jti), "JTI=abc");
        assert!(covered(&by("JTI=abc".into()), &with_jti, now));
        assert!(!covered(&by("JTI=abd".into()), &with_jti, now));
        assert!(!covered(&by("JTI=abc".into()), &holder, now));
        let name = revocation_name("JTI=abc");
        assert_eq!(name.len(), "credential-".len() + 40, "{name}");
        assert_ne!(name, revocation_name("JTI=abd"));
    }

    #[test]
    fn a_replica_that_has_not_listed_the_revocations_refuses_every_token() {
        let (store, _writer) = reflector::store();
        let revocations = Revocations {
            store,
            changes: watch::Sender::new(()),
            client: None,
            synced: AtomicBool::new(false),
            enforced: true,
        };
        assert_eq!(
            revocations.refusal(&token(), &identity(Some(5_000)), at(6_000)),
            Some(TokenError::RevocationsUnknown)
        );
        revocations.synced.store(true, Ordering::Relaxed);
        assert_eq!(
            revocations.refusal(&token(), &identity(Some(5_000)), at(6_000)),
            None
        );
    }

    #[tokio::test]
    async fn an_open_stream_learns_of_a_revocation_that_covers_it() {
        let (store, mut writer) = reflector::store();
        let revocations = Arc::new(Revocations {
            store,
            changes: watch::Sender::new(()),
            client: None,
            synced: AtomicBool::new(true),
            enforced: true,
        });
        let now = Utc::now().timestamp();
        let mut bob = identity(Some(now));
        bob.username = "bob@example.com".into();
        bob.groups.clear();
        let stream = |identity| {
            let changes = revocations.changes();
            tokio::spawn(Arc::clone(&revocations).until_revoked(changes, token(), identity))
        };
        let alices = stream(identity(Some(now)));
        let bobs = stream(bob);
        tokio::task::yield_now().await;
        // Its notBefore is in 1970: alice's token, issued now, is not covered.
        writer.apply_watcher_event(&watcher::Event::Apply(revocation(
            None,
            Some("team-a"),
            None,
        )));
        revocations.changes.send_replace(());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!alices.is_finished(), "issued after notBefore");
        let mut covering = revocation(None, Some("team-a"), None);
        covering.spec.not_before = k8s_time(now + 60);
        writer.apply_watcher_event(&watcher::Event::Apply(covering));
        revocations.changes.send_replace(());
        tokio::time::timeout(Duration::from_secs(2), alices)
            .await
            .expect("alice's stream ends")
            .unwrap();
        assert!(!bobs.is_finished(), "bob is not in team-a");
        bobs.abort();
    }

    #[test]
    fn the_refusal_names_the_revocation_and_its_message() {
        let revocations = Revocations::fixed(vec![revocation(None, Some("team-a"), None)]);
        let refusal = revocations
            .refusal(&token(), &identity(Some(10)), at(2_000))
            .unwrap();
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
