//! kube-apiserver's `AuthenticationConfiguration` (`--authentication-config`), read and validated
//! as kube-apiserver 1.37 does (`k8s.io/apiserver/pkg/apis/apiserver/validation`, v0.37.2), and the legacy
//! `--oidc-*` settings turned into the same form, as kube-apiserver itself does since 1.30. Both
//! end up as a list of [`JwtAuthenticator`]s, so there is one way a token is judged.
//!
//! Validation errors read like kube-apiserver's (`jwt[0].issuer.url: Invalid value: "http://x":
//! URL scheme must be https`), so an owner can compare the two directly.

mod schema;
mod validation;

use std::path::Path;

use jsonwebtoken::Algorithm;
use sha2::{Digest, Sha256};

use super::cel::Expression;
use crate::config::{OidcConfig, Strictness};

/// kube-apiserver's limit on `jwt` entries.
pub const MAX_ISSUERS: usize = 64;

/// What an API server with an authentication configuration accepts (`AllValidSigningAlgorithms`)
/// that jsonwebtoken verifies; ES512, which it cannot, is [`JwtAuthenticator::verifies_es512`].
pub const CONFIG_FILE_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// One issuer's rules, ready to judge tokens.
#[derive(Debug, Clone)]
pub struct JwtAuthenticator {
    /// `iss` must equal it byte for byte; tokens are routed to this authenticator by it.
    pub issuer: String,
    pub discovery_url: Option<String>,
    pub certificate_authority: CertificateAuthority,
    /// Any one of them in `aud` suffices (`audienceMatchPolicy: MatchAny`).
    pub audiences: Vec<String>,
    /// `claimValidationRules` with `claim` and `requiredValue`.
    pub required_claims: Vec<(String, String)>,
    pub claim_rules: Vec<Rule>,
    pub username: Mapping,
    pub groups: Option<Mapping>,
    pub uid: Option<Mapping>,
    pub extra: Vec<(String, Expression)>,
    pub user_rules: Vec<Rule>,
    pub algorithms: Vec<Algorithm>,
    /// ES512 too (verified with aws-lc-rs, not jsonwebtoken): with a configuration file, as
    /// kube-apiserver accepts every algorithm go-oidc v2.5.0 supports there.
    pub verifies_es512: bool,
    pub strictness: Strictness,
}

/// Where the issuer's TLS roots come from.
#[derive(Debug, Clone, PartialEq)]
pub enum CertificateAuthority {
    SystemRoots,
    /// `certificateAuthority` of the configuration file.
    Pem(Vec<u8>),
    /// The legacy `oidc.caFile`.
    File(std::path::PathBuf),
}

/// A claim with a prefix, or a CEL expression.
#[derive(Debug, Clone)]
pub enum Mapping {
    Claim { claim: String, prefix: String },
    Expression(Expression),
}

/// A CEL validation rule and the message its failure carries.
#[derive(Debug, Clone)]
pub struct Rule {
    pub expression: Expression,
    pub message: String,
}

impl JwtAuthenticator {
    /// The legacy settings as kube-apiserver converts its `--oidc-*` flags: username and groups
    /// from claims with their prefixes, no uid, no extra, no rules.
    pub fn from_legacy(config: &OidcConfig) -> Self {
        Self {
            issuer: config.issuer.clone(),
            discovery_url: None,
            certificate_authority: match &config.ca_file {
                Some(path) => CertificateAuthority::File(path.clone()),
                None => CertificateAuthority::SystemRoots,
            },
            audiences: vec![config.client_id.clone()],
            required_claims: Vec::new(),
            claim_rules: Vec::new(),
            username: Mapping::Claim {
                claim: config.username_claim.clone(),
                prefix: config.username_prefix.clone(),
            },
            groups: config.groups_claim.as_ref().map(|claim| Mapping::Claim {
                claim: claim.clone(),
                prefix: config.groups_prefix.clone(),
            }),
            uid: None,
            extra: Vec::new(),
            user_rules: Vec::new(),
            algorithms: config.algorithms.clone(),
            verifies_es512: false,
            strictness: config.strictness,
        }
    }
}

/// A loaded configuration file: its authenticators and the digest kube-apiserver logs for it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub authenticators: Vec<JwtAuthenticator>,
    /// `sha256:<hex>` of the file's bytes, as kube-apiserver reports it.
    pub digest: String,
}

/// `sha256:<hex>`, the form of kube-apiserver's `apiserver_id_hash` and config hashes.
pub fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

/// Reads, decodes and validates the file; the error is one line naming the field.
pub fn load(path: &Path, strictness: Strictness) -> Result<Loaded, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&data, strictness)
}

/// [`load`] for bytes already read.
pub fn parse(data: &[u8], strictness: Strictness) -> Result<Loaded, String> {
    let text = std::str::from_utf8(data).map_err(|_| "the file is not UTF-8".to_owned())?;
    let file: schema::File = crate::yaml::from_str(text).map_err(|e| one_line(&e.to_string()))?;
    match (file.api_version.as_str(), file.kind.as_str()) {
        (
            "apiserver.config.k8s.io/v1" | "apiserver.config.k8s.io/v1beta1",
            "AuthenticationConfiguration",
        ) => {}
        (version, kind) => {
            return Err(format!(
                "apiVersion/kind: {version:?}/{kind:?} is not an AuthenticationConfiguration of apiserver.config.k8s.io/v1 or v1beta1"
            ));
        }
    }
    let authenticators = validation::validate(&file, strictness).map_err(|errors| {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        match text.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        }
    })?;
    Ok(Loaded {
        authenticators,
        digest: digest(data),
    })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
