//! The shared, incremental push path against the reference: after any sequence of registry
//! changes, every session's desired resources equal a full uncached build for that proxy
//! (`build::sidecar_resources`, `build::gateway_resources`), and every name whose resource
//! differs from the previous build is among the candidates the session looks at, so nothing
//! owed is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use causeway_discovery::MeshIndex;
use causeway_model::{ClusterId, ClusterObjects, Health, ProxyIdentity, ProxyRole};
use proptest::prelude::*;

use super::*;
use crate::node::{DataPlane, OutboundBlock};

/// The example mesh and its objects.
fn example() -> (MeshIndex, BTreeMap<ClusterId, ClusterObjects>) {
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/three-clusters");
    let dir = causeway_registry::MeshDirectory::open(root);
    let objects: BTreeMap<ClusterId, ClusterObjects> = dir
        .clusters()
        .iter()
        .map(|(n, s)| {
            (
                ClusterId::new(n).expect("id"),
                (*s.objects.clone().expect("loaded")).clone(),
            )
        })
        .collect();
    let index = MeshIndex::build(Arc::clone(dir.mesh().expect("mesh")), objects.iter());
    (index, objects)
}

type Versions = BTreeMap<(TypeUrl, String), String>;

fn versions(r: &Resources) -> Versions {
    r.by_type
        .iter()
        .flat_map(|(t, m)| {
            m.iter()
                .map(move |(n, res)| ((*t, n.clone()), res.version.clone()))
        })
        .collect()
}

fn desired_versions(d: &Desired) -> Versions {
    TypeUrl::ORDER
        .into_iter()
        .flat_map(|t| {
            d.iter(t)
                .map(move |(n, r)| ((t, n.clone()), r.version.clone()))
        })
        .collect()
}

/// Every proxy of the example mesh: each workload's sidecar on both data planes and each
/// cluster's gateway.
fn nodes(objects: &BTreeMap<ClusterId, ClusterObjects>) -> Vec<ProxyNode> {
    let mut out = Vec::new();
    for (cluster, o) in objects {
        for (ns, name) in o.workload_entries.keys() {
            for data_plane in [DataPlane::Envoy, DataPlane::Causeway] {
                out.push(ProxyNode {
                    id: format!("{cluster}/{name}/{data_plane:?}"),
                    identity: ProxyIdentity {
                        cluster: cluster.clone(),
                        namespace: ns.clone(),
                        workload: name.clone(),
                        role: ProxyRole::Sidecar,
                    },
                    app_address: None,
                    outbound: OutboundBlock::parse("127.200.0.0/16").ok(),
                    network: None,
                    data_plane,
                });
            }
        }
        out.push(ProxyNode {
            id: format!("{cluster}/gateway"),
            identity: ProxyIdentity {
                cluster: cluster.clone(),
                namespace: "causeway-system".into(),
                workload: "eastwest-0".into(),
                role: ProxyRole::Gateway,
            },
            app_address: None,
            outbound: None,
            network: None,
            data_plane: DataPlane::Envoy,
        });
    }
    out
}

fn full_build(index: &MeshIndex, node: &ProxyNode) -> Option<Resources> {
    let ctx = node.resolve(index).ok()?;
    Some(match node.identity.role {
        ProxyRole::Sidecar => build::sidecar_resources(index, node, &ctx),
        ProxyRole::Gateway => build::gateway_resources(index, &ctx),
    })
}

/// One registry change to the example mesh.
#[derive(Debug, Clone)]
enum Change {
    /// The n-th workload entry (in a cluster picked by the first number) toggles health.
    Health(usize, usize),
    /// It moves to another address.
    Move(usize, usize, u8),
    /// It goes away.
    Remove(usize, usize),
    /// The n-th service of a cluster goes away.
    DropService(usize, usize),
    /// In one mesh version, a global input changes (a cluster's first gateway goes down or
    /// comes back up) and the n-th service goes away from every cluster: every class then
    /// rebuilds everything, and must still drop what the service made.
    Global(usize, usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0..3usize, 0..8usize).prop_map(|(c, n)| Change::Health(c, n)),
        (0..3usize, 0..8usize, 1..250u8).prop_map(|(c, n, a)| Change::Move(c, n, a)),
        (0..3usize, 0..8usize).prop_map(|(c, n)| Change::Remove(c, n)),
        (0..3usize, 0..4usize).prop_map(|(c, n)| Change::DropService(c, n)),
        (0..3usize, 0..4usize).prop_map(|(c, n)| Change::Global(c, n)),
    ]
}

fn apply(objects: &mut BTreeMap<ClusterId, ClusterObjects>, change: &Change) -> ClusterId {
    let pick = |c: usize| {
        objects
            .keys()
            .nth(c % objects.len())
            .cloned()
            .expect("a cluster")
    };
    let (cluster, n) = match change {
        Change::Health(c, n)
        | Change::Move(c, n, _)
        | Change::Remove(c, n)
        | Change::DropService(c, n)
        | Change::Global(c, n) => (pick(*c), *n),
    };
    let o = objects.get_mut(&cluster).expect("cluster");
    match change {
        Change::Global(..) => unreachable!("applied to the index by the test"),
        Change::DropService(..) => {
            if let Some(key) = o.services.keys().nth(n % o.services.len().max(1)).cloned() {
                o.services.remove(&key);
            }
        }
        _ => {
            let Some(key) = o
                .workload_entries
                .keys()
                .nth(n % o.workload_entries.len().max(1))
                .cloned()
            else {
                return cluster;
            };
            match change {
                Change::Health(..) => {
                    if let Some(we) = o.workload_entries.get_mut(&key) {
                        we.health = match we.health {
                            Health::Healthy => Health::Unhealthy,
                            _ => Health::Healthy,
                        };
                    }
                }
                Change::Move(_, _, a) => {
                    if let Some(we) = o.workload_entries.get_mut(&key) {
                        we.address = IpAddr::V4(Ipv4Addr::new(127, 9, 0, *a));
                    }
                }
                _ => {
                    o.workload_entries.remove(&key);
                }
            }
        }
    }
    cluster
}

/// Marks cluster `c`'s first gateway down, or up again if it was.
fn toggle_gateway(index: &mut MeshIndex, c: usize) {
    let mesh = Arc::clone(index.mesh());
    let Some(gw) = mesh
        .clusters
        .get(c % mesh.clusters.len().max(1))
        .and_then(|s| s.gateways.first())
    else {
        return;
    };
    let mut down = (**index.gateways_down()).clone();
    if down.remove(gw).is_none() {
        down.insert(*gw, "probe failed".into());
    }
    index.set_gateways_down(down);
}

fn session(node: ProxyNode, shared: &Arc<SharedBuilds>) -> Session {
    Session {
        conn: 1,
        node,
        registry: Arc::new(ProxyRegistry::new(false)),
        desired: Desired::default(),
        mesh_version: 0,
        built: false,
        shared: Arc::clone(shared),
        class: None,
        own_inputs: None,
        warming: None,
    }
}

/// Checks every session against the reference, and that candidates cover what changed.
fn check(sessions: &mut [Session], state: &MeshState, before: &[Versions]) -> Vec<Versions> {
    let index = state.index.as_ref().expect("index");
    let mut now = Vec::new();
    for (s, prev) in sessions.iter_mut().zip(before) {
        let Some(reference) = full_build(index, &s.node) else {
            // No longer resolves (its workload went away): the last config is kept.
            let kept = desired_versions(&s.desired);
            s.rebuild(state);
            assert_eq!(
                desired_versions(&s.desired),
                kept,
                "{}: last config kept",
                s.node.id
            );
            now.push(kept);
            continue;
        };
        let candidates = s.rebuild(state);
        let got = desired_versions(&s.desired);
        let want = versions(&reference);
        assert_eq!(
            got, want,
            "{}: shared build differs from a full build",
            s.node.id
        );
        if let Some(candidates) = candidates {
            let differing: BTreeSet<&(TypeUrl, String)> = prev
                .iter()
                .filter(|(k, v)| want.get(*k) != Some(*v))
                .map(|(k, _)| k)
                .chain(want.keys().filter(|k| !prev.contains_key(*k)))
                .collect();
            for (t, name) in differing {
                assert!(
                    candidates.get(t).is_some_and(|c| c.contains(name)),
                    "{}: {t:?} {name} changed but is not a candidate",
                    s.node.id
                );
            }
        }
        now.push(want);
    }
    now
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn shared_incremental_builds_equal_full_builds(changes in proptest::collection::vec(change(), 1..6)) {
        let (mut index, mut objects) = example();
        let shared = Arc::new(SharedBuilds::default());
        let mut sessions: Vec<Session> = nodes(&objects).into_iter().map(|n| session(n, &shared)).collect();
        let mut state = MeshState { version: 1, index: Some(Arc::new(index.clone())) };
        let empty = vec![Versions::new(); sessions.len()];
        let mut held = check(&mut sessions, &state, &empty);
        for (i, c) in changes.iter().enumerate() {
            if let Change::Global(c, n) = c {
                toggle_gateway(&mut index, *c);
                let keys: BTreeSet<_> = objects.values().flat_map(|o| o.services.keys().cloned()).collect();
                if let Some(key) = keys.iter().nth(n % keys.len().max(1)) {
                    for (id, o) in objects.iter_mut() {
                        if o.services.remove(key).is_some() {
                            index.set_cluster(id, o).expect("set");
                        }
                    }
                }
            } else {
                let cluster = apply(&mut objects, c);
                index.set_cluster(&cluster, &objects[&cluster]).expect("set");
            }
            state = MeshState { version: 2 + i as u64, index: Some(Arc::new(index.clone())) };
            // The server builds every live class first; sessions then take the built sets.
            for class in shared.live() {
                class.set(&index, state.version);
            }
            held = check(&mut sessions, &state, &held);
        }
    }
}

#[test]
fn sidecars_of_one_class_share_one_set_and_an_untouched_class_keeps_it() {
    let (mut index, mut objects) = example();
    let shared = Arc::new(SharedBuilds::default());
    let all = nodes(&objects);
    let alpha: Vec<ProxyNode> = all
        .iter()
        .filter(|n| {
            n.identity.cluster.as_str() == "alpha"
                && n.identity.role == ProxyRole::Sidecar
                && n.data_plane == DataPlane::Envoy
        })
        .cloned()
        .collect();
    assert!(alpha.len() >= 2, "the example has two alpha workloads");
    let state = MeshState {
        version: 1,
        index: Some(Arc::new(index.clone())),
    };
    let mut sessions: Vec<Session> = alpha.into_iter().map(|n| session(n, &shared)).collect();
    for s in &mut sessions {
        s.rebuild(&state);
    }
    let sets: Vec<_> = sessions
        .iter()
        .map(|s| s.desired.shared.clone().expect("set"))
        .collect();
    assert!(Arc::ptr_eq(&sets[0], &sets[1]), "one set for the class");
    // A change in a cluster no alpha service reads from... every alpha sidecar sees every
    // exported service, so change something only gamma's own inbound depends on: an
    // AuthorizationPolicy-free workload label. Its set stays the same Arc.
    let gamma = ClusterId::new("gamma").expect("id");
    if let Some(we) = objects
        .get_mut(&gamma)
        .and_then(|o| o.workload_entries.values_mut().next())
    {
        we.labels.insert("unrelated".into(), "x".into());
    }
    index.set_cluster(&gamma, &objects[&gamma]).expect("set");
    let state = MeshState {
        version: 2,
        index: Some(Arc::new(index.clone())),
    };
    for s in &mut sessions {
        let candidates = s.rebuild(&state).expect("incremental");
        assert!(
            candidates.values().all(BTreeSet::is_empty),
            "{}: nothing owed: {candidates:?}",
            s.node.id
        );
        assert!(Arc::ptr_eq(
            s.desired.shared.as_ref().expect("set"),
            &sets[0]
        ));
        assert_eq!(s.mesh_version, 2);
    }
}
