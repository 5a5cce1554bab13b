//! The mesh directory's YAML wire format. Only `file.rs` reads these types, except the
//! `AuthorizationPolicy` spec, which is public ([`crate::policy_wire`]) so the Kubernetes registry
//! shares it; everything else sees validated model types.

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

/// `causeway.io/v1alpha1` `TrafficPolicy` spec (mesh-wide: in `mesh.yaml` or `policies/`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    pub service: String,
    pub callers: Option<TrafficCallers>,
    pub mode: Option<String>,
    #[serde(default)]
    pub clusters: Vec<TrafficCluster>,
    #[serde(default)]
    pub failover_priority: Vec<String>,
    #[serde(default)]
    pub failover: Vec<RegionFailover>,
    #[serde(default)]
    pub distribute: Vec<LocalityDistribute>,
    #[serde(default)]
    pub subsets: Vec<TrafficSubset>,
    #[serde(default)]
    pub routes: Vec<TrafficRoute>,
    pub retries: Option<TrafficRetries>,
    pub timeout: Option<String>,
    pub outlier_detection: Option<TrafficOutlierDetection>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficCallers {
    pub clusters: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficCluster {
    pub name: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegionFailover {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    pub from: String,
    pub to: BTreeMap<String, u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSubset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficRoute {
    pub cluster: Option<String>,
    pub subset: Option<String>,
    pub weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficRetries {
    pub attempts: u32,
    pub per_try_timeout: Option<String>,
    /// Comma-separated Envoy conditions, as Istio writes them.
    pub retry_on: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficOutlierDetection {
    #[serde(rename = "consecutive5xx")]
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_failure: Option<u32>,
    pub interval: Option<String>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_percent: Option<u32>,
}
