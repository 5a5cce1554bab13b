//! A service's `TrafficPolicy` applied to one caller's view of it: `FailOver` gives the listed
//! clusters priorities in their order, `ActiveActive` puts them on one priority with their
//! weights, and either leaves out every endpoint of an unlisted cluster (with the reason).
//! `Locality` (the default) keeps the locality priorities, with Istio's region `failover`:
//! for callers in a `from` region the `to` region comes right after their own, before every
//! other region; and Istio's `distribute`: callers in a `from` locality send each `to`
//! locality its share, on one priority. The data planes need nothing new:
//! priorities and weights are what EDS already carries, for Envoy and the Causeway proxy alike.

use std::collections::{BTreeMap, BTreeSet};

use causeway_model::{ClusterId, Locality, SpiffeId, TrafficMode, TrafficPolicy};

use crate::index::ordinal;
use crate::view::{EndpointKind, HiddenEndpoint, ViewEndpoint};

/// The endpoint weight a listed cluster's endpoints add up to, per unit of the cluster's
/// policy weight: fine enough that every endpoint keeps a share, small enough that a priority's
/// total stays far below Envoy's 2^32 limit.
const WEIGHT_SCALE: u64 = 1_000;

/// Where a listed cluster stands in the policy, for the endpoints of that cluster.
struct Choice {
    position: usize,
    weight: Option<u32>,
}

/// Applies `policy` to a port's endpoints (`endpoints`: direct ones and gateway aggregates;
/// `remote`: the pods behind the aggregates), before priorities are renumbered. Endpoints of
/// clusters the policy does not list move to `hidden`.
pub fn apply(
    policy: &TrafficPolicy,
    caller: &Locality,
    endpoints: &mut Vec<ViewEndpoint>,
    remote: &mut Vec<ViewEndpoint>,
    hidden: &mut Vec<HiddenEndpoint>,
) {
    if policy.mode == TrafficMode::Locality {
        region_failover(policy, caller, endpoints, remote);
        distribute(policy, caller, endpoints, remote, hidden);
        return;
    }
    let choices: BTreeMap<&ClusterId, Choice> = policy
        .clusters
        .iter()
        .enumerate()
        .map(|(position, c)| {
            (
                &c.cluster,
                Choice {
                    position,
                    weight: c.weight,
                },
            )
        })
        .collect();
    let name = format!("{}/{}", policy.namespace, policy.name);
    let unlisted = |e: &ViewEndpoint| HiddenEndpoint {
        address: e.address,
        port: e.port,
        cluster: e.cluster.clone(),
        network: e.network.clone(),
        workload: e.workload.clone(),
        reason: format!(
            "TrafficPolicy {name} ({}) does not list cluster {}",
            policy.mode.as_str(),
            e.cluster
        ),
    };
    for e in endpoints.iter().chain(remote.iter()) {
        if !choices.contains_key(&e.cluster) && e.kind != EndpointKind::Gateway {
            hidden.push(unlisted(e));
        }
    }
    endpoints.retain(|e| choices.contains_key(&e.cluster));
    remote.retain(|e| choices.contains_key(&e.cluster));
    match policy.mode {
        TrafficMode::FailOver => fail_over(&name, &choices, endpoints, remote),
        TrafficMode::ActiveActive => active_active(&name, &choices, endpoints, remote),
        TrafficMode::Locality => {}
    }
}

/// The priority `Locality::priority_from` gives every endpoint outside the caller's region.
const OTHER_REGION: u32 = 3;

/// Istio's `failover: [{from, to}]`: for a caller in region `from`, endpoints in region `to`
/// keep the other-region priority and every other region's move one further back.
fn region_failover(
    policy: &TrafficPolicy,
    caller: &Locality,
    endpoints: &mut [ViewEndpoint],
    remote: &mut [ViewEndpoint],
) {
    let Some(rule) = policy.failover.iter().find(|f| f.from == caller.region) else {
        return;
    };
    let name = format!("{}/{}", policy.namespace, policy.name);
    for e in endpoints.iter_mut().chain(remote.iter_mut()) {
        if e.locality.region == caller.region {
            continue;
        }
        if e.locality.region == rule.to {
            e.reason = format!(
                "{}; failover region {} of callers in {} (TrafficPolicy {name})",
                e.reason, rule.to, rule.from
            );
        } else {
            e.priority = e.priority.max(OTHER_REGION) + 1;
            e.reason = format!(
                "{}; after failover region {} (TrafficPolicy {name})",
                e.reason, rule.to
            );
        }
    }
}

fn fail_over(
    name: &str,
    choices: &BTreeMap<&ClusterId, Choice>,
    endpoints: &mut [ViewEndpoint],
    remote: &mut [ViewEndpoint],
) {
    for e in endpoints.iter_mut().chain(remote.iter_mut()) {
        if let Some(c) = choices.get(&e.cluster) {
            e.priority = c.position as u32;
            e.reason = format!(
                "{}; FailOver (TrafficPolicy {name}): {} choice",
                e.reason,
                ordinal(c.position + 1)
            );
        }
    }
}

fn active_active(
    name: &str,
    choices: &BTreeMap<&ClusterId, Choice>,
    endpoints: &mut [ViewEndpoint],
    remote: &mut [ViewEndpoint],
) {
    let share = |e: &ViewEndpoint| {
        choices
            .get(&e.cluster)
            .map(|c| (e.cluster.to_string(), u64::from(c.weight.unwrap_or(1))))
    };
    share_by(&share, endpoints, remote);
    for e in endpoints.iter_mut().chain(remote.iter_mut()) {
        e.priority = 0;
        if let Some(c) = choices.get(&e.cluster) {
            e.reason = format!(
                "{}; ActiveActive (TrafficPolicy {name}): cluster {} weight {}",
                e.reason,
                e.cluster,
                c.weight.unwrap_or(1)
            );
        }
    }
}

/// Sets endpoint weights so that each share group's endpoints (`share`: the group and its
/// share, `None` for an endpoint in no group) add up to the group's share, split by the
/// endpoints' own weights. A gateway aggregate weighs what the pods behind it now weigh.
fn share_by(
    share: &dyn Fn(&ViewEndpoint) -> Option<(String, u64)>,
    endpoints: &mut [ViewEndpoint],
    remote: &mut [ViewEndpoint],
) {
    // Each group's present weight: its direct endpoints and its pods behind gateways (an
    // aggregate only stands for pods counted already).
    let mut present: BTreeMap<String, u64> = BTreeMap::new();
    for e in endpoints
        .iter()
        .filter(|e| e.kind == EndpointKind::Direct)
        .chain(remote.iter())
    {
        if let Some((group, _)) = share(e) {
            *present.entry(group).or_default() += u64::from(e.weight.max(1));
        }
    }
    let scaled = |e: &ViewEndpoint| -> u32 {
        let Some((group, part)) = share(e) else {
            return e.weight;
        };
        let total = present.get(&group).copied().unwrap_or(1);
        let w = u64::from(e.weight.max(1)) * part * WEIGHT_SCALE / total.max(1);
        w.clamp(1, u64::from(u32::MAX)) as u32
    };
    for e in remote.iter_mut() {
        e.weight = scaled(e);
    }
    for e in endpoints.iter_mut() {
        e.weight = match e.kind {
            // The pods behind it, as now weighted.
            EndpointKind::Gateway => remote
                .iter()
                .filter(|r| {
                    r.locality == e.locality
                        && r.via
                            .is_some_and(|g| (g.address, g.port) == (e.address, e.port))
                })
                .map(|r| r.weight)
                .fold(0u32, u32::saturating_add)
                .max(1),
            _ => scaled(e),
        };
    }
}

/// Istio's `distribute`: for callers in a `from` locality, every endpoint in a `to` locality
/// goes to one priority with its locality's share of the weight; endpoints in no `to`
/// locality get nothing (hidden with the reason).
fn distribute(
    policy: &TrafficPolicy,
    caller: &Locality,
    endpoints: &mut Vec<ViewEndpoint>,
    remote: &mut Vec<ViewEndpoint>,
    hidden: &mut Vec<HiddenEndpoint>,
) {
    let Some(rule) = policy.distribute.iter().find(|d| d.from.matches(caller)) else {
        return;
    };
    let name = format!("{}/{}", policy.namespace, policy.name);
    let target = |l: &Locality| rule.to.iter().find(|(pattern, _)| pattern.matches(l));
    for e in endpoints.iter().chain(remote.iter()) {
        if target(&e.locality).is_none() && e.kind != EndpointKind::Gateway {
            hidden.push(HiddenEndpoint {
                address: e.address,
                port: e.port,
                cluster: e.cluster.clone(),
                network: e.network.clone(),
                workload: e.workload.clone(),
                reason: format!(
                    "TrafficPolicy {name} distributes callers in {} to {}; locality {} is not among them",
                    rule.from,
                    rule.to.keys().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    e.locality
                ),
            });
        }
    }
    endpoints.retain(|e| target(&e.locality).is_some());
    remote.retain(|e| target(&e.locality).is_some());
    let share = |e: &ViewEndpoint| {
        target(&e.locality).map(|(pattern, percent)| (pattern.to_string(), u64::from(*percent)))
    };
    share_by(&share, endpoints, remote);
    for e in endpoints.iter_mut().chain(remote.iter_mut()) {
        e.priority = 0;
        if let Some((pattern, percent)) = target(&e.locality) {
            e.reason = format!(
                "{}; distribute (TrafficPolicy {name}): {percent}% to {pattern} for callers in {}",
                e.reason, rule.from
            );
        }
    }
}

/// The identities the endpoints left carry: what the caller accepts from the server.
pub fn identities_of(endpoints: &[ViewEndpoint], remote: &[ViewEndpoint]) -> BTreeSet<SpiffeId> {
    endpoints
        .iter()
        .filter(|e| e.kind == EndpointKind::Direct)
        .chain(remote.iter())
        .filter_map(|e| e.identity.clone())
        .collect()
}
