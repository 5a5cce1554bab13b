//! Pods (identity, placement) and Nodes (locality).

use std::collections::BTreeMap;
use std::net::IpAddr;

use causeway_model::{ClusterId, Health, Locality};
use k8s_openapi::api::core::v1 as core;

use super::{name_of, namespace_of, Origin, TranslateError};

/// Node label with the region (Kubernetes well-known label).
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Node label with the zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Node label with the subzone (Istio's).
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

/// What the mesh keeps of a Pod: who it is and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// Pod IP, once assigned.
    pub address: Option<IpAddr>,
    /// `spec.serviceAccountName` (`default` when unset, as Kubernetes does): its identity.
    pub service_account: String,
    /// Node it is scheduled on.
    pub node: Option<String>,
    /// Labels (authorization policies select on them).
    pub labels: BTreeMap<String, String>,
    /// Named container ports.
    pub ports: BTreeMap<String, u16>,
    /// Ready, not ready, or shutting down.
    pub health: Health,
}

/// A Pod's record.
pub fn pod(cluster: &ClusterId, pod: &core::Pod) -> Result<PodRecord, TranslateError> {
    let origin = Origin {
        cluster,
        kind: "Pod",
        namespace: Some(namespace_of(&pod.metadata)),
        name: name_of(&pod.metadata),
    };
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let address =
        match status.and_then(|s| s.pod_ip.as_deref()) {
            None | Some("") => None,
            Some(ip) => Some(ip.parse().map_err(|_| {
                origin.error("status.podIP", format!("{ip:?} is not an IP address"))
            })?),
        };
    let mut ports = BTreeMap::new();
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        for p in c.ports.iter().flatten() {
            if let (Some(name), Ok(number)) = (&p.name, u16::try_from(p.container_port)) {
                ports.insert(name.clone(), number);
            }
        }
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let health = if pod.metadata.deletion_timestamp.is_some() {
        Health::Draining
    } else if ready {
        Health::Healthy
    } else {
        Health::Unhealthy
    };
    Ok(PodRecord {
        address,
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
        node: spec.and_then(|s| s.node_name.clone()),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ports,
        health,
    })
}

/// What the mesh keeps of a Node: its topology labels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeRecord {
    /// `topology.kubernetes.io/region`.
    pub region: Option<String>,
    /// `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
    /// `topology.istio.io/subzone`.
    pub subzone: Option<String>,
}

impl NodeRecord {
    /// The locality of endpoints on this node: its labels, filled in from the cluster's
    /// locality where they are missing (a zone is only kept with its own region, or under the
    /// cluster's region when the node names none).
    pub fn locality(&self, cluster_default: &Locality) -> Locality {
        let region = self
            .region
            .clone()
            .unwrap_or_else(|| cluster_default.region.clone());
        let zone = match (&self.zone, &self.region) {
            (Some(z), _) => z.clone(),
            (None, Some(r)) if *r != cluster_default.region => String::new(),
            (None, _) => cluster_default.zone.clone(),
        };
        let subzone = match &self.subzone {
            Some(s) => Some(s.clone()),
            None if self.zone.is_none() && self.region.is_none() => cluster_default.subzone.clone(),
            None => None,
        };
        Locality::new(region, zone, subzone)
    }
}

/// A Node's record.
pub fn node(node: &core::Node) -> NodeRecord {
    let labels = node.metadata.labels.as_ref();
    let get = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    NodeRecord {
        region: get(REGION_LABEL),
        zone: get(ZONE_LABEL),
        subzone: get(SUBZONE_LABEL),
    }
}
