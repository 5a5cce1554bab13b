//! Causeway's domain model.
//!
//! These are the validated, wire-format-free types that every other crate speaks: the mesh and
//! its clusters, networks and localities, the per-cluster objects (services, workload entries,
//! endpoint slices, exports, authorization policies) and the mesh-wide traffic policies.
//! Registries convert their own formats into these types at one boundary; nothing here does I/O.

mod ids;
mod locality;
mod mesh;
mod objects;
mod policy;
mod proxy;
mod traffic;

pub use ids::{validate_dns_label, ClusterId, IdError, NetworkId, ServiceKey};
pub use locality::{Locality, LocalityError, LocalityPattern, LocalityPatternError};
pub use mesh::{
    ClusterLocalRule, ClusterSpec, DiscoveryMode, Gateway, GatewayIdentity, KubernetesSource,
    MeshConfig, MeshSpec, GATEWAY_PROBE_SNI,
};
pub use objects::{
    ClusterObjects, DemoFaults, EndpointSlice, Health, ObjectSource, Service, ServiceExport,
    ServicePort, SliceEndpoint, SlicePort, TargetPort, WorkloadEntry,
};
pub use policy::{AuthorizationPolicy, PolicyAction, PolicyRule, PolicySource, PolicyTarget};
pub use proxy::{ProxyIdentity, ProxyRole, SpiffeId, SpiffeIdError};
pub use traffic::{
    ClusterChoice, LocalityDistribute, OutlierDetection, RegionFailover, RetryPolicy, Subset,
    TrafficMode, TrafficPolicy, TrafficRoute,
};
