//! `ServiceExport` (multicluster.x-k8s.io/v1alpha1): the export-to annotation and the creation
//! time.

use std::collections::BTreeSet;

use causeway_model::{ClusterId, ServiceExport, ServiceKey};

use crate::file::documents::Doc;
use crate::file::fields::{namespace_of, required_name};
use crate::file::EXPORT_TO_ANNOTATION;
use crate::wire;
use crate::LoadError;

pub(in crate::file) fn parse_service_export(doc: &Doc<'_>) -> Result<ServiceExport, LoadError> {
    let obj: wire::ServiceExport = doc.typed(Some("ServiceExport"))?;
    let name = required_name(doc, "ServiceExport", &obj.metadata)?;
    let key = ServiceKey::new(namespace_of(&obj.metadata), name);
    let object = format!("ServiceExport {key}");
    let export_to = match obj.metadata.annotations.get(EXPORT_TO_ANNOTATION) {
        None => None,
        Some(list) => {
            let field = format!("metadata.annotations[{EXPORT_TO_ANNOTATION}]");
            let mut set = BTreeSet::new();
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let id = ClusterId::new(part).map_err(|e| {
                    doc.error(Some(&object), Some(&field), format!("cluster id {e}"))
                })?;
                set.insert(id);
            }
            if set.is_empty() {
                return Err(doc.error(
                    Some(&object),
                    Some(&field),
                    "lists no cluster; remove the annotation to export everywhere",
                ));
            }
            Some(set)
        }
    };
    let created = obj
        .metadata
        .creation_timestamp
        .as_deref()
        .map(|ts| {
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .map_err(|e| {
                    doc.error(
                        Some(&object),
                        Some("metadata.creationTimestamp"),
                        format!("{ts:?} is not RFC 3339: {e}"),
                    )
                })
        })
        .transpose()?;
    Ok(ServiceExport {
        key,
        export_to,
        created,
        source: doc.source(),
    })
}
