//! Resource sets shared between proxies with equal inputs. A sidecar's outbound resources
//! depend on the index and on its class: cluster, network, locality, the labels a policy's
//! `failoverPriority` compares, its data plane and its outbound block, never on which workload
//! it is. So every sidecar of a class shares one [`ServiceSet`], built once per mesh version and
//! only for the services that changed; an east-west gateway's resources depend on its cluster
//! alone and are shared the same way. The xDS server builds these off its async runtime and
//! each session diffs only what changed between the sets it held and the new ones.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use causeway_discovery::{ClusterIndex, ClusterService, MeshIndex, MeshService, ProxyContext};
use causeway_model::{ClusterId, Gateway, MeshConfig, ServiceKey, TrafficPolicy};

use super::gateway::{gateway_listeners, service_gateway_part, GatewayPart};
use super::outbound::sidecar_service_resources;
use super::slots::sidecar_slots;
use crate::node::ProxyNode;
use crate::resources::{Made, Resource, Resources, TypeUrl};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What every set depends on across services: when any of these is replaced, every cached
/// service is rebuilt. Holding the `Arc`s keeps them alive, so pointer equality means
/// "unchanged".
#[derive(Clone)]
struct Globals {
    mesh: Arc<MeshConfig>,
    traffic_policies: Arc<[TrafficPolicy]>,
    gateways_down: Arc<BTreeMap<Gateway, String>>,
}

impl Globals {
    fn of(index: &MeshIndex) -> Self {
        Self {
            mesh: Arc::clone(index.mesh()),
            traffic_policies: Arc::clone(index.shared_traffic_policies()),
            gateways_down: Arc::clone(index.gateways_down()),
        }
    }

    fn same(&self, index: &MeshIndex) -> bool {
        Arc::ptr_eq(&self.mesh, index.mesh())
            && Arc::ptr_eq(&self.traffic_policies, index.shared_traffic_policies())
            && Arc::ptr_eq(&self.gateways_down, index.gateways_down())
    }
}

/// The class of a sidecar: everything besides the index its outbound resources are built
/// from (see the module comment). Two sidecars of one class get identical outbound resources.
pub fn sidecar_class(index: &MeshIndex, node: &ProxyNode, ctx: &ProxyContext) -> String {
    let compared: BTreeSet<&str> = index
        .traffic_policies()
        .iter()
        .flat_map(|p| p.failover_priority.iter().map(String::as_str))
        .collect();
    let labels: BTreeMap<&str, &str> = ctx
        .labels
        .iter()
        .filter(|(k, _)| compared.contains(k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    format!(
        "{}|{}|{:?}|{labels:?}|{:?}|{:?}",
        ctx.identity.cluster, ctx.network, ctx.locality, node.data_plane, node.outbound
    )
}

/// One service's resources with what they were built from (besides its entries in the
/// clusters, which [`SeenClusters`] tracks).
struct Cached {
    merged: Arc<MeshService>,
    slot: Option<u32>,
    made: Made,
}

/// The cluster indexes a build last saw, to tell which services' entries changed since: a
/// cluster whose index is the same `Arc` changed nothing, and in one that changed only the
/// entries that are not the same `Arc` did. (Looking every service up in every cluster on
/// each change cost 20 × 1,000 × 20 map lookups per change in `bench/xds-scale`.)
#[derive(Default)]
struct SeenClusters(BTreeMap<ClusterId, Arc<ClusterIndex>>);

impl SeenClusters {
    /// Services with an entry added, replaced or removed in some cluster since the last call;
    /// the clusters of `index` are remembered for the next.
    fn changed(&mut self, index: &MeshIndex) -> BTreeSet<ServiceKey> {
        let mut changed = BTreeSet::new();
        for (id, now) in index.clusters() {
            match self.0.get(id) {
                Some(seen) if Arc::ptr_eq(seen, now) => {}
                Some(seen) => changed_entries(&seen.services, &now.services, &mut changed),
                None => changed.extend(now.services.keys().cloned()),
            }
        }
        for (id, seen) in &self.0 {
            if !index.clusters().contains_key(id) {
                changed.extend(seen.services.keys().cloned());
            }
        }
        self.0 = index.clusters().clone();
        changed
    }
}

/// Keys whose entry differs between two versions of one cluster's services (by `Arc`): one
/// walk of both maps in key order, so an unchanged entry costs a pointer comparison (looking
/// every key of one up in the other compared each key's text a dozen times, for each class).
fn changed_entries(
    a: &BTreeMap<ServiceKey, Arc<ClusterService>>,
    b: &BTreeMap<ServiceKey, Arc<ClusterService>>,
    into: &mut BTreeSet<ServiceKey>,
) {
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((ka, _)), None) => {
                into.insert((*ka).clone());
                a.next();
            }
            (None, Some((kb, _))) => {
                into.insert((*kb).clone());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    into.insert((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    into.insert((*kb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(va, vb) {
                        into.insert((*ka).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// Names per type whose resource was added, changed or removed.
pub type ChangedNames = BTreeMap<TypeUrl, BTreeSet<String>>;

/// A class's resources by type then name, in persistent maps: the set for a new mesh version
/// is its predecessor with the changed services' resources swapped, sharing every other node
/// with it (copying each class's 4,000 to 7,000 entries on every change was a sixth of a
/// change's CPU in `bench/xds-scale`).
#[derive(Debug, Clone, Default)]
pub struct SharedResources {
    by_type: BTreeMap<TypeUrl, imbl::OrdMap<String, Resource>>,
}

impl SharedResources {
    /// Resources of one type.
    pub fn of(&self, t: TypeUrl) -> Option<&imbl::OrdMap<String, Resource>> {
        self.by_type.get(&t)
    }

    /// The resource `name` of type `t`.
    pub fn get(&self, t: TypeUrl, name: &str) -> Option<&Resource> {
        self.by_type.get(&t)?.get(name)
    }

    fn insert(&mut self, t: TypeUrl, name: String, r: Resource) {
        self.by_type.entry(t).or_default().insert(name, r);
    }

    fn remove(&mut self, t: TypeUrl, name: &str) {
        if let Some(m) = self.by_type.get_mut(&t) {
            m.remove(name);
        }
    }

    /// The same resources as a plain [`Resources`] (for comparisons in tests and tools).
    pub fn to_resources(&self) -> Resources {
        let mut out = Resources::default();
        for (t, m) in &self.by_type {
            let into = out.by_type.entry(*t).or_default();
            for (name, r) in m {
                into.insert(name.clone(), r.clone());
            }
        }
        out
    }
}

/// The resources of one class (or one gateway cluster) for one mesh version, by type and
/// name, with what changed since the set built before it.
#[derive(Debug, Default)]
pub struct ServiceSet {
    /// Mesh version it was built for.
    pub version: u64,
    /// Every resource.
    pub resources: SharedResources,
    /// The set this one replaced and the names whose resource differs from it, per type
    /// (added, changed or removed); `None` when built from nothing.
    pub changed_since: Option<(Weak<ServiceSet>, ChangedNames)>,
}

impl ServiceSet {
    /// Names of type `t` that may differ between `older` and `self`: exact when `older` is the
    /// set this one replaced, else found by comparing the two (cheap where they share nodes).
    pub fn changed_from(&self, older: &Arc<ServiceSet>, t: TypeUrl) -> BTreeSet<String> {
        if let Some((prev, changed)) = &self.changed_since {
            if prev.upgrade().is_some_and(|p| Arc::ptr_eq(&p, older)) {
                return changed.get(&t).cloned().unwrap_or_default();
            }
        }
        let empty = imbl::OrdMap::new();
        let (a, b) = (
            older.resources.of(t).unwrap_or(&empty),
            self.resources.of(t).unwrap_or(&empty),
        );
        a.diff(b)
            .filter_map(|d| match d {
                imbl::ordmap::DiffItem::Add(n, _) | imbl::ordmap::DiffItem::Remove(n, _) => {
                    Some(n.clone())
                }
                imbl::ordmap::DiffItem::Update { old, new } => {
                    (old.1.version != new.1.version).then(|| old.0.clone())
                }
            })
            .collect()
    }
}

/// Names of type `t` whose resource differs between `a` and `b`.
pub fn diff_names(a: &Resources, b: &Resources, t: TypeUrl) -> BTreeSet<String> {
    let empty = BTreeMap::new();
    let (a, b) = (a.of(t).unwrap_or(&empty), b.of(t).unwrap_or(&empty));
    let mut out: BTreeSet<String> = a
        .iter()
        .filter(|(n, r)| b.get(*n).map(|x| &x.version) != Some(&r.version))
        .map(|(n, _)| n.clone())
        .collect();
    out.extend(b.keys().filter(|n| !a.contains_key(*n)).cloned());
    out
}

/// Each service's slot in a sidecar's outbound block.
type Slots = BTreeMap<ServiceKey, u32>;

/// One sidecar class's build state.
struct SidecarBuild {
    node: ProxyNode,
    ctx: ProxyContext,
    globals: Option<Globals>,
    seen: SeenClusters,
    services: HashMap<ServiceKey, Cached>,
    /// Outbound slots by service, with the services they were computed for.
    slots: Option<(Vec<ServiceKey>, Arc<Slots>)>,
    latest: Option<Arc<ServiceSet>>,
    /// The mesh version `latest` is current for (it stays the same `Arc` while nothing the
    /// class depends on changes, so its sessions see at once that nothing is owed).
    built_for: u64,
}

impl SidecarBuild {
    /// The set for `index` at `version`: the latest one when nothing it depends on changed,
    /// else a new one in which only the changed services were rebuilt.
    fn build(&mut self, index: &MeshIndex, version: u64) -> Arc<ServiceSet> {
        if let Some(latest) = self.latest.as_ref().filter(|_| self.built_for == version) {
            return Arc::clone(latest);
        }
        self.built_for = version;
        // When a global input changed every service is rebuilt, against what it made before
        // (so names it no longer makes are removed from the set, not left behind).
        let all = !self.globals.as_ref().is_some_and(|g| g.same(index));
        if all {
            self.globals = Some(Globals::of(index));
        }
        let dirty = self.seen.changed(index);
        let slots = self.slots(index);
        let mut changed: ChangedNames = BTreeMap::new();
        let mut resources = self
            .latest
            .as_ref()
            .map(|l| l.resources.clone())
            .unwrap_or_default();
        let mut rebuilt = 0usize;
        for (key, merged) in index.services() {
            let slot = slots.get(key).copied();
            let same = !all
                && self.services.get(key).is_some_and(|c| {
                    Arc::ptr_eq(&c.merged, merged) && c.slot == slot && !dirty.contains(key)
                });
            if same {
                continue;
            }
            let mut fresh = Resources::default();
            sidecar_service_resources(index, &self.node, &self.ctx, key, slot, &mut fresh);
            let old = self.services.remove(key).map(|c| c.made);
            replace(&mut resources, old.as_ref(), &fresh, &mut changed);
            self.services.insert(
                key.clone(),
                Cached {
                    merged: Arc::clone(merged),
                    slot,
                    made: Made::of(&fresh),
                },
            );
            rebuilt += 1;
        }
        for key in gone(self.services.keys(), index) {
            if let Some(c) = self.services.remove(&key) {
                replace(
                    &mut resources,
                    Some(&c.made),
                    &Resources::default(),
                    &mut changed,
                );
            }
        }
        tracing::debug!(cluster = %self.ctx.identity.cluster, rebuilt, services = index.services().len(), "sidecar class built");
        let set = match &self.latest {
            Some(latest) if changed.is_empty() => return Arc::clone(latest),
            Some(latest) => Arc::new(ServiceSet {
                version,
                resources,
                changed_since: Some((Arc::downgrade(latest), changed)),
            }),
            None => Arc::new(ServiceSet {
                version,
                resources,
                changed_since: None,
            }),
        };
        self.latest = Some(Arc::clone(&set));
        set
    }
}

impl SidecarBuild {
    /// Each service's outbound slot, computed again only when services came or went.
    fn slots(&mut self, index: &MeshIndex) -> Arc<Slots> {
        let same = self.slots.as_ref().is_some_and(|(keys, _)| {
            keys.len() == index.services().len() && keys.iter().eq(index.services().keys())
        });
        if !same {
            let keys = index.services().keys().cloned().collect();
            self.slots = Some((keys, Arc::new(sidecar_slots(index, &self.node))));
        }
        self.slots
            .as_ref()
            .map(|(_, s)| Arc::clone(s))
            .unwrap_or_default()
    }
}

/// The services of `cached` the index no longer has.
fn gone<'a>(cached: impl Iterator<Item = &'a ServiceKey>, index: &MeshIndex) -> Vec<ServiceKey> {
    cached
        .filter(|k| !index.services().contains_key(*k))
        .cloned()
        .collect()
}

/// Takes `old`'s resources out of `into`, puts `fresh`'s in, and notes the names that differ.
fn replace(
    into: &mut SharedResources,
    old: Option<&Made>,
    fresh: &Resources,
    changed: &mut ChangedNames,
) {
    for (t, name, version) in old.into_iter().flat_map(Made::iter) {
        let stays = fresh.of(*t).and_then(|m| m.get(name));
        if stays.map(Resource::version_id) != Some(*version) {
            changed.entry(*t).or_default().insert(name.clone());
        }
        if stays.is_none() {
            into.remove(*t, name);
        }
    }
    for (t, map) in &fresh.by_type {
        for (name, r) in map {
            let before = old.and_then(|o| o.version(*t, name));
            if before != Some(r.version_id()) {
                changed.entry(*t).or_default().insert(name.clone());
                into.insert(*t, name.clone(), r.clone());
            }
        }
    }
}

/// One service's part of a gateway with what it was built from.
struct GatewayCached {
    merged: Arc<MeshService>,
    /// Its chains (its resources are in the class's set: `made` names them).
    part: GatewayPart,
    made: Made,
}

/// One cluster's gateway build state: each service's part, rebuilt only when the service
/// changed, and the listeners over all parts, rebuilt only when some part's chains changed.
struct GatewayBuild {
    ctx: ProxyContext,
    globals: Option<Globals>,
    seen: SeenClusters,
    parts: BTreeMap<ServiceKey, GatewayCached>,
    listeners: Made,
    latest: Option<Arc<ServiceSet>>,
    built_for: u64,
}

impl GatewayBuild {
    /// Rebuilds the parts of the services that changed (and drops those of services gone),
    /// swapping their resources in `resources`: how many were rebuilt, and whether any
    /// part's filter chains changed (then the listeners must be rebuilt).
    /// `all`: rebuild every part (a global input changed), against what each made before.
    fn update_parts(
        &mut self,
        index: &MeshIndex,
        all: bool,
        resources: &mut SharedResources,
        changed: &mut ChangedNames,
    ) -> (usize, bool) {
        let (mut rebuilt, mut chains_changed) = (0usize, false);
        let dirty = self.seen.changed(index);
        for (key, merged) in index.services() {
            let same = !all
                && self
                    .parts
                    .get(key)
                    .is_some_and(|c| Arc::ptr_eq(&c.merged, merged) && !dirty.contains(key));
            if same {
                continue;
            }
            let mut part = service_gateway_part(index, &self.ctx, key);
            let old = self.parts.remove(key);
            replace(
                resources,
                old.as_ref().map(|o| &o.made),
                &part.resources,
                changed,
            );
            chains_changed |= old
                .as_ref()
                .map_or(&GatewayPart::default(), |o| &o.part)
                .chains_differ(&part);
            let made = Made::of(&part.resources);
            part.resources = Resources::default();
            self.parts.insert(
                key.clone(),
                GatewayCached {
                    merged: Arc::clone(merged),
                    part,
                    made,
                },
            );
            rebuilt += 1;
        }
        for key in gone(self.parts.keys(), index) {
            if let Some(c) = self.parts.remove(&key) {
                let empty = GatewayPart::default();
                replace(resources, Some(&c.made), &empty.resources, changed);
                chains_changed |= c.part.chains_differ(&empty);
            }
        }
        (rebuilt, chains_changed)
    }

    /// The gateways' set for `index` at `version`: the latest one when nothing changed, else
    /// one with the changed services' parts swapped (and new listeners if chains changed).
    fn build(&mut self, index: &MeshIndex, version: u64) -> Arc<ServiceSet> {
        if let Some(latest) = self.latest.as_ref().filter(|_| self.built_for == version) {
            return Arc::clone(latest);
        }
        self.built_for = version;
        let cluster = self.ctx.identity.cluster.clone();
        let mut chains_changed = self.latest.is_none();
        let all = !self.globals.as_ref().is_some_and(|g| g.same(index));
        if all {
            self.globals = Some(Globals::of(index));
            chains_changed = true;
        }
        let mut changed: ChangedNames = BTreeMap::new();
        let mut resources = self
            .latest
            .as_ref()
            .map(|l| l.resources.clone())
            .unwrap_or_default();
        let (rebuilt, parts_changed) = self.update_parts(index, all, &mut resources, &mut changed);
        chains_changed |= parts_changed;
        if chains_changed {
            let listeners =
                gateway_listeners(index, &self.ctx, self.parts.values().map(|c| &c.part));
            replace(
                &mut resources,
                Some(&self.listeners),
                &listeners,
                &mut changed,
            );
            self.listeners = Made::of(&listeners);
        }
        tracing::debug!(%cluster, rebuilt, chains_changed, "gateway class built");
        let set = match &self.latest {
            Some(latest) if changed.is_empty() => return Arc::clone(latest),
            latest => Arc::new(ServiceSet {
                version,
                resources,
                changed_since: latest.as_ref().map(|l| (Arc::downgrade(l), changed)),
            }),
        };
        self.latest = Some(Arc::clone(&set));
        set
    }
}

/// A class's build, shared by its sessions (each holds the `Arc`; the registry only a `Weak`,
/// so a class with no proxy left is dropped).
pub struct ClassBuild {
    state: Mutex<ClassState>,
}

enum ClassState {
    Sidecar(Box<SidecarBuild>),
    Gateway(Box<GatewayBuild>),
}

impl ClassBuild {
    /// The class's set for `index` at `version` (built now unless already built for it).
    pub fn set(&self, index: &MeshIndex, version: u64) -> Arc<ServiceSet> {
        match &mut *lock(&self.state) {
            ClassState::Sidecar(b) => b.build(index, version),
            ClassState::Gateway(b) => b.build(index, version),
        }
    }
}

/// Every live class's build.
#[derive(Default)]
pub struct SharedBuilds {
    classes: Mutex<HashMap<String, Weak<ClassBuild>>>,
}

impl SharedBuilds {
    fn class(&self, key: String, make: impl FnOnce() -> ClassState) -> Arc<ClassBuild> {
        let mut classes = lock(&self.classes);
        if let Some(c) = classes.get(&key).and_then(Weak::upgrade) {
            return c;
        }
        let c = Arc::new(ClassBuild {
            state: Mutex::new(make()),
        });
        classes.insert(key, Arc::downgrade(&c));
        c
    }

    /// The build a sidecar shares with its class.
    pub fn sidecar(
        &self,
        index: &MeshIndex,
        node: &ProxyNode,
        ctx: &ProxyContext,
    ) -> Arc<ClassBuild> {
        let key = format!("sidecar|{}", sidecar_class(index, node, ctx));
        self.class(key, || {
            ClassState::Sidecar(Box::new(SidecarBuild {
                node: node.clone(),
                ctx: ctx.clone(),
                globals: None,
                seen: SeenClusters::default(),
                services: HashMap::new(),
                slots: None,
                latest: None,
                built_for: 0,
            }))
        })
    }

    /// The build every gateway of `ctx`'s cluster shares.
    pub fn gateway(&self, ctx: &ProxyContext) -> Arc<ClassBuild> {
        let cluster: &ClusterId = &ctx.identity.cluster;
        self.class(format!("gateway|{cluster}"), || {
            ClassState::Gateway(Box::new(GatewayBuild {
                ctx: ctx.clone(),
                globals: None,
                seen: SeenClusters::default(),
                parts: BTreeMap::new(),
                listeners: Made::default(),
                latest: None,
                built_for: 0,
            }))
        })
    }

    /// Every class some proxy still belongs to (forgetting the others).
    pub fn live(&self) -> Vec<Arc<ClassBuild>> {
        let mut classes = lock(&self.classes);
        classes.retain(|_, w| w.strong_count() > 0);
        classes.values().filter_map(Weak::upgrade).collect()
    }
}

#[cfg(test)]
#[path = "shared_tests.rs"]
mod tests;
