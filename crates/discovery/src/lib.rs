//! Causeway's discovery: the mesh index and per-proxy views.
//!
//! Data flows one way: validated cluster objects ([`causeway_model::ClusterObjects`]) are
//! resolved per cluster ([`ClusterIndex`]), merged across clusters by namespace and name with
//! MCS export semantics ([`MeshIndex`], [`MeshService`]), and turned into what one proxy must see
//! ([`view`]): split horizon, locality priority, gateway aggregation. Everything here is pure:
//! no I/O, no clocks, so every rule is unit-tested and property-tested.

mod check;
mod cluster_index;
mod failover_priority;
mod gateway;
mod gateway_health;
mod index;
mod names;
pub mod policy;
mod shape;
mod traffic;
pub mod view;

pub use check::{check_mesh, Diagnostic, Severity};
pub use cluster_index::{
    ClusterIndex, ClusterService, Labels, PortEndpoints, ResolvedEndpoint, WorkloadPlacement,
};
pub use index::{
    AgeSource, Condition, ConditionKind, ExportState, MeshIndex, MeshService, ServiceImport,
};
pub use view::{
    EndpointKind, HiddenEndpoint, HiddenService, LocalityGroup, PolicyInForce, ProxyContext,
    ProxyView, ViewEndpoint, ViewError, ViewPort, ViewRoute, ViewService, NO_IDENTITY_REASON,
};
