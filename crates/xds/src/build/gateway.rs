//! East-west gateways: one SNI filter chain per exported service port of the gateway's
//! cluster, one per `TrafficPolicy` subset routed to, and one per ready endpoint of it (the per-endpoint SNI Causeway proxies balance
//! pods with), TLS passed through (never terminated).

use causeway_discovery::view::{self, GatewayRoute};
use causeway_discovery::ViewEndpoint;
use causeway_discovery::{MeshIndex, ProxyContext};
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3 as tls_inspector;
use envoy_types::util::pack_any;

use super::eds::{gateway_cluster, group_by_locality, load_assignment, single_endpoint_cluster};
use super::envoy::{causeway_metadata, duration_ms, network_filter, socket_address, tcp_proxy};
use super::{outbound_cluster_name, route_cluster_name};
use crate::resources::{Resources, TypeUrl};

/// Builds an east-west gateway's resources for `gateway_address`: one filter chain per
/// exported service port, matched on SNI, passed through without terminating TLS. No default
/// chain: any other SNI (or none) gets its connection closed.
pub fn gateway_resources(index: &MeshIndex, ctx: &ProxyContext) -> Resources {
    let mut out = Resources::default();
    let Some(spec) = index.mesh().cluster(&ctx.identity.cluster) else {
        return out;
    };
    let routes: Vec<GatewayRoute> = view::gateway_routes(index, &ctx.identity.cluster);
    let mut chains: Vec<listener::FilterChain> =
        routes.iter().map(|r| route_chain(r, &mut out)).collect();
    let mut snis: Vec<&str> = routes.iter().map(|r| r.sni.as_str()).collect();
    // Per-endpoint chains once per port (a subset's endpoints are among the port's).
    for r in routes.iter().filter(|r| r.subset.is_none()) {
        for e in &r.endpoints {
            if let Some(chain) = endpoint_chain(r, e, &mut out) {
                chains.push(chain);
            }
            snis.extend(e.sni.as_deref());
        }
    }
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
