//! The rows `/debug/view` answers with: every endpoint a proxy knows of per service port, used
//! or not and why, the `TrafficPolicy` in force for the proxy's cluster and the endpoints of
//! each of its weighted routes. Each row also says what is known against the endpoint: its
//! gateway found dead by the control plane's probes, its cluster's registry stale.

use std::collections::BTreeMap;
use std::net::IpAddr;

use causeway_discovery::{EndpointKind, PolicyInForce, ViewEndpoint, ViewPort, ViewRoute};
use causeway_model::{ClusterId, Locality, NetworkId, SpiffeId};
use serde::Serialize;

/// One row of the view: any endpoint the proxy knows of, used or not.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRow {
    kind: &'static str,
    address: IpAddr,
    port: u16,
    cluster: ClusterId,
    network: NetworkId,
    locality: Option<Locality>,
    priority: Option<u32>,
    weight: u32,
    via: Option<String>,
    workload: Option<String>,
    identity: Option<SpiffeId>,
    reason: String,
    /// Why the control plane marks it unhealthy (its gateway fails the probes), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    unhealthy: Option<String>,
    /// Its cluster's registry: `current`, or `stale for N s` (its last good state is served
    /// until the data plane finds the endpoint dead), or `withdrawn`.
    registry: String,
}

/// What each cluster's registry state reads as in a row (clusters absent are current).
pub type RegistryStates = BTreeMap<ClusterId, String>;

fn registry_of(registry: &RegistryStates, cluster: &ClusterId) -> String {
    registry
        .get(cluster)
        .cloned()
        .unwrap_or_else(|| "current".to_owned())
}

/// One weighted route of the policy in force, with its own endpoints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRow {
    name: String,
    cluster: Option<ClusterId>,
    subset: Option<String>,
    /// Percent of the requests.
    weight: u32,
    sni: String,
    endpoints: Vec<EndpointRow>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRow {
    port: u16,
    name: Option<String>,
    protocol: String,
    app_protocol: Option<String>,
    sni: String,
    endpoints: Vec<EndpointRow>,
    /// The `TrafficPolicy` in force for the proxy's cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<PolicyInForce>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<RouteRow>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceViewRow {
    pub service: String,
    pub hostname: String,
    pub clusters: Vec<ClusterId>,
    pub ports: Vec<PortRow>,
}

fn kind_name(kind: EndpointKind) -> &'static str {
    match kind {
        EndpointKind::Direct => "direct",
        EndpointKind::Gateway => "gateway",
        EndpointKind::Remote => "remote",
    }
}

fn endpoint_row(e: &ViewEndpoint, registry: &RegistryStates) -> EndpointRow {
    EndpointRow {
        kind: kind_name(e.kind),
        address: e.address,
        port: e.port,
        cluster: e.cluster.clone(),
        network: e.network.clone(),
        locality: Some(e.locality.clone()),
        priority: Some(e.priority),
        weight: e.weight,
        via: e.via.map(|g| g.to_string()),
        workload: e.workload.clone(),
        identity: e.identity.clone(),
        reason: e.reason.clone(),
        unhealthy: e.unhealthy.clone(),
        registry: registry_of(registry, &e.cluster),
    }
}

fn route_row(r: &ViewRoute, registry: &RegistryStates) -> RouteRow {
    RouteRow {
        name: r.name.clone(),
        cluster: r.cluster.clone(),
        subset: r.subset.clone(),
        weight: r.weight,
        sni: r.sni.clone(),
        endpoints: r
            .groups
            .iter()
            .flat_map(|g| &g.endpoints)
            .chain(r.remote.iter())
            .map(|e| endpoint_row(e, registry))
            .collect(),
    }
}

/// The rows of one port; `registry` as [`RegistryStates`] says.
pub fn port_row(p: &ViewPort, registry: &RegistryStates) -> PortRow {
    let mut endpoints: Vec<EndpointRow> = p
        .endpoints()
        .chain(p.remote.iter())
        .map(|e| endpoint_row(e, registry))
        .collect();
    endpoints.extend(p.hidden.iter().map(|h| EndpointRow {
        kind: "hidden",
        address: h.address,
        port: h.port,
        cluster: h.cluster.clone(),
        network: h.network.clone(),
        locality: None,
        priority: None,
        weight: 0,
        via: None,
        workload: h.workload.clone(),
        identity: None,
        reason: h.reason.clone(),
        unhealthy: None,
        registry: registry_of(registry, &h.cluster),
    }));
    PortRow {
        port: p.port.port,
        name: p.port.name.clone(),
        protocol: p.port.protocol.clone(),
        app_protocol: p.port.app_protocol.clone(),
        sni: p.sni.clone(),
        endpoints,
        policy: p.policy.clone(),
        routes: p.routes.iter().map(|r| route_row(r, registry)).collect(),
    }
}
