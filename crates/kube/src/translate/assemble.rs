//! Joining one cluster's records into the objects the mesh index reads.

use std::collections::BTreeMap;

use causeway_model::{
    AuthorizationPolicy, ClusterObjects, ClusterSpec, ObjectSource, Service, TrafficPolicy,
    WorkloadEntry,
};

use super::{ExportRecord, NodeRecord, PodRecord, SliceRecord};

/// Key of a namespaced object: (namespace, name).
pub type ObjectKey = (String, String);

/// Everything one cluster's watches hold, as records.
#[derive(Debug, Clone, Default)]
pub struct Records {
    /// Services (ExternalName ones are never recorded).
    pub services: BTreeMap<ObjectKey, Service>,
    /// EndpointSlices.
    pub slices: BTreeMap<ObjectKey, SliceRecord>,
    /// Pods.
    pub pods: BTreeMap<ObjectKey, PodRecord>,
    /// Nodes by name (cluster-scoped: the namespace part is empty).
    pub nodes: BTreeMap<ObjectKey, NodeRecord>,
    /// ServiceExports.
    pub exports: BTreeMap<ObjectKey, ExportRecord>,
    /// AuthorizationPolicies.
    pub policies: BTreeMap<ObjectKey, AuthorizationPolicy>,
    /// TrafficPolicies.
    pub traffic_policies: BTreeMap<ObjectKey, TrafficPolicy>,
}

impl Records {
    /// The records, borrowed.
    pub fn borrowed(&self) -> RecordsRef<'_> {
        RecordsRef {
            services: &self.services,
            slices: &self.slices,
            pods: &self.pods,
            nodes: &self.nodes,
            exports: &self.exports,
            policies: &self.policies,
            traffic_policies: &self.traffic_policies,
        }
    }
}

/// One cluster's records, borrowed from wherever they are kept (the watches' stores), so
/// assembling copies each object once.
#[derive(Debug, Clone, Copy)]
pub struct RecordsRef<'a> {
    /// Services.
    pub services: &'a BTreeMap<ObjectKey, Service>,
    /// EndpointSlices.
    pub slices: &'a BTreeMap<ObjectKey, SliceRecord>,
    /// Pods.
    pub pods: &'a BTreeMap<ObjectKey, PodRecord>,
    /// Nodes by name.
    pub nodes: &'a BTreeMap<ObjectKey, NodeRecord>,
    /// ServiceExports.
    pub exports: &'a BTreeMap<ObjectKey, ExportRecord>,
    /// AuthorizationPolicies.
    pub policies: &'a BTreeMap<ObjectKey, AuthorizationPolicy>,
    /// TrafficPolicies.
    pub traffic_policies: &'a BTreeMap<ObjectKey, TrafficPolicy>,
}

/// One cluster's objects: Services, EndpointSlices whose endpoints carry their Pod's service
/// account and their Node's locality, Pods as workloads (where sidecars run, who they are),
/// ServiceExports, AuthorizationPolicies and TrafficPolicies (in (namespace, name) order).
pub fn assemble(spec: &ClusterSpec, records: &Records) -> ClusterObjects {
    assemble_borrowed(spec, records.borrowed())
}

/// [`assemble`] over borrowed records.
pub fn assemble_borrowed(spec: &ClusterSpec, records: RecordsRef<'_>) -> ClusterObjects {
    let node_locality = |node: &Option<String>| {
        node.as_ref()
            .and_then(|n| records.nodes.get(&(String::new(), n.clone())))
            .map(|r| r.locality(&spec.locality))
    };
    let mut endpoint_slices = BTreeMap::new();
    for (key, record) in records.slices {
        let mut slice = record.slice.clone();
        for (ep, node) in slice.endpoints.iter_mut().zip(&record.nodes) {
            if let Some(pod) = ep
                .target_name
                .as_ref()
                .and_then(|p| records.pods.get(&(slice.namespace.clone(), p.clone())))
            {
                ep.service_account = Some(pod.service_account.clone());
                ep.labels = pod.labels.clone();
            }
            ep.locality = node_locality(node);
        }
        endpoint_slices.insert(key.clone(), slice);
    }
    let mut workload_entries = BTreeMap::new();
    for ((namespace, name), pod) in records.pods {
        let Some(address) = pod.address else { continue };
        workload_entries.insert(
            (namespace.clone(), name.clone()),
            WorkloadEntry {
                namespace: namespace.clone(),
                name: name.clone(),
                address,
                ports: pod.ports.clone(),
                labels: pod.labels.clone(),
                service_account: pod.service_account.clone(),
                locality: node_locality(&pod.node),
                network: None,
                weight: 1,
                health: pod.health,
                credential_file: None,
                demo: Default::default(),
                source: ObjectSource {
                    file: format!("kubernetes:{}/Pod/{namespace}/{name}", spec.id).into(),
                    document: 0,
                    line: 0,
                },
            },
        );
    }
    ClusterObjects {
        services: records
            .services
            .values()
            .map(|s| (s.key.clone(), s.clone()))
            .collect(),
        workload_entries,
        endpoint_slices,
        exports: records
            .exports
            .values()
            .map(|e| (e.export.key.clone(), e.export.clone()))
            .collect(),
        policies: records.policies.clone(),
        traffic_policies: records.traffic_policies.values().cloned().collect(),
    }
}
