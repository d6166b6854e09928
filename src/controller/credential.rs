//! What every source of a credential yields, so the rest of the controller (the Secret, the
//! status, renewal) does not care how the token was made.

use chrono::{DateTime, Utc};
use k8s_openapi::api::authentication::v1::UserInfo;

use crate::oidc::token::{IdToken, Identity};

/// A bearer token and who it makes its holder, as the API server will see them.
#[derive(Debug, Clone)]
pub struct Credential {
    pub token: IdToken,
    pub identity: Identity,
    pub expires_at: DateTime<Utc>,
    /// When the controller should act before the token dies: mint a new one, or warn its owner.
    pub renew_at: DateTime<Utc>,
    /// The lifetime a minted token was granted; `None` for tokens the controller did not mint.
    pub granted_seconds: Option<i64>,
    /// Who the API server says the token's holder is, once it was asked (boxed: most of a
    /// credential's size otherwise).
    pub confirmed: Option<Box<UserInfo>>,
}
