//! Kubernetes objects → the mesh model. This is the one boundary where Kubernetes object
//! shapes are read; everything past it sees [`causeway_model`] types.
//!
//! Each watched object becomes a compact *record* as soon as it arrives (the full object is
//! dropped), so a cluster with many pods costs the control plane little memory (Istio's
//! #41658). [`assemble`] joins the records of one cluster (EndpointSlice endpoints with their
//! Pod's service account and their Node's locality) into [`causeway_model::ClusterObjects`].

mod assemble;
mod mcs;
mod services;
mod workloads;

use std::fmt;
use std::path::PathBuf;

use causeway_model::{ClusterId, ObjectSource};

pub use assemble::{assemble, assemble_borrowed, Records, RecordsRef};
pub use mcs::{
    cluster_property, resource_version, service_export, service_import, ExportRecord, ImportRecord,
    CLUSTER_ID_PROPERTY,
};
pub use services::{endpoint_slice, service, SliceRecord};
pub use workloads::{node, pod, NodeRecord, PodRecord};

/// An object that could not be translated; it is left out and reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster {cluster}: {kind} {object}: {field}: {reason}")]
pub struct TranslateError {
    /// Cluster it came from.
    pub cluster: ClusterId,
    /// Object kind.
    pub kind: &'static str,
    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub object: String,
    /// The offending field, as a path.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Names one object of one cluster, for records and errors.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The cluster.
    pub cluster: &'a ClusterId,
    /// The object's kind.
    pub kind: &'static str,
    /// Its namespace (`None` for cluster-scoped kinds).
    pub namespace: Option<&'a str>,
    /// Its name.
    pub name: &'a str,
}

impl Origin<'_> {
    /// `namespace/name` or `name`.
    pub fn object(&self) -> String {
        match self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.to_owned(),
        }
    }

    /// An error about `field` of this object.
    pub fn error(&self, field: impl Into<String>, reason: impl Into<String>) -> TranslateError {
        TranslateError {
            cluster: self.cluster.clone(),
            kind: self.kind,
            object: self.object(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Where the object came from, for conditions and debug output:
    /// `kubernetes:<cluster>/<Kind>/<namespace>/<name>`.
    pub fn source(&self) -> ObjectSource {
        ObjectSource {
            file: PathBuf::from(self.to_string()),
            document: 0,
            line: 0,
        }
    }
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kubernetes:{}/{}/{}",
            self.cluster,
            self.kind,
            self.object()
        )
    }
}

/// Namespace of a namespaced object's metadata (`default` when absent, as the API server fills it).
pub(crate) fn namespace_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// Name of an object (empty when absent; the API server never sends that).
pub(crate) fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

/// A port number from a Kubernetes `int32`.
pub(crate) fn port_number(
    origin: &Origin<'_>,
    field: &str,
    value: i32,
) -> Result<u16, TranslateError> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(origin.error(field, format!("{value} is not a port number (1-65535)"))),
    }
}
