//! MCS write-back: the ServiceImports a member cluster should have, and the conditions on its
//! ServiceExports, applied with server-side apply (field manager `causeway`). Only what differs
//! from what the cluster holds is written, so a steady mesh writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use causeway_model::{ClusterId, ServiceKey, ServicePort};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{json, Value};

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
    /// Writes that failed (each also logged).
    pub errors: Vec<String>,
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
/// defaults and metadata of its own).
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

fn conditions_match(existing: &[Value], desired: &[DesiredCondition]) -> bool {
    existing.len() == desired.len()
        && desired.iter().all(|c| {
            existing.iter().any(|e| {
                e.get("type").and_then(Value::as_str) == Some(c.kind.as_str())
                    && e.get("status").and_then(Value::as_str)
                        == Some(if c.status { "True" } else { "False" })
                    && e.get("reason").and_then(Value::as_str) == Some(c.reason.as_str())
                    && e.get("message").and_then(Value::as_str) == Some(c.message.as_str())
            })
        })
}

/// What a cluster holds now, as the session's stores saw it.
pub struct Current {
    /// Owned ServiceImports.
    pub imports: BTreeMap<ObjectKey, ImportRecord>,
    /// ServiceExports.
    pub exports: BTreeMap<ObjectKey, ExportRecord>,
}

/// Writes what differs between `desired` and `current` into the cluster.
pub async fn write_back(
    cluster: &ClusterId,
    client: &kube::Client,
    export_resource: &ApiResource,
    import_resource: &ApiResource,
    desired: &McsDesired,
    current: &Current,
) -> WriteBackOutcome {
    let limit = Duration::from_secs(10);
    let mut outcome = WriteBackOutcome::default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let now = rfc3339_now();
    let report = |outcome: &mut WriteBackOutcome, e: KubeError| {
        tracing::warn!(cluster = %cluster, error = %e, "MCS write-back failed; retried on the next change");
        outcome.errors.push(e.to_string());
    };
    for import in &desired.imports {
        let key = (import.key.namespace.clone(), import.key.name.clone());
        let spec = import_spec(import);
        let status = import_status(import);
        let have = current.imports.get(&key);
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &import.key.namespace, import_resource);
        let what = format!("applying ServiceImport {}", import.key);
        if have.is_none_or(|h| !contains(&h.spec, &spec)) {
            let body = json!({
                "apiVersion": import_resource.api_version,
                "kind": "ServiceImport",
                "metadata": {
                    "name": import.key.name,
                    "namespace": import.key.namespace,
                    "labels": {MANAGED_BY_LABEL: MANAGED_BY},
                },
                "spec": spec,
            });
            match bounded(
                cluster,
                &what,
                limit,
                api.patch(&import.key.name, &params, &Patch::Apply(&body)),
            )
            .await
            {
                Ok(_) => outcome.imports_applied += 1,
                Err(e) => {
                    report(&mut outcome, e);
                    continue;
                }
            }
        }
        if have.is_none_or(|h| !contains(&h.status, &status)) {
            let body = json!({
                "apiVersion": import_resource.api_version,
                "kind": "ServiceImport",
                "metadata": {"name": import.key.name, "namespace": import.key.namespace},
                "status": status,
            });
            let what = format!("applying the status of ServiceImport {}", import.key);
            if let Err(e) = bounded(
                cluster,
                &what,
                limit,
                api.patch_status(&import.key.name, &params, &Patch::Apply(&body)),
            )
            .await
            {
                report(&mut outcome, e);
            }
        }
    }
    for (namespace, name) in current.imports.keys() {
        let wanted = desired
            .imports
            .iter()
            .any(|i| &i.key.namespace == namespace && &i.key.name == name);
        if wanted {
            continue;
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, import_resource);
        let what = format!("deleting ServiceImport {namespace}/{name} (its export went away)");
        match bounded(
            cluster,
            &what,
            limit,
            api.delete(name, &DeleteParams::default()),
        )
        .await
        {
            Ok(_) => outcome.imports_deleted += 1,
            Err(KubeError::Api {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 404 => {}
            Err(e) => report(&mut outcome, e),
        }
    }
    for ((namespace, name), record) in &current.exports {
        let Some(wanted) = desired.export_conditions.get(&record.export.key) else {
            continue;
        };
        if conditions_match(&record.conditions, wanted) {
            continue;
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, export_resource);
        let body = json!({
            "apiVersion": export_resource.api_version,
            "kind": "ServiceExport",
            "metadata": {"name": name, "namespace": namespace},
            "status": {"conditions": condition_values(&record.conditions, wanted, &now)},
        });
        let what = format!("applying the status of ServiceExport {namespace}/{name}");
        match bounded(
            cluster,
            &what,
            limit,
            api.patch_status(name, &params, &Patch::Apply(&body)),
        )
        .await
        {
            Ok(_) => outcome.exports_updated += 1,
            Err(e) => report(&mut outcome, e),
        }
    }
    outcome
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
}
