//! What MCS write-back should make true in each Kubernetes member: the ServiceImports the
//! index derives for it, and the merged services' conditions on its ServiceExports.

use causeway_discovery::{ConditionKind, MeshIndex};
use causeway_kube::{DesiredCondition, DesiredImport, KubeRegistry, McsDesired};
use causeway_model::ClusterId;

/// The desired MCS state of `cluster`.
pub fn desired(index: &MeshIndex, cluster: &ClusterId) -> McsDesired {
    let imports = index
        .imports_for(cluster)
        .into_iter()
        .map(|i| DesiredImport {
            headless: i.kind == "Headless",
            key: i.key,
            ports: i.ports,
            clusters: i.clusters,
        })
        .collect();
    let mut export_conditions = std::collections::BTreeMap::new();
    if let Some(ci) = index.cluster(cluster) {
        let exported = ci
            .services
            .values()
            .filter_map(|s| s.export.as_ref())
            .chain(ci.orphan_exports.iter());
        for export in exported {
            let conditions = match index.service(&export.key) {
                Some(merged) => merged
                    .conditions
                    .iter()
                    .map(|c| DesiredCondition {
                        kind: match c.kind {
                            ConditionKind::Valid => "Valid",
                            ConditionKind::Conflict => "Conflict",
                        }
                        .to_owned(),
                        status: c.status,
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                    })
                    .collect(),
                None => vec![DesiredCondition {
                    kind: "Valid".into(),
                    status: false,
                    reason: "NoService".into(),
                    message: format!("cluster {cluster} has no Service {}", export.key),
                }],
            };
            export_conditions.insert(export.key.clone(), conditions);
        }
    }
    McsDesired {
        imports,
        export_conditions,
    }
}

/// Hands every Kubernetes member its desired state (only changes are written).
pub fn update_all(index: &MeshIndex, registry: &KubeRegistry) {
    for spec in &index.mesh().clusters {
        if spec.kubernetes.is_some() && registry.contains(&spec.id) {
            registry.set_desired(&spec.id, desired(index, &spec.id));
        }
    }
}
