//! Whether what a cluster holds already says what Causeway wants.

use std::collections::BTreeSet;

use causeway_model::ClusterId;
use kube::api::DynamicObject;
use serde_json::Value;

use crate::session::{MANAGED_BY, MANAGED_BY_LABEL};

use super::{DesiredCondition, DesiredImport, CONDITION_TYPES, FIELD_MANAGER};

/// Whether every field of `want` is in `have` with the same value (the API server may add
/// defaults and metadata of its own). Arrays compare element by element with equal lengths:
/// `spec.ports` is atomic, a port added or removed is a change.
pub(super) fn contains(have: &Value, want: &Value) -> bool {
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
pub(super) fn clusters_match(
    status: &Value,
    import: &DesiredImport,
    mesh: &BTreeSet<ClusterId>,
) -> bool {
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
/// Whether the conditions Causeway sets are as desired: for each of its types (and any other
/// desired one), present with the same status, reason and message, or absent from both.
/// Conditions of other types belong to other controllers and are ignored.
pub(super) fn conditions_match(existing: &[Value], desired: &[DesiredCondition]) -> bool {
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
pub(super) fn ours(obj: &DynamicObject) -> bool {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn cond(kind: &str, status: bool, reason: &str) -> DesiredCondition {
        DesiredCondition {
            kind: kind.into(),
            status,
            reason: reason.into(),
            message: "m".into(),
        }
    }
    use causeway_model::ServiceKey;
    use serde_json::json;

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
}
