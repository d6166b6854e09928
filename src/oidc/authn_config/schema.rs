//! The file's schema: v1 and v1beta1 share it. Unknown fields are refused, as kube-apiserver's
//! strict decoding refuses them.

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct File {
    pub(super) api_version: String,
    pub(super) kind: String,
    #[serde(default)]
    pub(super) jwt: Vec<FileJwt>,
    pub(super) anonymous: Option<FileAnonymous>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAnonymous {
    #[serde(default)]
    pub(super) enabled: bool,
    #[serde(default)]
    pub(super) conditions: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct FileJwt {
    pub(super) issuer: FileIssuer,
    #[serde(default)]
    pub(super) claim_validation_rules: Vec<FileClaimRule>,
    #[serde(default)]
    pub(super) claim_mappings: FileClaimMappings,
    #[serde(default)]
    pub(super) user_validation_rules: Vec<FileUserRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct FileIssuer {
    #[serde(default)]
    pub(super) url: String,
    #[serde(rename = "discoveryURL")]
    pub(super) discovery_url: Option<String>,
    #[serde(default)]
    pub(super) certificate_authority: String,
    #[serde(default)]
    pub(super) audiences: Vec<String>,
    #[serde(default)]
    pub(super) audience_match_policy: String,
    /// Beta since Kubernetes 1.34 (v1 and v1beta1): validated, then not used; see validation.
    pub(super) egress_selector_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct FileClaimRule {
    #[serde(default)]
    pub(super) claim: String,
    #[serde(default)]
    pub(super) required_value: String,
    #[serde(default)]
    pub(super) expression: String,
    #[serde(default)]
    pub(super) message: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct FileClaimMappings {
    #[serde(default)]
    pub(super) username: FilePrefixed,
    #[serde(default)]
    pub(super) groups: FilePrefixed,
    #[serde(default)]
    pub(super) uid: FileClaimOrExpression,
    #[serde(default)]
    pub(super) extra: Vec<FileExtra>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePrefixed {
    #[serde(default)]
    pub(super) claim: String,
    pub(super) prefix: Option<String>,
    #[serde(default)]
    pub(super) expression: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileClaimOrExpression {
    #[serde(default)]
    pub(super) claim: String,
    #[serde(default)]
    pub(super) expression: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct FileExtra {
    #[serde(default)]
    pub(super) key: String,
    #[serde(default)]
    pub(super) value_expression: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUserRule {
    #[serde(default)]
    pub(super) expression: String,
    #[serde(default)]
    pub(super) message: String,
}
