//! Direct store access for tests: no HTTP, no auth, the same semantics and watch events as
//! API writes, except that direct writes keep a given `status` and `creationTimestamp` (so
//! tests can set pod IPs or an export's age) and ignore `resourceVersion` preconditions.

use serde_json::Value;

use crate::error::FakeError;
use crate::resources::{split_api_version, ResourceSpec};
use crate::server::lock;
use crate::store::{Patch, Preconditions, WriteOpts};
use crate::FakeApiServer;

fn direct(trusted: bool) -> WriteOpts {
    WriteOpts {
        direct: true,
        trusted,
        ..WriteOpts::default()
    }
}

fn type_of(obj: &Value) -> Result<(String, String), FakeError> {
    let s = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (api_version, kind) = (s("apiVersion"), s("kind"));
    if api_version.is_empty() || kind.is_empty() {
        return Err(crate::ApiError::bad_request("the object must set apiVersion and kind").into());
    }
    Ok((api_version, kind))
}

/// The object as seen in `api_version` (it may be stored under another served version).
fn present(obj: &Value, api_version: &str) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), Value::from(api_version));
    }
    v
}

impl FakeApiServer {
    fn write(&self, obj: Value, upsert: bool, trusted: bool) -> Result<Value, FakeError> {
        let (api_version, kind) = type_of(&obj)?;
        let (_, version) = split_api_version(&api_version);
        let mut store = lock(&self.shared.inner.store);
        let gr = store.resolve_kind(&api_version, &kind)?.gr();
        let opts = direct(trusted);
        let stored = if upsert {
            store.upsert(&gr, version, obj, &opts)?
        } else {
            let ns = crate::store::meta_str(&obj, "namespace").map(str::to_string);
            store.create(&gr, version, ns.as_deref(), obj, &opts)?
        };
        Ok(present(&stored, &api_version))
    }

    /// Creates a typed object (409 AlreadyExists as a [`FakeError::Api`] if it exists).
    pub fn create<K: k8s_openapi::Resource + serde::Serialize>(
        &self,
        obj: &K,
    ) -> Result<Value, FakeError> {
        self.write(serde_json::to_value(obj)?, false, true)
    }

    /// Creates or replaces a typed object, ignoring `resourceVersion`.
    pub fn apply_object<K: k8s_openapi::Resource + serde::Serialize>(
        &self,
        obj: &K,
    ) -> Result<Value, FakeError> {
        self.write(serde_json::to_value(obj)?, true, true)
    }

    /// Creates an object given as JSON with `apiVersion` and `kind` (for CRD kinds).
    pub fn create_json(&self, obj: Value) -> Result<Value, FakeError> {
        self.write(obj, false, false)
    }

    /// Creates or replaces an object given as JSON, ignoring `resourceVersion`.
    pub fn apply_json(&self, obj: Value) -> Result<Value, FakeError> {
        self.write(obj, true, false)
    }

    /// Applies an RFC 7386 merge patch to an object, status included (404 if absent).
    pub fn merge_patch_json(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value, FakeError> {
        let (_, version) = split_api_version(api_version);
        let mut store = lock(&self.shared.inner.store);
        let gr = store.resolve_kind(api_version, kind)?.gr();
        let (obj, _) = store.patch(
            &gr,
            version,
            namespace,
            name,
            Patch::Merge(patch),
            false,
            &direct(false),
        )?;
        Ok(present(&obj, api_version))
    }

    /// Sets `metadata.creationTimestamp` (RFC 3339), which the API itself never lets a
    /// client choose; emits MODIFIED like any write.
    pub fn set_creation_timestamp(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        timestamp: &str,
    ) -> Result<Value, FakeError> {
        let patch = serde_json::json!({"metadata": {"creationTimestamp": timestamp}});
        self.merge_patch_json(api_version, kind, namespace, name, patch)
    }

    /// Deletes an object (emits DELETED; 404 as a [`FakeError::Api`] if absent).
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), FakeError> {
        let mut store = lock(&self.shared.inner.store);
        let gr = store.resolve_kind(api_version, kind)?.gr();
        store.delete(&gr, namespace, name, &Preconditions::default(), false)?;
        Ok(())
    }

    /// One object as JSON, if it exists.
    pub fn get_json(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let store = lock(&self.shared.inner.store);
        let gr = store.resolve_kind(api_version, kind).ok()?.gr();
        let obj = store.get(&gr, namespace.unwrap_or_default(), name).ok()?;
        Some(present(&obj, api_version))
    }

    /// Every object of a kind, in namespace/name order.
    pub fn list_json(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let store = lock(&self.shared.inner.store);
        let Ok(ty) = store.resolve_kind(api_version, kind) else {
            return Vec::new();
        };
        let gr = ty.gr();
        store
            .all(&gr)
            .iter()
            .map(|o| present(o, api_version))
            .collect()
    }

    /// Bulk load of typed objects under one lock (each still gets its own version and event).
    /// Returns how many were created.
    pub fn load<K: k8s_openapi::Resource + serde::Serialize>(
        &self,
        objs: &[K],
    ) -> Result<usize, FakeError> {
        let values = objs
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()?;
        self.load_values(values, true)
    }

    /// Bulk load of JSON objects (each with `apiVersion` and `kind`) under one lock.
    pub fn load_json(&self, objs: Vec<Value>) -> Result<usize, FakeError> {
        self.load_values(objs, false)
    }

    fn load_values(&self, objs: Vec<Value>, trusted: bool) -> Result<usize, FakeError> {
        let mut store = lock(&self.shared.inner.store);
        let opts = direct(trusted);
        let mut n = 0;
        for obj in objs {
            let (api_version, kind) = type_of(&obj)?;
            let gr = store.resolve_kind(&api_version, &kind)?.gr();
            let (_, version) = split_api_version(&api_version);
            let ns = crate::store::meta_str(&obj, "namespace").map(str::to_string);
            store.create(&gr, version, ns.as_deref(), obj, &opts)?;
            n += 1;
        }
        Ok(n)
    }

    /// Serves another resource (or another version of a served one), as a CRD would.
    pub fn serve(&self, spec: ResourceSpec) {
        lock(&self.shared.inner.store).serve(&spec);
    }

    /// The current resource version (the last write's).
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.inner.store).resource_version()
    }

    /// Forgets all watch history up to now: watches and continue tokens from older versions
    /// get 410 Expired.
    pub fn compact(&self) {
        lock(&self.shared.inner.store).compact();
    }
}
