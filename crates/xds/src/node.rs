//! Who a connecting Envoy is: its identity from the node metadata, checked against the mesh.

use std::collections::BTreeMap;
use std::net::IpAddr;

use causeway_discovery::{MeshIndex, ProxyContext};
use causeway_model::{ClusterId, ProxyIdentity, ProxyRole};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use serde::Serialize;

/// Node metadata keys Causeway reads (set in the Envoy bootstrap by `causeway proxy`).
pub mod keys {
    /// Cluster id.
    pub const CLUSTER: &str = "CAUSEWAY_CLUSTER";
    /// Workload namespace.
    pub const NAMESPACE: &str = "CAUSEWAY_NAMESPACE";
    /// Workload name (WorkloadEntry) or gateway name.
    pub const WORKLOAD: &str = "CAUSEWAY_WORKLOAD";
    /// `sidecar` or `gateway`.
    pub const ROLE: &str = "CAUSEWAY_ROLE";
    /// Network the proxy believes it is on (checked against the registry).
    pub const NETWORK: &str = "CAUSEWAY_NETWORK";
    /// Sidecar: address the local application listens on (same ports as the workload).
    pub const APP_ADDRESS: &str = "CAUSEWAY_APP_ADDRESS";
    /// Sidecar: the address block its outbound listeners bind in, e.g. `127.101.0.0/16`.
    pub const OUTBOUND_CIDR: &str = "CAUSEWAY_OUTBOUND_CIDR";
    /// Sidecar inside a network namespace: the loopback port where the app's traffic to the
    /// outbound block is redirected (iptables REDIRECT); outbound listeners then do not bind.
    pub const CAPTURE_PORT: &str = "CAUSEWAY_CAPTURE_PORT";
}

/// Why a node was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The request carried no node (the first request of a stream must).
    #[error("the first request carries no node")]
    Missing,
    /// A required metadata key is absent.
    #[error("node {node}: metadata {key} is missing")]
    MissingKey {
        /// Node id.
        node: String,
        /// The key.
        key: &'static str,
    },
    /// A metadata value is malformed.
    #[error("node {node}: metadata {key}={value:?}: {reason}")]
    Invalid {
        /// Node id.
        node: String,
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The node's claims contradict the registry.
    #[error("node {node}: {reason}")]
    Inconsistent {
        /// Node id.
        node: String,
        /// What disagrees.
        reason: String,
    },
}

/// An IPv4 block where a sidecar's outbound listeners bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutboundBlock {
    /// First address of the block.
    pub base: std::net::Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Traffic to the block is redirected to this loopback port (a capture listener reads each
    /// connection's original destination), instead of every outbound listener binding.
    pub capture_port: Option<u16>,
}

impl OutboundBlock {
    /// Parses `a.b.c.d/len` (IPv4, prefix 8-30).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, len) = s.split_once('/').ok_or("expected address/prefix")?;
        let base: std::net::Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err("prefix length must be 8-30".into());
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(base) & !mask != 0 {
            return Err(format!("{base} is not the first address of a /{prefix}"));
        }
        Ok(Self {
            base,
            prefix,
            capture_port: None,
        })
    }

    /// Usable addresses (the first and last are skipped).
    pub fn capacity(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    /// The address of slot `slot` (0-based).
    pub fn address(&self, slot: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(u32::from(self.base) + 1 + slot))
    }
}

/// A connected proxy, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyNode {
    /// Envoy's node id.
    pub id: String,
    /// Identity for views.
    pub identity: ProxyIdentity,
    /// Sidecar: where the app listens.
    pub app_address: Option<IpAddr>,
    /// Sidecar: outbound listener block.
    pub outbound: Option<OutboundBlock>,
    /// Declared network, if any.
    pub network: Option<String>,
    /// Which proxy runs: what it can be given (per-endpoint SNIs behind gateways, latency
    /// balancing) depends on it.
    pub data_plane: DataPlane,
}

/// The proxy software behind a node, from Envoy's `user_agent_name`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPlane {
    /// Envoy (or anything that is not Causeway's own proxy): Envoy's features only.
    #[default]
    Envoy,
    /// Causeway's own proxy (`user_agent_name` [`CAUSEWAY_USER_AGENT`]): one endpoint per
    /// remote pod, each behind its gateway with its own SNI, balanced by latency.
    Causeway,
}

/// The `user_agent_name` the Causeway proxy sends in its node.
pub const CAUSEWAY_USER_AGENT: &str = "causeway-proxy";

fn string_fields(node: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(md) = &node.metadata {
        for (k, v) in &md.fields {
            if let Some(Kind::StringValue(s)) = &v.kind {
                out.insert(k.clone(), s.clone());
            }
        }
    }
    out
}

impl ProxyNode {
    /// Reads the node's metadata; checks syntax only (see [`ProxyNode::resolve`]).
    pub fn from_node(node: Option<&Node>) -> Result<Self, NodeError> {
        let node = node.ok_or(NodeError::Missing)?;
        let id = node.id.clone();
        let md = string_fields(node);
        let get = |key: &'static str| {
            md.get(key)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| NodeError::MissingKey {
                    node: id.clone(),
                    key,
                })
        };
        let invalid = |key: &'static str, value: &str, reason: String| NodeError::Invalid {
            node: id.clone(),
            key,
            value: value.to_owned(),
            reason,
        };
        let cluster_raw = get(keys::CLUSTER)?;
        let cluster = ClusterId::new(&cluster_raw)
            .map_err(|e| invalid(keys::CLUSTER, &cluster_raw, e.to_string()))?;
        let role = match md.get(keys::ROLE).map(String::as_str) {
            None | Some("sidecar") => ProxyRole::Sidecar,
            Some("gateway") => ProxyRole::Gateway,
            Some(other) => {
                return Err(invalid(
                    keys::ROLE,
                    other,
                    "must be sidecar or gateway".into(),
                ))
            }
        };
        let workload = get(keys::WORKLOAD)?;
        let namespace = match role {
            ProxyRole::Sidecar => get(keys::NAMESPACE)?,
            // Optional for gateways; empty counts as absent, as for every other key.
            ProxyRole::Gateway => md
                .get(keys::NAMESPACE)
                .filter(|v| !v.is_empty())
                .cloned()
                .unwrap_or_else(|| "causeway-system".into()),
        };
        let (app_address, outbound) = match role {
            ProxyRole::Gateway => (None, None),
            ProxyRole::Sidecar => {
                let app = match md.get(keys::APP_ADDRESS) {
                    None => IpAddr::from([127, 0, 0, 1]),
                    Some(a) => a
                        .parse()
                        .map_err(|_| invalid(keys::APP_ADDRESS, a, "not an IP address".into()))?,
                };
                let cidr = get(keys::OUTBOUND_CIDR)?;
                let mut block = OutboundBlock::parse(&cidr)
                    .map_err(|e| invalid(keys::OUTBOUND_CIDR, &cidr, e))?;
                if let Some(p) = md.get(keys::CAPTURE_PORT).filter(|p| !p.is_empty()) {
                    let port = p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                        invalid(keys::CAPTURE_PORT, p, "not a port number (1-65535)".into())
                    })?;
                    block.capture_port = Some(port);
                }
                (Some(app), Some(block))
            }
        };
        Ok(Self {
            identity: ProxyIdentity {
                cluster,
                namespace,
                workload,
                role,
            },
            app_address,
            outbound,
            network: md.get(keys::NETWORK).cloned(),
            data_plane: if node.user_agent_name == CAUSEWAY_USER_AGENT {
                DataPlane::Causeway
            } else {
                DataPlane::Envoy
            },
            id,
        })
    }

    /// Checks the node against the mesh and resolves its view context. A sidecar must be a
    /// known WorkloadEntry; a declared network must match the registry's.
    pub fn resolve(&self, index: &MeshIndex) -> Result<ProxyContext, NodeError> {
        let ctx = ProxyContext::resolve(index, self.identity.clone()).map_err(|e| {
            NodeError::Inconsistent {
                node: self.id.clone(),
                reason: e.to_string(),
            }
        })?;
        if self.identity.role == ProxyRole::Sidecar
            && !ctx.workload_found
            && index.cluster(&self.identity.cluster).is_some()
        {
            return Err(NodeError::Inconsistent {
                node: self.id.clone(),
                reason: format!(
                    "no WorkloadEntry {}/{} in cluster {}",
                    self.identity.namespace, self.identity.workload, self.identity.cluster
                ),
            });
        }
        if let Some(net) = &self.network {
            if net != ctx.network.as_str() {
                return Err(NodeError::Inconsistent {
                    node: self.id.clone(),
                    reason: format!(
                        "declares network {net} but cluster {} places workload {} on network {}",
                        self.identity.cluster, self.identity.workload, ctx.network
                    ),
                });
            }
        }
        Ok(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    fn node(pairs: &[(&str, &str)]) -> Node {
        Node {
            id: "n1".into(),
            metadata: Some(Struct {
                fields: pairs
                    .iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            Value {
                                kind: Some(Kind::StringValue((*v).to_owned())),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Node::default()
        }
    }

    #[test]
    fn parses_sidecar_and_gateway() {
        let n = node(&[
            (keys::CLUSTER, "alpha"),
            (keys::NAMESPACE, "demo"),
            (keys::WORKLOAD, "client"),
            (keys::OUTBOUND_CIDR, "127.101.0.0/16"),
            (keys::APP_ADDRESS, "127.1.100.10"),
        ]);
        let p = ProxyNode::from_node(Some(&n)).expect("valid");
        assert_eq!(p.identity.role, ProxyRole::Sidecar);
        assert_eq!(
            p.outbound.map(|o| o.address(0).to_string()),
            Some("127.101.0.1".into())
        );
        let g = node(&[
            (keys::CLUSTER, "alpha"),
            (keys::WORKLOAD, "gw"),
            (keys::ROLE, "gateway"),
        ]);
        assert_eq!(
            ProxyNode::from_node(Some(&g)).expect("valid").identity.role,
            ProxyRole::Gateway
        );
    }

    #[test]
    fn rejects_bad_metadata_with_the_key() {
        let e = ProxyNode::from_node(Some(&node(&[(keys::CLUSTER, "alpha")])))
            .expect_err("no workload");
        assert_eq!(
            e.to_string(),
            "node n1: metadata CAUSEWAY_WORKLOAD is missing"
        );
        let e = ProxyNode::from_node(Some(&node(&[
            (keys::CLUSTER, "Alpha!"),
            (keys::WORKLOAD, "w"),
        ])))
        .expect_err("bad id");
        assert!(e.to_string().contains("CAUSEWAY_CLUSTER=\"Alpha!\""), "{e}");
        let e = ProxyNode::from_node(Some(&node(&[
            (keys::CLUSTER, "a"),
            (keys::WORKLOAD, "w"),
            (keys::NAMESPACE, "n"),
            (keys::OUTBOUND_CIDR, "127.101.0.1/16"),
        ])))
        .expect_err("not a network address");
        assert!(e.to_string().contains("first address"), "{e}");
        assert_eq!(ProxyNode::from_node(None), Err(NodeError::Missing));
    }

    /// Found by the `node_metadata` fuzz target: a gateway with `CAUSEWAY_NAMESPACE=""` was
    /// accepted with an empty namespace (a sidecar's empty value already counted as missing).
    #[test]
    fn a_gateways_empty_namespace_counts_as_absent() {
        let g = node(&[
            (keys::CLUSTER, "alpha"),
            (keys::WORKLOAD, "gw"),
            (keys::ROLE, "gateway"),
            (keys::NAMESPACE, ""),
        ]);
        let p = ProxyNode::from_node(Some(&g)).expect("valid");
        assert_eq!(p.identity.namespace, "causeway-system");
        let s = node(&[
            (keys::CLUSTER, "alpha"),
            (keys::WORKLOAD, "w"),
            (keys::NAMESPACE, ""),
            (keys::OUTBOUND_CIDR, "127.101.0.0/16"),
        ]);
        assert_eq!(
            ProxyNode::from_node(Some(&s))
                .expect_err("empty namespace")
                .to_string(),
            "node n1: metadata CAUSEWAY_NAMESPACE is missing"
        );
    }
}
