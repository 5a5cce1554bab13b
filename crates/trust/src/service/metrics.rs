//! The CA's Prometheus metrics: refusals by reason, issued certificates by cluster, and
//! connections closed before their TLS session.

use causeway_model::ClusterId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::CaService;

/// Why a connection to the CA was closed before it carried a request (the label of
/// `causeway_ca_handshake_failures_total{reason}`, pre-registered at 0).
pub const HANDSHAKE_FAILURE_REASONS: &[&str] = &["timeout", "tls", "overloaded"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabels {
    pub(super) reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ClusterLabels {
    pub(super) cluster: String,
}

impl CaService {
    /// Registers `ca_rejections` (`causeway_ca_rejections_total{reason}` under the control
    /// plane's `causeway` prefix) and `ca_issued` (`causeway_ca_issued_total{cluster}`).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "ca_rejections",
            "Certificate requests the CA refused, by reason",
            self.rejections.clone(),
        );
        registry.register(
            "ca_issued",
            "Workload certificates issued, by cluster",
            self.issued.clone(),
        );
        registry.register(
            "ca_handshake_failures",
            "Connections to the CA closed before a TLS session was established, by reason",
            self.handshake_failures.clone(),
        );
    }

    /// Connections closed before their TLS session for `reason` (one of
    /// [`HANDSHAKE_FAILURE_REASONS`]) so far.
    pub fn handshake_failure_count(&self, reason: &str) -> u64 {
        self.handshake_failures
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .get()
    }

    pub(super) fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// Rejections so far for `reason` (for tests and status pages).
    pub fn rejection_count(&self, reason: &str) -> u64 {
        self.rejections
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .get()
    }

    /// Certificates issued so far for `cluster`.
    pub fn issued_count(&self, cluster: &ClusterId) -> u64 {
        self.issued
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_string(),
            })
            .get()
    }
}

/// A family of counters by reason with every one of `reasons` pre-registered at 0 (so
/// dashboards see them before the first event).
pub(super) fn reason_family(reasons: &[&str]) -> Family<ReasonLabels, Counter> {
    let family = Family::<ReasonLabels, Counter>::default();
    for reason in reasons {
        let _ = family.get_or_create(&ReasonLabels {
            reason: (*reason).to_owned(),
        });
    }
    family
}
