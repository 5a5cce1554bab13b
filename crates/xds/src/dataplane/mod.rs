//! The data plane's side of the xDS boundary: Envoy v3 resources destructured into Causeway
//! proxy configuration at one place (kmesh-net/orion's pattern). Every field of every message is
//! named here: a field the proxy honours becomes a validated value, one it does not honour is a
//! [`ConfigError`] (a NACK with the resource, the field's path and why), never silently ignored.
//! Fields that only name statistics or carry metadata the proxy does not need are accepted and
//! say so where they are destructured.

pub mod bootstrap;
mod check;
mod cluster;
mod endpoint;
mod health;
pub mod http;
mod listener;
pub mod rbac;
pub mod tls;
mod weighted;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub use bootstrap::{read_static_bootstrap, static_snapshot, StaticBootstrap};
pub use cluster::{cluster_config, DEFAULT_MAX_RETRIES};
pub use endpoint::load_assignment;
pub use health::HealthCheckConfig;
pub use listener::listener_config;
pub use weighted::ClusterSplit;

/// Why a resource was refused: what the proxy NACKs with and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {reason}")]
pub struct ConfigError {
    /// `Listener gateway|127.1.255.1:15443`, `Cluster outbound|80||demo/echo`, …
    pub resource: String,
    /// Dotted path of the field inside the resource, e.g. `filter_chains[2].filters[0]`.
    pub field: String,
    pub reason: String,
}

/// A listener the proxy binds.
#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// False: nothing binds the address; connections arrive from a capture listener that hands
    /// them over by their original destination.
    pub bind: bool,
    /// A capture listener: each connection goes to the listener of its original destination
    /// (`SO_ORIGINAL_DST`, set by an iptables REDIRECT), this one's chains only when none has it.
    pub use_original_dst: bool,
    /// Read the TLS ClientHello (SNI, ALPN) before choosing a filter chain.
    pub inspect_tls: bool,
    /// How long to wait for the ClientHello before closing (Envoy's listener filter timeout).
    pub inspect_timeout: Duration,
    pub filter_chains: Vec<FilterChainConfig>,
    /// Used when no chain matches; without it such a connection is closed.
    pub default_chain: Option<FilterChainConfig>,
}

/// One way of handling a connection, chosen by what it matches.
#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct FilterChainConfig {
    pub name: String,
    pub matches: ChainMatch,
    /// TLS terminated on this chain (a sidecar's inbound mTLS); `None`: bytes as they come.
    pub tls: Option<tls::DownstreamTlsConfig>,
    /// How long the downstream TLS handshake may take (Envoy's default: unbounded).
    pub handshake_timeout: Option<Duration>,
    pub action: ChainAction,
}

/// What a connection must look like for a chain (empty lists match anything).
#[derive(Debug, serde::Serialize, Clone, PartialEq, Default)]
pub struct ChainMatch {
    /// Exact SNI names, lowercase; `*.example.com` matches one or more labels (Envoy's rule).
    pub server_names: Vec<String>,
    pub destination_port: Option<u16>,
    /// `tls` or `raw_buffer`.
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
}

/// The terminal network filter of a chain.
#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub enum ChainAction {
    /// Copy bytes to an endpoint of `cluster` (TLS left untouched).
    TcpProxy(TcpProxyConfig),
    /// Serve HTTP/1.1 and HTTP/2 with routes, retries and timeouts.
    Http(Box<http::HttpManagerConfig>),
}

#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct TcpProxyConfig {
    pub stat_prefix: String,
    /// Where connections go: one cluster, or several by weight (one pick per connection).
    pub clusters: ClusterSplit,
    /// Close a connection without bytes in either direction for this long (None: never).
    pub idle_timeout: Option<Duration>,
    /// Connect upstream only once the downstream TLS handshake completed (Envoy's
    /// `ON_DOWNSTREAM_TLS_HANDSHAKE`: a caller the handshake refuses opens nothing upstream; on
    /// a chain without TLS, at once); false: at once (`IMMEDIATE`, Envoy's default). Nothing is
    /// read from the caller meanwhile.
    pub connect_after_tls_handshake: bool,
    /// The network RBAC filters in front, in order (DENY before ALLOW, as the control plane
    /// emits them; empty for a gateway): the first that refuses the connection decides
    /// (`rbac::authorize`, without a path).
    pub rbac: Vec<rbac::RbacConfig>,
}

/// An upstream cluster.
#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct ClusterConfig {
    pub name: String,
    pub endpoints: EndpointSource,
    /// mTLS to the endpoints (SNI, certificates, expected SANs); `None`: plaintext.
    pub upstream_tls: Option<tls::UpstreamTlsConfig>,
    pub connect_timeout: Duration,
    pub lb_policy: LbPolicy,
    pub outlier_detection: Option<OutlierDetectionConfig>,
    /// Below this share of healthy endpoints in a priority, Envoy spreads over all of them
    /// ("panic"); 0 turns that off so traffic fails over to the next priority instead.
    pub healthy_panic_threshold_percent: f64,
    /// `namespace/name` of the mesh service (Causeway's cluster metadata), for metrics.
    pub service: Option<String>,
    /// Retries in flight at once across the cluster's requests (Envoy's `max_retries` circuit
    /// breaker, 3 unless set); a retry past it is not made.
    pub max_retries: u32,
    /// Active health checking of its endpoints; `None`: only outlier detection.
    pub health_check: Option<HealthCheckConfig>,
}

#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub enum EndpointSource {
    /// From EDS, under this resource name.
    Eds { service_name: String },
    /// Given inline (static bootstraps).
    Static(LoadAssignmentConfig),
}

#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Smooth weighted round robin (Envoy's `ROUND_ROBIN`).
    RoundRobin,
    /// Power of two choices over peak-EWMA latency × outstanding requests, per weight (the
    /// control plane's mesh clusters for Causeway proxies, named in the cluster's metadata).
    PeakEwma,
}

/// Envoy's consecutive-failure outlier detection (the subset the control plane emits).
#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct OutlierDetectionConfig {
    pub consecutive_5xx: u32,
    pub enforcing_consecutive_5xx_percent: u32,
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_gateway_failure_percent: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

/// Endpoints of a cluster by locality and priority.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Default)]
pub struct LoadAssignmentConfig {
    pub cluster_name: String,
    pub localities: Vec<LocalityEndpoints>,
}

#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct LocalityEndpoints {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
    /// 0 is tried first; higher priorities only when lower ones have no healthy endpoint.
    pub priority: u32,
    pub weight: Option<u32>,
    pub endpoints: Vec<EndpointConfig>,
}

#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct EndpointConfig {
    pub address: SocketAddr,
    pub weight: u32,
    /// False when EDS marks it unhealthy, draining or timed out.
    pub healthy: bool,
    /// The Causeway cluster it runs in (endpoint metadata), for metrics and debugging.
    pub cluster: Option<String>,
    /// TLS SNI for this endpoint instead of the cluster's: a remote pod behind its gateway.
    pub sni: Option<String>,
    /// The pod's own address when `address` is its gateway's (for operators).
    pub pod: Option<String>,
    /// Its workload, when known (for operators).
    pub workload: Option<String>,
    /// Whether the cluster's active health check covers it (EDS may opt an endpoint out).
    pub active_health_check: bool,
    /// Reached through an east-west gateway (a gateway aggregate or a pod behind one: the
    /// Causeway metadata's `kind`, or an SNI of its own): its health check is the gateway's
    /// liveness probe, not a handshake with one service.
    pub through_gateway: bool,
}

/// Everything a Causeway proxy runs on, replaced as a whole on every accepted update.
#[derive(Debug, serde::Serialize, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Increases with every accepted update (per-worker caches key on it).
    pub generation: u64,
    pub listeners: BTreeMap<String, ListenerConfig>,
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// EDS assignments by resource name.
    pub assignments: BTreeMap<String, LoadAssignmentConfig>,
}

impl Snapshot {
    /// The endpoints of `cluster`: inline for static clusters, from EDS otherwise (none yet
    /// when EDS has not delivered them).
    pub fn endpoints_of(&self, cluster: &str) -> Option<&LoadAssignmentConfig> {
        match &self.clusters.get(cluster)?.endpoints {
            EndpointSource::Static(la) => Some(la),
            EndpointSource::Eds { service_name } => self.assignments.get(service_name),
        }
    }

    /// The EDS resource names the clusters need.
    pub fn eds_names(&self) -> std::collections::BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| match &c.endpoints {
                EndpointSource::Eds { service_name } => Some(service_name.clone()),
                EndpointSource::Static(_) => None,
            })
            .collect()
    }
}
