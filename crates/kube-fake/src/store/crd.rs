//! CustomResourceDefinitions written through the API register the resource they define, so
//! `kubectl apply -f crds.yaml`-style setups work against the fake.

use serde_json::{json, Value};

use super::{Store, Table};
use crate::error::ApiError;
use crate::ids;
use crate::resources::{GroupResource, ResourceSpec, ResourceType};

const CRD_GROUP: &str = "apiextensions.k8s.io";

/// For a CRD write: validates it, sets the status the CRD controller would (Established,
/// NamesAccepted) and returns the resources to serve. `None` for any other resource.
pub(crate) fn prepare(
    gr: &GroupResource,
    obj: &mut Value,
) -> Result<Option<Vec<ResourceSpec>>, ApiError> {
    if gr.group != CRD_GROUP || gr.plural != "customresourcedefinitions" {
        return Ok(None);
    }
    let name = super::meta_str(obj, "name").unwrap_or_default().to_string();
    let invalid = |msg: &str| ApiError::invalid("CustomResourceDefinition", &name, msg);
    let spec = obj
        .get("spec")
        .ok_or_else(|| invalid("spec: Required value"))?;
    let group = str_at(spec, "/group").ok_or_else(|| invalid("spec.group: Required value"))?;
    let kind =
        str_at(spec, "/names/kind").ok_or_else(|| invalid("spec.names.kind: Required value"))?;
    let plural = str_at(spec, "/names/plural")
        .ok_or_else(|| invalid("spec.names.plural: Required value"))?;
    if name != format!("{plural}.{group}") {
        return Err(invalid(&format!(
            "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
        )));
    }
    let namespaced = str_at(spec, "/scope").as_deref() != Some("Cluster");
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut specs: Vec<(bool, ResourceSpec)> = versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
        .filter_map(|v| {
            let version = v.get("name")?.as_str()?;
            let mut s = ResourceSpec::new(&group, version, &kind, &plural);
            s.namespaced = namespaced;
            s.status_subresource = v.pointer("/subresources/status").is_some();
            Some((
                v.get("storage").and_then(Value::as_bool).unwrap_or(false),
                s,
            ))
        })
        .collect();
    if specs.is_empty() {
        return Err(invalid(
            "spec.versions: Invalid value: must have exactly one version marked as storage version",
        ));
    }
    // The storage version first: objects are stored under it.
    specs.sort_by_key(|(storage, _)| !*storage);
    let storage = specs[0].1.version.clone();
    let now = ids::now_rfc3339();
    let names = spec.get("names").cloned().unwrap_or_else(|| json!({}));
    if let Some(map) = obj.as_object_mut() {
        map.insert(
            "status".into(),
            json!({
                "acceptedNames": names,
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                     "message": "no conflicts found", "lastTransitionTime": now},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "message": "the initial names have been accepted", "lastTransitionTime": now},
                ],
                "storedVersions": [storage],
            }),
        );
    }
    Ok(Some(specs.into_iter().map(|(_, s)| s).collect()))
}

fn str_at(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl Store {
    /// Serves the resources a CRD defines (adding versions to an already-served resource).
    pub(crate) fn register_crd(&mut self, crd_name: &str, specs: &[ResourceSpec]) {
        for spec in specs {
            let gr = GroupResource::new(&spec.group, &spec.plural);
            if let Some(t) = self.tables.get_mut(&gr) {
                if !t.ty.serves(&spec.version) {
                    t.ty.versions.push(spec.version.clone());
                }
                t.ty.status_subresource |= spec.status_subresource;
                continue;
            }
            let mut ty = ResourceType::from_spec(spec);
            ty.crd = Some(crd_name.to_string());
            self.kinds
                .insert((ty.group.clone(), ty.kind.clone()), gr.clone());
            self.tables.insert(gr, Table::new(ty));
        }
    }
}
