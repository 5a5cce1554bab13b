//! The kinds of a cluster directory, one module each, and the mesh-wide `TrafficPolicy`.

mod endpoint_slice;
mod policy;
mod service;
mod service_export;
mod traffic;
mod workload_entry;

pub(super) use endpoint_slice::parse_endpoint_slice;
pub(super) use policy::parse_policy;
pub use policy::policy_from_spec;
pub(super) use service::parse_service;
pub(super) use service_export::parse_service_export;
pub(super) use traffic::parse_traffic_policy;
pub use traffic::traffic_policy_from_spec;
pub(super) use workload_entry::parse_workload_entry;
