//! What an east-west gateway forwards: every service port exported (and not cluster-local)
//! from its cluster, to that cluster's ready endpoints with a known identity; and, for each
//! `TrafficPolicy` subset a route sends traffic to, the subset's endpoints under the subset's
//! SNI. Anything else has no route, so a connection with any other SNI is closed.

use std::collections::BTreeMap;

use causeway_model::{ClusterId, ServiceKey, ServicePort, Subset};
use serde::Serialize;

use crate::cluster_index::{PortEndpoints, ResolvedEndpoint};
use crate::names::{endpoint_sni, sni, subset_sni};
use crate::view::{identity_of, EndpointKind, ViewEndpoint};
use crate::MeshIndex;

/// One route of an east-west gateway: an exported service port of the gateway's cluster (or
/// one subset of it) and the local endpoints behind it. Gateways get routes only for exported
/// services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRoute {
    /// Namespace and name.
    pub key: ServiceKey,
    /// The service port.
    pub port: ServicePort,
    /// The `TrafficPolicy` subset the route is for; `None`: the whole port.
    pub subset: Option<String>,
    /// The SNI callers use, `outbound_.<port>_.<subset or empty>_.<fqdn>`.
    pub sni: String,
    /// Ready endpoints of the gateway's own cluster with a known identity (no caller is sent
    /// to the others, see [`crate::NO_IDENTITY_REASON`]), of the subset if any.
    pub endpoints: Vec<ViewEndpoint>,
}

/// The routes of the east-west gateway of `cluster`: what it forwards (see the module doc).
pub fn gateway_routes(index: &MeshIndex, cluster: &ClusterId) -> Vec<GatewayRoute> {
    index
        .services()
        .keys()
        .flat_map(|key| service_gateway_routes(index, cluster, key))
        .collect()
}

/// The routes of `cluster`'s east-west gateway for service `key` alone (none unless the
/// service is exported from there): [`gateway_routes`] is these for every service in key
/// order, so a gateway's routes can be rebuilt one changed service at a time.
pub fn service_gateway_routes(
    index: &MeshIndex,
    cluster: &ClusterId,
    key: &ServiceKey,
) -> Vec<GatewayRoute> {
    let (Some(spec), Some(merged)) = (index.mesh().cluster(cluster), index.service(key)) else {
        return Vec::new();
    };
    let exported_here = merged
        .exports
        .iter()
        .any(|e| &e.cluster == cluster && e.active);
    if !exported_here {
        return Vec::new();
    }
    let Some(entry) = index.cluster_service(cluster, key) else {
        return Vec::new();
    };
    let subsets = routed_subsets(index, key, cluster);
    let mut routes = Vec::new();
    for port_eps in &entry.ports {
        let endpoints = |keep: &dyn Fn(&ResolvedEndpoint) -> bool| {
            local_endpoints(index, key, cluster, &spec.locality, port_eps, keep)
        };
        routes.push(GatewayRoute {
            key: key.clone(),
            port: port_eps.port.clone(),
            subset: None,
            sni: sni(key, port_eps.port.port),
            endpoints: endpoints(&|_| true),
        });
        for (name, subset) in &subsets {
            let endpoints = endpoints(&|e| subset.matches(&e.labels));
            // No caller aggregates a subset the cluster has no endpoint of.
            if endpoints.is_empty() {
                continue;
            }
            routes.push(GatewayRoute {
                key: key.clone(),
                port: port_eps.port.clone(),
                subset: Some((*name).to_owned()),
                sni: subset_sni(key, port_eps.port.port, name),
                endpoints,
            });
        }
    }
    routes
}

/// The subsets of `key` that some policy's route sends traffic to in `cluster` (a route to
/// another cluster never reaches this gateway). Policies of one service define a subset name
/// alike (the registry checks), so the first definition stands for all.
fn routed_subsets<'a>(
    index: &'a MeshIndex,
    key: &ServiceKey,
    cluster: &ClusterId,
) -> BTreeMap<&'a str, &'a Subset> {
    let mut out = BTreeMap::new();
    for policy in index
        .traffic_policies()
        .iter()
        .filter(|p| &p.service == key)
    {
        for route in &policy.routes {
            if route.cluster.as_ref().is_some_and(|c| c != cluster) {
                continue;
            }
            if let Some(subset) = route.subset.as_deref().and_then(|s| policy.subset(s)) {
                out.entry(subset.name.as_str()).or_insert(subset);
            }
        }
    }
    out
}

/// The ready endpoints of a port of `cluster` with a known identity that `keep` accepts.
fn local_endpoints(
    index: &MeshIndex,
    key: &ServiceKey,
    cluster: &ClusterId,
    gateway_locality: &causeway_model::Locality,
    port_eps: &PortEndpoints,
    keep: &dyn Fn(&ResolvedEndpoint) -> bool,
) -> Vec<ViewEndpoint> {
    port_eps
        .endpoints
        .iter()
        .filter(|e| e.is_ready() && keep(e))
        .filter_map(|e| Some((e, identity_of(index.mesh(), key, e)?)))
        .map(|(e, identity)| ViewEndpoint {
            kind: EndpointKind::Direct,
            address: e.address,
            port: e.port,
            cluster: cluster.clone(),
            network: e.network.clone(),
            locality: e.locality.clone(),
            priority: e.locality.priority_from(gateway_locality),
            weight: e.weight,
            via: None,
            workload: e.workload.clone(),
            identity: Some(identity),
            sni: Some(endpoint_sni(
                key,
                port_eps.port.port,
                cluster,
                e.address,
                e.port,
            )),
            reason: "local endpoint behind the gateway".to_owned(),
            unhealthy: None,
        })
        .collect()
}
