//! What MCS write-back should make true in each Kubernetes member: the ServiceImports the
//! index derives for it, and the merged services' conditions on its ServiceExports.

use std::collections::BTreeMap;

use causeway_discovery::{ConditionKind, MeshIndex};
use causeway_kube::{DesiredCondition, DesiredImport, KubeRegistry, McsDesired};
use causeway_model::ClusterId;

use super::sources::ClusterStatus;

/// The desired MCS state of `cluster`.
pub fn desired(index: &MeshIndex, cluster: &ClusterId) -> McsDesired {
    let imports = index
        .imports_for(cluster)
        .into_iter()
        .map(|i| DesiredImport {
            headless: i.kind == "Headless",
            key: i.key,
            ports: i.ports,
            clusters: i.clusters,
        })
        .collect();
    let mut export_conditions = BTreeMap::new();
    if let Some(ci) = index.cluster(cluster) {
        let exported = ci
            .services
            .values()
            .filter_map(|s| s.export.as_ref())
            .chain(ci.orphan_exports.iter());
        for export in exported {
            let conditions = match index.service(&export.key) {
                Some(merged) => merged
                    .conditions
                    .iter()
                    .map(|c| DesiredCondition {
                        kind: match c.kind {
                            ConditionKind::Valid => "Valid",
                            ConditionKind::Conflict => "Conflict",
                        }
                        .to_owned(),
                        status: c.status,
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                    })
                    .collect(),
                None => vec![DesiredCondition {
                    kind: "Valid".into(),
                    status: false,
                    reason: "NoService".into(),
                    message: format!("cluster {cluster} has no Service {}", export.key),
                }],
            };
            export_conditions.insert(export.key.clone(), conditions);
        }
    }
    McsDesired {
        imports,
        export_conditions,
        mesh_clusters: index.mesh().clusters.iter().map(|c| c.id.clone()).collect(),
    }
}

/// Holds write-back back until every declared cluster has contributed a state to the index.
/// Desired states derived earlier would lack the exports of the clusters still missing, and
/// write-back would delete or shrink the ServiceImports of what they export (a control plane
/// restarted while one API server is down). The last desired states handed out stay in force.
#[derive(Debug, Default)]
pub struct WriteBackGate {
    /// The clusters write-back waits for (empty: open).
    waiting: Vec<ClusterId>,
}

impl WriteBackGate {
    /// Records which declared clusters have not contributed yet (see
    /// [`super::sources::Sources::not_contributed`]); whether write-back may proceed. Logs
    /// once per change of that set.
    pub fn update(&mut self, waiting: Vec<ClusterId>) -> bool {
        if waiting != self.waiting {
            if waiting.is_empty() {
                tracing::info!("every cluster has synced; MCS write-back proceeds");
            } else {
                tracing::info!(
                    "MCS write-back waits until every cluster has synced: {}",
                    ids(&waiting)
                );
            }
            self.waiting = waiting;
        }
        self.waiting.is_empty()
    }

    /// The note for a Kubernetes member's status while write-back waits.
    pub fn note(&self, cluster: &str) -> Option<String> {
        (!self.waiting.is_empty()).then(|| {
            format!(
                "cluster {cluster}: MCS write-back waits until every cluster has synced: {}",
                ids(&self.waiting)
            )
        })
    }

    /// Adds the note to every Kubernetes member of `clusters` (shown by `/debug/clusters`).
    pub fn annotate(&self, clusters: &mut BTreeMap<String, ClusterStatus>) {
        for (name, status) in clusters.iter_mut() {
            if let (Some(kube), Some(note)) = (status.kubernetes.as_mut(), self.note(name)) {
                kube.errors.push(note);
            }
        }
    }
}

fn ids(clusters: &[ClusterId]) -> String {
    clusters
        .iter()
        .map(ClusterId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Hands every Kubernetes member its desired state (only changes are written), once `gate`
/// lets it: `waiting` are the declared clusters that have not contributed yet.
pub fn update_all(
    index: &MeshIndex,
    registry: &KubeRegistry,
    gate: &mut WriteBackGate,
    waiting: Vec<ClusterId>,
) {
    if !gate.update(waiting) {
        return;
    }
    for spec in &index.mesh().clusters {
        if spec.kubernetes.is_some() && registry.contains(&spec.id) {
            registry.set_desired(&spec.id, desired(index, &spec.id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<ClusterId> {
        names
            .iter()
            .map(|n| ClusterId::new(*n).expect("id"))
            .collect()
    }

    #[test]
    fn the_gate_opens_only_when_no_cluster_is_missing() {
        let mut gate = WriteBackGate::default();
        assert!(!gate.update(ids(&["west"])), "west has not synced");
        assert_eq!(
            gate.note("east").as_deref(),
            Some("cluster east: MCS write-back waits until every cluster has synced: west")
        );
        assert!(!gate.update(ids(&["gamma", "west"])));
        let mut clusters = BTreeMap::from([
            (
                "east".to_owned(),
                ClusterStatus {
                    source: "kubernetes",
                    synced: true,
                    generation: 1,
                    errors: Vec::new(),
                    kubernetes: Some(causeway_kube::ClusterSyncStatus::syncing()),
                },
            ),
            (
                "gamma".to_owned(),
                ClusterStatus {
                    source: "directory",
                    synced: false,
                    generation: 0,
                    errors: Vec::new(),
                    kubernetes: None,
                },
            ),
        ]);
        gate.annotate(&mut clusters);
        assert_eq!(
            clusters["east"]
                .kubernetes
                .as_ref()
                .map(|k| k.errors.clone()),
            Some(vec![
                "cluster east: MCS write-back waits until every cluster has synced: gamma, west"
                    .to_owned()
            ])
        );
        assert!(
            clusters["gamma"].errors.is_empty(),
            "only write-back targets"
        );
        assert!(gate.update(Vec::new()), "every cluster has contributed");
        assert_eq!(gate.note("east"), None);
    }
}
