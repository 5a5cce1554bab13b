//! What the control plane reports about each Kubernetes member cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use causeway_model::{ClusterId, ClusterObjects};
use serde::{Serialize, Serializer};

use crate::apis::ServedApis;

/// Where a cluster's registry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// No complete list yet: the cluster contributes nothing (never an empty set).
    Syncing,
    /// Watches are current.
    Synced,
    /// The API server cannot be reached or its watches fail: the last good state is served.
    Stale,
}

/// One cluster's registry status.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSyncStatus {
    /// Syncing, synced or stale.
    pub state: SyncState,
    /// Since when the last good state has been served without a working connection.
    #[serde(serialize_with = "rfc3339")]
    pub stale_since: Option<SystemTime>,
    /// When the current state last completed a full list.
    #[serde(serialize_with = "rfc3339")]
    pub last_synced: Option<SystemTime>,
    /// The stale cluster's endpoints were withdrawn (`staleEndpointTtl` elapsed).
    pub withdrawn: bool,
    /// Current problems, each naming the cluster and what failed.
    pub errors: Vec<String>,
    /// Optional APIs the cluster serves.
    pub apis: Option<ServedApis>,
    /// Bumped each time new credentials (a changed kubeconfig) took over.
    pub credentials_generation: u64,
    /// A changed kubeconfig is being tried (its watches are listing); the previous
    /// credentials keep serving until it is synced.
    pub rotation_pending: bool,
}

impl ClusterSyncStatus {
    /// A cluster that has not listed yet.
    pub fn syncing() -> Self {
        Self {
            state: SyncState::Syncing,
            stale_since: None,
            last_synced: None,
            withdrawn: false,
            errors: Vec::new(),
            apis: None,
            credentials_generation: 0,
            rotation_pending: false,
        }
    }

    /// How long it has been stale, if it is.
    pub fn stale_for(&self) -> Option<Duration> {
        self.stale_since
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
    }
}

fn rfc3339<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        None => s.serialize_none(),
        Some(t) => match k8s_openapi::jiff::Timestamp::try_from(*t) {
            Ok(ts) => s.serialize_str(&ts.to_string()),
            Err(_) => s.serialize_none(),
        },
    }
}

/// A cluster's new state, sent to the control plane.
#[derive(Debug, Clone)]
pub struct ClusterUpdate {
    /// The cluster.
    pub cluster: ClusterId,
    /// Its objects; `None` when it contributes nothing (never synced, wrong cluster id, or
    /// removed from the mesh).
    pub objects: Option<Arc<ClusterObjects>>,
    /// Whether `objects` differ from the previous update's.
    pub objects_changed: bool,
    /// Its status.
    pub status: ClusterSyncStatus,
}

/// Problems by where they came from, so each is replaced or cleared on its own.
#[derive(Debug, Default, Clone)]
pub(crate) struct Problems(BTreeMap<String, String>);

impl Problems {
    pub(crate) fn set(&mut self, source: impl Into<String>, message: impl Into<String>) {
        self.0.insert(source.into(), message.into());
    }

    /// Clears one problem; whether there was one.
    pub(crate) fn clear(&mut self, source: &str) -> bool {
        self.0.remove(source).is_some()
    }

    pub(crate) fn clear_prefix(&mut self, prefix: &str) {
        self.0.retain(|k, _| !k.starts_with(prefix));
    }

    pub(crate) fn list(&self) -> Vec<String> {
        self.0.values().cloned().collect()
    }
}
