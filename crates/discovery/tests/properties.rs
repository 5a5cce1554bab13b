//! Property: for every proxy, every ready endpoint with an identity it may see appears exactly
//! once, either directly or behind exactly one gateway whose weight counts it; every ready
//! endpoint without an identity is hidden exactly once, for that reason; the identities to
//! accept are exactly those of the endpoints included; nothing else appears.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use causeway_discovery::{EndpointKind, NO_IDENTITY_REASON};
use causeway_model::Health;
use common::*;
use proptest::prelude::*;

/// An EndpointSlice of the service: (annotated with a service account, endpoints as
/// (ready, its Pod's service account is known)).
type GenSlice = (bool, Vec<(bool, bool)>);

/// (exported, export-to mask, cluster-local, workloads as (ready, weight), slice).
type GenService = (bool, Option<u8>, bool, Vec<(bool, u32)>, GenSlice);

#[derive(Debug, Clone)]
struct GenCluster {
    network: usize,
    locality: usize,
    gateways: usize,
    /// Per service: `None` when the cluster does not define it.
    services: Vec<Option<GenService>>,
}

const LOCALITIES: [&str; 4] = ["r1/z1", "r1/z2", "r2/z1", "r2/z2/s1"];
const SERVICES: usize = 3;

fn gen_cluster() -> impl Strategy<Value = GenCluster> {
    let svc = proptest::option::of((
        any::<bool>(),
        proptest::option::of(0u8..16),
        proptest::bool::weighted(0.15),
        proptest::collection::vec((proptest::bool::weighted(0.8), 1u32..4), 0..4),
        (
            proptest::bool::weighted(0.3),
            proptest::collection::vec((proptest::bool::weighted(0.8), any::<bool>()), 0..4),
        ),
    ));
    (
        0usize..3,
        0usize..4,
        0usize..3,
        proptest::collection::vec(svc, SERVICES),
    )
        .prop_map(|(network, locality, gateways, services)| GenCluster {
            network,
            locality,
            gateways,
            services,
        })
}

fn build(clusters: &[GenCluster], sameness: bool) -> MeshBuilder {
    let mut m = mesh();
    if sameness {
        m = m.sameness();
    }
    for (i, c) in clusters.iter().enumerate() {
        let gws: Vec<String> = (0..c.gateways)
            .map(|g| format!("192.0.2.{}:{}", i * 4 + g + 1, 15443))
            .collect();
        let gw_refs: Vec<&str> = gws.iter().map(String::as_str).collect();
        m = m.cluster(
            &format!("c{i}"),
            &format!("n{}", c.network),
            LOCALITIES[c.locality],
            &gw_refs,
        );
    }
    let names: Vec<String> = (0..clusters.len()).map(|i| format!("c{i}")).collect();
    for (i, c) in clusters.iter().enumerate() {
        let cl = &names[i];
        for (s, def) in c.services.iter().enumerate() {
            let Some((exported, mask, local, workloads, (annotated, slice_eps))) = def else {
                continue;
            };
            let svc = format!("s{s}");
            m = m
                .service(cl, "ns", &svc, &[80])
                .with_service(cl, "ns", &svc, |x| x.cluster_local = *local);
            for (w, (ready, weight)) in workloads.iter().enumerate() {
                let health = if *ready {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                };
                m = m.workload_full(
                    cl,
                    "ns",
                    &format!("{svc}-{w}"),
                    &format!("10.0.{s}.{w}"),
                    &svc,
                    health,
                    *weight,
                    None,
                    None,
                );
            }
            if !slice_eps.is_empty() {
                let pods: Vec<(String, String, Option<&str>)> = slice_eps
                    .iter()
                    .enumerate()
                    .map(|(w, (_, pod_sa))| {
                        (
                            format!("10.1.{s}.{w}"),
                            format!("{svc}-pod-{w}"),
                            pod_sa.then_some("pod-sa"),
                        )
                    })
                    .collect();
                let refs: Vec<(&str, &str, Option<&str>)> = pods
                    .iter()
                    .map(|(a, n, sa)| (a.as_str(), n.as_str(), *sa))
                    .collect();
                let slice = format!("{svc}-slice");
                m = m.slice(
                    cl,
                    "ns",
                    &svc,
                    &slice,
                    80,
                    annotated.then_some("annotated-sa"),
                    &refs,
                );
                if let Some(es) = m
                    .objects
                    .get_mut(&cid(cl))
                    .and_then(|o| o.endpoint_slices.get_mut(&("ns".to_owned(), slice)))
                {
                    for (ep, (ready, _)) in es.endpoints.iter_mut().zip(slice_eps) {
                        ep.ready = *ready;
                    }
                }
            }
            if *exported {
                let to: Option<Vec<&str>> = mask.map(|mask| {
                    names
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| mask & (1 << j) != 0)
                        .map(|(_, n)| n.as_str())
                        .collect()
                });
                let to = to.filter(|t| !t.is_empty());
                m = m.export(cl, "ns", &svc, to.as_deref(), None);
            }
        }
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_visible_ready_endpoint_appears_exactly_once_or_is_hidden_for_want_of_identity(
        clusters in proptest::collection::vec(gen_cluster(), 1..5),
        sameness in any::<bool>(),
    ) {
        let m = build(&clusters, sameness);
        let index = m.index();
        let network_has_gateway = |n: usize| clusters.iter().any(|c| c.network == n && c.gateways > 0);
        for (k, proxy_cluster) in clusters.iter().enumerate() {
            let view = view_of(&index, &format!("c{k}"));
            for s in 0..SERVICES {
                // Oracle: which (cluster, address, weight) the proxy may use, and how.
                let mut want_direct: Vec<(String, String)> = Vec::new();
                let mut want_remote: Vec<(String, String, u32)> = Vec::new();
                let mut want_no_identity: Vec<(String, String)> = Vec::new();
                for (x, c) in clusters.iter().enumerate() {
                    let Some((exported, mask, local, workloads, (annotated, slice_eps))) = &c.services[s] else { continue };
                    let allowed = mask.is_none_or(|m| m & ((1u8 << clusters.len()) - 1) == 0 || m & (1 << k) != 0);
                    let visible = x == k || (!local && (*exported || sameness) && (allowed || (sameness && !exported)));
                    if !visible { continue; }
                    for (w, (ready, weight)) in workloads.iter().enumerate() {
                        if !ready { continue; }
                        let entry = (format!("c{x}"), format!("10.0.{s}.{w}"));
                        if c.network == proxy_cluster.network {
                            want_direct.push(entry);
                        } else if network_has_gateway(c.network) {
                            want_remote.push((entry.0, entry.1, *weight));
                        }
                    }
                    for (w, (ready, pod_sa)) in slice_eps.iter().enumerate() {
                        if !ready { continue; }
                        let entry = (format!("c{x}"), format!("10.1.{s}.{w}"));
                        if !annotated && !pod_sa {
                            want_no_identity.push(entry);
                        } else if c.network == proxy_cluster.network {
                            want_direct.push(entry);
                        } else if network_has_gateway(c.network) {
                            want_remote.push((entry.0, entry.1, 1));
                        }
                    }
                }
                let Some(p) = port(&view, "ns", &format!("s{s}"), 80) else {
                    let defined_visible = clusters.iter().enumerate().any(|(x, c)| {
                        x == k && c.services[s].is_some()
                    });
                    prop_assert!(want_direct.is_empty() && want_remote.is_empty() && want_no_identity.is_empty() && !defined_visible,
                        "service s{s} missing from view of c{k}");
                    continue;
                };
                let mut got_direct: Vec<(String, String)> = p.endpoints()
                    .filter(|e| e.kind == EndpointKind::Direct)
                    .map(|e| (e.cluster.to_string(), e.address.to_string()))
                    .collect();
                let mut got_remote: Vec<(String, String, u32)> = p.remote.iter()
                    .map(|e| (e.cluster.to_string(), e.address.to_string(), e.weight))
                    .collect();
                let mut got_no_identity: Vec<(String, String)> = p.hidden.iter()
                    .filter(|h| h.reason == NO_IDENTITY_REASON)
                    .map(|h| (h.cluster.to_string(), h.address.to_string()))
                    .collect();
                want_direct.sort(); got_direct.sort(); want_remote.sort(); got_remote.sort();
                want_no_identity.sort(); got_no_identity.sort();
                prop_assert_eq!(&got_direct, &want_direct);
                prop_assert_eq!(&got_remote, &want_remote);
                prop_assert_eq!(&got_no_identity, &want_no_identity);
                // The identities to accept are exactly those of the endpoints included.
                let mut included = BTreeSet::new();
                for e in p.endpoints().filter(|e| e.kind == EndpointKind::Direct).chain(p.remote.iter()) {
                    prop_assert!(e.identity.is_some(), "included without identity: {e:?}");
                    included.extend(e.identity.clone());
                }
                prop_assert_eq!(&included, &p.identities);
                // Every remote endpoint is counted in exactly one gateway's weight.
                let mut behind: BTreeMap<(String, String), u32> = BTreeMap::new();
                for r in &p.remote {
                    let via = r.via.map(|g| g.to_string());
                    prop_assert!(via.is_some(), "remote endpoint without gateway");
                    *behind.entry((r.locality.to_string(), via.unwrap_or_default())).or_default() += r.weight;
                }
                let mut gateways: BTreeMap<(String, String), u32> = BTreeMap::new();
                for g in p.endpoints().filter(|e| e.kind == EndpointKind::Gateway) {
                    let prev = gateways.insert((g.locality.to_string(), format!("{}:{}", g.address, g.port)), g.weight);
                    prop_assert!(prev.is_none(), "one gateway endpoint per gateway and locality");
                }
                prop_assert_eq!(behind, gateways);
                // Priorities have no gaps.
                let prios: Vec<u32> = p.groups.iter().map(|g| g.priority).collect();
                let mut distinct = prios.clone();
                distinct.dedup();
                prop_assert!(distinct.iter().enumerate().all(|(i, p)| *p == i as u32), "gaps: {prios:?}");
            }
        }
    }
}
