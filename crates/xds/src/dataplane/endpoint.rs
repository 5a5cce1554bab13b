//! `ClusterLoadAssignment` → [`LoadAssignmentConfig`]: localities, priorities, weights and
//! health.

// Deprecated fields are destructured too: set, they are refused like any other.
#![allow(deprecated)]

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;

use super::check::{causeway_metadata, socket_address, unsupported, At};
use super::{ConfigError, EndpointConfig, LoadAssignmentConfig, LocalityEndpoints};

pub fn load_assignment(
    la: &endpoint::ClusterLoadAssignment,
) -> Result<LoadAssignmentConfig, ConfigError> {
    let resource = format!("ClusterLoadAssignment {}", la.cluster_name);
    load_assignment_at(&At::resource(&resource), la)
}

pub(super) fn load_assignment_at(
    at: &At<'_>,
    la: &endpoint::ClusterLoadAssignment,
) -> Result<LoadAssignmentConfig, ConfigError> {
    let endpoint::ClusterLoadAssignment {
        cluster_name,
        endpoints,
        named_endpoints,
        policy,
    } = la;
    unsupported!(at, named_endpoints);
    if let Some(p) = policy {
        // The drop and overprovisioning knobs shape Envoy's priority spill-over; the proxy
        // moves to the next priority only when one has no healthy endpoint left.
        let endpoint::cluster_load_assignment::Policy {
            drop_overloads,
            overprovisioning_factor,
            endpoint_stale_after,
            weighted_priority_health,
        } = p;
        let at = at.field("policy");
        unsupported!(
            at,
            drop_overloads,
            overprovisioning_factor,
            endpoint_stale_after,
            weighted_priority_health
        );
    }
    let localities = endpoints
        .iter()
        .enumerate()
        .map(|(i, l)| locality(&at.item("endpoints", i), l))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LoadAssignmentConfig {
        cluster_name: cluster_name.clone(),
        localities,
    })
}

fn locality(
    at: &At<'_>,
    l: &endpoint::LocalityLbEndpoints,
) -> Result<LocalityEndpoints, ConfigError> {
    #[rustfmt::skip]
    let endpoint::LocalityLbEndpoints {
        locality, lb_endpoints, load_balancing_weight, priority,
        metadata: _, proximity, lb_config,
    } = l;
    unsupported!(at, proximity, lb_config);
    let (region, zone, sub_zone) = match locality {
        Some(core::Locality {
            region,
            zone,
            sub_zone,
        }) => (region.clone(), zone.clone(), sub_zone.clone()),
        None => Default::default(),
    };
    let endpoints = lb_endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| lb_endpoint(&at.item("lb_endpoints", i), e))
        .collect::<Result<Vec<_>, _>>()?;
    if load_balancing_weight.as_ref().is_some_and(|w| w.value == 0) {
        return Err(at
            .field("load_balancing_weight")
            .error("must be at least 1"));
    }
    Ok(LocalityEndpoints {
        region,
        zone,
        sub_zone,
        priority: *priority,
        weight: load_balancing_weight.as_ref().map(|w| w.value),
        endpoints,
    })
}

fn lb_endpoint(at: &At<'_>, e: &endpoint::LbEndpoint) -> Result<EndpointConfig, ConfigError> {
    let endpoint::LbEndpoint {
        health_status,
        metadata,
        load_balancing_weight,
        host_identifier,
    } = e;
    let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) = host_identifier else {
        return Err(at
            .field("endpoint")
            .error("missing (named endpoints are not supported)"));
    };
    #[rustfmt::skip]
    let endpoint::Endpoint {
        address, health_check_config, additional_addresses,
        // Names for logs and health checks; the proxy reports the address.
        hostname: _, observability_name: _,
    } = ep;
    let at_ep = at.field("endpoint");
    unsupported!(at_ep, additional_addresses);
    let active_health_check = match health_check_config {
        None => true,
        Some(hc) => {
            let endpoint::endpoint::HealthCheckConfig {
                disable_active_health_check,
                port_value,
                hostname,
                address,
            } = hc;
            let at = at_ep.field("health_check_config");
            unsupported!(at, port_value, hostname, address);
            !disable_active_health_check
        }
    };
    let address = socket_address(&at_ep.field("address"), address)?;
    let weight = load_balancing_weight.as_ref().map_or(1, |w| w.value);
    if weight == 0 {
        return Err(at
            .field("load_balancing_weight")
            .error("must be at least 1"));
    }
    use core::HealthStatus as H;
    let healthy = match H::try_from(*health_status) {
        Ok(H::Unknown | H::Healthy | H::Degraded) => true,
        Ok(H::Unhealthy | H::Draining | H::Timeout) => false,
        Err(_) => {
            return Err(at
                .field("health_status")
                .error(format!("unknown value {health_status}")))
        }
    };
    let sni = causeway_metadata(metadata, "sni");
    let kind = causeway_metadata(metadata, "kind");
    Ok(EndpointConfig {
        address,
        weight,
        healthy,
        cluster: causeway_metadata(metadata, "cluster"),
        through_gateway: sni.is_some() || matches!(kind.as_deref(), Some("gateway" | "remote")),
        sni,
        pod: causeway_metadata(metadata, "endpoint"),
        workload: causeway_metadata(metadata, "workload"),
        active_health_check,
    })
}
