//! Successful verdicts on tokens, reused for as long as kube-apiserver reuses its own (its token
//! cache keeps a success for 10 s), by the controller and by the download alike: a flood of
//! requests naming one token, or a client downloading in a loop, costs one RSA verification and
//! one SelfSubjectReview per token per 10 s, not one per call.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::{capacity::release_spare_capacity, oidc::token::IdToken};

/// kube-apiserver's default `TokenSuccessCacheTTL`: a verdict is never older than the API
/// server's own.
const VERDICT_TTL: Duration = Duration::from_secs(10);
/// More distinct tokens than this in 10 s means a flood; the cache is cleared rather than grown.
const MAX_VERDICTS: usize = 10_000;

/// Successful verdicts by token digest: the operator's own ([`Identity`]) and the API server's
/// (kept by [`crate::confirm::Confirmer`]), each in its own cache.
pub struct Verdicts<V> {
    cached: Mutex<Cache<V>>,
}

struct Cache<V> {
    by_digest: HashMap<[u8; 32], Cached<V>>,
    /// When verdicts past their time were last dropped.
    purged_at: Instant,
}

impl<V> Cache<V> {
    /// Verdicts are only ever reused for [`VERDICT_TTL`]; kept any longer, a burst of 5,000
    /// requests' tokens stayed in the heap long after the requests were deleted (6 MB of the
    /// API server's answers alone, heaptrack).
    fn purge(&mut self, now: Instant) {
        self.by_digest
            .retain(|_, hit| now.duration_since(hit.at) < VERDICT_TTL);
        release_spare_capacity(&mut self.by_digest);
        self.purged_at = now;
    }
}

/// A verdict, when it was reached, and when the token it is about expires.
struct Cached<V> {
    at: Instant,
    token_expires_at: DateTime<Utc>,
    verdict: V,
}

impl<V> Default for Verdicts<V> {
    fn default() -> Self {
        Self {
            cached: Mutex::new(Cache {
                by_digest: HashMap::new(),
                purged_at: Instant::now(),
            }),
        }
    }
}

impl<V: Clone> Verdicts<V> {
    /// `judge`'s verdict on `token`, or one from less than 10 s ago on the same token while it
    /// has not expired. `judge` also says when the token expires. Refusals and errors are never
    /// cached, so a token that starts working (Dex back, keys rotated in) works at once.
    pub async fn get_or_judge<E, Fut>(
        &self,
        token: &IdToken,
        judge: impl FnOnce() -> Fut,
    ) -> Result<V, E>
    where
        Fut: Future<Output = Result<(V, DateTime<Utc>), E>>,
    {
        let digest: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        let now = Instant::now();
        if let Ok(cached) = self.cached.lock()
            && let Some(hit) = cached.by_digest.get(&digest)
            && now.duration_since(hit.at) < VERDICT_TTL
            && hit.token_expires_at > Utc::now()
        {
            return Ok(hit.verdict.clone());
        }
        let (verdict, token_expires_at) = judge().await?;
        if let Ok(mut cached) = self.cached.lock() {
            if cached.by_digest.len() >= MAX_VERDICTS
                || now.duration_since(cached.purged_at) >= VERDICT_TTL
            {
                cached.purge(now);
                if cached.by_digest.len() >= MAX_VERDICTS {
                    cached.by_digest.clear();
                }
            }
            cached.by_digest.insert(
                digest,
                Cached {
                    at: now,
                    token_expires_at,
                    verdict: verdict.clone(),
                },
            );
        }
        Ok(verdict)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cached.lock().unwrap().by_digest.len()
    }

    /// Drops every verdict: they were reached under rules no longer in force.
    pub fn forget_all(&self) {
        if let Ok(mut cached) = self.cached.lock() {
            cached.by_digest.clear();
        }
    }

    /// Drops the verdicts past their time. Judging a token does this too, at most once per
    /// [`VERDICT_TTL`]; a periodic sweep calls it so that what a burst left is dropped even when
    /// no token follows.
    pub fn forget_expired(&self) {
        if let Ok(mut cached) = self.cached.lock() {
            cached.purge(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration as Lifetime;

    use super::*;

    /// Judges `token` as the number of judgements so far, valid for ten minutes.
    async fn judge(verdicts: &Verdicts<u32>, token: &str, judged: &mut u32) -> u32 {
        verdicts
            .get_or_judge(&IdToken::from(token.to_owned()), || {
                *judged += 1;
                let verdict = *judged;
                async move { Ok::<_, ()>((verdict, Utc::now() + Lifetime::minutes(10))) }
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn verdicts_are_reused_but_refusals_are_not() {
        let verdicts = Verdicts::<u32>::default();
        let mut judged = 0;
        assert_eq!(judge(&verdicts, "a", &mut judged).await, 1);
        assert_eq!(judge(&verdicts, "a", &mut judged).await, 1, "reused");
        let refused: Result<u32, &str> = verdicts
            .get_or_judge(&IdToken::from("b".to_owned()), || async { Err("no") })
            .await;
        assert!(refused.is_err());
        assert_eq!(verdicts.len(), 1, "a refusal is not kept");
        assert_eq!(judge(&verdicts, "b", &mut judged).await, 2);
    }

    /// Every verdict in `verdicts`, and its last purge, as if judged `VERDICT_TTL` ago.
    fn age(verdicts: &Verdicts<u32>) {
        let mut cache = verdicts.cached.lock().unwrap();
        let then = Instant::now().checked_sub(VERDICT_TTL).unwrap();
        cache.purged_at = then;
        for hit in cache.by_digest.values_mut() {
            hit.at = then;
        }
    }

    #[tokio::test]
    async fn verdicts_past_their_time_go_when_another_token_is_judged_or_the_sweep_runs() {
        let verdicts = Verdicts::<u32>::default();
        let mut judged = 0;
        judge(&verdicts, "jane", &mut judged).await;
        judge(&verdicts, "joe", &mut judged).await;
        verdicts.forget_expired();
        assert_eq!(verdicts.len(), 2, "verdicts within their time stay");

        age(&verdicts);
        judge(&verdicts, "ann", &mut judged).await;
        assert_eq!(
            verdicts.len(),
            1,
            "judging a token dropped the two past their time"
        );

        age(&verdicts);
        verdicts.forget_expired();
        assert_eq!(verdicts.len(), 0, "the sweep dropped the last one");
    }
}
