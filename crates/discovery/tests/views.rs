//! Unit tests of the mesh index and per-proxy views, one per rule.

mod common;

use causeway_discovery::{view, ConditionKind, EndpointKind, NO_IDENTITY_REASON};
use causeway_model::{Health, ServiceKey};
use common::*;

fn addrs(p: &causeway_discovery::ViewPort) -> Vec<(String, EndpointKind, u32, u32)> {
    p.endpoints()
        .map(|e| {
            (
                format!("{}:{}", e.address, e.port),
                e.kind,
                e.priority,
                e.weight,
            )
        })
        .collect()
}

#[test]
fn single_network_three_clusters_all_direct() {
    let m = mesh()
        .cluster("a", "flat", "r1/z1", &[])
        .cluster("b", "flat", "r1/z2", &[])
        .cluster("c", "flat", "r2/z1", &[])
        .service("a", "shop", "echo", &[80])
        .service("b", "shop", "echo", &[80])
        .service("c", "shop", "echo", &[80])
        .workload("a", "shop", "e-a", "10.0.0.1", "echo")
        .workload("b", "shop", "e-b", "10.0.0.2", "echo")
        .workload("c", "shop", "e-c", "10.0.0.3", "echo")
        .export("a", "shop", "echo", None, None)
        .export("b", "shop", "echo", None, None)
        .export("c", "shop", "echo", None, None);
    let index = m.index();
    let v = view_of(&index, "a");
    let p = port(&v, "shop", "echo", 80).expect("echo visible");
    assert_eq!(
        addrs(p),
        vec![
            ("10.0.0.1:8080".into(), EndpointKind::Direct, 0, 1),
            ("10.0.0.2:8080".into(), EndpointKind::Direct, 1, 1),
            ("10.0.0.3:8080".into(), EndpointKind::Direct, 2, 1),
        ]
    );
    assert!(p.remote.is_empty() && p.hidden.is_empty());
    assert_eq!(p.sni, "outbound_.80_._.echo.shop.svc.cluster.local");
    assert_eq!(
        p.identities
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>(),
        vec!["spiffe://td.local/ns/shop/sa/echo"]
    );
}

#[test]
fn two_networks_remote_through_gateway_with_weight() {
    let m = mesh()
        .cluster("a", "net1", "r1/z1", &["192.0.2.1:15443"])
        .cluster("b", "net2", "r2/z1", &["192.0.2.2:15443"])
        .service("a", "shop", "echo", &[80])
        .service("b", "shop", "echo", &[80])
        .workload("a", "shop", "e-a", "10.0.0.1", "echo")
        .workload("b", "shop", "e-b1", "10.0.0.1", "echo")
        .workload("b", "shop", "e-b2", "10.0.0.2", "echo")
        .workload_full(
            "b",
            "shop",
            "e-b3",
            "10.0.0.3",
            "echo",
            Health::Healthy,
            3,
            None,
            None,
        )
        .export("b", "shop", "echo", None, None);
    let index = m.index();
    let p = port(&view_of(&index, "a"), "shop", "echo", 80)
        .cloned()
        .expect("visible");
    // Local endpoint direct at priority 0; B's three endpoints collapse to B's gateway,
    // weight 1 + 1 + 3, at priority 1 (other region, renumbered without a gap).
    assert_eq!(
        addrs(&p),
        vec![
            ("10.0.0.1:8080".into(), EndpointKind::Direct, 0, 1),
            ("192.0.2.2:15443".into(), EndpointKind::Gateway, 1, 5),
        ]
    );
    assert_eq!(p.remote.len(), 3);
    assert!(p
        .remote
        .iter()
        .all(|r| r.via.map(|g| g.to_string()) == Some("192.0.2.2:15443".into())));
    assert!(p
        .remote
        .iter()
        .all(|r| r.kind == EndpointKind::Remote && r.cluster.as_str() == "b"));
    // B's proxies do not see A's endpoints: A did not export.
    let pb = port(&view_of(&index, "b"), "shop", "echo", 80)
        .cloned()
        .expect("visible");
    assert_eq!(pb.endpoints().count(), 3);
    assert!(pb
        .endpoints()
        .all(|e| e.kind == EndpointKind::Direct && e.cluster.as_str() == "b"));
}

#[test]
fn mixed_model_direct_on_shared_network_gateway_elsewhere() {
    let m = mesh()
        .cluster("a", "shared", "r1/z1", &["192.0.2.1:15443"])
        .cluster("b", "shared", "r1/z2", &["192.0.2.2:15443"])
        .cluster("c", "island", "r1/z3", &["192.0.2.3:15443"])
        .service("b", "shop", "echo", &[80])
        .service("c", "shop", "echo", &[80])
        .workload("b", "shop", "e-b", "10.0.0.2", "echo")
        .workload("c", "shop", "e-c", "10.0.0.2", "echo")
        .export("b", "shop", "echo", None, None)
        .export("c", "shop", "echo", None, None);
    let index = m.index();
    let p = port(&view_of(&index, "a"), "shop", "echo", 80)
        .cloned()
        .expect("visible");
    let eps: Vec<_> = p
        .endpoints()
        .map(|e| (e.address.to_string(), e.kind, e.cluster.to_string()))
        .collect();
    assert!(eps.contains(&("10.0.0.2".into(), EndpointKind::Direct, "b".into())));
    assert!(eps.contains(&("192.0.2.3".into(), EndpointKind::Gateway, "c".into())));
    assert_eq!(
        eps.len(),
        2,
        "the same pod IP on the island network is never sent directly: {eps:?}"
    );
}

#[test]
fn network_without_gateway_is_unreachable_and_said_so() {
    let m = mesh()
        .cluster("a", "net1", "r1/z1", &["192.0.2.1:15443"])
        .cluster("b", "net2", "r1/z1", &[])
        .service("b", "shop", "echo", &[80])
        .workload("b", "shop", "e-b", "10.0.0.2", "echo")
        .export("b", "shop", "echo", None, None);
    let index = m.index();
    let p = port(&view_of(&index, "a"), "shop", "echo", 80)
        .cloned()
        .expect("visible");
    assert_eq!(p.endpoints().count(), 0);
    assert_eq!(p.hidden.len(), 1);
    assert!(
        p.hidden[0]
            .reason
            .contains("network net2 has no east-west gateway"),
        "{}",
        p.hidden[0].reason
    );
}

#[test]
fn unready_endpoints_are_left_out() {
    let m = mesh()
        .cluster("a", "net1", "r1/z1", &[])
        .service("a", "shop", "echo", &[80])
        .workload("a", "shop", "e-1", "10.0.0.1", "echo")
        .workload_full(
            "a",
            "shop",
            "e-2",
            "10.0.0.2",
            "echo",
            Health::Unhealthy,
            1,
            None,
            None,
        )
        .workload_full(
            "a",
            "shop",
            "e-3",
            "10.0.0.3",
            "echo",
            Health::Draining,
            1,
            None,
            None,
        );
    let index = m.index();
    let p = port(&view_of(&index, "a"), "shop", "echo", 80)
        .cloned()
        .expect("visible");
    assert_eq!(p.endpoints().count(), 1);
    let reasons: Vec<_> = p.hidden.iter().map(|h| h.reason.as_str()).collect();
    assert_eq!(reasons, vec!["not ready: unhealthy", "not ready: draining"]);
}

#[test]
fn cluster_local_service_never_leaves_its_cluster() {
    let m = mesh()
        .cluster("a", "flat", "r1/z1", &[])
        .cluster("b", "flat", "r1/z1", &[])
        .service("b", "shop", "cache", &[6379])
        .with_service("b", "shop", "cache", |s| s.cluster_local = true)
        .workload("b", "shop", "cache-1", "10.0.0.9", "cache")
        .export("b", "shop", "cache", None, None)
        .service("b", "kube-system", "dns", &[53])
        .workload("b", "kube-system", "dns-1", "10.0.0.10", "dns")
        .export("b", "kube-system", "dns", None, None);
    let index = m.index();
    let va = view_of(&index, "a");
    assert!(port(&va, "shop", "cache", 6379).is_none());
    assert!(
        port(&va, "kube-system", "dns", 53).is_none(),
        "kube-system is cluster-local by default"
    );
    assert!(
        port(&view_of(&index, "b"), "shop", "cache", 6379).is_some(),
        "still visible at home"
    );
    let cache = index
        .service(&ServiceKey::new("shop", "cache"))
        .expect("indexed");
    let valid = cache
        .conditions
        .iter()
        .find(|c| c.kind == ConditionKind::Valid)
        .expect("valid condition");
    assert!(!valid.status);
    assert_eq!(valid.reason, "ClusterLocal");
    let hidden =
        causeway_discovery::view::hidden_services(&index, &ctx(&index, "a", "default", "client"));
    assert!(hidden
        .iter()
        .any(|h| h.key.name == "cache" && h.reason.contains("cluster-local")));
}

#[test]
fn unexported_service_is_invisible_elsewhere() {
    let m = mesh()
        .cluster("a", "flat", "r1/z1", &[])
        .cluster("b", "flat", "r1/z1", &[])
        .service("b", "shop", "secret", &[80])
        .workload("b", "shop", "s-1", "10.0.0.5", "secret");
    let index = m.index();
    assert!(port(&view_of(&index, "a"), "shop", "secret", 80).is_none());
    assert!(port(&view_of(&index, "b"), "shop", "secret", 80).is_some());
    let hidden =
        causeway_discovery::view::hidden_services(&index, &ctx(&index, "a", "default", "client"));
    assert_eq!(hidden.len(), 1);
    assert_eq!(
        hidden[0].reason,
        "not exported from cluster b (no ServiceExport)"
    );
    assert!(index.imports_for(&cid("a")).is_empty());
    // The same mesh in sameness mode merges it.
    let index = m.sameness().index();
    assert!(port(&view_of(&index, "a"), "shop", "secret", 80).is_some());
}

#[test]
fn export_to_chosen_clusters_only() {
    let m = mesh()
        .cluster("a", "flat", "r1/z1", &[])
        .cluster("b", "flat", "r1/z1", &[])
        .cluster("c", "flat", "r1/z1", &[])
        .service("c", "shop", "echo", &[80])
        .workload("c", "shop", "e-c", "10.0.0.3", "echo")
        .export("c", "shop", "echo", Some(&["a"]), None);
    let index = m.index();
    assert!(port(&view_of(&index, "a"), "shop", "echo", 80).is_some());
    assert!(port(&view_of(&index, "b"), "shop", "echo", 80).is_none());
    assert_eq!(index.imports_for(&cid("a")).len(), 1);
    assert_eq!(index.imports_for(&cid("a"))[0].clusters, vec![cid("c")]);
    assert!(index.imports_for(&cid("b")).is_empty());
    let hidden =
        causeway_discovery::view::hidden_services(&index, &ctx(&index, "b", "default", "client"));
    assert_eq!(hidden[0].reason, "cluster c exports it only to a");
}

#[test]
fn export_conflict_resolved_by_oldest_export() {
    let m = mesh()
        .cluster("a", "flat", "r1/z1", &[])
        .cluster("b", "flat", "r1/z1", &[])
        .service("a", "shop", "echo", &[80, 81])
        .service("b", "shop", "echo", &[80, 82])
        .with_service("b", "shop", "echo", |s| {
            s.ports[0].app_protocol = Some("grpc".into())
        })
        .workload("a", "shop", "e-a", "10.0.0.1", "echo")
        .workload("b", "shop", "e-b", "10.0.0.2", "echo")
        // b's export is older by timestamp although a is declared first.
        .export("a", "shop", "echo", None, Some(2_000))
        .export("b", "shop", "echo", None, Some(1_000));
    let index = m.index();
    let svc = index
        .service(&ServiceKey::new("shop", "echo"))
        .expect("merged");
    assert_eq!(svc.exports[0].cluster, cid("b"), "oldest first");
    assert_eq!(
        svc.age_source,
        causeway_discovery::AgeSource::CreationTimestamp
    );
    // Ports are the union; port 80 takes b's definition (appProtocol grpc).
    let ports: Vec<(u16, Option<&str>)> = svc
        .ports
        .iter()
        .map(|p| (p.port, p.app_protocol.as_deref()))
        .collect();
    assert_eq!(
        ports,
        vec![(80, Some("grpc")), (82, Some("http")), (81, Some("http"))]
    );
    let conflict = svc
        .conditions
        .iter()
        .find(|c| c.kind == ConditionKind::Conflict)
        .expect("conflict");
    assert_eq!(conflict.reason, "PortConflict");
    assert!(
        conflict
            .message
            .contains("resolved in favour of cluster b (creationTimestamp 1000)"),
        "{}",
        conflict.message
    );
    // Without timestamps, declaration order decides and says so.
    let m2 = mesh()
        .cluster("a", "flat", "r1/z1", &[])
        .cluster("b", "flat", "r1/z1", &[])
        .service("a", "shop", "echo", &[80])
        .service("b", "shop", "echo", &[80])
        .with_service("b", "shop", "echo", |s| {
            s.ports[0].name = Some("web".into())
        })
        .export("a", "shop", "echo", None, None)
        .export("b", "shop", "echo", None, None);
    let index = m2.index();
    let svc = index
        .service(&ServiceKey::new("shop", "echo"))
        .expect("merged");
    let conflict = svc
        .conditions
        .iter()
        .find(|c| c.kind == ConditionKind::Conflict)
        .expect("conflict");
    assert!(
        conflict
            .message
            .contains("cluster a (declared 1st in mesh.yaml)"),
        "{}",
        conflict.message
    );
    assert_eq!(
        svc.age_source,
        causeway_discovery::AgeSource::DeclarationOrder
    );
}

#[test]
fn locality_priorities_relative_to_the_proxy() {
    let m = mesh()
        .cluster("a", "flat", "eu/eu-1", &[])
        .service("a", "shop", "echo", &[80])
        .workload_full(
            "a",
            "shop",
            "client",
            "10.0.1.1",
            "client",
            Health::Healthy,
            1,
            Some("eu/eu-1/rack1"),
            None,
        )
        .workload_full(
            "a",
            "shop",
            "e0",
            "10.0.0.1",
            "echo",
            Health::Healthy,
            1,
            Some("eu/eu-1/rack1"),
            None,
        )
        .workload_full(
            "a",
            "shop",
            "e1",
            "10.0.0.2",
            "echo",
            Health::Healthy,
            1,
            Some("eu/eu-1/rack2"),
            None,
        )
        .workload_full(
            "a",
            "shop",
            "e2",
            "10.0.0.3",
            "echo",
            Health::Healthy,
            1,
            Some("eu/eu-2"),
            None,
        )
        .workload_full(
            "a",
            "shop",
            "e3",
            "10.0.0.4",
            "echo",
            Health::Healthy,
            1,
            Some("us/us-1"),
            None,
        );
    let index = m.index();
    let c = ctx(&index, "a", "shop", "client");
    assert!(c.workload_found);
    let v = causeway_discovery::view::view(&index, &c);
    let p = port(&v, "shop", "echo", 80).expect("visible");
    let prio: Vec<(String, u32)> = p
        .endpoints()
        .map(|e| (e.address.to_string(), e.priority))
        .collect();
    assert_eq!(
        prio,
        vec![
            ("10.0.0.1".into(), 0),
            ("10.0.0.2".into(), 1),
            ("10.0.0.3".into(), 2),
            ("10.0.0.4".into(), 3)
        ]
    );
    // Without the subzone and zone matches, priorities are renumbered without gaps.
    let m = mesh()
        .cluster("a", "flat", "eu/eu-1", &[])
        .service("a", "shop", "echo", &[80])
        .workload_full(
            "a",
            "shop",
            "e2",
            "10.0.0.3",
            "echo",
            Health::Healthy,
            1,
            Some("eu/eu-2"),
            None,
        )
        .workload_full(
            "a",
            "shop",
            "e3",
            "10.0.0.4",
            "echo",
            Health::Healthy,
            1,
            Some("us/us-1"),
            None,
        );
    let index = m.index();
    let p = port(&view_of(&index, "a"), "shop", "echo", 80)
        .cloned()
        .expect("visible");
    let prio: Vec<u32> = p.groups.iter().map(|g| g.priority).collect();
    assert_eq!(prio, vec![0, 1]);
}

#[test]
fn gateway_weight_counts_endpoints_behind_each_gateway() {
    // b has two gateways: its four endpoints are spread two and two; a cluster without its own
    // gateway (c) is reached through its network's gateways.
    let m = mesh()
        .cluster("a", "net1", "r1/z1", &["192.0.2.1:15443"])
        .cluster(
            "b",
            "net2",
            "r2/z1",
            &["192.0.2.2:15443", "192.0.2.3:15443"],
        )
        .cluster("c", "net2", "r2/z1", &[])
        .service("b", "shop", "echo", &[80])
        .service("c", "shop", "echo", &[80])
        .workload("b", "shop", "b1", "10.0.0.1", "echo")
        .workload("b", "shop", "b2", "10.0.0.2", "echo")
        .workload("b", "shop", "b3", "10.0.0.3", "echo")
        .workload("b", "shop", "b4", "10.0.0.4", "echo")
        .workload_full(
            "c",
            "shop",
            "c1",
            "10.0.0.5",
            "echo",
            Health::Healthy,
            2,
            None,
            None,
        )
        .export("b", "shop", "echo", None, None)
        .export("c", "shop", "echo", None, None);
    let index = m.index();
    let p = port(&view_of(&index, "a"), "shop", "echo", 80)
        .cloned()
        .expect("visible");
    let gws: Vec<(String, u32)> = p
        .endpoints()
        .map(|e| (format!("{}:{}", e.address, e.port), e.weight))
        .collect();
    // b's endpoints and c's weight-2 endpoint share the network's gateway set {.2, .3}.
    let total: u32 = gws.iter().map(|g| g.1).sum();
    assert_eq!(total, 6);
    assert_eq!(gws.len(), 2);
    for (gw, weight) in &gws {
        let behind: u32 = p
            .remote
            .iter()
            .filter(|r| r.via.map(|v| v.to_string()).as_deref() == Some(gw.as_str()))
            .map(|r| r.weight)
            .sum();
        assert_eq!(
            *weight, behind,
            "gateway {gw} weight equals the endpoints behind it"
        );
    }
}

#[test]
fn incremental_update_reports_only_changed_services() {
    let mut m = mesh()
        .cluster("a", "flat", "r1/z1", &[])
        .service("a", "shop", "echo", &[80])
        .service("a", "shop", "other", &[80])
        .workload("a", "shop", "e-1", "10.0.0.1", "echo")
        .workload("a", "shop", "o-1", "10.0.0.2", "other");
    let mut index = m.index();
    let before = index
        .service(&ServiceKey::new("shop", "other"))
        .cloned()
        .expect("other");
    m = m.workload("a", "shop", "e-2", "10.0.0.3", "echo");
    let changed = index
        .set_cluster(&cid("a"), &m.objects[&cid("a")])
        .expect("known cluster");
    assert_eq!(
        changed.into_iter().collect::<Vec<_>>(),
        vec![ServiceKey::new("shop", "echo")]
    );
    assert!(std::sync::Arc::ptr_eq(
        &before,
        index
            .service(&ServiceKey::new("shop", "other"))
            .expect("other")
    ));
    assert_eq!(
        port(&view_of(&index, "a"), "shop", "echo", 80)
            .expect("echo")
            .endpoints()
            .count(),
        2
    );
    assert!(index
        .set_cluster(&cid("zz"), &m.objects[&cid("a")])
        .is_err());
}

#[test]
fn endpoints_without_identity_are_left_out_with_the_reason() {
    let m = mesh()
        .cluster("a", "net1", "r1/z1", &["192.0.2.1:15443"])
        .cluster("b", "net2", "r1/z1", &["192.0.2.2:15443"])
        .service("a", "shop", "echo", &[80])
        .service("b", "shop", "echo", &[80])
        .workload("a", "shop", "e-a", "10.0.0.1", "echo")
        // a: one pod with a service account, one without any identity.
        .slice(
            "a",
            "shop",
            "echo",
            "echo-a",
            80,
            None,
            &[
                ("10.0.1.1", "pod-a1", Some("worker")),
                ("10.0.1.2", "pod-a2", None),
            ],
        )
        // b: an annotated slice (its endpoints take the annotation's identity) and one
        // without the annotation whose pod has no known service account.
        .slice(
            "b",
            "shop",
            "echo",
            "echo-b-annotated",
            80,
            Some("legacy"),
            &[("10.1.0.1", "pod-b1", None)],
        )
        .slice(
            "b",
            "shop",
            "echo",
            "echo-b-bare",
            80,
            None,
            &[
                ("10.1.0.2", "pod-b2", Some("echo")),
                ("10.1.0.3", "pod-b3", None),
            ],
        )
        .export("b", "shop", "echo", None, None);
    let index = m.index();
    let p = port(&view_of(&index, "a"), "shop", "echo", 80)
        .cloned()
        .expect("visible");
    // Included: a's WorkloadEntry and its pod with a service account directly; b's two
    // endpoints with an identity behind b's gateway, whose weight counts only those two.
    assert_eq!(
        addrs(&p),
        vec![
            ("10.0.0.1:8080".into(), EndpointKind::Direct, 0, 1),
            ("10.0.1.1:8080".into(), EndpointKind::Direct, 0, 1),
            ("192.0.2.2:15443".into(), EndpointKind::Gateway, 0, 2),
        ]
    );
    let remote: Vec<String> = p.remote.iter().map(|r| r.address.to_string()).collect();
    assert_eq!(remote, vec!["10.1.0.1", "10.1.0.2"]);
    assert!(p
        .endpoints()
        .chain(p.remote.iter())
        .filter(|e| e.kind != EndpointKind::Gateway)
        .all(|e| e.identity.is_some()));
    // Left out, each once, with the reason and the pod.
    let hidden: Vec<(String, &str, Option<&str>, &str)> = p
        .hidden
        .iter()
        .map(|h| {
            (
                h.address.to_string(),
                h.cluster.as_str(),
                h.workload.as_deref(),
                h.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        hidden,
        vec![
            ("10.0.1.2".into(), "a", Some("pod-a2"), NO_IDENTITY_REASON),
            ("10.1.0.3".into(), "b", Some("pod-b3"), NO_IDENTITY_REASON),
        ]
    );
    assert!(NO_IDENTITY_REASON.contains("causeway.io/service-account"));
    assert!(NO_IDENTITY_REASON.contains("never reached over mesh mTLS"));
    // The identities to accept are exactly those of the included endpoints.
    let ids: Vec<String> = p.identities.iter().map(|i| i.to_string()).collect();
    assert_eq!(
        ids,
        vec![
            "spiffe://td.local/ns/shop/sa/echo",
            "spiffe://td.local/ns/shop/sa/legacy",
            "spiffe://td.local/ns/shop/sa/worker",
        ]
    );
    // b's gateway routes only to b's endpoints with an identity.
    let routes = view::gateway_routes(&index, &cid("b"));
    let route = routes
        .iter()
        .find(|r| r.key == ServiceKey::new("shop", "echo"))
        .expect("echo route");
    let behind: Vec<String> = route
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(behind, vec!["10.1.0.1", "10.1.0.2"]);
}

#[test]
fn a_port_whose_endpoints_all_lack_identity_has_no_endpoints() {
    let m = mesh()
        .cluster("a", "net1", "r1/z1", &[])
        .service("a", "shop", "legacy", &[80])
        .slice(
            "a",
            "shop",
            "legacy",
            "legacy-1",
            80,
            None,
            &[("10.0.1.1", "l-1", None), ("10.0.1.2", "l-2", None)],
        );
    let index = m.index();
    let p = port(&view_of(&index, "a"), "shop", "legacy", 80)
        .cloned()
        .expect("the service stays visible");
    assert_eq!(p.endpoints().count(), 0);
    assert!(p.remote.is_empty());
    assert!(p.identities.is_empty());
    assert_eq!(p.hidden.len(), 2);
    assert!(p.hidden.iter().all(|h| h.reason == NO_IDENTITY_REASON));
}
