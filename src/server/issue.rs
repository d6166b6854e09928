//! The one way a kubeconfig leaves the operator over HTTP, for `GET /kube-config` and for the
//! page's download alike: the API server's confirmation, the rendering, the identity headers,
//! the audit event and the response. Each caller only says how a refusal looks to its client
//! (plain text with a challenge, or a page), and returns the event's id with it.

use std::net::IpAddr;

use axum::{
    http::{HeaderMap, HeaderName, HeaderValue, header},
    response::{IntoResponse, Response},
};
use k8s_openapi::api::authentication::v1::UserInfo;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tracing::{error, info};

use crate::{
    audit::{AUDIT_ID_HEADER, Action, AuditId, AuditLog, Event, Outcome, What, Who},
    config::KubeconfigSettings,
    confirm::{self, ConfirmError, Confirmer, REJECTED_BY_API_SERVER},
    crd::Format,
    kubeconfig::{self, Rendered},
    oidc::token::{IdToken, Identity},
};

const USER_HEADER: &str = "x-kubeconfig-user";
const UID_HEADER: &str = "x-kubeconfig-uid";
const GROUPS_HEADER: &str = "x-kubeconfig-groups";
const EXTRA_HEADER: &str = "x-kubeconfig-extra";
/// The identity headers, as CORS lists them for pages to read.
pub(super) const IDENTITY_HEADERS: &str =
    "x-kubeconfig-user, x-kubeconfig-uid, x-kubeconfig-groups, x-kubeconfig-extra";

/// What a header value cannot hold (controls; non-ASCII is always escaped) and the separators.
const IDENTITY_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b',').add(b'=');

/// Why no kubeconfig was handed out; the caller decides how its client is told.
#[derive(Debug, strum::IntoStaticStr)]
pub(super) enum NotIssued {
    /// The API server refused the token, or could not be asked.
    Unconfirmed(ConfirmError),
    /// A format that is not a file a person downloads.
    NotDownloadable,
    /// The owner has not enabled the exec format.
    ExecNotConfigured(kubeconfig::Error),
    /// Rendering settings the operator owns failed: the operator's fault, logged here.
    Render,
}

impl NotIssued {
    /// The audit event's reason: the API server's verdict, else the variant's name.
    fn reason(&self) -> &'static str {
        match self {
            NotIssued::Unconfirmed(ConfirmError::Refused) => REJECTED_BY_API_SERVER,
            NotIssued::Unconfirmed(ConfirmError::Unavailable(_)) => "APIServerUnavailable",
            other => other.into(),
        }
    }

    /// Whether the client was refused, rather than the operator or the API server failing.
    fn refused(&self) -> bool {
        matches!(
            self,
            NotIssued::Unconfirmed(ConfirmError::Refused)
                | NotIssued::NotDownloadable
                | NotIssued::ExecNotConfigured(_)
        )
    }
}

/// What is being asked for, by whom, from where, and where it was asked (for the log).
pub(super) struct Ask<'a> {
    pub token: &'a IdToken,
    pub identity: &'a Identity,
    pub format: Format,
    pub namespace: Option<&'a str>,
    pub via: &'static str,
    /// The client's address, for the audit event.
    pub source: Option<IpAddr>,
}

/// [`issue`], with its audit event recorded in `audit`; the caller puts the event's id into its
/// response, issued or refused, with [`audit_header`].
pub(super) async fn issue_audited(
    confirmer: Option<&Confirmer>,
    settings: &KubeconfigSettings,
    audit: &AuditLog,
    ask: Ask<'_>,
) -> (AuditId, Result<Response, NotIssued>) {
    let who = Who::from(ask.identity);
    let what = What {
        request: None,
        namespace: ask.namespace.map(str::to_owned),
        format: ask.format.as_str(),
    };
    let source = ask.source;
    let issued = issue(confirmer, settings, ask).await;
    let mut event = match &issued {
        Ok(issued) => {
            let mut event = Event::new(Action::Download, Outcome::Success, what);
            event.credential_id = issued.credential_id.clone();
            event
        }
        Err(not_issued) => {
            let action = match not_issued.refused() {
                true => Action::Refusal,
                false => Action::Download,
            };
            let mut event = Event::new(action, Outcome::Failure, what);
            event.reason = Some(not_issued.reason());
            event
        }
    };
    event.user = Some(who);
    event.source_address = source;
    audit.record(&event);
    (event.audit_id, issued.map(|issued| issued.response))
}

/// The `Audit-ID` header naming the audit event of a response.
pub(super) fn audit_header(id: &AuditId) -> [(HeaderName, HeaderValue); 1] {
    [(
        HeaderName::from_static(AUDIT_ID_HEADER),
        // A UUID's characters are always a valid header value.
        HeaderValue::from_str(id.as_str()).unwrap_or(HeaderValue::from_static("")),
    )]
}

/// A kubeconfig handed out, and the credential id it holds.
struct Issued {
    response: Response,
    credential_id: Option<String>,
}

/// Confirms the token (when a confirmer is configured), renders `format` and answers with the
/// file as a download that no browser or proxy may keep, with the API server's identity for the
/// token in the identity headers.
async fn issue(
    confirmer: Option<&Confirmer>,
    settings: &KubeconfigSettings,
    ask: Ask<'_>,
) -> Result<Issued, NotIssued> {
    if !ask.format.downloadable() {
        return Err(NotIssued::NotDownloadable);
    }
    let confirmed = match confirmer {
        None => None,
        Some(confirmer) => Some(
            confirmer
                .confirm(ask.token, ask.identity.expires_at)
                .await
                .map_err(NotIssued::Unconfirmed)?,
        ),
    };
    let yaml = match kubeconfig::render(settings, ask.format, ask.token, ask.namespace) {
        Ok(Rendered::Kubeconfig(yaml)) => yaml,
        Ok(Rendered::ArgoCdCluster(_)) => return Err(NotIssued::NotDownloadable),
        Err(problem @ kubeconfig::Error::ExecNotConfigured) => {
            return Err(NotIssued::ExecNotConfigured(problem));
        }
        Err(problem) => {
            // The error comes from serialising settings we own; it cannot contain the token's
            // value, but the user name identifies whom it failed for.
            error!(%problem, user = %ask.identity.username, "cannot render a kubeconfig");
            return Err(NotIssued::Render);
        }
    };
    info!(
        user = %ask.identity.username,
        expires_at = %ask.identity.expires_at,
        format = ask.format.as_str(),
        via = ask.via,
        "kubeconfig issued"
    );
    let credential_id =
        confirm::credential_id(ask.format, confirmed.as_ref(), ask.identity).map(str::to_owned);
    let response = (
        confirmed.as_ref().map(identity_headers).unwrap_or_default(),
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/yaml"),
            ),
            // The body is a credential: no browser or proxy may keep a copy.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_DISPOSITION,
                attachment(&settings.cluster_name),
            ),
        ],
        yaml,
    )
        .into_response();
    Ok(Issued {
        response,
        credential_id,
    })
}

/// The identity the API server gave the token, as response headers that a page or script can
/// show before it saves the file: `X-Kubeconfig-User`, `X-Kubeconfig-Uid`, `X-Kubeconfig-Groups`
/// (comma-separated) and `X-Kubeconfig-Extra` (comma-separated `key=value`, one per value). Every
/// name and value is percent-encoded (UTF-8) where it has a byte a header cannot carry or one of
/// the separators `%`, `,` and `=`.
fn identity_headers(user: &UserInfo) -> HeaderMap {
    let encode = |text: &str| utf8_percent_encode(text, IDENTITY_ESCAPES).to_string();
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        // Every byte outside visible ASCII is escaped, so the value is always a valid header.
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    if let Some(username) = &user.username {
        put(USER_HEADER, encode(username));
    }
    if let Some(uid) = &user.uid {
        put(UID_HEADER, encode(uid));
    }
    let groups = user.groups.iter().flatten();
    put(
        GROUPS_HEADER,
        groups
            .map(|group| encode(group))
            .collect::<Vec<_>>()
            .join(","),
    );
    let extra = user.extra.iter().flatten().flat_map(|(key, values)| {
        values
            .iter()
            .map(move |value| format!("{}={}", encode(key), encode(value)))
    });
    put(EXTRA_HEADER, extra.collect::<Vec<_>>().join(","));
    headers
}

/// `attachment; filename="<cluster>.kubeconfig"`.
fn attachment(cluster_name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        file_name(cluster_name)
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment; filename=\"kubeconfig\""))
}

/// `<cluster>.kubeconfig`, with the name reduced to characters that need no quoting in any
/// browser or shell.
pub(super) fn file_name(cluster_name: &str) -> String {
    let safe: String = cluster_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{safe}.kubeconfig")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names_are_safe() {
        assert_eq!(
            attachment("local cluster"),
            "attachment; filename=\"local-cluster.kubeconfig\""
        );
        assert_eq!(
            attachment("a\"b;c\r\n"),
            "attachment; filename=\"a-b-c--.kubeconfig\""
        );
    }

    #[test]
    fn cors_exposes_every_identity_header() {
        assert_eq!(
            IDENTITY_HEADERS,
            [USER_HEADER, UID_HEADER, GROUPS_HEADER, EXTRA_HEADER].join(", ")
        );
    }
}
