//! One service port's endpoints as one proxy sees them: the candidates (direct on the proxy's
//! network, behind a gateway otherwise, hidden with the reason), each remote endpoint assigned
//! to one gateway and aggregated per (locality, gateway), the `TrafficPolicy` applied, and the
//! result grouped by priority and locality. The same shaping, restricted to a cluster or a
//! subset, gives each weighted route of the policy its own endpoints.

use std::collections::{BTreeMap, BTreeSet};

use causeway_model::{
    ClusterId, Gateway, Locality, MeshConfig, NetworkId, ServiceKey, ServicePort, SpiffeId,
    TrafficMode, TrafficPolicy, TrafficRoute,
};

use crate::cluster_index::ResolvedEndpoint;
use crate::names::{endpoint_sni, sni, subset_sni};
use crate::view::{
    identity_of, EndpointKind, HiddenEndpoint, LocalityGroup, ProxyContext, ViewEndpoint,
    ViewRoute, NO_IDENTITY_REASON,
};
use crate::{gateway_health, MeshIndex};

/// Labels of an endpoint, for subsets.
type Labels = BTreeMap<String, String>;

/// A port's endpoints before shaping.
pub(crate) struct Candidates<'a> {
    /// On the proxy's network, with their workloads' labels.
    direct: Vec<(ViewEndpoint, &'a Labels)>,
    /// On other networks with a gateway, in (locality, gateways, address) order.
    pending: Vec<PendingRemote<'a>>,
    /// Left out, with the reason.
    pub hidden: Vec<HiddenEndpoint>,
}

struct PendingRemote<'a> {
    cluster: &'a ClusterId,
    endpoint: &'a ResolvedEndpoint,
    identity: SpiffeId,
    gateways: Vec<Gateway>,
}

/// Whose view of which port is being shaped.
#[derive(Clone, Copy)]
pub(crate) struct PortScope<'a> {
    pub ctx: &'a ProxyContext,
    pub key: &'a ServiceKey,
    pub port: u16,
    pub mesh: &'a MeshConfig,
}

/// A port's (or a route's) endpoints, shaped.
pub(crate) struct Shaped {
    pub groups: Vec<LocalityGroup>,
    pub remote: Vec<ViewEndpoint>,
    pub identities: BTreeSet<SpiffeId>,
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

/// The endpoints of `port` of `key` in `sources` the proxy may reach, and the others with the
/// reason.
pub(crate) fn candidates<'a>(
    index: &'a MeshIndex,
    ctx: &ProxyContext,
    key: &ServiceKey,
    sources: &'a [ClusterId],
    port: &ServicePort,
) -> Candidates<'a> {
    let mesh = index.mesh();
    let me = &ctx.identity.cluster;
    let mut out = Candidates {
        direct: Vec::new(),
        pending: Vec::new(),
        hidden: Vec::new(),
    };
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
                out.hidden.push(hide(format!("not ready: {why}")));
                continue;
            }
            let Some(identity) = identity_of(mesh, key, ep) else {
                out.hidden.push(hide(NO_IDENTITY_REASON.to_owned()));
                continue;
            };
            if ep.network == ctx.network {
                let reason = if cluster == me {
                    "same cluster".to_owned()
                } else {
                    format!("same network {} as the proxy", ep.network)
                };
                let direct = ViewEndpoint {
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
                    unhealthy: None,
                };
                out.direct.push((direct, &ep.labels));
                continue;
            }
            let gateways =
                gateway_health::live_gateways(index, gateways_for(mesh, cluster, &ep.network));
            if gateways.is_empty() {
                out.hidden.push(hide(format!(
                    "network {} has no east-west gateway; unreachable from network {}",
                    ep.network, ctx.network
                )));
                continue;
            }
            out.pending.push(PendingRemote {
                cluster,
                endpoint: ep,
                identity,
                gateways,
            });
        }
    }
    // Remote endpoints are spread over gateways in this order (see `via_gateways`).
    out.pending.sort_by(|a, b| {
        let order = |p: &PendingRemote<'_>| {
            (
                p.endpoint.locality.clone(),
                p.gateways.clone(),
                p.endpoint.address,
                p.endpoint.port,
            )
        };
        order(a).cmp(&order(b))
    });
    out
}

/// Shapes the candidates `keep` accepts (by cluster and labels) for the proxy: gateway
/// assignment and aggregation, the `policy` (endpoints it leaves out go to `hidden`), and
/// priorities renumbered without gaps.
pub(crate) fn shape(
    scope: PortScope<'_>,
    candidates: &Candidates<'_>,
    keep: &dyn Fn(&ClusterId, &Labels) -> bool,
    policy: Option<&TrafficPolicy>,
    hidden: &mut Vec<HiddenEndpoint>,
) -> Shaped {
    let mut endpoints: Vec<ViewEndpoint> = candidates
        .direct
        .iter()
        .filter(|(e, labels)| keep(&e.cluster, labels))
        .map(|(e, _)| e.clone())
        .collect();
    let pending: Vec<&PendingRemote<'_>> = candidates
        .pending
        .iter()
        .filter(|p| keep(p.cluster, &p.endpoint.labels))
        .collect();
    let mut remote = via_gateways(scope, &pending, &mut endpoints);
    if let Some(policy) = policy {
        crate::traffic::apply(
            policy,
            &scope.ctx.locality,
            &mut endpoints,
            &mut remote,
            hidden,
        );
        if policy.mode == TrafficMode::Locality && !policy.failover_priority.is_empty() {
            by_failover_priority(scope, candidates, policy, &mut endpoints, &mut remote);
        }
    }
    let identities = crate::traffic::identities_of(&endpoints, &remote);
    let groups = group(endpoints, &mut remote);
    Shaped {
        groups,
        remote,
        identities,
    }
}

/// Refines priorities by the policy's `failoverPriority` (see `failover_priority`). A gateway
/// aggregate takes the best label priority of the pods behind it: its SNI reaches any pod of
/// the service there, so an Envoy caller cannot tell them apart (a Causeway caller balances
/// the pods themselves, each at its own priority).
fn by_failover_priority(
    scope: PortScope<'_>,
    candidates: &Candidates<'_>,
    policy: &TrafficPolicy,
    endpoints: &mut [ViewEndpoint],
    remote: &mut [ViewEndpoint],
) {
    use crate::failover_priority::{combine, label_priority, Side};
    let ctx = scope.ctx;
    let caller = Side {
        labels: &ctx.labels,
        locality: &ctx.locality,
        network: &ctx.network,
        cluster: &ctx.identity.cluster,
    };
    let list = &policy.failover_priority;
    let mut by_endpoint: BTreeMap<(&ClusterId, std::net::IpAddr, u16), u32> = BTreeMap::new();
    for (e, labels) in &candidates.direct {
        let side = Side {
            labels,
            locality: &e.locality,
            network: &e.network,
            cluster: &e.cluster,
        };
        by_endpoint.insert(
            (&e.cluster, e.address, e.port),
            label_priority(list, &caller, &side),
        );
    }
    for p in &candidates.pending {
        let side = Side {
            labels: &p.endpoint.labels,
            locality: &p.endpoint.locality,
            network: &p.endpoint.network,
            cluster: p.cluster,
        };
        let key = (p.cluster, p.endpoint.address, p.endpoint.port);
        by_endpoint.insert(key, label_priority(list, &caller, &side));
    }
    let n = list.len();
    let of = |e: &ViewEndpoint| by_endpoint.get(&(&e.cluster, e.address, e.port)).copied();
    let note = |e: &mut ViewEndpoint, label: u32| {
        e.reason = format!(
            "{}; failoverPriority: matches the caller on {} of {n} labels",
            e.reason,
            n as u32 - label
        );
    };
    let remote_labels: Vec<(Option<Gateway>, Locality, u32)> = remote
        .iter()
        .map(|r| (r.via, r.locality.clone(), of(r).unwrap_or(n as u32)))
        .collect();
    // Alone, the labels decide (list the topology labels to keep locality in the order); with
    // the policy's region `failover`, they order endpoints within its priorities.
    let base = |p: u32| if policy.failover.is_empty() { 0 } else { p };
    for r in remote.iter_mut() {
        let label = of(r).unwrap_or(n as u32);
        r.priority = combine(base(r.priority), label, n);
        note(r, label);
    }
    for e in endpoints.iter_mut() {
        let label = match e.kind {
            EndpointKind::Gateway => remote_labels
                .iter()
                .filter(|(via, locality, _)| {
                    *locality == e.locality
                        && via.is_some_and(|g| (g.address, g.port) == (e.address, e.port))
                })
                .map(|(_, _, l)| *l)
                .min()
                .unwrap_or(n as u32),
            _ => of(e).unwrap_or(n as u32),
        };
        e.priority = combine(base(e.priority), label, n);
        note(e, label);
    }
}

/// Assigns each remote endpoint to exactly one gateway, round-robin over the endpoints of one
/// (locality, gateway set) in address order, so load spreads evenly and deterministically;
/// pushes one aggregate per (locality, gateway) onto `endpoints` and returns the remote ones.
fn via_gateways(
    PortScope {
        ctx,
        key,
        port,
        mesh,
    }: PortScope<'_>,
    pending: &[&PendingRemote<'_>],
    endpoints: &mut Vec<ViewEndpoint>,
) -> Vec<ViewEndpoint> {
    let mut rr: BTreeMap<(Locality, Vec<Gateway>), usize> = BTreeMap::new();
    let mut remote: Vec<ViewEndpoint> = Vec::new();
    // (locality, gateway) -> (owner cluster, network, weight, endpoint count)
    let mut aggregates: BTreeMap<(Locality, Gateway), (ClusterId, NetworkId, u32, usize)> =
        BTreeMap::new();
    for p in pending {
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
                endpoint_sni(key, port, p.cluster, p.endpoint.address, p.endpoint.port)
            }),
            reason: format!(
                "network {} is not the proxy's {}; via east-west gateway {gateway} of cluster {owner}",
                p.endpoint.network, ctx.network
            ),
            unhealthy: None,
        });
    }
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
            unhealthy: None,
        });
    }
    remote
}

/// Renumbers priorities in order, one numbering for `endpoints` and `remote` (a pod behind a
/// gateway may rank apart from its aggregate under `failoverPriority`, so the aggregates alone
/// may skip a number the data planes then close up), then groups by (priority, locality).
fn group(endpoints: Vec<ViewEndpoint>, remote: &mut [ViewEndpoint]) -> Vec<LocalityGroup> {
    let raw: BTreeSet<u32> = endpoints
        .iter()
        .chain(remote.iter())
        .map(|e| e.priority)
        .collect();
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
    for r in remote.iter_mut() {
        r.priority = renumbered(r.priority);
    }
    groups
        .into_iter()
        .map(|((priority, locality), mut endpoints)| {
            endpoints.sort_by_key(|e| (e.address, e.port));
            LocalityGroup {
                locality,
                priority,
                endpoints,
            }
        })
        .collect()
}

/// The name of a route's endpoints (what names its xDS cluster): the subset, the subset and
/// the cluster, or `all.<cluster>`. Subset names are DNS labels other than `all` (the
/// registry checks), so names never collide.
pub fn route_name(route: &TrafficRoute) -> String {
    match (&route.subset, &route.cluster) {
        (Some(s), None) => s.clone(),
        (Some(s), Some(c)) => format!("{s}.{c}"),
        (None, Some(c)) => format!("all.{c}"),
        (None, None) => "all".to_owned(),
    }
}

/// The weighted routes of `policy` for one port: each shaped from the candidates of its
/// cluster and subset, with the policy's mode applied.
pub(crate) fn routes(
    scope: PortScope<'_>,
    candidates: &Candidates<'_>,
    policy: &TrafficPolicy,
) -> Vec<ViewRoute> {
    policy
        .routes
        .iter()
        .map(|route| {
            let subset = route.subset.as_deref().and_then(|s| policy.subset(s));
            let keep = |cluster: &ClusterId, labels: &Labels| {
                route.cluster.as_ref().is_none_or(|c| c == cluster)
                    && subset.is_none_or(|s| s.matches(labels))
            };
            // What the policy leaves out is the port's to report, not each route's.
            let mut hidden = Vec::new();
            let shaped = shape(scope, candidates, &keep, Some(policy), &mut hidden);
            let (key, port) = (scope.key, scope.port);
            ViewRoute {
                name: route_name(route),
                cluster: route.cluster.clone(),
                subset: route.subset.clone(),
                weight: route.weight,
                sni: route
                    .subset
                    .as_deref()
                    .map_or_else(|| sni(key, port), |s| subset_sni(key, port, s)),
                groups: shaped.groups,
                remote: shaped.remote,
                identities: shaped.identities,
            }
        })
        .collect()
}
