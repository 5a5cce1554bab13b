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

use super::eds::{gateway_cluster, group_by_locality, load_assignment, single_endpoint_cluster};
use super::envoy::{causeway_metadata, duration_ms, network_filter, socket_address, tcp_proxy};
use super::{outbound_cluster_name, route_cluster_name};
use crate::resources::{Resources, TypeUrl};

/// What one service adds to its cluster's east-west gateway: the clusters and load
/// assignments of its routes, their SNI filter chains, and the chains of its per-endpoint
/// SNIs. A gateway's resources are these for every service plus listeners holding all the
/// chains, so a change to one service rebuilds its part and, only when its chains changed,
/// the listeners.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GatewayPart {
    /// Clusters and load assignments.
    pub resources: Resources,
    route_chains: Vec<listener::FilterChain>,
    endpoint_chains: Vec<listener::FilterChain>,
    route_snis: Vec<String>,
    endpoint_snis: Vec<String>,
}

impl GatewayPart {
    /// Whether the service adds filter chains (or SNIs) different from `other`'s.
    pub fn chains_differ(&self, other: &GatewayPart) -> bool {
        self.route_snis != other.route_snis
            || self.endpoint_snis != other.endpoint_snis
            || self.route_chains != other.route_chains
            || self.endpoint_chains != other.endpoint_chains
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
        part.route_chains.push(route_chain(r, &mut part.resources));
        part.route_snis.push(r.sni.clone());
    }
    // Per-endpoint chains once per port (a subset's endpoints are among the port's).
    for r in routes.iter().filter(|r| r.subset.is_none()) {
        for e in &r.endpoints {
            if let Some(chain) = endpoint_chain(r, e, &mut part.resources) {
                part.endpoint_chains.push(chain);
            }
            part.endpoint_snis.extend(e.sni.iter().cloned());
        }
    }
    part
}

/// The listeners of the gateways of `ctx`'s cluster over every service's `parts` (in service
/// order): one SNI filter chain per exported service port, subset and endpoint, TLS passed
/// through without termination. No default chain: any other SNI (or none) gets its
/// connection closed.
pub fn gateway_listeners<'a>(
    index: &MeshIndex,
    ctx: &ProxyContext,
    parts: impl Iterator<Item = &'a GatewayPart> + Clone,
) -> Resources {
    let mut out = Resources::default();
    let Some(spec) = index.mesh().cluster(&ctx.identity.cluster) else {
        return out;
    };
    let chains: Vec<listener::FilterChain> = parts
        .clone()
        .flat_map(|p| p.route_chains.iter())
        .chain(parts.clone().flat_map(|p| p.endpoint_chains.iter()))
        .cloned()
        .collect();
    let snis: Vec<&str> = parts
        .clone()
        .flat_map(|p| p.route_snis.iter())
        .chain(parts.flat_map(|p| p.endpoint_snis.iter()))
        .map(String::as_str)
        .collect();
    if chains.is_empty() {
        // Nothing exported: no listener at all (Envoy refuses a listener without filter
        // chains), so the gateway port refuses connections.
        return out;
    }
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
            filter_chains: chains.clone(),
            ..Default::default()
        };
        out.insert(
            TypeUrl::Listener,
            &name,
            pack_any(listener),
            &("gateway-listener", gw, &snis),
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
        pack_any(load_assignment(&name, &groups)),
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
