//! One write-back pass's requests.

use std::collections::BTreeSet;
use std::future::Future;

use causeway_model::{ClusterId, ServiceKey};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::discovery::ApiResource;
use serde_json::{json, Value};

use crate::error::bounded;
use crate::session::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::translate::{ExportRecord, ImportRecord};
use crate::KubeError;

use super::compare::{clusters_match, conditions_match, contains, ours};
use super::render::{condition_values, import_spec, import_status};
use super::{
    DesiredCondition, DesiredImport, Target, WriteBackError, WriteBackOutcome, FIELD_MANAGER,
};

/// The field manager a server-side apply conflict names (`conflict with "name" ...`).
fn conflicting_manager(status: &kube::core::Status) -> Option<String> {
    let causes = status.details.iter().flat_map(|d| d.causes.iter());
    causes
        .map(|c| c.message.as_str())
        .chain(std::iter::once(status.message.as_str()))
        .find_map(|m| {
            let rest = m.split_once("conflict with \"")?.1;
            Some(rest.split_once('"')?.0.to_owned())
        })
}
/// One pass's requests: stops at the first timeout, collects errors.
pub(super) struct Pass<'a> {
    pub(super) target: &'a Target,
    pub(super) outcome: WriteBackOutcome,
    /// An earlier request timed out: the rest of the pass is skipped.
    pub(super) halted: bool,
}

impl Pass<'_> {
    fn api(&self, namespace: &str, resource: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.target.client.clone(), namespace, resource)
    }

    /// Runs one request within the time limit; `None` when skipped after a timeout.
    async fn send<T>(
        &mut self,
        what: &str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Option<Result<T, KubeError>> {
        if self.halted {
            self.outcome.skipped += 1;
            return None;
        }
        let result = bounded(&self.target.cluster, what, self.target.timeout, request).await;
        if matches!(result, Err(KubeError::Timeout { .. })) {
            self.halted = true;
        }
        Some(result)
    }

    /// Records a failed write of `kind` `key`, naming the other field manager on a conflict.
    fn failed(&mut self, e: KubeError, kind: &'static str, key: &ServiceKey) {
        let message = match &e {
            KubeError::Api {
                source: kube::Error::Api(status),
                ..
            } if status.is_conflict() => WriteBackError::Conflict {
                cluster: self.target.cluster.clone(),
                kind,
                key: key.clone(),
                manager: conflicting_manager(status).map_or_else(
                    || "another field manager".to_owned(),
                    |m| format!("field manager {m:?}"),
                ),
                message: status.message.clone(),
            }
            .to_string(),
            _ => e.to_string(),
        };
        self.outcome.errors.push(message);
    }

    /// Applies `body` to `kind` `key` (its status subresource when `status`); whether it was
    /// written.
    async fn apply(
        &mut self,
        kind: &'static str,
        key: &ServiceKey,
        body: Value,
        status: bool,
    ) -> bool {
        let resource = if kind == "ServiceImport" {
            &self.target.import_resource
        } else {
            &self.target.export_resource
        };
        let api = self.api(&key.namespace, resource);
        let params = PatchParams::apply(FIELD_MANAGER);
        let patch = Patch::Apply(&body);
        let result = if status {
            let what = format!("applying the status of {kind} {key}");
            self.send(&what, api.patch_status(&key.name, &params, &patch))
                .await
        } else {
            let what = format!("applying {kind} {key}");
            self.send(&what, api.patch(&key.name, &params, &patch))
                .await
        };
        match result {
            Some(Ok(obj)) => {
                if let Some(rv) = crate::translate::resource_version(&obj) {
                    let k = (key.namespace.clone(), key.name.clone());
                    self.outcome.written.insert((kind, k), rv);
                }
                true
            }
            Some(Err(e)) => {
                self.failed(e, kind, key);
                false
            }
            None => false,
        }
    }

    /// Applies what differs of one desired ServiceImport: its spec, then its status.
    pub(super) async fn import(
        &mut self,
        import: &DesiredImport,
        have: Option<&ImportRecord>,
        mesh: &BTreeSet<ClusterId>,
    ) {
        let api_version = &self.target.import_resource.api_version;
        let (name, namespace) = (&import.key.name, &import.key.namespace);
        let spec = import_spec(import);
        if have.is_none_or(|h| !contains(&h.spec, &spec)) {
            let body = json!({
                "apiVersion": api_version,
                "kind": "ServiceImport",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {MANAGED_BY_LABEL: MANAGED_BY},
                },
                "spec": spec,
            });
            if !self.apply("ServiceImport", &import.key, body, false).await {
                return;
            }
            self.outcome.imports_applied += 1;
        }
        if have.is_none_or(|h| !clusters_match(&h.status, import, mesh)) {
            let body = json!({
                "apiVersion": api_version,
                "kind": "ServiceImport",
                "metadata": {"name": name, "namespace": namespace},
                "status": import_status(import),
            });
            self.apply("ServiceImport", &import.key, body, true).await;
        }
    }

    /// Deletes a ServiceImport no longer desired, if it is Causeway's: read first (label and
    /// field manager), then deleted with its uid as precondition, so an object replaced in
    /// between is left alone.
    pub(super) async fn delete(&mut self, key: &ServiceKey) {
        let api = self.api(&key.namespace, &self.target.import_resource);
        let what = format!("reading ServiceImport {key} before deleting it");
        let obj = match self.send(&what, api.get_opt(&key.name)).await {
            Some(Ok(Some(obj))) => obj,
            Some(Ok(None)) | None => return,
            Some(Err(e)) => return self.failed(e, "ServiceImport", key),
        };
        if !ours(&obj) {
            tracing::info!(cluster = %self.target.cluster, import = %key, "not deleting ServiceImport {key}: it carries Causeway's label but Causeway is not among its field managers");
            return;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: obj.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let what = format!("deleting ServiceImport {key} (no cluster exports it here any more)");
        match self.send(&what, api.delete(&key.name, &params)).await {
            Some(Ok(_)) => self.outcome.imports_deleted += 1,
            // Gone already, or replaced since it was read: the watch brings the new state.
            Some(Err(KubeError::Api {
                source: kube::Error::Api(s),
                ..
            })) if s.is_not_found() || s.is_conflict() => {}
            Some(Err(e)) => self.failed(e, "ServiceImport", key),
            None => {}
        }
    }

    /// Sets the conditions Causeway owns on one ServiceExport, if they differ.
    pub(super) async fn export(
        &mut self,
        record: &ExportRecord,
        wanted: &[DesiredCondition],
        now: &str,
    ) {
        if conditions_match(&record.conditions, wanted) {
            return;
        }
        let key = &record.export.key;
        let body = json!({
            "apiVersion": self.target.export_resource.api_version,
            "kind": "ServiceExport",
            "metadata": {"name": key.name, "namespace": key.namespace},
            "status": {"conditions": condition_values(&record.conditions, wanted, now)},
        });
        if self.apply("ServiceExport", key, body, true).await {
            self.outcome.exports_updated += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_names_the_other_manager() {
        let status = kube::core::Status::failure(
            "Apply failed with 1 conflict: conflict with \"other-mcs\" using multicluster.x-k8s.io/v1alpha1: .spec.ports",
            "Conflict",
        )
        .with_code(409);
        assert_eq!(conflicting_manager(&status).as_deref(), Some("other-mcs"));
        let e = WriteBackError::Conflict {
            cluster: ClusterId::new("east").expect("id"),
            kind: "ServiceImport",
            key: ServiceKey::new("demo", "echo"),
            manager: "field manager \"other-mcs\"".into(),
            message: status.message.clone(),
        };
        let text = e.to_string();
        assert!(
            text.starts_with(
                "cluster east: ServiceImport demo/echo is managed by field manager \"other-mcs\""
            ),
            "{text}"
        );
        let bare = kube::core::Status::failure("conflict", "Conflict").with_code(409);
        assert_eq!(conflicting_manager(&bare), None);
    }
}
