use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::{ClusterId, Locality, NetworkId, ObjectSource, ServiceKey};

/// Which services are visible outside their own cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    /// Only services with a `ServiceExport` leave their cluster (MCS semantics, the default).
    #[default]
    Exported,
    /// Every same-named service in the same namespace is merged across clusters (Istio's
    /// "namespace sameness").
    Sameness,
}

/// An east-west gateway: the one address of a network that other networks can reach. It routes
/// on TLS SNI without terminating the workloads' mTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    /// Address reachable from other networks.
    pub address: IpAddr,
    /// TLS port (Istio uses 15443).
    pub port: u16,
}

/// The server name of the control plane's gateway probes: under `.invalid` (RFC 2606), so never
/// a service's. A gateway has no route for it and closes the connection at once, which is what
/// the probe waits for; gateways count these connections apart from real misroutes.
pub const GATEWAY_PROBE_SNI: &str = "gateway-probe.causeway.invalid";

impl Gateway {
    /// The gateway as a socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

impl fmt::Display for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.socket_addr())
    }
}

/// The identity a cluster's east-west gateways run as: their certificate's SPIFFE ID is
/// `spiffe://<td>/ns/<namespace>/sa/<service_account>`, issued like a workload's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayIdentity {
    /// Namespace of the gateways (`causeway-system` unless given).
    pub namespace: String,
    /// Service account the gateways run as.
    pub service_account: String,
    /// Bootstrap credential (`spec.gatewayIdentity.credential.tokenFile`, relative to the mesh
    /// directory); Kubernetes members may instead run gateways as pods with this service account.
    pub credential_file: Option<PathBuf>,
}

impl GatewayIdentity {
    /// The default namespace of gateways.
    pub const DEFAULT_NAMESPACE: &'static str = "causeway-system";
}

/// One member cluster of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Cluster id (`metadata.name` of the `Cluster` object).
    pub id: ClusterId,
    /// The network its endpoints are on.
    pub network: NetworkId,
    /// Default locality of its endpoints.
    pub locality: Locality,
    /// Its east-west gateways (may be empty on a single-network mesh).
    pub gateways: Vec<Gateway>,
    /// The identity its gateways run as; without one, its gateways cannot connect to xDS.
    pub gateway_identity: Option<GatewayIdentity>,
    /// Where its objects come from: a Kubernetes API server, or (when `None`) the mesh
    /// directory's `clusters/<id>/`.
    pub kubernetes: Option<KubernetesSource>,
    /// How long a cluster whose API server cannot be reached keeps its endpoints in views;
    /// `None` keeps them until it is reachable again (outlier detection protects callers).
    pub stale_endpoint_ttl: Option<Duration>,
    /// Where the `Cluster` object was declared.
    pub source: ObjectSource,
}

impl ClusterSpec {
    /// A cluster whose objects come from the mesh directory, with no stale-endpoint limit.
    pub fn new(
        id: ClusterId,
        network: NetworkId,
        locality: Locality,
        gateways: Vec<Gateway>,
        source: ObjectSource,
    ) -> Self {
        Self {
            id,
            network,
            locality,
            gateways,
            gateway_identity: None,
            kubernetes: None,
            stale_endpoint_ttl: None,
            source,
        }
    }
}

/// A member cluster's Kubernetes API server, as a kubeconfig names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesSource {
    /// The kubeconfig file, as written in `mesh.yaml`: absolute, or relative to the mesh
    /// directory. Re-read when it changes (rotated credentials).
    pub kubeconfig: PathBuf,
    /// The kubeconfig context to use; its current context when `None`.
    pub context: Option<String>,
}

impl KubernetesSource {
    /// The kubeconfig path for a mesh directory at `mesh_dir`.
    pub fn kubeconfig_path(&self, mesh_dir: &Path) -> PathBuf {
        if self.kubeconfig.is_absolute() {
            self.kubeconfig.clone()
        } else {
            mesh_dir.join(&self.kubeconfig)
        }
    }
}

/// A rule marking services as cluster-local: they never leave their cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterLocalRule {
    /// Namespace the rule applies to.
    pub namespace: String,
    /// Service name, or `None` for every service of the namespace.
    pub name: Option<String>,
}

impl ClusterLocalRule {
    /// Whether the rule covers `key`.
    pub fn matches(&self, key: &ServiceKey) -> bool {
        self.namespace == key.namespace && self.name.as_ref().is_none_or(|n| *n == key.name)
    }
}

/// Mesh-wide settings from the `Mesh` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// Mesh name (`metadata.name`).
    pub name: String,
    /// SPIFFE trust domain of every workload identity.
    pub trust_domain: String,
    /// Visibility model for services across clusters.
    pub discovery: DiscoveryMode,
    /// Services that never leave their cluster (`kube-system` by default).
    pub cluster_local: Vec<ClusterLocalRule>,
    /// Declared networks, when the operator lists them; clusters and workloads must use one.
    pub networks: Option<BTreeSet<NetworkId>>,
    /// Where the `Mesh` object was declared.
    pub source: ObjectSource,
}

/// The mesh and its member clusters, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// Mesh-wide settings.
    pub mesh: MeshSpec,
    /// Member clusters in the order they were declared (that order breaks export-age ties).
    pub clusters: Vec<ClusterSpec>,
    /// The mesh-wide traffic policies (`mesh.yaml` and `policies/`), validated.
    pub traffic_policies: Vec<crate::TrafficPolicy>,
}

impl MeshConfig {
    /// Looks a cluster up by id.
    pub fn cluster(&self, id: &ClusterId) -> Option<&ClusterSpec> {
        self.clusters.iter().find(|c| &c.id == id)
    }

    /// Position of a cluster in declaration order.
    pub fn cluster_order(&self, id: &ClusterId) -> Option<usize> {
        self.clusters.iter().position(|c| &c.id == id)
    }

    /// Every distinct network, sorted.
    pub fn networks(&self) -> BTreeSet<NetworkId> {
        let mut nets: BTreeSet<NetworkId> =
            self.clusters.iter().map(|c| c.network.clone()).collect();
        if let Some(declared) = &self.mesh.networks {
            nets.extend(declared.iter().cloned());
        }
        nets
    }

    /// Every gateway of every cluster on `network`, sorted and without duplicates.
    pub fn network_gateways(&self, network: &NetworkId) -> Vec<Gateway> {
        let set: BTreeSet<Gateway> = self
            .clusters
            .iter()
            .filter(|c| &c.network == network)
            .flat_map(|c| c.gateways.iter().copied())
            .collect();
        set.into_iter().collect()
    }

    /// Whether `key` is cluster-local by mesh rule.
    pub fn is_cluster_local(&self, key: &ServiceKey) -> bool {
        self.mesh.cluster_local.iter().any(|r| r.matches(key))
    }
}
