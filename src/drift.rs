//! A refused edit of the authentication configuration as a `Warning` Event, beside the metric and
//! the `/readyz` line: the operator keeps its last good configuration while the API server may
//! already hold the edited one, and an administrator who changed the file looks at Events first.
//!
//! The Event goes on the object that stands for this replica ([`Replica`]).

use tokio::sync::watch;

use crate::{events::Replica, oidc::verify::RefusedEdit};

/// The Event's reason, for `kubectl get events --field-selector reason=...`.
pub const REASON: &str = "AuthenticationConfigRejected";

/// Runs until the verifier is gone: one Event per refused content (the verifier reports each
/// once), none when the file is back to one in force.
pub async fn report(mut edits: watch::Receiver<Option<RefusedEdit>>, replica: Replica) {
    while edits.changed().await.is_ok() {
        let Some(edit) = edits.borrow_and_update().clone() else {
            continue;
        };
        replica.warn(REASON, "Reload", note(&edit)).await;
    }
}

/// What the Event says: why (the problem names the content's digest) and what stays in force.
fn note(edit: &RefusedEdit) -> String {
    format!(
        "the changed authentication configuration is refused and the previous one stays in force until the file is fixed: {}",
        edit.problem
    )
}
