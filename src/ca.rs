//! The CA that issued kubeconfigs carry. When it comes from a file, the file is watched: a
//! rotated certificate reaches every new download at once and every issued kubeconfig Secret
//! within seconds, instead of leaving them all pinned to the old CA (the Kamaji lesson). An
//! unreadable or invalid new file is logged and ignored, keeping the last good CA.

use std::{
    fmt,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::sync::watch;
use tracing::{info, warn};

/// How often the CA file is read to look for a rotation.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The current CA bundle (PEM), shared by everything that renders kubeconfigs.
#[derive(Clone)]
pub struct CaBundle {
    current: Arc<RwLock<Option<Arc<[u8]>>>>,
    file: Option<PathBuf>,
    changed: Arc<watch::Sender<u64>>,
}

impl CaBundle {
    /// A CA that never changes (given inline, or none: kubectl then uses the system roots).
    pub fn fixed(pem: Option<Vec<u8>>) -> Self {
        Self::new(pem, None)
    }

    /// A CA read from `file`, whose current content is `pem`.
    pub fn from_file(file: PathBuf, pem: Vec<u8>) -> Self {
        Self::new(Some(pem), Some(file))
    }

    fn new(pem: Option<Vec<u8>>, file: Option<PathBuf>) -> Self {
        Self {
            current: Arc::new(RwLock::new(pem.map(Arc::from))),
            file,
            changed: Arc::new(watch::channel(0).0),
        }
    }

    pub fn current(&self) -> Option<Arc<[u8]>> {
        self.current.read().ok().and_then(|pem| pem.clone())
    }

    /// Ticks each time the CA changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Takes `pem` as the new CA if it is valid and differs; true when it changed.
    pub fn replace(&self, pem: Vec<u8>) -> Result<bool, String> {
        parse_pem(&pem)?;
        let mut current = self
            .current
            .write()
            .map_err(|_| "the CA lock is poisoned")?;
        if current.as_deref() == Some(pem.as_slice()) {
            return Ok(false);
        }
        *current = Some(Arc::from(pem));
        drop(current);
        self.changed.send_modify(|generation| *generation += 1);
        Ok(true)
    }

    /// Runs forever when the CA comes from a file: re-reads it every `interval`
    /// ([`POLL_INTERVAL`] in the operator).
    pub async fn watch_file(self, interval: Duration) {
        let Some(file) = self.file.clone() else {
            return;
        };
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            let read = tokio::fs::read(&file).await.map_err(|e| e.to_string());
            match read.and_then(|pem| self.replace(pem)) {
                Ok(true) => {
                    // Each user says what it does with it: kubeconfigs are re-rendered, the proxy's
                    // upstream client only trusts the new CA.
                    info!(file = %file.display(), "the CA file changed; the new CA is in use")
                }
                Ok(false) => {}
                Err(error) => {
                    warn!(file = %file.display(), %error, "ignoring the CA file's new content; the last good CA stays")
                }
            }
        }
    }
}

impl Default for CaBundle {
    fn default() -> Self {
        Self::fixed(None)
    }
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.current() == other.current() && self.file == other.file
    }
}

impl Eq for CaBundle {}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("file", &self.file)
            .field("bytes", &self.current().map(|pem| pem.len()))
            .finish()
    }
}

/// Checks that `pem` holds at least one PEM certificate and nothing unparseable.
pub fn parse_pem(pem: &[u8]) -> Result<(), String> {
    let mut reader = pem;
    let certificates = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not PEM: {e}"))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &[u8] = b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
    const TWO: &[u8] = b"-----BEGIN CERTIFICATE-----\nAQ==\n-----END CERTIFICATE-----\n";

    #[tokio::test]
    async fn a_rotated_file_replaces_the_ca_and_garbage_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, ONE).unwrap();
        let bundle = CaBundle::from_file(path.clone(), ONE.to_vec());
        let clone = bundle.clone();
        let mut changes = bundle.changes();
        let poll = Duration::from_millis(20);
        let watcher = tokio::spawn(bundle.clone().watch_file(poll));

        std::fs::write(&path, TWO).unwrap();
        tokio::time::timeout(Duration::from_secs(30), changes.changed())
            .await
            .expect("the change is announced")
            .unwrap();
        assert_eq!(clone.current().as_deref(), Some(TWO), "clones share the CA");

        std::fs::write(&path, b"not a certificate").unwrap();
        tokio::time::sleep(poll * 10).await;
        assert_eq!(bundle.current().as_deref(), Some(TWO));
        assert!(!changes.has_changed().unwrap());
        watcher.abort();
    }

    #[test]
    fn the_same_content_is_no_change() {
        let bundle = CaBundle::fixed(Some(ONE.to_vec()));
        assert_eq!(bundle.replace(ONE.to_vec()), Ok(false));
        assert_eq!(bundle.replace(TWO.to_vec()), Ok(true));
        assert!(bundle.replace(b"x".to_vec()).is_err());
        assert_eq!(bundle.current().as_deref(), Some(TWO));
    }
}
