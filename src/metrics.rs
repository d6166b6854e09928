//! Prometheus metrics shared by the HTTP server and the controller. Labels carry routes, status
//! codes, reasons and object names only: never anything taken from a token.

use std::{
    hash::Hash,
    sync::{Arc, RwLock},
};

use kube::runtime::reflector::{Lookup, Store};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::oidc::{authn_config::digest, verify::Verifier};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// One request through the API server proxy: the Kubernetes verb (a fixed set) and the status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyLabels {
    pub verb: &'static str,
    pub code: u16,
}

/// One impersonation the proxy's ServiceAccount needs, as a ClusterRole's rule names its resource
/// (`users`, `groups`, `uids`, `userextras/<key>`): the keys come from the authentication
/// configuration, never from a token, so the series are as few as the keys it maps.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrantLabels {
    pub resource: String,
}

/// The status of a request's Ready condition, as the series label it. A status other than these
/// three (which the CRD's schema does not admit) counts as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr)]
pub enum ReadyStatus {
    True,
    False,
    Unknown,
}

impl ReadyStatus {
    pub fn of(status: &str) -> Self {
        status.parse().unwrap_or(Self::Unknown)
    }
}

/// What the per-request series read of a request in the controller's store.
pub trait RequestState: Send + Sync {
    fn namespace_and_name(&self) -> Option<(&str, &str)>;
    fn ready(&self) -> Option<ReadyStatus>;
    /// When the credential expires (Unix time).
    fn expires_at(&self) -> Option<i64>;
    /// When the credential is renewed, or an ID token reported Expiring (Unix time).
    fn renewal_time(&self) -> Option<i64>;
}

/// Reads one of the times of a request's state.
type StateTime = fn(&dyn RequestState) -> Option<i64>;

/// Reads every request in the running controller's store.
type Requests = Box<dyn Fn() -> Vec<Arc<dyn RequestState>> + Send + Sync>;

/// The per-request series, read from the controller's request store at each scrape, as
/// kube-state-metrics does: a family kept per request held every name three times over (7 MB with
/// 10,000 requests) and kept its table's size after the requests were deleted.
#[derive(Default)]
pub struct RequestSeries {
    /// The running controller's store; none while this replica does not run the controller.
    store: RwLock<Option<Requests>>,
}

impl std::fmt::Debug for RequestSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestSeries")
    }
}

impl RequestSeries {
    /// Exports the requests in `store` from now on.
    pub fn export<K>(&self, store: Store<K>)
    where
        K: RequestState + Lookup + Clone + 'static,
        K::DynamicType: Eq + Hash + Clone + Send + Sync,
    {
        let requests: Requests = Box::new(move || {
            store
                .state()
                .into_iter()
                .map(|request| request as Arc<dyn RequestState>)
                .collect()
        });
        if let Ok(mut exported) = self.store.write() {
            *exported = Some(requests);
        }
    }

    /// Exports nothing from now on: the controller stopped.
    pub fn clear(&self) {
        if let Ok(mut exported) = self.store.write() {
            *exported = None;
        }
    }

    fn requests(&self) -> Vec<Arc<dyn RequestState>> {
        self.store
            .read()
            .ok()
            .and_then(|store| store.as_ref().map(|requests| requests()))
            .unwrap_or_default()
    }
}

impl Collector for RequestSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let requests = self.requests();
        let labelled = || {
            requests.iter().filter_map(|request| {
                let (namespace, name) = request.namespace_and_name()?;
                Some((namespace, name, request))
            })
        };
        let times: [(&str, &str, StateTime); 2] = [
            (
                "request_expiration_timestamp_seconds",
                "When the credential in a request's kubeconfig Secret expires (Unix time)",
                |request| request.expires_at(),
            ),
            (
                "request_renewal_timestamp_seconds",
                "When a request's credential is renewed, or an ID token reported Expiring (Unix time)",
                |request| request.renewal_time(),
            ),
        ];
        for (name, help, field) in times {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (namespace, name, request) in labelled() {
                if let Some(time) = field(request.as_ref()) {
                    ConstGauge::new(time).encode(
                        family.encode_family(&[("namespace", namespace), ("name", name)])?,
                    )?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "request_ready_status",
            "1 for the request's current Ready condition status (True or False), 0 for the other",
            None,
            MetricType::Gauge,
        )?;
        for (namespace, name, request) in labelled() {
            // As cert-manager labels its certificates' readiness.
            let Some(ready) = request.ready() else {
                continue;
            };
            for condition in [ReadyStatus::True, ReadyStatus::False] {
                let labels = [
                    ("namespace", namespace),
                    ("name", name),
                    ("condition", condition.into()),
                ];
                ConstGauge::new(i64::from(ready == condition))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// kube-apiserver's own series about its authentication configuration and its issuers' key sets
/// (k8s.io/apiserver v0.37.2: `authenticationconfig/metrics` and the JWT authenticator's),
/// with the same names, labels and `sha256:<hex>` hashes, so that one rule can tell when the
/// operator and the API server judge tokens by different files or keys. Read from the verifier
/// at each scrape. `apiserver_id_hash` is the hash of [`OPERATOR_ID`].
#[derive(Default)]
pub struct AuthenticationSeries {
    verifier: RwLock<Option<Arc<Verifier>>>,
}

/// Stands for an API server's identity in the `apiserver_id_hash` label.
pub const OPERATOR_ID: &str = "kubeconfig-operator";

impl std::fmt::Debug for AuthenticationSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthenticationSeries")
    }
}

impl AuthenticationSeries {
    /// Exports `verifier`'s configuration and key sets from now on.
    pub fn export(&self, verifier: Arc<Verifier>) {
        if let Ok(mut exported) = self.verifier.write() {
            *exported = Some(verifier);
        }
    }
}

impl Collector for AuthenticationSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(state) = self
            .verifier
            .read()
            .ok()
            .and_then(|verifier| verifier.as_ref().map(|v| v.configuration_state()))
        else {
            return Ok(());
        };
        let id = digest(OPERATOR_ID.as_bytes());
        if let Some(hash) = &state.digest {
            let mut family = encoder.encode_descriptor(
                "apiserver_authentication_config_controller_last_config_info",
                "Information about the last applied authentication configuration with hash as label, split by apiserver identity.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1).encode(
                family.encode_family(&[("apiserver_id_hash", id.as_str()), ("hash", hash)])?,
            )?;
            let mut family = encoder.encode_descriptor(
                "apiserver_authentication_config_controller_automatic_reloads",
                "Total number of automatic reloads of authentication configuration split by status and apiserver identity.",
                None,
                MetricType::Counter,
            )?;
            for (status, count) in [
                ("success", state.reloads_succeeded),
                ("failure", state.reloads_failed),
            ] {
                ConstCounter::new(count).encode(
                    family.encode_family(&[("status", status), ("apiserver_id_hash", &id)])?,
                )?;
            }
            let mut family = encoder.encode_descriptor(
                "kubeconfig_operator_authentication_config_rejected",
                "1 while the authentication configuration file on disk was refused and an older one is in force",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(state.rejected.is_some()))
                .encode(family.encode_family(&[("apiserver_id_hash", id.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "apiserver_authentication_jwt_authenticator_jwks_fetch_last_key_set_info",
            "Information about the last JWKS fetched by the JWT authenticator with hash as label, split by api server identity and jwt issuer.",
            None,
            MetricType::Gauge,
        )?;
        for (issuer, hash) in &state.key_sets {
            let issuer = digest(issuer.as_bytes());
            ConstGauge::new(1).encode(family.encode_family(&[
                ("jwt_issuer_hash", issuer.as_str()),
                ("apiserver_id_hash", &id),
                ("hash", hash),
            ])?)?;
        }
        Ok(())
    }
}

/// What the allocator holds, read at each scrape: the bytes of live objects and the pages it
/// keeps resident for them. With the process's resident size, they tell what a request costs
/// in objects from what the allocator and the rest of the process add (bench/issuance.sh).
#[cfg(feature = "jemalloc")]
#[derive(Debug)]
struct HeapSeries;

#[cfg(feature = "jemalloc")]
impl Collector for HeapSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use tikv_jemalloc_ctl::{epoch, stats};
        // jemalloc's statistics are a snapshot taken at each new epoch.
        if epoch::advance().is_err() {
            return Ok(());
        }
        for (name, help, read) in [
            (
                "kubeconfig_operator_heap_allocated_bytes",
                "Bytes of live heap objects (jemalloc's stats.allocated)",
                stats::allocated::read as fn() -> tikv_jemalloc_ctl::Result<usize>,
            ),
            (
                "kubeconfig_operator_heap_resident_bytes",
                "Bytes of the heap's resident pages, the allocator's own metadata included (jemalloc's stats.resident)",
                stats::resident::read,
            ),
        ] {
            let Ok(bytes) = read() else { continue };
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX)).encode(family)?;
        }
        Ok(())
    }
}

/// Every metric the operator exports, registered once at start-up.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub token_validation_failures: Family<ReasonLabels, Counter>,
    pub reconciliations: Counter,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub requests: Arc<RequestSeries>,
    pub proxy_requests: Family<ProxyLabels, Counter>,
    pub proxy_upstream_duration: Histogram,
    pub proxy_upgraded_streams: Gauge,
    pub proxy_impersonation_denied: Family<GrantLabels, Gauge>,
    pub authentication: Arc<AuthenticationSeries>,
}

impl Default for Metrics {
    fn default() -> Self {
        // kube-apiserver's series keep their own names, outside the operator's prefix.
        let mut root = Registry::default();
        // First, so the heap is read before the scrape's own text takes room in it (with 10,000
        // requests, their series are megabytes).
        #[cfg(feature = "jemalloc")]
        root.register_collector(Box::new(HeapSeries));
        let authentication = Arc::new(AuthenticationSeries::default());
        root.register_collector(Box::new(Arc::clone(&authentication)));
        let registry = root.sub_registry_with_prefix("kubeconfig_operator");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status code",
            http_requests.clone(),
        );
        let token_validation_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "token_validation_failures",
            "ID tokens refused, by reason (HTTP and controller)",
            token_validation_failures.clone(),
        );
        let reconciliations = Counter::default();
        registry.register(
            "reconciliations",
            "KubeconfigRequest reconciliations started",
            reconciliations.clone(),
        );
        let reconcile_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed and were retried, by error kind",
            reconcile_errors.clone(),
        );
        let reconcile_duration =
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]);
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took",
            reconcile_duration.clone(),
        );
        let requests = Arc::new(RequestSeries::default());
        registry.register_collector(Box::new(Arc::clone(&requests)));
        let proxy_requests = Family::<ProxyLabels, Counter>::default();
        registry.register(
            "proxy_requests",
            "Requests answered by the API server proxy, by Kubernetes verb and status code",
            proxy_requests.clone(),
        );
        let proxy_upstream_duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "proxy_upstream_duration_seconds",
            "Time from forwarding a request to the API server until its response headers arrived",
            proxy_upstream_duration.clone(),
        );
        let proxy_upgraded_streams = Gauge::default();
        registry.register(
            "proxy_upgraded_streams",
            "Upgraded connections (exec, attach, port-forward, WebSocket) open through the proxy",
            proxy_upgraded_streams.clone(),
        );
        let proxy_impersonation_denied = Family::<GrantLabels, Gauge>::default();
        registry.register(
            "proxy_impersonation_denied",
            "1 while the API server says the proxy's ServiceAccount may not impersonate this resource, which some users' requests need; 0 once it may",
            proxy_impersonation_denied.clone(),
        );
        Self {
            registry: root,
            proxy_impersonation_denied,
            authentication,
            proxy_requests,
            proxy_upstream_duration,
            proxy_upgraded_streams,
            requests,
            http_requests,
            token_validation_failures,
            reconciliations,
            reconcile_errors,
            reconcile_duration,
        }
    }
}

impl Metrics {
    pub fn count_token_failure(&self, reason: &'static str) {
        self.token_validation_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heap is read before anything else is written into the scrape's text.
    #[cfg(feature = "jemalloc")]
    #[test]
    fn the_heap_series_come_first() {
        let text = Metrics::default().render();
        let first: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .take(2)
            .collect();
        assert!(
            first[0].starts_with("kubeconfig_operator_heap_allocated_bytes ")
                && first[1].starts_with("kubeconfig_operator_heap_resident_bytes "),
            "{text}"
        );
    }

    /// The alerts in config/monitoring tell the operator's series from the API servers' by this.
    #[test]
    fn the_drift_alerts_name_the_operators_id_hash() {
        let rules = include_str!("../config/monitoring/prometheus_rule.yaml");
        let id = digest(OPERATOR_ID.as_bytes());
        assert_eq!(
            rules
                .matches(&format!("apiserver_id_hash=\"{id}\""))
                .count(),
            2
        );
        assert_eq!(
            rules
                .matches(&format!("apiserver_id_hash!=\"{id}\""))
                .count(),
            2
        );
    }

    /// kube-apiserver's names, labels and hashes: the file's `sha256:<hex>` and the JWKS
    /// document's, beside `sha256:<hex>` of the issuer URL.
    #[tokio::test]
    async fn the_configuration_and_key_set_hashes_are_kube_apiservers() {
        let config = "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n- issuer:\n    url: https://dex.example/dex\n    audiences: [a]\n  claimMappings:\n    username: {claim: sub, prefix: ''}\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authn.yaml");
        std::fs::write(&path, config).unwrap();
        let verifier =
            Verifier::from_authentication_config(&path, crate::config::Strictness::default())
                .await
                .unwrap();
        let metrics = Metrics::default();
        metrics.authentication.export(Arc::new(verifier));
        let text = metrics.render();
        let id = digest(OPERATOR_ID.as_bytes());
        let hash = digest(config.as_bytes());
        for line in [
            format!(
                "apiserver_authentication_config_controller_last_config_info{{apiserver_id_hash=\"{id}\",hash=\"{hash}\"}} 1"
            ),
            format!(
                "apiserver_authentication_config_controller_automatic_reloads_total{{status=\"failure\",apiserver_id_hash=\"{id}\"}} 0"
            ),
            format!(
                "kubeconfig_operator_authentication_config_rejected{{apiserver_id_hash=\"{id}\"}} 0"
            ),
            "# TYPE apiserver_authentication_jwt_authenticator_jwks_fetch_last_key_set_info gauge"
                .to_owned(),
            "kubeconfig_operator_reconciliations_total 0".to_owned(),
        ] {
            assert!(text.contains(&line), "{line} not in:\n{text}");
        }
    }

    #[test]
    fn exposition_names_counters_with_their_labels() {
        let metrics = Metrics::default();
        metrics
            .http_requests
            .get_or_create(&RequestLabels {
                route: "/kube-config",
                code: 401,
            })
            .inc();
        metrics.count_token_failure("Expired");
        let text = metrics.render();
        assert!(text.contains(
            r#"kubeconfig_operator_http_requests_total{route="/kube-config",code="401"} 1"#
        ));
        assert!(text.contains(
            r#"kubeconfig_operator_token_validation_failures_total{reason="Expired"} 1"#
        ));
        assert!(text.contains("kubeconfig_operator_reconcile_duration_seconds_bucket"));
    }
}
