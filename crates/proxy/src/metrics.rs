//! The proxy's Prometheus metrics: configuration updates and, per gateway listener, connections
//! by outcome and bytes carried. Counters are atomics shared by the workers (one increment per
//! connection, never per byte read).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub listener: String,
    /// `forwarded`, or why not (`plaintext`, `no_route`, `no_endpoint`, `connect_failed`, …).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    pub cluster: String,
    /// `sent` (caller to endpoint) or `received`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Counted when accepted (the outcome comes when the connection ends).
    pub gateway_connections_opened: Family<ListenerLabels, Counter>,
    pub gateway_connections: Family<ConnectionLabels, Counter>,
    pub gateway_bytes: Family<RouteLabels, Counter>,
}

impl Metrics {
    /// Prometheus text of every metric, `causeway_proxy_` prefixed.
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix("causeway_proxy");
        registry.register(
            "gateway_connections_opened",
            "Connections accepted by east-west gateway listeners",
            self.gateway_connections_opened.clone(),
        );
        registry.register(
            "gateway_connections",
            "Connections of east-west gateway listeners that ended, by outcome",
            self.gateway_connections.clone(),
        );
        registry.register(
            "gateway_bytes",
            "Bytes carried by east-west gateway routes, by upstream cluster and direction",
            self.gateway_bytes.clone(),
        );
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}
