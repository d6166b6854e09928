//! Prometheus metrics shared by the HTTP server and the controller. Labels carry routes, status
//! codes, reasons and object names only: never anything taken from a token.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

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

/// One KubeconfigRequest.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub namespace: String,
    pub name: String,
}

/// One KubeconfigRequest's Ready condition, as cert-manager labels its certificates' readiness.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub namespace: String,
    pub name: String,
    pub condition: &'static str,
}

/// Every metric the operator exports, registered once at start-up.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub token_validation_failures: Family<ReasonLabels, Counter>,
    pub reconciliations: Counter,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub request_expiration: Family<ObjectLabels, Gauge>,
    pub request_renewal: Family<ObjectLabels, Gauge>,
    pub request_ready: Family<ReadyLabels, Gauge>,
    pub proxy_requests: Family<ProxyLabels, Counter>,
    pub proxy_upstream_duration: Histogram,
    pub proxy_upgraded_streams: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kubeconfig_operator");
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
        let request_expiration = Family::<ObjectLabels, Gauge>::default();
        registry.register(
            "request_expiration_timestamp_seconds",
            "When the credential in a request's kubeconfig Secret expires (Unix time)",
            request_expiration.clone(),
        );
        let request_renewal = Family::<ObjectLabels, Gauge>::default();
        registry.register(
            "request_renewal_timestamp_seconds",
            "When a request's credential is renewed, or an ID token reported Expiring (Unix time)",
            request_renewal.clone(),
        );
        let request_ready = Family::<ReadyLabels, Gauge>::default();
        registry.register(
            "request_ready_status",
            "1 for the request's current Ready condition status (True or False), 0 for the other",
            request_ready.clone(),
        );
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
        Self {
            registry,
            proxy_requests,
            proxy_upstream_duration,
            proxy_upgraded_streams,
            request_expiration,
            request_renewal,
            request_ready,
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

    pub fn set_request_times(&self, namespace: &str, name: &str, expires_at: i64, renew_at: i64) {
        let labels = ObjectLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.request_expiration
            .get_or_create(&labels)
            .set(expires_at);
        self.request_renewal.get_or_create(&labels).set(renew_at);
    }

    pub fn set_request_ready(&self, namespace: &str, name: &str, ready: bool) {
        for (condition, value) in [("True", ready), ("False", !ready)] {
            self.request_ready
                .get_or_create(&ReadyLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    condition,
                })
                .set(i64::from(value));
        }
    }

    /// Removes a deleted request's series, so that alerts do not fire for what no longer exists.
    pub fn forget_request(&self, namespace: &str, name: &str) {
        let labels = ObjectLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.request_expiration.remove(&labels);
        self.request_renewal.remove(&labels);
        for condition in ["True", "False"] {
            self.request_ready.remove(&ReadyLabels {
                namespace: labels.namespace.clone(),
                name: labels.name.clone(),
                condition,
            });
        }
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

    #[test]
    fn per_request_series_appear_and_go_with_the_request() {
        let metrics = Metrics::default();
        metrics.set_request_times("team-a", "alice", 2_000_000_000, 1_999_998_800);
        metrics.set_request_ready("team-a", "alice", true);
        let text = metrics.render();
        assert!(text.contains(r#"kubeconfig_operator_request_expiration_timestamp_seconds{namespace="team-a",name="alice"} 2000000000"#), "{text}");
        assert!(text.contains(r#"kubeconfig_operator_request_renewal_timestamp_seconds{namespace="team-a",name="alice"} 1999998800"#), "{text}");
        assert!(text.contains(r#"kubeconfig_operator_request_ready_status{namespace="team-a",name="alice",condition="True"} 1"#), "{text}");
        assert!(text.contains(r#"kubeconfig_operator_request_ready_status{namespace="team-a",name="alice",condition="False"} 0"#), "{text}");
        metrics.forget_request("team-a", "alice");
        assert!(!metrics.render().contains("alice"));
    }
}
