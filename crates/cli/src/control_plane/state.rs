//! The control plane's state: the mesh directory and the Kubernetes members with last-good
//! semantics, the mesh index built from them, and a published snapshot that readers (debug
//! API, xDS, CA) share.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_discovery::MeshIndex;
use causeway_kube::{ClientFactory, ClusterUpdate, KubeOptions, KubeRegistry, TokenReviewer};
use causeway_model::Gateway;
use causeway_registry::watch::{self, WatchError};
use causeway_registry::{LoadError, MeshDirectory, ReloadOutcome, ReloadScope};
use tokio::sync::{mpsc, watch as channel};

use super::mcs;
use super::metrics::Metrics;
use super::sources::Sources;
pub use super::sources::{Changes, ClusterStatus};

/// One published state of the control plane.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Increases with every publish.
    pub version: u64,
    /// The index, once `mesh.yaml` has loaded.
    pub index: Option<Arc<MeshIndex>>,
    /// Every current load error.
    pub errors: Vec<LoadError>,
    /// Per cluster.
    pub clusters: BTreeMap<String, ClusterStatus>,
    /// What this version changed.
    pub changes: Changes,
}

/// Readers' handle: the latest snapshot, and change notifications.
pub type StateHandle = channel::Receiver<Arc<Snapshot>>;

/// How Kubernetes members are read.
pub struct KubeSettings {
    /// Runtime options.
    pub options: KubeOptions,
    /// Makes each member's client from its kubeconfig.
    pub factory: Arc<dyn ClientFactory>,
}

/// The running state: snapshots, and the Kubernetes members' token reviewer (for the CA).
pub struct Started {
    /// Snapshots.
    pub handle: StateHandle,
    /// TokenReview against each Kubernetes member.
    pub reviewer: TokenReviewer,
    /// Where the gateway prober sends the gateways it finds dead (see `gateway_probe`).
    pub gateways_down: mpsc::Sender<BTreeMap<Gateway, String>>,
}

/// What woke the state loop.
enum Input {
    Files(ReloadScope),
    Kube(Vec<ClusterUpdate>),
    Probes(BTreeMap<Gateway, String>),
}

async fn next_input(
    watcher: &mut watch::DirectoryWatcher,
    kube: &mut mpsc::UnboundedReceiver<ClusterUpdate>,
    probes: &mut mpsc::Receiver<BTreeMap<Gateway, String>>,
) -> Option<Input> {
    tokio::select! {
        scope = watcher.next() => scope.map(Input::Files),
        // With probing off the sender is gone: this branch is disabled, never an end.
        Some(down) = probes.recv() => Some(Input::Probes(down)),
        first = kube.recv() => {
            let mut all = vec![first?];
            while let Ok(more) = kube.try_recv() {
                all.push(more);
            }
            Some(Input::Kube(all))
        }
    }
}

/// Loads the directory, starts the Kubernetes members, publishes the first snapshot and keeps
/// it current as files and clusters change.
pub async fn start(
    root: PathBuf,
    settle: Duration,
    metrics: Arc<Metrics>,
    kube: KubeSettings,
) -> Result<Started, WatchError> {
    // Watch before the first load so no change between the two is missed.
    let mut watcher = watch::watch(&root, settle)?;
    let started = Instant::now();
    let write_back = !kube.options.read_only;
    let (mut registry, mut kube_updates) =
        KubeRegistry::new(root.clone(), kube.factory, kube.options);
    let reviewer = registry.token_reviewer();
    let (gateways_down, mut probes) = mpsc::channel(4);
    let (sources, mut index) = tokio::task::block_in_place(|| {
        let sources = Sources {
            dir: MeshDirectory::open(root.clone()),
            kube: BTreeMap::new(),
            gateways_down: BTreeMap::new(),
        };
        let mut index = None;
        sources.rebuild(&mut index);
        (sources, index)
    });
    if let Some(mesh) = sources.dir.mesh() {
        registry.reconcile(mesh);
    }
    metrics.observe(&sources.dir, index.as_deref(), started.elapsed());
    for e in sources.dir.errors() {
        tracing::warn!(error = %e, "mesh directory error");
    }
    let first = Snapshot {
        version: 1,
        index: index.clone(),
        errors: sources.dir.errors(),
        clusters: sources.status(),
        changes: Changes {
            all: true,
            services: BTreeSet::new(),
        },
    };
    let (tx, rx) = channel::channel(Arc::new(first));
    tokio::spawn(async move {
        let mut sources = sources;
        let mut version = 1;
        let mut gate = mcs::WriteBackGate::default();
        while let Some(input) = next_input(&mut watcher, &mut kube_updates, &mut probes).await {
            let started = Instant::now();
            let from_registry = !matches!(input, Input::Probes(_));
            let (changes, changed) = match input {
                Input::Files(scope) => {
                    let span = tracing::info_span!("reload", scope = ?scope);
                    let _guard = span.enter();
                    let (outcome, changes): (ReloadOutcome, Changes) =
                        tokio::task::block_in_place(|| {
                            let outcome = sources.dir.reload(scope.clone());
                            let changes = sources.apply_reload(&mut index, &outcome);
                            (outcome, changes)
                        });
                    if outcome.mesh_changed {
                        if let Some(mesh) = sources.dir.mesh() {
                            registry.reconcile(mesh);
                        }
                    }
                    (changes, outcome.state_changed() || outcome.errors_changed)
                }
                Input::Kube(updates) => {
                    let span = tracing::info_span!("kubernetes_update", clusters = updates.len());
                    let _guard = span.enter();
                    let changes =
                        tokio::task::block_in_place(|| sources.apply_kube(&mut index, updates));
                    (changes, true)
                }
                Input::Probes(down) => {
                    let span = tracing::info_span!("gateway_probes", down = down.len());
                    let _guard = span.enter();
                    match sources.apply_probes(&mut index, down) {
                        Some(changes) => (changes, true),
                        None => continue,
                    }
                }
            };
            if from_registry {
                metrics.observe(&sources.dir, index.as_deref(), started.elapsed());
                metrics.observe_kubernetes(&sources.status());
            }
            if !changed {
                continue;
            }
            if let Some(index) = index.as_ref().filter(|_| write_back) {
                mcs::update_all(index, &registry, &mut gate, sources.not_contributed());
            }
            version += 1;
            tracing::info!(
                version,
                services_changed = changes.services.len(),
                full = changes.all,
                errors = sources.dir.errors().len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "mesh state published"
            );
            let mut clusters = sources.status();
            gate.annotate(&mut clusters);
            let snapshot = Snapshot {
                version,
                index: index.clone(),
                errors: sources.dir.errors(),
                clusters,
                changes,
            };
            if tx.send(Arc::new(snapshot)).is_err() {
                break;
            }
        }
    });
    Ok(Started {
        handle: rx,
        reviewer,
        gateways_down,
    })
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
