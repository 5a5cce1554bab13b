//! `causeway.io/v1alpha1` `TrafficPolicy` as a custom resource: how callers of a service reach
//! its endpoints across clusters. Its spec is the mesh directory's wire type
//! ([`causeway_registry::traffic_wire`]), validated by the same function, so a policy means the
//! same in a file and in a cluster; like the file ones, it is mesh-wide.

use causeway_registry::{traffic_wire, LoadError};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{identity, off_file};

/// Which service (in the policy's namespace), for which caller clusters, and how their traffic
/// is spread (mode, clusters, locality rules, routes, retries, timeout, outlier detection).
///
/// Exactly the mesh directory's `TrafficPolicy` spec: a transparent wrapper, so unknown fields
/// are rejected here as in a file.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "causeway.io",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    plural = "trafficpolicies",
    singular = "trafficpolicy",
    shortname = "cwtraffic",
    category = "causeway",
    namespaced,
    derive = "PartialEq",
    doc = "How callers of a service reach its endpoints across the mesh's clusters (locality, active-active, fail-over, routes, retries); mesh-wide, whichever member cluster holds it.",
    printcolumn = r#"{"name": "Service", "type": "string", "jsonPath": ".spec.service", "description": "The Service of this namespace whose callers it shapes"}"#,
    printcolumn = r#"{"name": "Mode", "type": "string", "jsonPath": ".spec.mode", "description": "Locality (empty), ActiveActive or FailOver"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
#[schemars(
    description = "Which service of the namespace (service), for which caller clusters (callers), and how their traffic is spread over its clusters and endpoints."
)]
pub struct TrafficPolicySpec(pub traffic_wire::TrafficPolicySpec);

/// Validates a `TrafficPolicy` read from `cluster` into the model, with the mesh directory's
/// rules. Errors name the cluster and object in `file`
/// (`kubernetes:<cluster>/causeway.io/v1alpha1/TrafficPolicy/<ns>/<name>`), the object
/// (`TrafficPolicy <ns>/<name>`) and the field; they have no document or line.
pub fn traffic_policy_to_model(
    policy: &TrafficPolicy,
    cluster: &str,
) -> Result<causeway_model::TrafficPolicy, LoadError> {
    let (namespace, name, source) = identity(&policy.metadata, cluster, "TrafficPolicy")?;
    traffic_wire::traffic_policy_from_spec(namespace, name, &policy.spec.0, source)
        .map_err(off_file)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use causeway_model::TrafficMode;
    use kube::CustomResourceExt;
    use serde_json::{json, Value};

    use super::*;

    fn spec() -> Value {
        json!({
            "service": "greeter",
            "callers": {"clusters": ["east"]},
            "mode": "FailOver",
            "clusters": [{"name": "west"}, {"name": "east"}],
            "retries": {"attempts": 2, "perTryTimeout": "1s", "retryOn": "5xx"},
            "timeout": "5s",
            "outlierDetection": {"consecutive5xx": 3, "maxEjectionPercent": 50}
        })
    }

    fn object(spec: Value) -> Value {
        json!({
            "apiVersion": "causeway.io/v1alpha1",
            "kind": "TrafficPolicy",
            "metadata": {"name": "greeter-failover", "namespace": "demo", "uid": "1234"},
            "spec": spec
        })
    }

    #[test]
    fn crd_has_names_scope_and_columns() {
        let crd = TrafficPolicy::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("trafficpolicies.causeway.io")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "TrafficPolicy");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["cwtraffic".to_owned()][..])
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["causeway".to_owned()][..])
        );
        let columns: Vec<(&str, &str)> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert!(
            columns.contains(&("Service", ".spec.service")),
            "{columns:?}"
        );
        assert!(columns.contains(&("Mode", ".spec.mode")), "{columns:?}");
    }

    #[test]
    fn policy_converts_like_the_mesh_directory() {
        let policy: TrafficPolicy =
            serde_json::from_value(object(spec())).expect("policy deserialises");
        let from_kube = traffic_policy_to_model(&policy, "east").expect("valid policy");
        assert_eq!(
            from_kube.source.file,
            Path::new("kubernetes:east/causeway.io/v1alpha1/TrafficPolicy/demo/greeter-failover")
        );
        assert_eq!(from_kube.mode, TrafficMode::FailOver);

        let dir = tempfile::tempdir().expect("dir");
        let mesh = "apiVersion: causeway.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: td.local}\n---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {name: east}\nspec: {network: n1, locality: us-east/us-east-1a}\n---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {name: west}\nspec: {network: n1, locality: us-west/us-west-1a}\n";
        std::fs::write(dir.path().join("mesh.yaml"), mesh).expect("write mesh.yaml");
        std::fs::create_dir(dir.path().join("policies")).expect("policies/");
        let policy_yaml = yaml_serde::to_string(&object(spec())).expect("YAML");
        std::fs::write(dir.path().join("policies/greeter.yaml"), policy_yaml).expect("write");
        let loaded = causeway_registry::MeshDirectory::open(dir.path());
        assert!(loaded.errors().is_empty(), "{:?}", loaded.errors());
        let mut from_file = loaded.traffic_policies()[0].clone();
        from_file.source = from_kube.source.clone();
        assert_eq!(from_kube, from_file);
    }

    #[test]
    fn serialises_back_to_the_same_object() {
        let policy: TrafficPolicy =
            serde_json::from_value(object(spec())).expect("policy deserialises");
        let value = serde_json::to_value(&policy).expect("serialises");
        assert_eq!(value["kind"], "TrafficPolicy");
        assert_eq!(value["spec"], spec());
    }

    #[test]
    fn bad_field_names_cluster_object_and_field() {
        let mut bad = spec();
        bad["mode"] = json!("Failover");
        let policy: TrafficPolicy = serde_json::from_value(object(bad)).expect("deserialises");
        let e = traffic_policy_to_model(&policy, "east").expect_err("not a mode");
        assert_eq!(
            e.object.as_deref(),
            Some("TrafficPolicy demo/greeter-failover")
        );
        assert_eq!(e.field.as_deref(), Some("spec.mode"));
        assert_eq!((e.document, e.line), (None, None));
        assert!(
            e.to_string().starts_with(
                "kubernetes:east/causeway.io/v1alpha1/TrafficPolicy/demo/greeter-failover: TrafficPolicy demo/greeter-failover: field spec.mode: "
            ),
            "{e}"
        );

        let mut unknown = spec();
        unknown["modes"] = json!("FailOver");
        let e = serde_json::from_value::<TrafficPolicy>(object(unknown)).expect_err("unknown");
        assert!(e.to_string().contains("modes"), "{e}");

        let mut obj = object(spec());
        obj["metadata"] = json!({"namespace": "demo"});
        let policy: TrafficPolicy = serde_json::from_value(obj).expect("deserialises");
        let e = traffic_policy_to_model(&policy, "east").expect_err("no name");
        assert_eq!(e.field.as_deref(), Some("metadata.name"));
    }
}
