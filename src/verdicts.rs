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

use crate::oidc::verify::{IdToken, Identity, TokenError, Verifier};

/// kube-apiserver's default `TokenSuccessCacheTTL`: a verdict is never older than the API
/// server's own.
const VERDICT_TTL: Duration = Duration::from_secs(10);
/// More distinct tokens than this in 10 s means a flood; the cache is cleared rather than grown.
const MAX_VERDICTS: usize = 10_000;

/// Successful verdicts by token digest: the operator's own ([`Identity`]) and the API server's
/// (kept by [`crate::confirm::Confirmer`]), each in its own cache.
pub struct Verdicts<V> {
    cached: Mutex<HashMap<[u8; 32], Cached<V>>>,
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
            cached: Mutex::default(),
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
            && let Some(hit) = cached.get(&digest)
            && now.duration_since(hit.at) < VERDICT_TTL
            && hit.token_expires_at > Utc::now()
        {
            return Ok(hit.verdict.clone());
        }
        let (verdict, token_expires_at) = judge().await?;
        if let Ok(mut cached) = self.cached.lock() {
            if cached.len() >= MAX_VERDICTS {
                cached.retain(|_, hit| now.duration_since(hit.at) < VERDICT_TTL);
                if cached.len() >= MAX_VERDICTS {
                    cached.clear();
                }
            }
            cached.insert(
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
}

impl Verdicts<Identity> {
    /// `verifier.verify`, through the cache.
    pub async fn verify(
        &self,
        verifier: &Verifier,
        token: &IdToken,
    ) -> Result<Identity, TokenError> {
        self.get_or_judge(token, || async {
            let identity = verifier.verify(token).await?;
            let expires_at = identity.expires_at;
            Ok((identity, expires_at))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verdicts_are_reused_but_refusals_are_not() {
        let verdicts = Verdicts::<Identity>::default();
        let verifier = crate::testing::issuer().verifier();
        let token = IdToken::from(crate::testing::issuer().token_for("jane@example.com", &[], 600));
        let first = verdicts.verify(&verifier, &token).await.unwrap();
        assert_eq!(verdicts.cached.lock().unwrap().len(), 1);
        assert_eq!(verdicts.verify(&verifier, &token).await.unwrap(), first);
        let bad = IdToken::from("not-a-token".to_owned());
        assert!(verdicts.verify(&verifier, &bad).await.is_err());
        assert_eq!(verdicts.cached.lock().unwrap().len(), 1);
    }
}
