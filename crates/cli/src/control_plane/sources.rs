//! Where clusters' objects come from: the mesh directory (files) and Kubernetes API servers.
//! Both end in the same mesh index; this module applies each source's changes to it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use causeway_discovery::MeshIndex;
use causeway_kube::{ClusterSyncStatus, ClusterUpdate};
use causeway_model::{ClusterId, ClusterObjects, Gateway, ServiceKey};
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
    /// Gateways the control plane's probes find dead, with the reason (kept across rebuilds).
    pub gateways_down: BTreeMap<Gateway, String>,
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
        for name in self.kubernetes_declared() {
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

    /// Clusters `mesh.yaml` currently declares with `spec.kubernetes`.
    fn kubernetes_declared(&self) -> BTreeSet<String> {
        self.dir
            .mesh()
            .iter()
            .flat_map(|m| m.clusters.iter())
            .filter(|c| c.kubernetes.is_some())
            .map(|c| c.id.to_string())
            .collect()
    }

    /// Every source's objects. A Kubernetes slot counts only while its cluster is declared with
    /// `spec.kubernetes` (the directory keeps slots only for directory clusters), so a cluster
    /// switched to the mesh directory is never indexed with its old API server's objects.
    fn all_objects(&self) -> Vec<(ClusterId, Arc<ClusterObjects>)> {
        let declared = self.kubernetes_declared();
        let files =
            self.dir.clusters().iter().filter_map(|(name, slot)| {
                Some((ClusterId::new(name).ok()?, slot.objects.clone()?))
            });
        let kube = self
            .kube
            .iter()
            .filter(|(name, _)| declared.contains(*name))
            .filter_map(|(name, slot)| Some((ClusterId::new(name).ok()?, slot.objects.clone()?)));
        files.chain(kube).collect()
    }

    /// Drops the Kubernetes slots of clusters no longer declared with `spec.kubernetes`
    /// (removed, or switched to the mesh directory); whether any was dropped.
    fn drop_undeclared_kube(&mut self) -> bool {
        let declared = self.kubernetes_declared();
        let before = self.kube.len();
        self.kube.retain(|name, _| declared.contains(name));
        self.kube.len() != before
    }

    /// Declared clusters whose state the index does not hold yet: a directory cluster that has
    /// never loaded, a Kubernetes member that has never published objects (still syncing, or
    /// its ClusterProperty names another id). A stale member counts as contributed: its last
    /// good state is indexed. MCS write-back must wait for these, or it would delete the
    /// ServiceImports of services only they export.
    pub fn not_contributed(&self) -> Vec<ClusterId> {
        let Some(mesh) = self.dir.mesh() else {
            return Vec::new();
        };
        mesh.clusters
            .iter()
            .filter(|c| {
                let name = c.id.as_str();
                let objects = if c.kubernetes.is_some() {
                    self.kube.get(name).and_then(|s| s.objects.as_ref())
                } else {
                    self.dir
                        .clusters()
                        .get(name)
                        .and_then(|s| s.objects.as_ref())
                };
                objects.is_none()
            })
            .map(|c| c.id.clone())
            .collect()
    }

    /// Rebuilds the index from every source.
    pub fn rebuild(&self, index: &mut Option<Arc<MeshIndex>>) -> Changes {
        let Some(mesh) = self.dir.mesh() else {
            return Changes::default();
        };
        let objects = self.all_objects();
        let mut built =
            MeshIndex::build(Arc::clone(mesh), objects.iter().map(|(id, o)| (id, &**o)));
        built.set_gateways_down(self.gateways_down.clone());
        *index = Some(Arc::new(built));
        Changes {
            all: true,
            services: BTreeSet::new(),
        }
    }

    /// Applies a mesh directory reload: full rebuild when the mesh changed (a cluster whose
    /// source changed loses its old source's slot), else only the changed clusters.
    pub fn apply_reload(
        &mut self,
        index: &mut Option<Arc<MeshIndex>>,
        outcome: &ReloadOutcome,
    ) -> Changes {
        let dropped = self.drop_undeclared_kube();
        let Some(mesh) = self.dir.mesh() else {
            return Changes::default();
        };
        if outcome.mesh_changed
            || dropped
            || index.as_ref().is_none_or(|i| !Arc::ptr_eq(i.mesh(), mesh))
        {
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

    /// Records the gateways the probes now find dead; a change reshapes every view.
    pub fn apply_probes(
        &mut self,
        index: &mut Option<Arc<MeshIndex>>,
        down: BTreeMap<Gateway, String>,
    ) -> Option<Changes> {
        if self.gateways_down == down {
            return None;
        }
        self.gateways_down = down;
        if let Some(current) = index.as_mut() {
            Arc::make_mut(current).set_gateways_down(self.gateways_down.clone());
        }
        Some(Changes {
            all: true,
            services: BTreeSet::new(),
        })
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
                // Removed, or now read from the mesh directory: whatever the index holds of its
                // Kubernetes state goes, replaced by its directory state if it has one.
                if self.kube.remove(&name).is_some_and(|s| s.objects.is_some()) {
                    let dir = self
                        .dir
                        .clusters()
                        .get(&name)
                        .and_then(|s| s.objects.clone());
                    set_cluster(index, &name, dir, &mut changes);
                }
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use causeway_registry::ReloadScope;

    use super::*;
    use crate::check::tests::Scratch;

    const MESH: &str = "apiVersion: causeway.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: td}\n---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {name: alpha}\nspec: {network: n, locality: r/z}\n";

    fn west(kubernetes: bool) -> String {
        let source = if kubernetes {
            ", kubernetes: {kubeconfig: west.kubeconfig}"
        } else {
            ""
        };
        format!("---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {{name: west}}\nspec: {{network: n, locality: r/z{source}}}\n")
    }

    fn service(name: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n")
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }

    /// What west's API server served: service `demo/<name>`.
    fn kube_objects(scratch: &Scratch, name: &str) -> Arc<ClusterObjects> {
        let root = scratch.0.join("from-api-server");
        write(&root, "clusters/west/svc.yaml", &service(name));
        Arc::new(causeway_registry::load_cluster_dir(&root, "west").expect("objects"))
    }

    fn update(objects: Option<Arc<ClusterObjects>>) -> ClusterUpdate {
        ClusterUpdate {
            cluster: ClusterId::new("west").expect("id"),
            objects,
            objects_changed: true,
            status: ClusterSyncStatus::syncing(),
        }
    }

    fn services_of(index: &Option<Arc<MeshIndex>>, cluster: &str) -> Vec<String> {
        let id = ClusterId::new(cluster).expect("id");
        index
            .as_ref()
            .and_then(|i| i.cluster(&id))
            .map(|c| c.services.keys().map(|k| k.name.clone()).collect())
            .unwrap_or_default()
    }

    fn open(mesh: &Path) -> (Sources, Option<Arc<MeshIndex>>) {
        let sources = Sources {
            dir: MeshDirectory::open(mesh),
            kube: BTreeMap::new(),
            gateways_down: BTreeMap::new(),
        };
        let mut index = None;
        sources.rebuild(&mut index);
        (sources, index)
    }

    #[test]
    fn a_cluster_switched_to_the_directory_loses_its_kubernetes_state() {
        let scratch = Scratch::new("sources-switch");
        let mesh = scratch.0.join("mesh");
        write(&mesh, "mesh.yaml", &format!("{MESH}{}", west(true)));
        write(&mesh, "clusters/alpha/svc.yaml", &service("a"));
        write(&mesh, "clusters/west/svc.yaml", &service("fresh"));
        let (mut sources, mut index) = open(&mesh);
        sources.apply_kube(
            &mut index,
            vec![update(Some(kube_objects(&scratch, "stale")))],
        );
        assert_eq!(services_of(&index, "west"), ["stale"]);

        write(&mesh, "mesh.yaml", &format!("{MESH}{}", west(false)));
        let outcome = sources.dir.reload(ReloadScope::All);
        sources.apply_reload(&mut index, &outcome);
        assert_eq!(
            services_of(&index, "west"),
            ["fresh"],
            "the directory's state"
        );
        assert!(sources.kube.is_empty(), "the Kubernetes slot is dropped");
        let rebuilt = {
            let mut i = None;
            sources.rebuild(&mut i);
            i
        };
        assert_eq!(
            services_of(&rebuilt, "west"),
            ["fresh"],
            "and stays so on rebuild"
        );
        // The registry's last update of the stopped member changes nothing.
        sources.apply_kube(&mut index, vec![update(None)]);
        assert_eq!(services_of(&index, "west"), ["fresh"]);
    }

    #[test]
    fn a_removed_member_leaves_the_index() {
        let scratch = Scratch::new("sources-remove");
        let mesh = scratch.0.join("mesh");
        write(&mesh, "mesh.yaml", &format!("{MESH}{}", west(true)));
        write(&mesh, "clusters/alpha/svc.yaml", &service("a"));
        let (mut sources, mut index) = open(&mesh);
        sources.apply_kube(
            &mut index,
            vec![update(Some(kube_objects(&scratch, "old")))],
        );
        assert_eq!(services_of(&index, "west"), ["old"]);
        write(&mesh, "mesh.yaml", MESH);
        let outcome = sources.dir.reload(ReloadScope::All);
        sources.apply_reload(&mut index, &outcome);
        assert!(services_of(&index, "west").is_empty());
        assert!(sources.kube.is_empty());
    }

    #[test]
    fn write_back_waits_for_every_declared_cluster() {
        let scratch = Scratch::new("sources-gate");
        let mesh = scratch.0.join("mesh");
        write(&mesh, "mesh.yaml", &format!("{MESH}{}", west(true)));
        write(&mesh, "clusters/alpha/svc.yaml", "not: [valid");
        let (mut sources, mut index) = open(&mesh);
        let ids = |s: &Sources| -> Vec<String> {
            s.not_contributed()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(ids(&sources), ["alpha", "west"], "neither has contributed");

        write(&mesh, "clusters/alpha/svc.yaml", &service("a"));
        let outcome = sources.dir.reload(ReloadScope::All);
        sources.apply_reload(&mut index, &outcome);
        // West is still syncing: its first update has no objects.
        let mut syncing = update(None);
        syncing.objects_changed = false;
        sources.apply_kube(&mut index, vec![syncing]);
        assert_eq!(ids(&sources), ["west"]);

        sources.apply_kube(&mut index, vec![update(Some(kube_objects(&scratch, "w")))]);
        assert!(ids(&sources).is_empty(), "every cluster has contributed");
        // Stale keeps its last good state: still contributed.
        let mut stale = update(None);
        stale.objects_changed = false;
        stale.status.state = causeway_kube::SyncState::Stale;
        sources.apply_kube(&mut index, vec![stale]);
        assert!(ids(&sources).is_empty());
        // Broken later: the directory keeps its last good state.
        write(&mesh, "clusters/alpha/svc.yaml", "not: [valid");
        let outcome = sources.dir.reload(ReloadScope::All);
        sources.apply_reload(&mut index, &outcome);
        assert!(ids(&sources).is_empty());
    }
}
