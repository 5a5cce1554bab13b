//! The data plane's side of the boundary: what the control plane builds for gateways and
//! sidecars converts into the Causeway proxy's configuration without loss, and anything the
//! proxy does not honour is refused naming the resource and the field.

mod common;

use causeway_xds::dataplane::{
    cluster_config, listener_config, load_assignment, ChainAction, EndpointSource, LbPolicy,
};
use causeway_xds::resources::{Resources, TypeUrl};
use common::{example, index_of};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use prost::Message;

fn gamma_gateway() -> Resources {
    common::gateway_of(&index_of(&example()), "gamma")
}

fn all<M: Message + Default>(r: &Resources, t: TypeUrl) -> Vec<M> {
    common::decoded(r, t)
}

#[test]
fn the_gateway_listener_becomes_sni_routes_to_tcp_proxies() {
    let r = gamma_gateway();
    let listeners: Vec<Listener> = all(&r, TypeUrl::Listener);
    assert_eq!(listeners.len(), 1);
    let l = listener_config(&listeners[0]).expect("accepted");
    assert_eq!(l.address, "127.3.255.1:15443".parse().expect("addr"));
    assert!(l.inspect_tls, "SNI needs the ClientHello");
    assert!(l.default_chain.is_none(), "an unknown SNI is closed");
    let mut routes: Vec<(String, String)> = l
        .filter_chains
        .iter()
        .map(|c| {
            let ChainAction::TcpProxy(p) = &c.action else {
                panic!("a gateway chain is a TCP proxy: {c:?}")
            };
            assert_eq!(c.matches.server_names.len(), 1, "{c:?}");
            (
                c.matches.server_names[0].clone(),
                p.clusters.pick(0).to_owned(),
            )
        })
        .collect();
    routes.sort();
    // Exported services of gamma only (ledger is not exported); each service SNI to its own
    // cluster, each pod SNI to the cluster of that pod alone.
    assert!(
        routes.iter().all(|(sni, cluster)| {
            let pod = sni.contains("_.ep-");
            sni.starts_with("outbound_.")
                && cluster.starts_with(if pod {
                    "gateway_endpoint|"
                } else {
                    "outbound|"
                })
        }),
        "{routes:?}"
    );
    assert!(
        routes.iter().any(|(sni, _)| sni.contains("_.ep-")),
        "{routes:?}"
    );
    assert!(
        routes.iter().any(|(sni, _)| sni.contains("greeter.demo")),
        "{routes:?}"
    );
    assert!(
        !routes.iter().any(|(sni, _)| sni.contains("ledger")),
        "{routes:?}"
    );
}

#[test]
fn gateway_clusters_and_endpoints_convert_with_priorities_and_no_outlier_detection() {
    let r = gamma_gateway();
    let clusters: Vec<Cluster> = all(&r, TypeUrl::Cluster);
    let assignments: Vec<ClusterLoadAssignment> = all(&r, TypeUrl::ClusterLoadAssignment);
    assert!(!clusters.is_empty());
    for c in &clusters {
        let cfg = cluster_config(c).expect("accepted");
        if let EndpointSource::Static(la) = &cfg.endpoints {
            // A pod's own route: that pod alone, inline.
            assert!(c.name.starts_with("gateway_endpoint|outbound_."), "{c:?}");
            let pods: Vec<_> = la.localities.iter().flat_map(|l| &l.endpoints).collect();
            assert_eq!(pods.len(), 1, "{la:?}");
            assert_eq!(pods[0].cluster.as_deref(), Some("gamma"));
            continue;
        }
        assert_eq!(
            cfg.endpoints,
            EndpointSource::Eds {
                service_name: c.name.clone()
            }
        );
        assert_eq!(cfg.lb_policy, LbPolicy::RoundRobin);
        assert_eq!(cfg.healthy_panic_threshold_percent, 0.0);
        // Callers detect a dead path; a gateway ejecting pods still starting would black-hole
        // them for everyone.
        assert_eq!(cfg.outlier_detection, None);
        assert_eq!(cfg.health_check, None);
        assert!(cfg.service.is_some_and(|s| s.starts_with("demo/")));
    }
    for la in &assignments {
        let cfg = load_assignment(la).expect("accepted");
        let endpoints: Vec<_> = cfg.localities.iter().flat_map(|l| &l.endpoints).collect();
        assert!(!endpoints.is_empty(), "{cfg:?}");
        // A gateway forwards to its own cluster's pods only.
        assert!(endpoints
            .iter()
            .all(|e| e.cluster.as_deref() == Some("gamma") && e.healthy));
    }
}

fn sni_listener() -> Listener {
    all::<Listener>(&gamma_gateway(), TypeUrl::Listener).remove(0)
}

#[test]
fn fields_the_proxy_does_not_honour_are_refused_naming_resource_and_field() {
    let mut l = sni_listener();
    if let Some(m) = &mut l.filter_chains[1].filter_chain_match {
        m.source_ports = vec![1234];
    }
    let e = listener_config(&l).expect_err("refused");
    assert_eq!(e.resource, "Listener gateway|127.3.255.1:15443");
    assert_eq!(e.field, "filter_chains[1].filter_chain_match.source_ports");
    assert!(e.to_string().contains("not supported"), "{e}");

    // A transport socket is converted as downstream TLS; one that is not TLS is refused there.
    let mut l = sni_listener();
    l.filter_chains[1].transport_socket = Some(core::TransportSocket::default());
    let e = listener_config(&l).expect_err("refused");
    assert_eq!(e.field, "filter_chains[1].transport_socket.name");

    let mut l = sni_listener();
    l.freebind = Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
    assert_eq!(listener_config(&l).expect_err("refused").field, "freebind");

    let mut l = sni_listener();
    l.listener_filters.clear();
    let e = listener_config(&l).expect_err("SNI without the inspector");
    assert_eq!(e.field, "listener_filters");

    let mut l = sni_listener();
    l.filter_chains[0].filters[0].name = "envoy.filters.network.redis_proxy".into();
    if let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(a)) =
        &mut l.filter_chains[0].filters[0].config_type
    {
        a.type_url =
            "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy".into();
    }
    let e = listener_config(&l).expect_err("unknown filter");
    assert_eq!(e.field, "filter_chains[0].filters[0].typed_config");
    assert!(e.reason.contains("RedisProxy"), "{e}");
}

#[test]
fn bad_values_are_refused_with_the_value() {
    let mut l = sni_listener();
    if let Some(core::Address {
        address: Some(core::address::Address::SocketAddress(sa)),
    }) = &mut l.address
    {
        sa.address = "gateway.example".into();
    }
    let e = listener_config(&l).expect_err("a name, not an IP");
    assert_eq!(e.field, "address.address");
    assert!(e.reason.contains("gateway.example"), "{e}");

    let mut la: ClusterLoadAssignment =
        all(&gamma_gateway(), TypeUrl::ClusterLoadAssignment).remove(0);
    la.endpoints[0].lb_endpoints[0].load_balancing_weight =
        Some(envoy_types::pb::google::protobuf::UInt32Value { value: 0 });
    let e = load_assignment(&la).expect_err("weight 0");
    assert_eq!(
        e.field,
        "endpoints[0].lb_endpoints[0].load_balancing_weight"
    );

    let mut c: Cluster = all(&gamma_gateway(), TypeUrl::Cluster).remove(0);
    c.lb_policy = 2; // RING_HASH
    let e = cluster_config(&c).expect_err("ring hash");
    assert_eq!(e.field, "lb_policy");
    assert!(e.reason.contains("RING_HASH"), "{e}");
    // Policies the proxy would serve as round robin are refused too.
    for (policy, name) in [(1, "LEAST_REQUEST"), (3, "RANDOM")] {
        c.lb_policy = policy;
        let e = cluster_config(&c).expect_err(name);
        assert_eq!(e.field, "lb_policy");
        assert!(e.reason.contains(name), "{e}");
    }
}

/// Every resource the control plane builds for every sidecar of the example mesh is one the
/// Causeway proxy accepts: nothing it would NACK. With authorization policies on HTTP and TCP
/// ports (`common::files::POLICIES`), so the RBAC filters of both kinds are among them.
#[test]
fn every_sidecar_resource_of_the_example_mesh_converts() {
    let (http_rbac, tcp_rbac) = every_sidecar_resource_converts(&index_of(&example()));
    assert_eq!((http_rbac, tcp_rbac), (0, 0), "no policies, no RBAC");
    let with_policies = common::files::example_with(common::files::POLICIES);
    // DENY on gamma's three inbound HTTP ports, ALLOW on the greeter's and the ledger's; DENY
    // and ALLOW on the ledger's TCP port.
    assert_eq!(every_sidecar_resource_converts(&with_policies), (5, 2));
}

/// Converts every resource of the example's sidecars; the number of HTTP and network RBAC
/// filters.
fn every_sidecar_resource_converts(index: &causeway_discovery::MeshIndex) -> (usize, usize) {
    let (mut http_rbac, mut tcp_rbac) = (0, 0);
    let sidecars = [
        ("alpha", "client"),
        ("alpha", "echo-alpha-1"),
        ("beta", "echo-beta-1"),
        ("gamma", "echo-gamma-1"),
        ("gamma", "greeter-gamma-1"),
        ("gamma", "ledger-gamma-1"),
    ];
    for (cluster, workload) in sidecars {
        let r = common::sidecar_of(index, cluster, workload);
        let listeners: Vec<Listener> = all(&r, TypeUrl::Listener);
        let clusters: Vec<Cluster> = all(&r, TypeUrl::Cluster);
        let assignments: Vec<ClusterLoadAssignment> = all(&r, TypeUrl::ClusterLoadAssignment);
        assert!(!listeners.is_empty() && !clusters.is_empty(), "{workload}");
        let mut http = 0;
        for l in &listeners {
            let cfg = listener_config(l).unwrap_or_else(|e| panic!("{workload}: {e}"));
            for c in &cfg.filter_chains {
                match &c.action {
                    ChainAction::Http(m) => {
                        http += 1;
                        http_rbac += m.rbac.len();
                    }
                    ChainAction::TcpProxy(p) => tcp_rbac += p.rbac.len(),
                }
            }
        }
        assert!(http >= 2, "{workload}: outbound and inbound HTTP chains");
        let mut with_tls = 0;
        for c in &clusters {
            let cfg = cluster_config(c).unwrap_or_else(|e| panic!("{workload}: {e}"));
            with_tls += usize::from(cfg.upstream_tls.is_some());
        }
        assert!(with_tls >= 1, "{workload}: mesh clusters use mTLS");
        for la in &assignments {
            load_assignment(la).unwrap_or_else(|e| panic!("{workload}: {e}"));
        }
    }
    (http_rbac, tcp_rbac)
}
