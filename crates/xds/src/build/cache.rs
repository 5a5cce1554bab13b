//! Per-service reuse across builds: a sidecar's resources are kept per service, keyed by the
//! index's shared per-service entries, so a change to one service rebuilds only its resources.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use causeway_discovery::{ClusterService, MeshIndex, MeshService, ProxyContext};
use causeway_model::{Gateway, MeshConfig, ServiceKey, TrafficPolicy};

use super::inbound::sidecar_inbound_resources;
use super::outbound::sidecar_service_resources;
use super::slots::sidecar_slots;
use crate::node::ProxyNode;
use crate::resources::Resources;

/// What a service's sidecar resources were built from. Holding the `Arc`s (not addresses)
/// keeps them alive, so pointer equality means "unchanged".
struct ServiceInputs {
    merged: Arc<MeshService>,
    entries: Vec<Option<Arc<ClusterService>>>,
    slot: Option<u32>,
}

impl ServiceInputs {
    fn of(
        index: &MeshIndex,
        key: &ServiceKey,
        merged: &Arc<MeshService>,
        slot: Option<u32>,
    ) -> Self {
        Self {
            merged: Arc::clone(merged),
            entries: index
                .clusters()
                .values()
                .map(|c| c.services.get(key).cloned())
                .collect(),
            slot,
        }
    }

    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.merged, &other.merged)
            && self.slot == other.slot
            && self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                })
    }
}

/// One sidecar's resources across builds: a change to one service rebuilds only that
/// service's resources, not the proxy's whole view. Same output as
/// [`super::sidecar_resources`].
#[derive(Default)]
pub struct SidecarCache {
    mesh: Option<Arc<MeshConfig>>,
    /// Traffic policies shape every service's resources; a cluster's custom resources change
    /// them without a new mesh configuration.
    traffic_policies: Option<Arc<[TrafficPolicy]>>,
    /// The gateways found dead reshape every service reached through a gateway.
    gateways_down: Option<Arc<BTreeMap<Gateway, String>>>,
    ctx: Option<ProxyContext>,
    services: HashMap<ServiceKey, (ServiceInputs, Resources)>,
    rebuilt: usize,
}

impl SidecarCache {
    /// The sidecar's resources for `index`.
    pub fn build(&mut self, index: &MeshIndex, node: &ProxyNode, ctx: &ProxyContext) -> Resources {
        let mesh_same = self
            .mesh
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, index.mesh()));
        let policies_same = self
            .traffic_policies
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, index.shared_traffic_policies()));
        let probes_same = self
            .gateways_down
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(d, index.gateways_down()));
        if !mesh_same || !policies_same || !probes_same || self.ctx.as_ref() != Some(ctx) {
            self.services.clear();
            self.mesh = Some(Arc::clone(index.mesh()));
            self.traffic_policies = Some(Arc::clone(index.shared_traffic_policies()));
            self.gateways_down = Some(Arc::clone(index.gateways_down()));
            self.ctx = Some(ctx.clone());
        }
        let slots = sidecar_slots(index, node);
        let mut desired = sidecar_inbound_resources(index, node, ctx);
        self.rebuilt = 0;
        for (key, merged) in index.services() {
            let inputs = ServiceInputs::of(index, key, merged, slots.get(key).copied());
            let fresh = self
                .services
                .get(key)
                .is_none_or(|(seen, _)| !seen.same(&inputs));
            if fresh {
                let mut r = Resources::default();
                sidecar_service_resources(index, node, ctx, key, inputs.slot, &mut r);
                self.services.insert(key.clone(), (inputs, r));
                self.rebuilt += 1;
            }
            if let Some((_, r)) = self.services.get(key) {
                desired.extend(r);
            }
        }
        self.services
            .retain(|k, _| index.services().contains_key(k));
        tracing::debug!(node = %node.id, rebuilt = self.rebuilt, services = index.services().len(), "sidecar resources built");
        desired
    }

    /// Services rebuilt by the last [`Self::build`].
    pub fn rebuilt(&self) -> usize {
        self.rebuilt
    }

    /// The cached resources of one service.
    pub fn cached(&self, key: &ServiceKey) -> Option<&Resources> {
        self.services.get(key).map(|(_, r)| r)
    }
}
