//! Work shared between requests, so that one tenant's many requests cannot make the controller
//! slow for everyone: a token Secret is read once per change however many requests name it.
//! Token verdicts are shared the same way, through `crate::verdicts`, and reconciliation slots
//! through `slots`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::capacity::release_spare_capacity;

/// A Secret by namespace and name.
pub type SecretKey = (String, String);

/// What a read of a token Secret found, kept only as long as the Secret's resourceVersion stays.
#[derive(Clone, Debug)]
pub struct SecretRead<T> {
    pub resource_version: Option<String>,
    pub value: T,
}

/// A read and when a caller last used it.
struct Kept<T> {
    read: SecretRead<T>,
    used: Instant,
}

/// One Secret's last read; the async lock makes concurrent readers wait for one read.
type ReadSlot<T> = Arc<tokio::sync::Mutex<Option<Kept<T>>>>;

/// Reads of token Secrets, keyed by Secret and invalidated by the resourceVersion the Secret
/// watch last saw.
pub struct SecretReads<T> {
    latest_versions: Mutex<HashMap<SecretKey, String>>,
    reads: Mutex<HashMap<SecretKey, ReadSlot<T>>>,
}

impl<T: Clone> Default for SecretReads<T> {
    fn default() -> Self {
        Self {
            latest_versions: Mutex::default(),
            reads: Mutex::default(),
        }
    }
}

impl<T: Clone> SecretReads<T> {
    /// Called by the Secret watch for every change it sees.
    pub fn saw(&self, key: SecretKey, resource_version: Option<String>) {
        if let Ok(mut versions) = self.latest_versions.lock() {
            match resource_version {
                Some(version) => versions.insert(key, version),
                None => versions.remove(&key),
            };
        }
    }

    /// The cached read of `key` if the watch has seen no other version since; otherwise `read`
    /// runs, once for all the callers waiting on the same Secret.
    pub async fn get_or_read<E, F, Fut>(&self, key: SecretKey, read: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<SecretRead<T>, E>>,
    {
        let slot = match self.reads.lock() {
            Ok(mut reads) => Arc::clone(reads.entry(key.clone()).or_default()),
            Err(_) => Arc::default(),
        };
        let mut slot = slot.lock().await;
        let latest = self
            .latest_versions
            .lock()
            .ok()
            .and_then(|versions| versions.get(&key).cloned());
        // Valid unless the watch has seen another version since: a change always reaches the
        // watch (which then notes the new version before waking the requests that read it), so
        // a Secret the watch has said nothing about since the read is still as read.
        if let Some(kept) = slot.as_mut()
            && (latest.is_none() || kept.read.resource_version == latest)
        {
            kept.used = Instant::now();
            return Ok(kept.read.value.clone());
        }
        let fresh = read().await?;
        let value = fresh.value.clone();
        *slot = Some(Kept {
            read: fresh,
            used: Instant::now(),
        });
        Ok(value)
    }

    /// Drops reads nobody used for `unused_for`. A read serves the burst of requests naming
    /// one Secret; kept for every Secret for good, the tokens were 8 MB of the operator's heap
    /// with 10,000 requests (heaptrack). A later reconciliation simply reads again.
    pub fn forget_unused(&self, unused_for: Duration) {
        if let Ok(mut reads) = self.reads.lock() {
            reads.retain(|_, slot| {
                slot.try_lock().map_or(true, |kept| {
                    kept.as_ref()
                        .is_some_and(|kept| kept.used.elapsed() < unused_for)
                })
            });
            release_spare_capacity(&mut reads);
        }
    }

    /// Drops what is kept for Secrets that `keep` no longer wants (no request names them).
    pub fn retain(&self, keep: impl Fn(&SecretKey) -> bool) {
        if let Ok(mut reads) = self.reads.lock() {
            reads.retain(|key, _| keep(key));
            release_spare_capacity(&mut reads);
        }
        if let Ok(mut versions) = self.latest_versions.lock() {
            versions.retain(|key, _| keep(key));
            release_spare_capacity(&mut versions);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.reads.lock().map(|reads| reads.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    fn key() -> SecretKey {
        ("team-a".into(), "alice-token".into())
    }

    async fn read_counting(reads: &SecretReads<u32>, count: &AtomicUsize, version: &str) -> u32 {
        reads
            .get_or_read::<(), _, _>(key(), || async {
                let n = count.fetch_add(1, Ordering::SeqCst) as u32;
                Ok(SecretRead {
                    resource_version: Some(version.to_owned()),
                    value: n,
                })
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_secret_is_read_again_only_after_the_watch_saw_it_change() {
        let reads = SecretReads::<u32>::default();
        let count = AtomicUsize::new(0);
        // The watch has said nothing: the first read is kept.
        assert_eq!(read_counting(&reads, &count, "1").await, 0);
        assert_eq!(read_counting(&reads, &count, "1").await, 0);
        reads.saw(key(), Some("1".into()));
        assert_eq!(read_counting(&reads, &count, "1").await, 0);
        // A new version seen by the watch makes the next caller read again, once.
        reads.saw(key(), Some("2".into()));
        assert_eq!(read_counting(&reads, &count, "2").await, 1);
        assert_eq!(read_counting(&reads, &count, "2").await, 1);
        // A read that raced ahead of the watch is read again until the watch catches up.
        reads.saw(key(), Some("3".into()));
        assert_eq!(read_counting(&reads, &count, "4").await, 2);
        assert_eq!(read_counting(&reads, &count, "4").await, 3);
        reads.saw(key(), Some("4".into()));
        assert_eq!(read_counting(&reads, &count, "4").await, 3);
        assert_eq!(count.load(Ordering::SeqCst), 4);
        reads.retain(|_| false);
        assert_eq!(reads.len(), 0);
    }

    #[tokio::test]
    async fn a_read_nobody_uses_is_forgotten_and_read_again() {
        let reads = SecretReads::<u32>::default();
        let count = AtomicUsize::new(0);
        reads.saw(key(), Some("1".into()));
        assert_eq!(read_counting(&reads, &count, "1").await, 0);
        reads.forget_unused(Duration::from_secs(60));
        assert_eq!(
            read_counting(&reads, &count, "1").await,
            0,
            "recently used: kept"
        );
        reads.forget_unused(Duration::ZERO);
        assert_eq!(reads.len(), 0);
        assert_eq!(
            read_counting(&reads, &count, "1").await,
            1,
            "forgotten: read again"
        );
    }

    #[tokio::test]
    async fn concurrent_readers_of_one_secret_share_one_read() {
        let reads = Arc::new(SecretReads::<u32>::default());
        reads.saw(key(), Some("5".into()));
        let count = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let reads = Arc::clone(&reads);
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    reads
                        .get_or_read::<(), _, _>(key(), || async {
                            count.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok(SecretRead {
                                resource_version: Some("5".into()),
                                value: 7,
                            })
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), 7);
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
