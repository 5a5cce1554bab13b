//! `TrafficPolicy` subsets and weighted routes (issue 12): each route becomes its own cluster
//! with exactly its endpoints and identities, the listener splits requests by the routes'
//! weights (weight 0 keeps its cluster, so a blue-green switch only changes the route), and
//! gateways route a subset's SNI to their own endpoints of the subset only.

mod common;

use std::collections::BTreeMap;

use causeway_discovery::view::view_service;
use causeway_discovery::{ProxyContext, ViewPort};
use causeway_model::{ClusterId, ProxyIdentity, ProxyRole, ServiceKey};
use causeway_xds::node::DataPlane;
use causeway_xds::resources::{Resources, TypeUrl};
use common::files::example_with;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use prost::Message;

const HOST: &str = "echo.demo.svc.cluster.local";
const V2_SNI: &str = "outbound_.80_.v2_.echo.demo.svc.cluster.local";

/// A v2 canary of echo in gamma, with its own service account.
const CANARY: &str = "\
apiVersion: causeway.io/v1alpha1
kind: WorkloadEntry
metadata: {name: echo-gamma-canary, namespace: demo}
spec:
  address: 127.3.0.99
  labels: {app: echo, version: v2}
  serviceAccount: echo-canary
  ports: {http: 8080}
";

fn policy(routes: &str) -> String {
    format!(
        "apiVersion: causeway.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  service: echo\n  subsets:\n  - {{name: v2, labels: {{version: v2}}}}\n  routes:\n{routes}"
    )
}

fn index_with(routes: &str) -> causeway_discovery::MeshIndex {
    example_with(&[
        ("clusters/gamma/canary.yaml", CANARY),
        ("policies/echo.yaml", &policy(routes)),
    ])
}

fn echo_port(index: &causeway_discovery::MeshIndex) -> ViewPort {
    let ctx = ProxyContext::resolve(
        index,
        ProxyIdentity {
            cluster: ClusterId::new("alpha").expect("id"),
            namespace: "demo".into(),
            workload: "client".into(),
            role: ProxyRole::Sidecar,
        },
    )
    .expect("context");
    let service = view_service(index, &ctx, &ServiceKey::new("demo", "echo")).expect("echo");
    service.ports.into_iter().next().expect("a port")
}

fn cluster_name(route: &str) -> String {
    format!("outbound|80|{route}|{HOST}")
}

/// The addresses (IP only) of every endpoint of assignment `name` in `r`.
fn assignment(r: &Resources, name: &str) -> Vec<String> {
    let cla = common::decoded::<ClusterLoadAssignment>(r, TypeUrl::ClusterLoadAssignment)
        .into_iter()
        .find(|c| c.cluster_name == name)
        .unwrap_or_else(|| panic!("no assignment {name}"));
    let mut out = Vec::new();
    for e in cla.endpoints.iter().flat_map(|g| &g.lb_endpoints) {
        let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
            continue;
        };
        let addr = ep.address.as_ref().and_then(|a| match &a.address {
            Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                Some(s.address.clone())
            }
            _ => None,
        });
        out.extend(addr);
    }
    out.sort();
    out
}

/// The upstream TLS of cluster `name` in `r`: its SNI and its SAN matchers.
fn upstream_tls(r: &Resources, name: &str) -> (String, Vec<String>) {
    let c = common::decoded::<Cluster>(r, TypeUrl::Cluster)
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"));
    let ts = c.transport_socket.expect("transport socket");
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        any,
    )) = ts.config_type
    else {
        panic!("typed config")
    };
    let tls = UpstreamTlsContext::decode(&*any.value).expect("tls");
    let sans = format!("{:?}", tls.common_tls_context);
    let ids = sans
        .split('"')
        .filter(|s| s.starts_with("spiffe://"))
        .map(str::to_owned)
        .collect();
    (tls.sni, ids)
}

/// The echo listener's route action.
fn echo_action(r: &Resources) -> route_action::ClusterSpecifier {
    let listener = common::decoded::<Listener>(r, TypeUrl::Listener)
        .into_iter()
        .find(|l| l.name.starts_with("outbound|") && l.name.ends_with("|demo/echo"))
        .expect("echo listener");
    let Some(filter::ConfigType::TypedConfig(any)) =
        &listener.filter_chains[0].filters[0].config_type
    else {
        panic!("typed config")
    };
    let hcm = HttpConnectionManager::decode(&*any.value).expect("hcm");
    let Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
        panic!("inline routes")
    };
    let Some(route::Action::Route(action)) = &rc.virtual_hosts[0].routes[0].action else {
        panic!("a route")
    };
    action.cluster_specifier.clone().expect("a cluster")
}

fn split(spec: &route_action::ClusterSpecifier) -> Vec<(String, u32)> {
    match spec {
        route_action::ClusterSpecifier::Cluster(c) => vec![(c.clone(), 100)],
        route_action::ClusterSpecifier::WeightedClusters(w) => w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_canary_route_gets_its_own_cluster_with_only_the_subset_and_its_identity() {
    let index = index_with("  - {cluster: beta, weight: 95}\n  - {subset: v2, weight: 5}\n");
    let port = echo_port(&index);
    let routes: BTreeMap<&str, _> = port.routes.iter().map(|r| (r.name.as_str(), r)).collect();
    assert_eq!(
        routes.keys().copied().collect::<Vec<_>>(),
        ["all.beta", "v2"]
    );
    let canary = routes["v2"];
    assert_eq!(canary.sni, V2_SNI);
    let pods: Vec<String> = canary
        .remote
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(pods, ["127.3.0.99"], "{canary:#?}");
    assert!(routes["all.beta"]
        .remote
        .iter()
        .all(|e| e.cluster.as_str() == "beta"));

    // Envoy: one cluster per route, the canary's SNI and exactly the canary's identity.
    let r = common::sidecar_of(&index, "alpha", "client");
    let (sni, sans) = upstream_tls(&r, &cluster_name("v2"));
    assert_eq!(sni, V2_SNI);
    assert_eq!(sans.len(), 1, "{sans:?}");
    assert!(sans[0].ends_with("/ns/demo/sa/echo-canary"), "{sans:?}");
    let (_, beta_sans) = upstream_tls(&r, &cluster_name("all.beta"));
    assert!(
        beta_sans.iter().all(|s| s.ends_with("/sa/echo")),
        "{beta_sans:?}"
    );
    // The gateway aggregate of the canary is gamma's gateway; beta's route has beta's.
    assert_eq!(assignment(&r, &cluster_name("v2")).len(), 1);
    assert_eq!(
        split(&echo_action(&r)),
        [(cluster_name("all.beta"), 95), (cluster_name("v2"), 5)]
    );
    // The port's own cluster stays, with every endpoint.
    assert!(upstream_tls(&r, &format!("outbound|80||{HOST}")).1.len() >= 2);

    // Causeway: the canary's pod itself, by its per-endpoint SNI through gamma's gateway.
    let c = common::sidecar_on(&index, "alpha", "client", DataPlane::Causeway);
    assert_eq!(split(&echo_action(&c)), split(&echo_action(&r)));
    assert_eq!(assignment(&c, &cluster_name("v2")).len(), 1);

    // Gamma's gateway routes the subset's SNI to the canary only; beta's has no such chain.
    let gamma = common::gateway_of(&index, "gamma");
    let chains: Vec<Vec<String>> = common::decoded::<Listener>(&gamma, TypeUrl::Listener)
        .iter()
        .flat_map(|l| &l.filter_chains)
        .map(|c| {
            c.filter_chain_match
                .clone()
                .unwrap_or_default()
                .server_names
        })
        .collect();
    assert!(chains.contains(&vec![V2_SNI.to_owned()]), "{chains:?}");
    assert_eq!(assignment(&gamma, &cluster_name("v2")), ["127.3.0.99"]);
    let whole = assignment(&gamma, &format!("outbound|80||{HOST}"));
    assert!(
        whole.contains(&"127.3.0.11".to_owned()) && whole.len() == 2,
        "{whole:?}"
    );
    let beta = common::gateway_of(&index, "beta");
    let beta_snis: Vec<String> = common::decoded::<Listener>(&beta, TypeUrl::Listener)
        .iter()
        .flat_map(|l| &l.filter_chains)
        .flat_map(|c| {
            c.filter_chain_match
                .clone()
                .unwrap_or_default()
                .server_names
        })
        .collect();
    assert!(!beta_snis.iter().any(|s| s == V2_SNI), "{beta_snis:?}");
}

#[test]
fn a_blue_green_switch_changes_only_the_route_never_the_clusters() {
    let blue = index_with("  - {cluster: beta, weight: 100}\n  - {cluster: gamma, weight: 0}\n");
    let green = index_with("  - {cluster: beta, weight: 0}\n  - {cluster: gamma, weight: 100}\n");
    for data_plane in [DataPlane::Envoy, DataPlane::Causeway] {
        let before = common::sidecar_on(&blue, "alpha", "client", data_plane);
        let after = common::sidecar_on(&green, "alpha", "client", data_plane);
        assert_eq!(
            split(&echo_action(&before)),
            [(cluster_name("all.beta"), 100)]
        );
        assert_eq!(
            split(&echo_action(&after)),
            [(cluster_name("all.gamma"), 100)]
        );
        // Both clusters exist on both sides, with the same endpoints: only the listener moved.
        for route in ["all.beta", "all.gamma"] {
            assert_eq!(
                assignment(&before, &cluster_name(route)),
                assignment(&after, &cluster_name(route)),
                "{data_plane:?} {route}"
            );
            assert_eq!(
                upstream_tls(&before, &cluster_name(route)),
                upstream_tls(&after, &cluster_name(route))
            );
        }
        // Not one cluster resource changes: a changed cluster is warmed anew by Envoy (its
        // endpoints wait for their first health check) and would fail requests meanwhile.
        let clusters = |r: &Resources| {
            let mut all = common::decoded::<Cluster>(r, TypeUrl::Cluster);
            all.sort_by(|a, b| a.name.cmp(&b.name));
            all
        };
        assert!(clusters(&before) == clusters(&after), "{data_plane:?}");
        // Nor does the version the server announces for any of them.
        let versions = |r: &Resources| {
            let mut v: Vec<(String, String)> = r
                .of(TypeUrl::Cluster)
                .into_iter()
                .flatten()
                .map(|(name, res)| (name.clone(), res.version.clone()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(versions(&before), versions(&after), "{data_plane:?}");
        let gamma = assignment(&after, &cluster_name("all.gamma"));
        assert!(!gamma.is_empty());
        assert!(
            !gamma.iter().any(|a| a.starts_with("127.2.")),
            "beta's endpoints are not gamma's route's: {gamma:?}"
        );
    }
}
