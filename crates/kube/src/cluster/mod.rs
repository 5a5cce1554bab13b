//! One Kubernetes member cluster's runtime: its sessions, credentials, health and write-back.
//!
//! - The first session's records reach the index only once every watch has listed.
//! - A changed kubeconfig starts a second session with the new client; it replaces the active
//!   one only after its own initial sync, so the old watches serve until then and broken new
//!   credentials never take over (Istio's #60612/#49780).
//! - A failing watch or probe marks the cluster stale (last good state kept, Istio's
//!   #32102/#38440) and starts a re-listing session; when it has synced, objects deleted in the
//!   meantime are gone and the cluster is current again.

mod health;
mod publish;
mod sessions;
mod write_back;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use causeway_model::{ClusterId, ClusterObjects, ClusterSpec};
use tokio::sync::{mpsc, watch};

use crate::client::{ClientFactory, KubeconfigFile};
use crate::session::{InitialList, Session, Tagged};
use crate::status::{ClusterSyncStatus, ClusterUpdate, Problems};
use crate::writeback::{self, McsDesired, WriteBackOutcome};
use crate::KubeError;

/// Settings shared by every cluster runtime.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Never write ServiceImports or ServiceExport status (`--read-only-clusters`).
    pub read_only: bool,
    /// How often the kubeconfig is re-read and the API server probed.
    pub poll_interval: Duration,
    /// How long a probe may take before the API server counts as unreachable.
    pub probe_timeout: Duration,
    /// How watches list.
    pub initial_list: InitialList,
    /// How often the optional APIs (MCS version, About API, Causeway's CRD) are discovered
    /// again; a change (say, the MCS CRDs installed after linking) re-lists with them.
    pub rediscover_interval: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            poll_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(3),
            initial_list: InitialList::ListWatch,
            rediscover_interval: Duration::from_secs(30),
        }
    }
}

/// Why a second session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// The first one.
    Initial,
    /// New credentials.
    Rotation,
    /// Re-list after the cluster was unreachable.
    Resync,
}

/// What the runtime is given.
pub(crate) struct RuntimeConfig {
    pub cluster: ClusterId,
    pub spec: watch::Receiver<ClusterSpec>,
    /// Kubeconfig path and context; a change is handled like a rotation.
    pub source: watch::Receiver<(std::path::PathBuf, Option<String>)>,
    pub factory: Arc<dyn ClientFactory>,
    pub options: KubeOptions,
    pub updates: mpsc::UnboundedSender<ClusterUpdate>,
    pub desired: watch::Receiver<Option<Arc<McsDesired>>>,
    pub client_slot: Arc<RwLock<Option<kube::Client>>>,
}

struct Runtime {
    cfg: RuntimeConfig,
    signals_tx: mpsc::UnboundedSender<Tagged>,
    next_id: u64,
    active: Option<Session>,
    /// The first session, or one with new credentials (`Initial` or `Rotation`).
    pending: Option<(Session, Purpose)>,
    /// A re-list with the active session's credentials after an outage. Separate from
    /// `pending`, so a rotation that cannot sync (broken credentials) never keeps a cluster
    /// stale, and a rotation started during an outage does not cancel the re-list.
    resync: Option<Session>,
    kubeconfig: Option<KubeconfigFile>,
    /// A kubeconfig that failed to make a client is tried again at this time.
    kubeconfig_retry_at: Option<tokio::time::Instant>,
    status: ClusterSyncStatus,
    problems: Problems,
    published: Option<Arc<ClusterObjects>>,
    sent_status: Option<ClusterSyncStatus>,
    /// The objects must be assembled again.
    dirty: bool,
    /// Only the status may have changed.
    status_dirty: bool,
    probe_failing: bool,
    /// Probes and re-discoveries report here, tagged with the session they asked with.
    checks: mpsc::UnboundedSender<Check>,
    probing: bool,
    /// The resync was started because the optional APIs changed (not after an outage).
    resync_for_apis: bool,
    /// After a re-list for changed APIs failed, none is tried again before this.
    api_relist_after: Option<tokio::time::Instant>,
    /// Monotonic twin of `status.stale_since` (the TTL must not follow clock steps).
    stale_at: Option<tokio::time::Instant>,
    writeback_again: bool,
    /// Objects written by write-back, with their resourceVersion after the write.
    written: std::collections::BTreeMap<(&'static str, crate::store::ObjectKey), u64>,
    retry_writeback_at: Option<tokio::time::Instant>,
    writeback_backoff: writeback::Backoff,
}

/// Runs one cluster until the task is aborted.
pub(crate) async fn run(cfg: RuntimeConfig) {
    let (signals_tx, mut signals) = mpsc::unbounded_channel();
    let (checks_tx, mut checks) = mpsc::unbounded_channel();
    let span = tracing::info_span!("kubernetes", cluster = %cfg.cluster);
    let mut rt = Runtime {
        cfg,
        signals_tx,
        next_id: 0,
        active: None,
        pending: None,
        resync: None,
        kubeconfig: None,
        kubeconfig_retry_at: None,
        status: ClusterSyncStatus::syncing(),
        problems: Problems::default(),
        published: None,
        sent_status: None,
        dirty: true,
        status_dirty: true,
        probe_failing: false,
        checks: checks_tx,
        probing: false,
        resync_for_apis: false,
        api_relist_after: None,
        stale_at: None,
        writeback_again: false,
        written: std::collections::BTreeMap::new(),
        retry_writeback_at: None,
        writeback_backoff: writeback::Backoff::default(),
    };
    let mut tick = tokio::time::interval(rt.cfg.options.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut desired = rt.cfg.desired.clone();
    let mut spec = rt.cfg.spec.clone();
    // Aborted when dropped: with this task (the member left the mesh) or below.
    let mut writeback: Option<writeback::Running> = None;
    let mut rediscover = tokio::time::interval(rt.cfg.options.rediscover_interval);
    rediscover.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(first) = signals.recv() => {
                let _enter = span.enter();
                rt.on_signal(first);
                while let Ok(more) = signals.try_recv() {
                    rt.on_signal(more);
                }
            }
            _ = tick.tick() => rt.on_tick().await,
            _ = rediscover.tick() => rt.rediscover(),
            Some(check) = checks.recv() => rt.on_check(check),
            Ok(()) = desired.changed() => rt.writeback_again = true,
            Ok(()) = spec.changed() => rt.dirty = true,
            result = finished(&mut writeback) => {
                writeback = None;
                rt.on_writeback(result);
            }
        }
        rt.publish();
        // A pass of a session that no longer serves writes from a superseded view: stop it,
        // and pass again with the serving session.
        if writeback
            .as_ref()
            .is_some_and(|w| rt.active.as_ref().map(|s| s.id) != Some(w.session))
        {
            writeback = None;
            rt.writeback_again = true;
        }
        if writeback.is_none() {
            writeback = rt.maybe_write_back();
        }
    }
}

/// What a background probe or re-discovery found, with the session it asked with.
enum Check {
    /// `GET /version`.
    Probe(u64, Result<(), KubeError>),
    /// The optional APIs the cluster serves now.
    Served(u64, crate::apis::ServedApis),
}

/// A re-list that has not synced after this long is restarted (after an outage) or given up
/// (after an API change).
const RESYNC_DEADLINE: Duration = Duration::from_secs(60);
/// How long a failed re-list for changed APIs keeps another from being tried.
const API_RELIST_BACKOFF: Duration = Duration::from_secs(600);

/// Waits for a running write-back, or forever when none runs.
async fn finished(task: &mut Option<writeback::Running>) -> WriteBackOutcome {
    match task.as_mut() {
        Some(running) => running.finished().await,
        None => std::future::pending().await,
    }
}

impl Runtime {
    async fn on_tick(&mut self) {
        self.check_kubeconfig().await;
        self.check_ttl();
        self.check_resync_deadline();
        if self
            .retry_writeback_at
            .is_some_and(|t| t <= tokio::time::Instant::now())
        {
            self.retry_writeback_at = None;
            self.writeback_again = true;
        }
        self.start_probe();
    }
}
