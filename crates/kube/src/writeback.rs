//! MCS write-back: the ServiceImports a member cluster should have, and the conditions on its
//! ServiceExports, applied with server-side apply (field manager `causeway`, never forced: a
//! field another manager owns is reported, not taken over). Only what differs from what the
//! cluster holds is written, so a steady mesh writes nothing, and only the fields Causeway sets
//! are compared, so other controllers' conditions or entries do not cause writes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use causeway_model::{ClusterId, ServiceKey, ServicePort};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::discovery::ApiResource;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::error::bounded;
use crate::session::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::store::ObjectKey;
use crate::translate::{ExportRecord, ImportRecord};
use crate::KubeError;

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

/// Delays between retries of a failing write-back: 5 s, doubling up to 5 min; a pass without
/// errors resets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(300);

    /// A pass failed: how long to wait before the retry.
    pub(crate) fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    /// A pass succeeded.
    pub(crate) fn succeeded(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

/// A running write-back pass of one session, aborted when dropped: when the cluster's runtime
/// stops (the member left the mesh) or another session takes over.
pub(crate) struct Running {
    /// The session whose client and stores the pass uses.
    pub(crate) session: u64,
    handle: JoinHandle<WriteBackOutcome>,
}

impl Running {
    pub(crate) fn spawn(
        session: u64,
        pass: impl Future<Output = WriteBackOutcome> + Send + 'static,
    ) -> Self {
        Self {
            session,
            handle: tokio::spawn(pass),
        }
    }

    /// Waits for the pass to end (not to be called again once it has returned).
    pub(crate) async fn finished(&mut self) -> WriteBackOutcome {
        match (&mut self.handle).await {
            Ok(outcome) => outcome,
            Err(e) => WriteBackOutcome {
                errors: vec![format!("the MCS write-back task failed: {e}")],
                ..WriteBackOutcome::default()
            },
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
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

fn import_spec(import: &DesiredImport) -> Value {
    let ports: Vec<Value> = import
        .ports
        .iter()
        .map(|p| {
            let mut port = json!({"port": p.port, "protocol": p.protocol});
            if let Some(name) = &p.name {
                port["name"] = json!(name);
            }
            if let Some(app) = &p.app_protocol {
                port["appProtocol"] = json!(app);
            }
            port
        })
        .collect();
    json!({
        "type": if import.headless { "Headless" } else { "ClusterSetIP" },
        "ports": ports,
    })
}

fn import_status(import: &DesiredImport) -> Value {
    let clusters: Vec<Value> = import
        .clusters
        .iter()
        .map(|c| json!({"cluster": c.as_str()}))
        .collect();
    json!({"clusters": clusters})
}

/// Whether every field of `want` is in `have` with the same value (the API server may add
/// defaults and metadata of its own). Arrays compare element by element with equal lengths:
/// `spec.ports` is atomic, a port added or removed is a change.
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| contains(hv, v))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(a, b)| contains(a, b))
        }
        _ => have == want,
    }
}

/// Whether a ServiceImport's `status.clusters` says what Causeway wants: every wanted cluster
/// is listed, and no cluster of the mesh is listed that is not wanted. Entries naming clusters
/// outside the mesh are another controller's and ignored; order does not matter.
fn clusters_match(status: &Value, import: &DesiredImport, mesh: &BTreeSet<ClusterId>) -> bool {
    let present: BTreeSet<&str> = status
        .get("clusters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("cluster").and_then(Value::as_str))
        .collect();
    let wanted: BTreeSet<&str> = import.clusters.iter().map(ClusterId::as_str).collect();
    wanted.is_subset(&present)
        && present
            .iter()
            .all(|c| wanted.contains(c) || !mesh.iter().any(|m| m.as_str() == *c))
}

fn condition_values(existing: &[Value], desired: &[DesiredCondition], now: &str) -> Vec<Value> {
    desired
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let previous = existing
                .iter()
                .find(|e| e.get("type").and_then(Value::as_str) == Some(c.kind.as_str()));
            // lastTransitionTime moves only when the status does (metav1.Condition).
            let since = previous
                .filter(|p| p.get("status").and_then(Value::as_str) == Some(status))
                .and_then(|p| p.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| json!(now));
            json!({
                "type": c.kind,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": since,
            })
        })
        .collect()
}

/// Now, as Kubernetes writes times (RFC 3339, whole seconds).
fn rfc3339_now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// Whether the conditions Causeway sets are as desired: for each of its types (and any other
/// desired one), present with the same status, reason and message, or absent from both.
/// Conditions of other types belong to other controllers and are ignored.
fn conditions_match(existing: &[Value], desired: &[DesiredCondition]) -> bool {
    let kinds: BTreeSet<&str> = CONDITION_TYPES
        .into_iter()
        .chain(desired.iter().map(|c| c.kind.as_str()))
        .collect();
    kinds.into_iter().all(|kind| {
        let have = existing
            .iter()
            .find(|e| e.get("type").and_then(Value::as_str) == Some(kind));
        match (have, desired.iter().find(|c| c.kind == kind)) {
            (None, None) => true,
            (Some(e), Some(c)) => {
                let field = |name: &str| e.get(name).and_then(Value::as_str);
                field("status") == Some(if c.status { "True" } else { "False" })
                    && field("reason") == Some(c.reason.as_str())
                    && field("message") == Some(c.message.as_str())
            }
            _ => false,
        }
    })
}

/// Whether Causeway may delete this ServiceImport: it carries the managed-by label and
/// Causeway is one of its field managers (a label alone can be copied by anyone).
fn ours(obj: &DynamicObject) -> bool {
    let labelled = obj
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY);
    let managed = obj
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .any(|m| m.manager.as_deref() == Some(FIELD_MANAGER));
    labelled && managed
}

/// The field manager a server-side apply conflict names (`conflict with "name" ...`).
fn conflicting_manager(status: &kube::core::Status) -> Option<String> {
    let causes = status.details.iter().flat_map(|d| d.causes.iter());
    causes
        .map(|c| c.message.as_str())
        .chain(std::iter::once(status.message.as_str()))
        .find_map(|m| {
            let rest = m.split_once("conflict with \"")?.1;
            Some(rest.split_once('"')?.0.to_owned())
        })
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

/// One pass's requests: stops at the first timeout, collects errors.
struct Pass<'a> {
    target: &'a Target,
    outcome: WriteBackOutcome,
    /// An earlier request timed out: the rest of the pass is skipped.
    halted: bool,
}

impl Pass<'_> {
    fn api(&self, namespace: &str, resource: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.target.client.clone(), namespace, resource)
    }

    /// Runs one request within the time limit; `None` when skipped after a timeout.
    async fn send<T>(
        &mut self,
        what: &str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Option<Result<T, KubeError>> {
        if self.halted {
            self.outcome.skipped += 1;
            return None;
        }
        let result = bounded(&self.target.cluster, what, self.target.timeout, request).await;
        if matches!(result, Err(KubeError::Timeout { .. })) {
            self.halted = true;
        }
        Some(result)
    }

    /// Records a failed write of `kind` `key`, naming the other field manager on a conflict.
    fn failed(&mut self, e: KubeError, kind: &'static str, key: &ServiceKey) {
        let message = match &e {
            KubeError::Api {
                source: kube::Error::Api(status),
                ..
            } if status.is_conflict() => WriteBackError::Conflict {
                cluster: self.target.cluster.clone(),
                kind,
                key: key.clone(),
                manager: conflicting_manager(status).map_or_else(
                    || "another field manager".to_owned(),
                    |m| format!("field manager {m:?}"),
                ),
                message: status.message.clone(),
            }
            .to_string(),
            _ => e.to_string(),
        };
        self.outcome.errors.push(message);
    }

    /// Applies `body` to `kind` `key` (its status subresource when `status`); whether it was
    /// written.
    async fn apply(
        &mut self,
        kind: &'static str,
        key: &ServiceKey,
        body: Value,
        status: bool,
    ) -> bool {
        let resource = if kind == "ServiceImport" {
            &self.target.import_resource
        } else {
            &self.target.export_resource
        };
        let api = self.api(&key.namespace, resource);
        let params = PatchParams::apply(FIELD_MANAGER);
        let patch = Patch::Apply(&body);
        let result = if status {
            let what = format!("applying the status of {kind} {key}");
            self.send(&what, api.patch_status(&key.name, &params, &patch))
                .await
        } else {
            let what = format!("applying {kind} {key}");
            self.send(&what, api.patch(&key.name, &params, &patch))
                .await
        };
        match result {
            Some(Ok(obj)) => {
                if let Some(rv) = crate::translate::resource_version(&obj) {
                    let k = (key.namespace.clone(), key.name.clone());
                    self.outcome.written.insert((kind, k), rv);
                }
                true
            }
            Some(Err(e)) => {
                self.failed(e, kind, key);
                false
            }
            None => false,
        }
    }

    /// Applies what differs of one desired ServiceImport: its spec, then its status.
    async fn import(
        &mut self,
        import: &DesiredImport,
        have: Option<&ImportRecord>,
        mesh: &BTreeSet<ClusterId>,
    ) {
        let api_version = &self.target.import_resource.api_version;
        let (name, namespace) = (&import.key.name, &import.key.namespace);
        let spec = import_spec(import);
        if have.is_none_or(|h| !contains(&h.spec, &spec)) {
            let body = json!({
                "apiVersion": api_version,
                "kind": "ServiceImport",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {MANAGED_BY_LABEL: MANAGED_BY},
                },
                "spec": spec,
            });
            if !self.apply("ServiceImport", &import.key, body, false).await {
                return;
            }
            self.outcome.imports_applied += 1;
        }
        if have.is_none_or(|h| !clusters_match(&h.status, import, mesh)) {
            let body = json!({
                "apiVersion": api_version,
                "kind": "ServiceImport",
                "metadata": {"name": name, "namespace": namespace},
                "status": import_status(import),
            });
            self.apply("ServiceImport", &import.key, body, true).await;
        }
    }

    /// Deletes a ServiceImport no longer desired, if it is Causeway's: read first (label and
    /// field manager), then deleted with its uid as precondition, so an object replaced in
    /// between is left alone.
    async fn delete(&mut self, key: &ServiceKey) {
        let api = self.api(&key.namespace, &self.target.import_resource);
        let what = format!("reading ServiceImport {key} before deleting it");
        let obj = match self.send(&what, api.get_opt(&key.name)).await {
            Some(Ok(Some(obj))) => obj,
            Some(Ok(None)) | None => return,
            Some(Err(e)) => return self.failed(e, "ServiceImport", key),
        };
        if !ours(&obj) {
            tracing::info!(cluster = %self.target.cluster, import = %key, "not deleting ServiceImport {key}: it carries Causeway's label but Causeway is not among its field managers");
            return;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: obj.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let what = format!("deleting ServiceImport {key} (no cluster exports it here any more)");
        match self.send(&what, api.delete(&key.name, &params)).await {
            Some(Ok(_)) => self.outcome.imports_deleted += 1,
            // Gone already, or replaced since it was read: the watch brings the new state.
            Some(Err(KubeError::Api {
                source: kube::Error::Api(s),
                ..
            })) if s.is_not_found() || s.is_conflict() => {}
            Some(Err(e)) => self.failed(e, "ServiceImport", key),
            None => {}
        }
    }

    /// Sets the conditions Causeway owns on one ServiceExport, if they differ.
    async fn export(&mut self, record: &ExportRecord, wanted: &[DesiredCondition], now: &str) {
        if conditions_match(&record.conditions, wanted) {
            return;
        }
        let key = &record.export.key;
        let body = json!({
            "apiVersion": self.target.export_resource.api_version,
            "kind": "ServiceExport",
            "metadata": {"name": key.name, "namespace": key.namespace},
            "status": {"conditions": condition_values(&record.conditions, wanted, now)},
        });
        if self.apply("ServiceExport", key, body, true).await {
            self.outcome.exports_updated += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(kind: &str, status: bool, reason: &str) -> DesiredCondition {
        DesiredCondition {
            kind: kind.into(),
            status,
            reason: reason.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn containment_ignores_server_additions() {
        let have = json!({"type": "ClusterSetIP", "ports": [{"port": 80, "protocol": "TCP", "x": 1}], "extra": true});
        let want = json!({"type": "ClusterSetIP", "ports": [{"port": 80, "protocol": "TCP"}]});
        assert!(contains(&have, &want));
        let other = json!({"type": "ClusterSetIP", "ports": [{"port": 81, "protocol": "TCP"}]});
        assert!(!contains(&have, &other));
        let more = json!({"type": "ClusterSetIP", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 81, "protocol": "TCP"}]});
        assert!(!contains(&have, &more), "a port added is a change");
    }

    #[test]
    fn transition_time_moves_only_with_status() {
        let existing = vec![
            json!({"type": "Valid", "status": "True", "reason": "Exported", "message": "old", "lastTransitionTime": "2026-01-01T00:00:00Z"}),
        ];
        let same = condition_values(
            &existing,
            &[cond("Valid", true, "Exported")],
            "2026-12-01T00:00:00Z",
        );
        assert_eq!(same[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        let flipped = condition_values(
            &existing,
            &[cond("Valid", false, "NoService")],
            "2026-12-01T00:00:00Z",
        );
        assert_eq!(flipped[0]["lastTransitionTime"], "2026-12-01T00:00:00Z");
        assert!(
            !conditions_match(&existing, &[cond("Valid", true, "Exported")]),
            "message differs"
        );
        assert!(!conditions_match(
            &existing,
            &[
                cond("Valid", true, "Exported"),
                cond("Conflict", true, "PortConflict")
            ]
        ));
    }

    #[test]
    fn foreign_conditions_are_not_a_difference() {
        let ours = vec![
            json!({"type": "Valid", "status": "True", "reason": "Exported", "message": "m"}),
            json!({"type": "Conflict", "status": "False", "reason": "NoConflict", "message": "m"}),
        ];
        let desired = [
            cond("Valid", true, "Exported"),
            cond("Conflict", false, "NoConflict"),
        ];
        assert!(conditions_match(&ours, &desired));
        let mut with_foreign = ours.clone();
        with_foreign
            .push(json!({"type": "Ready", "status": "True", "reason": "Other", "message": "x"}));
        assert!(
            conditions_match(&with_foreign, &desired),
            "another controller's Ready condition"
        );
        assert!(
            !conditions_match(&with_foreign, &desired[..1]),
            "Causeway's own Conflict condition no longer desired must be removed"
        );
    }

    fn import_of(clusters: &[&str]) -> DesiredImport {
        DesiredImport {
            key: ServiceKey::new("demo", "echo"),
            headless: false,
            ports: Vec::new(),
            clusters: clusters
                .iter()
                .map(|c| ClusterId::new(*c).expect("id"))
                .collect(),
        }
    }

    #[test]
    fn import_clusters_compare_as_the_set_causeway_wants() {
        let mesh: BTreeSet<ClusterId> = ["east", "west"]
            .iter()
            .map(|c| ClusterId::new(*c).expect("id"))
            .collect();
        let status = |names: &[&str]| {
            let entries: Vec<Value> = names.iter().map(|n| json!({"cluster": n})).collect();
            json!({"clusters": entries})
        };
        let want = import_of(&["east", "west"]);
        assert!(
            clusters_match(&status(&["west", "east"]), &want, &mesh),
            "order"
        );
        assert!(
            clusters_match(&status(&["east", "other-mcs", "west"]), &want, &mesh),
            "an entry of a cluster outside the mesh is another controller's"
        );
        assert!(
            !clusters_match(&status(&["east"]), &want, &mesh),
            "west missing"
        );
        assert!(
            !clusters_match(&status(&["east", "west"]), &import_of(&["east"]), &mesh),
            "west no longer exports: its entry must go"
        );
        assert!(!clusters_match(&Value::Null, &want, &mesh), "no status yet");
    }

    #[test]
    fn retries_back_off_from_5_s_to_5_min_and_reset_on_success() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| backoff.failed().as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_dropped_pass_is_aborted() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let running = Running::spawn(1, async move {
            // Holds the sender until aborted.
            let _tx = tx;
            std::future::pending::<()>().await;
            WriteBackOutcome::default()
        });
        drop(running);
        assert!(
            rx.await.is_err(),
            "the task was aborted, dropping the sender"
        );
    }

    #[test]
    fn a_conflict_names_the_other_manager() {
        let status = kube::core::Status::failure(
            "Apply failed with 1 conflict: conflict with \"other-mcs\" using multicluster.x-k8s.io/v1alpha1: .spec.ports",
            "Conflict",
        )
        .with_code(409);
        assert_eq!(conflicting_manager(&status).as_deref(), Some("other-mcs"));
        let e = WriteBackError::Conflict {
            cluster: ClusterId::new("east").expect("id"),
            kind: "ServiceImport",
            key: ServiceKey::new("demo", "echo"),
            manager: "field manager \"other-mcs\"".into(),
            message: status.message.clone(),
        };
        let text = e.to_string();
        assert!(
            text.starts_with(
                "cluster east: ServiceImport demo/echo is managed by field manager \"other-mcs\""
            ),
            "{text}"
        );
        let bare = kube::core::Status::failure("conflict", "Conflict").with_code(409);
        assert_eq!(conflicting_manager(&bare), None);
    }
}
