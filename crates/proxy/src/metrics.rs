//! The proxy's Prometheus metrics: configuration updates; per gateway listener, connections by
//! outcome and bytes carried; per sidecar listener and upstream cluster, HTTP requests by
//! status class with a latency histogram, TCP connections by outcome, and TLS handshakes.
//! Counters are atomics shared by the workers (one increment per connection or request, never
//! per byte read).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: String,
    /// The upstream cluster (empty when no route matched).
    pub cluster: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub listener: String,
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsLabels {
    /// `downstream` (inbound mTLS, by listener) or `upstream` (by cluster).
    pub side: String,
    /// The listener or cluster.
    pub name: String,
    /// `ok` or why not.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

/// Request durations in seconds: 0.5 ms to ~16 s.
fn duration_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

type Durations = Family<DurationLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub listener: String,
    /// `forwarded`, or why not (`plaintext`, `no_route`, `probe` (the control plane's gateway probes), `no_endpoint`, `connect_failed`, …).
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

#[derive(Debug)]
pub struct Metrics {
    /// Counted when accepted (the outcome comes when the connection ends).
    pub gateway_connections_opened: Family<ListenerLabels, Counter>,
    pub gateway_connections: Family<ConnectionLabels, Counter>,
    pub gateway_bytes: Family<RouteLabels, Counter>,
    /// Requests answered on sidecar HTTP listeners (by the upstream or locally).
    pub http_requests: Family<RequestLabels, Counter>,
    /// From the request's headers to the response's headers.
    pub http_request_duration: Durations,
    /// Upstream attempts that were retries.
    pub http_retries: Family<ClusterLabels, Counter>,
    /// TCP proxy connections of sidecar listeners that ended, by outcome.
    pub tcp_connections: Family<ConnectionLabels, Counter>,
    pub tls_handshakes: Family<TlsLabels, Counter>,
    /// Requests or connections refused by RBAC, by listener.
    pub rbac_denied: Family<ListenerLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            gateway_connections_opened: Family::default(),
            gateway_connections: Family::default(),
            gateway_bytes: Family::default(),
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(duration_histogram),
            http_retries: Family::default(),
            tcp_connections: Family::default(),
            tls_handshakes: Family::default(),
            rbac_denied: Family::default(),
        }
    }
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
        registry.register(
            "http_requests",
            "HTTP requests of sidecar listeners, by upstream cluster and status class",
            self.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's headers to its response's headers",
            self.http_request_duration.clone(),
        );
        registry.register(
            "http_retries",
            "Upstream attempts that were retries, by cluster",
            self.http_retries.clone(),
        );
        registry.register(
            "tcp_connections",
            "TCP proxy connections of sidecar listeners that ended, by outcome",
            self.tcp_connections.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Mesh mTLS handshakes, downstream by listener and upstream by cluster, by result",
            self.tls_handshakes.clone(),
        );
        registry.register(
            "rbac_denied",
            "Requests and connections refused by authorization policy, by listener",
            self.rbac_denied.clone(),
        );
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}
