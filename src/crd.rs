//! The `KubeconfigRequest` custom resource: what a user asks for and what the controller reports.
//! Field docs become the CRD's descriptions, so they are written for `kubectl explain`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Asks for a kubeconfig made from an OIDC ID token. The controller validates the token against
/// the configured issuer and writes the kubeconfig into a Secret in the same namespace.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kubeconfig.dev",
    version = "v1alpha1",
    kind = "KubeconfigRequest",
    namespaced,
    status = "KubeconfigRequestStatus",
    shortname = "kcr",
    category = "all",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".status.username"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigRequestSpec {
    /// The Secret in this request's namespace that holds the user's ID token. Secrets in other
    /// namespaces cannot be named, so a request never reaches beyond its own namespace.
    pub token_secret_ref: TokenSecretRef,

    /// The username the token must carry (after the configured prefix). When set, a token for
    /// anyone else is refused with reason UserMismatch instead of being turned into a kubeconfig.
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

    /// Name of the Secret that receives the kubeconfig (key "kubeconfig"). By default it is
    /// derived from the username: "kubeconfig-" followed by a DNS-safe form of the name and a
    /// short hash, so it is stable across re-issues and distinct per user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: Option<String>,

    /// Labels and annotations added to the written Secret, e.g. for a GitOps tool or a sync
    /// controller. Labels and annotations the controller sets itself take precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,
}

/// Where the ID token is: a key in a Secret of the request's own namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct TokenSecretRef {
    /// Name of the Secret in the request's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key in the Secret's data that holds the ID token.
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".to_owned()
}

/// Metadata copied onto the written Secret.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretTemplate {
    /// Labels added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Annotations added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What the controller found. `kubectl wait --for=condition=Ready kcr/NAME` watches `conditions`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigRequestStatus {
    /// The Ready condition: True with reason Issued once the Secret holds a working kubeconfig;
    /// otherwise False with a reason (TokenSecretNotFound, TokenKeyMissing, TokenInvalid,
    /// TokenExpired, UserMismatch, SecretConflict, IssuerUnavailable) and a message saying what
    /// to change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The username the token carries, as the API server will see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,

    /// The groups the token carries, as the API server will see them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,

    /// The Secret that holds the kubeconfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// When the token, and so the kubeconfig, stops working (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl KubeconfigRequest {
    /// The request's Ready condition, if the controller has reported one.
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|condition| condition.type_ == "Ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn token_key_defaults_to_token() {
        let spec: KubeconfigRequestSpec =
            serde_json::from_str(r#"{"tokenSecretRef":{"name":"alice-token"}}"#).unwrap();
        assert_eq!(spec.token_secret_ref.key, "token");
        assert_eq!(spec.secret_name, None);
    }

    #[test]
    fn crd_has_short_name_status_and_printer_columns() {
        let crd = KubeconfigRequest::crd();
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
        assert_eq!(columns, ["Ready", "User", "Secret", "Expires", "Age"]);
    }
}
