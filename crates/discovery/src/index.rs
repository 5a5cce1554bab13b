//! The mesh index: every cluster's resolved services, merged by namespace and name with MCS
//! (KEP-1645) export semantics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use causeway_model::{
    ClusterId, ClusterObjects, DiscoveryMode, Gateway, MeshConfig, ServiceKey, ServicePort,
    TrafficPolicy,
};
use serde::Serialize;

use crate::cluster_index::{ClusterIndex, ClusterService};

/// How the age of an export (which breaks conflicts) was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AgeSource {
    /// `metadata.creationTimestamp` of the ServiceExport.
    CreationTimestamp,
    /// Order of the clusters in `mesh.yaml` (no timestamp, or equal timestamps).
    DeclarationOrder,
}

/// One cluster's export of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportState {
    /// Exporting cluster.
    pub cluster: ClusterId,
    /// Only these clusters may import it (`None`: all).
    pub export_to: Option<BTreeSet<ClusterId>>,
    /// Creation time (Unix seconds), when given.
    pub created: Option<i64>,
    /// Whether its endpoints leave the cluster: the Service exists and is not cluster-local.
    pub active: bool,
    /// Why it is not active.
    pub inactive_reason: Option<String>,
}

impl ExportState {
    /// Whether `importer` may see this export's endpoints.
    pub fn visible_to(&self, importer: &ClusterId) -> bool {
        self.active
            && self
                .export_to
                .as_ref()
                .is_none_or(|to| to.contains(importer))
    }
}

/// MCS condition types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConditionKind {
    /// The export is usable.
    Valid,
    /// Exporting clusters disagree; the oldest export's definition is used.
    Conflict,
}

/// A condition on a merged service, as MCS reports on ServiceExport status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type.
    #[serde(rename = "type")]
    pub kind: ConditionKind,
    /// True or false.
    pub status: bool,
    /// Machine-readable reason (`PortConflict`, `NoService`...).
    pub reason: String,
    /// Operator-readable explanation.
    pub message: String,
}

/// A service merged across clusters by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshService {
    /// Namespace and name.
    pub key: ServiceKey,
    /// Clusters that define a Service with this key.
    pub defined_in: Vec<ClusterId>,
    /// Exports, oldest first (in sameness mode every defining cluster counts as exporting).
    pub exports: Vec<ExportState>,
    /// How export age was decided.
    pub age_source: AgeSource,
    /// Ports of the exported service: the union over active exports; on a conflict the oldest
    /// export's definition wins.
    pub ports: Vec<ServicePort>,
    /// Headless (`clusterIP: None`) as the oldest export defines it.
    pub headless: bool,
    /// MCS conditions.
    pub conditions: Vec<Condition>,
}

impl MeshService {
    /// Whether any cluster's endpoints leave their cluster.
    pub fn is_exported(&self) -> bool {
        self.exports.iter().any(|e| e.active)
    }

    /// Clusters whose endpoints a proxy in `importer` sees: its own (when it defines the
    /// service) and every export visible to it.
    pub fn source_clusters(&self, importer: &ClusterId) -> Vec<ClusterId> {
        let mut out: Vec<ClusterId> = Vec::new();
        if self.defined_in.contains(importer) {
            out.push(importer.clone());
        }
        for e in &self.exports {
            if &e.cluster != importer && e.visible_to(importer) {
                out.push(e.cluster.clone());
            }
        }
        out
    }
}

/// An MCS `ServiceImport` derived for one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImport {
    /// Namespace and name.
    pub key: ServiceKey,
    /// `ClusterSetIP` or `Headless`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Merged ports.
    pub ports: Vec<ServicePort>,
    /// Exporting clusters visible to the importer.
    pub clusters: Vec<ClusterId>,
}

/// Why the index refused an update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The cluster is not declared in the mesh.
    #[error("cluster {0} is not declared in mesh.yaml")]
    UnknownCluster(ClusterId),
}

/// Every cluster's services, merged. Clusters appear once their registry has synced; a
/// cluster that never synced contributes nothing rather than an empty set.
#[derive(Debug, Clone)]
pub struct MeshIndex {
    mesh: Arc<MeshConfig>,
    clusters: BTreeMap<ClusterId, Arc<ClusterIndex>>,
    services: BTreeMap<ServiceKey, Arc<MeshService>>,
    /// The mesh directory's traffic policies, then every synced cluster's: see
    /// [`Self::traffic_policies`].
    traffic_policies: Arc<[TrafficPolicy]>,
    /// Gateways the control plane's probes find dead, with the reason (see `gateway_health`).
    pub(crate) gateways_down: Arc<BTreeMap<Gateway, String>>,
}

impl MeshIndex {
    /// An index of `mesh` with no cluster synced yet.
    pub fn new(mesh: Arc<MeshConfig>) -> Self {
        Self {
            traffic_policies: Arc::from(mesh.traffic_policies.clone()),
            gateways_down: Arc::default(),
            mesh,
            clusters: BTreeMap::new(),
            services: BTreeMap::new(),
        }
    }

    /// Builds an index from every synced cluster's objects; undeclared clusters are skipped.
    pub fn build<'a>(
        mesh: Arc<MeshConfig>,
        objects: impl IntoIterator<Item = (&'a ClusterId, &'a ClusterObjects)>,
    ) -> Self {
        let mut index = Self::new(Arc::clone(&mesh));
        for (id, objs) in objects {
            if let Some(spec) = mesh.cluster(id) {
                index
                    .clusters
                    .insert(id.clone(), Arc::new(ClusterIndex::build(&mesh, spec, objs)));
            }
        }
        let keys: BTreeSet<ServiceKey> = index
            .clusters
            .values()
            .flat_map(|c| {
                c.services
                    .keys()
                    .chain(c.orphan_exports.iter().map(|e| &e.key))
            })
            .cloned()
            .collect();
        for key in keys {
            index.remerge(&key);
        }
        index.traffic_policies = merge_traffic_policies(&index.mesh, &index.clusters);
        index
    }

    /// The mesh settings.
    pub fn mesh(&self) -> &Arc<MeshConfig> {
        &self.mesh
    }

    /// Synced clusters.
    pub fn clusters(&self) -> &BTreeMap<ClusterId, Arc<ClusterIndex>> {
        &self.clusters
    }

    /// One synced cluster.
    pub fn cluster(&self, id: &ClusterId) -> Option<&Arc<ClusterIndex>> {
        self.clusters.get(id)
    }

    /// Merged services.
    pub fn services(&self) -> &BTreeMap<ServiceKey, Arc<MeshService>> {
        &self.services
    }

    /// One merged service.
    pub fn service(&self, key: &ServiceKey) -> Option<&Arc<MeshService>> {
        self.services.get(key)
    }

    /// Every traffic policy of the mesh, in precedence order: the mesh directory's (`mesh.yaml`,
    /// then `policies/`), then each synced cluster's custom resources, clusters in `mesh.yaml`
    /// order. Policies are mesh-wide wherever they are declared; when two apply to the same
    /// service and caller the first one does ([`TrafficPolicy::select`]), and `causeway check`
    /// reports the other. Computed when the index is built or a cluster changes.
    pub fn traffic_policies(&self) -> &[TrafficPolicy] {
        &self.traffic_policies
    }

    /// [`Self::traffic_policies`], shared: a new allocation exactly when they changed, so caches
    /// of what they shape can tell by pointer.
    pub fn shared_traffic_policies(&self) -> &Arc<[TrafficPolicy]> {
        &self.traffic_policies
    }

    /// Replaces one cluster's objects and re-merges only the services that changed. Returns the
    /// keys whose merged state or endpoints changed (what views must recompute).
    pub fn set_cluster(
        &mut self,
        id: &ClusterId,
        objects: &ClusterObjects,
    ) -> Result<BTreeSet<ServiceKey>, IndexError> {
        let spec = self
            .mesh
            .cluster(id)
            .ok_or_else(|| IndexError::UnknownCluster(id.clone()))?;
        let next = match self.clusters.get(id) {
            Some(prev) => ClusterIndex::rebuild(&self.mesh, spec, objects, prev),
            None => ClusterIndex::build(&self.mesh, spec, objects),
        };
        let mut changed: BTreeSet<ServiceKey> = BTreeSet::new();
        if let Some(prev) = self.clusters.get(id) {
            for (key, entry) in &prev.services {
                if next
                    .services
                    .get(key)
                    .is_none_or(|n| !Arc::ptr_eq(n, entry))
                {
                    changed.insert(key.clone());
                }
            }
            if prev.orphan_exports != next.orphan_exports {
                changed.extend(prev.orphan_exports.iter().map(|e| e.key.clone()));
                changed.extend(next.orphan_exports.iter().map(|e| e.key.clone()));
            }
        } else {
            changed.extend(next.orphan_exports.iter().map(|e| e.key.clone()));
        }
        for (key, entry) in &next.services {
            let same = self
                .clusters
                .get(id)
                .and_then(|p| p.services.get(key))
                .is_some_and(|p| Arc::ptr_eq(p, entry));
            if !same {
                changed.insert(key.clone());
            }
        }
        let prev_policies = self.clusters.get(id).map(|p| &p.traffic_policies);
        if prev_policies.is_none_or(|p| *p != next.traffic_policies) {
            // A policy shapes every caller's view of its service, wherever it is declared.
            let old = prev_policies.into_iter().flatten();
            changed.extend(old.chain(&next.traffic_policies).map(|p| p.service.clone()));
            self.clusters.insert(id.clone(), Arc::new(next));
            self.traffic_policies = merge_traffic_policies(&self.mesh, &self.clusters);
        } else {
            self.clusters.insert(id.clone(), Arc::new(next));
        }
        for key in &changed {
            self.remerge(key);
        }
        tracing::debug!(cluster = %id, changed = changed.len(), "cluster re-indexed");
        Ok(changed)
    }

    /// Drops a cluster (e.g. removed from the mesh). Returns the services it affected.
    pub fn remove_cluster(&mut self, id: &ClusterId) -> BTreeSet<ServiceKey> {
        let Some(prev) = self.clusters.remove(id) else {
            return BTreeSet::new();
        };
        let changed: BTreeSet<ServiceKey> = prev
            .services
            .keys()
            .chain(prev.orphan_exports.iter().map(|e| &e.key))
            .chain(prev.traffic_policies.iter().map(|p| &p.service))
            .cloned()
            .collect();
        if !prev.traffic_policies.is_empty() {
            self.traffic_policies = merge_traffic_policies(&self.mesh, &self.clusters);
        }
        for key in &changed {
            self.remerge(key);
        }
        changed
    }

    fn remerge(&mut self, key: &ServiceKey) {
        match merge_service(&self.mesh, &self.clusters, key) {
            Some(merged) => {
                if self.services.get(key).is_none_or(|old| **old != merged) {
                    self.services.insert(key.clone(), Arc::new(merged));
                }
            }
            None => {
                self.services.remove(key);
            }
        }
    }

    /// The entry of `key` in cluster `id`, if that cluster defines it.
    pub fn cluster_service(
        &self,
        id: &ClusterId,
        key: &ServiceKey,
    ) -> Option<&Arc<ClusterService>> {
        self.clusters.get(id)?.services.get(key)
    }

    /// The `ServiceImport`s cluster `importer` gets: every exported service with an export
    /// visible to it.
    pub fn imports_for(&self, importer: &ClusterId) -> Vec<ServiceImport> {
        self.services
            .values()
            .filter_map(|s| {
                let clusters: Vec<ClusterId> = s
                    .exports
                    .iter()
                    .filter(|e| e.visible_to(importer))
                    .map(|e| e.cluster.clone())
                    .collect();
                (!clusters.is_empty()).then(|| ServiceImport {
                    key: s.key.clone(),
                    kind: if s.headless {
                        "Headless"
                    } else {
                        "ClusterSetIP"
                    },
                    ports: s.ports.clone(),
                    clusters,
                })
            })
            .collect()
    }
}

/// The mesh directory's traffic policies followed by each synced cluster's, clusters in
/// `mesh.yaml` order (see [`MeshIndex::traffic_policies`]).
fn merge_traffic_policies(
    mesh: &MeshConfig,
    clusters: &BTreeMap<ClusterId, Arc<ClusterIndex>>,
) -> Arc<[TrafficPolicy]> {
    let from_clusters = mesh
        .clusters
        .iter()
        .filter_map(|spec| clusters.get(&spec.id))
        .flat_map(|c| c.traffic_policies.iter());
    // The same custom resource applied to several clusters (one manifest rolled out to all)
    // is one policy: later copies equal to an earlier one but for where they were read are
    // dropped, so only real conflicts reach `causeway check`.
    let mut merged: Vec<TrafficPolicy> = Vec::new();
    for p in mesh.traffic_policies.iter().chain(from_clusters) {
        let copy = merged.iter().any(|q| {
            q.namespace == p.namespace
                && q.name == p.name
                && TrafficPolicy {
                    source: q.source.clone(),
                    ..p.clone()
                } == *q
        });
        if !copy {
            merged.push(p.clone());
        }
    }
    merged.into()
}

fn describe_age(e: &ExportState, order: usize) -> String {
    match e.created {
        Some(ts) => format!("creationTimestamp {ts}"),
        None => format!("declared {} in mesh.yaml", ordinal(order + 1)),
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, … `11th`, `21st`.
pub(crate) fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Merges one key across clusters. `None` when no cluster defines or exports it.
fn merge_service(
    mesh: &MeshConfig,
    clusters: &BTreeMap<ClusterId, Arc<ClusterIndex>>,
    key: &ServiceKey,
) -> Option<MeshService> {
    let mut defined_in = Vec::new();
    let mut exports: Vec<(ExportState, usize)> = Vec::new();
    let mut definitions: BTreeMap<ClusterId, &ClusterService> = BTreeMap::new();
    for (id, cluster) in clusters {
        let order = mesh.cluster_order(id).unwrap_or(usize::MAX);
        if let Some(entry) = cluster.services.get(key) {
            defined_in.push(id.clone());
            definitions.insert(id.clone(), entry);
            let export = match mesh.mesh.discovery {
                DiscoveryMode::Exported => entry
                    .export
                    .as_ref()
                    .map(|e| (e.export_to.clone(), e.created)),
                DiscoveryMode::Sameness => Some((
                    entry.export.as_ref().and_then(|e| e.export_to.clone()),
                    entry.export.as_ref().and_then(|e| e.created),
                )),
            };
            if let Some((export_to, created)) = export {
                let inactive_reason = entry.cluster_local.then(|| {
                    format!("service {key} is cluster-local in cluster {id}; its endpoints never leave it")
                });
                exports.push((
                    ExportState {
                        cluster: id.clone(),
                        export_to,
                        created,
                        active: inactive_reason.is_none(),
                        inactive_reason,
                    },
                    order,
                ));
            }
        } else if let Some(orphan) = cluster.orphan_exports.iter().find(|e| &e.key == key) {
            exports.push((
                ExportState {
                    cluster: id.clone(),
                    export_to: orphan.export_to.clone(),
                    created: orphan.created,
                    active: false,
                    inactive_reason: Some(format!(
                        "ServiceExport {key} in cluster {id} names no Service (at {})",
                        orphan.source
                    )),
                },
                order,
            ));
        }
    }
    if defined_in.is_empty() && exports.is_empty() {
        return None;
    }
    // Oldest first: creation time when given, then declaration order of the clusters.
    exports.sort_by_key(|(e, order)| (e.created.unwrap_or(i64::MAX), *order));
    let timestamps: Vec<i64> = exports
        .iter()
        .filter(|(e, _)| e.active)
        .filter_map(|(e, _)| e.created)
        .collect();
    let active_count = exports.iter().filter(|(e, _)| e.active).count();
    let distinct: BTreeSet<_> = timestamps.iter().collect();
    let age_source = if timestamps.len() == active_count && distinct.len() == active_count {
        AgeSource::CreationTimestamp
    } else {
        AgeSource::DeclarationOrder
    };

    let mut conditions = Vec::new();
    let mut ports: Vec<ServicePort> = Vec::new();
    let mut port_owner: Vec<ClusterId> = Vec::new();
    let mut headless: Option<(bool, ClusterId)> = None;
    let mut conflicts: Vec<(String, String)> = Vec::new();
    for (export, _) in exports.iter().filter(|(e, _)| e.active) {
        let Some(def) = definitions.get(&export.cluster) else {
            continue;
        };
        match &headless {
            None => headless = Some((def.service.headless, export.cluster.clone())),
            Some((h, owner)) if *h != def.service.headless => conflicts.push((
                "TypeConflict".into(),
                format!(
                    "cluster {} declares the service {}headless but cluster {owner} (older) does {}",
                    export.cluster,
                    if def.service.headless { "" } else { "not " },
                    if *h { "" } else { "not" }
                ),
            )),
            Some(_) => {}
        }
        for port in &def.service.ports {
            match ports
                .iter()
                .position(|p| p.port == port.port && p.protocol == port.protocol)
            {
                None => {
                    ports.push(port.clone());
                    port_owner.push(export.cluster.clone());
                }
                Some(i) => {
                    let kept = &ports[i];
                    if kept.name != port.name || kept.app_protocol != port.app_protocol {
                        conflicts.push((
                            "PortConflict".into(),
                            format!(
                                "port {}/{}: cluster {} declares name {:?} appProtocol {:?}, cluster {} (older) name {:?} appProtocol {:?}",
                                port.port,
                                port.protocol,
                                export.cluster,
                                port.name.as_deref().unwrap_or(""),
                                port.app_protocol.as_deref().unwrap_or(""),
                                port_owner[i],
                                kept.name.as_deref().unwrap_or(""),
                                kept.app_protocol.as_deref().unwrap_or("")
                            ),
                        ));
                    }
                }
            }
        }
    }
    if !exports.is_empty() {
        let inactive: Vec<&str> = exports
            .iter()
            .filter_map(|(e, _)| e.inactive_reason.as_deref())
            .collect();
        if active_count > 0 {
            conditions.push(Condition {
                kind: ConditionKind::Valid,
                status: true,
                reason: "Exported".into(),
                message: if inactive.is_empty() {
                    format!("exported by {active_count} cluster(s)")
                } else {
                    format!(
                        "exported by {active_count} cluster(s); ignored: {}",
                        inactive.join("; ")
                    )
                },
            });
        } else {
            conditions.push(Condition {
                kind: ConditionKind::Valid,
                status: false,
                reason: if exports
                    .iter()
                    .any(|(e, _)| definitions.contains_key(&e.cluster))
                {
                    "ClusterLocal".into()
                } else {
                    "NoService".into()
                },
                message: inactive.join("; "),
            });
        }
    }
    if !conflicts.is_empty() {
        let winner = exports
            .iter()
            .find(|(e, _)| e.active)
            .map(|(e, o)| format!("cluster {} ({})", e.cluster, describe_age(e, *o)))
            .unwrap_or_default();
        let reason = conflicts
            .iter()
            .map(|(r, _)| r.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(",");
        let details: Vec<String> = conflicts.into_iter().map(|(_, m)| m).collect();
        conditions.push(Condition {
            kind: ConditionKind::Conflict,
            status: true,
            reason,
            message: format!(
                "{}; resolved in favour of {winner}, the oldest export by {}",
                details.join("; "),
                match age_source {
                    AgeSource::CreationTimestamp => "creationTimestamp",
                    AgeSource::DeclarationOrder => "creationTimestamp then mesh.yaml order",
                }
            ),
        });
    }
    Some(MeshService {
        key: key.clone(),
        defined_in,
        exports: exports.into_iter().map(|(e, _)| e).collect(),
        age_source,
        ports,
        headless: headless.is_some_and(|(h, _)| h),
        conditions,
    })
}
