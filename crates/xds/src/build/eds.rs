//! EDS clusters and their load assignments: outlier detection, locality groups and priorities.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use causeway_discovery::{EndpointKind, LocalityGroup, ViewEndpoint};
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::r#type::v3::Percent;

use super::envoy::{ads_source, causeway_metadata, duration_ms, socket_address, u32v};

/// Outlier detection on by default (without it Envoy never fails over between priorities):
/// the mesh's settings, or a service's `TrafficPolicy`.
fn outlier_detection(o: &causeway_model::OutlierDetection) -> cluster::OutlierDetection {
    let ms = |d: std::time::Duration| Some(duration_ms(d.as_millis() as u64));
    cluster::OutlierDetection {
        consecutive_5xx: u32v(o.consecutive_5xx),
        consecutive_gateway_failure: u32v(o.consecutive_gateway_failure),
        enforcing_consecutive_gateway_failure: u32v(100),
        interval: ms(o.interval),
        base_ejection_time: ms(o.base_ejection_time),
        max_ejection_percent: u32v(o.max_ejection_percent),
        ..Default::default()
    }
}

/// How often a gateway path is checked, how long a check (a handshake across the gateway) may
/// take, and the failed checks in a row that mark it unhealthy: a dead gateway, network or
/// remote cluster is out of the balancing within 2 × (interval + timeout) = 1 s at worst, and
/// one slow handshake on a busy host does not fail a path over.
const HEALTH_INTERVAL_MS: u64 = 150;
const HEALTH_TIMEOUT_MS: u64 = 350;
const UNHEALTHY_THRESHOLD: u32 = 2;
/// Passed checks in a row that bring it back (one lucky handshake is not a recovery).
const HEALTHY_THRESHOLD: u32 = 2;

/// Active health checking of the endpoints reached through an east-west gateway (direct
/// endpoints opt out, see [`lb_endpoint`]): a connect-only TCP check through the cluster's
/// mTLS, so each check is a handshake with the remote side over the very path requests take.
/// Connections of an endpoint found dead are closed, so requests on them are retried
/// elsewhere rather than waiting on a black hole.
pub(super) fn with_gateway_health_check(mut c: cluster::Cluster) -> cluster::Cluster {
    let interval = Some(duration_ms(HEALTH_INTERVAL_MS));
    c.health_checks = vec![core::HealthCheck {
        timeout: Some(duration_ms(HEALTH_TIMEOUT_MS)),
        interval,
        // Idle clusters too: a failover target must be known good before it is needed.
        no_traffic_interval: interval,
        unhealthy_threshold: u32v(UNHEALTHY_THRESHOLD),
        healthy_threshold: u32v(HEALTHY_THRESHOLD),
        reuse_connection: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        health_checker: Some(core::health_check::HealthChecker::TcpHealthCheck(
            core::health_check::TcpHealthCheck::default(),
        )),
        ..Default::default()
    }];
    c.close_connections_on_host_health_failure = true;
    c
}

/// A gateway's cluster of local pods: no outlier detection. A gateway passes connections
/// through, so the only failures it sees are connects refused by pods still starting, and
/// ejecting those would black-hole the pods for every caller for seconds; callers see the
/// whole path and check it (active health checks and their own outlier detection), and pods
/// leave the gateway's endpoints when the registry says they are not ready.
pub(super) fn gateway_cluster(name: &str, metadata: core::Metadata) -> cluster::Cluster {
    cluster::Cluster {
        outlier_detection: None,
        ..eds_cluster_with(name, None, metadata, &Default::default())
    }
}

/// [`eds_cluster`] with `outlier` detection settings.
pub(super) fn eds_cluster_with(
    name: &str,
    transport: Option<core::TransportSocket>,
    metadata: core::Metadata,
    outlier: &causeway_model::OutlierDetection,
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
        outlier_detection: Some(outlier_detection(outlier)),
        // Istio's choice: retries are bounded per request (the route's count), not by Envoy's
        // default of 3 in flight per cluster, which fails every request queued on a dead path
        // but three at once.
        circuit_breakers: Some(cluster::CircuitBreakers {
            thresholds: vec![cluster::circuit_breakers::Thresholds {
                max_retries: u32v(u32::MAX),
                ..Default::default()
            }],
            ..Default::default()
        }),
        transport_socket: transport,
        metadata: Some(metadata),
        ..Default::default()
    }
}

/// One endpoint of a load assignment. A remote pod (`EndpointKind::Remote`, Causeway proxies
/// only) is addressed at its gateway, with the SNI that reaches just that pod and the pod's own
/// address and workload for operators in the endpoint's Causeway metadata.
fn lb_endpoint(e: &ViewEndpoint, with: EndpointMetadata) -> endpoint::LbEndpoint {
    // Only what proxies read (Causeway's data plane: the answering cluster, the workload, the
    // per-endpoint SNI and pod address; a kind only when not implied): every byte here is sent
    // for each endpoint to each proxy, 100,000 times over in `bench/xds-scale`.
    let mut metadata = vec![("cluster", e.cluster.to_string())];
    if e.kind == EndpointKind::Gateway {
        metadata.push(("kind", "gateway".to_owned()));
    }
    let address = match (e.kind, e.via, e.sni.as_ref()) {
        (EndpointKind::Remote, Some(gateway), Some(sni)) => {
            metadata.push(("sni", sni.clone()));
            metadata.push(("endpoint", SocketAddr::new(e.address, e.port).to_string()));
            socket_address(gateway.address, gateway.port)
        }
        _ => socket_address(e.address, e.port),
    };
    if let Some(workload) = &e.workload {
        metadata.push(("workload", workload.clone()));
    }
    // Only paths through a gateway are checked actively; a direct endpoint's failures show
    // in outlier detection, and checking every pod from every caller would cost more.
    let health_check_config =
        (e.kind == EndpointKind::Direct).then(|| endpoint::endpoint::HealthCheckConfig {
            disable_active_health_check: true,
            ..Default::default()
        });
    endpoint::LbEndpoint {
        host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
            endpoint::Endpoint {
                address: Some(address),
                health_check_config,
                ..Default::default()
            },
        )),
        load_balancing_weight: u32v(e.weight.max(1)),
        metadata: (with == EndpointMetadata::Causeway || e.kind == EndpointKind::Gateway)
            .then(|| causeway_metadata(&metadata)),
        // The control plane's gateway probes found its gateway dead: out of the balancing
        // before the proxy's own checks tell (they keep running and decide once it is back).
        health_status: if e.unhealthy.is_some() {
            core::HealthStatus::Unhealthy as i32
        } else {
            core::HealthStatus::Unknown as i32
        },
    }
}

/// A cluster with one endpoint given inline: what an east-west gateway routes a per-endpoint
/// SNI to (no EDS resource per pod).
pub(super) fn single_endpoint_cluster(name: &str, e: &ViewEndpoint) -> cluster::Cluster {
    cluster::Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration_ms(1000)),
        lb_policy: cluster::cluster::LbPolicy::RoundRobin as i32,
        load_assignment: Some(load_assignment(
            name,
            &[LocalityGroup {
                locality: e.locality.clone(),
                priority: 0,
                endpoints: vec![e.clone()],
            }],
            EndpointMetadata::Causeway,
        )),
        metadata: Some(causeway_metadata(&[("endpoint", e.address.to_string())])),
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

/// Which endpoints carry Causeway's metadata: all for Causeway proxies, which read it
/// (answering cluster, workload, per-endpoint SNI); for Envoy sidecars only the gateway
/// aggregates (a static bootstrap written from their resources still tells the Causeway data
/// plane which endpoints are paths through a gateway). At 100,000 endpoints per proxy it was
/// 60% of an Envoy sidecar's load assignments' bytes. Gateways' sets, shared by both data
/// planes, carry it all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EndpointMetadata {
    Causeway,
    GatewaysOnly,
}

pub(super) fn load_assignment(
    name: &str,
    groups: &[LocalityGroup],
    metadata: EndpointMetadata,
) -> endpoint::ClusterLoadAssignment {
    endpoint::ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: groups
            .iter()
            .map(|g| endpoint::LocalityLbEndpoints {
                locality: Some(locality(&g.locality)),
                lb_endpoints: g
                    .endpoints
                    .iter()
                    .map(|e| lb_endpoint(e, metadata))
                    .collect(),
                priority: g.priority,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Endpoints grouped by (priority, locality), priorities renumbered without gaps.
pub(super) fn group_by_locality(endpoints: &[ViewEndpoint]) -> Vec<LocalityGroup> {
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
