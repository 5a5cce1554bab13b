//! East-west gateways: one SNI filter chain per exported service port of the gateway's
//! cluster, one per `TrafficPolicy` subset routed to, and one per ready endpoint of it (the per-endpoint SNI Causeway proxies balance
//! pods with), TLS passed through (never terminated).

use causeway_discovery::view::{self, GatewayRoute};
use causeway_discovery::ViewEndpoint;
use causeway_discovery::{MeshIndex, ProxyContext};
use causeway_model::ServiceKey;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3 as tls_inspector;
use envoy_types::util::pack_any;

use super::eds::{
    gateway_cluster, group_by_locality, load_assignment, single_endpoint_cluster, EndpointMetadata,
};
use super::envoy::{causeway_metadata, duration_ms, network_filter, socket_address, tcp_proxy};
use super::{outbound_cluster_name, route_cluster_name};
use crate::resources::{content_hash, Resources, TypeUrl};

/// What one service adds to its cluster's east-west gateway: the clusters and load
/// assignments of its routes, and their SNI filter chains (one per route, then one per
/// per-endpoint SNI), already encoded. A gateway's resources are these for every service plus
/// listeners holding all the chains, so a change to one service rebuilds its part and, only
/// when its chains changed, the listeners, by concatenating the parts' encoded chains.
#[derive(Debug, Default)]
pub struct GatewayPart {
    /// Clusters and load assignments.
    pub resources: Resources,
    /// The route chains, each encoded as a `Listener.filter_chains` field.
    route_chains: Vec<u8>,
    /// The per-endpoint chains, encoded the same way.
    endpoint_chains: Vec<u8>,
    /// Hash of both: what the listeners' versions are computed from.
    chains_hash: u64,
}

/// `Listener.filter_chains` (see envoy.config.listener.v3.Listener).
const FILTER_CHAINS_TAG: u32 = 3;

/// Appends `chain` to `out` as one `filter_chains` field of a Listener message: protobuf
/// merges concatenated fields, so a listener is its other fields followed by these.
fn encode_chain_field(chain: &listener::FilterChain, out: &mut Vec<u8>) {
    prost::encoding::message::encode(FILTER_CHAINS_TAG, chain, out);
}

impl GatewayPart {
    /// Whether the service adds filter chains different from `other`'s.
    pub fn chains_differ(&self, other: &GatewayPart) -> bool {
        self.route_chains != other.route_chains || self.endpoint_chains != other.endpoint_chains
    }

    fn has_chains(&self) -> bool {
        !self.route_chains.is_empty() || !self.endpoint_chains.is_empty()
    }
}

/// The part of service `key` in the gateway of `ctx`'s cluster (empty unless exported there).
pub fn service_gateway_part(
    index: &MeshIndex,
    ctx: &ProxyContext,
    key: &ServiceKey,
) -> GatewayPart {
    let mut part = GatewayPart::default();
    let routes = view::service_gateway_routes(index, &ctx.identity.cluster, key);
    for r in &routes {
        let chain = route_chain(r, &mut part.resources);
        encode_chain_field(&chain, &mut part.route_chains);
    }
    // Per-endpoint chains once per port (a subset's endpoints are among the port's).
    for r in routes.iter().filter(|r| r.subset.is_none()) {
        for e in &r.endpoints {
            if let Some(chain) = endpoint_chain(r, e, &mut part.resources) {
                encode_chain_field(&chain, &mut part.endpoint_chains);
            }
        }
    }
    let mut both = part.route_chains.clone();
    both.extend_from_slice(&part.endpoint_chains);
    part.chains_hash = content_hash(&both);
    // Kept for the class's life: no spare capacity.
    part.route_chains.shrink_to_fit();
    part.endpoint_chains.shrink_to_fit();
    part
}

/// The listeners of the gateways of `ctx`'s cluster over every service's `parts` (in service
/// order): every route chain, then every per-endpoint chain, TLS passed through without
/// termination. No default chain: any other SNI (or none) gets its connection closed.
pub fn gateway_listeners<'a>(
    index: &MeshIndex,
    ctx: &ProxyContext,
    parts: impl Iterator<Item = &'a GatewayPart> + Clone,
) -> Resources {
    let mut out = Resources::default();
    let Some(spec) = index.mesh().cluster(&ctx.identity.cluster) else {
        return out;
    };
    if !parts.clone().any(GatewayPart::has_chains) {
        // Nothing exported: no listener at all (Envoy refuses a listener without filter
        // chains), so the gateway port refuses connections.
        return out;
    }
    let hashes: Vec<u64> = parts
        .clone()
        .filter(|p| p.has_chains())
        .map(|p| p.chains_hash)
        .collect();
    for gw in &spec.gateways {
        let name = format!("gateway|{gw}");
        let listener = listener::Listener {
            name: name.clone(),
            address: Some(socket_address(gw.address, gw.port)),
            listener_filters: vec![listener::ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".to_owned(),
                config_type: Some(listener::listener_filter::ConfigType::TypedConfig(
                    pack_any(tls_inspector::TlsInspector::default()),
                )),
                ..Default::default()
            }],
            listener_filters_timeout: Some(duration_ms(5000)),
            ..Default::default()
        };
        let mut any = pack_any(listener);
        for p in parts.clone() {
            any.value.extend_from_slice(&p.route_chains);
        }
        for p in parts.clone() {
            any.value.extend_from_slice(&p.endpoint_chains);
        }
        out.insert(
            TypeUrl::Listener,
            &name,
            any,
            &("gateway-listener", gw, &hashes),
        );
    }
    out
}

/// Builds the resources of the east-west gateways of `ctx`'s cluster: every service's
/// [`GatewayPart`] and the [`gateway_listeners`] over them.
pub fn gateway_resources(index: &MeshIndex, ctx: &ProxyContext) -> Resources {
    if index.mesh().cluster(&ctx.identity.cluster).is_none() {
        return Resources::default();
    }
    let parts: Vec<GatewayPart> = index
        .services()
        .keys()
        .map(|key| service_gateway_part(index, ctx, key))
        .collect();
    let mut out = gateway_listeners(index, ctx, parts.iter());
    for part in &parts {
        out.extend(&part.resources);
    }
    out
}

/// One exported service port (or one subset of it): its cluster and endpoints into `out`, and
/// its SNI filter chain.
fn route_chain(r: &GatewayRoute, out: &mut Resources) -> listener::FilterChain {
    let name = match &r.subset {
        None => outbound_cluster_name(&r.key, r.port.port),
        Some(subset) => route_cluster_name(&r.key, r.port.port, subset),
    };
    let metadata = causeway_metadata(&[("service", r.key.to_string())]);
    out.insert(
        TypeUrl::Cluster,
        &name,
        pack_any(gateway_cluster(&name, metadata)),
        &("gateway-cluster", &r.key, &r.port, &r.subset),
    );
    let groups = group_by_locality(&r.endpoints);
    out.insert(
        TypeUrl::ClusterLoadAssignment,
        &name,
        pack_any(load_assignment(&name, &groups, EndpointMetadata::Causeway)),
        &groups,
    );
    listener::FilterChain {
        name: r.sni.clone(),
        filter_chain_match: Some(listener::FilterChainMatch {
            server_names: vec![r.sni.clone()],
            ..Default::default()
        }),
        filters: vec![network_filter(
            "envoy.filters.network.tcp_proxy",
            tcp_proxy(&format!("gateway_{}", r.sni), &name),
        )],
        ..Default::default()
    }
}

/// One endpoint of an exported service port: a cluster holding only it, and the filter chain
/// its per-endpoint SNI selects. `None` when the endpoint has no such SNI.
fn endpoint_chain(
    r: &GatewayRoute,
    e: &ViewEndpoint,
    out: &mut Resources,
) -> Option<listener::FilterChain> {
    let sni = e.sni.as_ref()?;
    let name = format!("gateway_endpoint|{sni}");
    out.insert(
        TypeUrl::Cluster,
        &name,
        pack_any(single_endpoint_cluster(&name, e)),
        &("gateway-endpoint-cluster", &r.key, &r.port, e),
    );
    Some(listener::FilterChain {
        name: sni.clone(),
        filter_chain_match: Some(listener::FilterChainMatch {
            server_names: vec![sni.clone()],
            ..Default::default()
        }),
        filters: vec![network_filter(
            "envoy.filters.network.tcp_proxy",
            tcp_proxy(&format!("gateway_{sni}"), &name),
        )],
        ..Default::default()
    })
}
