//! The one place that builds a kubeconfig. Both the HTTP download and the controller's Secret use
//! it, so the two paths always hand out the same file for the same token.

use base64::Engine as _;
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext, Preferences,
};

use crate::{config::KubeconfigSettings, oidc::verify::IdToken};

/// Renders the kubeconfig in the seed's shape: one cluster, one context, one user holding the
/// token, `current-context` set, with keys in the order kubectl writes them (sorted, so
/// `apiVersion`, `clusters`, `contexts`, `current-context`, `kind`, `preferences`, `users`; kube's
/// type declares them in another order). The output depends only on the inputs (no timestamps,
/// no maps with random order), so re-rendering an unchanged token yields identical bytes and the
/// controller can skip writes that would change nothing.
pub fn render(
    settings: &KubeconfigSettings,
    token: &IdToken,
    namespace: Option<&str>,
) -> Result<String, crate::yaml::Error> {
    let name = settings.cluster_name.clone();
    let kubeconfig = Kubeconfig {
        api_version: Some("v1".to_owned()),
        kind: Some("Config".to_owned()),
        preferences: Some(Preferences::default()),
        clusters: vec![NamedCluster {
            name: name.clone(),
            cluster: Some(Cluster {
                server: Some(settings.server.clone()),
                certificate_authority_data: settings
                    .ca
                    .current()
                    .map(|pem| base64::engine::general_purpose::STANDARD.encode(pem)),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        contexts: vec![NamedContext {
            name: name.clone(),
            context: Some(Context {
                cluster: name.clone(),
                user: Some(settings.user_name.clone()),
                namespace: namespace
                    .or(settings.default_namespace.as_deref())
                    .map(str::to_owned),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: settings.user_name.clone(),
            auth_info: Some(AuthInfo {
                token: Some(token.expose().to_owned().into()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        current_context: Some(name),
        ..Kubeconfig::default()
    };
    crate::yaml::to_string_sorted(&kubeconfig)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KubeconfigSettings {
        KubeconfigSettings {
            cluster_name: "kyma.local".into(),
            server: "https://apiserver.kyma.local:9443".into(),
            ca: crate::ca::CaBundle::fixed(Some(
                b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".to_vec(),
            )),
            user_name: "OIDCUser".into(),
            default_namespace: None,
        }
    }

    fn token() -> IdToken {
        IdToken::from("header.payload.signature".to_owned())
    }

    #[test]
    fn renders_the_seed_shape() {
        let yaml = render(&settings(), &token(), None).unwrap();
        let parsed: serde_json::Value = crate::yaml::from_str(&yaml).unwrap();
        assert_eq!(parsed["apiVersion"], "v1");
        assert_eq!(parsed["kind"], "Config");
        assert_eq!(parsed["current-context"], "kyma.local");
        assert_eq!(parsed["preferences"], serde_json::json!({}));
        assert_eq!(parsed["clusters"][0]["name"], "kyma.local");
        assert_eq!(
            parsed["clusters"][0]["cluster"]["server"],
            "https://apiserver.kyma.local:9443"
        );
        let ca = parsed["clusters"][0]["cluster"]["certificate-authority-data"]
            .as_str()
            .unwrap();
        let ca = base64::engine::general_purpose::STANDARD
            .decode(ca)
            .unwrap();
        assert_eq!(Some(ca.as_slice()), settings().ca.current().as_deref());
        assert_eq!(parsed["contexts"][0]["context"]["cluster"], "kyma.local");
        assert_eq!(parsed["contexts"][0]["context"]["user"], "OIDCUser");
        assert!(parsed["contexts"][0]["context"].get("namespace").is_none());
        assert_eq!(parsed["users"][0]["name"], "OIDCUser");
        assert_eq!(
            parsed["users"][0]["user"]["token"],
            "header.payload.signature"
        );
        assert_eq!(parsed["clusters"].as_array().unwrap().len(), 1);
        assert_eq!(parsed["users"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn round_trips_through_kubes_own_parser() {
        let yaml = render(&settings(), &token(), Some("team-a")).unwrap();
        let parsed = Kubeconfig::from_yaml(&yaml).unwrap();
        let context = parsed.contexts[0].context.as_ref().unwrap();
        assert_eq!(context.namespace.as_deref(), Some("team-a"));
        assert_eq!(parsed.current_context.as_deref(), Some("kyma.local"));
    }

    #[test]
    fn namespace_falls_back_to_the_configured_default() {
        let with_default = KubeconfigSettings {
            default_namespace: Some("default-ns".into()),
            ..settings()
        };
        let yaml = render(&with_default, &token(), None).unwrap();
        assert!(yaml.contains("namespace: default-ns"));
        let yaml = render(&with_default, &token(), Some("chosen")).unwrap();
        assert!(yaml.contains("namespace: chosen") && !yaml.contains("default-ns"));
    }

    #[test]
    fn without_a_ca_kubectl_uses_system_roots() {
        let no_ca = KubeconfigSettings {
            ca: crate::ca::CaBundle::default(),
            ..settings()
        };
        let yaml = render(&no_ca, &token(), None).unwrap();
        assert!(!yaml.contains("certificate-authority"));
    }

    #[test]
    fn top_level_keys_come_in_kubectls_order() {
        let yaml = render(&settings(), &token(), Some("ns")).unwrap();
        let keys: Vec<&str> = yaml
            .lines()
            .filter(|line| !line.starts_with([' ', '-']))
            .filter_map(|line| line.split_once(':').map(|(key, _)| key))
            .collect();
        assert_eq!(
            keys,
            [
                "apiVersion",
                "clusters",
                "contexts",
                "current-context",
                "kind",
                "preferences",
                "users"
            ]
        );
    }

    /// The controller skips a write when the rendered bytes equal the Secret's, so the exact
    /// bytes matter: this is the whole file, as `kubectl config view --raw` would print it.
    #[test]
    fn the_rendered_bytes_are_exactly_kubectls_layout() {
        let ca = base64::engine::general_purpose::STANDARD.encode(settings().ca.current().unwrap());
        let expected = format!(
            "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: https://apiserver.kyma.local:9443
  name: kyma.local
contexts:
- context:
    cluster: kyma.local
    namespace: ns
    user: OIDCUser
  name: kyma.local
current-context: kyma.local
kind: Config
preferences: {{}}
users:
- name: OIDCUser
  user:
    token: header.payload.signature
"
        );
        assert_eq!(render(&settings(), &token(), Some("ns")).unwrap(), expected);
    }

    #[test]
    fn another_token_changes_only_the_token_line() {
        let first = render(&settings(), &token(), Some("ns")).unwrap();
        let other = IdToken::from("other.token.value".to_owned());
        let second = render(&settings(), &other, Some("ns")).unwrap();
        let changed: Vec<(&str, &str)> = first
            .lines()
            .zip(second.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            changed,
            [(
                "    token: header.payload.signature",
                "    token: other.token.value"
            )]
        );
        assert_eq!(first.lines().count(), second.lines().count());
    }
}
