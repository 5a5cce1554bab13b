//! Causeway's Kubernetes registry: member clusters whose objects come from their API servers.
//!
//! A `Cluster` in `mesh.yaml` with `spec.kubernetes` is watched with kube-rs: Services,
//! EndpointSlices, Pods, Nodes, ServiceExports (MCS v1beta1 or v1alpha1, whichever the cluster
//! serves), Causeway's AuthorizationPolicy and TrafficPolicy CRDs (each optional) and the About
//! API's cluster id. Objects become compact records at one boundary ([`translate`]) and are
//! joined into the same [`causeway_model::ClusterObjects`] the mesh directory produces, so the
//! index, views and xDS do not know where a cluster came from.
//!
//! What the runtime guarantees, per cluster ([`registry::KubeRegistry`] runs one each):
//! - nothing reaches the index before every watch has completed its initial list, and a
//!   re-list swaps in atomically (no empty or partial state, no ghosts);
//! - an unreachable API server keeps the last good state, marked stale, and other clusters
//!   carry on; an optional `staleEndpointTtl` withdraws it later;
//! - a changed kubeconfig takes over only after its own watches have synced;
//! - MCS write-back (ServiceImports, ServiceExport conditions) by server-side apply;
//! - TokenReview of projected ServiceAccount tokens for the mesh CA ([`token_review`]).

pub mod apis;
pub mod client;
mod cluster;
pub mod crd;
mod error;
pub mod rbac;
pub mod registry;
pub mod session;
pub mod status;
pub mod store;
pub mod token_review;
pub mod translate;
pub mod writeback;

pub use client::{ClientFactory, KubeconfigClientFactory, KubeconfigFile};
pub use cluster::KubeOptions;
pub use error::KubeError;
pub use registry::KubeRegistry;
pub use session::InitialList;
pub use status::{ClusterSyncStatus, ClusterUpdate, SyncState};
pub use token_review::{ReviewError, ReviewedToken, TokenReviewer, CA_AUDIENCE};
pub use writeback::{DesiredCondition, DesiredImport, McsDesired};
