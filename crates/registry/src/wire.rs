//! The mesh directory's YAML wire format. Only `file.rs` reads these types, except the
//! `AuthorizationPolicy` and `TrafficPolicy` specs, which are public ([`crate::policy_wire`],
//! [`crate::traffic_wire`]) so the Kubernetes registry shares them; everything else sees
//! validated model types.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `apiVersion` and `kind`, read first to pick the typed form of a document.
#[derive(Debug, Deserialize)]
pub struct TypeMeta {
    #[serde(rename = "apiVersion")]
    pub api_version: Option<String>,
    pub kind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub creation_timestamp: Option<String>,
}

/// A whole object: type meta, metadata, spec (and, for EndpointSlice, top-level fields).
#[derive(Debug, Deserialize)]
pub struct Object<S> {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: S,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSpec {
    pub trust_domain: String,
    #[serde(default)]
    pub discovery: Option<String>,
    pub cluster_local: Option<Vec<ClusterLocalRule>>,
    pub networks: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterLocalRule {
    pub namespace: String,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    pub network: String,
    pub locality: String,
    #[serde(default)]
    pub gateways: Vec<GatewaySpec>,
    pub kubernetes: Option<KubernetesSpec>,
    pub stale_endpoint_ttl: Option<String>,
    pub gateway_identity: Option<GatewayIdentitySpec>,
}

/// `Cluster.spec.gatewayIdentity`: what the cluster's east-west gateways run as.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayIdentitySpec {
    pub namespace: Option<String>,
    pub service_account: String,
    pub credential: Option<Credential>,
}

/// `Cluster.spec.kubernetes`: the member's API server, by kubeconfig.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesSpec {
    pub kubeconfig: String,
    pub context: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    pub address: String,
    pub port: u16,
}

/// `v1/Service` spec; unknown Kubernetes fields are accepted so real manifests load.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: Option<IntOrString>,
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u16),
    String(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    pub address: String,
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    pub locality: Option<String>,
    pub network: Option<String>,
    pub weight: Option<u32>,
    pub health: Option<String>,
    pub credential: Option<Credential>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credential {
    pub token_file: String,
}

/// `discovery.k8s.io/v1/EndpointSlice` (no `spec`: its fields are top level).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub address_type: Option<String>,
    #[serde(default)]
    pub ports: Vec<SlicePort>,
    #[serde(default)]
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlicePort {
    pub name: Option<String>,
    pub port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: Conditions,
    pub zone: Option<String>,
    pub target_ref: Option<TargetRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    pub name: Option<String>,
}

/// `multicluster.x-k8s.io/v1alpha1/ServiceExport`: metadata only (status is ignored).
#[derive(Debug, Deserialize)]
pub struct ServiceExport {
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// `causeway.io/v1alpha1` `AuthorizationPolicy` spec: the one wire form, read from the mesh
/// directory and, as a custom resource, from Kubernetes. Validated into the model by
/// [`crate::policy_wire::policy_from_spec`].
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Labels of the workloads of this namespace the policy applies to; omitted or empty: all of
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// ALLOW (the default) or DENY; DENY wins over ALLOW.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Rules, any of which may match. An ALLOW policy with no rule allows nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
}

/// One rule: matches when any `from` entry and any `to` entry match (an empty list matches all).
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// Callers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PolicySource>,
    /// Destinations on the selected workloads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyTarget>,
}

/// Callers; within an entry every field that is set must match.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySource {
    /// Caller SPIFFE IDs (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`), exact or a prefix ending
    /// in '*'.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Caller namespaces (from the SPIFFE ID).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Caller clusters (the cluster the caller's certificate was issued for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
}

/// Destinations; within an entry every field that is set must match.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTarget {
    /// Workload ports (1-65535).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// HTTP paths, exact or a prefix ending in '*'; enforceable on HTTP ports only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// `causeway.io/v1alpha1` `TrafficPolicy` spec: the one wire form, mesh-wide, read from the
/// mesh directory (`mesh.yaml`, `policies/`) and, as a custom resource, from Kubernetes.
/// Validated into the model by [`crate::traffic_wire::traffic_policy_from_spec`].
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    /// Name of the Service (in the policy's namespace) whose callers it shapes.
    pub service: String,
    /// Caller clusters it applies to; omitted: every caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callers: Option<TrafficCallers>,
    /// Locality (the default), ActiveActive or FailOver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Clusters of ActiveActive (with weights) or FailOver (in order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<TrafficCluster>,
    /// Label keys whose equality with the caller's orders failover (Locality mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// Region to fail over to when a region has no healthy endpoint (Locality mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<RegionFailover>,
    /// Shares of traffic from caller localities to endpoint localities (Locality mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    /// Named sets of endpoints by labels, for routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<TrafficSubset>,
    /// Weighted split of requests over clusters and subsets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<TrafficRoute>,
    /// Retries of failed requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<TrafficRetries>,
    /// Request timeout, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<TrafficOutlierDetection>,
}

/// `spec.callers`: which caller clusters a policy applies to.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficCallers {
    /// Caller cluster ids (at least one).
    pub clusters: Vec<String>,
}

/// One cluster of `spec.clusters`.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficCluster {
    /// Cluster id.
    pub name: String,
    /// Share of traffic (ActiveActive only, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// One `spec.failover` entry: region `from` fails over to region `to`.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegionFailover {
    /// Region of the caller.
    pub from: String,
    /// Region to send to when `from` has no healthy endpoint.
    pub to: String,
}

/// One `spec.distribute` entry: callers in locality `from` send shares to localities `to`.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    /// Caller locality (`region/zone/subzone`, `*` allowed).
    pub from: String,
    /// Endpoint locality to percentage (adding up to 100).
    pub to: BTreeMap<String, u32>,
}

/// One `spec.subsets` entry.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSubset {
    /// Subset name.
    pub name: String,
    /// Endpoint labels it selects.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One `spec.routes` entry.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficRoute {
    /// Only this cluster's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Only this subset's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Share of requests.
    pub weight: u32,
}

/// `spec.retries`.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficRetries {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Timeout of each attempt, e.g. `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Comma-separated Envoy conditions, as Istio writes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
}

/// `spec.outlierDetection`.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficOutlierDetection {
    /// Consecutive 5xx responses that eject an endpoint.
    #[serde(
        rename = "consecutive5xx",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx: Option<u32>,
    /// Consecutive gateway failures (502, 503, 504) that eject an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_failure: Option<u32>,
    /// Time between ejection sweeps, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Minimum ejection time, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// Largest percentage of endpoints ejected at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}
