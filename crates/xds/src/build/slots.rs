//! Outbound addresses: each service's stable slot in a sidecar's outbound block.

use std::collections::BTreeMap;
use std::net::IpAddr;

use causeway_discovery::{view, MeshIndex};
use causeway_model::ServiceKey;

use crate::node::{OutboundBlock, ProxyNode};

/// Each service's slot in the sidecar's outbound block.
pub fn sidecar_slots(index: &MeshIndex, node: &ProxyNode) -> BTreeMap<ServiceKey, u32> {
    node.outbound
        .map(|block| view::service_slots(index.services().keys(), block.capacity()))
        .unwrap_or_default()
}

/// The outbound address a sidecar with `block` uses for `key` (for operators and the demo).
pub fn outbound_address(
    index: &MeshIndex,
    block: &OutboundBlock,
    key: &ServiceKey,
) -> Option<IpAddr> {
    view::service_slots(index.services().keys(), block.capacity())
        .get(key)
        .map(|slot| block.address(*slot))
}
