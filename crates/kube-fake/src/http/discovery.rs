//! Discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{g}`, `/apis/{g}/{v}`, in both the
//! legacy form and the aggregated (`apidiscovery.k8s.io/v2`) form kube-rs can ask for.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::resources::{api_version, version_priority, ResourceType, REVIEW_RESOURCES};

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

/// One resource as discovery lists it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    pub status: bool,
    pub verbs: Vec<&'static str>,
}

/// Everything served, plus the create-only review resources.
pub(crate) fn entries<'a>(types: impl Iterator<Item = &'a ResourceType>) -> Vec<Entry> {
    let mut out = Vec::new();
    for t in types {
        for v in &t.versions {
            out.push(Entry {
                group: t.group.clone(),
                version: v.clone(),
                plural: t.plural.clone(),
                kind: t.kind.clone(),
                namespaced: t.namespaced,
                status: t.status_subresource,
                verbs: VERBS.to_vec(),
            });
        }
    }
    for (group, version, kind, plural) in REVIEW_RESOURCES {
        out.push(Entry {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            kind: kind.to_string(),
            namespaced: false,
            status: false,
            verbs: vec!["create"],
        });
    }
    out
}

/// Versions per group, preferred first.
fn groups(entries: &[Entry]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in entries.iter().filter(|e| !e.group.is_empty()) {
        let vs = map.entry(e.group.clone()).or_default();
        if !vs.contains(&e.version) {
            vs.push(e.version.clone());
        }
    }
    for vs in map.values_mut() {
        vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    }
    map
}

/// `/version`.
pub(crate) fn version() -> Value {
    json!({
        "major": "1", "minor": "37", "emulationMajor": "1", "emulationMinor": "37",
        "gitVersion": "v1.37.0-causeway-fake", "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25.0",
        "compiler": "gc", "platform": "linux/amd64",
    })
}

/// `/api`.
pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": api_version(name, v), "version": v});
    let mut g = json!({"name": name, "versions": versions.iter().map(gv).collect::<Vec<_>>()});
    if let (Some(first), Some(m)) = (versions.first(), g.as_object_mut()) {
        m.insert("preferredVersion".into(), gv(first));
    }
    g
}

/// `/apis`.
pub(crate) fn group_list(entries: &[Entry]) -> Value {
    let groups: Vec<Value> = groups(entries)
        .iter()
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`, or 404 if the group is not served.
pub(crate) fn group(entries: &[Entry], name: &str) -> Result<Value, ApiError> {
    let groups = groups(entries);
    let versions = groups.get(name).ok_or_else(ApiError::not_served)?;
    let mut g = group_json(name, versions);
    if let Some(m) = g.as_object_mut() {
        m.insert("kind".into(), Value::from("APIGroup"));
        m.insert("apiVersion".into(), Value::from("v1"));
    }
    Ok(g)
}

/// `/api/v1` or `/apis/{group}/{version}`, or 404 if that version is not served.
pub(crate) fn resource_list(
    entries: &[Entry],
    group: &str,
    version: &str,
) -> Result<Value, ApiError> {
    let mut resources = Vec::new();
    for e in entries
        .iter()
        .filter(|e| e.group == group && e.version == version)
    {
        resources.push(json!({
            "name": e.plural, "singularName": e.kind.to_lowercase(), "namespaced": e.namespaced,
            "kind": e.kind, "verbs": e.verbs,
        }));
        if e.status {
            resources.push(json!({
                "name": format!("{}/status", e.plural), "singularName": "", "namespaced": e.namespaced,
                "kind": e.kind, "verbs": STATUS_VERBS,
            }));
        }
    }
    if resources.is_empty() {
        return Err(ApiError::not_served());
    }
    Ok(json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": api_version(group, version), "resources": resources,
    }))
}

fn aggregated_resource(e: &Entry) -> Value {
    let kind = json!({"group": e.group, "version": e.version, "kind": e.kind});
    let subresources: Vec<Value> = if e.status {
        vec![json!({"subresource": "status", "responseKind": kind, "verbs": STATUS_VERBS})]
    } else {
        Vec::new()
    };
    json!({
        "resource": e.plural, "responseKind": kind,
        "scope": if e.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": e.kind.to_lowercase(), "verbs": e.verbs, "subresources": subresources,
    })
}

/// Aggregated discovery of the core group (`core: true`) or of every named group.
pub(crate) fn aggregated(entries: &[Entry], core: bool) -> Value {
    let mut items = Vec::new();
    let named = groups(entries);
    let mut group_names: Vec<(String, Vec<String>)> = if core {
        vec![(String::new(), vec!["v1".to_string()])]
    } else {
        named.into_iter().collect()
    };
    for (g, versions) in group_names.drain(..) {
        let versions: Vec<Value> = versions
            .iter()
            .map(|v| {
                let resources: Vec<Value> = entries
                    .iter()
                    .filter(|e| e.group == g && &e.version == v)
                    .map(aggregated_resource)
                    .collect();
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        let metadata = if g.is_empty() {
            json!({})
        } else {
            json!({"name": g})
        };
        items.push(json!({"metadata": metadata, "versions": versions}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// The content type of an aggregated discovery answer.
pub(crate) const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client asked for aggregated discovery.
pub(crate) fn wants_aggregated(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("as=APIGroupDiscoveryList"))
}
