//! One endpoint per remote pod for Causeway proxies (issue 11): the client's load assignment
//! holds each pod behind a gateway at the gateway's address with the pod's own SNI, the
//! gateway routes exactly those SNIs to exactly those pods, Envoy clients keep the aggregate,
//! and the data plane's side reads the per-endpoint fields and the latency balancer.

mod common;

use std::collections::BTreeMap;

use causeway_xds::dataplane::{cluster_config, load_assignment, LbPolicy};
use causeway_xds::node::DataPlane;
use causeway_xds::resources::{Resources, TypeUrl};
use common::{decoded, example, index_of, sidecar_on};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, LbEndpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::google::protobuf::value::Kind;
use prost::Message;

const CATALOG: &str = "outbound|80||catalog.demo.svc.cluster.local";
const GAMMA_GATEWAY: &str = "127.3.255.1:15443";

fn meta(m: &Option<Metadata>, key: &str) -> Option<String> {
    match m
        .as_ref()?
        .filter_metadata
        .get("causeway")?
        .fields
        .get(key)?
        .kind
        .as_ref()?
    {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn address_of(e: &LbEndpoint) -> String {
    let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
        panic!("not an endpoint: {e:?}")
    };
    match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => {
            let port = match sa.port_specifier {
                Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p,
                _ => 0,
            };
            format!("{}:{port}", sa.address)
        }
        other => panic!("not a socket address: {other:?}"),
    }
}

fn assignment(r: &Resources, name: &str) -> ClusterLoadAssignment {
    decoded::<ClusterLoadAssignment>(r, TypeUrl::ClusterLoadAssignment)
        .into_iter()
        .find(|c| c.cluster_name == name)
        .unwrap_or_else(|| panic!("no assignment {name}"))
}

fn endpoints(cla: &ClusterLoadAssignment) -> Vec<&LbEndpoint> {
    cla.endpoints.iter().flat_map(|g| &g.lb_endpoints).collect()
}

fn alpha_client(data_plane: DataPlane) -> Resources {
    sidecar_on(&index_of(&example()), "alpha", "client", data_plane)
}

fn gamma_gateway() -> Resources {
    common::gateway_of(&index_of(&example()), "gamma")
}

#[test]
fn a_causeway_client_gets_each_remote_pod_at_its_gateway_and_envoy_the_aggregate() {
    let causeway = alpha_client(DataPlane::Causeway);
    let cla = assignment(&causeway, CATALOG);
    let eps = endpoints(&cla);
    assert_eq!(eps.len(), 2, "{cla:#?}");
    assert!(
        eps.iter().all(|e| address_of(e) == GAMMA_GATEWAY),
        "{cla:#?}"
    );
    let mut pods: Vec<(Option<String>, Option<String>)> = eps
        .iter()
        .map(|e| (meta(&e.metadata, "endpoint"), meta(&e.metadata, "workload")))
        .collect();
    pods.sort();
    assert_eq!(
        pods,
        vec![
            (
                Some("127.3.0.14:8080".into()),
                Some("catalog-gamma-1".into())
            ),
            (
                Some("127.3.0.15:8080".into()),
                Some("catalog-gamma-2".into())
            ),
        ]
    );
    let snis: Vec<String> = eps
        .iter()
        .filter_map(|e| meta(&e.metadata, "sni"))
        .collect();
    assert_eq!(snis.len(), 2);
    assert_ne!(snis[0], snis[1]);
    assert!(
        snis.iter().all(|s| s.starts_with("outbound_.80_.ep-")
            && s.ends_with("_.catalog.demo.svc.cluster.local")),
        "{snis:?}"
    );
    let cluster = decoded::<Cluster>(&causeway, TypeUrl::Cluster)
        .into_iter()
        .find(|c| c.name == CATALOG)
        .expect("cluster");
    assert_eq!(
        meta(&cluster.metadata, "loadBalancer").as_deref(),
        Some("peak-ewma")
    );

    // Envoy merges endpoints that share an address: it keeps the gateway aggregate.
    let envoy = alpha_client(DataPlane::Envoy);
    let cla = assignment(&envoy, CATALOG);
    let eps = endpoints(&cla);
    assert_eq!(eps.len(), 1, "{cla:#?}");
    assert_eq!(address_of(eps[0]), GAMMA_GATEWAY);
    assert_eq!(
        eps[0].load_balancing_weight.as_ref().map(|w| w.value),
        Some(2)
    );
    assert_eq!(meta(&eps[0].metadata, "sni"), None);
    let cluster = decoded::<Cluster>(&envoy, TypeUrl::Cluster)
        .into_iter()
        .find(|c| c.name == CATALOG)
        .expect("cluster");
    assert_eq!(meta(&cluster.metadata, "loadBalancer"), None);
}

/// The gateway's routes: per SNI, the addresses of the endpoints of the cluster it goes to.
fn gateway_routes(r: &Resources) -> BTreeMap<String, Vec<String>> {
    let listeners: Vec<Listener> = decoded(r, TypeUrl::Listener);
    let clusters: BTreeMap<String, Cluster> = decoded::<Cluster>(r, TypeUrl::Cluster)
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect();
    let eds: BTreeMap<String, ClusterLoadAssignment> =
        decoded::<ClusterLoadAssignment>(r, TypeUrl::ClusterLoadAssignment)
            .into_iter()
            .map(|c| (c.cluster_name.clone(), c))
            .collect();
    let mut out = BTreeMap::new();
    for chain in &listeners[0].filter_chains {
        let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
            panic!("typed config");
        };
        let tcp = TcpProxy::decode(&*any.value).expect("tcp proxy");
        let Some(tcp_proxy::ClusterSpecifier::Cluster(name)) = &tcp.cluster_specifier else {
            panic!("one cluster");
        };
        let cla = clusters[name]
            .load_assignment
            .clone()
            .or_else(|| eds.get(name).cloned())
            .unwrap_or_else(|| panic!("no endpoints for {name}"));
        let addrs: Vec<String> = endpoints(&cla).into_iter().map(address_of).collect();
        for sni in &chain
            .filter_chain_match
            .as_ref()
            .expect("match")
            .server_names
        {
            out.insert(sni.clone(), addrs.clone());
        }
    }
    out
}

#[test]
fn the_gateway_routes_every_pod_sni_a_client_holds_to_exactly_that_pod() {
    let client = alpha_client(DataPlane::Causeway);
    let routes = gateway_routes(&gamma_gateway());
    let mut checked = 0;
    for cla in decoded::<ClusterLoadAssignment>(&client, TypeUrl::ClusterLoadAssignment) {
        for e in endpoints(&cla) {
            let Some(sni) = meta(&e.metadata, "sni") else {
                continue;
            };
            let pod = meta(&e.metadata, "endpoint").expect("pod address");
            assert_eq!(address_of(e), GAMMA_GATEWAY, "{sni}");
            assert_eq!(routes.get(&sni), Some(&vec![pod.clone()]), "{sni} -> {pod}");
            checked += 1;
        }
    }
    // echo-gamma-1, greeter-gamma-1, catalog-gamma-1 and -2 (ledger is not exported).
    assert_eq!(checked, 4);
    // The service SNIs stay, for Envoy clients: all of a service's pods behind each.
    assert_eq!(
        routes
            .get("outbound_.80_._.catalog.demo.svc.cluster.local")
            .map(Vec::len),
        Some(2)
    );
}

#[test]
fn the_data_plane_reads_pod_snis_and_the_latency_balancer_and_refuses_an_unknown_one() {
    let client = alpha_client(DataPlane::Causeway);
    let cla = load_assignment(&assignment(&client, CATALOG)).expect("accepted");
    let eps: Vec<_> = cla.localities.iter().flat_map(|l| &l.endpoints).collect();
    assert_eq!(eps.len(), 2);
    assert!(eps
        .iter()
        .all(|e| e.sni.is_some() && e.pod.is_some() && e.workload.is_some()));
    assert!(eps.iter().all(|e| e.address.to_string() == GAMMA_GATEWAY));
    let mut cluster = decoded::<Cluster>(&client, TypeUrl::Cluster)
        .into_iter()
        .find(|c| c.name == CATALOG)
        .expect("cluster");
    assert_eq!(
        cluster_config(&cluster).expect("accepted").lb_policy,
        LbPolicy::PeakEwma
    );
    let fields = &mut cluster
        .metadata
        .as_mut()
        .expect("metadata")
        .filter_metadata
        .get_mut("causeway")
        .expect("causeway")
        .fields;
    fields.insert(
        "loadBalancer".into(),
        envoy_types::pb::google::protobuf::Value {
            kind: Some(Kind::StringValue("fancy".into())),
        },
    );
    let e = cluster_config(&cluster).expect_err("refused").to_string();
    assert!(e.contains("loadBalancer") && e.contains("fancy"), "{e}");
}
