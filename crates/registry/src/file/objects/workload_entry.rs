//! `WorkloadEntry` (causeway.io/v1alpha1): a workload outside Kubernetes, with its address,
//! ports, identity, health and bootstrap credential.

use causeway_model::{Health, NetworkId, WorkloadEntry};

use crate::file::documents::Doc;
use crate::file::fields::{credential_path, namespace_of, parse_ip, parse_locality, required_name};
use crate::wire;
use crate::LoadError;

pub(in crate::file) fn parse_workload_entry(doc: &Doc<'_>) -> Result<WorkloadEntry, LoadError> {
    let obj: wire::Object<wire::WorkloadEntrySpec> = doc.typed(Some("WorkloadEntry"))?;
    let name = required_name(doc, "WorkloadEntry", &obj.metadata)?;
    let namespace = namespace_of(&obj.metadata);
    let object = format!("WorkloadEntry {namespace}/{name}");
    let spec = obj.spec;
    let address = parse_ip(doc, &object, "spec.address", &spec.address)?;
    for (port_name, port) in &spec.ports {
        if *port == 0 {
            return Err(doc.error(
                Some(&object),
                Some(&format!("spec.ports.{port_name}")),
                "must be 1-65535",
            ));
        }
    }
    let locality = spec
        .locality
        .as_deref()
        .map(|l| parse_locality(doc, &object, "spec.locality", l))
        .transpose()?;
    let network = spec
        .network
        .map(|n| {
            NetworkId::new(n)
                .map_err(|e| doc.error(Some(&object), Some("spec.network"), e.to_string()))
        })
        .transpose()?;
    let weight = spec.weight.unwrap_or(1);
    if weight == 0 {
        return Err(doc.error(
            Some(&object),
            Some("spec.weight"),
            "must be at least 1 (remove the entry or mark it unhealthy instead)",
        ));
    }
    let health = match spec.health.as_deref() {
        None | Some("healthy") => Health::Healthy,
        Some("unhealthy") => Health::Unhealthy,
        Some("draining") => Health::Draining,
        Some(other) => {
            return Err(doc.error(
                Some(&object),
                Some("spec.health"),
                format!("{other:?} is not healthy, unhealthy or draining"),
            ))
        }
    };
    let service_account = spec.service_account.unwrap_or_else(|| "default".into());
    if causeway_model::ClusterId::new(&service_account).is_err() {
        return Err(doc.error(
            Some(&object),
            Some("spec.serviceAccount"),
            format!("{service_account:?} is not a valid service account name"),
        ));
    }
    Ok(WorkloadEntry {
        namespace,
        name,
        address,
        ports: spec.ports,
        labels: spec.labels,
        service_account,
        locality,
        network,
        weight,
        health,
        credential_file: spec
            .credential
            .map(|c| credential_path(doc, &object, &c.token_file))
            .transpose()?,
        source: doc.source(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use causeway_model::ClusterObjects;

    use crate::file::parse_cluster_documents;

    #[test]
    fn semantic_errors_name_object() {
        let text = "\
apiVersion: causeway.io/v1alpha1
kind: WorkloadEntry
metadata: {name: echo-1, namespace: demo}
spec:
  address: not-an-ip
";
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(Path::new("f.yaml"), text, &mut objects, &mut errors);
        assert_eq!(
            errors[0].object.as_deref(),
            Some("WorkloadEntry demo/echo-1")
        );
        assert_eq!(errors[0].field.as_deref(), Some("spec.address"));
    }

    #[test]
    fn unknown_workload_field_is_rejected() {
        let text = "\
apiVersion: causeway.io/v1alpha1
kind: WorkloadEntry
metadata: {name: echo-1}
spec:
  address: 10.0.0.1
  adress: 10.0.0.2
";
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(Path::new("f.yaml"), text, &mut objects, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].reason.contains("adress"), "{}", errors[0]);
    }
}
