//! The one place that turns a credential into what its consumer reads. Both the HTTP download and
//! the controller's Secret call [`render`], so the two paths always hand out the same file for the
//! same token. Everything but the token and the namespace comes from [`KubeconfigSettings`],
//! built once at start-up.

mod formats;
mod render;
pub mod stored;

use std::collections::BTreeMap;

use crate::{config::KubeconfigSettings, crd::Format, oidc::token::IdToken};

/// A credential in the form its consumer reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// A kubeconfig file (`token`, `exec` and `tokenFile`).
    Kubeconfig(String),
    /// The data keys of an Argo CD cluster Secret (`argocd`): `name`, `server`, `config`.
    ArgoCdCluster(BTreeMap<String, String>),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the kubeconfig as YAML: {0}")]
    Yaml(#[from] crate::yaml::Error),
    #[error("cannot write the Argo CD cluster config as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The operator's owner has not named the public client kubelogin logs in with.
    #[error(
        "the exec format is not enabled on this operator: its owner must set exec.clientId, the public OIDC client kubelogin logs in with"
    )]
    ExecNotConfigured,
}

/// Renders `token` as `format`. `namespace` (or the configured default) becomes the context's
/// namespace in a kubeconfig; Argo CD chooses namespaces per Application, so it ignores it. The
/// `exec` format ignores the token: it carries no credential, and kubelogin gets its own; so does
/// `tokenFile`, whose kubeconfig names the file that holds it ([`stored::secret_data`] writes it).
pub fn render(
    settings: &KubeconfigSettings,
    format: Format,
    token: &IdToken,
    namespace: Option<&str>,
) -> Result<Rendered, Error> {
    let user = match format {
        Format::Token => {
            return Ok(Rendered::Kubeconfig(render::token_kubeconfig(
                settings,
                token.expose(),
                namespace,
            )?));
        }
        Format::Exec => formats::exec_user(settings.exec.as_ref().ok_or(Error::ExecNotConfigured)?),
        Format::TokenFile => formats::token_file_user(),
        Format::ArgoCd => {
            return Ok(Rendered::ArgoCdCluster(formats::argocd_cluster(
                settings,
                token.expose(),
            )?));
        }
    };
    Ok(Rendered::Kubeconfig(render::kubeconfig(
        settings, user, namespace,
    )?))
}

#[cfg(test)]
pub(crate) mod tests {
    use kube::config::Kubeconfig;

    use super::*;

    pub(crate) fn settings() -> KubeconfigSettings {
        KubeconfigSettings {
            ca: crate::ca::CaBundle::fixed(Some(
                b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".to_vec(),
            )),
            ..KubeconfigSettings::for_tests("kyma.local", "https://apiserver.kyma.local:9443")
        }
    }

    pub(crate) fn token() -> IdToken {
        IdToken::from("header.payload.signature".to_owned())
    }

    /// The kubeconfig file of a kubeconfig format.
    pub(crate) fn yaml(rendered: Rendered) -> String {
        match rendered {
            Rendered::Kubeconfig(yaml) => yaml,
            Rendered::ArgoCdCluster(_) => panic!("expected a kubeconfig"),
        }
    }

    fn token_kubeconfig(settings: &KubeconfigSettings, token: &str) -> Kubeconfig {
        let rendered = render(
            settings,
            Format::Token,
            &IdToken::from(token.to_owned()),
            None,
        );
        Kubeconfig::from_yaml(&yaml(rendered.unwrap())).unwrap()
    }

    /// The token the merged file's context `context` would send, following kubectl's merge rules
    /// (kube's `merge` implements them: the first file to name a user entry wins).
    fn token_of_context(merged: &Kubeconfig, context: &str) -> String {
        let user = merged
            .contexts
            .iter()
            .find(|named| named.name == context)
            .and_then(|named| named.context.as_ref()?.user.clone())
            .unwrap();
        let auth = merged
            .auth_infos
            .iter()
            .find(|named| named.name == user)
            .and_then(|named| named.auth_info.clone())
            .unwrap();
        serde_json::to_value(auth).unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// With the seed's default user name, two clusters' kubeconfigs share the entry `OIDCUser`
    /// and a merge keeps only the first one's token, so the second context silently sends the
    /// first cluster's token. A per-cluster `userName` keeps both.
    #[test]
    fn per_cluster_user_names_survive_a_kubeconfig_merge() {
        let cluster = |name: &str, user: &str| KubeconfigSettings {
            cluster_name: name.into(),
            server: format!("https://{name}:6443"),
            user_name: user.into(),
            ..settings()
        };
        let merged = token_kubeconfig(&cluster("a", "OIDCUser"), "token-a")
            .merge(token_kubeconfig(&cluster("b", "OIDCUser"), "token-b"))
            .unwrap();
        assert_eq!(token_of_context(&merged, "b"), "token-a");

        let merged = token_kubeconfig(&cluster("a", "oidc@a"), "token-a")
            .merge(token_kubeconfig(&cluster("b", "oidc@b"), "token-b"))
            .unwrap();
        assert_eq!(token_of_context(&merged, "a"), "token-a");
        assert_eq!(token_of_context(&merged, "b"), "token-b");
        assert_eq!(merged.auth_infos.len(), 2);
    }
}
