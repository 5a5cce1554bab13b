//! A sidecar's inbound side: one listener per port of its own workload that terminates mesh
//! mTLS (a client certificate of the trust domain required), enforces the workload's
//! authorization policies as RBAC, and forwards to the app through a static cluster; and, for
//! a sidecar in a network namespace, the capture listener of its redirected outbound traffic.

use std::collections::BTreeMap;
use std::net::IpAddr;

use causeway_discovery::{policy, MeshIndex, ProxyContext, WorkloadPlacement};
use causeway_model::{AuthorizationPolicy, ServicePort};
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use super::envoy::{
    duration_ms, http_filter, http_manager, inbound_tcp_proxy, network_filter, route_to,
    socket_address, transport_socket,
};
use super::is_http;
use super::rbac::rbac_filters;
use super::tls::{common_tls, uri_san};
use crate::node::ProxyNode;
use crate::resources::{Resources, TypeUrl};

/// A sidecar's inbound listeners and clusters (its own workload's ports and policies).
pub fn sidecar_inbound_resources(
    index: &MeshIndex,
    node: &ProxyNode,
    ctx: &ProxyContext,
) -> Resources {
    sidecar_inbound_from(&InboundInputs::of(index, ctx), node)
}

/// What a sidecar's inbound resources are built from besides its node: a session rebuilds them
/// only when these differ, not whenever anything in its cluster changed.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundInputs {
    trust_domain: String,
    placement: Option<WorkloadPlacement>,
    ports: BTreeMap<u16, ServicePort>,
    policies: Vec<AuthorizationPolicy>,
}

impl InboundInputs {
    /// The inputs of the proxy of `ctx` in `index`.
    pub fn of(index: &MeshIndex, ctx: &ProxyContext) -> Self {
        let placement = index.cluster(&ctx.identity.cluster).and_then(|c| {
            c.workloads
                .get(&(
                    ctx.identity.namespace.clone(),
                    ctx.identity.workload.clone(),
                ))
                .cloned()
        });
        Self {
            trust_domain: index.mesh().mesh.trust_domain.clone(),
            ports: placement
                .as_ref()
                .map(|_| inbound_ports(index, ctx))
                .unwrap_or_default(),
            policies: placement
                .as_ref()
                .map(|_| policy::inbound_policies(index, ctx))
                .unwrap_or_default(),
            placement,
        }
    }
}

/// A sidecar's inbound resources from their inputs.
pub fn sidecar_inbound_from(inputs: &InboundInputs, node: &ProxyNode) -> Resources {
    let mut out = Resources::default();
    inbound(inputs, node, &mut out);
    capture(node, &mut out);
    out
}

/// Where captured connections without a listener for their original destination go: a
/// cluster without endpoints, so they are closed (never passed through to the outside).
const BLACKHOLE: &str = "BlackHoleCluster";

/// The capture listener of a sidecar in a network namespace (`--capture-port`): iptables
/// redirects the app's connections to the outbound block to this loopback port, and the
/// listener hands each one to the outbound listener of its original destination (Envoy's
/// `use_original_dst`); a destination without a listener is closed.
fn capture(node: &ProxyNode, out: &mut Resources) {
    let Some(port) = node.outbound.and_then(|b| b.capture_port) else {
        return;
    };
    let cluster = cluster::Cluster {
        name: BLACKHOLE.to_owned(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration_ms(1000)),
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: BLACKHOLE.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    out.insert(
        TypeUrl::Cluster,
        BLACKHOLE,
        pack_any(cluster),
        &("blackhole-cluster",),
    );
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let name = format!("capture|{loopback}:{port}");
    let listener = listener::Listener {
        name: name.clone(),
        address: Some(socket_address(loopback, port)),
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![listener::FilterChain {
            filters: vec![network_filter(
                "envoy.filters.network.tcp_proxy",
                super::envoy::tcp_proxy("capture_unmatched", BLACKHOLE),
            )],
            ..Default::default()
        }],
        traffic_direction: core::TrafficDirection::Outbound as i32,
        ..Default::default()
    };
    out.insert(
        TypeUrl::Listener,
        &name,
        pack_any(listener),
        &("capture-listener", port),
    );
}

/// The proxy's own workload ports: every target port of a Service of its cluster that selects
/// it, with that port's protocol.
fn inbound_ports(index: &MeshIndex, ctx: &ProxyContext) -> BTreeMap<u16, ServicePort> {
    let mut ports = BTreeMap::new();
    let Some(cluster) = index.cluster(&ctx.identity.cluster) else {
        return ports;
    };
    for (key, entry) in &cluster.services {
        if key.namespace != ctx.identity.namespace {
            continue;
        }
        for pe in &entry.ports {
            for e in &pe.endpoints {
                if e.workload.as_deref() == Some(ctx.identity.workload.as_str()) {
                    ports.entry(e.port).or_insert_with(|| pe.port.clone());
                }
            }
        }
    }
    ports
}

fn inbound(inputs: &InboundInputs, node: &ProxyNode, out: &mut Resources) {
    let Some(placement) = &inputs.placement else {
        return;
    };
    let (trust_domain, policies) = (inputs.trust_domain.as_str(), &inputs.policies);
    let app = node.app_address.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    for (&target_port, port) in &inputs.ports {
        let cluster_name = format!("inbound|{target_port}||");
        out.insert(
            TypeUrl::Cluster,
            &cluster_name,
            pack_any(app_cluster(&cluster_name, app, target_port)),
            &("inbound-cluster", app, target_port),
        );
        let name = format!("inbound|{}:{target_port}", placement.address);
        let listener = listener::Listener {
            name: name.clone(),
            address: Some(socket_address(placement.address, target_port)),
            filter_chains: vec![listener::FilterChain {
                filters: inbound_filters(policies, trust_domain, target_port, port),
                transport_socket: Some(transport_socket(pack_any(downstream_tls(
                    trust_domain,
                    is_http(port),
                )))),
                transport_socket_connect_timeout: Some(duration_ms(10_000)),
                ..Default::default()
            }],
            traffic_direction: core::TrafficDirection::Inbound as i32,
            ..Default::default()
        };
        let inputs = (
            "inbound-listener",
            placement.address,
            target_port,
            port,
            policies,
            trust_domain,
        );
        out.insert(TypeUrl::Listener, &name, pack_any(listener), &inputs);
    }
}

/// The static cluster that reaches the app on `target_port`.
fn app_cluster(name: &str, app: IpAddr, target_port: u16) -> cluster::Cluster {
    cluster::Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration_ms(1000)),
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(socket_address(app, target_port)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Mesh mTLS terminated: a client certificate of the trust domain is required.
fn downstream_tls(trust_domain: &str, http: bool) -> tls::DownstreamTlsContext {
    tls::DownstreamTlsContext {
        common_tls_context: Some(common_tls(
            vec![uri_san(&format!("spiffe://{trust_domain}/*"))],
            if http {
                &["istio-peer-exchange", "istio", "h2", "http/1.1"]
            } else {
                &[]
            },
        )),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// The filters of an inbound port: RBAC in an HTTP connection manager for HTTP ports, or RBAC
/// network filters before the TCP proxy.
fn inbound_filters(
    policies: &[AuthorizationPolicy],
    trust_domain: &str,
    target_port: u16,
    port: &ServicePort,
) -> Vec<listener::Filter> {
    let cluster_name = format!("inbound|{target_port}||");
    let stat = format!("inbound_{target_port}");
    let mut filters = Vec::new();
    if is_http(port) {
        let http_filters = rbac_filters(policies, trust_domain, true)
            .into_iter()
            .map(|(name, any)| http_filter(&name, any))
            .collect();
        filters.push(network_filter(
            "envoy.filters.network.http_connection_manager",
            http_manager(&stat, route_to(&cluster_name, false), http_filters, true),
        ));
    } else {
        for (name, any) in rbac_filters(policies, trust_domain, false) {
            filters.push(network_filter(&name, any));
        }
        filters.push(network_filter(
            "envoy.filters.network.tcp_proxy",
            inbound_tcp_proxy(&stat, &cluster_name),
        ));
    }
    filters
}
