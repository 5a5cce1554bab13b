//! Health: probing the API server, re-discovering optional APIs, the kubeconfig, the TTL.

use std::time::Duration;

use crate::client::KubeconfigFile;
use crate::session::Session;
use crate::KubeError;

use super::{Check, Purpose, Runtime};

impl Runtime {
    /// The session whose connection the probe checks: the active one, else the first one
    /// while it lists (so a server that hangs during the first list is noticed too).
    pub(super) fn probed(&self) -> Option<&Session> {
        self.active
            .as_ref()
            .or_else(|| self.pending.as_ref().map(|(s, _)| s))
    }

    pub(super) fn start_probe(&mut self) {
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

    pub(super) fn rediscover(&mut self) {
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

    pub(super) fn on_check(&mut self, check: Check) {
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

    pub(super) fn on_probe(&mut self, result: Result<(), KubeError>) {
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

    /// The cluster serves other optional APIs than the active session watches: re-list with
    /// them (the active session serves until the new one has synced).
    pub(super) fn on_rediscovered(&mut self, session: u64, served: crate::apis::ServedApis) {
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

    pub(super) fn check_ttl(&mut self) {
        let ttl = self.cfg.spec.borrow().stale_endpoint_ttl;
        if let (Some(ttl), Some(stale)) = (ttl, self.stale_at) {
            if stale.elapsed() >= ttl && !self.status.withdrawn {
                tracing::warn!(cluster = %self.cfg.cluster, ttl_s = ttl.as_secs(), "stale for longer than staleEndpointTtl; withdrawing its endpoints");
                self.status.withdrawn = true;
                self.dirty = true;
            }
        }
    }

    pub(super) async fn check_kubeconfig(&mut self) {
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
}
