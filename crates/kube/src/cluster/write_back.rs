//! Scheduling MCS write-back passes and recording their outcome.

use crate::session::lock;
use crate::writeback::{self, Current, WriteBackOutcome};

use super::Runtime;

impl Runtime {
    pub(super) fn maybe_write_back(&mut self) -> Option<writeback::Running> {
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

    pub(super) fn on_writeback(&mut self, outcome: WriteBackOutcome) {
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
