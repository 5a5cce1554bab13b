//! A gateway the control plane's probes find dead reaches both data planes as EDS health: the
//! endpoints through it are `UNHEALTHY` (Envoy's aggregate and the Causeway proxy's per-pod
//! endpoints alike), the Causeway data plane reads them as unusable, the others stay as they
//! were, and clearing the mark brings them back.

mod common;

use std::collections::BTreeMap;

use causeway_model::Gateway;
use causeway_xds::dataplane::load_assignment;
use causeway_xds::node::DataPlane;
use causeway_xds::resources::TypeUrl;
use common::{decoded, example, index_of, sidecar_on};
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

const ECHO: &str = "outbound|80||echo.demo.svc.cluster.local";
const GAMMA_GATEWAY: &str = "127.3.255.1:15443";

/// (address the proxy connects to, unhealthy) of every endpoint of echo's assignment.
fn echo_health(
    index: &causeway_discovery::MeshIndex,
    data_plane: DataPlane,
) -> Vec<(String, bool)> {
    let resources = sidecar_on(index, "alpha", "client", data_plane);
    let cla = decoded::<ClusterLoadAssignment>(&resources, TypeUrl::ClusterLoadAssignment)
        .into_iter()
        .find(|c| c.cluster_name == ECHO)
        .expect("echo's assignment");
    let converted = load_assignment(&cla).expect("the Causeway data plane accepts it");
    let mut out = Vec::new();
    for (group, converted) in cla.endpoints.iter().zip(&converted.localities) {
        for (e, c) in group.lb_endpoints.iter().zip(&converted.endpoints) {
            let unhealthy = e.health_status == HealthStatus::Unhealthy as i32;
            assert_eq!(!c.healthy, unhealthy, "the data plane reads the EDS health");
            assert_eq!(
                c.through_gateway,
                c.address.to_string() == GAMMA_GATEWAY,
                "only paths through a gateway get the gateway's liveness check: {c:?}"
            );
            out.push((c.address.to_string(), unhealthy));
        }
    }
    out
}

fn gateway_down(index: &mut causeway_discovery::MeshIndex, down: bool) {
    let sa: std::net::SocketAddr = GAMMA_GATEWAY.parse().expect("addr");
    let gateway = Gateway {
        address: sa.ip(),
        port: sa.port(),
    };
    let set: BTreeMap<Gateway, String> = if down {
        [(gateway, "probe failed twice".to_owned())].into()
    } else {
        BTreeMap::new()
    };
    assert!(index.set_gateways_down(set));
}

#[test]
fn endpoints_through_a_dead_gateway_are_unhealthy_on_both_data_planes() {
    let mut index = index_of(&example());
    for data_plane in [DataPlane::Envoy, DataPlane::Causeway] {
        let before = echo_health(&index, data_plane);
        assert!(before.iter().all(|(_, u)| !u), "{data_plane:?}: {before:?}");
        assert!(
            before.iter().any(|(a, _)| a == GAMMA_GATEWAY),
            "{data_plane:?} reaches gamma through its gateway: {before:?}"
        );
    }
    gateway_down(&mut index, true);
    for data_plane in [DataPlane::Envoy, DataPlane::Causeway] {
        let after = echo_health(&index, data_plane);
        for (address, unhealthy) in &after {
            assert_eq!(
                *unhealthy,
                address == GAMMA_GATEWAY,
                "{data_plane:?}: only what goes through gamma's gateway: {after:?}"
            );
        }
        assert!(after.iter().any(|(_, u)| *u), "{data_plane:?}: {after:?}");
    }
    gateway_down(&mut index, false);
    let back = echo_health(&index, DataPlane::Causeway);
    assert!(back.iter().all(|(_, u)| !u), "{back:?}");
}
