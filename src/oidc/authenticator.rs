//! The one entry point for an ID token, whichever path brought it (the download, the page, the
//! proxy, a request's token Secret): the verifier's verdict, reused for as long as
//! kube-apiserver reuses its own, then the revocations in force (never cached: a revocation
//! applies to verdicts made before it), and every refusal counted once under its reason. One
//! authenticator serves the whole process, so a token that the controller and the download both
//! see costs one verification.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use super::{
    revocations::Revocations,
    token::{IdToken, Identity, TokenError},
    verify::Verifier,
};
use crate::{metrics::Metrics, verdicts::Verdicts};

pub struct Authenticator {
    verifier: Arc<Verifier>,
    verdicts: Verdicts<Identity>,
    /// The verifier's configuration the cached verdicts were reached under: a reload (a rule
    /// added to revoke a token, say) takes effect at once, not when they expire.
    generation: AtomicU64,
    revocations: Arc<Revocations>,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub fn new(
        verifier: Arc<Verifier>,
        revocations: Arc<Revocations>,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.authentication.export(Arc::clone(&verifier));
        Self {
            generation: AtomicU64::new(verifier.generation()),
            verifier,
            verdicts: Verdicts::default(),
            revocations,
            metrics,
        }
    }

    /// The revocations it consults: for readiness, and for open streams, which end when one
    /// covers their token.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// The verifier behind it, for what is not a verdict: readiness and the issuers' keys.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Who holds `token`, or why it is refused (counted in `token_validation_failures_total`).
    pub async fn authenticate(&self, token: &IdToken) -> Result<Identity, TokenError> {
        let generation = self.verifier.generation();
        if self.generation.swap(generation, Ordering::AcqRel) != generation {
            self.verdicts.forget_all();
        }
        let verdict = self
            .verdicts
            .get_or_judge(token, || async {
                let identity = self.verifier.verify(token).await?;
                let expires_at = identity.expires_at;
                Ok::<_, TokenError>((identity, expires_at))
            })
            .await
            .and_then(|identity| {
                match self
                    .revocations
                    .refusal(token, &identity, chrono::Utc::now())
                {
                    Some(refusal) => Err(refusal),
                    None => Ok(identity),
                }
            });
        if let Err(refusal) = &verdict {
            self.metrics.count_token_failure(refusal.reason());
        }
        verdict
    }

    /// A refusal found before the token could be judged (a Secret's value that is no token), so
    /// that it counts like every other.
    pub fn count_refusal(&self, refusal: &TokenError) {
        self.metrics.count_token_failure(refusal.reason());
    }

    /// Drops verdicts past their time; the HTTP server's sweep calls it.
    pub fn forget_expired(&self) {
        self.verdicts.forget_expired();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> (Authenticator, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let verifier = Arc::new(crate::testing::issuer().verifier());
        (
            Authenticator::new(verifier, Revocations::none(), Arc::clone(&metrics)),
            metrics,
        )
    }

    #[tokio::test]
    async fn verdicts_are_reused_and_refusals_are_counted_each_time() {
        let (authenticator, metrics) = authenticator();
        let token = IdToken::from(crate::testing::issuer().token_for("jane@example.com", &[], 600));
        let first = authenticator.authenticate(&token).await.unwrap();
        assert_eq!(authenticator.verdicts.len(), 1);
        assert_eq!(authenticator.authenticate(&token).await.unwrap(), first);
        let bad = IdToken::from("not-a-token".to_owned());
        for _ in 0..2 {
            assert!(authenticator.authenticate(&bad).await.is_err());
        }
        assert_eq!(authenticator.verdicts.len(), 1, "refusals are never cached");
        assert!(
            metrics
                .render()
                .contains("token_validation_failures_total{reason=\"Malformed\"} 2"),
            "{}",
            metrics.render()
        );
    }
}
