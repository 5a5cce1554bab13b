//! Causeway registries.
//!
//! The embedded default is the *mesh directory*: `mesh.yaml` (one `Mesh`, one `Cluster` per
//! member, mesh-wide `TrafficPolicy` objects), `policies/**/*.yaml` (more `TrafficPolicy`
//! objects) and `clusters/<cluster-id>/*.yaml` with each cluster's Kubernetes-style objects. This
//! crate is the one boundary where that wire format is parsed and validated into
//! [`causeway_model`] types; errors name the file, document, line, object and field.
//! [`MeshDirectory`] keeps the last good state of the mesh scope (mesh settings and traffic
//! policies) and of every cluster when a file breaks, and
//! [`watch`] reports changes as they happen. [`upsert_cluster`] and [`write_mesh_file`] edit
//! `mesh.yaml` for `causeway link`, keeping every other document's text and comments.

mod edit;
mod error;
mod file;
mod state;
pub mod watch;
mod wire;

pub use edit::{upsert_cluster, write_mesh_file, ClusterEntry, EditAction, EditError, Edited};
pub use error::LoadError;
pub use file::{
    check_traffic_policies, load_cluster_dir, load_mesh_file, parse_cluster_documents,
    parse_mesh_documents, CLUSTER_LOCAL_ANNOTATION, EXPORT_TO_ANNOTATION, POLICIES_DIR,
    SERVICE_ACCOUNT_ANNOTATION, SERVICE_NAME_LABEL,
};
pub use state::{ClusterSlot, MeshDirectory, ReloadOutcome, ReloadScope};

/// The `causeway.io/v1alpha1` `AuthorizationPolicy` wire format and its validation into
/// [`causeway_model::AuthorizationPolicy`], shared by every registry (the mesh directory and the
/// Kubernetes custom resource) so both accept exactly the same policies.
pub mod policy_wire {
    pub use crate::file::policy_from_spec;
    pub use crate::wire::{AuthorizationPolicySpec, PolicyRule, PolicySource, PolicyTarget};
}

/// The `causeway.io/v1alpha1` `TrafficPolicy` wire format, its validation into
/// [`causeway_model::TrafficPolicy`] and the checks across policies, shared by every registry
/// (the mesh directory and the Kubernetes custom resource) so both accept exactly the same
/// policies.
pub mod traffic_wire {
    pub use crate::file::{check_traffic_policies, traffic_policy_from_spec};
    pub use crate::wire::{
        LocalityDistribute, RegionFailover, TrafficCallers, TrafficCluster,
        TrafficOutlierDetection, TrafficPolicySpec, TrafficRetries, TrafficRoute, TrafficSubset,
    };
}
