//! Where clusters' objects come from: the mesh directory (files) and Kubernetes API servers.
//! Both end in the same mesh index; this module applies each source's changes to it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use causeway_discovery::MeshIndex;
use causeway_kube::{ClusterSyncStatus, ClusterUpdate};
use causeway_model::{ClusterId, ClusterObjects, ServiceKey};
use causeway_registry::{LoadError, MeshDirectory, ReloadOutcome};
use serde::Serialize;

/// A Kubernetes member's last update.
#[derive(Debug, Clone)]
pub struct KubeSlot {
    /// Its objects (`None`: contributes nothing).
    pub objects: Option<Arc<ClusterObjects>>,
    /// Its status.
    pub status: ClusterSyncStatus,
    /// Bumped each time `objects` changes.
    pub generation: u64,
}

/// A cluster's load status, whatever its source.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// `directory` or `kubernetes`.
    pub source: &'static str,
    /// Whether a good state is in the index (an unsynced cluster contributes nothing, never an
    /// empty endpoint set).
    pub synced: bool,
    /// Bumped on each new good state.
    pub generation: u64,
    /// Errors of the latest load attempt (mesh directory clusters).
    pub errors: Vec<LoadError>,
    /// Registry status of a Kubernetes cluster.
    pub kubernetes: Option<ClusterSyncStatus>,
}

/// What changed since the previous snapshot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Changes {
    /// Everything may have changed (mesh settings changed, or first load).
    pub all: bool,
    /// Services whose merged state or endpoints changed.
    pub services: BTreeSet<ServiceKey>,
}

/// Every source's last good objects.
#[derive(Debug)]
pub struct Sources {
    /// The mesh directory.
    pub dir: MeshDirectory,
    /// Kubernetes members by cluster id.
    pub kube: BTreeMap<String, KubeSlot>,
}

impl Sources {
    /// Status of every cluster.
    pub fn status(&self) -> BTreeMap<String, ClusterStatus> {
        let mut out: BTreeMap<String, ClusterStatus> = self
            .dir
            .clusters()
            .iter()
            .map(|(name, slot)| {
                (
                    name.clone(),
                    ClusterStatus {
                        source: "directory",
                        synced: slot.objects.is_some(),
                        generation: slot.generation,
                        errors: slot.errors.clone(),
                        kubernetes: None,
                    },
                )
            })
            .collect();
        let declared: BTreeSet<String> = self
            .dir
            .mesh()
            .iter()
            .flat_map(|m| m.clusters.iter())
            .filter(|c| c.kubernetes.is_some())
            .map(|c| c.id.to_string())
            .collect();
        for name in declared {
            let slot = self.kube.get(&name);
            out.insert(
                name,
                ClusterStatus {
                    source: "kubernetes",
                    synced: slot.is_some_and(|s| s.objects.is_some()),
                    generation: slot.map_or(0, |s| s.generation),
                    errors: Vec::new(),
                    kubernetes: Some(
                        slot.map_or_else(ClusterSyncStatus::syncing, |s| s.status.clone()),
                    ),
                },
            );
        }
        out
    }

    fn all_objects(&self) -> Vec<(ClusterId, Arc<ClusterObjects>)> {
        let files =
            self.dir.clusters().iter().filter_map(|(name, slot)| {
                Some((ClusterId::new(name).ok()?, slot.objects.clone()?))
            });
        let kube = self
            .kube
            .iter()
            .filter_map(|(name, slot)| Some((ClusterId::new(name).ok()?, slot.objects.clone()?)));
        files.chain(kube).collect()
    }

    /// Rebuilds the index from every source.
    pub fn rebuild(&self, index: &mut Option<Arc<MeshIndex>>) -> Changes {
        let Some(mesh) = self.dir.mesh() else {
            return Changes::default();
        };
        let objects = self.all_objects();
        let built = MeshIndex::build(Arc::clone(mesh), objects.iter().map(|(id, o)| (id, &**o)));
        *index = Some(Arc::new(built));
        Changes {
            all: true,
            services: BTreeSet::new(),
        }
    }

    /// Applies a mesh directory reload: full rebuild when the mesh changed, else only the
    /// changed clusters.
    pub fn apply_reload(
        &self,
        index: &mut Option<Arc<MeshIndex>>,
        outcome: &ReloadOutcome,
    ) -> Changes {
        let Some(mesh) = self.dir.mesh() else {
            return Changes::default();
        };
        if outcome.mesh_changed || index.as_ref().is_none_or(|i| !Arc::ptr_eq(i.mesh(), mesh)) {
            return self.rebuild(index);
        }
        let mut changes = Changes::default();
        for name in &outcome.clusters_changed {
            let objects = self
                .dir
                .clusters()
                .get(name)
                .and_then(|s| s.objects.clone());
            set_cluster(index, name, objects, &mut changes);
        }
        changes
    }

    /// Records Kubernetes updates and applies the changed objects to the index.
    pub fn apply_kube(
        &mut self,
        index: &mut Option<Arc<MeshIndex>>,
        updates: Vec<ClusterUpdate>,
    ) -> Changes {
        let mut changes = Changes::default();
        for update in updates {
            let name = update.cluster.to_string();
            let declared = self
                .dir
                .mesh()
                .and_then(|m| m.cluster(&update.cluster))
                .is_some_and(|c| c.kubernetes.is_some());
            if !declared {
                self.kube.remove(&name);
                continue;
            }
            let slot = self.kube.entry(name.clone()).or_insert_with(|| KubeSlot {
                objects: None,
                status: ClusterSyncStatus::syncing(),
                generation: 0,
            });
            slot.status = update.status;
            if update.objects_changed {
                slot.objects = update.objects.clone();
                slot.generation += 1;
                set_cluster(index, &name, update.objects, &mut changes);
            }
        }
        changes
    }
}

fn set_cluster(
    index: &mut Option<Arc<MeshIndex>>,
    name: &str,
    objects: Option<Arc<ClusterObjects>>,
    changes: &mut Changes,
) {
    let (Some(current), Ok(id)) = (index.as_mut(), ClusterId::new(name)) else {
        return;
    };
    let current = Arc::make_mut(current);
    match objects {
        Some(objects) => match current.set_cluster(&id, &objects) {
            Ok(keys) => changes.services.extend(keys),
            Err(e) => tracing::warn!(cluster = %id, error = %e, "cluster not indexed"),
        },
        None => changes.services.extend(current.remove_cluster(&id)),
    }
}
