//! The generated mesh: a mesh directory of `clusters` clusters on two networks, each with the
//! same `services` exported services of `endpoints` WorkloadEntries (one file per service, as
//! a user splits a large cluster), the CA directory the control plane serves from, and the
//! single-endpoint changes the benchmark writes.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The mesh's size.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub clusters: usize,
    pub services: usize,
    pub endpoints: usize,
}

pub const TRUST_DOMAIN: &str = "scale.local";
pub const NAMESPACE: &str = "bench";
pub const GATEWAY_NAMESPACE: &str = "causeway-system";
pub const GATEWAY_ACCOUNT: &str = "eastwest-gateway";

pub fn cluster_name(c: usize) -> String {
    format!("cluster-{c:02}")
}

pub fn service_name(s: usize) -> String {
    format!("svc-{s:04}")
}

pub fn workload_name(s: usize, e: usize) -> String {
    format!("svc-{s:04}-{e}")
}

/// The network of cluster `c`: two networks, alternating.
pub fn network(c: usize) -> String {
    format!("net-{}", c % 2)
}

/// The address of endpoint `e` of service `s` in cluster `c`, moved `generation` times. Clusters
/// of one network get disjoint addresses; the two networks overlap, as isolated networks do.
pub fn endpoint_address(c: usize, s: usize, e: usize, generation: usize) -> Ipv4Addr {
    let flat = (s * 8 + e) as u32;
    let block = ((c / 2) as u32) * 4 + (generation % 4) as u32;
    Ipv4Addr::from(0x0a00_0000 | (block << 16) | flat)
}

fn mesh_yaml(size: Size) -> String {
    let mut y = format!(
        "apiVersion: causeway.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: scale\nspec:\n  trustDomain: {TRUST_DOMAIN}\n  discovery: exported\n  networks: [net-0, net-1]\n"
    );
    for c in 0..size.clusters {
        let _ = write!(
            y,
            "---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: {}\nspec:\n  network: {}\n  locality: region-{}/zone-{}\n  gateways:\n  - address: 127.{}.{}.1\n    port: 15443\n  gatewayIdentity:\n    serviceAccount: {GATEWAY_ACCOUNT}\n",
            cluster_name(c),
            network(c),
            c % 4,
            c % 8,
            200 + c / 250,
            c % 250,
        );
    }
    y
}

/// One service's file in cluster `c`: the Service, its ServiceExport and its endpoints
/// (`moved` gives how often each endpoint was moved).
pub fn service_yaml(c: usize, s: usize, moved: &[usize]) -> String {
    let name = service_name(s);
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\nspec:\n  selector:\n    app: {name}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n    appProtocol: http\n---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n  creationTimestamp: \"2026-11-01T10:00:00Z\"\n"
    );
    for (e, generation) in moved.iter().enumerate() {
        let _ = write!(
            y,
            "---\napiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  name: {}\n  namespace: {NAMESPACE}\nspec:\n  address: {}\n  labels:\n    app: {name}\n  serviceAccount: {name}\n  ports:\n    http: 8080\n",
            workload_name(s, e),
            endpoint_address(c, s, e, *generation),
        );
    }
    y
}

pub fn service_file(root: &Path, c: usize, s: usize) -> PathBuf {
    root.join("clusters")
        .join(cluster_name(c))
        .join(format!("{}.yaml", service_name(s)))
}

/// Writes `text` to `path` at once (a rename), as a deploy tool does.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
}

/// Writes the whole mesh directory under `root`.
pub fn write_mesh(root: &Path, size: Size) -> anyhow::Result<()> {
    std::fs::create_dir_all(root)?;
    std::fs::write(root.join("mesh.yaml"), mesh_yaml(size))?;
    let fresh = vec![0; size.endpoints];
    for c in 0..size.clusters {
        std::fs::create_dir_all(root.join("clusters").join(cluster_name(c)))?;
        for s in 0..size.services {
            std::fs::write(service_file(root, c, s), service_yaml(c, s, &fresh))?;
        }
    }
    Ok(())
}

/// One single-endpoint change: endpoint `endpoint` of service `service` in `cluster` moves
/// to a new address.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    pub cluster: usize,
    pub service: usize,
    pub endpoint: usize,
}

/// The `i`th change, spread over clusters, services and endpoints.
pub fn change(i: usize, size: Size) -> Change {
    Change {
        cluster: (i * 7) % size.clusters,
        service: (i * 13 + 1) % size.services,
        endpoint: i % size.endpoints,
    }
}

/// How often every endpoint moved, to write a changed file from.
pub struct Moves {
    size: Size,
    moved: Vec<usize>,
}

impl Moves {
    pub fn new(size: Size) -> Self {
        Self {
            size,
            moved: vec![0; size.clusters * size.services * size.endpoints],
        }
    }

    /// Applies `change` and returns the file it rewrites.
    pub fn apply(&mut self, change: Change) -> String {
        let at = |e: usize| {
            (change.cluster * self.size.services + change.service) * self.size.endpoints + e
        };
        self.moved[at(change.endpoint)] += 1;
        let moved: Vec<usize> = (0..self.size.endpoints)
            .map(|e| self.moved[at(e)])
            .collect();
        service_yaml(change.cluster, change.service, &moved)
    }
}
