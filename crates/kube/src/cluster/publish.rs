//! Assembling the active session's records and publishing them with the status.

use std::sync::Arc;

use causeway_model::ClusterObjects;

use crate::session::lock;
use crate::status::{ClusterUpdate, SyncState};
use crate::translate::{self, RecordsRef};
use crate::KubeError;

use super::Runtime;

impl Runtime {
    pub(super) fn assemble(&mut self) -> Option<ClusterObjects> {
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
                traffic_policies: stores.traffic_policies.items(),
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

    pub(super) fn publish(&mut self) {
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
}
