//! A sidecar's resources for one service: per visible port, an EDS cluster with upstream mTLS
//! (Istio SNI, exact SAN check), its endpoints, and an outbound listener at the service's slot.

use std::collections::{BTreeMap, BTreeSet};

use causeway_discovery::view::{self, ViewService};
use causeway_discovery::{
    EndpointKind, LocalityGroup, MeshIndex, ProxyContext, ViewEndpoint, ViewPort, ViewRoute,
};
use causeway_model::{Locality, OutlierDetection, ServiceKey, SpiffeId, TrafficPolicy};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::util::pack_any;

use super::eds::{eds_cluster_with, load_assignment, with_gateway_health_check, EndpointMetadata};
use super::envoy::{
    causeway_metadata, http_manager, network_filter, outbound_route, socket_address, tcp_proxy_to,
    transport_socket, RouteSettings, Upstream,
};
use super::tls::{common_tls, expected_sans};
use super::{is_http, outbound_cluster_name, route_cluster_name, LOAD_BALANCER_KEY, PEAK_EWMA};
use crate::node::{DataPlane, ProxyNode};
use crate::resources::{Resources, TypeUrl};

/// A sidecar's resources for one service (cluster, endpoints and outbound listener per port),
/// nothing when the service is not visible to it. A pure function of the merged service, its
/// per-cluster entries, the mesh settings, the proxy and the slot: what the xDS server caches.
pub fn sidecar_service_resources(
    index: &MeshIndex,
    node: &ProxyNode,
    ctx: &ProxyContext,
    key: &ServiceKey,
    slot: Option<u32>,
    out: &mut Resources,
) {
    let trust_domain = index.mesh().mesh.trust_domain.clone();
    let Some(service) = view::view_service(index, ctx, key) else {
        return;
    };
    let policy = TrafficPolicy::select(index.traffic_policies(), key, &ctx.identity.cluster);
    let settings = RouteSettings {
        retries: policy.and_then(|p| p.retries.as_ref()),
        timeout: policy.and_then(|p| p.timeout),
    };
    let outlier = policy
        .and_then(|p| p.outlier_detection.clone())
        .unwrap_or_default();
    for port in &service.ports {
        let whole = Destination::port(&service.key, port);
        let on = (node, ctx);
        outbound_cluster(&service, port, &whole, on, &outlier, &trust_domain, out);
        // Every route keeps its cluster, weight 0 included: a switch of weights then changes
        // only the listener's route, never which clusters exist.
        let mut split = Vec::new();
        for route in &port.routes {
            let dest = Destination::route(&service.key, port, route);
            outbound_cluster(&service, port, &dest, on, &outlier, &trust_domain, out);
            if route.weight > 0 {
                split.push((dest.name, route.weight));
            }
        }
        let upstream = match split.as_slice() {
            [] => Upstream::Cluster(whole.name.clone()),
            [(only, _)] => Upstream::Cluster(only.clone()),
            _ => Upstream::Weighted(split),
        };
        if let (Some(_), Some(slot)) = (node.outbound, slot) {
            outbound_listener(&service, port, node, (slot, settings, &upstream), out);
        }
    }
}

/// One xDS cluster of a service port: the port's endpoints, or a policy route's.
struct Destination<'a> {
    name: String,
    sni: &'a str,
    identities: &'a BTreeSet<SpiffeId>,
    groups: &'a [LocalityGroup],
    remote: &'a [ViewEndpoint],
}

impl<'a> Destination<'a> {
    fn port(key: &ServiceKey, port: &'a ViewPort) -> Self {
        Self {
            name: outbound_cluster_name(key, port.port.port),
            sni: &port.sni,
            identities: &port.identities,
            groups: &port.groups,
            remote: &port.remote,
        }
    }

    fn route(key: &ServiceKey, port: &ViewPort, route: &'a ViewRoute) -> Self {
        Self {
            name: route_cluster_name(key, port.port.port, &route.name),
            sni: &route.sni,
            identities: &route.identities,
            groups: &route.groups,
            remote: &route.remote,
        }
    }
}

/// The EDS cluster of one destination of a service port and its load assignment.
fn outbound_cluster(
    service: &ViewService,
    port: &ViewPort,
    dest: &Destination<'_>,
    (node, ctx): (&ProxyNode, &ProxyContext),
    outlier: &OutlierDetection,
    trust_domain: &str,
    out: &mut Resources,
) {
    let name = &dest.name;
    let upstream_tls = tls::UpstreamTlsContext {
        common_tls_context: Some(common_tls(
            expected_sans(dest.identities, trust_domain),
            if is_http(&port.port) {
                &["istio-peer-exchange", "istio"]
            } else {
                &[]
            },
        )),
        sni: dest.sni.to_owned(),
        ..Default::default()
    };
    let mut metadata = vec![
        ("service", service.key.to_string()),
        ("sourceCluster", ctx.identity.cluster.to_string()),
    ];
    let causeway = node.data_plane == DataPlane::Causeway;
    // Weights a policy set between clusters are the user's split: round robin honours them
    // exactly, where the latency balancer would move traffic off the slower cluster.
    let weighted = port.policy.as_ref().is_some_and(|p| p.weighted);
    if causeway && !weighted {
        metadata.push((LOAD_BALANCER_KEY, PEAK_EWMA.to_owned()));
    }
    let metadata = causeway_metadata(&metadata);
    let inputs = (
        "outbound-cluster",
        (&service.key, &port.port, name),
        dest.sni,
        dest.identities,
        trust_domain,
        &ctx.identity.cluster,
        node.data_plane,
        weighted,
        outlier,
    );
    out.insert(
        TypeUrl::Cluster,
        name,
        pack_any(with_gateway_health_check(eds_cluster_with(
            name,
            Some(transport_socket(pack_any(upstream_tls))),
            metadata,
            outlier,
        ))),
        &inputs,
    );
    let groups = contiguous(if causeway {
        per_endpoint_groups(dest.groups, dest.remote)
    } else {
        dest.groups.to_vec()
    });
    let metadata = if causeway {
        EndpointMetadata::Causeway
    } else {
        EndpointMetadata::GatewaysOnly
    };
    out.insert(
        TypeUrl::ClusterLoadAssignment,
        name,
        pack_any(load_assignment(name, &groups, metadata)),
        &(&groups, metadata == EndpointMetadata::Causeway),
    );
}

/// The groups of a Causeway proxy's load assignment: each gateway aggregate replaced by the
/// pods behind it (each at the gateway's address with its own SNI), so the proxy balances and
/// ejects pods, not whole remote clusters. An aggregate stays when any pod behind it has no
/// per-endpoint SNI (its gateway is not its own cluster's, so no gateway routes one).
fn per_endpoint_groups(groups: &[LocalityGroup], remote: &[ViewEndpoint]) -> Vec<LocalityGroup> {
    let behind = |g: &LocalityGroup, gateway: &ViewEndpoint| -> Vec<ViewEndpoint> {
        remote
            .iter()
            .filter(|r| {
                r.locality == g.locality
                    && r.via
                        .is_some_and(|v| (v.address, v.port) == (gateway.address, gateway.port))
            })
            .cloned()
            .collect()
    };
    // Each pod at its own priority (under `failoverPriority` it may rank apart from its
    // aggregate).
    let mut regrouped: BTreeMap<(u32, Locality), Vec<ViewEndpoint>> = BTreeMap::new();
    for g in groups {
        for e in &g.endpoints {
            let pods = if e.kind == EndpointKind::Gateway {
                behind(g, e)
            } else {
                Vec::new()
            };
            if pods.is_empty() || pods.iter().any(|p| p.sni.is_none()) {
                regrouped
                    .entry((g.priority, g.locality.clone()))
                    .or_default()
                    .push(e.clone());
            } else {
                for p in pods {
                    regrouped
                        .entry((p.priority, p.locality.clone()))
                        .or_default()
                        .push(p);
                }
            }
        }
    }
    regrouped
        .into_iter()
        .map(|((priority, locality), endpoints)| LocalityGroup {
            locality,
            priority,
            endpoints,
        })
        .collect()
}

/// The groups with their priorities numbered 0, 1, 2, ... in order: a view's numbering may skip
/// one that only pods behind a gateway have (see `per_endpoint_groups`), and a load assignment
/// names priorities without gaps.
fn contiguous(mut groups: Vec<LocalityGroup>) -> Vec<LocalityGroup> {
    let present: BTreeSet<u32> = groups.iter().map(|g| g.priority).collect();
    let renumber: BTreeMap<u32, u32> = present.into_iter().zip(0u32..).collect();
    for g in &mut groups {
        g.priority = renumber.get(&g.priority).copied().unwrap_or(g.priority);
        for e in &mut g.endpoints {
            e.priority = g.priority;
        }
    }
    groups
}

/// The outbound listener of one service port at the service's slot in the proxy's block.
fn outbound_listener(
    service: &ViewService,
    port: &ViewPort,
    node: &ProxyNode,
    (slot, settings, upstream): (u32, RouteSettings<'_>, &Upstream),
    out: &mut Resources,
) {
    let Some(block) = node.outbound else {
        return;
    };
    let name = outbound_cluster_name(&service.key, port.port.port);
    let address = block.address(slot);
    let listener_name = format!("outbound|{address}:{}|{}", port.port.port, service.key);
    let filter = if is_http(&port.port) {
        network_filter(
            "envoy.filters.network.http_connection_manager",
            http_manager(&name, outbound_route(upstream, settings), Vec::new(), false),
        )
    } else {
        network_filter(
            "envoy.filters.network.tcp_proxy",
            tcp_proxy_to(&name, upstream),
        )
    };
    // Captured traffic reaches this listener through the capture listener, which hands each
    // connection over by its original destination; nothing binds the service address.
    let bind_to_port = block
        .capture_port
        .map(|_| envoy_types::pb::google::protobuf::BoolValue { value: false });
    let listener = listener::Listener {
        name: listener_name.clone(),
        address: Some(socket_address(address, port.port.port)),
        bind_to_port,
        filter_chains: vec![listener::FilterChain {
            filters: vec![filter],
            ..Default::default()
        }],
        traffic_direction: core::TrafficDirection::Outbound as i32,
        metadata: Some(causeway_metadata(&[("service", service.key.to_string())])),
        ..Default::default()
    };
    let inputs = (
        "outbound-listener",
        &service.key,
        &port.port,
        address,
        block.capture_port,
        settings,
        upstream,
    );
    out.insert(
        TypeUrl::Listener,
        &listener_name,
        pack_any(listener),
        &inputs,
    );
}
