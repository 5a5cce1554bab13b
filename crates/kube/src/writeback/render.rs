//! The JSON Causeway applies: ServiceImport spec and status, ServiceExport conditions.

use serde_json::{json, Value};

use super::{DesiredCondition, DesiredImport};

pub(super) fn import_spec(import: &DesiredImport) -> Value {
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

pub(super) fn import_status(import: &DesiredImport) -> Value {
    let clusters: Vec<Value> = import
        .clusters
        .iter()
        .map(|c| json!({"cluster": c.as_str()}))
        .collect();
    json!({"clusters": clusters})
}
pub(super) fn condition_values(
    existing: &[Value],
    desired: &[DesiredCondition],
    now: &str,
) -> Vec<Value> {
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
pub(super) fn rfc3339_now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writeback::compare::conditions_match;
    use crate::writeback::compare::tests::cond;

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
