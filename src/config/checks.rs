//! The validators every section shares, and the error they all return.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use url::Url;

use crate::ca::CaBundle;

/// A configuration problem, naming the field so a person knows what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    /// Control characters (from paths or parser messages) become spaces, so the error stays on
    /// the one line that start-up prints.
    pub(crate) fn new(field: &str, problem: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            problem: problem
                .into()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        }
    }
}

/// A certificate chain and its key, for a listener that serves HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// RFC 1123 subdomain, the rule Kubernetes applies to most object names.
pub(super) fn address(field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::new(field, format!("{value:?} is not an address:port")))
}

pub(super) fn is_dns_subdomain(value: &str) -> bool {
    value.len() <= 253 && value.split('.').all(is_dns_label)
}

pub(super) fn non_empty_name(field: &str, value: String) -> Result<String, ConfigError> {
    if value.trim().is_empty() || value.chars().any(char::is_control) {
        return Err(ConfigError::new(
            field,
            "must be a non-empty name without control characters",
        ));
    }
    Ok(value)
}

/// Returns the parsed URL and the string as written.
pub(super) fn https_url(field: &str, value: Option<String>) -> Result<(Url, String), ConfigError> {
    let value = value.ok_or_else(|| ConfigError::new(field, "is required"))?;
    let url = Url::parse(&value)
        .map_err(|e| ConfigError::new(field, format!("{value:?} is not a URL: {e}")))?;
    if url.scheme() != "https" {
        return Err(ConfigError::new(field, format!("{value:?} must use https")));
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            field,
            format!("{value:?} must have a host and no query or fragment"),
        ));
    }
    Ok((url, value))
}

pub(super) fn ca_bundle(
    data: Option<String>,
    file: Option<PathBuf>,
) -> Result<CaBundle, ConfigError> {
    let (field, pem, file) = match (data, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "certificateAuthorityData",
                "set either certificateAuthorityData or certificateAuthorityFile, not both",
            ));
        }
        (Some(data), None) => (
            "certificateAuthorityData",
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| {
                    ConfigError::new("certificateAuthorityData", format!("is not base64: {e}"))
                })?,
            None,
        ),
        (None, Some(path)) => (
            "certificateAuthorityFile",
            std::fs::read(&path).map_err(|e| {
                ConfigError::new(
                    "certificateAuthorityFile",
                    format!("cannot read {path:?}: {e}"),
                )
            })?,
            Some(path),
        ),
        (None, None) => return Ok(CaBundle::default()),
    };
    crate::ca::parse_pem(&pem).map_err(|problem| ConfigError::new(field, problem))?;
    Ok(match file {
        Some(path) => CaBundle::from_file(path, pem),
        None => CaBundle::fixed(Some(pem)),
    })
}

/// The PEM certificates in `path`, checked as certificateAuthorityFile is.
pub(super) fn read_pem_file(field: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::new(field, format!("cannot read {path:?}: {e}")))?;
    crate::ca::parse_pem(&pem).map_err(|problem| ConfigError::new(field, problem))?;
    Ok(pem)
}

pub(super) fn readable_file(
    field: &str,
    path: Option<PathBuf>,
) -> Result<Option<PathBuf>, ConfigError> {
    match path {
        Some(path) if !path.is_file() => Err(ConfigError::new(
            field,
            format!("{path:?} is not a readable file"),
        )),
        other => Ok(other),
    }
}

/// Both files of a section's certificate (`http` or `proxy`), or neither.
pub(super) fn tls_files(
    section: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert_file), Some(key_file)) => Ok(Some(TlsFiles {
            cert_file,
            key_file,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::new(
            &format!("{section}.tlsKeyFile"),
            format!("is required with {section}.tlsCertFile"),
        )),
        (None, Some(_)) => Err(ConfigError::new(
            &format!("{section}.tlsCertFile"),
            format!("is required with {section}.tlsKeyFile"),
        )),
    }
}

pub(super) fn positive<T: PartialOrd + Default + std::fmt::Display>(
    field: &str,
    value: T,
) -> Result<T, ConfigError> {
    if value > T::default() {
        Ok(value)
    } else {
        Err(ConfigError::new(
            field,
            format!("must be greater than zero, got {value}"),
        ))
    }
}

pub(super) fn optional_dns_label(
    field: &str,
    value: Option<String>,
) -> Result<Option<String>, ConfigError> {
    match value {
        Some(value) if value.is_empty() => Ok(None),
        Some(value) if is_dns_label(&value) => Ok(Some(value)),
        Some(value) => Err(ConfigError::new(
            field,
            format!(
                "{value:?} is not a namespace name (a DNS label: lowercase letters, digits and '-', at most 63)"
            ),
        )),
        None => Ok(None),
    }
}

/// RFC 1123 label, the rule Kubernetes applies to namespace names.
pub fn is_dns_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}
