//! Each format as the data of a Secret, and the token read back out of that data, side by side:
//! the controller keeps a ServiceAccount token that is not yet due by reading it back, so the
//! two sides of a format must never drift apart.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;

use super::{
    Rendered,
    formats::{CA_FILE, TOKEN_FILE, argocd_bearer_token},
};
use crate::{
    crd::{Format, SecretKey},
    oidc::token::IdToken,
};

/// The label by which Argo CD finds its cluster Secrets.
pub const ARGOCD_SECRET_TYPE_LABEL: &str = "argocd.argoproj.io/secret-type";
/// The key of an Argo CD cluster Secret that holds the credential.
const ARGOCD_CONFIG_KEY: &str = "config";

/// The label by which a format's consumer finds the Secret, when it looks for one.
pub fn consumer_label(format: Format) -> Option<(&'static str, &'static str)> {
    match format {
        Format::ArgoCd => Some((ARGOCD_SECRET_TYPE_LABEL, "cluster")),
        Format::Token | Format::Exec | Format::TokenFile => None,
    }
}

/// A kubeconfig goes under each of `keys`; Argo CD's data keys are its own. `tokenFile` adds the
/// files its kubeconfig and its consumers read: the token and the CA (`ca`, when there is one).
pub fn secret_data(
    rendered: Rendered,
    format: Format,
    keys: &[SecretKey],
    token: &IdToken,
    ca: Option<&[u8]>,
) -> BTreeMap<String, ByteString> {
    match rendered {
        Rendered::Kubeconfig(yaml) => {
            let mut data: BTreeMap<String, ByteString> = keys
                .iter()
                .map(|key| {
                    (
                        key.as_str().to_owned(),
                        ByteString(yaml.clone().into_bytes()),
                    )
                })
                .collect();
            if format == Format::TokenFile {
                data.insert(
                    TOKEN_FILE.to_owned(),
                    ByteString(token.expose().as_bytes().to_vec()),
                );
                if let Some(ca) = ca {
                    data.insert(CA_FILE.to_owned(), ByteString(ca.to_vec()));
                }
            }
            data
        }
        Rendered::ArgoCdCluster(data) => data
            .into_iter()
            .map(|(key, value)| (key, ByteString(value.into_bytes())))
            .collect(),
    }
}

/// The token in Secret data that [`secret_data`] wrote for `format` and `keys`: the `config` of
/// an Argo CD cluster Secret, the `token` file of `tokenFile`, or the user's token in the first
/// kubeconfig key (`exec` holds none).
pub fn token(
    format: Format,
    keys: &[SecretKey],
    data: &BTreeMap<String, ByteString>,
) -> Option<String> {
    let text = |key: &str| std::str::from_utf8(&data.get(key)?.0).ok();
    match format {
        Format::ArgoCd => argocd_bearer_token(text(ARGOCD_CONFIG_KEY)?),
        Format::TokenFile => text(TOKEN_FILE).map(str::to_owned),
        Format::Token | Format::Exec => {
            let kubeconfig: serde_json::Value =
                crate::yaml::from_str(text(keys.first()?.as_str())?).ok()?;
            kubeconfig["users"][0]["user"]["token"]
                .as_str()
                .map(str::to_owned)
        }
    }
}
