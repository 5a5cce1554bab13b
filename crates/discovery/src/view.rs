//! Per-proxy views: what one proxy must see, as a pure function of the mesh index and the
//! proxy's identity.
//!
//! Split horizon: endpoints on the proxy's network are reached directly; endpoints on another
//! network through an east-west gateway of their own cluster, or else any gateway of their
//! network. A network with no gateway is unreachable from the others and the view says so.
//! Each port's endpoints are grouped by locality with Istio's priority numbering relative to
//! the proxy, renumbered without gaps.
//!
//! Only endpoints with a known identity (a WorkloadEntry's service account, a Pod's, or an
//! EndpointSlice's `causeway.io/service-account` annotation) are included: the client checks
//! the server's certificate against exactly those SPIFFE IDs, never a wildcard. The others are
//! hidden with [`NO_IDENTITY_REASON`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use causeway_model::{
    ClusterId, Gateway, Locality, MeshConfig, NetworkId, ProxyIdentity, ServiceKey, ServicePort,
    SpiffeId, TrafficMode, TrafficPolicy,
};
use serde::Serialize;

use crate::cluster_index::ResolvedEndpoint;
pub use crate::names::{endpoint_sni, service_slots, sni};
use crate::MeshIndex;

/// Why a view cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The proxy names a cluster the mesh does not declare.
    #[error(
        "proxy {namespace}/{workload} names cluster {cluster}, which mesh.yaml does not declare"
    )]
    UnknownCluster {
        /// The cluster named.
        cluster: ClusterId,
        /// Proxy namespace.
        namespace: String,
        /// Proxy workload.
        workload: String,
    },
}

/// A proxy's identity resolved against the index: its network and locality.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyContext {
    /// Who the proxy says it is.
    pub identity: ProxyIdentity,
    /// Network it sits on.
    pub network: NetworkId,
    /// Where it runs.
    pub locality: Locality,
    /// Its service account, when its workload is known.
    pub service_account: Option<String>,
    /// Whether its workload was found in its cluster's registry (else cluster defaults apply).
    pub workload_found: bool,
}

impl ProxyContext {
    /// Resolves `identity` against the index: the workload's own network and locality when its
    /// WorkloadEntry is known, the cluster's otherwise.
    pub fn resolve(index: &MeshIndex, identity: ProxyIdentity) -> Result<Self, ViewError> {
        let Some(spec) = index.mesh().cluster(&identity.cluster) else {
            return Err(ViewError::UnknownCluster {
                cluster: identity.cluster.clone(),
                namespace: identity.namespace.clone(),
                workload: identity.workload.clone(),
            });
        };
        let placement = index.cluster(&identity.cluster).and_then(|c| {
            c.workloads
                .get(&(identity.namespace.clone(), identity.workload.clone()))
        });
        Ok(Self {
            network: placement.map_or_else(|| spec.network.clone(), |p| p.network.clone()),
            locality: placement.map_or_else(|| spec.locality.clone(), |p| p.locality.clone()),
            service_account: placement.map(|p| p.service_account.clone()),
            workload_found: placement.is_some(),
            identity,
        })
    }
}

/// How a proxy reaches an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// Same network: the endpoint's own address.
    Direct,
    /// Another network: one gateway standing for the endpoints behind it (what EDS carries).
    Gateway,
    /// A real endpoint on another network, reached `via` a gateway (kept for per-endpoint
    /// balancing and for operators).
    Remote,
}

/// One endpoint as a proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewEndpoint {
    /// Direct, gateway or remote.
    pub kind: EndpointKind,
    /// Address to connect to (a gateway's for `gateway`; the endpoint's own otherwise).
    pub address: IpAddr,
    /// Port to connect to.
    pub port: u16,
    /// Cluster of the endpoint (of the gateway, for `gateway`).
    pub cluster: ClusterId,
    /// Its network.
    pub network: NetworkId,
    /// Its locality.
    pub locality: Locality,
    /// Priority relative to the proxy, renumbered without gaps (0 is preferred).
    pub priority: u32,
    /// Load-balancing weight; for a gateway, the total weight of the endpoints behind it.
    pub weight: u32,
    /// The gateway a remote endpoint is reached through.
    pub via: Option<Gateway>,
    /// Workload name, when known.
    pub workload: Option<String>,
    /// The identity the endpoint's certificate must carry, when known.
    pub identity: Option<SpiffeId>,
    /// The SNI that reaches only this endpoint through its gateway ([`endpoint_sni`]): set
    /// for a remote endpoint whose gateway is its own cluster's (a gateway routes per-endpoint
    /// SNIs to its cluster's pods only), and for the endpoints of a gateway route.
    pub sni: Option<String>,
    /// Why it is reached this way.
    pub reason: String,
}

/// Endpoints of one locality, at one priority: Envoy's `LocalityLbEndpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalityGroup {
    /// The locality.
    pub locality: Locality,
    /// Priority relative to the proxy.
    pub priority: u32,
    /// Direct endpoints and gateway aggregates.
    pub endpoints: Vec<ViewEndpoint>,
}

/// Why an endpoint without a known identity is left out: mesh mTLS checks the server's SPIFFE
/// ID exactly, and there is none to check, so accepting it would mean accepting any workload
/// of the trust domain.
pub const NO_IDENTITY_REASON: &str = "no known identity (no Pod service account, no causeway.io/service-account annotation): never reached over mesh mTLS";

/// An endpoint the proxy must not use, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HiddenEndpoint {
    /// Address.
    pub address: IpAddr,
    /// Port.
    pub port: u16,
    /// Its cluster.
    pub cluster: ClusterId,
    /// Its network.
    pub network: NetworkId,
    /// Workload (WorkloadEntry or pod) name, when known.
    pub workload: Option<String>,
    /// Why it is left out.
    pub reason: String,
}

/// One visible service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewPort {
    /// Port definition.
    pub port: ServicePort,
    /// TLS SNI for mesh traffic to this port: `outbound_.<port>_._.<fqdn>`, what gateways route on.
    pub sni: String,
    /// Locality groups, by priority.
    pub groups: Vec<LocalityGroup>,
    /// Real remote endpoints behind gateways.
    pub remote: Vec<ViewEndpoint>,
    /// Endpoints left out (not ready, no known identity, unreachable network).
    pub hidden: Vec<HiddenEndpoint>,
    /// Exactly the identities of the endpoints included (direct and behind gateways): what the
    /// client accepts from the server's certificate. Empty only when no endpoint is included.
    pub identities: BTreeSet<SpiffeId>,
    /// The `TrafficPolicy` in force for this caller, if any.
    pub policy: Option<PolicyInForce>,
}

/// Which traffic policy shaped a port's endpoints, for operators and the xDS builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInForce {
    /// `namespace/name`.
    pub name: String,
    /// Its mode.
    pub mode: TrafficMode,
}

impl ViewPort {
    /// Every endpoint EDS carries (direct and gateway), across groups.
    pub fn endpoints(&self) -> impl Iterator<Item = &ViewEndpoint> {
        self.groups.iter().flat_map(|g| g.endpoints.iter())
    }
}

/// One visible service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewService {
    /// Namespace and name.
    pub key: ServiceKey,
    /// `<name>.<namespace>.svc.cluster.local`.
    pub hostname: String,
    /// Clusters whose endpoints this proxy may use.
    pub clusters: Vec<ClusterId>,
    /// Ports.
    pub ports: Vec<ViewPort>,
}

/// A cluster's service the proxy cannot see, and why (for operators).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HiddenService {
    /// Namespace and name.
    pub key: ServiceKey,
    /// The cluster whose service is hidden.
    pub cluster: ClusterId,
    /// Why.
    pub reason: String,
}

/// Everything one proxy sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyView {
    /// The proxy, resolved.
    pub proxy: ProxyContext,
    /// Visible services, by key.
    pub services: Vec<ViewService>,
}

/// The gateways that carry traffic to an endpoint on `network` in `cluster`: the cluster's own
/// when it is on that network and has any, else every gateway of the network.
fn gateways_for(mesh: &MeshConfig, cluster: &ClusterId, network: &NetworkId) -> Vec<Gateway> {
    if let Some(spec) = mesh.cluster(cluster) {
        if &spec.network == network && !spec.gateways.is_empty() {
            return spec.gateways.clone();
        }
    }
    mesh.network_gateways(network)
}

fn gateway_owner(mesh: &MeshConfig, gateway: &Gateway, fallback: &ClusterId) -> ClusterId {
    mesh.clusters
        .iter()
        .find(|c| c.gateways.contains(gateway))
        .map_or_else(|| fallback.clone(), |c| c.id.clone())
}

/// Computes the whole view of a proxy.
pub fn view(index: &MeshIndex, ctx: &ProxyContext) -> ProxyView {
    let services = index
        .services()
        .keys()
        .filter_map(|key| view_service(index, ctx, key))
        .collect();
    ProxyView {
        proxy: ctx.clone(),
        services,
    }
}

struct PendingRemote<'a> {
    cluster: &'a ClusterId,
    endpoint: &'a ResolvedEndpoint,
    identity: SpiffeId,
    gateways: Vec<Gateway>,
}

/// Computes the view of one service for a proxy; `None` when the proxy cannot see it.
pub fn view_service(
    index: &MeshIndex,
    ctx: &ProxyContext,
    key: &ServiceKey,
) -> Option<ViewService> {
    let merged = index.service(key)?;
    let me = &ctx.identity.cluster;
    let sources = merged.source_clusters(me);
    if sources.is_empty() {
        return None;
    }
    let mesh = index.mesh();
    // Ports: the local definition first, then the merged export definition for the rest.
    let mut port_defs: Vec<ServicePort> = index
        .cluster_service(me, key)
        .map(|s| s.service.ports.clone())
        .unwrap_or_default();
    if sources.iter().any(|c| c != me) {
        for p in &merged.ports {
            if !port_defs
                .iter()
                .any(|d| d.port == p.port && d.protocol == p.protocol)
            {
                port_defs.push(p.clone());
            }
        }
    }
    let ports = port_defs
        .into_iter()
        .map(|port| view_port(index, ctx, key, &sources, port, mesh))
        .collect();
    Some(ViewService {
        key: key.clone(),
        hostname: key.fqdn(),
        clusters: sources,
        ports,
    })
}

fn identity_of(mesh: &MeshConfig, key: &ServiceKey, ep: &ResolvedEndpoint) -> Option<SpiffeId> {
    ep.service_account.as_ref().map(|sa| {
        SpiffeId::new(
            mesh.mesh.trust_domain.clone(),
            key.namespace.clone(),
            sa.clone(),
        )
    })
}

fn view_port(
    index: &MeshIndex,
    ctx: &ProxyContext,
    key: &ServiceKey,
    sources: &[ClusterId],
    port: ServicePort,
    mesh: &MeshConfig,
) -> ViewPort {
    let me = &ctx.identity.cluster;
    let mut direct: Vec<ViewEndpoint> = Vec::new();
    let mut pending: Vec<PendingRemote<'_>> = Vec::new();
    let mut hidden: Vec<HiddenEndpoint> = Vec::new();
    let mut identities = BTreeSet::new();
    for cluster in sources {
        let Some(entry) = index.cluster_service(cluster, key) else {
            continue;
        };
        let Some(port_eps) = entry.port(port.port, &port.protocol) else {
            continue;
        };
        for ep in &port_eps.endpoints {
            let hide = |reason: String| HiddenEndpoint {
                address: ep.address,
                port: ep.port,
                cluster: cluster.clone(),
                network: ep.network.clone(),
                workload: ep.workload.clone(),
                reason,
            };
            if let Some(why) = &ep.not_ready {
                hidden.push(hide(format!("not ready: {why}")));
                continue;
            }
            let Some(identity) = identity_of(mesh, key, ep) else {
                hidden.push(hide(NO_IDENTITY_REASON.to_owned()));
                continue;
            };
            if ep.network == ctx.network {
                identities.insert(identity.clone());
                let reason = if cluster == me {
                    "same cluster".to_owned()
                } else {
                    format!("same network {} as the proxy", ep.network)
                };
                direct.push(ViewEndpoint {
                    kind: EndpointKind::Direct,
                    address: ep.address,
                    port: ep.port,
                    cluster: cluster.clone(),
                    network: ep.network.clone(),
                    locality: ep.locality.clone(),
                    priority: ep.locality.priority_from(&ctx.locality),
                    weight: ep.weight,
                    via: None,
                    workload: ep.workload.clone(),
                    identity: Some(identity),
                    sni: None,
                    reason,
                });
                continue;
            }
            let gateways = gateways_for(mesh, cluster, &ep.network);
            if gateways.is_empty() {
                hidden.push(hide(format!(
                    "network {} has no east-west gateway; unreachable from network {}",
                    ep.network, ctx.network
                )));
                continue;
            }
            identities.insert(identity.clone());
            pending.push(PendingRemote {
                cluster,
                endpoint: ep,
                identity,
                gateways,
            });
        }
    }

    // Assign each remote endpoint to exactly one gateway: round-robin over the endpoints of one
    // (locality, gateway set), in address order, so load spreads evenly and deterministically.
    pending.sort_by(|a, b| {
        (
            &a.endpoint.locality,
            &a.gateways,
            a.endpoint.address,
            a.endpoint.port,
        )
            .cmp(&(
                &b.endpoint.locality,
                &b.gateways,
                b.endpoint.address,
                b.endpoint.port,
            ))
    });
    let mut rr: BTreeMap<(Locality, Vec<Gateway>), usize> = BTreeMap::new();
    let mut remote: Vec<ViewEndpoint> = Vec::new();
    // (locality, gateway) -> (owner cluster, network, weight, endpoint count)
    let mut aggregates: BTreeMap<(Locality, Gateway), (ClusterId, NetworkId, u32, usize)> =
        BTreeMap::new();
    for p in &pending {
        let slot = rr
            .entry((p.endpoint.locality.clone(), p.gateways.clone()))
            .or_insert(0);
        let gateway = p.gateways[*slot % p.gateways.len()];
        *slot += 1;
        let owner = gateway_owner(mesh, &gateway, p.cluster);
        let agg = aggregates
            .entry((p.endpoint.locality.clone(), gateway))
            .or_insert_with(|| (owner.clone(), p.endpoint.network.clone(), 0, 0));
        agg.2 = agg.2.saturating_add(p.endpoint.weight);
        agg.3 += 1;
        remote.push(ViewEndpoint {
            kind: EndpointKind::Remote,
            address: p.endpoint.address,
            port: p.endpoint.port,
            cluster: p.cluster.clone(),
            network: p.endpoint.network.clone(),
            locality: p.endpoint.locality.clone(),
            priority: p.endpoint.locality.priority_from(&ctx.locality),
            weight: p.endpoint.weight,
            via: Some(gateway),
            workload: p.endpoint.workload.clone(),
            identity: Some(p.identity.clone()),
            sni: (owner == *p.cluster).then(|| {
                endpoint_sni(
                    key,
                    port.port,
                    p.cluster,
                    p.endpoint.address,
                    p.endpoint.port,
                )
            }),
            reason: format!(
                "network {} is not the proxy's {}; via east-west gateway {gateway} of cluster {owner}",
                p.endpoint.network, ctx.network
            ),
        });
    }
    let mut endpoints = direct;
    for ((locality, gateway), (owner, network, weight, count)) in aggregates {
        endpoints.push(ViewEndpoint {
            kind: EndpointKind::Gateway,
            address: gateway.address,
            port: gateway.port,
            priority: locality.priority_from(&ctx.locality),
            cluster: owner.clone(),
            network: network.clone(),
            locality,
            weight,
            via: None,
            workload: None,
            identity: None,
            sni: None,
            reason: format!(
                "east-west gateway of cluster {owner} (network {network}) for {count} endpoint(s) behind it"
            ),
        });
    }

    let policy = TrafficPolicy::select(&mesh.traffic_policies, key, me);
    if let Some(policy) = policy {
        let caller = &ctx.locality;
        crate::traffic::apply(policy, caller, &mut endpoints, &mut remote, &mut hidden);
        identities = crate::traffic::identities_of(&endpoints, &remote);
    }
    let policy = policy.map(|p| PolicyInForce {
        name: format!("{}/{}", p.namespace, p.name),
        mode: p.mode,
    });

    // Renumber priorities without gaps, then group by (priority, locality).
    let raw: BTreeSet<u32> = endpoints.iter().map(|e| e.priority).collect();
    let renumber: BTreeMap<u32, u32> = raw.into_iter().zip(0u32..).collect();
    let renumbered = |p: u32| renumber.get(&p).copied().unwrap_or(p);
    let mut groups: BTreeMap<(u32, Locality), Vec<ViewEndpoint>> = BTreeMap::new();
    for mut e in endpoints {
        e.priority = renumbered(e.priority);
        groups
            .entry((e.priority, e.locality.clone()))
            .or_default()
            .push(e);
    }
    for r in &mut remote {
        r.priority = renumbered(r.priority);
    }
    let groups = groups
        .into_iter()
        .map(|((priority, locality), mut endpoints)| {
            endpoints.sort_by_key(|e| (e.address, e.port));
            LocalityGroup {
                locality,
                priority,
                endpoints,
            }
        })
        .collect();
    ViewPort {
        sni: sni(key, port.port),
        port,
        groups,
        remote,
        hidden,
        identities,
        policy,
    }
}

/// Services of other clusters the proxy cannot see, with the reason: the other half of
/// "what each proxy sees and why".
pub fn hidden_services(index: &MeshIndex, ctx: &ProxyContext) -> Vec<HiddenService> {
    let me = &ctx.identity.cluster;
    let mut out = Vec::new();
    for (key, merged) in index.services() {
        let sources = merged.source_clusters(me);
        for cluster in &merged.defined_in {
            if sources.contains(cluster) {
                continue;
            }
            let reason = match merged.exports.iter().find(|e| &e.cluster == cluster) {
                None => format!("not exported from cluster {cluster} (no ServiceExport)"),
                Some(e) if !e.active => e
                    .inactive_reason
                    .clone()
                    .unwrap_or_else(|| "export inactive".to_owned()),
                Some(e) => format!(
                    "cluster {cluster} exports it only to {}",
                    e.export_to
                        .iter()
                        .flatten()
                        .map(ClusterId::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            out.push(HiddenService {
                key: key.clone(),
                cluster: cluster.clone(),
                reason,
            });
        }
    }
    out
}

/// One route of an east-west gateway: an exported service port of the gateway's cluster and
/// the local endpoints behind it. Gateways get routes only for exported services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRoute {
    /// Namespace and name.
    pub key: ServiceKey,
    /// The service port.
    pub port: ServicePort,
    /// The SNI callers use, `outbound_.<port>_._.<fqdn>`.
    pub sni: String,
    /// Ready endpoints of the gateway's own cluster with a known identity (no caller is sent
    /// to the others, see [`NO_IDENTITY_REASON`]).
    pub endpoints: Vec<ViewEndpoint>,
}

/// What the east-west gateway of `cluster` forwards: every service port exported (and not
/// cluster-local) from that cluster, to that cluster's ready endpoints with a known identity
/// (what callers' aggregate gateway weights count). Anything else has no
/// route, so a connection with any other SNI is closed.
pub fn gateway_routes(index: &MeshIndex, cluster: &ClusterId) -> Vec<GatewayRoute> {
    let Some(spec) = index.mesh().cluster(cluster) else {
        return Vec::new();
    };
    let mut routes = Vec::new();
    for (key, merged) in index.services() {
        let exported_here = merged
            .exports
            .iter()
            .any(|e| &e.cluster == cluster && e.active);
        if !exported_here {
            continue;
        }
        let Some(entry) = index.cluster_service(cluster, key) else {
            continue;
        };
        for port_eps in &entry.ports {
            let endpoints = port_eps
                .endpoints
                .iter()
                .filter(|e| e.is_ready())
                .filter_map(|e| Some((e, identity_of(index.mesh(), key, e)?)))
                .map(|(e, identity)| ViewEndpoint {
                    kind: EndpointKind::Direct,
                    address: e.address,
                    port: e.port,
                    cluster: cluster.clone(),
                    network: e.network.clone(),
                    locality: e.locality.clone(),
                    priority: e.locality.priority_from(&spec.locality),
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
                })
                .collect();
            routes.push(GatewayRoute {
                key: key.clone(),
                port: port_eps.port.clone(),
                sni: sni(key, port_eps.port.port),
                endpoints,
            });
        }
    }
    routes
}
