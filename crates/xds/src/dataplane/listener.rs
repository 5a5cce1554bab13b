//! `Listener` → [`ListenerConfig`]: addresses, the TLS inspector, filter chains and their
//! matches, and the TCP proxy with the network RBAC filters in front of it.

// Deprecated fields are destructured too: set, they are refused like any other.
#![allow(deprecated)]

use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3 as tls_inspector;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::check::{duration, duration_or, socket_address, unsupported, At};
use super::rbac::{RbacConfig, NETWORK_RBAC};
use super::ClusterSplit;
use super::{
    ChainAction, ChainMatch, ConfigError, FilterChainConfig, ListenerConfig, TcpProxyConfig,
};

const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// Envoy's default `listener_filters_timeout`.
const DEFAULT_INSPECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's default TCP proxy idle timeout when the field is unset.
const DEFAULT_TCP_IDLE: Duration = Duration::from_secs(3600);

pub fn listener_config(l: &listener::Listener) -> Result<ListenerConfig, ConfigError> {
    let resource = format!("Listener {}", l.name);
    let at = At::resource(&resource);
    #[rustfmt::skip]
    let listener::Listener {
        name, address, filter_chains, default_filter_chain, listener_filters,
        listener_filters_timeout,
        // Statistics naming, metadata and the direction hint change nothing on the path.
        stat_prefix: _, metadata: _, traffic_direction: _,
        // Sockets are the proxy's business: one listener socket per worker with SO_REUSEPORT.
        reuse_port: _, enable_reuse_port: _,
        additional_addresses, stats_matcher, fcds_config, filter_chain_matcher, use_original_dst,
        per_connection_buffer_limit_bytes, per_connection_buffer_high_watermark_timeout,
        deprecated_v1, drain_type, continue_on_listener_filters_timeout, transparent, freebind,
        socket_options, tcp_fast_open_queue_length, udp_listener_config, api_listener,
        connection_balance_config, access_log, tcp_backlog_size,
        max_connections_to_accept_per_socket_event, bind_to_port, enable_mptcp,
        ignore_global_conn_limit, bypass_overload_manager, tcp_keepalive, listener_specifier,
    } = l;
    unsupported!(
        at,
        additional_addresses,
        stats_matcher,
        fcds_config,
        filter_chain_matcher,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        deprecated_v1,
        drain_type,
        continue_on_listener_filters_timeout,
        transparent,
        freebind,
        socket_options,
        tcp_fast_open_queue_length,
        udp_listener_config,
        api_listener,
        connection_balance_config,
        access_log,
        tcp_backlog_size,
        max_connections_to_accept_per_socket_event,
        enable_mptcp,
        ignore_global_conn_limit,
        bypass_overload_manager,
        tcp_keepalive,
        listener_specifier,
    );
    let bind = bind_to_port.as_ref().is_none_or(|b| b.value);
    let use_original_dst = use_original_dst.as_ref().is_some_and(|b| b.value);
    if use_original_dst && !bind {
        return Err(at
            .field("use_original_dst")
            .error("a capture listener must bind its own address"));
    }
    let address = socket_address(&at.field("address"), address)?;
    let mut inspect_tls = false;
    for (i, f) in listener_filters.iter().enumerate() {
        listener_filter(&at.item("listener_filters", i), f)?;
        inspect_tls = true;
    }
    let inspect_timeout = duration_or(
        &at.field("listener_filters_timeout"),
        listener_filters_timeout,
        DEFAULT_INSPECT_TIMEOUT,
    )?;
    let chains = filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| filter_chain(&at.item("filter_chains", i), c))
        .collect::<Result<Vec<_>, _>>()?;
    let default_chain = default_filter_chain
        .as_ref()
        .map(|c| filter_chain(&at.field("default_filter_chain"), c))
        .transpose()?;
    if chains.is_empty() && default_chain.is_none() {
        return Err(at
            .field("filter_chains")
            .error("a listener needs at least one filter chain"));
    }
    let needs_sni = chains.iter().any(|c| !c.matches.server_names.is_empty());
    if needs_sni && !inspect_tls {
        return Err(at.field("listener_filters").error(
            "filter chains match server names, which needs the TLS inspector listener filter",
        ));
    }
    Ok(ListenerConfig {
        name: name.clone(),
        address,
        bind,
        use_original_dst,
        inspect_tls,
        inspect_timeout,
        filter_chains: chains,
        default_chain,
    })
}

fn typed<'a>(at: &At<'_>, any: Option<&'a Any>, want: &str) -> Result<&'a Any, ConfigError> {
    match any {
        Some(a) if a.type_url == want => Ok(a),
        Some(a) => Err(at.field("typed_config").error(format!(
            "{} is not supported (the Causeway proxy honours {want})",
            a.type_url
        ))),
        None => Err(at.field("typed_config").error("missing")),
    }
}

fn decode<M: Message + Default>(at: &At<'_>, any: &Any) -> Result<M, ConfigError> {
    M::decode(any.value.as_slice())
        .map_err(|e| at.field("typed_config").error(format!("undecodable: {e}")))
}

fn listener_filter(at: &At<'_>, f: &listener::ListenerFilter) -> Result<(), ConfigError> {
    let listener::ListenerFilter {
        name: _,
        filter_disabled,
        config_type,
    } = f;
    unsupported!(at, filter_disabled);
    let any = match config_type {
        Some(listener::listener_filter::ConfigType::TypedConfig(a)) => Some(a),
        Some(_) => return Err(at.field("config_discovery").error("not supported")),
        None => None,
    };
    let any = typed(at, any, TLS_INSPECTOR)?;
    let tls_inspector::TlsInspector {
        enable_ja3_fingerprinting,
        enable_ja4_fingerprinting,
        initial_read_buffer_size,
        ..
    } = decode(at, any)?;
    // Fingerprints are for access logs; the read size only tunes Envoy's own buffer.
    let _ = (
        enable_ja3_fingerprinting,
        enable_ja4_fingerprinting,
        initial_read_buffer_size,
    );
    Ok(())
}

fn filter_chain(at: &At<'_>, c: &listener::FilterChain) -> Result<FilterChainConfig, ConfigError> {
    #[rustfmt::skip]
    let listener::FilterChain {
        filter_chain_match, filters, name, metadata: _,
        use_proxy_proto, transport_socket, transport_socket_connect_timeout,
    } = c;
    unsupported!(at, use_proxy_proto);
    let tls = transport_socket
        .as_ref()
        .map(|ts| super::tls::downstream_tls(&at.field("transport_socket"), ts))
        .transpose()?;
    let handshake_timeout = transport_socket_connect_timeout
        .as_ref()
        .map(|d| duration(&at.field("transport_socket_connect_timeout"), d))
        .transpose()?;
    let matches = match filter_chain_match {
        Some(m) => chain_match(&at.field("filter_chain_match"), m)?,
        None => ChainMatch::default(),
    };
    let action = chain_action(at, filters)?;
    Ok(FilterChainConfig {
        name: name.clone(),
        matches,
        tls,
        handshake_timeout,
        action,
    })
}

/// The network filters: the HTTP connection manager alone, or network RBAC filters (any number,
/// run in order) then the TCP proxy.
fn chain_action(at: &At<'_>, filters: &[listener::Filter]) -> Result<ChainAction, ConfigError> {
    let Some((last, front)) = filters.split_last() else {
        return Err(at
            .field("filters")
            .error("a filter chain needs a network filter"));
    };
    let mut rbac = Vec::with_capacity(front.len());
    for (i, f) in front.iter().enumerate() {
        let at_filter = at.item("filters", i);
        let any = filter_config(&at_filter, f)?;
        if any.type_url != NETWORK_RBAC {
            return Err(at_filter.field("typed_config").error(format!(
                "{} is not supported before the last filter (the Causeway proxy runs network \
                 RBAC filters, {NETWORK_RBAC}, then tcp_proxy)",
                any.type_url
            )));
        }
        rbac.push(super::rbac::network_filter(&at_filter, &f.name, any)?);
    }
    let at_last = at.item("filters", front.len());
    let any = filter_config(&at_last, last)?;
    if any.type_url == super::http::HTTP_CONNECTION_MANAGER {
        if !front.is_empty() {
            return Err(at.item("filters", 0).error(
                "network RBAC in front of the HTTP connection manager is not supported (its \
                 RBAC HTTP filters see the requests)",
            ));
        }
        let at_manager = at_last.field("typed_config");
        return Ok(ChainAction::Http(Box::new(super::http::http_manager(
            &at_manager,
            any,
        )?)));
    }
    if any.type_url == NETWORK_RBAC {
        return Err(at_last.error(
            "network RBAC is the last filter: the chain needs tcp_proxy (or \
             http_connection_manager) last",
        ));
    }
    let any = typed(&at_last, Some(any), TCP_PROXY)?;
    Ok(ChainAction::TcpProxy(tcp_proxy(
        &at_last,
        &decode(&at_last, any)?,
        rbac,
    )?))
}

/// A network filter's typed config (its name is informational: Envoy selects by type URL).
fn filter_config<'a>(at: &At<'_>, f: &'a listener::Filter) -> Result<&'a Any, ConfigError> {
    let listener::Filter {
        name: _,
        config_type,
    } = f;
    match config_type {
        Some(listener::filter::ConfigType::TypedConfig(a)) => Ok(a),
        Some(_) => Err(at.field("config_discovery").error("not supported")),
        None => Err(at.field("typed_config").error("missing")),
    }
}

fn chain_match(at: &At<'_>, m: &listener::FilterChainMatch) -> Result<ChainMatch, ConfigError> {
    #[rustfmt::skip]
    let listener::FilterChainMatch {
        destination_port, server_names, transport_protocol, application_protocols,
        prefix_ranges, address_suffix, suffix_len, direct_source_prefix_ranges, source_type,
        source_prefix_ranges, source_ports,
    } = m;
    unsupported!(
        at,
        prefix_ranges,
        address_suffix,
        suffix_len,
        direct_source_prefix_ranges,
        source_type,
        source_prefix_ranges,
        source_ports,
    );
    let destination_port = destination_port
        .as_ref()
        .map(|p| {
            u16::try_from(p.value).map_err(|_| {
                at.field("destination_port")
                    .error(format!("{} is not a port", p.value))
            })
        })
        .transpose()?;
    let mut names = Vec::with_capacity(server_names.len());
    for (i, n) in server_names.iter().enumerate() {
        let lower = n.to_ascii_lowercase();
        let valid = !lower.is_empty()
            && lower.len() <= 253
            && lower
                .strip_prefix("*.")
                .unwrap_or(&lower)
                .split('.')
                .all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
        if !valid {
            return Err(at
                .item("server_names", i)
                .error(format!("{n:?} is not a server name")));
        }
        names.push(lower);
    }
    let transport_protocol = match transport_protocol.as_str() {
        "" => None,
        p @ ("tls" | "raw_buffer") => Some(p.to_owned()),
        other => {
            return Err(at
                .field("transport_protocol")
                .error(format!("{other:?} is not supported (tls or raw_buffer)")))
        }
    };
    Ok(ChainMatch {
        server_names: names,
        destination_port,
        transport_protocol,
        application_protocols: application_protocols.clone(),
    })
}

/// The TCP proxy at `at`, behind the network RBAC filters `rbac`.
fn tcp_proxy(
    at: &At<'_>,
    p: &tcp::TcpProxy,
    rbac: Vec<RbacConfig>,
) -> Result<TcpProxyConfig, ConfigError> {
    #[rustfmt::skip]
    let tcp::TcpProxy {
        stat_prefix, idle_timeout, cluster_specifier,
        on_demand, metadata_match, downstream_idle_timeout, upstream_idle_timeout, access_log,
        max_connect_attempts, backoff_options, hash_policy, tunneling_config,
        max_downstream_connection_duration, max_downstream_connection_duration_jitter_percentage,
        access_log_flush_interval, flush_access_log_on_connected, access_log_options,
        proxy_protocol_tlvs, proxy_protocol_tlv_merge_policy, upstream_connect_mode,
        max_early_data_bytes, check_drain_close,
    } = p;
    unsupported!(
        at,
        on_demand,
        metadata_match,
        downstream_idle_timeout,
        upstream_idle_timeout,
        access_log,
        max_connect_attempts,
        backoff_options,
        hash_policy,
        tunneling_config,
        max_downstream_connection_duration,
        max_downstream_connection_duration_jitter_percentage,
        access_log_flush_interval,
        flush_access_log_on_connected,
        access_log_options,
        proxy_protocol_tlvs,
        proxy_protocol_tlv_merge_policy,
        check_drain_close,
    );
    let connect_after_tls_handshake =
        connect_mode(at, *upstream_connect_mode, max_early_data_bytes)?;
    let clusters = match cluster_specifier {
        Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c)) if !c.is_empty() => {
            ClusterSplit::One(c.clone())
        }
        Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            super::weighted::tcp_weighted(&at.field("weighted_clusters"), w)?
        }
        _ => return Err(at.field("cluster").error("missing")),
    };
    let idle_timeout = match idle_timeout {
        None => Some(DEFAULT_TCP_IDLE),
        Some(d) => Some(duration(&at.field("idle_timeout"), d)?).filter(|d| !d.is_zero()),
    };
    Ok(TcpProxyConfig {
        stat_prefix: stat_prefix.clone(),
        clusters,
        idle_timeout,
        connect_after_tls_handshake,
        rbac,
    })
}

/// When the TCP proxy connects upstream: at once (Envoy's default) or, true, only once the
/// downstream TLS handshake completed. Early data is never buffered meanwhile (the caller's
/// bytes wait in the socket), so `max_early_data_bytes` is 0, or unset when connecting at once.
fn connect_mode(
    at: &At<'_>,
    mode: i32,
    early: &Option<envoy_types::pb::google::protobuf::UInt32Value>,
) -> Result<bool, ConfigError> {
    use tcp::UpstreamConnectMode as M;
    let after_handshake =
        match M::try_from(mode) {
            Ok(M::Immediate) => false,
            Ok(M::OnDownstreamTlsHandshake) => true,
            Ok(M::OnDownstreamData) => return Err(at.field("upstream_connect_mode").error(
                "ON_DOWNSTREAM_DATA is not supported (IMMEDIATE or ON_DOWNSTREAM_TLS_HANDSHAKE)",
            )),
            Err(_) => {
                return Err(at
                    .field("upstream_connect_mode")
                    .error(format!("unknown value {mode}")))
            }
        };
    match early {
        None if after_handshake => Err(at
            .field("max_early_data_bytes")
            .error("missing: Envoy requires it with ON_DOWNSTREAM_TLS_HANDSHAKE (0: none)")),
        Some(b) if b.value != 0 => Err(at.field("max_early_data_bytes").error(format!(
            "{}: buffering early data is not supported by the Causeway proxy (0)",
            b.value
        ))),
        _ => Ok(after_handshake),
    }
}
