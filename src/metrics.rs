//! Prometheus metrics shared by the HTTP server and the controller. Labels carry routes, status
//! codes, reasons and object names only: never anything taken from a token.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
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

/// Every metric the operator exports, registered once at start-up.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub token_validation_failures: Family<ReasonLabels, Counter>,
    pub reconciliations: Counter,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    pub reconcile_duration: Histogram,
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
        Self {
            registry,
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
