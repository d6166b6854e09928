//! When each issued credential last went through the proxy: the `lastUsedAt` of the
//! KubeconfigRequests that hold it (found by `status.credentialId`), written at most once a
//! minute per credential and replica, so that a busy client costs one status write a minute.
//! Only credentials with an id can be traced to their request; a token without `jti` is not.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::Utc;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use tracing::warn;

use crate::{controller::FIELD_MANAGER, crd::KubeconfigRequest};

/// At most one status write per credential in this long.
pub(super) const WRITE_INTERVAL: Duration = Duration::from_secs(60);

pub(super) struct LastUse {
    client: Client,
    /// When each credential's use was last written by this replica.
    written: Mutex<HashMap<String, Instant>>,
}

impl LastUse {
    pub(super) fn new(client: Client) -> Self {
        Self {
            client,
            written: Mutex::default(),
        }
    }

    /// Notes a request made with the credential `id`; writes it when the last write is a
    /// minute old or more. The write runs on its own, never delaying the request.
    pub(super) fn touch(&self, id: &str) {
        if !self.due(id, Instant::now()) {
            return;
        }
        let (client, id) = (self.client.clone(), id.to_owned());
        tokio::spawn(async move {
            if let Err(error) = write(client, &id).await {
                warn!(%error, credential_id = %id, "cannot record the credential's last use");
            }
        });
    }

    /// Whether `id`'s use is due to be written at `now`; if so, it counts as written from now.
    fn due(&self, id: &str, now: Instant) -> bool {
        let Ok(mut written) = self.written.lock() else {
            return false;
        };
        if written
            .get(id)
            .is_some_and(|at| now.duration_since(*at) < WRITE_INTERVAL)
        {
            return false;
        }
        // Entries a minute old say nothing any more: dropped, so the map holds at most the
        // credentials used within the last minute.
        written.retain(|_, at| now.duration_since(*at) < WRITE_INTERVAL);
        written.insert(id.to_owned(), now);
        true
    }
}

/// Sets `status.lastUsedAt` on every request whose credential is `id`.
async fn write(client: Client, id: &str) -> Result<(), kube::Error> {
    let requests: Api<KubeconfigRequest> = Api::all(client.clone());
    // A field selector's value escapes `=`, which every credential id holds (`JTI=...`).
    let selector = format!(
        "status.credentialId={}",
        id.replace('\\', "\\\\")
            .replace(',', "\\,")
            .replace('=', "\\=")
    );
    let now = crate::crd::status_time(Utc::now());
    let patch = json!({ "status": { "lastUsedAt": now } });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    for request in requests
        .list(&ListParams::default().fields(&selector))
        .await?
    {
        let Some(namespace) = request.namespace() else {
            continue;
        };
        Api::<KubeconfigRequest>::namespaced(client.clone(), &namespace)
            .patch_status(&request.name_any(), &params, &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_write_a_minute_per_credential() {
        let (client, _api) = crate::testing::api_server::client("team-a");
        let last_use = LastUse::new(client);
        let start = Instant::now();
        assert!(last_use.due("JTI=a", start));
        assert!(!last_use.due("JTI=a", start + Duration::from_secs(59)));
        assert!(last_use.due("JTI=b", start + Duration::from_secs(59)));
        assert!(last_use.due("JTI=a", start + WRITE_INTERVAL));
        // The old entry of b is dropped once a minute has passed.
        assert!(last_use.due("JTI=c", start + Duration::from_secs(200)));
        assert_eq!(last_use.written.lock().unwrap().len(), 1);
    }
}
