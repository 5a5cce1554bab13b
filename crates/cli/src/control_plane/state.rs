//! The control plane's state: the mesh directory with last-good semantics, the mesh index
//! built from it, and a published snapshot that readers (debug API, xDS) share.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_discovery::MeshIndex;
use causeway_model::{ClusterId, ServiceKey};
use causeway_registry::watch::{self, WatchError};
use causeway_registry::{LoadError, MeshDirectory, ReloadOutcome};
use serde::Serialize;
use tokio::sync::watch as channel;

use super::metrics::Metrics;

/// A cluster directory's load status.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// Whether a good state has ever loaded (an unsynced cluster contributes nothing, never an
    /// empty endpoint set).
    pub synced: bool,
    /// Bumped on each new good state.
    pub generation: u64,
    /// Errors of the latest load attempt.
    pub errors: Vec<LoadError>,
}

/// What changed since the previous snapshot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Changes {
    /// Everything may have changed (mesh settings changed, or first load).
    pub all: bool,
    /// Services whose merged state or endpoints changed.
    pub services: BTreeSet<ServiceKey>,
}

/// One published state of the control plane.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Increases with every publish.
    pub version: u64,
    /// The index, once `mesh.yaml` has loaded.
    pub index: Option<Arc<MeshIndex>>,
    /// Every current load error.
    pub errors: Vec<LoadError>,
    /// Per cluster directory.
    pub clusters: BTreeMap<String, ClusterStatus>,
    /// What this version changed.
    pub changes: Changes,
}

/// Readers' handle: the latest snapshot, and change notifications.
pub type StateHandle = channel::Receiver<Arc<Snapshot>>;

fn cluster_status(dir: &MeshDirectory) -> BTreeMap<String, ClusterStatus> {
    dir.clusters()
        .iter()
        .map(|(name, slot)| {
            (
                name.clone(),
                ClusterStatus {
                    synced: slot.objects.is_some(),
                    generation: slot.generation,
                    errors: slot.errors.clone(),
                },
            )
        })
        .collect()
}

/// Applies a reload outcome to the index: full rebuild when the mesh changed, else only the
/// changed clusters.
fn apply(
    dir: &MeshDirectory,
    index: &mut Option<Arc<MeshIndex>>,
    outcome: &ReloadOutcome,
) -> Changes {
    let Some(mesh) = dir.mesh() else {
        return Changes::default();
    };
    let rebuild =
        outcome.mesh_changed || index.as_ref().is_none_or(|i| !Arc::ptr_eq(i.mesh(), mesh));
    if rebuild {
        let objects: Vec<(ClusterId, Arc<causeway_model::ClusterObjects>)> = dir
            .clusters()
            .iter()
            .filter_map(|(name, slot)| Some((ClusterId::new(name).ok()?, slot.objects.clone()?)))
            .collect();
        let built = MeshIndex::build(Arc::clone(mesh), objects.iter().map(|(id, o)| (id, &**o)));
        *index = Some(Arc::new(built));
        return Changes {
            all: true,
            services: BTreeSet::new(),
        };
    }
    let mut changes = Changes::default();
    if let Some(current) = index.as_mut() {
        let current = Arc::make_mut(current);
        for name in &outcome.clusters_changed {
            let (Ok(id), Some(objects)) = (
                ClusterId::new(name),
                dir.clusters().get(name).and_then(|s| s.objects.clone()),
            ) else {
                continue;
            };
            match current.set_cluster(&id, &objects) {
                Ok(keys) => changes.services.extend(keys),
                Err(e) => tracing::warn!(cluster = %id, error = %e, "cluster not indexed"),
            }
        }
    }
    changes
}

/// Loads the directory, publishes the first snapshot and keeps it current as files change.
pub async fn start(
    root: PathBuf,
    settle: Duration,
    metrics: Arc<Metrics>,
) -> Result<StateHandle, WatchError> {
    // Watch before the first load so no change between the two is missed.
    let mut watcher = watch::watch(&root, settle)?;
    let started = Instant::now();
    let (dir, mut index) = tokio::task::block_in_place(|| {
        let dir = MeshDirectory::open(root.clone());
        let mut index = None;
        let outcome = ReloadOutcome {
            mesh_changed: true,
            ..ReloadOutcome::default()
        };
        apply(&dir, &mut index, &outcome);
        (dir, index)
    });
    metrics.observe(&dir, index.as_deref(), started.elapsed());
    for e in dir.errors() {
        tracing::warn!(error = %e, "mesh directory error");
    }
    let first = Snapshot {
        version: 1,
        index: index.clone(),
        errors: dir.errors(),
        clusters: cluster_status(&dir),
        changes: Changes {
            all: true,
            services: BTreeSet::new(),
        },
    };
    let (tx, rx) = channel::channel(Arc::new(first));
    tokio::spawn(async move {
        let mut dir = dir;
        let mut version = 1;
        while let Some(scope) = watcher.next().await {
            let started = Instant::now();
            let span = tracing::info_span!("reload", scope = ?scope);
            let _guard = span.enter();
            let result = tokio::task::block_in_place(|| {
                let outcome = dir.reload(scope.clone());
                let changes = apply(&dir, &mut index, &outcome);
                (outcome, changes)
            });
            let (outcome, changes) = result;
            metrics.observe(&dir, index.as_deref(), started.elapsed());
            if !outcome.state_changed() && !outcome.errors_changed {
                continue;
            }
            version += 1;
            tracing::info!(
                version,
                clusters_changed = outcome.clusters_changed.len(),
                services_changed = changes.services.len(),
                full = changes.all,
                errors = dir.errors().len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "mesh state published"
            );
            let snapshot = Snapshot {
                version,
                index: index.clone(),
                errors: dir.errors(),
                clusters: cluster_status(&dir),
                changes,
            };
            if tx.send(Arc::new(snapshot)).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Feeds the xDS server: the index of every new snapshot, as the xDS crate's mesh state.
pub fn forward_to_xds(
    mut snapshots: StateHandle,
) -> channel::Receiver<Arc<causeway_xds::MeshState>> {
    let first = snapshots.borrow_and_update().clone();
    let (tx, rx) = channel::channel(Arc::new(causeway_xds::MeshState {
        version: first.version,
        index: first.index.clone(),
    }));
    tokio::spawn(async move {
        while snapshots.changed().await.is_ok() {
            let snap = snapshots.borrow_and_update().clone();
            let next = causeway_xds::MeshState {
                version: snap.version,
                index: snap.index.clone(),
            };
            if tx.send(Arc::new(next)).is_err() {
                break;
            }
        }
    });
    rx
}
