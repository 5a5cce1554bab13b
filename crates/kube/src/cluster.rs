//! One Kubernetes member cluster's runtime: its sessions, credentials, health and write-back.
//!
//! - The first session's records reach the index only once every watch has listed.
//! - A changed kubeconfig starts a second session with the new client; it replaces the active
//!   one only after its own initial sync, so the old watches serve until then and broken new
//!   credentials never take over (Istio's #60612/#49780).
//! - A failing watch or probe marks the cluster stale (last good state kept, Istio's
//!   #32102/#38440) and starts a re-listing session; when it has synced, objects deleted in the
//!   meantime are gone and the cluster is current again.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use causeway_model::{ClusterId, ClusterObjects, ClusterSpec};
use tokio::sync::{mpsc, watch};

use crate::client::{ClientFactory, KubeconfigFile};
use crate::session::{lock, InitialList, Session, Signal, Tagged};
use crate::status::{ClusterSyncStatus, ClusterUpdate, Problems, SyncState};
use crate::translate::{self, RecordsRef};
use crate::writeback::{self, Current, McsDesired, WriteBackOutcome};
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

    /// The session whose connection the probe checks: the active one, else the first one
    /// while it lists (so a server that hangs during the first list is noticed too).
    fn probed(&self) -> Option<&Session> {
        self.active
            .as_ref()
            .or_else(|| self.pending.as_ref().map(|(s, _)| s))
    }

    fn start_probe(&mut self) {
        if self.probing {
            return;
        }
        let Some((id, client)) = self.probed().map(|s| (s.id, s.client.clone())) else {
            return;
        };
        self.probing = true;
        let (cluster, limit, tx) = (
            self.cfg.cluster.clone(),
            self.cfg.options.probe_timeout,
            self.checks.clone(),
        );
        tokio::spawn(async move {
            let what = "probing the API server (/version)";
            let result = crate::error::bounded(&cluster, what, limit, client.apiserver_version())
                .await
                .map(|_| ());
            let _ = tx.send(Check::Probe(id, result));
        });
    }

    fn rediscover(&mut self) {
        let Some(active) = self.active.as_ref().filter(|_| self.resync.is_none()) else {
            return;
        };
        let (id, client) = (active.id, active.client.clone());
        let (cluster, tx) = (self.cfg.cluster.clone(), self.checks.clone());
        tokio::spawn(async move {
            let limit = Duration::from_secs(10);
            if let Ok(served) = crate::apis::discover(&cluster, &client, limit).await {
                let _ = tx.send(Check::Served(id, served));
            }
        });
    }

    fn on_check(&mut self, check: Check) {
        match check {
            Check::Probe(session, result) => {
                self.probing = false;
                // A probe made with credentials that have since been replaced says nothing.
                if self.probed().is_some_and(|s| s.id == session) {
                    self.on_probe(result);
                }
            }
            Check::Served(session, served) => self.on_rediscovered(session, served),
        }
    }

    /// A re-list that cannot complete must not hold the cluster stale forever.
    fn check_resync_deadline(&mut self) {
        let Some(resync) = &self.resync else { return };
        if resync.synced() || resync.started.elapsed() < RESYNC_DEADLINE || self.probe_failing {
            return;
        }
        let client = resync.client.clone();
        if self.resync_for_apis {
            tracing::warn!(cluster = %self.cfg.cluster, "the cluster's new optional APIs could not be listed; keeping the current watches");
            self.problems.set(
                "resync deadline",
                format!("cluster {}: its optional APIs changed but could not be listed within {} s; keeping the current watches (tried again in {} min)", self.cfg.cluster, RESYNC_DEADLINE.as_secs(), API_RELIST_BACKOFF.as_secs() / 60),
            );
            self.resync = None;
            self.resync_for_apis = false;
            self.api_relist_after = Some(tokio::time::Instant::now() + API_RELIST_BACKOFF);
        } else {
            tracing::warn!(cluster = %self.cfg.cluster, "re-list after an outage has not completed; starting it again");
            self.start_session(client, Purpose::Resync);
        }
        self.status_dirty = true;
    }

    fn start_session(&mut self, client: kube::Client, purpose: Purpose) {
        self.next_id += 1;
        tracing::info!(cluster = %self.cfg.cluster, session = self.next_id, ?purpose, "starting watches");
        let session = Session::start(
            self.next_id,
            self.cfg.cluster.clone(),
            client,
            self.cfg.options.initial_list,
            self.signals_tx.clone(),
        );
        if purpose == Purpose::Resync {
            self.resync = Some(session);
        } else {
            self.pending = Some((session, purpose));
            self.status.rotation_pending = purpose == Purpose::Rotation;
        }
    }

    async fn check_kubeconfig(&mut self) {
        let (path, context) = self.cfg.source.borrow().clone();
        let file = match KubeconfigFile::read(&self.cfg.cluster, &path, context) {
            Ok(f) => f,
            Err(e) => {
                self.problems.set(
                    "kubeconfig read",
                    format!("{e}; keeping the current credentials"),
                );
                self.status_dirty = true;
                return;
            }
        };
        // Readable again (a secret volume between two versions, a restored file).
        if self.problems.clear("kubeconfig read") {
            self.status_dirty = true;
        }
        let retry_due = self
            .kubeconfig_retry_at
            .is_some_and(|t| tokio::time::Instant::now() >= t);
        if self.kubeconfig.as_ref() == Some(&file) && !retry_due {
            return;
        }
        self.kubeconfig = Some(file.clone());
        self.kubeconfig_retry_at = None;
        let first = self.active.is_none();
        match self.cfg.factory.client(&self.cfg.cluster, &file).await {
            Ok(client) => {
                self.problems.clear("kubeconfig");
                let purpose = if first {
                    Purpose::Initial
                } else {
                    Purpose::Rotation
                };
                if !first {
                    tracing::info!(cluster = %self.cfg.cluster, file = %file.path.display(), "kubeconfig changed; the new credentials take over once their watches have synced");
                }
                self.start_session(client, purpose);
            }
            Err(e) => {
                // Tried again when it (or a file it names) changes, and every 30 s anyway.
                self.kubeconfig_retry_at =
                    Some(tokio::time::Instant::now() + Duration::from_secs(30));
                tracing::error!(cluster = %self.cfg.cluster, error = %e, "kubeconfig not usable; keeping the current credentials");
                self.problems.set(
                    "kubeconfig",
                    format!("{e}; keeping the current credentials"),
                );
            }
        }
        self.status_dirty = true;
    }

    fn on_signal(&mut self, tagged: Tagged) {
        let is_pending = self
            .pending
            .as_ref()
            .is_some_and(|(s, _)| s.id == tagged.session);
        let is_resync = self.resync.as_ref().is_some_and(|s| s.id == tagged.session);
        let is_active = self.active.as_ref().is_some_and(|s| s.id == tagged.session);
        if !is_pending && !is_resync && !is_active {
            return;
        }
        self.status_dirty = true;
        match tagged.signal {
            Signal::Started(served) => {
                if let Some((s, _)) = self.pending.as_mut().filter(|_| is_pending) {
                    s.served = Some(served);
                } else if let Some(s) = self.resync.as_mut().filter(|_| is_resync) {
                    s.served = Some(served);
                }
            }
            Signal::StartFailed(e) => {
                let source = if is_resync { "resync" } else { "session" };
                self.problems.set(source, format!("{e} (retrying)"));
            }
            Signal::Changed { kind } => {
                if is_active {
                    self.dirty = true;
                }
                // Only what write-back compares against: MCS objects (desired changes come
                // on their own channel).
                if is_active && matches!(kind, "ServiceExport" | "ServiceImport") {
                    self.writeback_again = true;
                }
            }
            Signal::WatchError { gone: true, .. } => {}
            Signal::WatchError { kind, error, .. } => {
                let source = if is_active {
                    "watch"
                } else if is_resync {
                    "resync"
                } else {
                    "session"
                };
                let message = format!(
                    "cluster {}: watching {kind} objects failed: {error} (retrying)",
                    self.cfg.cluster
                );
                if is_active {
                    tracing::warn!(cluster = %self.cfg.cluster, kind, %error, "watch failed; serving the last good state");
                    self.mark_stale();
                } else {
                    tracing::warn!(cluster = %self.cfg.cluster, kind, %error, "watch of the new session failed; the current state keeps serving");
                }
                self.problems.set(format!("{source} {kind}"), message);
            }
        }
        if self.pending.as_ref().is_some_and(|(s, _)| s.synced()) {
            self.promote();
        } else if self.resync.as_ref().is_some_and(Session::synced) {
            self.promote_resync();
        }
    }

    fn mark_stale(&mut self) {
        if self.active.is_none() {
            return;
        }
        if self.status.stale_since.is_none() {
            self.status.stale_since = Some(SystemTime::now());
            self.stale_at = Some(tokio::time::Instant::now());
        }
        // Re-list with the credentials that serve now; a pending rotation goes on beside it.
        // A re-list for changed APIs becomes the re-list after the outage.
        self.resync_for_apis = false;
        if self.resync.is_none() {
            if let Some(client) = self.active.as_ref().map(|s| s.client.clone()) {
                self.start_session(client, Purpose::Resync);
            }
        }
    }

    fn on_probe(&mut self, result: Result<(), KubeError>) {
        match result {
            Ok(()) => {
                if self.problems.clear("probe") {
                    self.status_dirty = true;
                }
                if self.probe_failing {
                    self.status_dirty = true;
                    self.probe_failing = false;
                    // Requests of a session started while the server hung may never return.
                    if let Some((s, purpose)) = &self.pending {
                        if !s.synced() {
                            let purpose = *purpose;
                            let client = s.client.clone();
                            self.start_session(client, purpose);
                        }
                    }
                    if let Some(s) = self.resync.as_ref().filter(|s| !s.synced()) {
                        let client = s.client.clone();
                        self.start_session(client, Purpose::Resync);
                    }
                }
            }
            Err(e) => {
                self.probe_failing = true;
                let refused = matches!(&e, KubeError::Api { source: kube::Error::Api(s), .. } if s.code == 401 || s.code == 403);
                let message = if refused {
                    format!("{e} (the API server refuses the current credentials)")
                } else {
                    e.to_string()
                };
                tracing::warn!(cluster = %self.cfg.cluster, error = %message, "API server not usable; serving the last good state");
                self.problems.set("probe", message);
                self.mark_stale();
                self.status_dirty = true;
            }
        }
    }

    fn promote(&mut self) {
        let Some((session, purpose)) = self.pending.take() else {
            return;
        };
        if purpose == Purpose::Rotation {
            self.status.credentials_generation += 1;
        }
        self.status.rotation_pending = false;
        self.problems.clear_prefix("session");
        // Fresh lists with the newest credentials supersede a re-list with the old ones.
        self.resync = None;
        self.problems.clear_prefix("resync");
        self.serve(session, purpose);
    }

    /// The re-list after an outage has synced; a pending rotation (if any) goes on.
    fn promote_resync(&mut self) {
        let Some(session) = self.resync.take() else {
            return;
        };
        self.problems.clear_prefix("resync");
        self.serve(session, Purpose::Resync);
    }

    fn serve(&mut self, session: Session, purpose: Purpose) {
        tracing::info!(cluster = %self.cfg.cluster, session = session.id, ?purpose, "watches synced; serving them");
        self.status.apis = session.served.clone();
        self.active = Some(session);
        self.status.stale_since = None;
        self.stale_at = None;
        self.status.withdrawn = false;
        self.status.last_synced = Some(SystemTime::now());
        self.problems.clear_prefix("watch");
        self.problems.clear("probe");
        self.probe_failing = false;
        self.dirty = true;
        self.writeback_again = true;
    }

    /// The cluster serves other optional APIs than the active session watches: re-list with
    /// them (the active session serves until the new one has synced).
    fn on_rediscovered(&mut self, session: u64, served: crate::apis::ServedApis) {
        let Some(active) = self.active.as_ref().filter(|a| a.id == session) else {
            return;
        };
        let backing_off = self
            .api_relist_after
            .is_some_and(|t| tokio::time::Instant::now() < t);
        if active.served.as_ref() == Some(&served) || self.resync.is_some() || backing_off {
            return;
        }
        tracing::info!(cluster = %self.cfg.cluster, ?served, "the cluster's optional APIs changed; re-listing with them");
        let client = active.client.clone();
        self.start_session(client, Purpose::Resync);
        self.resync_for_apis = true;
    }

    fn check_ttl(&mut self) {
        let ttl = self.cfg.spec.borrow().stale_endpoint_ttl;
        if let (Some(ttl), Some(stale)) = (ttl, self.stale_at) {
            if stale.elapsed() >= ttl && !self.status.withdrawn {
                tracing::warn!(cluster = %self.cfg.cluster, ttl_s = ttl.as_secs(), "stale for longer than staleEndpointTtl; withdrawing its endpoints");
                self.status.withdrawn = true;
                self.dirty = true;
            }
        }
    }

    fn assemble(&mut self) -> Option<ClusterObjects> {
        let active = self.active.as_ref()?;
        let stores = lock(&active.stores);
        if let Some(found) = stores.cluster_id.items().values().next() {
            if found != self.cfg.cluster.as_str() {
                let e = KubeError::ClusterIdMismatch {
                    cluster: self.cfg.cluster.clone(),
                    found: found.clone(),
                };
                self.problems.set("clusterProperty", e.to_string());
                return None;
            }
        }
        self.problems.clear("clusterProperty");
        let translate_errors = stores.translate_errors();
        let spec = self.cfg.spec.borrow().clone();
        let mut objects = translate::assemble_borrowed(
            &spec,
            RecordsRef {
                services: stores.services.items(),
                slices: stores.slices.items(),
                pods: stores.pods.items(),
                nodes: stores.nodes.items(),
                exports: stores.exports.items(),
                policies: stores.policies.items(),
            },
        );
        drop(stores);
        self.problems.clear_prefix("object ");
        for (i, e) in translate_errors.into_iter().enumerate() {
            self.problems.set(format!("object {i:06}"), e);
        }
        if self.status.withdrawn {
            objects.endpoint_slices.clear();
        }
        Some(objects)
    }

    fn publish(&mut self) {
        if !self.dirty && !self.status_dirty {
            return;
        }
        let objects = if self.dirty {
            self.assemble().map(Arc::new)
        } else {
            self.published.clone()
        };
        self.dirty = false;
        self.status_dirty = false;
        // TokenReview goes to this cluster only once it proved to be the cluster mesh.yaml
        // names (its ClusterProperty, when it has one), and never to one that does not.
        let verified = objects
            .as_ref()
            .and(self.active.as_ref())
            .map(|a| a.client.clone());
        *self
            .cfg
            .client_slot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = verified;
        self.status.state = match (&self.active, &objects, self.status.stale_since) {
            (None, _, _) | (Some(_), None, _) => SyncState::Syncing,
            (Some(_), Some(_), None) => SyncState::Synced,
            (Some(_), Some(_), Some(_)) => SyncState::Stale,
        };
        self.status.errors = self.problems.list();
        let objects_changed = objects.as_deref() != self.published.as_deref();
        if !objects_changed && self.sent_status.as_ref() == Some(&self.status) {
            return;
        }
        if objects_changed {
            self.published = objects;
        }
        self.sent_status = Some(self.status.clone());
        let update = ClusterUpdate {
            cluster: self.cfg.cluster.clone(),
            objects: self.published.clone(),
            objects_changed,
            status: self.status.clone(),
        };
        // The receiver is gone only when the control plane is shutting down.
        let _ = self.cfg.updates.send(update);
    }

    fn maybe_write_back(&mut self) -> Option<writeback::Running> {
        if !self.writeback_again || self.cfg.options.read_only || self.published.is_none() {
            return None;
        }
        let active = self.active.as_ref()?;
        let desired = self.cfg.desired.borrow().clone()?;
        let served = active.served.as_ref()?;
        let (exports, imports) = (served.service_export()?, served.service_import()?);
        self.writeback_again = false;
        let stores = lock(&active.stores);
        // Forget writes the watch has shown since.
        self.written.retain(|(kind, key), rv| {
            let seen = if *kind == "ServiceImport" {
                stores
                    .imports
                    .items()
                    .get(key)
                    .and_then(|r| r.resource_version)
            } else {
                stores
                    .exports
                    .items()
                    .get(key)
                    .and_then(|r| r.resource_version)
            };
            seen.is_none_or(|seen| seen < *rv)
        });
        let current = Current {
            imports: stores.imports.items().clone(),
            exports: stores.exports.items().clone(),
            written: self.written.clone(),
        };
        drop(stores);
        let target = writeback::Target {
            cluster: self.cfg.cluster.clone(),
            client: active.client.clone(),
            export_resource: exports,
            import_resource: imports,
            timeout: writeback::REQUEST_TIMEOUT,
        };
        Some(writeback::Running::spawn(active.id, async move {
            writeback::write_back(&target, &desired, &current).await
        }))
    }

    fn on_writeback(&mut self, outcome: WriteBackOutcome) {
        self.written
            .extend(outcome.written.iter().map(|(k, v)| (k.clone(), *v)));
        // Objects left because the watch lagged are written once it shows them (their
        // ServiceImport/ServiceExport event triggers the next pass).
        let (applied, deleted, exports) = (
            outcome.imports_applied,
            outcome.imports_deleted,
            outcome.exports_updated,
        );
        if outcome.errors.is_empty() {
            self.writeback_backoff.succeeded();
            self.retry_writeback_at = None;
            if self.problems.clear("writeBack") {
                self.dirty = true;
            }
        } else {
            let delay = self.writeback_backoff.failed();
            let mut message = outcome.errors.join("; ");
            if outcome.skipped > 0 {
                message.push_str(&format!(
                    "; {} more writes not tried after the timeout",
                    outcome.skipped
                ));
            }
            // One warning per pass, however many objects failed.
            tracing::warn!(cluster = %self.cfg.cluster, errors = outcome.errors.len(), skipped = outcome.skipped, retry_in_s = delay.as_secs(), "MCS write-back failed: {message}; retrying in {} s", delay.as_secs());
            self.problems.set(
                "writeBack",
                format!("{message}; retrying in {} s", delay.as_secs()),
            );
            self.retry_writeback_at = Some(tokio::time::Instant::now() + delay);
            self.dirty = true;
        }
        if applied + deleted + exports > 0 {
            tracing::info!(cluster = %self.cfg.cluster, applied, deleted, exports, "MCS write-back");
        }
    }
}
