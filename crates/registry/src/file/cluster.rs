//! One file of a cluster directory: each document dispatched by kind, duplicates refused.

use std::path::Path;

use causeway_model::{ClusterObjects, ObjectSource};

use super::documents::{expect_api, split_documents, type_of, Doc};
use super::objects::{
    parse_endpoint_slice, parse_policy, parse_service, parse_service_export, parse_workload_entry,
};
use super::CAUSEWAY_API;
use crate::LoadError;

/// Parses one file of a cluster directory into `objects`, collecting errors.
pub fn parse_cluster_documents(
    file: &Path,
    text: &str,
    objects: &mut ClusterObjects,
    errors: &mut Vec<LoadError>,
) {
    for (index, (start_line, text)) in split_documents(text).iter().enumerate() {
        let doc = Doc {
            file,
            index,
            start_line: *start_line,
            text,
        };
        if let Err(e) = parse_cluster_object(&doc, objects) {
            errors.push(e);
        }
    }
}

fn duplicate(doc: &Doc<'_>, object: &str, first: &ObjectSource) -> LoadError {
    doc.error(
        Some(object),
        Some("metadata.name"),
        format!("duplicate object; first declared at {first}"),
    )
}

fn parse_cluster_object(doc: &Doc<'_>, objects: &mut ClusterObjects) -> Result<(), LoadError> {
    let (api, kind) = type_of(doc)?;
    match kind.as_str() {
        "Service" => {
            expect_api(doc, &kind, &api, "v1")?;
            let svc = parse_service(doc)?;
            if let Some(first) = objects.services.get(&svc.key) {
                return Err(duplicate(doc, &format!("Service {}", svc.key), &first.source));
            }
            objects.services.insert(svc.key.clone(), svc);
        }
        "WorkloadEntry" => {
            expect_api(doc, &kind, &api, CAUSEWAY_API)?;
            let we = parse_workload_entry(doc)?;
            let key = (we.namespace.clone(), we.name.clone());
            if let Some(first) = objects.workload_entries.get(&key) {
                return Err(duplicate(doc, &format!("WorkloadEntry {}/{}", key.0, key.1), &first.source));
            }
            objects.workload_entries.insert(key, we);
        }
        "EndpointSlice" => {
            expect_api(doc, &kind, &api, "discovery.k8s.io/v1")?;
            let slice = parse_endpoint_slice(doc)?;
            let key = (slice.namespace.clone(), slice.name.clone());
            if let Some(first) = objects.endpoint_slices.get(&key) {
                return Err(duplicate(doc, &format!("EndpointSlice {}/{}", key.0, key.1), &first.source));
            }
            objects.endpoint_slices.insert(key, slice);
        }
        "ServiceExport" => {
            expect_api(doc, &kind, &api, "multicluster.x-k8s.io/v1alpha1")?;
            let export = parse_service_export(doc)?;
            if let Some(first) = objects.exports.get(&export.key) {
                return Err(duplicate(doc, &format!("ServiceExport {}", export.key), &first.source));
            }
            objects.exports.insert(export.key.clone(), export);
        }
        "AuthorizationPolicy" => {
            expect_api(doc, &kind, &api, CAUSEWAY_API)?;
            let policy = parse_policy(doc)?;
            let key = (policy.namespace.clone(), policy.name.clone());
            if let Some(first) = objects.policies.get(&key) {
                return Err(duplicate(doc, &format!("AuthorizationPolicy {}/{}", key.0, key.1), &first.source));
            }
            objects.policies.insert(key, policy);
        }
        "Mesh" | "Cluster" => {
            return Err(doc.error(
                Some(&kind),
                Some("kind"),
                format!("{kind} objects belong in mesh.yaml, not in a cluster directory"),
            ))
        }
        "TrafficPolicy" => {
            return Err(doc.error(
                Some(&kind),
                Some("kind"),
                "TrafficPolicy objects are mesh-wide: they belong in mesh.yaml or in a file under \
                 policies/, not in a cluster directory",
            ))
        }
        other => {
            return Err(doc.error(
                Some(other),
                Some("kind"),
                format!("{other} is not supported in a cluster directory (Service, WorkloadEntry, EndpointSlice, ServiceExport, AuthorizationPolicy)"),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use causeway_model::{Health, ServiceKey};

    use super::*;

    #[test]
    fn field_errors_name_file_line_object_field() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  ports:
  - name: http
    port: eighty
";
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(
            Path::new("clusters/east/echo.yaml"),
            text,
            &mut objects,
            &mut errors,
        );
        assert_eq!(errors.len(), 1);
        let e = &errors[0];
        assert_eq!(e.field.as_deref(), Some("spec.ports[0].port"));
        assert_eq!(e.line, Some(7));
        assert_eq!(e.object.as_deref(), Some("Service"));
        let msg = e.to_string();
        assert!(
            msg.starts_with("clusters/east/echo.yaml:7 (document 0)"),
            "{msg}"
        );
    }

    #[test]
    fn parses_every_cluster_kind() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo, annotations: {causeway.io/cluster-local: \"true\"}}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: causeway.io/v1alpha1
kind: WorkloadEntry
metadata: {name: echo-1, namespace: demo}
spec: {address: 10.0.0.1, labels: {app: echo}, serviceAccount: echo, weight: 2, health: draining}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-abc, namespace: demo, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.2]
  zone: z2
- addresses: [10.0.0.3]
  conditions: {ready: false}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata:
  name: echo
  namespace: demo
  creationTimestamp: \"2026-01-02T03:04:05Z\"
  annotations: {causeway.io/export-to: \"west, north\"}
";
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(Path::new("f.yaml"), text, &mut objects, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let key = ServiceKey::new("demo", "echo");
        assert!(objects.services[&key].cluster_local);
        let we = &objects.workload_entries[&("demo".to_owned(), "echo-1".to_owned())];
        assert_eq!((we.weight, we.health), (2, Health::Draining));
        let slice = &objects.endpoint_slices[&("demo".to_owned(), "echo-abc".to_owned())];
        assert_eq!(slice.endpoints.iter().filter(|e| e.ready).count(), 1);
        let export = &objects.exports[&key];
        assert_eq!(export.created, Some(1_767_323_045));
        assert_eq!(export.export_to.as_ref().map(|s| s.len()), Some(2));
    }

    #[test]
    fn traffic_policies_do_not_belong_in_a_cluster_directory() {
        let text = "apiVersion: causeway.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec: {service: echo}\n";
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(
            Path::new("clusters/east/p.yaml"),
            text,
            &mut objects,
            &mut errors,
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field.as_deref(), Some("kind"));
        assert!(
            errors[0]
                .reason
                .contains("mesh.yaml or in a file under policies/"),
            "{}",
            errors[0]
        );
    }
}
