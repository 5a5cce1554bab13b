//! Envoy v3 resources from views: a pure function of the mesh index and a proxy. Sidecars get
//! outbound listeners and EDS clusters for every visible service port (mTLS with the Istio SNI
//! and SAN verification), and inbound listeners that terminate mTLS and enforce authorization.
//! Gateways get one SNI filter chain per exported service port, passing TLS through.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use causeway_discovery::view::{self, GatewayRoute};
use causeway_discovery::{policy, LocalityGroup, MeshIndex, ProxyContext, ViewEndpoint, ViewPort};
use causeway_model::{AuthorizationPolicy, PolicyAction, PolicyRule, ServiceKey, ServicePort};
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3 as tls_inspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::extensions::rbac::principals::mtls_authenticated::v3 as mtls_principal;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3 as previous_hosts;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, Struct, UInt32Value, Value};
use envoy_types::util::pack_any;

use crate::node::ProxyNode;
use crate::resources::{Resources, TypeUrl};

/// Name of the bootstrap's static cluster that reaches `causeway agent`'s SDS socket.
pub const SDS_CLUSTER: &str = "sds-grpc";
/// SDS secret with the workload certificate and key.
pub const SECRET_CERT: &str = "default";
/// SDS secret with the trust bundle.
pub const SECRET_ROOT: &str = "ROOTCA";

/// Outbound cluster name, Istio's form: `outbound|<port>||<fqdn>`.
pub fn outbound_cluster_name(key: &ServiceKey, port: u16) -> String {
    format!("outbound|{port}||{}", key.fqdn())
}

fn duration_ms(ms: u64) -> Duration {
    Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn socket_address(ip: IpAddr, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                port,
            ))),
            ..Default::default()
        })),
    }
}

fn ads_source() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn sds_secret(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(core::ConfigSource {
            resource_api_version: core::ApiVersion::V3 as i32,
            config_source_specifier: Some(
                core::config_source::ConfigSourceSpecifier::ApiConfigSource(
                    core::ApiConfigSource {
                        api_type: core::api_config_source::ApiType::Grpc as i32,
                        transport_api_version: core::ApiVersion::V3 as i32,
                        grpc_services: vec![core::GrpcService {
                            target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                                core::grpc_service::EnvoyGrpc {
                                    cluster_name: SDS_CLUSTER.to_owned(),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }],
                        set_node_on_first_message_only: true,
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
    }
}

fn string_match(pattern: &str) -> matcher::StringMatcher {
    let match_pattern = match pattern.strip_suffix('*') {
        Some(prefix) => matcher::string_matcher::MatchPattern::Prefix(prefix.to_owned()),
        None => matcher::string_matcher::MatchPattern::Exact(pattern.to_owned()),
    };
    matcher::StringMatcher {
        match_pattern: Some(match_pattern),
        ignore_case: false,
    }
}

/// A URI SAN matched exactly, whatever characters it holds.
fn uri_san_exact(uri: &str) -> tls::SubjectAltNameMatcher {
    tls::SubjectAltNameMatcher {
        san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(uri.to_owned())),
            ignore_case: false,
        }),
        oid: String::new(),
    }
}

fn uri_san(pattern: &str) -> tls::SubjectAltNameMatcher {
    tls::SubjectAltNameMatcher {
        san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(string_match(pattern)),
        oid: String::new(),
    }
}

/// The TLS context every mesh connection uses: the workload certificate and the trust bundle
/// from SDS, TLS 1.3 only, and the peer's SPIFFE ID checked against `sans`.
fn common_tls(sans: Vec<tls::SubjectAltNameMatcher>, alpn: &[&str]) -> tls::CommonTlsContext {
    tls::CommonTlsContext {
        tls_params: Some(tls::TlsParameters {
            tls_minimum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
            tls_maximum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![sds_secret(SECRET_CERT)],
        validation_context_type: Some(
            tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                tls::common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(tls::CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds_secret(SECRET_ROOT)),
                    ..Default::default()
                },
            ),
        ),
        alpn_protocols: alpn.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn transport_socket(any: Any) -> core::TransportSocket {
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any)),
    }
}

fn network_filter(name: &str, any: Any) -> listener::Filter {
    listener::Filter {
        name: name.to_owned(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(any)),
    }
}

fn http_filter(name: &str, any: Any) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.to_owned(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    }
}

fn causeway_metadata(pairs: &[(&str, String)]) -> core::Metadata {
    let fields = pairs
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                Value {
                    kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                        v.clone(),
                    )),
                },
            )
        })
        .collect();
    core::Metadata {
        filter_metadata: HashMap::from([("causeway".to_owned(), Struct { fields })]),
        ..Default::default()
    }
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

/// Outlier detection on by default: without it Envoy never fails over between priorities.
fn outlier_detection() -> cluster::OutlierDetection {
    cluster::OutlierDetection {
        consecutive_5xx: u32v(3),
        consecutive_gateway_failure: u32v(2),
        enforcing_consecutive_gateway_failure: u32v(100),
        interval: Some(duration_ms(1000)),
        base_ejection_time: Some(duration_ms(5000)),
        max_ejection_percent: u32v(100),
        ..Default::default()
    }
}

fn eds_cluster(
    name: &str,
    transport: Option<core::TransportSocket>,
    metadata: core::Metadata,
) -> cluster::Cluster {
    cluster::Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: String::new(),
        }),
        connect_timeout: Some(duration_ms(1000)),
        lb_policy: cluster::cluster::LbPolicy::RoundRobin as i32,
        common_lb_config: Some(cluster::cluster::CommonLbConfig {
            // Never spray traffic at ejected endpoints: fail over to the next priority instead.
            healthy_panic_threshold: Some(Percent { value: 0.0 }),
            ..Default::default()
        }),
        outlier_detection: Some(outlier_detection()),
        transport_socket: transport,
        metadata: Some(metadata),
        ..Default::default()
    }
}

fn lb_endpoint(e: &ViewEndpoint) -> endpoint::LbEndpoint {
    endpoint::LbEndpoint {
        host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
            endpoint::Endpoint {
                address: Some(socket_address(e.address, e.port)),
                ..Default::default()
            },
        )),
        load_balancing_weight: u32v(e.weight.max(1)),
        metadata: Some(causeway_metadata(&[
            ("cluster", e.cluster.to_string()),
            ("network", e.network.to_string()),
            ("kind", format!("{:?}", e.kind).to_lowercase()),
        ])),
        ..Default::default()
    }
}

fn locality(l: &causeway_model::Locality) -> core::Locality {
    core::Locality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        sub_zone: l.subzone.clone().unwrap_or_default(),
    }
}

fn load_assignment(name: &str, groups: &[LocalityGroup]) -> endpoint::ClusterLoadAssignment {
    endpoint::ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: groups
            .iter()
            .map(|g| endpoint::LocalityLbEndpoints {
                locality: Some(locality(&g.locality)),
                lb_endpoints: g.endpoints.iter().map(lb_endpoint).collect(),
                priority: g.priority,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn route_to(cluster_name: &str, retries: bool) -> route::RouteConfiguration {
    let retry_policy = retries.then(|| route::RetryPolicy {
        retry_on: "connect-failure,refused-stream,reset,unavailable,gateway-error".to_owned(),
        num_retries: u32v(2),
        retry_host_predicate: vec![route::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_owned(),
            config_type: Some(
                route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(pack_any(
                    previous_hosts::PreviousHostsPredicate {},
                )),
            ),
        }],
        host_selection_retry_max_attempts: 3,
        ..Default::default()
    });
    route::RouteConfiguration {
        name: cluster_name.to_owned(),
        virtual_hosts: vec![route::VirtualHost {
            name: cluster_name.to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![route::Route {
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".to_owned())),
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                        cluster_name.to_owned(),
                    )),
                    timeout: Some(duration_ms(15_000)),
                    retry_policy,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn http_manager(
    stat_prefix: &str,
    routes: route::RouteConfiguration,
    mut filters: Vec<hcm::HttpFilter>,
    inbound: bool,
) -> Any {
    filters.push(http_filter(
        "envoy.filters.http.router",
        pack_any(router::Router::default()),
    ));
    let mut manager = hcm::HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            routes,
        )),
        http_filters: filters,
        stream_idle_timeout: Some(duration_ms(300_000)),
        request_headers_timeout: Some(duration_ms(10_000)),
        ..Default::default()
    };
    if inbound {
        // Tell the application who called: the caller's verified SPIFFE ID, never a header the
        // caller could forge.
        manager.forward_client_cert_details =
            hcm::http_connection_manager::ForwardClientCertDetails::SanitizeSet as i32;
        manager.set_current_client_cert_details =
            Some(hcm::http_connection_manager::SetCurrentClientCertDetails {
                uri: true,
                ..Default::default()
            });
    }
    pack_any(manager)
}

fn tcp_proxy(stat_prefix: &str, cluster_name: &str) -> Any {
    pack_any(tcp::TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
            cluster_name.to_owned(),
        )),
        idle_timeout: Some(duration_ms(3_600_000)),
        ..Default::default()
    })
}

/// A URI SAN that no certificate of the mesh carries: the CA issues only
/// `spiffe://<td>/ns/<namespace>/sa/<account>`. Stands for "accept nobody" on a port with no
/// endpoint (an empty SAN list would accept every certificate the trust bundle validates).
fn no_peer_san(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/causeway/no-endpoint-with-a-known-identity")
}

/// Expected SANs of a service port's endpoints: exactly the SPIFFE IDs of the endpoints the view
/// includes, each an exact match (never a prefix, so an identity is never widened). Views leave
/// out endpoints without a known identity, so there is nothing to widen for; a port with no
/// endpoint gets a SAN no certificate carries.
fn expected_sans(port: &ViewPort, trust_domain: &str) -> Vec<tls::SubjectAltNameMatcher> {
    if port.identities.is_empty() {
        return vec![uri_san_exact(&no_peer_san(trust_domain))];
    }
    port.identities
        .iter()
        .map(|id| uri_san_exact(&id.to_string()))
        .collect()
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

/// Each service's slot in the sidecar's outbound block.
pub fn sidecar_slots(index: &MeshIndex, node: &ProxyNode) -> BTreeMap<ServiceKey, u32> {
    node.outbound
        .map(|block| view::service_slots(index.services().keys(), block.capacity()))
        .unwrap_or_default()
}

/// A sidecar's inbound listeners and clusters (its own workload's ports and policies).
pub fn sidecar_inbound_resources(
    index: &MeshIndex,
    node: &ProxyNode,
    ctx: &ProxyContext,
) -> Resources {
    let mut out = Resources::default();
    inbound(index, node, ctx, &index.mesh().mesh.trust_domain, &mut out);
    out
}

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
    {
        for port in &service.ports {
            let name = outbound_cluster_name(&service.key, port.port.port);
            let upstream_tls = tls::UpstreamTlsContext {
                common_tls_context: Some(common_tls(
                    expected_sans(port, &trust_domain),
                    if is_http(&port.port) {
                        &["istio-peer-exchange", "istio"]
                    } else {
                        &[]
                    },
                )),
                sni: port.sni.clone(),
                ..Default::default()
            };
            let metadata = causeway_metadata(&[
                ("service", service.key.to_string()),
                ("sourceCluster", ctx.identity.cluster.to_string()),
            ]);
            let inputs = (
                "outbound-cluster",
                &service.key,
                &port.port,
                &port.sni,
                &port.identities,
                &trust_domain,
                &ctx.identity.cluster,
            );
            out.insert(
                TypeUrl::Cluster,
                &name,
                pack_any(eds_cluster(
                    &name,
                    Some(transport_socket(pack_any(upstream_tls))),
                    metadata,
                )),
                &inputs,
            );
            out.insert(
                TypeUrl::ClusterLoadAssignment,
                &name,
                pack_any(load_assignment(&name, &port.groups)),
                &port.groups,
            );
            let (Some(block), Some(slot)) = (node.outbound, slot) else {
                continue;
            };
            let address = block.address(slot);
            let listener_name = format!("outbound|{address}:{}|{}", port.port.port, service.key);
            let filter = if is_http(&port.port) {
                network_filter(
                    "envoy.filters.network.http_connection_manager",
                    http_manager(&name, route_to(&name, true), Vec::new(), false),
                )
            } else {
                network_filter("envoy.filters.network.tcp_proxy", tcp_proxy(&name, &name))
            };
            let listener = listener::Listener {
                name: listener_name.clone(),
                address: Some(socket_address(address, port.port.port)),
                filter_chains: vec![listener::FilterChain {
                    filters: vec![filter],
                    ..Default::default()
                }],
                traffic_direction: core::TrafficDirection::Outbound as i32,
                metadata: Some(causeway_metadata(&[("service", service.key.to_string())])),
                ..Default::default()
            };
            let inputs = ("outbound-listener", &service.key, &port.port, address);
            out.insert(
                TypeUrl::Listener,
                &listener_name,
                pack_any(listener),
                &inputs,
            );
        }
    }
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

fn inbound(
    index: &MeshIndex,
    node: &ProxyNode,
    ctx: &ProxyContext,
    trust_domain: &str,
    out: &mut Resources,
) {
    let Some(cluster) = index.cluster(&ctx.identity.cluster) else {
        return;
    };
    let Some(placement) = cluster.workloads.get(&(
        ctx.identity.namespace.clone(),
        ctx.identity.workload.clone(),
    )) else {
        return;
    };
    let app = node.app_address.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let policies = policy::inbound_policies(index, ctx);
    for (target_port, port) in inbound_ports(index, ctx) {
        let cluster_name = format!("inbound|{target_port}||");
        let static_cluster = cluster::Cluster {
            name: cluster_name.clone(),
            cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
                cluster::cluster::DiscoveryType::Static as i32,
            )),
            connect_timeout: Some(duration_ms(1000)),
            load_assignment: Some(endpoint::ClusterLoadAssignment {
                cluster_name: cluster_name.clone(),
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
        };
        out.insert(
            TypeUrl::Cluster,
            &cluster_name,
            pack_any(static_cluster),
            &("inbound-cluster", app, target_port),
        );
        let http = is_http(&port);
        let downstream_tls = tls::DownstreamTlsContext {
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
        };
        let stat = format!("inbound_{target_port}");
        let mut filters = Vec::new();
        if http {
            let http_filters = rbac_filters(&policies, trust_domain, true)
                .into_iter()
                .map(|(name, any)| http_filter(&name, any))
                .collect();
            filters.push(network_filter(
                "envoy.filters.network.http_connection_manager",
                http_manager(&stat, route_to(&cluster_name, false), http_filters, true),
            ));
        } else {
            for (name, any) in rbac_filters(&policies, trust_domain, false) {
                filters.push(network_filter(&name, any));
            }
            filters.push(network_filter(
                "envoy.filters.network.tcp_proxy",
                tcp_proxy(&stat, &cluster_name),
            ));
        }
        let name = format!("inbound|{}:{target_port}", placement.address);
        let listener = listener::Listener {
            name: name.clone(),
            address: Some(socket_address(placement.address, target_port)),
            filter_chains: vec![listener::FilterChain {
                filters,
                transport_socket: Some(transport_socket(pack_any(downstream_tls))),
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
            &port,
            &policies,
            trust_domain,
        );
        out.insert(TypeUrl::Listener, &name, pack_any(listener), &inputs);
    }
}

fn principal_any_of(mut ids: Vec<rbac::Principal>) -> rbac::Principal {
    if ids.len() == 1 {
        return ids.remove(0);
    }
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::OrIds(rbac::principal::Set {
            ids,
        })),
    }
}

fn principal_name(pattern: &str) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Authenticated(
            rbac::principal::Authenticated {
                principal_name: Some(string_match(pattern)),
            },
        )),
    }
}

fn permission_any_of(mut rules: Vec<rbac::Permission>) -> rbac::Permission {
    if rules.len() == 1 {
        return rules.remove(0);
    }
    rbac::Permission {
        rule: Some(rbac::permission::Rule::OrRules(rbac::permission::Set {
            rules,
        })),
    }
}

/// One Envoy RBAC policy for one rule. `None` when the rule cannot match on this listener
/// (an ALLOW rule with HTTP paths on a TCP port: Istio's conservative choice).
fn rbac_policy(
    rule: &PolicyRule,
    action: PolicyAction,
    trust_domain: &str,
    http: bool,
) -> Option<rbac::Policy> {
    let mut principals = Vec::new();
    if rule.from.is_empty() {
        principals.push(principal_name(&format!("spiffe://{trust_domain}/*")));
    }
    for src in &rule.from {
        let mut and = Vec::new();
        if !src.principals.is_empty() {
            and.push(principal_any_of(
                src.principals.iter().map(|p| principal_name(p)).collect(),
            ));
        }
        if !src.namespaces.is_empty() {
            and.push(principal_any_of(
                src.namespaces
                    .iter()
                    .map(|ns| principal_name(&format!("spiffe://{trust_domain}/ns/{ns}/sa/*")))
                    .collect(),
            ));
        }
        if !src.clusters.is_empty() {
            and.push(principal_any_of(
                src.clusters
                    .iter()
                    .map(|c| rbac::Principal {
                        identifier: Some(rbac::principal::Identifier::Custom(
                            core::TypedExtensionConfig {
                                name: "envoy.rbac.principals.mtls_authenticated".to_owned(),
                                typed_config: Some(pack_any(mtls_principal::Config {
                                    san_matcher: Some(tls::SubjectAltNameMatcher {
                                        san_type: tls::subject_alt_name_matcher::SanType::Dns
                                            as i32,
                                        matcher: Some(string_match(
                                            &c.certificate_san(trust_domain),
                                        )),
                                        oid: String::new(),
                                    }),
                                    any_validated_client_certificate: false,
                                })),
                            },
                        )),
                    })
                    .collect(),
            ));
        }
        if and.is_empty() {
            and.push(principal_name(&format!("spiffe://{trust_domain}/*")));
        }
        principals.push(if and.len() == 1 {
            and.remove(0)
        } else {
            rbac::Principal {
                identifier: Some(rbac::principal::Identifier::AndIds(rbac::principal::Set {
                    ids: and,
                })),
            }
        });
    }
    let mut permissions = Vec::new();
    if rule.to.is_empty() {
        permissions.push(rbac::Permission {
            rule: Some(rbac::permission::Rule::Any(true)),
        });
    }
    for target in &rule.to {
        let mut and = Vec::new();
        if !target.ports.is_empty() {
            and.push(permission_any_of(
                target
                    .ports
                    .iter()
                    .map(|p| rbac::Permission {
                        rule: Some(rbac::permission::Rule::DestinationPort(u32::from(*p))),
                    })
                    .collect(),
            ));
        }
        if !target.paths.is_empty() {
            if !http {
                match action {
                    PolicyAction::Allow => continue,
                    PolicyAction::Deny => {}
                }
            } else {
                and.push(permission_any_of(
                    target
                        .paths
                        .iter()
                        .map(|p| rbac::Permission {
                            rule: Some(rbac::permission::Rule::UrlPath(matcher::PathMatcher {
                                rule: Some(matcher::path_matcher::Rule::Path(string_match(p))),
                            })),
                        })
                        .collect(),
                ));
            }
        }
        if and.is_empty() {
            and.push(rbac::Permission {
                rule: Some(rbac::permission::Rule::Any(true)),
            });
        }
        permissions.push(if and.len() == 1 {
            and.remove(0)
        } else {
            rbac::Permission {
                rule: Some(rbac::permission::Rule::AndRules(rbac::permission::Set {
                    rules: and,
                })),
            }
        });
    }
    if permissions.is_empty() {
        return None;
    }
    Some(rbac::Policy {
        permissions,
        principals,
        ..Default::default()
    })
}

/// RBAC filters for a listener: a DENY filter (when any DENY policy applies), then an ALLOW
/// filter (when any ALLOW policy applies; with no matching rule it denies everything).
fn rbac_filters(
    policies: &[AuthorizationPolicy],
    trust_domain: &str,
    http: bool,
) -> Vec<(String, Any)> {
    let mut out = Vec::new();
    for action in [PolicyAction::Deny, PolicyAction::Allow] {
        let applicable: Vec<&AuthorizationPolicy> =
            policies.iter().filter(|p| p.action == action).collect();
        if applicable.is_empty() {
            continue;
        }
        let mut rbac_policies = HashMap::new();
        for p in applicable {
            for (i, rule) in p.rules.iter().enumerate() {
                if let Some(rp) = rbac_policy(rule, action, trust_domain, http) {
                    rbac_policies.insert(format!("{}/{}[{i}]", p.namespace, p.name), rp);
                }
            }
        }
        let rules = rbac::Rbac {
            action: match action {
                PolicyAction::Allow => rbac::rbac::Action::Allow as i32,
                PolicyAction::Deny => rbac::rbac::Action::Deny as i32,
            },
            policies: rbac_policies,
            ..Default::default()
        };
        let stat_prefix = format!("causeway_{}_", format!("{action:?}").to_lowercase());
        if http {
            out.push((
                "envoy.filters.http.rbac".to_owned(),
                pack_any(http_rbac::Rbac {
                    rules: Some(rules),
                    rules_stat_prefix: stat_prefix,
                    ..Default::default()
                }),
            ));
        } else {
            out.push((
                "envoy.filters.network.rbac".to_owned(),
                pack_any(net_rbac::Rbac {
                    rules: Some(rules),
                    stat_prefix,
                    ..Default::default()
                }),
            ));
        }
    }
    out
}

/// Builds an east-west gateway's resources for `gateway_address`: one filter chain per
/// exported service port, matched on SNI, passed through without terminating TLS. No default
/// chain: any other SNI (or none) gets its connection closed.
pub fn gateway_resources(index: &MeshIndex, ctx: &ProxyContext) -> Resources {
    let mut out = Resources::default();
    let Some(spec) = index.mesh().cluster(&ctx.identity.cluster) else {
        return out;
    };
    let routes: Vec<GatewayRoute> = view::gateway_routes(index, &ctx.identity.cluster);
    let mut chains = Vec::new();
    for r in &routes {
        let name = outbound_cluster_name(&r.key, r.port.port);
        let metadata = causeway_metadata(&[("service", r.key.to_string())]);
        out.insert(
            TypeUrl::Cluster,
            &name,
            pack_any(eds_cluster(&name, None, metadata)),
            &("gateway-cluster", &r.key, &r.port),
        );
        let groups = group_by_locality(&r.endpoints);
        out.insert(
            TypeUrl::ClusterLoadAssignment,
            &name,
            pack_any(load_assignment(&name, &groups)),
            &groups,
        );
        chains.push(listener::FilterChain {
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
        });
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
        let snis: Vec<&str> = routes.iter().map(|r| r.sni.as_str()).collect();
        out.insert(
            TypeUrl::Listener,
            &name,
            pack_any(listener),
            &("gateway-listener", gw, &snis),
        );
    }
    out
}

fn group_by_locality(endpoints: &[ViewEndpoint]) -> Vec<LocalityGroup> {
    let mut groups: BTreeMap<(u32, causeway_model::Locality), Vec<ViewEndpoint>> = BTreeMap::new();
    for e in endpoints {
        groups
            .entry((e.priority, e.locality.clone()))
            .or_default()
            .push(e.clone());
    }
    let raw: BTreeSet<u32> = groups.keys().map(|(p, _)| *p).collect();
    let renumber: BTreeMap<u32, u32> = raw.into_iter().zip(0u32..).collect();
    groups
        .into_iter()
        .map(|((p, locality), endpoints)| LocalityGroup {
            locality,
            priority: renumber.get(&p).copied().unwrap_or(0),
            endpoints,
        })
        .collect()
}

/// The outbound address a sidecar with `block` uses for `key` (for operators and the demo).
pub fn outbound_address(
    index: &MeshIndex,
    block: &crate::node::OutboundBlock,
    key: &ServiceKey,
) -> Option<IpAddr> {
    view::service_slots(index.services().keys(), block.capacity())
        .get(key)
        .map(|slot| block.address(*slot))
}

/// What a service's sidecar resources were built from. Holding the `Arc`s (not addresses)
/// keeps them alive, so pointer equality means "unchanged".
struct ServiceInputs {
    merged: std::sync::Arc<causeway_discovery::MeshService>,
    entries: Vec<Option<std::sync::Arc<causeway_discovery::ClusterService>>>,
    slot: Option<u32>,
}

impl ServiceInputs {
    fn of(
        index: &MeshIndex,
        key: &ServiceKey,
        merged: &std::sync::Arc<causeway_discovery::MeshService>,
        slot: Option<u32>,
    ) -> Self {
        Self {
            merged: std::sync::Arc::clone(merged),
            entries: index
                .clusters()
                .values()
                .map(|c| c.services.get(key).cloned())
                .collect(),
            slot,
        }
    }

    fn same(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.merged, &other.merged)
            && self.slot == other.slot
            && self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                })
    }
}

/// One sidecar's resources across builds: a change to one service rebuilds only that
/// service's resources, not the proxy's whole view. Same output as [`sidecar_resources`].
#[derive(Default)]
pub struct SidecarCache {
    mesh: Option<std::sync::Arc<causeway_model::MeshConfig>>,
    ctx: Option<ProxyContext>,
    services: std::collections::HashMap<ServiceKey, (ServiceInputs, Resources)>,
    rebuilt: usize,
}

impl SidecarCache {
    /// The sidecar's resources for `index`.
    pub fn build(&mut self, index: &MeshIndex, node: &ProxyNode, ctx: &ProxyContext) -> Resources {
        let mesh_same = self
            .mesh
            .as_ref()
            .is_some_and(|m| std::sync::Arc::ptr_eq(m, index.mesh()));
        if !mesh_same || self.ctx.as_ref() != Some(ctx) {
            self.services.clear();
            self.mesh = Some(std::sync::Arc::clone(index.mesh()));
            self.ctx = Some(ctx.clone());
        }
        let slots = sidecar_slots(index, node);
        let mut desired = sidecar_inbound_resources(index, node, ctx);
        self.rebuilt = 0;
        for (key, merged) in index.services() {
            let inputs = ServiceInputs::of(index, key, merged, slots.get(key).copied());
            let fresh = self
                .services
                .get(key)
                .is_none_or(|(seen, _)| !seen.same(&inputs));
            if fresh {
                let mut r = Resources::default();
                sidecar_service_resources(index, node, ctx, key, inputs.slot, &mut r);
                self.services.insert(key.clone(), (inputs, r));
                self.rebuilt += 1;
            }
            if let Some((_, r)) = self.services.get(key) {
                desired.extend(r);
            }
        }
        self.services
            .retain(|k, _| index.services().contains_key(k));
        tracing::debug!(node = %node.id, rebuilt = self.rebuilt, services = index.services().len(), "sidecar resources built");
        desired
    }

    /// Services rebuilt by the last [`Self::build`].
    pub fn rebuilt(&self) -> usize {
        self.rebuilt
    }

    /// The cached resources of one service.
    pub fn cached(&self, key: &ServiceKey) -> Option<&Resources> {
        self.services.get(key).map(|(_, r)| r)
    }
}
