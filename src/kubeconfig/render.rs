//! The kubeconfig file itself: one cluster, one context and one user, typed with kube's
//! `Kubeconfig` so that kubectl and kube's own parser read exactly what we meant, and written with
//! the keys in the order kubectl writes them.

use std::sync::{Arc, RwLock};

use base64::Engine as _;
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext, Preferences,
};

use crate::config::KubeconfigSettings;

use super::formats::token_user;

/// Renders the kubeconfig in the seed's shape with `user` as its one user entry, with keys in the
/// order kubectl writes them (sorted, so `apiVersion`, `clusters`, `contexts`, `current-context`,
/// `kind`, `preferences`, `users`; kube's type declares them in another order). The output
/// depends only on the inputs (no timestamps, no maps with random order), so re-rendering an
/// unchanged credential yields identical bytes and the controller can skip writes that would
/// change nothing.
pub(super) fn kubeconfig(
    settings: &KubeconfigSettings,
    user: AuthInfo,
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
            auth_info: Some(user),
            ..NamedAuthInfo::default()
        }],
        current_context: Some(name),
        ..Kubeconfig::default()
    };
    crate::yaml::to_string_sorted(&kubeconfig)
}

/// The token kubeconfig, as [`kubeconfig`] renders it for [`token_user`], without emitting the
/// whole document per call. Everything but the token and the namespace is the same for every
/// caller, and emitting it (the CA above all) was the largest cost of a download, more than
/// verifying the token's signature. So the document is rendered once, through the same typed path,
/// with placeholders for the two, and each call splices in its own, each emitted as YAML on its
/// own. A JWT-shaped token, which needs no quoting, is copied without the emitter; anything else
/// (or a value that would need several lines) takes the full typed path.
pub(super) fn token_kubeconfig(
    settings: &KubeconfigSettings,
    token: &str,
    namespace: Option<&str>,
) -> Result<String, crate::yaml::Error> {
    let namespace = namespace.or(settings.default_namespace.as_deref());
    let template = Template::for_settings(settings)?;
    let namespace_scalar = match namespace {
        Some(namespace) => inline_scalar(namespace),
        None => Some(String::new()),
    };
    let (Some(token_scalar), Some(namespace_scalar)) = (token_scalar(token), namespace_scalar)
    else {
        return kubeconfig(settings, token_user(token), namespace);
    };
    let parts = if namespace.is_some() {
        &template.with_namespace
    } else {
        &template.without_namespace
    };
    Ok(parts.splice(&namespace_scalar, &token_scalar))
}

/// Placeholders that no real token or namespace equals; each must occur exactly once in the
/// rendered template, or the template is not used.
const TOKEN_PLACEHOLDER: &str = "kubeconfig-operator-token-placeholder";
const NAMESPACE_PLACEHOLDER: &str = "kubeconfig-operator-namespace-placeholder";

/// The rendered document cut at the placeholders: text, namespace, text, token, text (without a
/// namespace, the middle text is empty and the namespace is not spliced).
#[derive(Debug)]
struct Parts {
    before_namespace: String,
    before_token: String,
    after_token: String,
}

impl Parts {
    fn cut(document: &str, namespace: bool) -> Option<Self> {
        let (before_token, after_token) = split_once_exactly(document, TOKEN_PLACEHOLDER)?;
        let (before_namespace, before_token) = if namespace {
            let (before, after) = split_once_exactly(before_token, NAMESPACE_PLACEHOLDER)?;
            (before.to_owned(), after.to_owned())
        } else {
            (before_token.to_owned(), String::new())
        };
        Some(Self {
            before_namespace,
            before_token,
            after_token: after_token.to_owned(),
        })
    }

    fn splice(&self, namespace: &str, token: &str) -> String {
        let mut out = String::with_capacity(
            self.before_namespace.len()
                + namespace.len()
                + self.before_token.len()
                + token.len()
                + self.after_token.len(),
        );
        for part in [
            self.before_namespace.as_str(),
            namespace,
            self.before_token.as_str(),
            token,
            self.after_token.as_str(),
        ] {
            out.push_str(part);
        }
        out
    }
}

fn split_once_exactly<'a>(text: &'a str, placeholder: &str) -> Option<(&'a str, &'a str)> {
    let (before, after) = text.split_once(placeholder)?;
    (!after.contains(placeholder)).then_some((before, after))
}

/// The two documents for one set of settings and one CA.
#[derive(Debug)]
struct Template {
    cluster_name: String,
    server: String,
    user_name: String,
    ca: Option<Arc<[u8]>>,
    with_namespace: Parts,
    without_namespace: Parts,
}

/// The template of the settings last rendered: one operator has one set, and a rotated CA or
/// other settings (in tests) simply replace it.
static TEMPLATE: RwLock<Option<Arc<Template>>> = RwLock::new(None);

impl Template {
    fn matches(&self, settings: &KubeconfigSettings, ca: &Option<Arc<[u8]>>) -> bool {
        self.cluster_name == settings.cluster_name
            && self.server == settings.server
            && self.user_name == settings.user_name
            && match (&self.ca, ca) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            }
    }

    fn for_settings(settings: &KubeconfigSettings) -> Result<Arc<Self>, crate::yaml::Error> {
        let ca = settings.ca.current();
        if let Ok(cached) = TEMPLATE.read()
            && let Some(template) = cached.as_ref()
            && template.matches(settings, &ca)
        {
            return Ok(Arc::clone(template));
        }
        let user = || token_user(TOKEN_PLACEHOLDER);
        let with = kubeconfig(settings, user(), Some(NAMESPACE_PLACEHOLDER))?;
        let without = kubeconfig(
            &KubeconfigSettings {
                default_namespace: None,
                ..settings.clone()
            },
            user(),
            None,
        )?;
        let (Some(with_namespace), Some(without_namespace)) =
            (Parts::cut(&with, true), Parts::cut(&without, false))
        else {
            // A cluster or user name that contains a placeholder: never in practice, and the
            // template is then simply not used.
            return Err(serde::ser::Error::custom(
                "a kubeconfig setting contains a template placeholder",
            ));
        };
        let template = Arc::new(Self {
            cluster_name: settings.cluster_name.clone(),
            server: settings.server.clone(),
            user_name: settings.user_name.clone(),
            ca,
            with_namespace,
            without_namespace,
        });
        if let Ok(mut cached) = TEMPLATE.write() {
            *cached = Some(Arc::clone(&template));
        }
        Ok(template)
    }
}

/// A compact JWT (base64url segments joined by two or more dots, starting with a letter or
/// digit) is a YAML plain scalar as it stands: it holds no indicator, space or quote, and with
/// its dots and letters it cannot read as a number, boolean, null or date. Anything else goes
/// through the emitter.
fn token_scalar(token: &str) -> Option<String> {
    let jwt_shaped = token.starts_with(|c: char| c.is_ascii_alphanumeric())
        && token.matches('.').count() >= 2
        && token.contains(|c: char| c.is_ascii_alphabetic())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if jwt_shaped {
        Some(token.to_owned())
    } else {
        inline_scalar(token)
    }
}

/// `text` as the YAML emitter writes it on its own, when that is one line (plain or quoted), so it
/// can stand as a mapping value; `None` for a value the emitter writes as a block.
fn inline_scalar(text: &str) -> Option<String> {
    let emitted = crate::yaml::to_string(&text).ok()?;
    let line = emitted.strip_suffix('\n')?;
    (!line.contains('\n')).then(|| line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kubeconfig::{
            Format,
            tests::{settings, token, yaml},
        },
        oidc::token::IdToken,
    };

    /// The token format, the one whose shape the seed defined.
    fn render(
        settings: &KubeconfigSettings,
        token: &IdToken,
        namespace: Option<&str>,
    ) -> Result<String, crate::kubeconfig::Error> {
        crate::kubeconfig::render(settings, Format::Token, token, namespace).map(yaml)
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

    /// The spliced document must be byte for byte what the typed path writes, for real tokens
    /// and for every hostile value a token Secret or a query could carry.
    #[test]
    fn the_template_path_writes_exactly_what_the_typed_path_writes() {
        let mut values: Vec<String> = [
            "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwcyJ9.c2lnbmF0dXJl",
            "header.payload.signature",
            "1.2.3",
            "1e3.5.6",
            "true",
            "null",
            "~",
            "123",
            "0x1F",
            "-",
            "---",
            "...",
            "- a",
            "a: b",
            "a #b",
            "'quoted'",
            "\"double\"",
            "tab\there",
            "new\nline",
            "trailing ",
            " leading",
            "ünï.cödé.ok",
            "",
            "*alias",
            "&anchor",
            "!tag",
            "%directive",
            "@at",
            "`tick",
            "|block",
            ">folded",
            "{flow}",
            "[seq]",
            "a.b.",
            ".a.b",
            "a..b",
            "yes",
            "off",
            "2001-12-14",
        ]
        .map(str::to_owned)
        .to_vec();
        // And pseudo-random strings over a hostile alphabet (xorshift, fixed seed).
        let alphabet: Vec<char> = "aZ09.-_:# '\"\\\n\t{}[],&*!|>%@`?~=é€".chars().collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..400 {
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let len = (next() % 24) as usize;
            values.push(
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect(),
            );
        }
        let settings = settings();
        for value in &values {
            for namespace in [None, Some("team-a"), Some(value.as_str())] {
                let fast = token_kubeconfig(&settings, value, namespace).unwrap();
                let typed = kubeconfig(&settings, token_user(value), namespace).unwrap();
                assert_eq!(fast, typed, "token {value:?}, namespace {namespace:?}");
            }
            let fast = token_kubeconfig(&settings, "a.b.c", Some(value)).unwrap();
            let typed = kubeconfig(&settings, token_user("a.b.c"), Some(value)).unwrap();
            assert_eq!(fast, typed, "namespace {value:?}");
        }
    }

    #[test]
    fn a_rotated_ca_reaches_the_next_rendering() {
        let settings = settings();
        let before = token_kubeconfig(&settings, "a.b.c", None).unwrap();
        settings
            .ca
            .replace(b"-----BEGIN CERTIFICATE-----\nAQ==\n-----END CERTIFICATE-----\n".to_vec())
            .unwrap();
        let after = token_kubeconfig(&settings, "a.b.c", None).unwrap();
        assert_ne!(before, after);
        assert_eq!(
            after,
            kubeconfig(&settings, token_user("a.b.c"), None).unwrap()
        );
    }
}
