//! MCS write-back: the ServiceImports a member cluster should have, and the conditions on its
//! ServiceExports, applied with server-side apply (field manager `causeway`, never forced: a
//! field another manager owns is reported, not taken over). Only what differs from what the
//! cluster holds is written, so a steady mesh writes nothing, and only the fields Causeway sets
//! are compared, so other controllers' conditions or entries do not cause writes.

mod backoff;
mod compare;
mod pass;
mod render;
mod running;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use causeway_model::{ClusterId, ServiceKey, ServicePort};
use kube::discovery::ApiResource;

use crate::store::ObjectKey;
use crate::translate::{ExportRecord, ImportRecord};

use pass::Pass;
use render::rfc3339_now;

pub(crate) use backoff::Backoff;
pub(crate) use running::Running;

/// The field manager of everything Causeway writes.
pub const FIELD_MANAGER: &str = "causeway";

/// One ServiceImport a cluster should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredImport {
    /// Namespace and name (those of the exported Service).
    pub key: ServiceKey,
    /// `Headless` rather than `ClusterSetIP`.
    pub headless: bool,
    /// Union of the exporting clusters' ports.
    pub ports: Vec<ServicePort>,
    /// Exporting clusters visible to this one.
    pub clusters: Vec<ClusterId>,
}

/// A condition to set on a ServiceExport's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredCondition {
    /// `Valid`, `Conflict`...
    pub kind: String,
    /// True or false.
    pub status: bool,
    /// Machine-readable reason.
    pub reason: String,
    /// Operator-readable message.
    pub message: String,
}

/// What the mesh wants written into one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct McsDesired {
    /// Every ServiceImport it should have.
    pub imports: Vec<DesiredImport>,
    /// Conditions per exported service of this cluster.
    pub export_conditions: BTreeMap<ServiceKey, Vec<DesiredCondition>>,
    /// Every cluster of the mesh. A ServiceImport's `status.clusters` entry naming another
    /// cluster was written by another controller and does not count as a difference.
    pub mesh_clusters: BTreeSet<ClusterId>,
}

/// The condition types Causeway sets on ServiceExports; others belong to other controllers.
pub const CONDITION_TYPES: [&str; 2] = ["Valid", "Conflict"];

/// How long one write-back request may take by default.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a pass writes: one member cluster's API server.
#[derive(Clone)]
pub struct Target {
    /// The cluster (named in every error).
    pub cluster: ClusterId,
    /// Its client.
    pub client: kube::Client,
    /// The ServiceExport resource the cluster serves.
    pub export_resource: ApiResource,
    /// The ServiceImport resource the cluster serves.
    pub import_resource: ApiResource,
    /// How long one request may take; the first that does not answer in time ends the pass
    /// (a hung API server costs one timeout, not one per object).
    pub timeout: Duration,
}

/// A write refused for a reason the operator must resolve.
#[derive(Debug, thiserror::Error)]
pub enum WriteBackError {
    /// Server-side apply without force found fields owned by another field manager.
    #[error("cluster {cluster}: {kind} {key} is managed by {manager}, which owns fields Causeway would set ({message}); Causeway does not take over another controller's fields: remove that controller's {kind} or let Causeway own it")]
    Conflict {
        /// The cluster.
        cluster: ClusterId,
        /// `ServiceImport` or `ServiceExport`.
        kind: &'static str,
        /// The object.
        key: ServiceKey,
        /// `field manager "name"` when the Status names it, else `another field manager`.
        manager: String,
        /// The API server's message.
        message: String,
    },
}
/// What one write-back pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBackOutcome {
    /// ServiceImports created or updated.
    pub imports_applied: usize,
    /// Owned ServiceImports deleted (their export went away).
    pub imports_deleted: usize,
    /// ServiceExport statuses updated.
    pub exports_updated: usize,
    /// Writes not attempted because an earlier request of the pass timed out.
    pub skipped: usize,
    /// Writes that failed, each naming the cluster and object.
    pub errors: Vec<String>,
    /// The resourceVersion each written object had after this pass's writes, so the next pass
    /// does not write again what the watch has not shown yet.
    pub written: BTreeMap<(&'static str, ObjectKey), u64>,
    /// Some objects were left for later: the watch had not shown an earlier write yet.
    pub behind: bool,
}
/// What the cluster holds now, as the session's stores saw it.
pub struct Current {
    /// Owned ServiceImports.
    pub imports: BTreeMap<ObjectKey, ImportRecord>,
    /// ServiceExports.
    pub exports: BTreeMap<ObjectKey, ExportRecord>,
    /// What earlier passes wrote (kind, object → resourceVersion after the write): an object
    /// the watch shows at an older version is left for a later pass.
    pub written: BTreeMap<(&'static str, ObjectKey), u64>,
}

impl Current {
    /// Whether the watch already shows our last write of `kind` `key` (or we never wrote it).
    fn caught_up(&self, kind: &'static str, key: &ObjectKey, seen: Option<u64>) -> bool {
        match self.written.get(&(kind, key.clone())) {
            None => true,
            Some(written) => seen.is_some_and(|seen| seen >= *written),
        }
    }
}
/// Writes what differs between `desired` and `current` into the cluster. Errors are collected
/// in the outcome (the caller logs once per pass); the first request that times out ends the
/// pass.
pub async fn write_back(
    target: &Target,
    desired: &McsDesired,
    current: &Current,
) -> WriteBackOutcome {
    let mut pass = Pass {
        target,
        outcome: WriteBackOutcome::default(),
        halted: false,
    };
    for import in &desired.imports {
        let key = (import.key.namespace.clone(), import.key.name.clone());
        let have = current.imports.get(&key);
        if !current.caught_up("ServiceImport", &key, have.and_then(|h| h.resource_version)) {
            pass.outcome.behind = true;
            continue;
        }
        pass.import(import, have, &desired.mesh_clusters).await;
    }
    let wanted: BTreeSet<&ServiceKey> = desired.imports.iter().map(|i| &i.key).collect();
    for (namespace, name) in current.imports.keys() {
        let key = ServiceKey::new(namespace.as_str(), name.as_str());
        if !wanted.contains(&key) {
            pass.delete(&key).await;
        }
    }
    let now = rfc3339_now();
    for (key, record) in &current.exports {
        if !current.caught_up("ServiceExport", key, record.resource_version) {
            pass.outcome.behind = true;
            continue;
        }
        if let Some(wanted) = desired.export_conditions.get(&record.export.key) {
            pass.export(record, wanted, &now).await;
        }
    }
    pass.outcome
}
