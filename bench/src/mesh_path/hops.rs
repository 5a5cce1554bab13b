//! The single hops' bootstraps: one proxy with one outbound listener (the HTTP connection
//! manager the control plane gives outbound HTTP listeners, or a TCP proxy) and a STATIC
//! plaintext cluster of one endpoint, in the shapes `causeway_xds::build` emits so the Causeway
//! conversion accepts them as it accepts the control plane's.

use std::net::SocketAddr;
use std::path::Path;

use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3 as previous_hosts;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use envoy_types::util::pack_any;

use crate::config::{node, write, ProxySpec};

fn ms(ms: u64) -> Option<Duration> {
    Some(Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

fn socket_address(a: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// A single proxy: one outbound listener on `listen` (HTTP connection manager routing
/// everything to the cluster, as the control plane's outbound HTTP listeners, or a TCP proxy)
/// and a STATIC plaintext cluster of one endpoint, `backend`.
pub fn hop(
    dir: &Path,
    name: &'static str,
    listen: SocketAddr,
    backend: SocketAddr,
    http: bool,
    admin: SocketAddr,
) -> anyhow::Result<ProxySpec> {
    let cluster_name = format!("{name}|backend");
    let filter = if http {
        listener::Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(listener::filter::ConfigType::TypedConfig(pack_any(
                http_manager(name, &cluster_name),
            ))),
        }
    } else {
        listener::Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(listener::filter::ConfigType::TypedConfig(pack_any(
                tcp::TcpProxy {
                    stat_prefix: name.into(),
                    cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
                        cluster_name.clone(),
                    )),
                    idle_timeout: ms(3_600_000),
                    ..Default::default()
                },
            ))),
        }
    };
    let l = listener::Listener {
        name: format!("{name}|{listen}"),
        address: Some(socket_address(listen)),
        filter_chains: vec![listener::FilterChain {
            filters: vec![filter],
            ..Default::default()
        }],
        traffic_direction: core::TrafficDirection::Outbound as i32,
        ..Default::default()
    };
    let b = bootstrap::Bootstrap {
        node: Some(node(name, "bench")),
        admin: Some(bootstrap::Admin {
            address: Some(socket_address(admin)),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::bootstrap::StaticResources {
            listeners: vec![l],
            clusters: vec![static_cluster(&cluster_name, backend)],
            secrets: Vec::new(),
        }),
        ..Default::default()
    };
    write(dir, name, &b, admin)
}

fn static_cluster(name: &str, backend: SocketAddr) -> cluster::Cluster {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
    cluster::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: ms(1000),
        lb_policy: LbPolicy::RoundRobin as i32,
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(socket_address(backend)),
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

/// The control plane's outbound HTTP connection manager (`build::envoy::http_manager` with
/// `route_to(cluster, retries)`): one route for `/` with a 15 s timeout and retries on
/// connection failures to other hosts, the router filter, stream and header timeouts.
fn http_manager(stat_prefix: &str, cluster_name: &str) -> hcm::HttpConnectionManager {
    use hcm::http_connection_manager::{CodecType, RouteSpecifier};
    let retry_policy = route::RetryPolicy {
        retry_on: "connect-failure,refused-stream,reset,unavailable,gateway-error".into(),
        num_retries: Some(UInt32Value { value: 2 }),
        retry_host_predicate: vec![route::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(
                route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(pack_any(
                    previous_hosts::PreviousHostsPredicate {},
                )),
            ),
        }],
        host_selection_retry_max_attempts: 3,
        ..Default::default()
    };
    let routes = route::RouteConfiguration {
        name: cluster_name.into(),
        virtual_hosts: vec![route::VirtualHost {
            name: cluster_name.into(),
            domains: vec!["*".into()],
            routes: vec![route::Route {
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                        cluster_name.into(),
                    )),
                    timeout: ms(15_000),
                    retry_policy: Some(retry_policy),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    hcm::HttpConnectionManager {
        stat_prefix: stat_prefix.into(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(
                router::Router::default(),
            ))),
            ..Default::default()
        }],
        stream_idle_timeout: ms(300_000),
        request_headers_timeout: ms(10_000),
        ..Default::default()
    }
}
