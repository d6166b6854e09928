//! The operator's own audit trail: one JSON line for each credential it hands out, renews or
//! refuses, on a stream apart from the logs (`audit.path`), so that it can be shipped and kept
//! under other rules than diagnostics. Each line names the credential id under which the API
//! server's audit log records what the credential then did (README "Audit trail").
//!
//! An event holds identities, names and ids, never a token: its fields have no room for one.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    net::IpAddr,
    sync::Mutex,
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use tracing::warn;

use crate::{config::AuditSettings, oidc::token::Identity};

/// The name of the header that returns an event's id to an HTTP client, as kube-apiserver names
/// its own.
pub const AUDIT_ID_HEADER: &str = "audit-id";

/// What happened to a credential. The names in the stream are the variants'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr)]
#[serde(rename_all = "camelCase")]
#[strum(serialize_all = "camelCase")]
pub enum Action {
    /// A KubeconfigRequest's Secret got a credential it did not hold before.
    Issue,
    /// A KubeconfigRequest's credential was replaced by a fresh one.
    Renewal,
    /// A kubeconfig left over HTTP (`GET /kube-config` or the page).
    Download,
    /// A credential was asked for and not handed out.
    Refusal,
    /// A credential the operator had handed out was taken back (its Secret deleted).
    Revocation,
}

/// Whether the credential was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr)]
#[serde(rename_all = "camelCase")]
#[strum(serialize_all = "camelCase")]
pub enum Outcome {
    Success,
    Failure,
}

/// An event's id: a random UUID, the form kube-apiserver gives its `Audit-ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditId(String);

impl AuditId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().hyphenated().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for AuditId {
    fn default() -> Self {
        Self::new()
    }
}

impl Serialize for AuditId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Who asked: the identity the credential carries (for a download, the token's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Who {
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    pub groups: Vec<String>,
}

impl From<&Identity> for Who {
    fn from(identity: &Identity) -> Self {
        Self {
            username: identity.username.clone(),
            uid: identity.uid.clone(),
            groups: identity.groups.clone(),
        }
    }
}

/// What was asked for: the request (for the controller), and the kubeconfig's format and
/// namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct What {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub format: &'static str,
}

/// One line of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(rename = "auditID")]
    pub audit_id: AuditId,
    #[serde(serialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
    pub action: Action,
    pub outcome: Outcome,
    /// For a refusal or revocation, the reason its condition or response names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Absent when the refusal came before anyone was identified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Who>,
    pub object: What,
    /// `JTI=<jti>`, the API server's `authentication.kubernetes.io/credential-id`; absent for a
    /// token without `jti`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// The HTTP client's address; absent for the controller's events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_address: Option<IpAddr>,
}

impl Event {
    pub fn new(action: Action, outcome: Outcome, object: What) -> Self {
        Self {
            audit_id: AuditId::new(),
            time: Utc::now(),
            action,
            outcome,
            reason: None,
            user: None,
            object,
            credential_id: None,
            source_address: None,
        }
    }
}

fn rfc3339<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// Where events go: nowhere, standard output, or a file appended to.
#[derive(Debug, Default)]
pub struct AuditLog {
    sink: Option<Mutex<Sink>>,
}

#[derive(Debug)]
enum Sink {
    Stdout,
    File(File),
}

impl AuditLog {
    /// Opens the stream the settings name; a file is created if missing and appended to.
    pub fn open(settings: &AuditSettings) -> io::Result<Self> {
        let sink = match settings {
            AuditSettings::Off => None,
            AuditSettings::Stdout => Some(Sink::Stdout),
            AuditSettings::File(path) => Some(Sink::File(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
        };
        Ok(Self {
            sink: sink.map(Mutex::new),
        })
    }

    /// Writes `event` as one line. A write that fails is logged, never fatal: the credential
    /// was already handed out or refused.
    pub fn record(&self, event: &Event) {
        let Some(sink) = &self.sink else { return };
        let mut line = match serde_json::to_vec(event) {
            Ok(line) => line,
            Err(problem) => {
                warn!(%problem, "cannot serialise an audit event");
                return;
            }
        };
        line.push(b'\n');
        let written = match sink.lock().as_deref_mut() {
            Ok(Sink::Stdout) => io::stdout().lock().write_all(&line),
            Ok(Sink::File(file)) => file.write_all(&line),
            Err(_) => return,
        };
        if let Err(problem) = written {
            warn!(%problem, audit_id = event.audit_id.as_str(), "cannot write an audit event");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_audit_id_is_a_version_4_uuid() {
        let id = AuditId::new();
        let parts: Vec<&str> = id.as_str().split('-').collect();
        assert_eq!(
            parts.iter().map(|part| part.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{id:?}");
        assert!(
            id.as_str()
                .chars()
                .all(|c| c == '-' || c.is_ascii_hexdigit())
        );
        assert_ne!(AuditId::new(), id);
    }

    #[test]
    fn a_download_event_has_who_what_the_credential_id_the_source_and_the_outcome() {
        let mut event = Event::new(
            Action::Download,
            Outcome::Success,
            What {
                request: None,
                namespace: Some("team-a".into()),
                format: "token",
            },
        );
        event.user = Some(Who {
            username: "alice@example.com".into(),
            uid: String::new(),
            groups: vec!["team-a".into()],
        });
        event.credential_id = Some("JTI=abc".into());
        event.source_address = Some("192.0.2.1".parse().unwrap());
        let line = serde_json::to_value(&event).unwrap();
        assert_eq!(line["auditID"], event.audit_id.as_str());
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
        let mut rest = line.clone();
        for key in ["auditID", "time"] {
            rest.as_object_mut().unwrap().remove(key);
        }
        assert_eq!(
            rest,
            json!({
                "action": "download",
                "outcome": "success",
                "user": {"username": "alice@example.com", "groups": ["team-a"]},
                "object": {"namespace": "team-a", "format": "token"},
                "credentialId": "JTI=abc",
                "sourceAddress": "192.0.2.1",
            })
        );
    }

    #[test]
    fn the_streams_names_are_the_variants() {
        for (action, name) in [
            (Action::Issue, "issue"),
            (Action::Renewal, "renewal"),
            (Action::Download, "download"),
            (Action::Refusal, "refusal"),
            (Action::Revocation, "revocation"),
        ] {
            assert_eq!(serde_json::to_value(action).unwrap(), name);
            assert_eq!(<&str>::from(action), name);
        }
        assert_eq!(serde_json::to_value(Outcome::Failure).unwrap(), "failure");
    }

    #[test]
    fn events_are_appended_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&AuditSettings::File(path.clone())).unwrap();
        let what = What {
            request: Some("deployer".into()),
            namespace: Some("team-a".into()),
            format: "token",
        };
        let mut refusal = Event::new(Action::Refusal, Outcome::Failure, what.clone());
        refusal.reason = Some("TokenExpired");
        log.record(&Event::new(Action::Issue, Outcome::Success, what));
        log.record(&refusal);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["action"], "issue");
        assert_eq!(lines[1]["reason"], "TokenExpired");
        assert_eq!(lines[1]["object"]["request"], "deployer");
        AuditLog::default().record(&refusal);
    }
}
