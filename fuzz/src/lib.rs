//! Shared by the fuzz targets: the example mesh (`examples/three-clusters`) as an index, and
//! the certificates its proxies hold, so that inputs which pass the syntax checks go on through
//! the same steps the server takes with a stream's first request.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use causeway_discovery::MeshIndex;
use causeway_model::{ClusterId, ClusterObjects, MeshConfig, ProxyRole, SpiffeId};
use causeway_xds::auth::{self, PeerCert};
use causeway_xds::build;
use causeway_xds::node::ProxyNode;
use envoy_types::pb::envoy::config::core::v3::Node;

/// The example mesh, loaded once.
pub struct Example {
    /// Its `mesh.yaml`.
    pub mesh: Arc<MeshConfig>,
    /// Every cluster's objects.
    pub objects: BTreeMap<ClusterId, ClusterObjects>,
    /// The index of it all.
    pub index: MeshIndex,
    /// Names that occur in it (cluster ids, networks, namespaces, workloads), for structured
    /// inputs to pick from so that they reach the checks against the registry.
    pub names: Vec<String>,
    /// The verified certificates an xDS client can present: every workload's and every
    /// cluster's gateways', each with its cluster SAN, and forged mixes (another cluster's SAN,
    /// no cluster SAN).
    pub peers: Vec<PeerCert>,
}

/// The example mesh. Panics if it does not load: the harness is broken, not the code under test.
pub fn example() -> &'static Example {
    static EXAMPLE: OnceLock<Example> = OnceLock::new();
    EXAMPLE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/three-clusters");
        let dir = causeway_registry::MeshDirectory::open(&root);
        assert!(
            dir.errors().is_empty(),
            "example mesh has errors: {:?}",
            dir.errors()
        );
        let mesh = Arc::clone(dir.mesh().expect("example mesh.yaml loads"));
        let objects: BTreeMap<ClusterId, ClusterObjects> = dir
            .clusters()
            .iter()
            .map(|(name, slot)| {
                let id = ClusterId::new(name).expect("example cluster id");
                let objs = slot.objects.as_ref().expect("example cluster loads");
                (id, (**objs).clone())
            })
            .collect();
        let index = MeshIndex::build(Arc::clone(&mesh), objects.iter());
        let mut names: Vec<String> = Vec::new();
        for c in &mesh.clusters {
            names.push(c.id.to_string());
            names.push(c.network.to_string());
            if let Some(gi) = &c.gateway_identity {
                names.push(gi.namespace.clone());
            }
        }
        for objs in objects.values() {
            for (ns, name) in objs.workload_entries.keys() {
                names.push(ns.clone());
                names.push(name.clone());
            }
        }
        names.extend(
            [
                "sidecar",
                "gateway",
                "causeway-system",
                "127.0.0.1",
                "127.101.0.0/16",
                "127.102.0.0/30",
                "10.0.0.0/8",
                "127.0.0.0/29",
            ]
            .map(String::from),
        );
        names.sort();
        names.dedup();
        let td = &mesh.mesh.trust_domain;
        let mut peers = Vec::new();
        for (id, cluster) in index.clusters() {
            for ((ns, _), placement) in &cluster.workloads {
                peers.push(PeerCert {
                    spiffe: SpiffeId::new(td, ns, &placement.service_account),
                    cluster: Some(id.clone()),
                });
            }
        }
        for c in &mesh.clusters {
            if let Some(gi) = &c.gateway_identity {
                peers.push(PeerCert {
                    spiffe: SpiffeId::new(td, &gi.namespace, &gi.service_account),
                    cluster: Some(c.id.clone()),
                });
            }
        }
        let clusters: Vec<ClusterId> = mesh.clusters.iter().map(|c| c.id.clone()).collect();
        let forged: Vec<PeerCert> = peers
            .iter()
            .flat_map(|p| {
                let others = clusters
                    .iter()
                    .filter(|c| Some(*c) != p.cluster.as_ref())
                    .map(|c| PeerCert {
                        spiffe: p.spiffe.clone(),
                        cluster: Some(c.clone()),
                    });
                others.chain(std::iter::once(PeerCert {
                    spiffe: p.spiffe.clone(),
                    cluster: None,
                }))
            })
            .collect();
        peers.extend(forged);
        peers.sort_by(|a, b| (&a.spiffe, &a.cluster).cmp(&(&b.spiffe, &b.cluster)));
        peers.dedup();
        Example {
            mesh,
            objects,
            index,
            names,
            peers,
        }
    })
}

/// What the server does with the node of a stream's first request (`server::stream::
/// open_session`): validate its metadata, check it against the connection's certificate and the
/// mesh (`auth::authorize`, here with no certificate and with each of [`Example::peers`]), and
/// build the resources of an admitted node. Every step may refuse; none may panic, and no node
/// may be admitted on a certificate of another cluster or namespace.
pub fn serve_node(node: Option<&Node>) {
    let parsed = match ProxyNode::from_node(node) {
        Ok(p) => p,
        Err(e) => {
            let _ = auth::Refusal::from(e).to_string();
            return;
        }
    };
    check_node(&parsed);
    let example = example();
    let index = &example.index;
    if let Err(e) = auth::authorize(&parsed, None, Some(index)) {
        let _ = e.to_string();
    } else {
        panic!("node {parsed:?} admitted without a certificate");
    }
    let mut admitted = None;
    for peer in &example.peers {
        match auth::authorize(&parsed, Some(peer), Some(index)) {
            Ok(ctx) => {
                assert_eq!(
                    peer.cluster.as_ref(),
                    Some(&parsed.identity.cluster),
                    "node {parsed:?} admitted on a certificate of another cluster: {peer:?}"
                );
                assert_eq!(
                    peer.spiffe.namespace, parsed.identity.namespace,
                    "node {parsed:?} admitted on a certificate of another namespace: {peer:?}"
                );
                admitted = Some(ctx);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    let Some(ctx) = admitted else {
        return;
    };
    let resources = match parsed.identity.role {
        ProxyRole::Sidecar => build::sidecar_resources(index, &parsed, &ctx),
        ProxyRole::Gateway => build::gateway_resources(index, &ctx),
    };
    std::hint::black_box(resources);
}

/// Invariants of an accepted node.
fn check_node(node: &ProxyNode) {
    assert!(
        !node.identity.workload.is_empty(),
        "accepted an empty workload"
    );
    assert!(
        !node.identity.namespace.is_empty(),
        "accepted an empty namespace"
    );
    if let Some(block) = node.outbound {
        let capacity = block.capacity();
        assert!(capacity >= 2, "block {block:?} has capacity {capacity}");
        // The last usable slot stays inside the block.
        let last = block.address(capacity - 1);
        let std::net::IpAddr::V4(last) = last else {
            panic!("an IPv4 block gave {last}");
        };
        let size = 1u64 << (32 - u32::from(block.prefix));
        assert!(
            u64::from(u32::from(last)) < u64::from(u32::from(block.base)) + size - 1,
            "slot {} of {block:?} is {last}, outside the block",
            capacity - 1
        );
    }
}
