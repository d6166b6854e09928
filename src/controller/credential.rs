//! What every source of a credential yields, so the rest of the controller (the Secret, the
//! status, renewal) does not care how the token was made.

use chrono::{DateTime, Utc};
use k8s_openapi::api::authentication::v1::UserInfo;

use crate::{
    crd::Format,
    oidc::token::{IdToken, Identity},
};

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

impl Credential {
    /// The id the API server's audit log records the kubeconfig's requests under
    /// ([`crate::confirm::credential_id`]).
    pub fn id(&self, format: Format) -> Option<&str> {
        crate::confirm::credential_id(format, self.confirmed.as_deref(), &self.identity)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;
    use crate::oidc::token::CREDENTIAL_ID_KEY;

    fn credential(jti: Option<&str>, confirmed: Option<UserInfo>) -> Credential {
        let extra: BTreeMap<_, _> = jti
            .map(|jti| (CREDENTIAL_ID_KEY.to_owned(), vec![format!("JTI={jti}")]))
            .into_iter()
            .collect();
        Credential {
            token: IdToken::from("t".to_owned()),
            identity: Identity {
                username: "alice".into(),
                groups: vec![],
                uid: String::new(),
                extra,
                expires_at: Utc::now(),
                issued_at: None,
            },
            expires_at: Utc::now(),
            renew_at: Utc::now(),
            granted_seconds: None,
            confirmed: confirmed.map(Box::new),
        }
    }

    #[test]
    fn the_id_is_the_api_servers_credential_id_when_it_was_asked() {
        assert_eq!(credential(Some("a"), None).id(Format::Token), Some("JTI=a"));
        let answer = UserInfo {
            extra: Some([(CREDENTIAL_ID_KEY.to_owned(), vec!["JTI=b".to_owned()])].into()),
            ..UserInfo::default()
        };
        assert_eq!(
            credential(Some("a"), Some(answer)).id(Format::Token),
            Some("JTI=b")
        );
        // The API server names no id for the token: none is made up.
        assert_eq!(
            credential(Some("a"), Some(UserInfo::default())).id(Format::Token),
            None
        );
    }

    #[test]
    fn a_token_without_jti_and_an_exec_kubeconfig_have_no_id() {
        assert_eq!(credential(None, None).id(Format::Token), None);
        assert_eq!(credential(Some("a"), None).id(Format::Exec), None);
    }
}
