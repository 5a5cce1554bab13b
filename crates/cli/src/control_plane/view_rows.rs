//! The rows `/debug/view` answers with: every endpoint a proxy knows of per service port, used
//! or not and why, the `TrafficPolicy` in force for the proxy's cluster and the endpoints of
//! each of its weighted routes.

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

fn endpoint_row(e: &ViewEndpoint) -> EndpointRow {
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
    }
}

fn route_row(r: &ViewRoute) -> RouteRow {
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
            .map(endpoint_row)
            .collect(),
    }
}

pub fn port_row(p: &ViewPort) -> PortRow {
    let mut endpoints: Vec<EndpointRow> = p
        .endpoints()
        .chain(p.remote.iter())
        .map(endpoint_row)
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
    }));
    PortRow {
        port: p.port.port,
        name: p.port.name.clone(),
        protocol: p.port.protocol.clone(),
        app_protocol: p.port.app_protocol.clone(),
        sni: p.sni.clone(),
        endpoints,
        policy: p.policy.clone(),
        routes: p.routes.iter().map(route_row).collect(),
    }
}
