//! `WorkloadEntry` (causeway.io/v1alpha1): a workload outside Kubernetes, with its address,
//! ports, identity, health and bootstrap credential, and the demo-fault annotations.

use std::collections::BTreeMap;

use causeway_model::{DemoFaults, Health, NetworkId, WorkloadEntry};

use crate::file::documents::Doc;
use crate::file::fields::{credential_path, namespace_of, parse_ip, parse_locality, required_name};
use crate::file::{DEMO_DELAY_ANNOTATION, DEMO_STATUS_ANNOTATION};
use crate::wire;
use crate::LoadError;

pub(in crate::file) fn parse_workload_entry(doc: &Doc<'_>) -> Result<WorkloadEntry, LoadError> {
    let obj: wire::Object<wire::WorkloadEntrySpec> = doc.typed(Some("WorkloadEntry"))?;
    let name = required_name(doc, "WorkloadEntry", &obj.metadata)?;
    let namespace = namespace_of(&obj.metadata);
    let object = format!("WorkloadEntry {namespace}/{name}");
    let demo = parse_demo_faults(doc, &object, &obj.metadata.annotations)?;
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
        demo,
        source: doc.source(),
    })
}

/// The demo-fault annotations: a delay of 0-60000 ms (absent: none) and a status of 100-599
/// (absent: none, the app answers 200). Whole numbers as strings, as annotations are.
fn parse_demo_faults(
    doc: &Doc<'_>,
    object: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<DemoFaults, LoadError> {
    let delay_ms = match annotations.get(DEMO_DELAY_ANNOTATION) {
        None => 0,
        Some(value) => value
            .parse::<u32>()
            .ok()
            .filter(|ms| *ms <= DemoFaults::MAX_DELAY_MS)
            .ok_or_else(|| {
                doc.error(
                    Some(object),
                    Some(&format!("metadata.annotations[{DEMO_DELAY_ANNOTATION}]")),
                    format!(
                        "{value:?} is not a number of milliseconds from 0 to {}",
                        DemoFaults::MAX_DELAY_MS
                    ),
                )
            })?,
    };
    let status = annotations
        .get(DEMO_STATUS_ANNOTATION)
        .map(|value| {
            value
                .parse::<u16>()
                .ok()
                .filter(|code| DemoFaults::STATUSES.contains(code))
                .ok_or_else(|| {
                    doc.error(
                        Some(object),
                        Some(&format!("metadata.annotations[{DEMO_STATUS_ANNOTATION}]")),
                        format!(
                            "{value:?} is not an HTTP status code ({}-{})",
                            DemoFaults::STATUSES.start(),
                            DemoFaults::STATUSES.end()
                        ),
                    )
                })
        })
        .transpose()?;
    Ok(DemoFaults { delay_ms, status })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use causeway_model::{ClusterObjects, DemoFaults};

    use crate::file::parse_cluster_documents;

    /// A WorkloadEntry `demo/echo-1` with `annotations` (a YAML flow mapping's contents).
    fn with_annotations(annotations: &str) -> (ClusterObjects, Vec<crate::LoadError>) {
        let text = format!(
            "apiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: echo-1, namespace: demo, annotations: {{{annotations}}}}}\nspec: {{address: 10.0.0.1}}\n"
        );
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(
            Path::new("clusters/east/w.yaml"),
            &text,
            &mut objects,
            &mut errors,
        );
        (objects, errors)
    }

    #[test]
    fn demo_faults_are_read_from_annotations() {
        let key = ("demo".to_owned(), "echo-1".to_owned());
        let (objects, errors) = with_annotations(
            "causeway.io/demo-delay-ms: \"250\", causeway.io/demo-status: \"503\"",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            objects.workload_entries[&key].demo,
            DemoFaults {
                delay_ms: 250,
                status: Some(503)
            }
        );
        let (objects, errors) = with_annotations("causeway.io/demo-delay-ms: \"60000\"");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            objects.workload_entries[&key].demo,
            DemoFaults {
                delay_ms: 60_000,
                status: None
            }
        );
        let (objects, errors) = with_annotations("");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(objects.workload_entries[&key].demo, DemoFaults::default());
    }

    #[test]
    fn bad_demo_faults_name_file_object_and_annotation() {
        for (annotation, value, reason) in [
            ("demo-status", "abc", "is not an HTTP status code (100-599)"),
            ("demo-status", "700", "is not an HTTP status code (100-599)"),
            ("demo-status", "99", "is not an HTTP status code (100-599)"),
            ("demo-status", "", "is not an HTTP status code (100-599)"),
            (
                "demo-delay-ms",
                "-1",
                "is not a number of milliseconds from 0 to 60000",
            ),
            (
                "demo-delay-ms",
                "60001",
                "is not a number of milliseconds from 0 to 60000",
            ),
            (
                "demo-delay-ms",
                "1.5",
                "is not a number of milliseconds from 0 to 60000",
            ),
        ] {
            let (objects, errors) =
                with_annotations(&format!("causeway.io/{annotation}: \"{value}\""));
            assert_eq!(errors.len(), 1, "{annotation}={value}: {errors:?}");
            let e = &errors[0];
            assert_eq!(e.file, Path::new("clusters/east/w.yaml"));
            assert_eq!(e.line, Some(1), "{e}");
            assert_eq!(e.object.as_deref(), Some("WorkloadEntry demo/echo-1"));
            assert_eq!(
                e.field.as_deref(),
                Some(format!("metadata.annotations[causeway.io/{annotation}]").as_str())
            );
            assert!(e.reason.contains(&format!("{value:?} {reason}")), "{e}");
            assert!(objects.workload_entries.is_empty());
        }
    }

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
