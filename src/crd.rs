//! The `KubeconfigRequest` custom resource: what a user asks for and what the controller reports.
//! Field docs become the CRD's descriptions, so they are written for `kubectl explain`; the
//! schema's patterns and CEL rules make the API server refuse a bad object at apply time, with a
//! message, instead of the controller finding out later.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::authentication::v1::UserInfo,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A DNS subdomain (RFC 1123), the rule for Secret and ServiceAccount names.
const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// The suffix of the default Secret name; request names are capped so the result stays a valid name.
pub const SECRET_NAME_SUFFIX: &str = "-kubeconfig";
/// The annotation by which a user has a ServiceAccount request's token renewed now, as
/// `cmctl renew` does for a certificate. Its value is a timestamp; each distinct value renews
/// once, and `status.lastRenewRequest` records the one handled.
pub const RENEW_ANNOTATION: &str = "kubeconfig.dev/renew";

/// Asks for a kubeconfig. Its credential comes either from an OIDC ID token that the user puts into a Secret (tokenSecretRef) or from a ServiceAccount token that the controller mints and renews (serviceAccount). The controller writes the kubeconfig into a Secret in the same namespace and keeps it valid.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubeconfig.dev",
    version = "v1alpha1",
    kind = "KubeconfigRequest",
    namespaced,
    status = "KubeconfigRequestStatus",
    shortname = "kcr",
    category = "all",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".status.username"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Renewal","type":"string","jsonPath":".status.renewalTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".status.credentialId",
    validation = Rule::new("self.metadata.name.size() <= 242").message("metadata.name must be at most 242 characters, so that the default Secret name <name>-kubeconfig is a valid name")
)]
#[x_kube(
    validation = Rule::new("has(self.tokenSecretRef) != has(self.serviceAccount)").message("exactly one of spec.tokenSecretRef (an ID token in a Secret) and spec.serviceAccount (a minted ServiceAccount token) must be set"),
    validation = Rule::new("!(has(self.renewBefore) && has(self.renewBeforePercentage))").message("set at most one of spec.renewBefore and spec.renewBeforePercentage"),
    validation = Rule::new("!has(self.format) || self.format != 'exec' || has(self.tokenSecretRef)").message("spec.format exec needs spec.tokenSecretRef: kubelogin logs a person in, a ServiceAccount has no login; use token or argocd"),
    validation = Rule::new("!has(self.format) || self.format != 'argocd' || !has(self.secretKeys) || self.secretKeys == ['kubeconfig']").message("spec.secretKeys applies to kubeconfig formats; an argocd Secret always has the keys name, server and config"),
    validation = Rule::new("has(self.creator) == has(oldSelf.creator) && (!has(self.creator) || self.creator == oldSelf.creator)").message("spec.creator records who created the request and cannot change; create a new request instead")
)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigRequestSpec {
    /// The Secret in this request's namespace that holds the user's OIDC ID token. Secrets in other namespaces cannot be named, so a request never reaches beyond its own namespace. You may only name a Secret you may read yourself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<TokenSecretRef>,

    /// A ServiceAccount in this request's namespace whose tokens the controller mints with the TokenRequest API, bound to the kubeconfig Secret, and renews before they expire. The ServiceAccount must carry the annotation kubeconfig.dev/issuable="true", and you may only name one you could create tokens for yourself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountSource>,

    /// The username the token must carry (after the configured prefix). When set, a token for anyone else is refused with reason UserMismatch instead of being turned into a kubeconfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub user: Option<String>,

    /// Namespace set in the kubeconfig's context; kubectl uses it when no -n is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,

    /// Who created this request, as the API server authenticated them. The admission policy records it at creation (it overwrites whatever a client sends) and it never changes. Before each ServiceAccount token it mints, the controller asks the API server whether this user may still do what admission checked (create tokens for the ServiceAccount, and create Secrets when secretName is set), and stops renewing when not. Where MutatingAdmissionPolicy is off, set it yourself to your own username and a subset of your groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<UserInfo>,

    /// Name of the Secret that receives the kubeconfig (under the keys of secretKeys, or the Argo CD keys of format argocd). The default is the request's name followed by "-kubeconfig". Naming another Secret needs the right to create Secrets in this namespace, which the admission policy checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub secret_name: Option<String>,

    /// What the Secret holds: "token" (default), a kubeconfig with the credential as a bearer token; "exec", a kubeconfig without any credential whose user runs kubelogin (kubectl oidc-login) to log in and refresh, so each person who uses it logs in as themselves (needs tokenSecretRef and the operator's exec.clientId); "argocd", an Argo CD cluster Secret (label argocd.argoproj.io/secret-type=cluster, keys name, server and config) instead of a kubeconfig; "tokenFile", the keys token and ca.crt beside a kubeconfig whose user reads its token from the file token next to the kubeconfig (tokenFile: token): mount the whole Secret as a directory (not with subPath) and point KUBECONFIG at its kubeconfig key, and a long-running client (client-go re-reads the file every minute) follows each renewal without a restart.
    #[serde(default, skip_serializing_if = "is_default")]
    // schemars leaves out a default that serializing skips; the API server still fills it in.
    #[schemars(extend("default" = Format::default()))]
    pub format: Format,

    /// The data keys that each receive the kubeconfig: "kubeconfig" (the default), and "value", the key Cluster API and Flux read. Not for format argocd.
    #[serde(
        default = "default_secret_keys",
        skip_serializing_if = "are_default_secret_keys"
    )]
    #[schemars(schema_with = "secret_keys_schema")]
    pub secret_keys: Vec<SecretKey>,

    /// Labels and annotations added to the written Secret, e.g. for a GitOps tool or a sync controller. Labels and annotations the controller sets itself take precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,

    /// How long before the token expires the controller renews it, as a duration such as "20m" or "1h30m". A ServiceAccount request mints a new token then; an ID-token request reports the condition Expiring. The default is a third of the token's lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,9}(h|m|s))+$"))]
    pub renew_before: Option<String>,

    /// Renew when this percentage of the token's lifetime is left, instead of renewBefore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: Option<u8>,
}

/// What an issued credential is written as. The CRD's schema lists these names; the kubeconfig
/// ones are also what `GET /kube-config?format=` and the page accept. Its renderer and the
/// read-back of its token live in `kubeconfig/`.
#[derive(
    Deserialize,
    Serialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    JsonSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Format {
    // No doc comments on the variants: schemars would turn them into a `oneOf`, which
    // `kubectl explain` shows less plainly than an enum. The CRD field documents each one.
    #[default]
    Token,
    Exec,
    ArgoCd,
    #[serde(rename = "tokenFile")]
    #[strum(serialize = "tokenFile")]
    TokenFile,
}

impl Format {
    /// The name used in the CRD and in `?format=`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether a person may download it (`GET /kube-config`, the page): a kubeconfig file. An
    /// Argo CD cluster Secret is only for Argo CD, which reads it from the cluster.
    pub fn downloadable(self) -> bool {
        !matches!(self, Format::ArgoCd | Format::TokenFile)
    }
}

/// A data key of the written Secret that holds the kubeconfig.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum SecretKey {
    /// The key kubectl users and most tools are pointed at.
    Kubeconfig,
    /// The key Cluster API writes and Flux's `kubeConfig.secretRef` reads by default.
    Value,
}

impl SecretKey {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

const DEFAULT_SECRET_KEYS: [SecretKey; 1] = [SecretKey::Kubeconfig];

pub(crate) fn default_secret_keys() -> Vec<SecretKey> {
    DEFAULT_SECRET_KEYS.to_vec()
}

fn are_default_secret_keys(keys: &[SecretKey]) -> bool {
    keys == DEFAULT_SECRET_KEYS
}

/// A spec leaves out what its defaults give back: the controller's store holds every request
/// serialized (`controller/stored.rs`), and the API server fills them in on every read anyway.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// A set (the API server refuses duplicates) of one or both keys.
fn secret_keys_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "string", "enum": ["kubeconfig", "value"] },
        "minItems": 1,
        "maxItems": 2,
        "x-kubernetes-list-type": "set",
        "default": ["kubeconfig"],
    })
}

/// Where the ID token is: a key in a Secret of the request's own namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct TokenSecretRef {
    /// Name of the Secret in the request's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,

    /// Key in the Secret's data that holds the ID token.
    #[serde(
        default = "default_token_key",
        skip_serializing_if = "is_default_token_key"
    )]
    #[schemars(extend("default" = DEFAULT_TOKEN_KEY))]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

const DEFAULT_TOKEN_KEY: &str = "token";

fn default_token_key() -> String {
    DEFAULT_TOKEN_KEY.to_owned()
}

fn is_default_token_key(key: &str) -> bool {
    key == DEFAULT_TOKEN_KEY
}

/// The ServiceAccount whose tokens the kubeconfig carries.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountSource {
    /// Name of the ServiceAccount in the request's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,

    /// Requested lifetime of each minted token, in seconds. The operator's maxExpirationSeconds may grant less; status.grantedExpirationSeconds says what was granted.
    #[serde(default = "default_expiration_seconds")]
    #[schemars(range(min = 600, max = 4_294_967_296i64))]
    pub expiration_seconds: i64,

    /// Audiences of the minted token. Empty means the API server's own audience, which is what kubectl needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub audiences: Vec<String>,
}

fn default_expiration_seconds() -> i64 {
    3600
}

/// Metadata copied onto the written Secret.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretTemplate {
    /// Labels added to the Secret; keys and values must be valid Kubernetes labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "label_map_schema")]
    pub labels: BTreeMap<String, String>,

    /// Annotations added to the Secret; keys must be valid annotation keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "annotation_map_schema")]
    pub annotations: BTreeMap<String, String>,
}

/// A qualified name as labels and annotations use for keys: an optional DNS-subdomain prefix of
/// at most 253 characters (the `/` at most at index 253) and a name part of at most 63. The
/// whole key's bound (253 + 1 + 63) keeps the rule's cost estimate finite.
const QUALIFIED_NAME_RULE: &str = "self.all(k, k.size() <= 317 && k.indexOf('/') <= 253 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))";

fn label_map_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": { "type": "string", "maxLength": 63 },
        "x-kubernetes-validations": [
            { "rule": QUALIFIED_NAME_RULE, "message": "label keys must be valid Kubernetes label keys, such as example.com/team" },
            { "rule": "self.all(k, self[k].matches('^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$'))", "message": "label values must be at most 63 characters of letters, digits, '-', '_' and '.', beginning and ending with a letter or digit" },
        ],
    })
}

fn annotation_map_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": { "type": "string", "maxLength": 4096 },
        "x-kubernetes-validations": [
            { "rule": QUALIFIED_NAME_RULE, "message": "annotation keys must be valid Kubernetes annotation keys, such as example.com/owner" },
        ],
    })
}

/// What the controller found. `kubectl wait --for=condition=Ready kcr/NAME` watches `conditions`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigRequestStatus {
    /// Ready is True with reason Issued once the Secret holds a working kubeconfig; otherwise False with a reason and a message saying what to change. Expiring is True once an ID token is past its renewal time: put a fresh token into the token Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The username the credential carries, as the API server will see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,

    /// The groups the credential carries, as the API server will see them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,

    /// Who the API server says the credential's holder is (its SelfSubjectReview answer: username, uid, groups, extra): the identity the kubeconfig really has. Absent when the operator is configured not to ask (confirmWithApiServer: false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<UserInfo>,

    /// The Secret that holds the kubeconfig and its live credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// The id under which the API server's audit log records every request the kubeconfig's token makes: its authentication.kubernetes.io/credential-id extra, JTI=<the token's jti>. Absent when the token has no jti (the audit log cannot tell its requests apart) and for exec kubeconfigs, which hold no token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,

    /// When the credential last went through the operator's API server proxy (RFC 3339). The proxy writes it at most once a minute, so it may be up to a minute old. Absent until the first use, for a credential without credentialId, and without the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,

    /// When the credential, and so the kubeconfig, stops working (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,

    /// When the controller renews the credential, or reports Expiring for an ID token (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,

    /// The lifetime granted to the last minted ServiceAccount token, after the operator's cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_expiration_seconds: Option<i64>,

    /// The value of the annotation kubeconfig.dev/renew that the controller last renewed the ServiceAccount token for. Setting the annotation to a new timestamp renews the token once, now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renew_request: Option<String>,

    /// The ID token the Secret holds, as a KubeconfigRevocation names it (spec.credential). Deleting the request revokes it on every replica of the operator, so that the API server proxy refuses it until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A time as the status's fields hold it (RFC 3339, whole seconds, `Z`), whoever writes it.
pub fn status_time(time: chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The condition `kubectl wait --for=condition=Ready` waits for.
pub const READY: &str = "Ready";

impl KubeconfigRequest {
    /// The request's condition of `type_`, if the controller has reported one.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|condition| condition.type_ == type_)
    }

    /// The request's Ready condition, if the controller has reported one.
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.condition(READY)
    }
}

/// Refuses ID tokens of a user or of a group's members, issued before notBefore: "sign out everywhere"; or one credential, which the operator itself revokes when a KubeconfigRequest holding an ID token is deleted, or its holder logs out of the download page. Every replica of the operator refuses them for downloads, the download page, KubeconfigRequests and the API server proxy, with the message below in the 401. A token issued after notBefore works again. The API server itself does not read this object: where users reach the API server directly, add the matching userValidationRules deny-list to its AuthenticationConfiguration (README "Revocation").
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubeconfig.dev",
    version = "v1alpha1",
    kind = "KubeconfigRevocation",
    shortname = "kcrev",
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.user"}"#,
    printcolumn = r#"{"name":"Group","type":"string","jsonPath":".spec.group"}"#,
    printcolumn = r#"{"name":"Credential","type":"string","jsonPath":".spec.credential","priority":1}"#,
    printcolumn = r#"{"name":"Not-Before","type":"date","jsonPath":".spec.notBefore"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".spec.expiresAt"}"#
)]
#[x_kube(
    validation = Rule::new("(has(self.user) ? 1 : 0) + (has(self.group) ? 1 : 0) + (has(self.credential) ? 1 : 0) == 1").message("set exactly one of spec.user, spec.group and spec.credential"),
    validation = Rule::new("!has(self.expiresAt) || self.expiresAt > self.notBefore").message("spec.expiresAt must be after spec.notBefore")
)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigRevocationSpec {
    /// The username whose tokens are refused, exactly as the API server sees it (with the configured prefix), e.g. alice@example.com.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub user: Option<String>,
    /// A group (with the configured prefix) whose members' tokens are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub group: Option<String>,
    /// One token: JTI=<jti> for a token with a jti claim (the authentication.kubernetes.io/credential-id the API server writes in its audit log), else SHA256=<the token's SHA-256 in hex>. A KubeconfigRequest's status.credential names its token this way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 5, max = 512),
        regex(pattern = r"^(JTI=.+|SHA256=[0-9a-f]{64})$")
    )]
    pub credential: Option<String>,
    /// Tokens issued (iat) before this time are refused; so are tokens without iat, whose issue time is unknown. Set it to now to sign the user out everywhere: the tokens they get afterwards work.
    pub not_before: Time,
    /// When the revocation ends; the operator then deletes it. Set it to notBefore plus the issuer's longest token lifetime (Dex: expiry.idTokens, 24h by default): by then every token it refuses has expired anyway. Unset: it stays until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Shown to the token's holder in the refusal, e.g. who to ask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub message: Option<String>,
}

/// A CRD as it is installed. Descriptions keep paragraph breaks but no line breaks inside a
/// paragraph, so `kubectl explain` can wrap them to the terminal instead of breaking mid-sentence.
pub fn definition<K: CustomResourceExt>() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(K::crd()).expect("a CRD is JSON");
    flow_descriptions(&mut crd);
    serde_json::from_value(crd).expect("the CRD stays a CRD")
}

fn flow_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| {
                                paragraph.split_whitespace().collect::<Vec<_>>().join(" ")
                            })
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => flow_descriptions(child),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(flow_descriptions),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use strum::VariantArray as _;

    use super::*;

    /// Every variant's name, as `?format=` parses it and as the status and metrics show it, is
    /// the one the CRD's schema lists and serde reads, so the three cannot drift apart.
    #[test]
    fn format_names_are_the_schemas() {
        let crd = serde_json::to_value(definition::<KubeconfigRequest>()).unwrap();
        let listed = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["format"]["enum"];
        let names: Vec<&str> = Format::VARIANTS.iter().map(|f| f.as_str()).collect();
        assert_eq!(listed, &serde_json::json!(names));
        for &format in Format::VARIANTS {
            assert_eq!(serde_json::to_value(format).unwrap(), format.as_str());
            assert_eq!(format.as_str().parse::<Format>(), Ok(format));
        }
        assert!("ArgoCD".parse::<Format>().is_err());
        assert_eq!(Format::ArgoCd.as_str(), "argocd");
    }

    #[test]
    fn token_key_defaults_to_token() {
        let spec: KubeconfigRequestSpec =
            serde_json::from_str(r#"{"tokenSecretRef":{"name":"alice-token"}}"#).unwrap();
        assert_eq!(spec.token_secret_ref.as_ref().unwrap().key, "token");
        assert_eq!(spec.secret_name, None);
        // Serialized, the defaults are left out (the store keeps specs serialized), and the
        // schema still has the API server fill them in.
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            serde_json::json!({"tokenSecretRef": {"name": "alice-token"}})
        );
        let schema = serde_json::to_value(definition::<KubeconfigRequest>()).unwrap();
        let spec_schema = &schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"];
        assert_eq!(spec_schema["format"]["default"], "token");
        assert_eq!(
            spec_schema["tokenSecretRef"]["properties"]["key"]["default"],
            "token"
        );
    }

    #[test]
    fn service_account_lifetime_defaults_to_an_hour() {
        let spec: KubeconfigRequestSpec =
            serde_json::from_str(r#"{"serviceAccount":{"name":"deployer"}}"#).unwrap();
        let source = spec.service_account.unwrap();
        assert_eq!(
            (source.name.as_str(), source.expiration_seconds),
            ("deployer", 3600)
        );
        assert!(source.audiences.is_empty());
    }

    #[test]
    fn crd_has_short_name_status_and_printer_columns() {
        let crd = definition::<KubeconfigRequest>();
        assert_eq!(crd.spec.group, "kubeconfig.dev");
        assert_eq!(crd.spec.names.short_names, Some(vec!["kcr".to_owned()]));
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|column| column.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Ready", "Reason", "User", "Secret", "Expires", "Renewal", "Age"
            ]
        );
    }

    #[test]
    fn descriptions_flow_without_line_breaks_inside_a_paragraph() {
        let mut value = serde_json::json!({
            "description": "one\ntwo  three\n\nnext paragraph",
            "properties": { "a": { "description": "x\ny" } },
        });
        flow_descriptions(&mut value);
        assert_eq!(value["description"], "one two three\n\nnext paragraph");
        assert_eq!(value["properties"]["a"]["description"], "x y");
        fn collect<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match value {
                serde_json::Value::Object(map) => {
                    for (key, child) in map {
                        match child {
                            serde_json::Value::String(text) if key == "description" => {
                                out.push(text)
                            }
                            _ => collect(child, out),
                        }
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|item| collect(item, out)),
                _ => {}
            }
        }
        let crd = serde_json::to_value(definition::<KubeconfigRequest>()).unwrap();
        let mut descriptions = Vec::new();
        collect(&crd, &mut descriptions);
        assert!(descriptions.len() > 10, "{descriptions:?}");
        for description in descriptions {
            assert!(
                !description.replace("\n\n", "").contains('\n'),
                "{description:?}"
            );
        }
    }
}
