//! The `oidc` section: how ID tokens are verified, either as kube-apiserver's `--oidc-*` flags
//! or from its `AuthenticationConfiguration` file.

use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};
use url::Url;

use super::checks::{ConfigError, https_url, readable_file};

#[derive(Debug, Default, Clone, clap::Args, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcSection {
    /// kube-apiserver's AuthenticationConfiguration file (its --authentication-config), instead of the oidc.issuerUrl/clientId/claim settings; reloaded when it changes [file: oidc.authenticationConfig].
    #[arg(long, env = "KUBECONFIG_OPERATOR_AUTHENTICATION_CONFIG")]
    pub authentication_config: Option<PathBuf>,
    /// OIDC issuer URL, exactly as in the tokens' `iss` claim [file: oidc.issuerUrl; default required].
    #[arg(
        id = "oidc-issuer-url",
        long = "oidc-issuer-url",
        env = "KUBECONFIG_OPERATOR_OIDC_ISSUER_URL"
    )]
    pub issuer_url: Option<String>,
    /// OIDC client ID that tokens must be issued for (their audience) [file: oidc.clientId; default required].
    #[arg(
        id = "oidc-client-id",
        long = "oidc-client-id",
        env = "KUBECONFIG_OPERATOR_OIDC_CLIENT_ID"
    )]
    pub client_id: Option<String>,
    /// Claim that holds the username [file: oidc.usernameClaim; default email].
    #[arg(
        id = "oidc-username-claim",
        long = "oidc-username-claim",
        env = "KUBECONFIG_OPERATOR_OIDC_USERNAME_CLAIM"
    )]
    pub username_claim: Option<String>,
    /// Prefix put before the username, as kube-apiserver's --oidc-username-prefix: unset or empty
    /// means `<issuer>#` for claims other than email, `-` means none [file: oidc.usernamePrefix].
    #[arg(
        id = "oidc-username-prefix",
        long = "oidc-username-prefix",
        env = "KUBECONFIG_OPERATOR_OIDC_USERNAME_PREFIX"
    )]
    pub username_prefix: Option<String>,
    /// Claim that holds the groups [file: oidc.groupsClaim; default groups].
    #[arg(
        id = "oidc-groups-claim",
        long = "oidc-groups-claim",
        env = "KUBECONFIG_OPERATOR_OIDC_GROUPS_CLAIM"
    )]
    pub groups_claim: Option<String>,
    /// Prefix put before each group [file: oidc.groupsPrefix].
    #[arg(
        id = "oidc-groups-prefix",
        long = "oidc-groups-prefix",
        env = "KUBECONFIG_OPERATOR_OIDC_GROUPS_PREFIX"
    )]
    pub groups_prefix: Option<String>,
    /// PEM file of the CA that signed the issuer's certificate [file: oidc.caFile].
    #[arg(
        id = "oidc-ca-file",
        long = "oidc-ca-file",
        env = "KUBECONFIG_OPERATOR_OIDC_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,
    /// Comma-separated signing algorithms accepted [file: oidc.signingAlgorithms; default RS256].
    #[arg(
        id = "oidc-signing-algorithms",
        long = "oidc-signing-algorithms",
        env = "KUBECONFIG_OPERATOR_OIDC_SIGNING_ALGORITHMS",
        value_delimiter = ','
    )]
    pub signing_algorithms: Option<Vec<String>>,
    /// Stricter than kube-apiserver: a token with several audiences needs `azp` equal to the client ID [file: oidc.requireAuthorizedParty; default false].
    #[arg(id = "oidc-require-authorized-party", long = "oidc-require-authorized-party", env = "KUBECONFIG_OPERATOR_OIDC_REQUIRE_AUTHORIZED_PARTY", num_args = 0..=1, default_missing_value = "true")]
    pub require_authorized_party: Option<bool>,
    /// Stricter than kube-apiserver: refuse tokens without a `kid` header instead of trying every key [file: oidc.requireKeyId; default false].
    #[arg(id = "oidc-require-key-id", long = "oidc-require-key-id", env = "KUBECONFIG_OPERATOR_OIDC_REQUIRE_KEY_ID", num_args = 0..=1, default_missing_value = "true")]
    pub require_key_id: Option<bool>,
    /// Stricter than kube-apiserver: refuse an empty username and control characters in the username or groups [file: oidc.strictNames; default false].
    #[arg(id = "oidc-strict-names", long = "oidc-strict-names", env = "KUBECONFIG_OPERATOR_OIDC_STRICT_NAMES", num_args = 0..=1, default_missing_value = "true")]
    pub strict_names: Option<bool>,
    /// Removed: kube-apiserver allows no leeway on exp, so only 0 is accepted, so that old files
    /// keep working and others learn why.
    #[arg(
        id = "oidc-leeway-seconds",
        long = "oidc-leeway-seconds",
        env = "KUBECONFIG_OPERATOR_OIDC_LEEWAY_SECONDS",
        hide = true
    )]
    pub leeway_seconds: Option<u64>,
}

/// Where the rules for ID tokens come from: kube-apiserver's two mutually exclusive forms.
#[derive(Debug, Clone)]
pub enum OidcSettings {
    /// The flat `oidc.*` settings, meaning what kube-apiserver's `--oidc-*` flags mean.
    Flags(Box<OidcConfig>),
    /// An `AuthenticationConfiguration` file, validated when the verifier loads it.
    AuthenticationConfig {
        path: PathBuf,
        strictness: Strictness,
    },
}

#[cfg(test)]
impl OidcSettings {
    pub(super) fn flags(&self) -> &OidcConfig {
        match self {
            OidcSettings::Flags(oidc) => oidc,
            OidcSettings::AuthenticationConfig { .. } => panic!("expected the oidc.* settings"),
        }
    }
}

/// How ID tokens are verified; mirrors kube-apiserver's `--oidc-*` flags so both agree on who a
/// token's holder is. Everything stricter than kube-apiserver is in [`Strictness`], off by default.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer_url: Url,
    /// The issuer exactly as configured: `iss` must equal it byte for byte (a trailing slash matters).
    pub issuer: String,
    pub client_id: String,
    pub username_claim: String,
    /// The prefix as kube-apiserver applies it, already resolved from the flag's rules (see
    /// [`username_prefix`]).
    pub username_prefix: String,
    pub groups_claim: Option<String>,
    pub groups_prefix: String,
    pub ca_file: Option<PathBuf>,
    pub algorithms: Vec<Algorithm>,
    pub strictness: Strictness,
}

/// Checks kube-apiserver does not make. Each refuses tokens the API server would accept, so a
/// user would be refused a kubeconfig that works; they are off unless an owner opts in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Strictness {
    /// With several audiences, `azp` must equal the client ID (OIDC Core 3.1.3.7 item 4, which
    /// kube-apiserver does not implement).
    pub require_authorized_party: bool,
    /// A token without `kid` is refused; kube-apiserver (go-oidc) tries every published key.
    pub require_key_id: bool,
    /// An empty username, or control characters in the username or a group, are refused;
    /// kube-apiserver accepts both.
    pub strict_names: bool,
}

#[cfg(any(test, feature = "testing"))]
impl OidcConfig {
    /// Dex-like settings for unit tests across the crate: client `kubeconfig-operator`, username
    /// from `email`, groups from `groups`, no prefixes, no stricter-than-apiserver checks.
    pub fn for_tests(issuer: &str, algorithms: &[Algorithm]) -> Self {
        Self {
            issuer_url: Url::parse(issuer).expect("test issuer is a URL"),
            issuer: issuer.to_owned(),
            client_id: "kubeconfig-operator".into(),
            username_claim: "email".into(),
            username_prefix: String::new(),
            groups_claim: Some("groups".into()),
            groups_prefix: String::new(),
            ca_file: None,
            algorithms: algorithms.to_vec(),
            strictness: Strictness::default(),
        }
    }
}

impl OidcSection {
    /// kube-apiserver's two mutually exclusive forms: the file, or the `--oidc-*` settings.
    pub(super) fn resolve(self) -> Result<OidcSettings, ConfigError> {
        let strictness = Strictness {
            require_authorized_party: self.require_authorized_party.unwrap_or(false),
            require_key_id: self.require_key_id.unwrap_or(false),
            strict_names: self.strict_names.unwrap_or(false),
        };
        let authentication_config = readable_file(
            "oidc.authenticationConfig",
            self.authentication_config.clone(),
        )?;
        match (authentication_config, &self.issuer_url) {
            (Some(_), Some(_)) => {
                // kube-apiserver: "authentication-config file and oidc-* flags are mutually exclusive".
                Err(ConfigError::new(
                    "oidc.authenticationConfig",
                    "and oidc.issuerUrl are mutually exclusive, as kube-apiserver's --authentication-config and --oidc-* flags are",
                ))
            }
            (Some(path), None) => Ok(OidcSettings::AuthenticationConfig { path, strictness }),
            (None, _) => Ok(OidcSettings::Flags(Box::new(self.flags(strictness)?))),
        }
    }

    /// The flat `oidc.*` settings, with kube-apiserver's `--oidc-*` defaults and rules.
    fn flags(self, strictness: Strictness) -> Result<OidcConfig, ConfigError> {
        let issuer = self.issuer_url.ok_or_else(|| {
            ConfigError::new(
                "oidc.issuerUrl",
                "is required (or oidc.authenticationConfig)",
            )
        })?;
        let (issuer_url, issuer) = https_url("oidc.issuerUrl", Some(issuer))?;
        let client_id = self
            .client_id
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(|| ConfigError::new("oidc.clientId", "is required"))?;
        let username_claim = self.username_claim.unwrap_or_else(|| "email".into());
        if username_claim.is_empty() {
            return Err(ConfigError::new("oidc.usernameClaim", "must not be empty"));
        }
        let groups_claim = self.groups_claim.unwrap_or_else(|| "groups".into());
        if let Some(seconds) = self.leeway_seconds.filter(|seconds| *seconds != 0) {
            return Err(ConfigError::new(
                "oidc.leewaySeconds",
                format!(
                    "{seconds} is no longer accepted: kube-apiserver allows no leeway on exp, so a leeway would issue kubeconfigs it refuses; remove the setting"
                ),
            ));
        }
        let username_prefix = username_prefix(self.username_prefix, &username_claim, &issuer);
        Ok(OidcConfig {
            issuer_url,
            issuer,
            client_id,
            username_claim,
            username_prefix,
            groups_claim: Some(groups_claim).filter(|claim| !claim.is_empty()),
            groups_prefix: self.groups_prefix.unwrap_or_default(),
            ca_file: readable_file("oidc.caFile", self.ca_file)?,
            algorithms: signing_algorithms(
                self.signing_algorithms
                    .unwrap_or_else(|| vec!["RS256".into()]),
            )?,
            strictness,
        })
    }
}

/// kube-apiserver's `--oidc-username-prefix` rules: unset (or empty, which a flag cannot tell
/// apart) prefixes every claim but `email` with `<issuer>#` so that, say, `sub` values of two
/// issuers cannot collide; `-` means no prefix at all.
fn username_prefix(configured: Option<String>, claim: &str, issuer: &str) -> String {
    match configured.as_deref() {
        Some("-") => String::new(),
        None | Some("") if claim != "email" => format!("{issuer}#"),
        _ => configured.unwrap_or_default(),
    }
}

/// The algorithms kube-apiserver accepts for `--oidc-signing-algs` (RS, ES and PS), minus ES512,
/// which jsonwebtoken cannot verify. Anything else would let the operator issue kubeconfigs the
/// API server refuses (EdDSA) or accept forgeries (HMAC with the public key, `none`).
fn signing_algorithms(names: Vec<String>) -> Result<Vec<Algorithm>, ConfigError> {
    const FIELD: &str = "oidc.signingAlgorithms";
    if names.is_empty() {
        return Err(ConfigError::new(FIELD, "must name at least one algorithm"));
    }
    names
        .iter()
        .map(|name| match name.trim() {
            "RS256" => Ok(Algorithm::RS256),
            "RS384" => Ok(Algorithm::RS384),
            "RS512" => Ok(Algorithm::RS512),
            "PS256" => Ok(Algorithm::PS256),
            "PS384" => Ok(Algorithm::PS384),
            "PS512" => Ok(Algorithm::PS512),
            "ES256" => Ok(Algorithm::ES256),
            "ES384" => Ok(Algorithm::ES384),
            "ES512" => Err(ConfigError::new(
                FIELD,
                "\"ES512\" is accepted by kube-apiserver but not supported by this operator",
            )),
            other => Err(ConfigError::new(
                FIELD,
                format!(
                    "{other:?} is not allowed; use RS256, RS384, RS512, PS256, PS384, PS512, ES256 or ES384 (as kube-apiserver's --oidc-signing-algs)"
                ),
            )),
        })
        .collect()
}
