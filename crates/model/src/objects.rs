use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::{ClusterId, Locality, NetworkId, ServiceKey};

/// Where an object came from, so errors and conditions can point at it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectSource {
    /// File, relative to the mesh directory (or a registry-specific name).
    pub file: PathBuf,
    /// Zero-based index of the YAML document in the file.
    pub document: usize,
    /// One-based line where the document starts.
    pub line: usize,
}

impl fmt::Display for ObjectSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (document {}, line {})",
            self.file.display(),
            self.document,
            self.line
        )
    }
}

/// A Service's `targetPort`: a number, or the name of a workload port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    /// A port number on the workload.
    Number(u16),
    /// A named port of the workload.
    Name(String),
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name (required by Kubernetes when a Service has several ports).
    pub name: Option<String>,
    /// The service port callers use.
    pub port: u16,
    /// Where the workload listens.
    pub target_port: TargetPort,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Application protocol (`http`, `http2`, `grpc`, `tcp`...).
    pub app_protocol: Option<String>,
}

/// A `v1/Service` of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Namespace and name.
    pub key: ServiceKey,
    /// Ports, in declaration order.
    pub ports: Vec<ServicePort>,
    /// Label selector for WorkloadEntries; `None` when endpoints come only from EndpointSlices.
    pub selector: Option<BTreeMap<String, String>>,
    /// `clusterIP: None`.
    pub headless: bool,
    /// Marked `causeway.io/cluster-local: "true"`: never leaves its cluster.
    pub cluster_local: bool,
    /// Declaration site.
    pub source: ObjectSource,
}

/// Health of a WorkloadEntry as its registry reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Serving.
    #[default]
    Healthy,
    /// Not serving; left out of every view.
    Unhealthy,
    /// Shutting down; left out of views so no new traffic arrives.
    Draining,
}

/// Faults the demo's sample app (`causeway echo`) injects on purpose, so a demo can show a slow
/// or failing backend. Read from the WorkloadEntry annotations `causeway.io/demo-delay-ms` and
/// `causeway.io/demo-status`; only `causeway demo` uses them (to start the app with them), the
/// mesh itself ignores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DemoFaults {
    /// Delay before each response, in milliseconds (0: none; at most [`Self::MAX_DELAY_MS`]).
    pub delay_ms: u32,
    /// Status of every response (in [`Self::STATUSES`]); `None` answers 200.
    pub status: Option<u16>,
}

impl DemoFaults {
    /// Longest delay accepted: a minute, past any timeout a demo would show.
    pub const MAX_DELAY_MS: u32 = 60_000;
    /// Status codes accepted (HTTP's 1xx-5xx).
    pub const STATUSES: std::ops::RangeInclusive<u16> = 100..=599;
}

/// A `causeway.io/v1alpha1/WorkloadEntry`: one workload instance (a VM, a process, a pod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    /// Namespace.
    pub namespace: String,
    /// Name (the workload name proxies identify themselves with).
    pub name: String,
    /// Address on its network.
    pub address: IpAddr,
    /// Port name → port number on the workload.
    pub ports: BTreeMap<String, u16>,
    /// Labels Services select on.
    pub labels: BTreeMap<String, String>,
    /// Service account: the identity its certificate carries.
    pub service_account: String,
    /// Overrides the cluster's locality.
    pub locality: Option<Locality>,
    /// Overrides the cluster's network (a VM beside a cluster).
    pub network: Option<NetworkId>,
    /// Load-balancing weight (default 1).
    pub weight: u32,
    /// Health state.
    pub health: Health,
    /// File with the bootstrap credential the CA accepts for this workload, relative to the
    /// mesh directory.
    pub credential_file: Option<PathBuf>,
    /// Faults for the demo's sample app (default: none).
    pub demo: DemoFaults,
    /// Declaration site.
    pub source: ObjectSource,
}

/// One port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlicePort {
    /// Matches the Service port name.
    pub name: Option<String>,
    /// Port on the endpoint.
    pub port: u16,
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    /// Addresses (Kubernetes allows several; all are the same pod).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (absent means ready, as in Kubernetes).
    pub ready: bool,
    /// `conditions.serving` (absent means `ready`): able to answer, even while terminating.
    pub serving: bool,
    /// `conditions.terminating`: the pod is shutting down; new traffic goes to it only when no
    /// endpoint of the port is ready (as kube-proxy does).
    pub terminating: bool,
    /// Zone inside the cluster's region.
    pub zone: Option<String>,
    /// Pod name from `targetRef`, when given.
    pub target_name: Option<String>,
    /// Service account of this endpoint (from its Pod), overriding the slice's.
    pub service_account: Option<String>,
    /// Full locality (from its Node's topology labels), overriding `zone`.
    pub locality: Option<Locality>,
    /// Labels of its Pod (what `TrafficPolicy` subsets select); empty when not known.
    pub labels: BTreeMap<String, String>,
}

impl SliceEndpoint {
    /// A ready endpoint at `addresses`, with nothing else known.
    pub fn ready(addresses: Vec<IpAddr>) -> Self {
        Self {
            addresses,
            ready: true,
            serving: true,
            terminating: false,
            zone: None,
            target_name: None,
            service_account: None,
            locality: None,
            labels: BTreeMap::new(),
        }
    }
}

/// A `discovery.k8s.io/v1/EndpointSlice` attached to a Service by its
/// `kubernetes.io/service-name` label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// Namespace.
    pub namespace: String,
    /// Slice name.
    pub name: String,
    /// Service it belongs to.
    pub service_name: String,
    /// Ports of every endpoint.
    pub ports: Vec<SlicePort>,
    /// Endpoints.
    pub endpoints: Vec<SliceEndpoint>,
    /// Identity of the endpoints (`causeway.io/service-account` annotation), if known.
    pub service_account: Option<String>,
    /// Declaration site.
    pub source: ObjectSource,
}

/// A `multicluster.x-k8s.io` `ServiceExport` (v1alpha1 or v1beta1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExport {
    /// The exported service.
    pub key: ServiceKey,
    /// Causeway extension (annotation `causeway.io/export-to`): the only clusters that may
    /// import it. `None` exports to every cluster.
    pub export_to: Option<BTreeSet<ClusterId>>,
    /// `metadata.creationTimestamp` as Unix seconds, when given: the oldest export wins
    /// conflicts.
    pub created: Option<i64>,
    /// Declaration site.
    pub source: ObjectSource,
}

/// Everything one cluster's registry holds, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterObjects {
    /// Services by key.
    pub services: BTreeMap<ServiceKey, Service>,
    /// WorkloadEntries by (namespace, name).
    pub workload_entries: BTreeMap<(String, String), WorkloadEntry>,
    /// EndpointSlices by (namespace, name).
    pub endpoint_slices: BTreeMap<(String, String), EndpointSlice>,
    /// ServiceExports by key.
    pub exports: BTreeMap<ServiceKey, ServiceExport>,
    /// AuthorizationPolicies by (namespace, name).
    pub policies: BTreeMap<(String, String), crate::AuthorizationPolicy>,
    /// TrafficPolicies read from the cluster (Kubernetes custom resources), in (namespace,
    /// name) order. They are mesh-wide like the mesh directory's; a file cluster has none (its
    /// directory's policies live in [`crate::MeshConfig::traffic_policies`]).
    pub traffic_policies: Vec<crate::TrafficPolicy>,
}
