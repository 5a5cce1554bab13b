//! Who may open an xDS stream: the node's claims (cluster, namespace, workload, role) must be
//! those of the mesh certificate the connection presented, and its cluster must be known and
//! loaded. Every refusal has a short reason (the `reason` label of
//! `causeway_xds_rejected_nodes_total`) and an operator-readable message.

use causeway_discovery::{MeshIndex, ProxyContext};
use causeway_model::{ClusterId, ProxyRole, SpiffeId};

use crate::node::{NodeError, ProxyNode};

/// The verified identity of an xDS client: its certificate chains to the mesh root and carries
/// this SPIFFE ID and (when present) the cluster DNS SAN `<cluster>.cluster.<td>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The certificate's SPIFFE ID.
    pub spiffe: SpiffeId,
    /// The cluster its cluster SAN names.
    pub cluster: Option<ClusterId>,
}

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Metric label: `no_certificate`, `bad_node`, `mesh_not_loaded`, `unknown_cluster`,
    /// `cluster_not_loaded`, `cluster_mismatch`, `unknown_workload`, `no_gateway_identity`,
    /// `identity_mismatch`, `inconsistent`.
    pub reason: &'static str,
    /// What happened, for the log and `/debug/proxies`.
    pub message: String,
}

impl Refusal {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Every reason a stream can be refused for (pre-registered metric labels).
pub const REFUSAL_REASONS: &[&str] = &[
    "no_certificate",
    "bad_node",
    "mesh_not_loaded",
    "unknown_cluster",
    "cluster_not_loaded",
    "cluster_mismatch",
    "unknown_workload",
    "no_gateway_identity",
    "identity_mismatch",
    "inconsistent",
];

impl From<NodeError> for Refusal {
    fn from(e: NodeError) -> Self {
        let reason = match e {
            NodeError::Inconsistent { .. } => "inconsistent",
            _ => "bad_node",
        };
        Self::new(reason, e.to_string())
    }
}

/// The identity a node's certificate must carry, from the registry: a sidecar's workload's
/// service account, or its cluster's gateway identity.
fn expected_identity(node: &ProxyNode, index: &MeshIndex) -> Result<SpiffeId, Refusal> {
    let id = &node.identity;
    let trust_domain = &index.mesh().mesh.trust_domain;
    let Some(spec) = index.mesh().cluster(&id.cluster) else {
        return Err(Refusal::new(
            "unknown_cluster",
            format!(
                "node {}: cluster {} is not a member of the mesh",
                node.id, id.cluster
            ),
        ));
    };
    let Some(objects) = index.cluster(&id.cluster) else {
        return Err(Refusal::new(
            "cluster_not_loaded",
            format!(
                "node {}: cluster {} has not loaded yet (its proxies are refused until it has)",
                node.id, id.cluster
            ),
        ));
    };
    match id.role {
        ProxyRole::Sidecar => {
            let key = (id.namespace.clone(), id.workload.clone());
            let placement = objects.workloads.get(&key).ok_or_else(|| {
                Refusal::new(
                    "unknown_workload",
                    format!(
                        "node {}: no workload {}/{} in cluster {}",
                        node.id, id.namespace, id.workload, id.cluster
                    ),
                )
            })?;
            Ok(SpiffeId::new(
                trust_domain,
                &id.namespace,
                &placement.service_account,
            ))
        }
        ProxyRole::Gateway => {
            let gi = spec.gateway_identity.as_ref().ok_or_else(|| {
                Refusal::new(
                    "no_gateway_identity",
                    format!(
                        "node {}: cluster {} declares no spec.gatewayIdentity, so no certificate can be a gateway of it",
                        node.id, id.cluster
                    ),
                )
            })?;
            if gi.namespace != id.namespace {
                return Err(Refusal::new(
                    "identity_mismatch",
                    format!(
                        "node {}: claims gateway namespace {}, but cluster {}'s gateways run in {}",
                        node.id, id.namespace, id.cluster, gi.namespace
                    ),
                ));
            }
            Ok(SpiffeId::new(
                trust_domain,
                &gi.namespace,
                &gi.service_account,
            ))
        }
    }
}

/// Checks that `peer` may be `node`, then resolves the node against the mesh: the cluster is a
/// loaded member, the certificate's cluster SAN names it, and its SPIFFE ID is the one the
/// registry gives the claimed workload (or the cluster's gateways).
pub fn authorize(
    node: &ProxyNode,
    peer: Option<&PeerCert>,
    index: Option<&MeshIndex>,
) -> Result<ProxyContext, Refusal> {
    let peer = peer.ok_or_else(|| {
        Refusal::new(
            "no_certificate",
            format!(
                "node {}: the connection presented no mesh certificate",
                node.id
            ),
        )
    })?;
    let index = index.ok_or_else(|| {
        Refusal::new(
            "mesh_not_loaded",
            format!(
                "node {}: the mesh has not loaded yet; no proxy can be checked",
                node.id
            ),
        )
    })?;
    let expected = expected_identity(node, index)?;
    let claimed = &node.identity.cluster;
    if peer.cluster.as_ref() != Some(claimed) {
        let found = peer
            .cluster
            .as_ref()
            .map_or_else(|| "no cluster SAN".to_owned(), |c| format!("cluster {c}"));
        return Err(Refusal::new(
            "cluster_mismatch",
            format!(
                "node {} claims cluster {claimed}, but its certificate ({}) is for {found}",
                node.id, peer.spiffe
            ),
        ));
    }
    if peer.spiffe != expected {
        return Err(Refusal::new(
            "identity_mismatch",
            format!(
                "node {} claims {} {}/{} in cluster {claimed}, which runs as {expected}, but its certificate is for {}",
                node.id,
                role_name(node.identity.role),
                node.identity.namespace,
                node.identity.workload,
                peer.spiffe
            ),
        ));
    }
    Ok(node.resolve(index)?)
}

fn role_name(role: ProxyRole) -> &'static str {
    match role {
        ProxyRole::Sidecar => "workload",
        ProxyRole::Gateway => "gateway",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_model::ProxyIdentity;
    use std::sync::Arc;

    fn example() -> MeshIndex {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/three-clusters");
        let dir = causeway_registry::MeshDirectory::open(root);
        let objects: Vec<(ClusterId, causeway_model::ClusterObjects)> = dir
            .clusters()
            .iter()
            .map(|(n, s)| {
                (
                    ClusterId::new(n).expect("id"),
                    (*s.objects.clone().expect("loaded")).clone(),
                )
            })
            .collect();
        MeshIndex::build(
            Arc::clone(dir.mesh().expect("mesh")),
            objects.iter().map(|(c, o)| (c, o)),
        )
    }

    fn node(cluster: &str, ns: &str, workload: &str, role: ProxyRole) -> ProxyNode {
        ProxyNode {
            id: format!("{cluster}/{workload}"),
            identity: ProxyIdentity {
                cluster: ClusterId::new(cluster).expect("id"),
                namespace: ns.into(),
                workload: workload.into(),
                role,
            },
            app_address: None,
            outbound: None,
            network: None,
            data_plane: Default::default(),
        }
    }

    fn peer(cluster: &str, ns: &str, sa: &str) -> PeerCert {
        PeerCert {
            spiffe: SpiffeId::new("causeway.local", ns, sa),
            cluster: Some(ClusterId::new(cluster).expect("id")),
        }
    }

    #[test]
    fn a_matching_certificate_is_accepted_for_sidecars_and_gateways() {
        let index = example();
        let client = node("alpha", "demo", "client", ProxyRole::Sidecar);
        authorize(
            &client,
            Some(&peer("alpha", "demo", "client")),
            Some(&index),
        )
        .expect("client's own certificate");
        let gw = node("gamma", "causeway-system", "eastwest-0", ProxyRole::Gateway);
        authorize(
            &gw,
            Some(&peer("gamma", "causeway-system", "eastwest-gateway")),
            Some(&index),
        )
        .expect("gamma's gateway certificate");
    }

    #[test]
    fn claims_that_differ_from_the_certificate_are_refused_with_the_reason() {
        let index = example();
        let reason = |n: &ProxyNode, p: Option<&PeerCert>| {
            authorize(n, p, Some(&index)).expect_err("refused").reason
        };
        let echo = node("alpha", "demo", "echo-alpha-1", ProxyRole::Sidecar);
        assert_eq!(
            reason(&echo, Some(&peer("alpha", "demo", "client"))),
            "identity_mismatch"
        );
        assert_eq!(
            reason(&echo, Some(&peer("beta", "demo", "echo"))),
            "cluster_mismatch"
        );
        assert_eq!(reason(&echo, None), "no_certificate");
        let gw = node("alpha", "causeway-system", "eastwest-0", ProxyRole::Gateway);
        assert_eq!(
            reason(&gw, Some(&peer("alpha", "demo", "client"))),
            "identity_mismatch",
            "a workload certificate is not a gateway's"
        );
        let stranger = node("delta", "demo", "client", ProxyRole::Sidecar);
        assert_eq!(
            reason(&stranger, Some(&peer("delta", "demo", "client"))),
            "unknown_cluster"
        );
        let ghost = node("alpha", "demo", "ghost", ProxyRole::Sidecar);
        assert_eq!(
            reason(&ghost, Some(&peer("alpha", "demo", "client"))),
            "unknown_workload"
        );
        let e = authorize(&echo, Some(&peer("alpha", "demo", "echo")), None).expect_err("no mesh");
        assert_eq!(e.reason, "mesh_not_loaded");
    }

    #[test]
    fn a_member_that_has_not_loaded_is_refused() {
        let full = example();
        let mesh = Arc::clone(full.mesh());
        let only_alpha: Vec<(ClusterId, causeway_model::ClusterObjects)> = full
            .clusters()
            .keys()
            .filter(|c| c.as_str() == "alpha")
            .map(|c| (c.clone(), causeway_model::ClusterObjects::default()))
            .collect();
        let index = MeshIndex::build(mesh, only_alpha.iter().map(|(c, o)| (c, o)));
        let echo = node("beta", "demo", "echo-beta-1", ProxyRole::Sidecar);
        let e = authorize(&echo, Some(&peer("beta", "demo", "echo")), Some(&index))
            .expect_err("beta never loaded");
        assert_eq!(e.reason, "cluster_not_loaded", "{e}");
    }
}
