//! Envoy v3 resources from views: a pure function of the mesh index and a proxy. Sidecars get
//! outbound listeners and EDS clusters for every visible service port (mTLS with the Istio SNI
//! and SAN verification), and inbound listeners that terminate mTLS and enforce authorization.
//! Gateways get one SNI filter chain per exported service port, passing TLS through.
//!
//! By concern: `outbound` (a service's clusters, endpoints and outbound listeners),
//! `inbound` (the workload's own ports), `rbac` (authorization policies as Envoy RBAC),
//! `gateway` (east-west SNI routing), `tls` (SDS secrets, SAN checks), `slots` (outbound
//! addresses), `cache` (per-service reuse across builds), `shared` (resource sets shared by proxies with
//! equal inputs, built once per change); `envoy` and `eds` hold the small
//! message constructors they share.

mod cache;
mod eds;
mod envoy;
mod gateway;
mod inbound;
mod outbound;
mod rbac;
mod shared;
mod slots;
mod tls;

use causeway_discovery::{MeshIndex, ProxyContext};
use causeway_model::{ServiceKey, ServicePort};

use crate::node::ProxyNode;
use crate::resources::Resources;

pub use cache::SidecarCache;
pub use gateway::gateway_resources;
pub use inbound::{sidecar_inbound_from, sidecar_inbound_resources, InboundInputs};
pub use outbound::sidecar_service_resources;
pub use shared::{diff_names, sidecar_class, ClassBuild, ServiceSet, SharedBuilds};
pub use slots::{outbound_address, sidecar_slots};
pub use tls::{SDS_CLUSTER, SECRET_CERT, SECRET_ROOT};

/// Cluster metadata (under `causeway`) naming the load balancer a Causeway proxy runs instead
/// of the cluster's `lb_policy` (Envoy proxies never get it).
pub const LOAD_BALANCER_KEY: &str = "loadBalancer";
/// Power of two choices over peak-EWMA latency × outstanding requests.
pub const PEAK_EWMA: &str = "peak-ewma";

/// Outbound cluster name, Istio's form: `outbound|<port>||<fqdn>`.
pub fn outbound_cluster_name(key: &ServiceKey, port: u16) -> String {
    format!("outbound|{port}||{}", key.fqdn())
}

/// The cluster of one `TrafficPolicy` route of a service port, Istio's subset form:
/// `outbound|<port>|<route>|<fqdn>` (the route's name: its subset, cluster or both).
pub fn route_cluster_name(key: &ServiceKey, port: u16, route: &str) -> String {
    format!("outbound|{port}|{route}|{}", key.fqdn())
}

/// Whether a port carries HTTP (and gets an HTTP connection manager) rather than raw TCP.
pub fn is_http(port: &ServicePort) -> bool {
    matches!(
        port.app_protocol.as_deref(),
        Some("http" | "http2" | "grpc" | "h2c")
    ) || port
        .name
        .as_deref()
        .is_some_and(|n| n == "http" || n.starts_with("http-") || n == "grpc")
}

/// Builds a sidecar's resources.
pub fn sidecar_resources(index: &MeshIndex, node: &ProxyNode, ctx: &ProxyContext) -> Resources {
    let slots = sidecar_slots(index, node);
    let mut out = sidecar_inbound_resources(index, node, ctx);
    for key in index.services().keys() {
        sidecar_service_resources(index, node, ctx, key, slots.get(key).copied(), &mut out);
    }
    out
}
