//! One cluster's services with their endpoints resolved per service port.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use causeway_model::{
    AuthorizationPolicy, ClusterObjects, ClusterSpec, EndpointSlice, Health, Locality, MeshConfig,
    NetworkId, Service, ServiceExport, ServiceKey, ServicePort, SliceEndpoint, TargetPort,
    TrafficPolicy, WorkloadEntry,
};
use serde::Serialize;

/// An endpoint of one service port in one cluster, with where it runs and whether it serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedEndpoint {
    /// Address on its network.
    pub address: IpAddr,
    /// Port the workload listens on for this service port.
    pub port: u16,
    /// WorkloadEntry or pod name, when known.
    pub workload: Option<String>,
    /// Service account (identity), when known.
    pub service_account: Option<String>,
    /// Network the address belongs to.
    pub network: NetworkId,
    /// Where it runs.
    pub locality: Locality,
    /// Load-balancing weight.
    pub weight: u32,
    /// Whether it may receive traffic; `None` when ready, else why not.
    pub not_ready: Option<String>,
    /// Its workload's labels (what `TrafficPolicy` subsets select); empty when not known.
    /// Shared with every endpoint and placement of equal labels in its cluster.
    #[serde(skip_serializing_if = "no_labels")]
    pub labels: Labels,
}

/// A workload's labels, shared: a cluster's index keeps one map per distinct set of labels,
/// not one per endpoint and port (cloning them was a third of the index's memory in
/// `bench/xds-scale`: 100,000 endpoints, five per service, all with the same `app` label).
pub type Labels = Arc<BTreeMap<String, String>>;

fn no_labels(labels: &Labels) -> bool {
    labels.is_empty()
}

/// One [`Labels`] per distinct set of labels seen in one build.
#[derive(Default)]
struct SharedLabels<'a>(BTreeMap<&'a BTreeMap<String, String>, Labels>);

impl<'a> SharedLabels<'a> {
    fn get(&mut self, labels: &'a BTreeMap<String, String>) -> Labels {
        Arc::clone(
            self.0
                .entry(labels)
                .or_insert_with(|| Arc::new(labels.clone())),
        )
    }
}

impl ResolvedEndpoint {
    /// Whether it may receive traffic.
    pub fn is_ready(&self) -> bool {
        self.not_ready.is_none()
    }
}

/// The endpoints of one service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortEndpoints {
    /// The service port.
    pub port: ServicePort,
    /// Its endpoints, ready or not, without duplicates.
    pub endpoints: Vec<ResolvedEndpoint>,
}

/// A Service of one cluster with its export and endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterService {
    /// The Service object.
    pub service: Service,
    /// Its ServiceExport in this cluster, if any.
    pub export: Option<ServiceExport>,
    /// Never leaves the cluster (annotation or mesh rule).
    pub cluster_local: bool,
    /// Endpoints per service port, in the Service's port order.
    pub ports: Vec<PortEndpoints>,
}

impl ClusterService {
    /// The endpoints of the port with this number and protocol, if the Service has it.
    pub fn port(&self, number: u16, protocol: &str) -> Option<&PortEndpoints> {
        self.ports
            .iter()
            .find(|p| p.port.port == number && p.port.protocol == protocol)
    }
}

/// One cluster, resolved: every Service with endpoints, and exports that name no Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIndex {
    /// The cluster's settings.
    pub spec: ClusterSpec,
    /// Services by key.
    pub services: BTreeMap<ServiceKey, Arc<ClusterService>>,
    /// ServiceExports whose Service does not exist in this cluster (MCS: not valid).
    pub orphan_exports: Vec<ServiceExport>,
    /// Workloads by (namespace, name): where a proxy beside each one runs.
    pub workloads: BTreeMap<(String, String), WorkloadPlacement>,
    /// Authorization policies declared in this cluster.
    pub policies: Vec<AuthorizationPolicy>,
    /// Traffic policies declared in this cluster (mesh-wide: see
    /// [`crate::MeshIndex::traffic_policies`]).
    pub traffic_policies: Vec<TrafficPolicy>,
}

/// Where a workload runs and who it is: what a proxy beside it needs for its view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadPlacement {
    /// Workload address.
    pub address: IpAddr,
    /// Network (the cluster's unless overridden).
    pub network: NetworkId,
    /// Locality (the cluster's unless overridden).
    pub locality: Locality,
    /// Service account.
    pub service_account: String,
    /// Labels (what authorization policies select on).
    pub labels: Labels,
    /// Bootstrap credential file (relative to the mesh directory), if any.
    pub credential_file: Option<std::path::PathBuf>,
}

fn selects(selector: &BTreeMap<String, String>, we: &WorkloadEntry) -> bool {
    selector.iter().all(|(k, v)| we.labels.get(k) == Some(v))
}

fn workload_port(port: &ServicePort, we: &WorkloadEntry) -> Option<u16> {
    if let Some(p) = port.name.as_ref().and_then(|n| we.ports.get(n)) {
        return Some(*p);
    }
    match &port.target_port {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Name(name) => we.ports.get(name).copied(),
    }
}

impl ClusterIndex {
    /// Resolves every Service of `objects` against its WorkloadEntries and EndpointSlices.
    pub fn build(mesh: &MeshConfig, spec: &ClusterSpec, objects: &ClusterObjects) -> Self {
        let selection = Selection::new(objects);
        let mut labels = SharedLabels::default();
        let mut services = BTreeMap::new();
        for (key, service) in &objects.services {
            let entry = resolve_service(mesh, spec, objects, &selection, &mut labels, service);
            services.insert(key.clone(), Arc::new(entry));
        }
        let orphan_exports = objects
            .exports
            .values()
            .filter(|e| !objects.services.contains_key(&e.key))
            .cloned()
            .collect();
        let workloads = objects
            .workload_entries
            .iter()
            .map(|(k, we)| {
                let placement = WorkloadPlacement {
                    address: we.address,
                    network: we.network.clone().unwrap_or_else(|| spec.network.clone()),
                    locality: we.locality.clone().unwrap_or_else(|| spec.locality.clone()),
                    service_account: we.service_account.clone(),
                    labels: labels.get(&we.labels),
                    credential_file: we.credential_file.clone(),
                };
                (k.clone(), placement)
            })
            .collect();
        Self {
            spec: spec.clone(),
            services,
            orphan_exports,
            workloads,
            policies: objects.policies.values().cloned().collect(),
            traffic_policies: objects.traffic_policies.clone(),
        }
    }

    /// Like [`Self::build`], but reuses `previous`'s entries that did not change, so an index can
    /// tell which services moved by pointer comparison.
    pub fn rebuild(
        mesh: &MeshConfig,
        spec: &ClusterSpec,
        objects: &ClusterObjects,
        previous: &ClusterIndex,
    ) -> Self {
        let mut next = Self::build(mesh, spec, objects);
        for (key, entry) in next.services.iter_mut() {
            if let Some(old) = previous.services.get(key) {
                if **old == **entry {
                    *entry = Arc::clone(old);
                }
            }
        }
        next
    }
}

/// Inverted indexes over one cluster's objects, so resolving every Service costs time in
/// proportion to what it selects, not to the size of its namespace.
struct Selection<'a> {
    /// (namespace, label key, label value) -> workloads carrying that label.
    by_label: BTreeMap<(&'a str, &'a str, &'a str), Vec<&'a WorkloadEntry>>,
    /// (namespace, service name) -> its slices.
    slices: BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

impl<'a> Selection<'a> {
    fn new(objects: &'a ClusterObjects) -> Self {
        let mut by_label: BTreeMap<(&str, &str, &str), Vec<&WorkloadEntry>> = BTreeMap::new();
        for we in objects.workload_entries.values() {
            for (k, v) in &we.labels {
                by_label
                    .entry((we.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(we);
            }
        }
        let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in objects.endpoint_slices.values() {
            slices
                .entry((slice.namespace.as_str(), slice.service_name.as_str()))
                .or_default()
                .push(slice);
        }
        Self { by_label, slices }
    }

    /// Workloads of `namespace` matching every label of `selector` (non-empty).
    fn select(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Vec<&'a WorkloadEntry> {
        // Start from the rarest label's candidates, then check the rest.
        let candidates = selector
            .iter()
            .map(|(k, v)| {
                self.by_label
                    .get(&(namespace, k.as_str(), v.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|c| c.len())
            .unwrap_or(&[]);
        candidates
            .iter()
            .copied()
            .filter(|we| selects(selector, we))
            .collect()
    }
}

/// An EndpointSlice endpoint's locality: its Node's, else the cluster's region with the
/// endpoint's zone, else the cluster's.
fn slice_endpoint_locality(spec: &ClusterSpec, ep: &SliceEndpoint) -> Locality {
    if let Some(locality) = &ep.locality {
        return locality.clone();
    }
    ep.zone
        .as_deref()
        .map_or_else(|| spec.locality.clone(), |z| spec.locality.with_zone(z))
}

/// Why an EndpointSlice endpoint gets no traffic, if it does not.
fn slice_endpoint_not_ready(ep: &SliceEndpoint) -> Option<String> {
    if ep.terminating {
        Some("terminating (endpoint slice condition terminating)".to_owned())
    } else if !ep.ready {
        Some("endpoint slice condition not ready".to_owned())
    } else {
        None
    }
}

fn resolve_service<'a>(
    mesh: &MeshConfig,
    spec: &ClusterSpec,
    objects: &'a ClusterObjects,
    selection: &Selection<'a>,
    labels: &mut SharedLabels<'a>,
    service: &Service,
) -> ClusterService {
    let key = &service.key;
    let workloads: Vec<&WorkloadEntry> = match &service.selector {
        Some(selector) => selection.select(&key.namespace, selector),
        None => Vec::new(),
    };
    let slices: &[&EndpointSlice] = selection
        .slices
        .get(&(key.namespace.as_str(), key.name.as_str()))
        .map_or(&[], Vec::as_slice);
    let mut ports = Vec::new();
    for port in &service.ports {
        let mut seen: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
        let mut endpoints = Vec::new();
        for we in &workloads {
            let Some(target) = workload_port(port, we) else {
                continue;
            };
            if !seen.insert((we.address, target)) {
                continue;
            }
            let not_ready = match we.health {
                Health::Healthy => None,
                Health::Unhealthy => Some("unhealthy".to_owned()),
                Health::Draining => Some("draining".to_owned()),
            };
            endpoints.push(ResolvedEndpoint {
                address: we.address,
                port: target,
                workload: Some(we.name.clone()),
                service_account: Some(we.service_account.clone()),
                network: we.network.clone().unwrap_or_else(|| spec.network.clone()),
                locality: we.locality.clone().unwrap_or_else(|| spec.locality.clone()),
                weight: we.weight,
                not_ready,
                labels: labels.get(&we.labels),
            });
        }
        // Endpoints that are terminating but still serving: used only if nothing is ready.
        let mut serving_terminating: Vec<usize> = Vec::new();
        for slice in slices {
            let Some(slice_port) = slice.ports.iter().find(|p| p.name == port.name) else {
                continue;
            };
            for ep in &slice.endpoints {
                let Some(address) = ep.addresses.first().copied() else {
                    continue;
                };
                if !seen.insert((address, slice_port.port)) {
                    continue;
                }
                if ep.terminating && ep.serving {
                    serving_terminating.push(endpoints.len());
                }
                endpoints.push(ResolvedEndpoint {
                    address,
                    port: slice_port.port,
                    workload: ep.target_name.clone(),
                    service_account: ep
                        .service_account
                        .clone()
                        .or_else(|| slice.service_account.clone()),
                    network: spec.network.clone(),
                    locality: slice_endpoint_locality(spec, ep),
                    weight: 1,
                    not_ready: slice_endpoint_not_ready(ep),
                    labels: labels.get(&ep.labels),
                });
            }
        }
        if !endpoints.iter().any(ResolvedEndpoint::is_ready) {
            // A rolling update of the last replicas: better the old pods, still serving, than
            // nothing (Kubernetes' ProxyTerminatingEndpoints).
            for i in serving_terminating {
                endpoints[i].not_ready = None;
            }
        }
        ports.push(PortEndpoints {
            port: port.clone(),
            endpoints,
        });
    }
    ClusterService {
        service: service.clone(),
        export: objects.exports.get(key).cloned(),
        cluster_local: service.cluster_local || mesh.is_cluster_local(key),
        ports,
    }
}
