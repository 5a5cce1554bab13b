//! Multi-Cluster Services objects (`multicluster.x-k8s.io`, v1alpha1 or v1beta1) and the About
//! API's cluster id (`about.k8s.io` ClusterProperty).

use std::collections::BTreeSet;

use causeway_model::{ClusterId, ServiceExport, ServiceKey};
use causeway_registry::EXPORT_TO_ANNOTATION;
use kube::api::DynamicObject;
use serde_json::Value;

use super::{name_of, namespace_of, Origin, TranslateError};

/// The ClusterProperty whose value is the cluster's id in its ClusterSet (KEP-2149).
pub const CLUSTER_ID_PROPERTY: &str = "cluster.clusterset.k8s.io";

/// A ServiceExport with the status conditions it carries now (so write-back only writes
/// what changed).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRecord {
    /// The export as the index reads it.
    pub export: ServiceExport,
    /// `status.conditions` as the API server holds them.
    pub conditions: Vec<Value>,
    /// `metadata.resourceVersion`: tells whether the watch has caught up with a write.
    pub resource_version: Option<u64>,
}

/// A ServiceExport (either MCS version: their spec is empty and status has conditions).
pub fn service_export(
    cluster: &ClusterId,
    obj: &DynamicObject,
) -> Result<ExportRecord, TranslateError> {
    let namespace = namespace_of(&obj.metadata);
    let name = name_of(&obj.metadata);
    let origin = Origin {
        cluster,
        kind: "ServiceExport",
        namespace: Some(namespace),
        name,
    };
    let export_to = match obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPORT_TO_ANNOTATION))
    {
        None => None,
        Some(list) => {
            let mut set = BTreeSet::new();
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let id = ClusterId::new(part).map_err(|e| {
                    origin.error(
                        format!("metadata.annotations[{EXPORT_TO_ANNOTATION}]"),
                        e.to_string(),
                    )
                })?;
                set.insert(id);
            }
            Some(set)
        }
    };
    let created = obj
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second());
    let conditions = obj
        .data
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(ExportRecord {
        export: ServiceExport {
            key: ServiceKey::new(namespace, name),
            export_to,
            created,
            source: origin.source(),
        },
        conditions,
        resource_version: resource_version(obj),
    })
}

/// An object's resourceVersion as a number (Kubernetes' are; anything else counts as unknown).
pub fn resource_version(obj: &DynamicObject) -> Option<u64> {
    obj.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
}

/// A ServiceImport this control plane wrote (selected by its managed-by label): what it
/// holds now, so write-back can tell whether it must write again.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRecord {
    /// `spec` as stored.
    pub spec: Value,
    /// `status` as stored.
    pub status: Value,
    /// `metadata.resourceVersion`: tells whether the watch has caught up with a write.
    pub resource_version: Option<u64>,
}

/// An owned ServiceImport's record.
pub fn service_import(obj: &DynamicObject) -> ImportRecord {
    ImportRecord {
        spec: obj.data.get("spec").cloned().unwrap_or(Value::Null),
        status: obj.data.get("status").cloned().unwrap_or(Value::Null),
        resource_version: resource_version(obj),
    }
}

/// The cluster id a ClusterProperty declares, if it is the cluster-id property.
pub fn cluster_property(obj: &DynamicObject) -> Option<String> {
    if obj.metadata.name.as_deref() != Some(CLUSTER_ID_PROPERTY) {
        return None;
    }
    obj.data
        .pointer("/spec/value")
        .and_then(Value::as_str)
        .map(str::to_owned)
}
