//! Causeway registries.
//!
//! The embedded default is the *mesh directory*: `mesh.yaml` (one `Mesh`, one `Cluster` per
//! member) and `clusters/<cluster-id>/*.yaml` with each cluster's Kubernetes-style objects. This
//! crate is the one boundary where that wire format is parsed and validated into
//! [`causeway_model`] types; errors name the file, document, line, object and field.
//! [`MeshDirectory`] keeps the last good state of every cluster when a file breaks, and
//! [`watch`] reports changes as they happen.

mod error;
mod file;
mod state;
pub mod watch;
mod wire;

pub use error::LoadError;
pub use file::{load_cluster_dir, load_mesh_file, parse_cluster_documents, parse_mesh_documents};
pub use state::{ClusterSlot, MeshDirectory, ReloadOutcome, ReloadScope};
