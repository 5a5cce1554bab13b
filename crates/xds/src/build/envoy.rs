//! Small Envoy message constructors shared by the builders: addresses, config sources, string
//! matchers, filters, metadata, the HTTP connection manager, routes and the TCP proxy.

use std::collections::HashMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3 as previous_hosts;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{Any, Duration, Struct, UInt32Value, Value};
use envoy_types::util::pack_any;

pub(super) fn duration_ms(ms: u64) -> Duration {
    Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub(super) fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

pub(super) fn socket_address(ip: IpAddr, port: u16) -> core::Address {
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

pub(super) fn ads_source() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// Exact, or a prefix when the pattern ends in `*` (the policies' and SAN checks' form).
pub(super) fn string_match(pattern: &str) -> matcher::StringMatcher {
    let match_pattern = match pattern.strip_suffix('*') {
        Some(prefix) => matcher::string_matcher::MatchPattern::Prefix(prefix.to_owned()),
        None => matcher::string_matcher::MatchPattern::Exact(pattern.to_owned()),
    };
    matcher::StringMatcher {
        match_pattern: Some(match_pattern),
        ignore_case: false,
    }
}

pub(super) fn transport_socket(any: Any) -> core::TransportSocket {
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any)),
    }
}

pub(super) fn network_filter(name: &str, any: Any) -> listener::Filter {
    listener::Filter {
        name: name.to_owned(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(any)),
    }
}

pub(super) fn http_filter(name: &str, any: Any) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.to_owned(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    }
}

pub(super) fn causeway_metadata(pairs: &[(&str, String)]) -> core::Metadata {
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

/// How an outbound route retries and times out: the mesh's defaults, or a service's
/// `TrafficPolicy`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(super) struct RouteSettings<'a> {
    pub retries: Option<&'a causeway_model::RetryPolicy>,
    pub timeout: Option<std::time::Duration>,
}

/// The default route timeout (retries included).
const ROUTE_TIMEOUT_MS: u64 = 15_000;

/// Where an outbound listener's requests or connections go: the service port's cluster, or a
/// `TrafficPolicy`'s routes by weight (percent, each above 0).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub(super) enum Upstream {
    Cluster(String),
    Weighted(Vec<(String, u32)>),
}

impl Upstream {
    /// The name stats and the listener's route configuration go by.
    fn first(&self) -> &str {
        match self {
            Upstream::Cluster(c) => c,
            Upstream::Weighted(w) => w.first().map_or("", |(c, _)| c.as_str()),
        }
    }
}

/// The outbound route to `upstream` with `settings`.
pub(super) fn outbound_route(
    upstream: &Upstream,
    settings: RouteSettings<'_>,
) -> route::RouteConfiguration {
    let mut config = route_to(upstream.first(), true);
    let Some(action) = config
        .virtual_hosts
        .first_mut()
        .and_then(|v| v.routes.first_mut())
        .and_then(|r| match &mut r.action {
            Some(route::route::Action::Route(a)) => Some(a),
            _ => None,
        })
    else {
        return config;
    };
    if let Upstream::Weighted(split) = upstream {
        action.cluster_specifier = Some(route::route_action::ClusterSpecifier::WeightedClusters(
            route::WeightedCluster {
                clusters: split
                    .iter()
                    .map(|(name, weight)| route::weighted_cluster::ClusterWeight {
                        name: name.clone(),
                        weight: u32v(*weight),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        ));
    }
    if let Some(t) = settings.timeout {
        action.timeout = Some(duration_ms(t.as_millis() as u64));
    }
    if let Some(r) = settings.retries {
        match (r.attempts, action.retry_policy.as_mut()) {
            (0, _) => action.retry_policy = None,
            (n, Some(p)) => {
                p.num_retries = u32v(n);
                if !r.retry_on.is_empty() {
                    p.retry_on = r.retry_on.join(",");
                }
                p.per_try_timeout = r.per_try_timeout.map(|t| duration_ms(t.as_millis() as u64));
            }
            (_, None) => {}
        }
    }
    config
}

pub(super) fn route_to(cluster_name: &str, retries: bool) -> route::RouteConfiguration {
    let retry_policy = retries.then(|| route::RetryPolicy {
        retry_on: causeway_model::RetryPolicy::DEFAULT_RETRY_ON.join(","),
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
                    timeout: Some(duration_ms(ROUTE_TIMEOUT_MS)),
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

pub(super) fn http_manager(
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

pub(super) fn tcp_proxy(stat_prefix: &str, cluster_name: &str) -> Any {
    pack_any(tcp::TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
            cluster_name.to_owned(),
        )),
        idle_timeout: Some(duration_ms(3_600_000)),
        ..Default::default()
    })
}

/// The TCP proxy of an outbound port: to one cluster, or to a policy's routes by weight.
pub(super) fn tcp_proxy_to(stat_prefix: &str, upstream: &Upstream) -> Any {
    let split = match upstream {
        Upstream::Cluster(c) => return tcp_proxy(stat_prefix, c),
        Upstream::Weighted(split) => split,
    };
    pack_any(tcp::TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(
            tcp::tcp_proxy::WeightedCluster {
                clusters: split
                    .iter()
                    .map(
                        |(name, weight)| tcp::tcp_proxy::weighted_cluster::ClusterWeight {
                            name: name.clone(),
                            weight: *weight,
                            ..Default::default()
                        },
                    )
                    .collect(),
            },
        )),
        idle_timeout: Some(duration_ms(3_600_000)),
        ..Default::default()
    })
}

/// The TCP proxy of a sidecar's inbound port: it connects to the app only after the caller's
/// mTLS handshake completed, so a caller without a valid certificate never makes the sidecar
/// open a connection to the app (Envoy's default connects on accept).
pub(super) fn inbound_tcp_proxy(stat_prefix: &str, cluster_name: &str) -> Any {
    pack_any(tcp::TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
            cluster_name.to_owned(),
        )),
        idle_timeout: Some(duration_ms(3_600_000)),
        upstream_connect_mode: tcp::UpstreamConnectMode::OnDownstreamTlsHandshake as i32,
        // Nothing is buffered meanwhile: the caller's first bytes wait in the socket.
        max_early_data_bytes: u32v(0),
        ..Default::default()
    })
}
