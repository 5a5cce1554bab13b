//! Server-populated metadata and per-type defaults, as the real API server fills them.

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::ids;
use crate::resources::{api_version, ResourceType};

/// How a write was made: through the HTTP API, or directly by a test.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteOpts {
    /// Direct store write by a test: keeps a given `status` and `creationTimestamp` and ignores
    /// `resourceVersion` preconditions.
    pub direct: bool,
    /// `dryRun=All`: validate and answer, but store nothing and emit no event.
    pub dry_run: bool,
    /// `fieldManager` query parameter.
    pub field_manager: Option<String>,
    /// The object came from a k8s-openapi type, so re-normalising it is unnecessary.
    pub trusted: bool,
}

/// Mutable access to `metadata`, creating it if needed.
pub(crate) fn meta_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let map = obj.as_object_mut()?;
    let m = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut()
}

/// A string field of `metadata`, if set and non-empty.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?
        .get(field)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// Sets `metadata.resourceVersion`.
pub(crate) fn set_resource_version(obj: &mut Value, rv: u64) {
    if let Some(m) = meta_mut(obj) {
        m.insert("resourceVersion".into(), Value::from(rv.to_string()));
    }
}

/// Validates a name like the real server (DNS-1123 subdomain) so paths stay unambiguous.
fn valid_name(name: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= 253
        && name.chars().all(ok_char)
        && ends_ok(name.chars().next())
        && ends_ok(name.chars().last())
}

/// Checks `apiVersion`/`kind` in a request body against the addressed resource and fills
/// them in when absent.
pub(crate) fn check_type(
    ty: &ResourceType,
    version: &str,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let want = api_version(&ty.group, version);
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(v) if !v.is_empty() && v != want => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({want})"
            )))
        }
        _ => {}
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != ty.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                ty.kind
            )))
        }
        _ => {}
    }
    map.insert(
        "apiVersion".into(),
        Value::from(api_version(&ty.group, ty.storage_version())),
    );
    map.insert("kind".into(), Value::from(ty.kind.clone()));
    Ok(())
}

/// Resolves the namespace of a write: from the path, or the object, or `default`.
pub(crate) fn resolve_namespace(
    ty: &ResourceType,
    path_ns: Option<&str>,
    obj: &mut Value,
) -> Result<String, ApiError> {
    let obj_ns = meta_str(obj, "namespace").map(str::to_string);
    let m = meta_mut(obj)
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    if !ty.namespaced {
        m.remove("namespace");
        return Ok(String::new());
    }
    let ns = match (path_ns, obj_ns) {
        (Some(p), Some(o)) if p != o => return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        (Some(p), _) => p.to_string(),
        (None, Some(o)) => o,
        (None, None) => "default".to_string(),
    };
    m.insert("namespace".into(), Value::from(ns.clone()));
    Ok(ns)
}

/// Fills the name (from `generateName` if needed) and validates it.
pub(crate) fn resolve_name(ty: &ResourceType, obj: &mut Value) -> Result<String, ApiError> {
    let name = match meta_str(obj, "name") {
        Some(n) => n.to_string(),
        None => match meta_str(obj, "generateName") {
            Some(g) => format!("{g}{}", ids::name_suffix(5)),
            None => {
                return Err(ApiError::invalid(
                    &ty.kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ))
            }
        },
    };
    if !valid_name(&name) {
        return Err(ApiError::invalid(
            &ty.kind,
            &name,
            &format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ));
    }
    if let Some(m) = meta_mut(obj) {
        m.insert("name".into(), Value::from(name.clone()));
    }
    Ok(name)
}

/// Server-populated metadata on create: uid, creationTimestamp, generation.
pub(crate) fn fill_create_meta(obj: &mut Value, opts: &WriteOpts) {
    let Some(m) = meta_mut(obj) else { return };
    m.insert("uid".into(), Value::from(ids::uuid()));
    let keep_ts = opts.direct && m.get("creationTimestamp").is_some_and(Value::is_string);
    if !keep_ts {
        m.insert("creationTimestamp".into(), Value::from(ids::now_rfc3339()));
    }
    m.insert("generation".into(), Value::from(1));
    m.remove("resourceVersion");
    m.remove("deletionTimestamp");
    if !opts.direct {
        m.remove("managedFields");
    }
}

/// Copies what the server owns from the stored object into an update (a direct write may set
/// `creationTimestamp`).
pub(crate) fn carry_server_meta(old: &Value, new: &mut Value, opts: &WriteOpts) {
    let Some(old_m) = old.get("metadata").and_then(Value::as_object) else {
        return;
    };
    let Some(m) = meta_mut(new) else { return };
    let keep_ts = opts.direct && m.get("creationTimestamp").is_some_and(Value::is_string);
    for key in [
        "uid",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
        "namespace",
    ] {
        if key == "creationTimestamp" && keep_ts {
            continue;
        }
        match old_m.get(key) {
            Some(v) => m.insert(key.into(), v.clone()),
            None => m.remove(key),
        };
    }
    if !m.contains_key("managedFields") {
        if let Some(mf) = old_m.get("managedFields") {
            m.insert("managedFields".into(), mf.clone());
        }
    }
}

/// Everything except metadata and status: what a generation bump is about.
fn spec_part(obj: &Value) -> Map<String, Value> {
    let mut m = obj.as_object().cloned().unwrap_or_default();
    m.remove("metadata");
    m.remove("status");
    m
}

/// Bumps `metadata.generation` when anything outside metadata and status changed.
pub(crate) fn bump_generation(old: &Value, new: &mut Value) {
    if spec_part(old) == spec_part(new) {
        return;
    }
    let g = old
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if let Some(m) = meta_mut(new) {
        m.insert("generation".into(), Value::from(g + 1));
    }
}

/// Whether an update changes nothing but the resource version and managed-field times (the
/// real server then skips the write: no new resourceVersion, no event).
pub(crate) fn is_noop(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = meta_mut(&mut v) {
            m.remove("resourceVersion");
            if let Some(Value::Array(mf)) = m.get_mut("managedFields") {
                for e in mf.iter_mut().filter_map(Value::as_object_mut) {
                    e.remove("time");
                }
            }
        }
        v
    };
    strip(old) == strip(new)
}

/// The simplified `fieldsV1` set of an applied object: every map key it sets, arrays as leaves.
fn field_set(v: &Value, top: bool) -> Value {
    let Some(map) = v.as_object() else {
        return json!({});
    };
    let mut out = Map::new();
    for (k, sub) in map {
        if top && (k == "apiVersion" || k == "kind") {
            continue;
        }
        let sub_set = if top && k == "metadata" {
            let mut meta = sub.clone();
            if let Some(m) = meta.as_object_mut() {
                for skip in [
                    "name",
                    "namespace",
                    "uid",
                    "resourceVersion",
                    "creationTimestamp",
                    "managedFields",
                    "generation",
                ] {
                    m.remove(skip);
                }
            }
            field_set(&meta, false)
        } else {
            field_set(sub, false)
        };
        out.insert(format!("f:{k}"), sub_set);
    }
    Value::Object(out)
}

/// Records `manager` as owner of the fields in `applied` (replacing its earlier entry for the
/// same operation and subresource).
pub(crate) fn record_manager(
    obj: &mut Value,
    manager: &str,
    operation: &str,
    api_version: &str,
    subresource: Option<&str>,
    applied: &Value,
) {
    let mut entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": ids::now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": field_set(applied, true),
    });
    if let (Some(sub), Some(e)) = (subresource, entry.as_object_mut()) {
        e.insert("subresource".into(), Value::from(sub));
    }
    let Some(m) = meta_mut(obj) else { return };
    let list = m
        .entry("managedFields")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !list.is_array() {
        *list = Value::Array(Vec::new());
    }
    if let Value::Array(entries) = list {
        entries.retain(|e| {
            !(e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some(operation)
                && e.get("subresource").and_then(Value::as_str) == subresource)
        });
        entries.push(entry);
    }
}

/// Defaults the real server applies on create for some built-in kinds (clusterIP allocation,
/// port protocol, namespace phase, pod phase).
pub(crate) fn apply_defaults(ty: &ResourceType, obj: &mut Value, next_ip: &mut u32) {
    match (ty.group.as_str(), ty.kind.as_str()) {
        ("", "Service") => service_defaults(obj, next_ip),
        ("", "Namespace") => {
            if obj.pointer("/status/phase").is_none() {
                set_path(obj, "status", json!({"phase": "Active"}));
            }
            if obj.pointer("/spec/finalizers").is_none() {
                set_path(obj, "spec", json!({"finalizers": ["kubernetes"]}));
            }
        }
        ("", "Pod") if obj.pointer("/status/phase").is_none() => {
            set_path(obj, "status", json!({"phase": "Pending"}));
        }
        _ => {}
    }
}

fn set_path(obj: &mut Value, key: &str, v: Value) {
    if let Some(map) = obj.as_object_mut() {
        match (map.get_mut(key), v) {
            (Some(Value::Object(existing)), Value::Object(add)) => {
                for (k, val) in add {
                    existing.entry(k).or_insert(val);
                }
            }
            (_, v) => {
                map.insert(key.into(), v);
            }
        }
    }
}

fn service_defaults(obj: &mut Value, next_ip: &mut u32) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    spec.insert("type".into(), Value::from(ty.clone()));
    spec.entry("sessionAffinity")
        .or_insert_with(|| Value::from("None"));
    if ty != "ExternalName" {
        let ip = match spec.get("clusterIP").and_then(Value::as_str) {
            Some(ip) if !ip.is_empty() => ip.to_string(),
            _ => {
                *next_ip += 1;
                let n = *next_ip;
                format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff)
            }
        };
        spec.insert("clusterIP".into(), Value::from(ip.clone()));
        spec.entry("clusterIPs").or_insert_with(|| json!([ip]));
        spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
        spec.entry("ipFamilyPolicy")
            .or_insert_with(|| Value::from("SingleStack"));
        spec.entry("internalTrafficPolicy")
            .or_insert_with(|| Value::from("Cluster"));
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            p.entry("protocol").or_insert_with(|| Value::from("TCP"));
            if let Some(port) = p.get("port").cloned() {
                p.entry("targetPort").or_insert(port);
            }
        }
    }
}

/// On update, keeps the allocated cluster IPs when the new spec leaves them empty.
pub(crate) fn keep_allocated(ty: &ResourceType, old: &Value, new: &mut Value) {
    if ty.group.is_empty() && ty.kind == "Service" {
        for key in ["clusterIP", "clusterIPs"] {
            let empty = new
                .pointer(&format!("/spec/{key}"))
                .is_none_or(|v| v.as_str() == Some("") || v.is_null());
            if let (true, Some(v)) = (empty, old.pointer(&format!("/spec/{key}"))) {
                if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert(key.into(), v.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_set_skips_identity_fields() {
        let set = field_set(
            &json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a", "labels": {"x": "1"}},
                    "spec": {"ports": [1], "a": {"b": 2}}}),
            true,
        );
        assert_eq!(
            set,
            json!({"f:metadata": {"f:labels": {"f:x": {}}}, "f:spec": {"f:ports": {}, "f:a": {"f:b": {}}}})
        );
    }

    #[test]
    fn noop_ignores_resource_version() {
        let a = json!({"metadata": {"resourceVersion": "1", "name": "x"}});
        let b = json!({"metadata": {"resourceVersion": "2", "name": "x"}});
        assert!(is_noop(&a, &b));
        assert!(!is_noop(&a, &json!({"metadata": {"name": "y"}})));
    }

    #[test]
    fn names_are_dns_subdomains() {
        assert!(valid_name("web-1.a"));
        assert!(!valid_name("Web"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("-a"));
    }
}
