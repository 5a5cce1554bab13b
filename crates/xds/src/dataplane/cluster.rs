//! `Cluster` → [`ClusterConfig`]: discovery type, timeouts, load balancing and outlier
//! detection.

// Deprecated fields are destructured too: set, they are refused like any other.
#![allow(deprecated)]

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;

use super::check::{causeway_metadata, duration_or, u32_or, unsupported, At};
use super::endpoint::load_assignment_at;
use super::{ClusterConfig, ConfigError, EndpointSource, LbPolicy, OutlierDetectionConfig};

/// Envoy's defaults for unset fields.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_PANIC_PERCENT: f64 = 50.0;

pub fn cluster_config(c: &cluster::Cluster) -> Result<ClusterConfig, ConfigError> {
    let resource = format!("Cluster {}", c.name);
    let at = At::resource(&resource);
    #[rustfmt::skip]
    let cluster::Cluster {
        name, cluster_discovery_type, eds_cluster_config, load_assignment, connect_timeout,
        lb_policy, common_lb_config, outlier_detection, metadata,
        // Statistics naming only.
        alt_stat_name: _, stats_matcher: _, track_cluster_stats: _,
        transport_socket_matches, transport_socket_matcher, per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout, health_checks, max_requests_per_connection,
        circuit_breakers, upstream_http_protocol_options, common_http_protocol_options,
        http_protocol_options, http2_protocol_options, typed_extension_protocol_options,
        dns_refresh_rate, dns_jitter, dns_failure_refresh_rate, respect_dns_ttl,
        dns_lookup_family, dns_resolvers, use_tcp_for_dns_lookups, dns_resolution_config,
        typed_dns_resolver_config, wait_for_warm_on_init, cleanup_interval, upstream_bind_config,
        lb_subset_config, transport_socket, protocol_selection, upstream_connection_options,
        close_connections_on_host_health_failure, ignore_health_on_host_removal, filters,
        load_balancing_policy, lrs_server, lrs_report_endpoint_metrics, track_timeout_budgets,
        upstream_config, preconnect_policy, connection_pool_per_downstream_connection,
        queuing_policies, lb_config,
    } = c;
    unsupported!(
        at,
        transport_socket_matches,
        transport_socket_matcher,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        max_requests_per_connection,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        typed_extension_protocol_options,
        dns_refresh_rate,
        dns_jitter,
        dns_failure_refresh_rate,
        respect_dns_ttl,
        dns_lookup_family,
        dns_resolvers,
        use_tcp_for_dns_lookups,
        dns_resolution_config,
        typed_dns_resolver_config,
        wait_for_warm_on_init,
        cleanup_interval,
        upstream_bind_config,
        lb_subset_config,
        protocol_selection,
        upstream_connection_options,
        ignore_health_on_host_removal,
        filters,
        load_balancing_policy,
        lrs_server,
        lrs_report_endpoint_metrics,
        track_timeout_budgets,
        upstream_config,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
        lb_config,
    );
    let upstream_tls = transport_socket
        .as_ref()
        .map(|ts| super::tls::upstream_tls(&at.field("transport_socket"), ts))
        .transpose()?;
    let endpoints = endpoint_source(
        &at,
        name,
        cluster_discovery_type,
        eds_cluster_config,
        load_assignment,
    )?;
    let balancer = causeway_metadata(metadata, crate::build::LOAD_BALANCER_KEY);
    let lb_policy = match cluster::cluster::LbPolicy::try_from(*lb_policy) {
        // Causeway's metadata picks its latency balancer over Envoy's round robin.
        Ok(cluster::cluster::LbPolicy::RoundRobin) => match balancer.as_deref() {
            None => LbPolicy::RoundRobin,
            Some(crate::build::PEAK_EWMA) => LbPolicy::PeakEwma,
            Some(other) => {
                return Err(at
                    .field("metadata.filter_metadata.causeway.loadBalancer")
                    .error(format!(
                        "{other:?} is not a Causeway load balancer (only {:?})",
                        crate::build::PEAK_EWMA
                    )))
            }
        },
        // The proxy balances by smooth weighted round robin only (what the control plane
        // emits); another policy would be served as round robin, so it is refused.
        Ok(other) => {
            return Err(at.field("lb_policy").error(format!(
                "{} is not supported by the Causeway proxy (ROUND_ROBIN only)",
                other.as_str_name()
            )))
        }
        Err(_) => {
            return Err(at
                .field("lb_policy")
                .error(format!("unknown value {lb_policy}")))
        }
    };
    Ok(ClusterConfig {
        name: name.clone(),
        endpoints,
        upstream_tls,
        connect_timeout: duration_or(
            &at.field("connect_timeout"),
            connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        )?,
        lb_policy,
        outlier_detection: outlier_detection
            .as_ref()
            .map(|o| outlier(&at.field("outlier_detection"), o))
            .transpose()?,
        healthy_panic_threshold_percent: panic_threshold(
            &at.field("common_lb_config"),
            common_lb_config,
        )?,
        service: causeway_metadata(metadata, "service"),
        max_retries: max_retries(&at.field("circuit_breakers"), circuit_breakers)?,
        health_check: super::health::health_check(
            &at,
            health_checks,
            *close_connections_on_host_health_failure,
        )?,
    })
}

/// Envoy's `max_retries` circuit breaker when none is set: 3 retries in flight per cluster.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// The cluster's circuit breakers: only the retry limit of the default priority is honoured
/// (the others are Envoy's defaults, which the proxy's own limits stand for).
fn max_retries(
    at: &At<'_>,
    breakers: &Option<cluster::CircuitBreakers>,
) -> Result<u32, ConfigError> {
    let Some(cluster::CircuitBreakers {
        thresholds,
        per_host_thresholds,
    }) = breakers
    else {
        return Ok(DEFAULT_MAX_RETRIES);
    };
    unsupported!(at, per_host_thresholds);
    let mut limit = DEFAULT_MAX_RETRIES;
    for (i, t) in thresholds.iter().enumerate() {
        let at = at.item("thresholds", i);
        #[rustfmt::skip]
        let cluster::circuit_breakers::Thresholds {
            priority, max_retries,
            max_connections, max_pending_requests, max_requests, retry_budget, track_remaining,
            max_connection_pools,
        } = t;
        #[rustfmt::skip]
        unsupported!(
            at,
            max_connections, max_pending_requests, max_requests, retry_budget, track_remaining,
            max_connection_pools,
        );
        if *priority != envoy_types::pb::envoy::config::core::v3::RoutingPriority::Default as i32 {
            return Err(at
                .field("priority")
                .error("only DEFAULT (routes carry no priority)"));
        }
        if let Some(m) = max_retries {
            limit = m.value;
        }
    }
    Ok(limit)
}

fn endpoint_source(
    at: &At<'_>,
    name: &str,
    discovery: &Option<cluster::cluster::ClusterDiscoveryType>,
    eds: &Option<cluster::cluster::EdsClusterConfig>,
    inline: &Option<envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>,
) -> Result<EndpointSource, ConfigError> {
    use cluster::cluster::{ClusterDiscoveryType as T, DiscoveryType as D};
    let kind = match discovery {
        None => D::Static,
        Some(T::Type(t)) => D::try_from(*t).map_err(|_| {
            at.field("type")
                .error(format!("unknown discovery type {t}"))
        })?,
        Some(T::ClusterType(_)) => {
            return Err(at
                .field("cluster_type")
                .error("custom cluster types are not supported"))
        }
    };
    match kind {
        D::Eds => {
            let Some(cluster::cluster::EdsClusterConfig {
                eds_config,
                service_name,
            }) = eds
            else {
                return Err(at
                    .field("eds_cluster_config")
                    .error("missing for an EDS cluster"));
            };
            ads_only(&at.field("eds_cluster_config.eds_config"), eds_config)?;
            if inline.is_some() {
                return Err(at.field("load_assignment").error("set on an EDS cluster"));
            }
            let service_name = if service_name.is_empty() {
                name.to_owned()
            } else {
                service_name.clone()
            };
            Ok(EndpointSource::Eds { service_name })
        }
        D::Static => {
            let Some(la) = inline else {
                return Err(at
                    .field("load_assignment")
                    .error("missing for a static cluster"));
            };
            Ok(EndpointSource::Static(load_assignment_at(
                &at.field("load_assignment"),
                la,
            )?))
        }
        other => Err(at.field("type").error(format!(
            "{} clusters are not supported",
            other.as_str_name()
        ))),
    }
}

/// EDS must come over the same ADS stream as everything else.
fn ads_only(at: &At<'_>, source: &Option<core::ConfigSource>) -> Result<(), ConfigError> {
    use core::config_source::ConfigSourceSpecifier as S;
    match source
        .as_ref()
        .and_then(|s| s.config_source_specifier.as_ref())
    {
        Some(S::Ads(_)) => Ok(()),
        _ => Err(at.error("only ADS is supported as a config source")),
    }
}

fn panic_threshold(
    at: &At<'_>,
    common: &Option<cluster::cluster::CommonLbConfig>,
) -> Result<f64, ConfigError> {
    let Some(common) = common else {
        return Ok(DEFAULT_PANIC_PERCENT);
    };
    #[rustfmt::skip]
    let cluster::cluster::CommonLbConfig {
        healthy_panic_threshold, update_merge_window, ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change, consistent_hashing_lb_config,
        override_host_status, locality_config_specifier,
    } = common;
    unsupported!(
        at,
        update_merge_window,
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
        consistent_hashing_lb_config,
        override_host_status,
        locality_config_specifier,
    );
    let value = healthy_panic_threshold
        .as_ref()
        .map_or(DEFAULT_PANIC_PERCENT, |p| p.value);
    if !(0.0..=100.0).contains(&value) {
        return Err(at
            .field("healthy_panic_threshold")
            .error(format!("{value} is not a percentage")));
    }
    Ok(value)
}

fn outlier(
    at: &At<'_>,
    o: &cluster::OutlierDetection,
) -> Result<OutlierDetectionConfig, ConfigError> {
    #[rustfmt::skip]
    let cluster::OutlierDetection {
        consecutive_5xx, interval, base_ejection_time, max_ejection_percent,
        enforcing_consecutive_5xx, consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure,
        enforcing_success_rate, success_rate_minimum_hosts, success_rate_request_volume,
        success_rate_stdev_factor, split_external_local_origin_errors,
        consecutive_local_origin_failure, enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate, failure_percentage_threshold,
        enforcing_failure_percentage, enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts, failure_percentage_request_volume, max_ejection_time,
        max_ejection_time_jitter, successful_active_health_check_uneject_host, monitors,
        always_eject_one_host, detect_degraded_hosts,
    } = o;
    // Success-rate ejection is on in Envoy by default (enforcing 100%), but needs 5 hosts and
    // 100 requests per interval; the control plane never sets it, so refuse only explicit use.
    unsupported!(
        at,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        max_ejection_time,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
        always_eject_one_host,
        detect_degraded_hosts,
    );
    if enforcing_success_rate
        .as_ref()
        .is_some_and(|v| v.value != 0)
    {
        return Err(at
            .field("enforcing_success_rate")
            .error("success-rate ejection is not supported (set it to 0)"));
    }
    let percent = |name: &str, v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d| {
        let v = u32_or(v, d);
        if v > 100 {
            Err(at.field(name).error(format!("{v} is not a percentage")))
        } else {
            Ok(v)
        }
    };
    Ok(OutlierDetectionConfig {
        consecutive_5xx: u32_or(consecutive_5xx, 5),
        enforcing_consecutive_5xx_percent: percent(
            "enforcing_consecutive_5xx",
            enforcing_consecutive_5xx,
            100,
        )?,
        consecutive_gateway_failure: u32_or(consecutive_gateway_failure, 5),
        enforcing_consecutive_gateway_failure_percent: percent(
            "enforcing_consecutive_gateway_failure",
            enforcing_consecutive_gateway_failure,
            0,
        )?,
        interval: duration_or(&at.field("interval"), interval, Duration::from_secs(10))?,
        base_ejection_time: duration_or(
            &at.field("base_ejection_time"),
            base_ejection_time,
            Duration::from_secs(30),
        )?,
        max_ejection_percent: percent("max_ejection_percent", max_ejection_percent, 10)?,
    })
    .and_then(|o| {
        // A zero interval would spin the ejection timer.
        if o.interval.is_zero() {
            Err(at.field("interval").error("must be positive"))
        } else {
            Ok(o)
        }
    })
}
