//! Writes: create, replace, patch (merge, JSON, simplified server-side apply), delete, and the
//! status subresource rules.

use std::sync::Arc;

use serde_json::Value;

use super::meta::{self, WriteOpts};
use super::{crd, not_found, ChangeType, ObjKey, Store};
use crate::error::ApiError;
use crate::resources::{api_version, GroupResource, ResourceType};

/// A PATCH body, by content type.
#[derive(Debug, Clone)]
pub(crate) enum Patch {
    /// `application/merge-patch+json` (RFC 7386); strategic merge patch is treated the same.
    Merge(Value),
    /// `application/json-patch+json` (RFC 6902).
    Json(json_patch::Patch),
    /// `application/apply-patch+yaml`: server-side apply, simplified to a merge of the applied
    /// object into the live one, recorded under the field manager.
    Apply(Value),
}

/// DELETE preconditions (`preconditions` in DeleteOptions).
#[derive(Debug, Clone, Default)]
pub(crate) struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// Which field manager to record, with the operation and the fields it set.
struct Manager<'a> {
    name: &'a str,
    operation: &'static str,
    fields: Value,
}

fn conflict(ty: &ResourceType, name: &str) -> ApiError {
    let what = GroupResource::new(&ty.group, &ty.plural).qualified();
    ApiError::new(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
    )
    .with_details(&ty.group, &ty.plural, name)
}

fn normalize(ty: &ResourceType, obj: Value, opts: &WriteOpts) -> Result<Value, ApiError> {
    match (ty.normalize, opts.trusted) {
        (Some(f), false) => f(obj).map_err(|e| {
            ApiError::bad_request(format!(
                "error decoding the {} in the request body: {e}",
                ty.kind
            ))
        }),
        _ => Ok(obj),
    }
}

impl Store {
    fn resource(&self, gr: &GroupResource) -> Result<ResourceType, ApiError> {
        Ok(self.table(gr)?.ty.clone())
    }

    /// POST: creates an object (409 AlreadyExists if the name is taken).
    pub fn create(
        &mut self,
        gr: &GroupResource,
        version: &str,
        ns: Option<&str>,
        obj: Value,
        opts: &WriteOpts,
    ) -> Result<Arc<Value>, ApiError> {
        let manager = opts.field_manager.as_deref().map(|m| Manager {
            name: m,
            operation: "Update",
            fields: obj.clone(),
        });
        self.create_with(gr, version, ns, obj, opts, manager)
    }

    fn create_with(
        &mut self,
        gr: &GroupResource,
        version: &str,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOpts,
        manager: Option<Manager<'_>>,
    ) -> Result<Arc<Value>, ApiError> {
        let ty = self.resource(gr)?;
        meta::check_type(&ty, version, &mut obj)?;
        let mut obj = normalize(&ty, obj, opts)?;
        let ns = meta::resolve_namespace(&ty, ns, &mut obj)?;
        if !opts.direct && meta::meta_str(&obj, "resourceVersion").is_some() {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = meta::resolve_name(&ty, &mut obj)?;
        let key: ObjKey = (ns, name.clone());
        if self.table(gr)?.objects.contains_key(&key) {
            let what = gr.qualified();
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{what} \"{name}\" already exists"),
            )
            .with_details(&ty.group, &ty.plural, &name));
        }
        meta::fill_create_meta(&mut obj, opts);
        if ty.status_subresource && !opts.direct {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        meta::apply_defaults(&ty, &mut obj, &mut self.next_ip);
        if let Some(m) = manager {
            meta::record_manager(
                &mut obj,
                m.name,
                m.operation,
                &api_version(&ty.group, version),
                None,
                &m.fields,
            );
        }
        let defined = crd::prepare(gr, &mut obj)?;
        if opts.dry_run {
            return Ok(Arc::new(obj));
        }
        let stored = self.commit(gr, key, ChangeType::Added, obj, None)?;
        if let Some(specs) = defined {
            self.register_crd(&name, &specs);
        }
        Ok(stored)
    }

    /// PUT: replaces an object (409 on a stale `resourceVersion`, 404 if absent). With
    /// `status`, only the status is taken from `obj`.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        gr: &GroupResource,
        version: &str,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        status: bool,
        opts: &WriteOpts,
    ) -> Result<Arc<Value>, ApiError> {
        let manager = opts.field_manager.as_deref().map(|m| Manager {
            name: m,
            operation: "Update",
            fields: obj.clone(),
        });
        self.update_with(gr, version, ns, name, obj, status, opts, manager)
    }

    #[allow(clippy::too_many_arguments)]
    fn update_with(
        &mut self,
        gr: &GroupResource,
        version: &str,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        status: bool,
        opts: &WriteOpts,
        manager: Option<Manager<'_>>,
    ) -> Result<Arc<Value>, ApiError> {
        let ty = self.resource(gr)?;
        meta::check_type(&ty, version, &mut obj)?;
        let mut obj = normalize(&ty, obj, opts)?;
        let ns = meta::resolve_namespace(&ty, ns, &mut obj)?;
        match meta::meta_str(&obj, "name") {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            _ => {}
        }
        let key: ObjKey = (ns, name.to_string());
        let old = self
            .table(gr)?
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(&ty, name))?;
        let given_rv = meta::meta_str(&obj, "resourceVersion").map(str::to_string);
        if !opts.direct
            && given_rv.is_some()
            && given_rv.as_deref() != meta::meta_str(&old, "resourceVersion")
        {
            return Err(conflict(&ty, name));
        }
        let mut new = merge_update(&ty, &old, obj, status, opts);
        if let Some(m) = manager {
            let sub = status.then_some("status");
            meta::record_manager(
                &mut new,
                m.name,
                m.operation,
                &api_version(&ty.group, version),
                sub,
                &m.fields,
            );
        }
        let defined = crd::prepare(gr, &mut new)?;
        if meta::is_noop(&old, &new) {
            return Ok(old);
        }
        if opts.dry_run {
            return Ok(Arc::new(new));
        }
        let stored = self.commit(gr, key, ChangeType::Modified, new, Some(old))?;
        if let Some(specs) = defined {
            self.register_crd(name, &specs);
        }
        Ok(stored)
    }

    /// Direct-store apply: creates, or replaces ignoring `resourceVersion`.
    pub fn upsert(
        &mut self,
        gr: &GroupResource,
        version: &str,
        obj: Value,
        opts: &WriteOpts,
    ) -> Result<Arc<Value>, ApiError> {
        let ty = self.resource(gr)?;
        let ns = if ty.namespaced {
            meta::meta_str(&obj, "namespace")
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let name = meta::meta_str(&obj, "name").unwrap_or_default().to_string();
        let exists = self
            .table(gr)?
            .objects
            .contains_key(&(ns.clone(), name.clone()));
        let ns_arg = ty.namespaced.then_some(ns.as_str());
        if exists {
            self.update(gr, version, ns_arg, &name, obj, false, opts)
        } else {
            self.create(gr, version, ns_arg, obj, opts)
        }
    }

    /// PATCH: applies a patch to the live object (or, for apply, creates it when absent).
    /// Returns the stored object and whether it was created.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        gr: &GroupResource,
        version: &str,
        ns: Option<&str>,
        name: &str,
        patch: Patch,
        status: bool,
        opts: &WriteOpts,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        let ty = self.resource(gr)?;
        let key: ObjKey = (ns.unwrap_or_default().to_string(), name.to_string());
        let Some(old) = self.table(gr)?.objects.get(&key).cloned() else {
            return match patch {
                Patch::Apply(obj) if !status => {
                    let obj = check_applied(&ty, version, name, obj)?;
                    let manager = apply_manager(opts, &obj)?;
                    let created = self.create_with(gr, version, ns, obj, opts, Some(manager))?;
                    Ok((created, true))
                }
                _ => Err(not_found(&ty, name)),
            };
        };
        let mut doc = (*old).clone();
        if let Some(m) = doc.as_object_mut() {
            m.insert(
                "apiVersion".into(),
                Value::from(api_version(&ty.group, version)),
            );
        }
        let manager = match patch {
            Patch::Merge(p) => {
                json_patch::merge(&mut doc, &p);
                opts.field_manager.as_deref().map(|m| Manager {
                    name: m,
                    operation: "Update",
                    fields: p,
                })
            }
            Patch::Json(ops) => {
                json_patch::patch(&mut doc, &ops.0).map_err(|e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                    )
                })?;
                None
            }
            Patch::Apply(obj) => {
                let obj = check_applied(&ty, version, name, obj)?;
                json_patch::merge(&mut doc, &obj);
                Some(apply_manager(opts, &obj)?)
            }
        };
        let updated = self.update_with(gr, version, ns, name, doc, status, opts, manager)?;
        Ok((updated, false))
    }

    /// DELETE: removes an object and emits DELETED (a namespace takes its objects with it, a
    /// CRD its resource).
    pub fn delete(
        &mut self,
        gr: &GroupResource,
        ns: Option<&str>,
        name: &str,
        pre: &Preconditions,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let ty = self.resource(gr)?;
        let key: ObjKey = (ns.unwrap_or_default().to_string(), name.to_string());
        let old = self.get(gr, &key.0, name)?;
        check_preconditions(&old, pre)?;
        if dry_run {
            return Ok(old);
        }
        if ty.group.is_empty() && ty.kind == "Namespace" {
            self.delete_namespace_contents(name)?;
        }
        let deleted = self.delete_key(gr, &key)?;
        if ty.group == "apiextensions.k8s.io" {
            let defined: Vec<GroupResource> = self
                .tables
                .iter()
                .filter(|(_, t)| t.ty.crd.as_deref() == Some(name))
                .map(|(gr, _)| gr.clone())
                .collect();
            for gr in defined {
                self.unserve(&gr)?;
            }
        }
        Ok(deleted)
    }

    fn delete_namespace_contents(&mut self, ns: &str) -> Result<(), ApiError> {
        let doomed: Vec<(GroupResource, ObjKey)> = self
            .tables
            .iter()
            .filter(|(_, t)| t.ty.namespaced)
            .flat_map(|(gr, t)| {
                super::snapshot::range(&t.objects, Some(ns))
                    .map(move |(k, _)| (gr.clone(), k.clone()))
            })
            .collect();
        for (gr, key) in doomed {
            self.delete_key(&gr, &key)?;
        }
        Ok(())
    }
}

/// The object an update stores: for `/status`, the live object with the new status; for
/// the main resource, the new object with server-owned metadata (and, with a status
/// subresource, the live status; for a direct write without status, the live one) carried
/// over.
fn merge_update(
    ty: &ResourceType,
    old: &Value,
    mut obj: Value,
    status: bool,
    opts: &WriteOpts,
) -> Value {
    let copy_status = |from: &Value, to: &mut Value| {
        if let Some(m) = to.as_object_mut() {
            match from.get("status") {
                Some(s) => m.insert("status".into(), s.clone()),
                None => m.remove("status"),
            };
        }
    };
    if status {
        let mut n = old.clone();
        copy_status(&obj, &mut n);
        return n;
    }
    meta::carry_server_meta(old, &mut obj, opts);
    // A direct write sets status only when it gives one.
    let direct_keeps = opts.direct && obj.get("status").is_none();
    if (ty.status_subresource && !opts.direct) || direct_keeps {
        copy_status(old, &mut obj);
    }
    meta::keep_allocated(ty, old, &mut obj);
    meta::bump_generation(old, &mut obj);
    obj
}

fn check_preconditions(obj: &Value, pre: &Preconditions) -> Result<(), ApiError> {
    let check = |what: &str, want: &Option<String>, field: &str| match want {
        Some(w) if Some(w.as_str()) != meta::meta_str(obj, field) => Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Precondition failed: {what} in precondition: {w}, {what} in object meta: {}",
                meta::meta_str(obj, field).unwrap_or_default()
            ),
        )),
        _ => Ok(()),
    };
    check("UID", &pre.uid, "uid")?;
    check("ResourceVersion", &pre.resource_version, "resourceVersion")
}

/// An applied object must name its type (the addressed one) and match the URL.
fn check_applied(
    ty: &ResourceType,
    version: &str,
    name: &str,
    mut obj: Value,
) -> Result<Value, ApiError> {
    let want = [
        ("apiVersion", api_version(&ty.group, version)),
        ("kind", ty.kind.clone()),
    ];
    for (field, expected) in want {
        match obj.get(field).and_then(Value::as_str) {
            None | Some("") => return Err(ApiError::bad_request(format!("{field} must be set"))),
            Some(got) if got != expected => {
                return Err(ApiError::bad_request(format!(
                "the {field} in the applied object ({got}) does not match the request ({expected})"
            )))
            }
            Some(_) => {}
        }
    }
    match meta::meta_str(&obj, "name") {
        Some(n) if n != name => Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        ))),
        Some(_) => Ok(obj),
        None => {
            if let Some(m) = meta::meta_mut(&mut obj) {
                m.insert("name".into(), Value::from(name));
            }
            Ok(obj)
        }
    }
}

fn apply_manager<'a>(opts: &'a WriteOpts, applied: &Value) -> Result<Manager<'a>, ApiError> {
    let name = opts.field_manager.as_deref().ok_or_else(|| {
        ApiError::bad_request("PATCH, fieldManager: Required value: is required for apply patch")
    })?;
    Ok(Manager {
        name,
        operation: "Apply",
        fields: applied.clone(),
    })
}
