//! Sessions: starting them, their signals, promoting a synced one, re-list deadlines.

use std::time::SystemTime;

use crate::session::{Session, Signal, Tagged};

use super::{Purpose, Runtime, API_RELIST_BACKOFF, RESYNC_DEADLINE};

impl Runtime {
    pub(super) fn start_session(&mut self, client: kube::Client, purpose: Purpose) {
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

    pub(super) fn on_signal(&mut self, tagged: Tagged) {
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

    pub(super) fn mark_stale(&mut self) {
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

    pub(super) fn promote(&mut self) {
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
    pub(super) fn promote_resync(&mut self) {
        let Some(session) = self.resync.take() else {
            return;
        };
        self.problems.clear_prefix("resync");
        self.serve(session, Purpose::Resync);
    }

    pub(super) fn serve(&mut self, session: Session, purpose: Purpose) {
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

    /// A re-list that cannot complete must not hold the cluster stale forever.
    pub(super) fn check_resync_deadline(&mut self) {
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
}
