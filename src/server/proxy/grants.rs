//! Whether the proxy's ServiceAccount may impersonate every part of the identities it forwards.
//! RBAC grants each extra field's key by name, so a key that the authentication configuration
//! maps and nobody granted makes the API server refuse every request through the proxy from a
//! user whose identity carries it. Its refusal names neither the key nor the remedy (1.37:
//! `cannot impersonate-on:user-info:get path "/api"`, which kubectl shows as `Forbidden:
//! unknown`), so the proxy asks the API server itself, with a SelfSubjectAccessReview per grant
//! as the proxy, and says what is missing: in an error log line and a metric for the cluster's
//! administrators, and in place of the API server's refusal for the users it affects.
//!
//! It asks at start, after each reload of the authentication configuration (which may map new
//! keys), every [`RECHECK_INTERVAL`], and soon after answering a user it thought lacking a
//! grant: a user served shows the grant was made since, and so may a refusal (by the user's
//! own RBAC). Only a refusal of the impersonation itself is rewritten.
//!
//! A grant found missing is also a `Warning` Event about the replica ([`Replica`]), once per
//! time it goes missing: an administrator looks at `kubectl get events` before the logs.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, RwLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    body::Body,
    http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header, uri::PathAndQuery},
};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use prometheus_client::metrics::{family::Family, gauge::Gauge};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::upstream::{Credential, Upstream};
use crate::{
    events::Replica,
    metrics::GrantLabels,
    oidc::{token::Identity, verify::Verifier},
};

/// How often the grants are asked about with nothing else prompting it: RBAC can change at any
/// time, and four reviews a minute cost the API server about 2 ms.
const RECHECK_INTERVAL: Duration = Duration::from_secs(60);
/// The least time between two rounds of reviews, however often answers prompt one.
const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// How long one review may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// A review's answer is a few hundred bytes; more is not an answer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const REVIEWS_PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
/// What kube-apiserver's refusal of an impersonation says, and a refusal of the user's own
/// request cannot: the proxy refuses requests that ask for an impersonation of their own.
const IMPERSONATION_REFUSED: &[u8] = b"cannot impersonate";

/// One impersonation RBAC grants separately, named as a ClusterRole's rule names its resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub(super) enum Grant {
    Users,
    Groups,
    Uids,
    /// One extra field's key.
    #[strum(serialize = "userextras")]
    Extra(String),
}

impl Grant {
    fn group(&self) -> &'static str {
        match self {
            Self::Users | Self::Groups => "",
            Self::Uids | Self::Extra(_) => "authentication.k8s.io",
        }
    }

    /// The resource as a ClusterRole's rule writes it: `userextras/<key>` for an extra field.
    fn resource(&self) -> String {
        let resource: &'static str = self.into();
        match self {
            Self::Extra(key) => format!("{resource}/{key}"),
            _ => resource.to_owned(),
        }
    }

    fn review(&self) -> SelfSubjectAccessReview {
        let resource: &'static str = self.into();
        let subresource = match self {
            Self::Extra(key) => Some(key.clone()),
            _ => None,
        };
        SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(self.group().to_owned()),
                    resource: Some(resource.to_owned()),
                    subresource,
                    verb: Some("impersonate".to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        }
    }

    fn labels(&self) -> GrantLabels {
        GrantLabels {
            resource: self.resource(),
        }
    }
}

/// What forwarding `identity` takes, in the order the headers are set.
fn needed(identity: &Identity) -> impl Iterator<Item = Grant> + '_ {
    [Grant::Users, Grant::Groups]
        .into_iter()
        .chain((!identity.uid.is_empty()).then_some(Grant::Uids))
        .chain(identity.extra.keys().cloned().map(Grant::Extra))
}

/// The Event's reason, for `kubectl get events --field-selector reason=...`.
pub const DENIED_REASON: &str = "ProxyImpersonationDenied";

/// What is missing and who must grant it, as the user's refusal and the Event say it.
fn missing(lacking: &[Grant]) -> String {
    let resources: Vec<String> = lacking.iter().map(Grant::resource).collect();
    format!(
        "its ServiceAccount may not impersonate {}; a cluster administrator must grant it the verb impersonate on {} (the operator's README, \"What the proxy's ServiceAccount is granted\")",
        resources.join(", "),
        if lacking.len() == 1 { "it" } else { "each" },
    )
}

/// The proxy's 403 for a user refused for want of the grants `lacking`.
fn refusal(lacking: &[Grant]) -> Response<Body> {
    let message = format!(
        "the API server refused to let the kubeconfig-operator proxy act as you: {}",
        missing(lacking)
    );
    super::refusal(StatusCode::FORBIDDEN, &message)
}

/// The Event's note: what users it affects, and the remedy.
fn denied_note(newly: &[Grant]) -> String {
    format!(
        "the API server refuses every request through the proxy whose user's identity needs what the proxy lacks: {}",
        missing(newly)
    )
}

/// What the last round of reviews asked about, and which of it the API server said the proxy
/// lacks.
#[derive(Default)]
struct State {
    wanted: BTreeSet<Grant>,
    denied: BTreeSet<Grant>,
}

pub(super) struct Grants {
    state: RwLock<State>,
    /// Whether `denied` has any, read by every request, so a proxy that lacks nothing takes no
    /// lock.
    any_denied: AtomicBool,
    /// Asks for a round of reviews sooner than [`RECHECK_INTERVAL`].
    recheck: Notify,
    series: Family<GrantLabels, Gauge>,
    /// Where a grant found missing is recorded as an Event; `None` outside a cluster.
    replica: Option<Replica>,
}

impl Grants {
    pub(super) fn new(series: Family<GrantLabels, Gauge>, replica: Option<Replica>) -> Arc<Self> {
        Arc::new(Self {
            state: RwLock::default(),
            any_denied: AtomicBool::new(false),
            recheck: Notify::new(),
            series,
            replica,
        })
    }

    /// The grants forwarding `identity` takes that the proxy is known to lack; none, without a
    /// lock, when it lacks nothing.
    pub(super) fn lacking(&self, identity: &Identity) -> Vec<Grant> {
        if !self.any_denied.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        needed(identity)
            .filter(|grant| state.denied.contains(grant))
            .collect()
    }

    /// The API server's answer to a request whose user needs the grants `lacking`: its refusal
    /// of the impersonation becomes one naming them. Any answer prompts another look soon, as
    /// it may show that a grant was made since the last.
    pub(super) async fn explain(
        &self,
        lacking: &[Grant],
        answer: Response<Body>,
    ) -> Response<Body> {
        if lacking.is_empty() {
            return answer;
        }
        self.recheck.notify_one();
        if answer.status() != StatusCode::FORBIDDEN {
            return answer;
        }
        // Only a refusal of the impersonation itself, which says the proxy `cannot
        // impersonate` (the older check: `... resource "userextras/<key>"`; 1.37's constrained
        // one: `impersonate-on:user-info:<verb>`), is for want of the grant: once it was made,
        // a refusal by the user's own RBAC passes unchanged, also before the next look.
        let (head, body) = answer.into_parts();
        let Ok(body) = axum::body::to_bytes(body, MAX_ANSWER_BYTES).await else {
            return refusal(lacking);
        };
        if body
            .windows(IMPERSONATION_REFUSED.len())
            .any(|window| window == IMPERSONATION_REFUSED)
        {
            return refusal(lacking);
        }
        Response::from_parts(head, Body::from(body))
    }

    /// Asks the API server about every grant the configuration in force needs, now and from
    /// then on (see the module's documentation), until the proxy is gone.
    pub(super) fn keep_checked(
        self: &Arc<Self>,
        upstream: &Upstream,
        credential: Arc<Credential>,
        verifier: Arc<Verifier>,
    ) -> Result<(), String> {
        let reviews = Reviews {
            client: upstream.pooled().clone(),
            uri: upstream.uri(Some(&PathAndQuery::from_static(REVIEWS_PATH)))?,
            credential,
        };
        let grants = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut reloads = verifier.reloads();
            while let Some(this) = Weak::upgrade(&grants) {
                let wanted: BTreeSet<Grant> = [Grant::Users, Grant::Groups, Grant::Uids]
                    .into_iter()
                    .chain(verifier.extra_keys().into_iter().map(Grant::Extra))
                    .collect();
                let answers =
                    futures::future::join_all(wanted.iter().map(|grant| reviews.allowed(grant)))
                        .await;
                let newly = this.record(wanted, answers);
                if let (false, Some(replica)) = (newly.is_empty(), &this.replica) {
                    replica
                        .warn(DENIED_REASON, "Impersonate", denied_note(&newly))
                        .await;
                }
                drop(this);
                tokio::time::sleep(MIN_INTERVAL).await;
                let Some(this) = Weak::upgrade(&grants) else {
                    break;
                };
                tokio::select! {
                    () = tokio::time::sleep(RECHECK_INTERVAL - MIN_INTERVAL) => {}
                    () = this.recheck.notified() => {}
                    changed = reloads.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Takes in one round's answers, in `wanted`'s order, and returns the grants found missing
    /// that were not already. A grant no longer wanted (a reload unmapped its key) is forgotten,
    /// series and all; an unanswered review leaves what was known.
    fn record(&self, wanted: BTreeSet<Grant>, answers: Vec<Result<bool, String>>) -> Vec<Grant> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut unanswered = Vec::new();
        let mut newly = Vec::new();
        for (grant, answer) in wanted.iter().zip(answers) {
            let resource = grant.resource();
            let group = grant.group();
            match answer {
                Ok(true) => {
                    if state.denied.remove(grant) {
                        info!(
                            resource,
                            group, "the proxy's ServiceAccount may now impersonate it"
                        );
                    }
                    self.series.get_or_create(&grant.labels()).set(0);
                }
                Ok(false) => {
                    if state.denied.insert(grant.clone()) {
                        newly.push(grant.clone());
                        error!(
                            resource,
                            group,
                            "the proxy's ServiceAccount may not impersonate it, so the API server refuses every request through the proxy whose user needs it; grant the verb impersonate on it (README, \"What the proxy's ServiceAccount is granted\")"
                        );
                    }
                    self.series.get_or_create(&grant.labels()).set(1);
                }
                Err(problem) => unanswered.push((resource, problem)),
            }
        }
        if let Some((_, problem)) = unanswered.first() {
            let resources: Vec<&str> = unanswered.iter().map(|(r, _)| r.as_str()).collect();
            warn!(
                ?resources,
                problem,
                "cannot ask the API server whether the proxy may impersonate these; keeping what was known"
            );
        }
        for gone in state.wanted.difference(&wanted) {
            self.series.remove(&gone.labels());
        }
        state.denied.retain(|grant| wanted.contains(grant));
        self.any_denied
            .store(!state.denied.is_empty(), Ordering::Relaxed);
        state.wanted = wanted;
        newly
    }
}

/// SelfSubjectAccessReviews as the proxy, over its pooled connections.
struct Reviews {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    uri: Uri,
    credential: Arc<Credential>,
}

impl Reviews {
    async fn allowed(&self, grant: &Grant) -> Result<bool, String> {
        let body = serde_json::to_vec(&grant.review()).map_err(|e| e.to_string())?;
        let json = HeaderValue::from_static("application/json");
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::AUTHORIZATION, self.credential.current().await)
            .header(header::CONTENT_TYPE, json.clone())
            .header(header::ACCEPT, json)
            .body(Body::from(body))
            .map_err(|e| e.to_string())?;
        let ask = async {
            let answer = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = answer.status();
            let body = axum::body::to_bytes(Body::new(answer.into_body()), MAX_ANSWER_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("the API server answered {status}"));
            }
            let review: SelfSubjectAccessReview =
                serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            Ok(review.status.is_some_and(|status| status.allowed))
        };
        tokio::time::timeout(REVIEW_TIMEOUT, ask)
            .await
            .map_err(|_| "the review timed out".to_owned())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(uid: &str, extra: &[&str]) -> Identity {
        Identity {
            username: "alice".into(),
            groups: Vec::new(),
            uid: uid.into(),
            extra: extra
                .iter()
                .map(|key| ((*key).to_owned(), vec!["v".to_owned()]))
                .collect(),
            expires_at: chrono::Utc::now(),
            issued_at: None,
        }
    }

    fn render(grants: &Grants) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("denied", "", grants.series.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn each_grant_is_reviewed_as_rbac_names_it() {
        let attributes = |grant: Grant| {
            let attributes = grant.review().spec.resource_attributes.unwrap();
            (
                attributes.group.unwrap(),
                attributes.resource.unwrap(),
                attributes.subresource,
                attributes.verb.unwrap(),
            )
        };
        assert_eq!(
            attributes(Grant::Users),
            ("".into(), "users".into(), None, "impersonate".into())
        );
        assert_eq!(attributes(Grant::Groups).1, "groups");
        assert_eq!(
            attributes(Grant::Uids),
            (
                "authentication.k8s.io".into(),
                "uids".into(),
                None,
                "impersonate".into()
            )
        );
        assert_eq!(
            attributes(Grant::Extra("example.com/name".into())),
            (
                "authentication.k8s.io".into(),
                "userextras".into(),
                Some("example.com/name".into()),
                "impersonate".into()
            )
        );
        assert_eq!(
            Grant::Extra("example.com/name".into()).resource(),
            "userextras/example.com/name"
        );
    }

    #[test]
    fn a_user_lacks_only_the_denied_grants_their_identity_needs() {
        let grants = Grants::new(Family::default(), None);
        let wanted: BTreeSet<Grant> = [
            Grant::Users,
            Grant::Groups,
            Grant::Uids,
            Grant::Extra("a".into()),
            Grant::Extra("b".into()),
        ]
        .into();
        let alice = identity("", &["a", "c"]);
        assert!(grants.lacking(&alice).is_empty());

        let answers = || vec![Ok(true), Ok(true), Ok(false), Ok(false), Ok(false)];
        assert_eq!(
            grants.record(wanted.clone(), answers()),
            [
                Grant::Uids,
                Grant::Extra("a".into()),
                Grant::Extra("b".into())
            ],
            "the grants found missing, for the Event"
        );
        assert!(
            grants.record(wanted, answers()).is_empty(),
            "a grant still missing is not reported again"
        );
        assert_eq!(grants.lacking(&alice), [Grant::Extra("a".into())]);
        assert_eq!(
            grants.lacking(&identity("u-1", &[])),
            [Grant::Uids],
            "a uid needs its grant only when there is one"
        );
        let text = render(&grants);
        assert!(
            text.contains("denied{resource=\"userextras/a\"} 1"),
            "{text}"
        );
        assert!(text.contains("denied{resource=\"users\"} 0"), "{text}");

        // An unanswered review keeps what was known; a key no longer mapped is forgotten.
        let fewer: BTreeSet<Grant> = [Grant::Users, Grant::Groups, Grant::Uids].into();
        grants.record(
            fewer.clone(),
            vec![Ok(true), Err("timed out".into()), Err("x".into())],
        );
        assert!(grants.lacking(&alice).is_empty());
        assert_eq!(grants.lacking(&identity("u-1", &["a"])), [Grant::Uids]);
        let text = render(&grants);
        assert!(!text.contains("userextras"), "{text}");
        grants.record(fewer.clone(), vec![Ok(true), Ok(true), Ok(true)]);
        assert!(!grants.any_denied.load(Ordering::Relaxed));
        assert_eq!(
            grants.record(fewer, vec![Ok(true), Ok(true), Ok(false)]),
            [Grant::Uids],
            "a grant missing again is reported again"
        );
    }

    #[tokio::test]
    async fn only_a_refusal_of_the_impersonation_of_a_user_lacking_a_grant_is_explained() {
        let grants = Grants::new(Family::default(), None);
        let forbidden = |message: &str| {
            Response::builder()
                .status(StatusCode::FORBIDDEN)
                .body(Body::from(format!("{{\"message\":{message:?}}}")))
                .unwrap()
        };
        let text = |answer: Response<Body>| async move {
            let body = axum::body::to_bytes(answer.into_body(), usize::MAX)
                .await
                .unwrap();
            String::from_utf8(body.to_vec()).unwrap()
        };
        // 1.37's constrained impersonation, and the check before it.
        let impersonation = [
            r#"forbidden: User "system:serviceaccount:ns:proxy" cannot impersonate-on:user-info:get path "/api""#,
            r#"userextras.authentication.k8s.io "v" is forbidden: User "system:serviceaccount:ns:proxy" cannot impersonate resource "userextras/example.com/name" in API group "authentication.k8s.io" at the cluster scope"#,
        ];
        let users_rbac = r#"configmaps is forbidden: User "alice" cannot list resource "configmaps" in API group "" in the namespace "kube-system""#;
        let lacking = [Grant::Extra("example.com/name".into())];

        let unchanged = grants.explain(&[], forbidden(impersonation[0])).await;
        assert!(text(unchanged).await.contains("impersonate-on"));
        let served = grants
            .explain(&lacking, Response::new(Body::from("ok")))
            .await;
        assert_eq!(served.status(), StatusCode::OK);
        let own_rbac = grants.explain(&lacking, forbidden(users_rbac)).await;
        assert_eq!(own_rbac.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            text(own_rbac).await,
            format!("{{\"message\":{users_rbac:?}}}")
        );

        for refused in impersonation {
            let explained = grants.explain(&lacking, forbidden(refused)).await;
            assert_eq!(explained.status(), StatusCode::FORBIDDEN);
            assert_eq!(
                explained.headers()[header::CONTENT_TYPE],
                "text/plain; charset=utf-8"
            );
            let message = text(explained).await;
            assert!(
                message.contains("may not impersonate userextras/example.com/name"),
                "{message}"
            );
        }
    }
}
