//! What the control plane's probes of east-west gateways change in views: a gateway found dead
//! carries no new remote endpoint while another gateway of the same cluster or network is
//! live, and the endpoints still behind it are marked unhealthy so data planes skip them
//! (Envoy through EDS health, the Causeway proxy natively) before their own checks notice.
//!
//! The control plane's view of a gateway can be wrong (an asymmetric partition cuts it off a
//! gateway the proxies still reach), so a probe never takes a port's last usable endpoint: when
//! every endpoint of a port (or of a route) would be marked, none is, and the data plane's own
//! health checks and outlier detection decide alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use causeway_model::Gateway;

use crate::view::{EndpointKind, LocalityGroup, ViewEndpoint};
use crate::MeshIndex;

impl MeshIndex {
    /// Why the control plane's probes find `gateway` dead, if they do.
    pub fn gateway_down(&self, gateway: &Gateway) -> Option<&str> {
        self.gateways_down.get(gateway).map(String::as_str)
    }

    /// Every gateway the probes find dead, shared: a new allocation exactly when the set
    /// changed, so caches of views can tell by pointer.
    pub fn gateways_down(&self) -> &Arc<BTreeMap<Gateway, String>> {
        &self.gateways_down
    }

    /// Replaces the gateways found dead (gateway → reason); whether anything changed. A change
    /// may reshape every service reached through a gateway, so views are recomputed whole.
    pub fn set_gateways_down(&mut self, down: BTreeMap<Gateway, String>) -> bool {
        if *self.gateways_down == down {
            return false;
        }
        self.gateways_down = Arc::new(down);
        true
    }
}

/// `gateways` without the dead ones, unless all of them are dead (then all, marked later).
pub(crate) fn live_gateways(index: &MeshIndex, gateways: Vec<Gateway>) -> Vec<Gateway> {
    if index.gateways_down.is_empty() {
        return gateways;
    }
    let live: Vec<Gateway> = gateways
        .iter()
        .filter(|g| index.gateway_down(g).is_none())
        .copied()
        .collect();
    if live.is_empty() {
        gateways
    } else {
        live
    }
}

/// The gateway an endpoint's traffic goes through, if any.
fn gateway_of(e: &ViewEndpoint) -> Option<Gateway> {
    match e.kind {
        EndpointKind::Direct => None,
        EndpointKind::Gateway => Some(Gateway {
            address: e.address,
            port: e.port,
        }),
        EndpointKind::Remote => e.via,
    }
}

/// Marks the endpoints of one endpoint set (a port's, or a route's) whose gateway is down,
/// unless that would leave the set with no usable endpoint (see the module doc).
pub(crate) fn mark(index: &MeshIndex, groups: &mut [LocalityGroup], remote: &mut [ViewEndpoint]) {
    if index.gateways_down.is_empty() {
        return;
    }
    let down = |e: &ViewEndpoint| gateway_of(e).and_then(|g| index.gateway_down(&g));
    let aggregates = || groups.iter().flat_map(|g| g.endpoints.iter());
    if aggregates().all(|e| down(e).is_none()) {
        return;
    }
    let keep_serving = aggregates().all(|e| down(e).is_some());
    let endpoints = groups
        .iter_mut()
        .flat_map(|g| g.endpoints.iter_mut())
        .chain(remote.iter_mut());
    for e in endpoints {
        let Some(why) = gateway_of(e).and_then(|g| index.gateway_down(&g)) else {
            continue;
        };
        if keep_serving {
            e.reason = format!(
                "{}; {why}, but kept: no other endpoint to fail over to (the data plane's own checks decide)",
                e.reason
            );
        } else {
            e.unhealthy = Some(why.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_model::{ClusterId, Locality, NetworkId};

    fn gateway(last: u8) -> Gateway {
        Gateway {
            address: std::net::IpAddr::from([127, 0, 9, last]),
            port: 15443,
        }
    }

    fn endpoint(kind: EndpointKind, last: u8, via: Option<Gateway>) -> ViewEndpoint {
        ViewEndpoint {
            kind,
            address: std::net::IpAddr::from([10, 0, 0, last]),
            port: 8080,
            cluster: ClusterId::new("east").expect("id"),
            network: NetworkId::new("n2").expect("network"),
            locality: Locality::new("r", "z", None),
            priority: 0,
            weight: 1,
            via,
            workload: None,
            identity: None,
            sni: None,
            reason: "test".to_owned(),
            unhealthy: None,
        }
    }

    fn at_gateway(g: Gateway) -> ViewEndpoint {
        ViewEndpoint {
            address: g.address,
            port: g.port,
            ..endpoint(EndpointKind::Gateway, 0, None)
        }
    }

    fn group(endpoints: Vec<ViewEndpoint>) -> LocalityGroup {
        LocalityGroup {
            locality: Locality::new("r", "z", None),
            priority: 0,
            endpoints,
        }
    }

    fn index_with_down(down: &[Gateway]) -> MeshIndex {
        let mesh = causeway_model::MeshConfig {
            mesh: causeway_model::MeshSpec {
                name: "m".into(),
                trust_domain: "td".into(),
                discovery: causeway_model::DiscoveryMode::Exported,
                cluster_local: Vec::new(),
                networks: None,
                source: causeway_model::ObjectSource::default(),
            },
            clusters: Vec::new(),
            traffic_policies: Vec::new(),
        };
        let mut index = MeshIndex::new(Arc::new(mesh));
        index.set_gateways_down(
            down.iter()
                .map(|g| (*g, format!("probe of {g} failed")))
                .collect(),
        );
        index
    }

    #[test]
    fn a_dead_gateway_marks_its_aggregate_and_the_pods_behind_it() {
        let (dead, live) = (gateway(1), gateway(2));
        let index = index_with_down(&[dead]);
        let mut groups = vec![group(vec![
            at_gateway(dead),
            at_gateway(live),
            endpoint(EndpointKind::Direct, 9, None),
        ])];
        let mut remote = vec![
            endpoint(EndpointKind::Remote, 1, Some(dead)),
            endpoint(EndpointKind::Remote, 2, Some(live)),
        ];
        mark(&index, &mut groups, &mut remote);
        let marked: Vec<bool> = groups[0]
            .endpoints
            .iter()
            .chain(&remote)
            .map(|e| e.unhealthy.is_some())
            .collect();
        assert_eq!(marked, [true, false, false, true, false]);
        assert_eq!(
            remote[0].unhealthy.as_deref(),
            Some("probe of 127.0.9.1:15443 failed")
        );
    }

    #[test]
    fn the_last_usable_endpoint_is_never_taken() {
        let dead = gateway(1);
        let index = index_with_down(&[dead]);
        let mut groups = vec![group(vec![at_gateway(dead)])];
        let mut remote = vec![endpoint(EndpointKind::Remote, 1, Some(dead))];
        mark(&index, &mut groups, &mut remote);
        assert!(groups[0].endpoints[0].unhealthy.is_none());
        assert!(remote[0].unhealthy.is_none());
        assert!(
            remote[0].reason.contains("but kept"),
            "{}",
            remote[0].reason
        );
    }

    #[test]
    fn dead_gateways_are_passed_over_while_one_is_live() {
        let (dead, live) = (gateway(1), gateway(2));
        let index = index_with_down(&[dead]);
        assert_eq!(live_gateways(&index, vec![dead, live]), [live]);
        assert_eq!(live_gateways(&index, vec![dead]), [dead]);
        let mut index = index;
        assert!(index.set_gateways_down(BTreeMap::new()));
        assert!(!index.set_gateways_down(BTreeMap::new()), "no change");
        assert_eq!(live_gateways(&index, vec![dead, live]), [dead, live]);
    }
}
