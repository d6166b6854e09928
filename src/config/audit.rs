//! The `audit` section: where the operator's audit events go (see `crate::audit`), a stream
//! apart from the logs so that it can be shipped and kept on its own.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::checks::ConfigError;

#[derive(Debug, Default, Clone, clap::Args, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditSection {
    /// File the audit events are appended to, one JSON object per line (issue, renewal, download, refusal, revocation); `-` for standard output, which the logs share [file: audit.path; default off].
    #[arg(
        id = "audit-path",
        long = "audit-path",
        env = "KUBECONFIG_OPERATOR_AUDIT_PATH"
    )]
    pub path: Option<PathBuf>,
}

/// Where audit events go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AuditSettings {
    #[default]
    Off,
    Stdout,
    File(PathBuf),
}

impl AuditSection {
    pub(super) fn resolve(self) -> Result<AuditSettings, ConfigError> {
        Ok(match self.path {
            None => AuditSettings::Off,
            Some(path) if path.as_os_str() == "-" => AuditSettings::Stdout,
            Some(path) if path.as_os_str().is_empty() => {
                return Err(ConfigError::new(
                    "audit.path",
                    "is empty; name a file, or - for standard output",
                ));
            }
            Some(path) => AuditSettings::File(path),
        })
    }
}
