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
pub use crate::gateway::{gateway_routes, service_gateway_routes, GatewayRoute};
pub use crate::names::{endpoint_sni, service_slots, sni, subset_sni};
pub use crate::shape::route_name;
use crate::MeshIndex;
use crate::{gateway_health, shape};

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
    /// Its workload's labels (what a policy's `failoverPriority` compares with endpoints').
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
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
            labels: placement.map(|p| (*p.labels).clone()).unwrap_or_default(),
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
    /// Why the control plane marks it unhealthy: its gateway fails the control plane's probes
    /// ([`MeshIndex::set_gateways_down`]). Data planes then skip it. `None`: nothing known
    /// against it (the data plane's own checks still apply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<String>,
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
    /// The policy's weighted split of the requests over clusters and subsets, each with its
    /// own endpoints; empty: every request may use every endpoint above.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ViewRoute>,
}

/// One weighted destination of a port's requests under a policy's `routes`: the endpoints of
/// a cluster, of a subset, or of both, shaped like the port's own (same mode, priorities and
/// gateways). Kept at weight 0 too, so a blue-green switch only moves weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewRoute {
    /// `<subset>`, `<subset>.<cluster>` or `all.<cluster>` ([`route_name`]).
    pub name: String,
    /// Only this cluster's endpoints, if set.
    pub cluster: Option<ClusterId>,
    /// Only this subset's endpoints, if set.
    pub subset: Option<String>,
    /// Percent of the requests.
    pub weight: u32,
    /// The SNI of its gateway aggregates: the subset's ([`subset_sni`]), else the port's.
    pub sni: String,
    /// Locality groups, by priority.
    pub groups: Vec<LocalityGroup>,
    /// Real remote endpoints behind gateways.
    pub remote: Vec<ViewEndpoint>,
    /// Exactly the identities of its endpoints.
    pub identities: BTreeSet<SpiffeId>,
}

/// Which traffic policy shaped a port's endpoints, for operators and the xDS builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInForce {
    /// `namespace/name`.
    pub name: String,
    /// Its mode.
    pub mode: TrafficMode,
    /// Whether it set the endpoints' weights as the user's split (`ActiveActive`, or a
    /// `distribute` rule for this caller): balanced by weight, not by latency.
    pub weighted: bool,
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
        .map(|port| view_port(index, ctx, key, &sources, port))
        .collect();
    Some(ViewService {
        key: key.clone(),
        hostname: key.fqdn(),
        clusters: sources,
        ports,
    })
}

pub(crate) fn identity_of(
    mesh: &MeshConfig,
    key: &ServiceKey,
    ep: &ResolvedEndpoint,
) -> Option<SpiffeId> {
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
) -> ViewPort {
    let mesh = index.mesh();
    let mut candidates = shape::candidates(index, ctx, key, sources, &port);
    let mut hidden = std::mem::take(&mut candidates.hidden);
    let policy = TrafficPolicy::select(index.traffic_policies(), key, &ctx.identity.cluster);
    let all = |_: &ClusterId, _: &BTreeMap<String, String>| true;
    let scope = shape::PortScope {
        ctx,
        key,
        port: port.port,
        mesh,
    };
    let mut whole = shape::shape(scope, &candidates, &all, policy, &mut hidden);
    gateway_health::mark(index, &mut whole.groups, &mut whole.remote);
    let mut routes = policy.map_or_else(Vec::new, |p| shape::routes(scope, &candidates, p));
    for r in &mut routes {
        gateway_health::mark(index, &mut r.groups, &mut r.remote);
    }
    ViewPort {
        sni: sni(key, port.port),
        port,
        groups: whole.groups,
        remote: whole.remote,
        hidden,
        identities: whole.identities,
        policy: policy.map(|p| PolicyInForce {
            name: format!("{}/{}", p.namespace, p.name),
            mode: p.mode,
            weighted: p.mode == TrafficMode::ActiveActive
                || (p.mode == TrafficMode::Locality
                    && p.distribute.iter().any(|d| d.from.matches(&ctx.locality))),
        }),
        routes,
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
