//! The forms one credential takes for its consumers: kubectl with the token inside, kubectl with
//! kubelogin fetching and refreshing its own tokens, and Argo CD's cluster Secret.

use std::collections::BTreeMap;

use base64::Engine as _;
use kube::config::{AuthInfo, ExecConfig, ExecInteractiveMode};
use serde::Serialize;

use crate::config::{ExecCommand, ExecSettings, KubeconfigSettings};

/// The credential plugin API kubectl has spoken since 1.22; v1 requires `interactiveMode`.
const EXEC_API_VERSION: &str = "client.authentication.k8s.io/v1";
/// What kubectl prints when the plugin is missing, instead of a bare "executable not found".
const INSTALL_HINT: &str = "This kubeconfig logs you in with kubelogin (https://github.com/int128/kubelogin). Install it as the kubectl plugin kubectl-oidc_login: kubectl krew install oidc-login, or brew install kubelogin.";

/// The user entry that holds the credential itself, as a bearer token.
pub(super) fn token_user(token: &str) -> AuthInfo {
    AuthInfo {
        token: Some(token.to_owned().into()),
        ..AuthInfo::default()
    }
}

/// The file beside the kubeconfig that holds the token, named relative to the kubeconfig: client
/// libraries resolve a relative `tokenFile` against the kubeconfig's own directory, so the same
/// file works wherever the Secret is mounted, in a pod or copied to a host.
pub const TOKEN_FILE: &str = "token";
/// The file beside the kubeconfig that holds the API server's CA, for clients that want it alone.
pub const CA_FILE: &str = "ca.crt";

/// The user entry that reads its token from [`TOKEN_FILE`], so the kubeconfig stays the same
/// across renewals and only the token file changes.
pub(super) fn token_file_user() -> AuthInfo {
    AuthInfo {
        token_file: Some(TOKEN_FILE.to_owned()),
        ..AuthInfo::default()
    }
}

/// The user entry that runs kubelogin. It holds the public client's ID and the issuer's CA but
/// no client secret and no token, so the file may be shared freely: each person who uses it logs
/// in as themselves, and kubelogin keeps and refreshes the tokens in its own cache.
pub(super) fn exec_user(exec: &ExecSettings) -> AuthInfo {
    // kubectl runs `kubectl oidc-login`, which it finds on PATH as the `kubectl-oidc_login`
    // plugin; the plugin itself takes its subcommand directly.
    let plugin = match exec.command {
        ExecCommand::Kubectl => Some("oidc-login".to_owned()),
        ExecCommand::KubectlOidcLogin => None,
    };
    let mut args: Vec<String> = plugin.into_iter().collect();
    args.extend([
        "get-token".to_owned(),
        format!("--oidc-issuer-url={}", exec.issuer),
        format!("--oidc-client-id={}", exec.client_id),
    ]);
    args.extend(
        exec.extra_scopes
            .iter()
            .map(|scope| format!("--oidc-extra-scope={scope}")),
    );
    if let Some(pem) = &exec.issuer_ca_pem {
        args.push(format!(
            "--certificate-authority-data={}",
            base64::engine::general_purpose::STANDARD.encode(pem)
        ));
    }
    AuthInfo {
        exec: Some(ExecConfig {
            api_version: Some(EXEC_API_VERSION.to_owned()),
            command: Some(exec.command.as_str().to_owned()),
            args: Some(args),
            install_hint: Some(INSTALL_HINT.to_owned()),
            interactive_mode: Some(ExecInteractiveMode::IfAvailable),
            ..ExecConfig::default()
        }),
        ..AuthInfo::default()
    }
}

/// Argo CD's `config` key: the cluster's connection as its `ClusterConfig` JSON.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ArgoCdConfig<'a> {
    bearer_token: &'a str,
    tls_client_config: ArgoCdTls,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ArgoCdTls {
    insecure: bool,
    /// Base64 PEM, as in a kubeconfig; absent means the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_data: Option<String>,
}

/// The data of an Argo CD cluster Secret (the `argocd.argoproj.io/secret-type: cluster` label is
/// the controller's, since it belongs to the Secret, not to its data): `name` as Argo CD lists
/// the cluster, `server` to deploy to, `config` with the bearer token and CA.
pub(super) fn argocd_cluster(
    settings: &KubeconfigSettings,
    token: &str,
) -> Result<BTreeMap<String, String>, serde_json::Error> {
    let config = serde_json::to_string(&ArgoCdConfig {
        bearer_token: token,
        tls_client_config: ArgoCdTls {
            insecure: false,
            ca_data: settings
                .ca
                .current()
                .map(|pem| base64::engine::general_purpose::STANDARD.encode(pem)),
        },
    })?;
    Ok(BTreeMap::from([
        ("name".to_owned(), settings.cluster_name.clone()),
        ("server".to_owned(), settings.server.clone()),
        ("config".to_owned(), config),
    ]))
}

/// The bearer token of an Argo CD cluster Secret's `config`, so a ServiceAccount token that is
/// not yet due can be kept instead of minted anew.
pub(super) fn argocd_bearer_token(config: &str) -> Option<String> {
    let config: serde_json::Value = serde_json::from_str(config).ok()?;
    config["bearerToken"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use kube::config::Kubeconfig;

    use super::*;
    use crate::{
        crd::Format,
        kubeconfig::{
            Rendered, render,
            tests::{settings, token, yaml},
        },
        oidc::token::IdToken,
    };

    fn exec_settings() -> KubeconfigSettings {
        KubeconfigSettings {
            exec: Some(ExecSettings {
                issuer: "https://dex.example.com/dex".into(),
                client_id: "kubelogin".into(),
                extra_scopes: vec!["email".into(), "groups".into(), "offline_access".into()],
                issuer_ca_pem: Some(b"issuer CA PEM".to_vec()),
                command: ExecCommand::Kubectl,
            }),
            ..settings()
        }
    }

    #[test]
    fn exec_kubeconfig_runs_kubelogin_and_holds_no_credential() {
        let exec_yaml = yaml(render(&exec_settings(), Format::Exec, &token(), None).unwrap());
        assert!(
            !exec_yaml.contains("header.payload.signature"),
            "{exec_yaml}"
        );
        assert!(!exec_yaml.contains("token:"), "{exec_yaml}");
        assert!(!exec_yaml.contains("secret"), "{exec_yaml}");
        let parsed = Kubeconfig::from_yaml(&exec_yaml).unwrap();
        let user = &parsed.auth_infos[0];
        assert_eq!(user.name, "OIDCUser");
        let exec = user.auth_info.as_ref().unwrap().exec.as_ref().unwrap();
        assert_eq!(
            exec.api_version.as_deref(),
            Some("client.authentication.k8s.io/v1")
        );
        assert_eq!(exec.command.as_deref(), Some("kubectl"));
        assert_eq!(
            exec.interactive_mode,
            Some(ExecInteractiveMode::IfAvailable)
        );
        assert!(exec.install_hint.as_deref().unwrap().contains("kubelogin"));
        let ca = base64::engine::general_purpose::STANDARD.encode(b"issuer CA PEM");
        assert_eq!(
            exec.args.as_deref().unwrap(),
            [
                "oidc-login".to_owned(),
                "get-token".to_owned(),
                "--oidc-issuer-url=https://dex.example.com/dex".to_owned(),
                "--oidc-client-id=kubelogin".to_owned(),
                "--oidc-extra-scope=email".to_owned(),
                "--oidc-extra-scope=groups".to_owned(),
                "--oidc-extra-scope=offline_access".to_owned(),
                format!("--certificate-authority-data={ca}"),
            ]
        );
        // Run as the plugin itself: the same arguments without kubectl's plugin name.
        let mut plugin_settings = exec_settings();
        plugin_settings.exec.as_mut().unwrap().command = ExecCommand::KubectlOidcLogin;
        let plugin_yaml = yaml(render(&plugin_settings, Format::Exec, &token(), None).unwrap());
        let parsed = Kubeconfig::from_yaml(&plugin_yaml).unwrap();
        let plugin = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        let plugin = plugin.exec.as_ref().unwrap();
        assert_eq!(plugin.command.as_deref(), Some("kubectl-oidc_login"));
        assert_eq!(
            plugin.args.as_deref().unwrap(),
            &exec.args.as_deref().unwrap()[1..]
        );
        // The cluster half is the token format's: same server, CA, context and names.
        let token_yaml = yaml(render(&exec_settings(), Format::Token, &token(), None).unwrap());
        let cluster_part = |yaml: &str| yaml.split("\nusers:").next().unwrap().to_owned();
        assert_eq!(cluster_part(&exec_yaml), cluster_part(&token_yaml));
    }

    /// The kubeconfig names the token file beside it and holds no token, so it is the same for
    /// every renewal; the token and the CA are files of their own, and the token reads back.
    #[test]
    fn token_file_kubeconfig_stays_the_same_and_the_token_is_a_file_beside_it() {
        let keys = [
            crate::crd::SecretKey::Kubeconfig,
            crate::crd::SecretKey::Value,
        ];
        let data = |token: &IdToken| {
            let rendered = render(&settings(), Format::TokenFile, token, None).unwrap();
            crate::kubeconfig::stored::secret_data(
                rendered,
                Format::TokenFile,
                &keys,
                token,
                settings().ca.current().as_deref(),
            )
        };
        let renewed = IdToken::from("renewed.payload.signature".to_owned());
        let (first, second) = (data(&token()), data(&renewed));
        assert_eq!(
            first.keys().map(String::as_str).collect::<Vec<_>>(),
            ["ca.crt", "kubeconfig", "token", "value"]
        );
        assert_eq!(first["kubeconfig"], second["kubeconfig"]);
        assert_eq!(first["value"], first["kubeconfig"]);
        assert_eq!(first["token"].0, b"header.payload.signature");
        assert_eq!(first["ca.crt"].0, &*settings().ca.current().unwrap());
        let yaml = String::from_utf8(first["kubeconfig"].0.clone()).unwrap();
        assert!(!yaml.contains("header.payload.signature"), "{yaml}");
        let parsed = Kubeconfig::from_yaml(&yaml).unwrap();
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.token_file.as_deref(), Some("token"));
        assert_eq!(
            crate::kubeconfig::stored::token(Format::TokenFile, &keys, &second).as_deref(),
            Some("renewed.payload.signature")
        );
        assert!(!Format::TokenFile.downloadable());
    }

    #[test]
    fn exec_without_an_issuer_ca_leaves_kubelogin_on_system_roots() {
        let mut settings = exec_settings();
        settings.exec.as_mut().unwrap().issuer_ca_pem = None;
        let yaml = yaml(render(&settings, Format::Exec, &token(), None).unwrap());
        assert!(!yaml.contains("certificate-authority-data="), "{yaml}");
    }

    #[test]
    fn exec_is_refused_when_no_public_client_is_configured() {
        let error = render(&settings(), Format::Exec, &token(), None).unwrap_err();
        assert!(matches!(error, crate::kubeconfig::Error::ExecNotConfigured));
        assert!(error.to_string().contains("exec.clientId"), "{error}");
    }

    #[test]
    fn argocd_cluster_has_name_server_and_a_config_with_token_and_ca() {
        let Rendered::ArgoCdCluster(data) =
            render(&settings(), Format::ArgoCd, &token(), Some("ignored")).unwrap()
        else {
            panic!("expected Argo CD cluster data");
        };
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            ["config", "name", "server"]
        );
        assert_eq!(data["name"], "kyma.local");
        assert_eq!(data["server"], "https://apiserver.kyma.local:9443");
        let config: serde_json::Value = serde_json::from_str(&data["config"]).unwrap();
        let ca = base64::engine::general_purpose::STANDARD.encode(settings().ca.current().unwrap());
        assert_eq!(
            config,
            serde_json::json!({
                "bearerToken": "header.payload.signature",
                "tlsClientConfig": { "insecure": false, "caData": ca },
            })
        );
        assert_eq!(
            argocd_bearer_token(&data["config"]).as_deref(),
            Some("header.payload.signature")
        );
    }

    #[test]
    fn argocd_without_a_ca_names_none() {
        let no_ca = KubeconfigSettings {
            ca: crate::ca::CaBundle::default(),
            ..settings()
        };
        let Rendered::ArgoCdCluster(data) = render(&no_ca, Format::ArgoCd, &token(), None).unwrap()
        else {
            panic!("expected Argo CD cluster data");
        };
        let config: serde_json::Value = serde_json::from_str(&data["config"]).unwrap();
        assert_eq!(
            config["tlsClientConfig"],
            serde_json::json!({ "insecure": false })
        );
    }

    #[test]
    fn a_token_with_json_syntax_stays_one_string_in_argocd_config() {
        let hostile = IdToken::from(r#"a","insecure":true,"x":"#.to_owned());
        let Rendered::ArgoCdCluster(data) =
            render(&settings(), Format::ArgoCd, &hostile, None).unwrap()
        else {
            panic!("expected Argo CD cluster data");
        };
        assert_eq!(
            argocd_bearer_token(&data["config"]).as_deref(),
            Some(hostile.expose())
        );
        let config: serde_json::Value = serde_json::from_str(&data["config"]).unwrap();
        assert_eq!(config["tlsClientConfig"]["insecure"], false);
    }
}
