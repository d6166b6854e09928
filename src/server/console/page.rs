//! The page's HTML, built with maud so every value is escaped. Plain forms and links work
//! without script; the one script file only adds copy buttons, which stay hidden without it.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::{DOWNLOAD_ROUTE, LOGIN_ROUTE, LOGOUT_ROUTE, SCRIPT_ROUTE, STYLE_ROUTE};

/// The frame every answer shares.
fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href=(STYLE_ROUTE);
                script src=(SCRIPT_ROUTE) defer {}
            }
            body {
                main { (body) }
            }
        }
    }
}

/// Before login, or after the session ended (`notice` says why).
pub(super) fn logged_out(cluster: &str, notice: Option<&str>) -> Markup {
    layout(
        &format!("kubeconfig for {cluster}"),
        html! {
            h1 { "kubeconfig for " (cluster) }
            @if let Some(notice) = notice {
                p role="status" { (notice) }
            }
            p { "Log in to download a kubeconfig that acts as you on this cluster." }
            p { a.button href=(LOGIN_ROUTE) { "Log in" } }
        },
    )
}

/// Who is logged in, as the page shows it.
pub(super) struct Viewer<'a> {
    pub name: Option<&'a str>,
    pub username: &'a str,
    pub groups: &'a [String],
    pub expires_at: DateTime<Utc>,
}

/// What the logged-in page offers.
pub(super) struct Offers<'a> {
    pub cluster: &'a str,
    pub file_name: &'a str,
    pub secret_command: &'a str,
    pub request_yaml: &'a str,
    pub csrf: &'a str,
    /// With a public client for exec (kubelogin) kubeconfigs: the kuberc lines that allow the
    /// program they run.
    pub exec_allowlist: Option<&'a str>,
}

pub(super) fn logged_in(viewer: &Viewer<'_>, offers: &Offers<'_>, now: DateTime<Utc>) -> Markup {
    let minutes_left = (viewer.expires_at - now).num_minutes().max(0);
    layout(
        &format!("kubeconfig for {}", offers.cluster),
        html! {
            h1 { "kubeconfig for " (offers.cluster) }
            section aria-labelledby="who" {
                h2 #who { "Signed in" }
                p #identity {
                    "You are "
                    strong #display-name { (viewer.name.unwrap_or(viewer.username)) }
                    @if viewer.name.is_some() { " (" span #username { (viewer.username) } ")" }
                    "."
                }
                @if !viewer.groups.is_empty() {
                    p { "Groups: " (viewer.groups.join(", ")) }
                }
                p {
                    "Your token expires at "
                    time #expires-at datetime=(viewer.expires_at.to_rfc3339()) {
                        (viewer.expires_at.format("%Y-%m-%d %H:%M:%S UTC"))
                    }
                    " (in about " (minutes_left) " minutes); so do the kubeconfigs below that hold it."
                }
            }
            section aria-labelledby="downloads" {
                h2 #downloads { "Download" }
                ul {
                    li {
                        a #download-token href=(DOWNLOAD_ROUTE) download=(offers.file_name) {
                            "Download " (offers.file_name) " (holds your token)"
                        }
                    }
                    @if offers.exec_allowlist.is_some() {
                        li {
                            a #download-exec href={ (DOWNLOAD_ROUTE) "?format=exec" } {
                                "Download a kubeconfig that logs in with kubelogin (holds no token)"
                            }
                        }
                    }
                }
                @if let Some(allowlist) = offers.exec_allowlist {
                    p {
                        "If your kubectl runs only the credential plugins it allows (kuberc "
                        code { "credentialPluginPolicy: Allowlist" }
                        "), the kubelogin kubeconfig needs these lines in "
                        code { "~/.kube/kuberc" } ":"
                    }
                    pre { code #kuberc-allowlist { (allowlist) } }
                }
            }
            section aria-labelledby="secret" {
                h2 #secret { "Issue it into a Secret" }
                p {
                    "With the downloaded " code { (offers.file_name) } ", put the token into a Secret "
                    "(it never appears on this page):"
                }
                pre { code #secret-command { (offers.secret_command) } }
                button type="button" data-copy="secret-command" hidden { "Copy the command" }
                p { "Then apply this KubeconfigRequest in the same namespace:" }
                pre { code #request-yaml { (offers.request_yaml) } }
                button type="button" data-copy="request-yaml" hidden { "Copy the YAML" }
                p #copy-status role="status" aria-live="polite" {}
            }
            form method="post" action=(LOGOUT_ROUTE) {
                input type="hidden" name="csrf" value=(offers.csrf);
                button #logout type="submit" { "Log out" }
            }
        },
    )
}

/// A refusal: what went wrong and the way back.
pub(super) fn problem(cluster: &str, message: &str) -> Markup {
    layout(
        &format!("kubeconfig for {cluster}"),
        html! {
            h1 { "kubeconfig for " (cluster) }
            p #problem role="alert" { (message) }
            p { a href="/" { "Start again" } }
        },
    )
}
