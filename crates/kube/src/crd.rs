//! Causeway's own kinds as Kubernetes custom resources: `causeway.io/v1alpha1`
//! `AuthorizationPolicy` (here) and `TrafficPolicy` ([`TrafficPolicy`]), their conversion into the
//! model, and the CustomResourceDefinitions that `causeway crds` prints (generated from these
//! types, so `kubectl apply -f -` installs exactly what the control plane reads).
//!
//! Each spec is the mesh directory's wire type ([`causeway_registry::policy_wire`],
//! [`causeway_registry::traffic_wire`]) and is validated by the same function, so a policy
//! means the same in a file and in a cluster.

// `LoadError` is the registry's error for every object it reads (file, object, field, reason);
// it is large, but policy conversion is a cold path and boxing it would buy nothing measurable.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;

use causeway_model::ObjectSource;
use causeway_registry::{policy_wire, LoadError};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod traffic;

pub use traffic::{traffic_policy_to_model, TrafficPolicy, TrafficPolicySpec};

/// API group of Causeway's custom resources.
pub const GROUP: &str = "causeway.io";
/// API version of Causeway's custom resources.
pub const VERSION: &str = "v1alpha1";

/// Which workloads of the namespace (selector), what to do (action) and which requests (rules).
///
/// Exactly the mesh directory's `AuthorizationPolicy` spec: a transparent wrapper, so unknown
/// fields are rejected here as in a file.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "causeway.io",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    singular = "authorizationpolicy",
    shortname = "cwpolicy",
    category = "causeway",
    namespaced,
    derive = "PartialEq",
    doc = "Allow or deny callers of the selected workloads of its namespace, by identity and by the caller's cluster; enforced by the workloads' sidecars.",
    printcolumn = r#"{"name": "Action", "type": "string", "jsonPath": ".spec.action", "description": "ALLOW or DENY (empty: ALLOW)"}"#,
    printcolumn = r#"{"name": "Selector", "type": "string", "jsonPath": ".spec.selector", "description": "Labels of the workloads it applies to (empty: all of the namespace)"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
#[schemars(
    description = "Which workloads of the namespace (selector), what to do with matching requests (action) and which requests match (rules)."
)]
pub struct AuthorizationPolicySpec(pub policy_wire::AuthorizationPolicySpec);

/// The [`ObjectSource`] of an object read from a member cluster's API server:
/// `kubernetes:<cluster>/<apiVersion>/<kind>/<namespace>/<name>` (document and line 0: there is
/// no file).
pub fn kubernetes_object_source(
    cluster: &str,
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> ObjectSource {
    ObjectSource {
        file: PathBuf::from(format!(
            "kubernetes:{cluster}/{api_version}/{kind}/{namespace}/{name}"
        )),
        document: 0,
        line: 0,
    }
}

/// Validates an `AuthorizationPolicy` read from `cluster` into the model, with the mesh
/// directory's rules. Errors name the cluster and object in `file`
/// (`kubernetes:<cluster>/causeway.io/v1alpha1/AuthorizationPolicy/<ns>/<name>`), the object
/// (`AuthorizationPolicy <ns>/<name>`) and the field; they have no document or line.
pub fn to_model(
    policy: &AuthorizationPolicy,
    cluster: &str,
) -> Result<causeway_model::AuthorizationPolicy, LoadError> {
    let (namespace, name, source) = identity(&policy.metadata, cluster, "AuthorizationPolicy")?;
    policy_wire::policy_from_spec(namespace, name, &policy.spec.0, source).map_err(off_file)
}

/// The namespace, name and source of a custom resource of `kind` read from `cluster`; an error
/// (naming `metadata.name`) when it has no name. A namespaced object from the API server always
/// has a namespace; "default" is what Kubernetes (and the mesh directory) assume without one.
pub(crate) fn identity<'a>(
    meta: &'a kube::api::ObjectMeta,
    cluster: &str,
    kind: &str,
) -> Result<(&'a str, &'a str, ObjectSource), LoadError> {
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().unwrap_or_default();
    let source = kubernetes_object_source(
        cluster,
        &format!("{GROUP}/{VERSION}"),
        kind,
        namespace,
        name,
    );
    if name.is_empty() {
        return Err(LoadError {
            file: source.file,
            document: None,
            line: None,
            object: Some(kind.into()),
            field: Some("metadata.name".into()),
            reason: "missing".into(),
        });
    }
    Ok((namespace, name, source))
}

/// An object from an API server has no document or line: the validation's are dropped.
pub(crate) fn off_file(mut e: LoadError) -> LoadError {
    e.document = None;
    e.line = None;
    e
}

/// Why the CustomResourceDefinitions could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// A CRD did not serialise to YAML.
    #[error("cannot render CustomResourceDefinition {name} as YAML: {source}")]
    Yaml {
        /// `metadata.name` of the CRD.
        name: String,
        /// The serialiser's error.
        source: yaml_serde::Error,
    },
}

/// The CustomResourceDefinitions of every Causeway kind that lives in a member cluster.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![AuthorizationPolicy::crd(), TrafficPolicy::crd()];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                drop_unknown_formats(schema);
            }
        }
    }
    crds
}

/// Removes integer `format`s that Kubernetes does not know (schemars writes `uint16` for a
/// `u16`; the API server accepts it but warns `unrecognized format` on every apply). The bounds
/// stay in `minimum`/`maximum`.
fn drop_unknown_formats(schema: &mut JSONSchemaProps) {
    let known = |f: &str| matches!(f, "int32" | "int64");
    if schema.type_.as_deref() == Some("integer") && !schema.format.as_deref().is_some_and(known) {
        schema.format = None;
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        drop_unknown_formats(child);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(child)) => drop_unknown_formats(child),
        Some(JSONSchemaPropsOrArray::Schemas(children)) => {
            children.iter_mut().for_each(drop_unknown_formats)
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(child)) = &mut schema.additional_properties {
        drop_unknown_formats(child);
    }
    for list in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        list.iter_mut()
            .flat_map(|l| l.iter_mut())
            .for_each(drop_unknown_formats);
    }
    if let Some(child) = &mut schema.not {
        drop_unknown_formats(child);
    }
}

/// [`crds`] as a multi-document YAML stream, ready for `kubectl apply -f -`.
pub fn crds_yaml() -> Result<String, CrdError> {
    let mut out = String::new();
    for crd in crds() {
        let yaml = yaml_serde::to_string(&crd).map_err(|source| CrdError::Yaml {
            name: crd.metadata.name.clone().unwrap_or_default(),
            source,
        })?;
        out.push_str("---\n");
        out.push_str(&yaml);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use causeway_model::{ClusterObjects, PolicyAction};
    use serde_json::{json, Value};

    use super::*;

    fn spec() -> Value {
        json!({
            "selector": {"app": "greeter"},
            "action": "DENY",
            "rules": [{
                "from": [{
                    "principals": [
                        "spiffe://causeway.local/ns/demo/sa/client",
                        "spiffe://causeway.local/ns/ops/*"
                    ],
                    "namespaces": ["demo"],
                    "clusters": ["alpha"]
                }],
                "to": [{"ports": [8080], "paths": ["/api/*"]}]
            }]
        })
    }

    fn object(spec: Value) -> Value {
        json!({
            "apiVersion": "causeway.io/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "greeter-callers", "namespace": "demo", "uid": "1234"},
            "spec": spec
        })
    }

    fn schema() -> Value {
        let crd = crds().remove(0);
        let schema = crd.spec.versions[0]
            .schema
            .clone()
            .and_then(|s| s.open_api_v3_schema)
            .expect("the CRD has a schema");
        serde_json::to_value(schema).expect("schema serialises")
    }

    #[test]
    fn crd_has_group_names_scope_and_version() {
        let crds = crds();
        let names: Vec<_> = crds.iter().map(|c| c.metadata.name.as_deref()).collect();
        assert_eq!(
            names,
            [
                Some("authorizationpolicies.causeway.io"),
                Some("trafficpolicies.causeway.io")
            ]
        );
        assert!(crds.iter().all(|c| c.spec.group == GROUP));
        let crd = &crds[0];
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("authorizationpolicies.causeway.io")
        );
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "AuthorizationPolicy");
        assert_eq!(crd.spec.names.plural, "authorizationpolicies");
        assert_eq!(
            crd.spec.names.singular.as_deref(),
            Some("authorizationpolicy")
        );
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, VERSION);
        assert!(version.served && version.storage);
        let columns: Vec<(&str, &str)> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert!(columns.contains(&("Action", ".spec.action")), "{columns:?}");
    }

    /// Kubernetes accepts only structural schemas: a type on every node, no references.
    fn assert_structural(path: &str, node: &Value) {
        let Some(obj) = node.as_object() else {
            panic!("{path} is not a schema object: {node}");
        };
        for key in [
            "$ref",
            "$defs",
            "definitions",
            "$schema",
            "anyOf",
            "oneOf",
            "allOf",
        ] {
            assert!(!obj.contains_key(key), "{path} has {key}: {node}");
        }
        assert!(obj.contains_key("type"), "{path} has no type: {node}");
        if let Some(format) = obj.get("format").and_then(Value::as_str) {
            assert!(
                !format.starts_with("uint"),
                "{path} has format {format}, unknown to Kubernetes"
            );
        }
        for (name, child) in obj
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            assert_structural(&format!("{path}.{name}"), child);
        }
        if let Some(items) = obj.get("items") {
            assert_structural(&format!("{path}[]"), items);
        }
        if let Some(values) = obj.get("additionalProperties").filter(|v| v.is_object()) {
            assert_structural(&format!("{path}{{}}"), values);
        }
    }

    #[test]
    fn every_schema_is_structural() {
        for crd in crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let schema = crd.spec.versions[0]
                .schema
                .clone()
                .and_then(|s| s.open_api_v3_schema)
                .expect("the CRD has a schema");
            let schema = serde_json::to_value(schema).expect("schema serialises");
            assert_structural(&name, &schema);
        }
    }

    #[test]
    fn traffic_schema_has_every_field() {
        let crd = crds().remove(1);
        let schema = crd.spec.versions[0]
            .schema
            .clone()
            .and_then(|s| s.open_api_v3_schema)
            .expect("the CRD has a schema");
        let schema = serde_json::to_value(schema).expect("schema serialises");
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["required"], serde_json::json!(["service"]), "{spec}");
        let fields = &spec["properties"];
        for field in [
            "service",
            "callers",
            "mode",
            "clusters",
            "failoverPriority",
            "failover",
            "distribute",
            "subsets",
            "routes",
            "retries",
            "timeout",
            "outlierDetection",
        ] {
            assert!(fields.get(field).is_some(), "{field} in {fields}");
        }
        assert_eq!(fields["callers"]["properties"]["clusters"]["type"], "array");
        let weight = &fields["routes"]["items"]["properties"]["weight"];
        assert_eq!(weight["type"], "integer");
        assert!(weight.get("format").is_none(), "{weight}");
        let share = &fields["distribute"]["items"]["properties"]["to"]["additionalProperties"];
        assert_eq!(share["type"], "integer");
        assert!(fields["outlierDetection"]["properties"]
            .get("consecutive5xx")
            .is_some());
    }

    #[test]
    fn schema_is_structural_and_has_every_field() {
        let schema = schema();
        assert_structural("", &schema);
        let description = schema["properties"]["spec"]["description"].as_str();
        assert!(
            description.is_some_and(|d| d.starts_with("Which workloads") && !d.contains('\n')),
            "operator-facing spec description: {description:?}"
        );
        let spec = &schema["properties"]["spec"]["properties"];
        assert_eq!(spec["action"]["type"], "string");
        assert_eq!(spec["selector"]["type"], "object");
        assert_eq!(spec["selector"]["additionalProperties"]["type"], "string");
        let rule = &spec["rules"]["items"]["properties"];
        let from = &rule["from"]["items"]["properties"];
        for field in ["principals", "namespaces", "clusters"] {
            assert_eq!(from[field]["type"], "array", "{field}");
            assert_eq!(from[field]["items"]["type"], "string", "{field}");
        }
        let to = &rule["to"]["items"]["properties"];
        assert_eq!(to["paths"]["items"]["type"], "string");
        let port = &to["ports"]["items"];
        assert_eq!(port["type"], "integer");
        assert_eq!(port["maximum"], 65535.0);
        assert!(port.get("format").is_none(), "{port}");
    }

    #[test]
    fn policy_converts_like_the_mesh_directory() {
        let policy: AuthorizationPolicy =
            serde_json::from_value(object(spec())).expect("policy deserialises");
        let from_kube = to_model(&policy, "east").expect("valid policy");
        assert_eq!(
            from_kube.source.file,
            Path::new(
                "kubernetes:east/causeway.io/v1alpha1/AuthorizationPolicy/demo/greeter-callers"
            )
        );
        assert_eq!(from_kube.action, PolicyAction::Deny);

        let yaml = yaml_serde::to_string(&object(spec())).expect("YAML");
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        causeway_registry::parse_cluster_documents(
            Path::new("clusters/east/p.yaml"),
            &yaml,
            &mut objects,
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let mut from_file = objects
            .policies
            .remove(&("demo".to_owned(), "greeter-callers".to_owned()))
            .expect("parsed from the file");
        from_file.source = from_kube.source.clone();
        assert_eq!(from_kube, from_file);
    }

    #[test]
    fn serialises_back_to_the_same_object() {
        let policy: AuthorizationPolicy =
            serde_json::from_value(object(spec())).expect("policy deserialises");
        let value = serde_json::to_value(&policy).expect("serialises");
        assert_eq!(value["apiVersion"], "causeway.io/v1alpha1");
        assert_eq!(value["kind"], "AuthorizationPolicy");
        assert_eq!(value["spec"], spec());
    }

    #[test]
    fn bad_field_names_cluster_object_and_field() {
        let mut bad = spec();
        bad["rules"][0]["from"][0]["principals"][0] = json!("client");
        let policy: AuthorizationPolicy =
            serde_json::from_value(object(bad)).expect("deserialises");
        let e = to_model(&policy, "east").expect_err("not a SPIFFE ID");
        assert_eq!(
            e.object.as_deref(),
            Some("AuthorizationPolicy demo/greeter-callers")
        );
        assert_eq!(
            e.field.as_deref(),
            Some("spec.rules[0].from[0].principals[0]")
        );
        assert_eq!((e.document, e.line), (None, None));
        let msg = e.to_string();
        assert!(
            msg.starts_with("kubernetes:east/causeway.io/v1alpha1/AuthorizationPolicy/demo/greeter-callers: AuthorizationPolicy demo/greeter-callers: field spec.rules[0].from[0].principals[0]: "),
            "{msg}"
        );

        let mut bad = spec();
        bad["action"] = json!("MAYBE");
        let policy: AuthorizationPolicy =
            serde_json::from_value(object(bad)).expect("deserialises");
        let e = to_model(&policy, "west").expect_err("bad action");
        assert_eq!(e.field.as_deref(), Some("spec.action"));
        assert!(e.to_string().starts_with("kubernetes:west/"), "{e}");
    }

    #[test]
    fn unknown_spec_field_is_rejected() {
        let mut bad = spec();
        bad["rulez"] = json!([]);
        let e =
            serde_json::from_value::<AuthorizationPolicy>(object(bad)).expect_err("unknown field");
        assert!(e.to_string().contains("rulez"), "{e}");
    }

    #[test]
    fn missing_name_is_reported() {
        let mut obj = object(spec());
        obj["metadata"] = json!({"namespace": "demo"});
        let policy: AuthorizationPolicy = serde_json::from_value(obj).expect("deserialises");
        let e = to_model(&policy, "east").expect_err("no name");
        assert_eq!(e.field.as_deref(), Some("metadata.name"));
    }

    #[test]
    fn yaml_is_every_crd() {
        let yaml = crds_yaml().expect("renders");
        let parsed: Vec<CustomResourceDefinition> = yaml_serde::Deserializer::from_str(&yaml)
            .map(|doc| CustomResourceDefinition::deserialize(doc).expect("a CRD"))
            .collect();
        assert_eq!(parsed, crds());
        assert!(yaml.starts_with("---\napiVersion: apiextensions.k8s.io/v1\n"));
    }
}
