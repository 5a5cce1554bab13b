//! Every Kubernetes member cluster of the mesh: one runtime per cluster, started, updated and
//! stopped as `mesh.yaml` changes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use causeway_model::{ClusterId, ClusterSpec, KubernetesSource, MeshConfig};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::client::ClientFactory;
use crate::cluster::{self, KubeOptions, RuntimeConfig};
use crate::status::{ClusterSyncStatus, ClusterUpdate};
use crate::token_review::TokenReviewer;
use crate::writeback::McsDesired;

struct Member {
    source: watch::Sender<(PathBuf, Option<String>)>,
    spec: watch::Sender<ClusterSpec>,
    desired: watch::Sender<Option<Arc<McsDesired>>>,
    task: JoinHandle<()>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Kubernetes registries of a mesh. Updates arrive on the receiver [`KubeRegistry::new`]
/// returns.
pub struct KubeRegistry {
    mesh_dir: PathBuf,
    factory: Arc<dyn ClientFactory>,
    options: KubeOptions,
    updates: mpsc::UnboundedSender<ClusterUpdate>,
    members: BTreeMap<ClusterId, Member>,
    reviewer: TokenReviewer,
}

impl KubeRegistry {
    /// A registry for the mesh directory at `mesh_dir` (kubeconfig paths are relative to it).
    pub fn new(
        mesh_dir: PathBuf,
        factory: Arc<dyn ClientFactory>,
        options: KubeOptions,
    ) -> (Self, mpsc::UnboundedReceiver<ClusterUpdate>) {
        let (updates, rx) = mpsc::unbounded_channel();
        (
            Self {
                mesh_dir,
                factory,
                options,
                updates,
                members: BTreeMap::new(),
                reviewer: TokenReviewer::default(),
            },
            rx,
        )
    }

    /// Starts runtimes for new Kubernetes clusters, passes new settings (network, locality,
    /// TTL, kubeconfig path or context: a new path is a rotation, taking over once synced) to
    /// the others, and stops removed ones (their last update has no objects).
    pub fn reconcile(&mut self, mesh: &MeshConfig) {
        let wanted: BTreeMap<ClusterId, (&ClusterSpec, &KubernetesSource)> = mesh
            .clusters
            .iter()
            .filter_map(|c| Some((c.id.clone(), (c, c.kubernetes.as_ref()?))))
            .collect();
        let gone: Vec<ClusterId> = self
            .members
            .iter()
            .filter(|(id, _)| !wanted.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.members.remove(&id);
            self.reviewer.remove(&id);
            tracing::info!(cluster = %id, "stopped watching the cluster's API server");
            let _ = self.updates.send(ClusterUpdate {
                cluster: id,
                objects: None,
                objects_changed: true,
                status: ClusterSyncStatus::syncing(),
            });
        }
        for (id, (spec, source)) in wanted {
            let path = (
                source.kubeconfig_path(&self.mesh_dir),
                source.context.clone(),
            );
            if let Some(member) = self.members.get(&id) {
                member.source.send_if_modified(|p| {
                    let changed = *p != path;
                    if changed {
                        *p = path.clone();
                    }
                    changed
                });
                member.spec.send_if_modified(|s| {
                    let changed = s != spec;
                    if changed {
                        *s = spec.clone();
                    }
                    changed
                });
                continue;
            }
            let (source_tx, source_rx) = watch::channel(path);
            let (spec_tx, spec_rx) = watch::channel(spec.clone());
            let (desired_tx, desired_rx) = watch::channel(None);
            let slot = Arc::new(RwLock::new(None));
            self.reviewer.set(id.clone(), Arc::clone(&slot));
            let config = RuntimeConfig {
                cluster: id.clone(),
                spec: spec_rx,
                source: source_rx,
                factory: Arc::clone(&self.factory),
                options: self.options.clone(),
                updates: self.updates.clone(),
                desired: desired_rx,
                client_slot: slot,
            };
            tracing::info!(cluster = %id, kubeconfig = %config.source.borrow().0.display(), "watching the cluster's API server");
            let task = tokio::spawn(cluster::run(config));
            self.members.insert(
                id,
                Member {
                    source: source_tx,
                    spec: spec_tx,
                    desired: desired_tx,
                    task,
                },
            );
        }
    }

    /// Whether `cluster` is a Kubernetes member.
    pub fn contains(&self, cluster: &ClusterId) -> bool {
        self.members.contains_key(cluster)
    }

    /// Sets what MCS write-back should make true in `cluster`; only changes are written.
    pub fn set_desired(&self, cluster: &ClusterId, desired: McsDesired) {
        if let Some(member) = self.members.get(cluster) {
            member.desired.send_if_modified(|d| {
                let changed = d.as_deref() != Some(&desired);
                if changed {
                    *d = Some(Arc::new(desired.clone()));
                }
                changed
            });
        }
    }

    /// Reviews tokens against each cluster's current client.
    pub fn token_reviewer(&self) -> TokenReviewer {
        self.reviewer.clone()
    }
}
