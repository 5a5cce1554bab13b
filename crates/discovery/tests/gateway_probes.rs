//! Views under the control plane's gateway probes: a dead gateway is passed over while another
//! gateway can carry its endpoints, marked unhealthy while other endpoints remain, and never
//! takes a port's last endpoints.

mod common;

use std::collections::BTreeMap;

use causeway_discovery::{EndpointKind, MeshIndex, ViewPort};
use causeway_model::Gateway;
use common::*;

fn gw(s: &str) -> Gateway {
    let sa: std::net::SocketAddr = s.parse().expect("gateway");
    Gateway {
        address: sa.ip(),
        port: sa.port(),
    }
}

fn down(index: &mut MeshIndex, gateways: &[&str]) {
    let set: BTreeMap<Gateway, String> = gateways
        .iter()
        .map(|g| (gw(g), format!("probe of {g} failed twice")))
        .collect();
    assert!(index.set_gateways_down(set), "the set changed");
}

/// (endpoint, unhealthy) of every endpoint EDS carries, gateways first by address.
fn health(p: &ViewPort) -> Vec<(String, bool)> {
    p.endpoints()
        .map(|e| (format!("{}:{}", e.address, e.port), e.unhealthy.is_some()))
        .collect()
}

fn echo_port(index: &MeshIndex) -> ViewPort {
    port(&view_of(index, "a"), "shop", "echo", 80)
        .cloned()
        .expect("visible")
}

#[test]
fn a_dead_gateway_is_passed_over_while_its_cluster_has_another() {
    let mut index = mesh()
        .cluster("a", "net1", "r1/z1", &["192.0.2.1:15443"])
        .cluster(
            "b",
            "net2",
            "r2/z1",
            &["192.0.2.2:15443", "192.0.2.3:15443"],
        )
        .service("b", "shop", "echo", &[80])
        .workload("b", "shop", "b1", "10.0.0.1", "echo")
        .workload("b", "shop", "b2", "10.0.0.2", "echo")
        .export("b", "shop", "echo", None, None)
        .index();
    assert_eq!(echo_port(&index).endpoints().count(), 2, "one per gateway");
    down(&mut index, &["192.0.2.2:15443"]);
    let p = echo_port(&index);
    assert_eq!(health(&p), [("192.0.2.3:15443".to_owned(), false)]);
    assert_eq!(p.endpoints().map(|e| e.weight).sum::<u32>(), 2);
    assert!(p
        .remote
        .iter()
        .all(|r| r.via == Some(gw("192.0.2.3:15443")) && r.unhealthy.is_none()));
}

#[test]
fn a_dead_cluster_gateway_is_marked_while_another_cluster_serves() {
    let mut index = mesh()
        .cluster("a", "net1", "r1/z1", &["192.0.2.1:15443"])
        .cluster("b", "net2", "r2/z1", &["192.0.2.2:15443"])
        .cluster("c", "net3", "r3/z1", &["192.0.2.3:15443"])
        .service("b", "shop", "echo", &[80])
        .service("c", "shop", "echo", &[80])
        .workload("b", "shop", "b1", "10.0.0.1", "echo")
        .workload("c", "shop", "c1", "10.0.0.1", "echo")
        .export("b", "shop", "echo", None, None)
        .export("c", "shop", "echo", None, None)
        .index();
    down(&mut index, &["192.0.2.2:15443"]);
    let p = echo_port(&index);
    assert_eq!(
        health(&p),
        [
            ("192.0.2.2:15443".to_owned(), true),
            ("192.0.2.3:15443".to_owned(), false)
        ]
    );
    let b = p.endpoints().find(|e| e.cluster.as_str() == "b");
    assert_eq!(
        b.and_then(|e| e.unhealthy.as_deref()),
        Some("probe of 192.0.2.2:15443 failed twice")
    );
    let pods: Vec<(&str, bool)> = p
        .remote
        .iter()
        .map(|r| (r.cluster.as_str(), r.unhealthy.is_some()))
        .collect();
    assert_eq!(pods, [("b", true), ("c", false)], "the pods behind it too");

    // Both remote clusters' gateways dead: nothing else to go to, so neither is marked and the
    // data plane's own checks decide; the reason says why.
    down(&mut index, &["192.0.2.2:15443", "192.0.2.3:15443"]);
    let p = echo_port(&index);
    assert!(p.endpoints().all(|e| e.unhealthy.is_none()));
    assert!(p
        .endpoints()
        .all(|e| e.kind == EndpointKind::Gateway && e.reason.contains("but kept")));
}
