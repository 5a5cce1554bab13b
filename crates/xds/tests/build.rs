//! The Envoy resources built for the example mesh, decoded and checked field by field.

use std::path::Path;
use std::sync::Arc;

use causeway_discovery::{MeshIndex, ProxyContext};
use causeway_model::{ClusterId, ProxyIdentity, ProxyRole};
use causeway_registry::MeshDirectory;
use causeway_xds::build::{gateway_resources, sidecar_resources};
use causeway_xds::node::{OutboundBlock, ProxyNode};
use causeway_xds::resources::{Resources, TypeUrl};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, transport_socket};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, UpstreamTlsContext,
};
use prost::Message;

fn index_with(extra: Option<(&str, &str)>) -> MeshIndex {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/three-clusters");
    let scratch = tempfile::tempdir().expect("tmp");
    let tmp = scratch.path().join("mesh");
    copy(&src, &tmp);
    if let Some((file, text)) = extra {
        std::fs::write(tmp.join(file), text).expect("write");
    }
    let dir = MeshDirectory::open(&tmp);
    assert!(dir.errors().is_empty(), "{:?}", dir.errors());
    let objects: Vec<(ClusterId, _)> = dir
        .clusters()
        .iter()
        .map(|(n, s)| {
            (
                ClusterId::new(n).expect("id"),
                s.objects.clone().expect("loaded"),
            )
        })
        .collect();
    MeshIndex::build(
        Arc::clone(dir.mesh().expect("mesh")),
        objects.iter().map(|(i, o)| (i, &**o)),
    )
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read").flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

fn ctx(
    index: &MeshIndex,
    cluster: &str,
    ns: &str,
    workload: &str,
    role: ProxyRole,
) -> ProxyContext {
    ProxyContext::resolve(
        index,
        ProxyIdentity {
            cluster: ClusterId::new(cluster).expect("id"),
            namespace: ns.into(),
            workload: workload.into(),
            role,
        },
    )
    .expect("context")
}

fn sidecar(index: &MeshIndex, cluster: &str, workload: &str) -> Resources {
    let c = ctx(index, cluster, "demo", workload, ProxyRole::Sidecar);
    let node = ProxyNode {
        id: workload.into(),
        identity: c.identity.clone(),
        app_address: Some("127.1.100.10".parse().expect("ip")),
        outbound: Some(OutboundBlock::parse("127.200.0.0/16").expect("block")),
        network: None,
    };
    sidecar_resources(index, &node, &c)
}

fn decode<M: Message + Default>(r: &Resources, t: TypeUrl, name: &str) -> M {
    let res = r.of(t).and_then(|m| m.get(name)).unwrap_or_else(|| {
        panic!(
            "no {t:?} {name}: {:?}",
            r.of(t).map(|m| m.keys().collect::<Vec<_>>())
        )
    });
    M::decode(&*res.body.value).expect("decode")
}

const ECHO: &str = "outbound|80||echo.demo.svc.cluster.local";

#[test]
fn gateway_routes_only_exported_snis_without_terminating_tls() {
    let index = index_with(None);
    let r = gateway_resources(
        &index,
        &ctx(
            &index,
            "gamma",
            "causeway-system",
            "eastwest",
            ProxyRole::Gateway,
        ),
    );
    let listeners: Vec<&String> = r.of(TypeUrl::Listener).expect("listeners").keys().collect();
    assert_eq!(listeners, vec!["gateway|127.3.255.1:15443"]);
    let l: Listener = decode(&r, TypeUrl::Listener, "gateway|127.3.255.1:15443");
    assert_eq!(
        l.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    let mut snis: Vec<String> = l
        .filter_chains
        .iter()
        .flat_map(|c| c.filter_chain_match.clone().expect("match").server_names)
        .collect();
    snis.sort();
    assert_eq!(
        snis,
        vec![
            "outbound_.80_._.echo.demo.svc.cluster.local",
            "outbound_.80_._.greeter.demo.svc.cluster.local"
        ]
    );
    assert!(
        l.filter_chains.iter().all(|c| c.transport_socket.is_none()),
        "passthrough: no TLS on the gateway"
    );
    assert!(l
        .filter_chains
        .iter()
        .all(|c| c.filters[0].name == "envoy.filters.network.tcp_proxy"));
    let upstream: Cluster = decode(&r, TypeUrl::Cluster, ECHO);
    assert!(
        upstream.transport_socket.is_none(),
        "the gateway forwards the caller's TLS as is"
    );
    let cla: ClusterLoadAssignment = decode(&r, TypeUrl::ClusterLoadAssignment, ECHO);
    let addrs: Vec<String> = cla
        .endpoints
        .iter()
        .flat_map(|g| g.lb_endpoints.iter())
        .filter_map(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                match ep.address.as_ref()?.address.as_ref()? {
                    address::Address::SocketAddress(sa) => Some(sa.address.clone()),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        addrs,
        vec!["127.3.0.11"],
        "only gamma's own endpoints behind gamma's gateway"
    );

    // A cluster that exports nothing gets no gateway listener.
    let index = index_with(Some(("clusters/beta/workloads.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: solo, namespace: demo}\nspec: {ports: [{port: 80}]}\n")));
    let r = gateway_resources(
        &index,
        &ctx(
            &index,
            "beta",
            "causeway-system",
            "eastwest",
            ProxyRole::Gateway,
        ),
    );
    assert!(r.of(TypeUrl::Listener).is_none_or(|l| l.is_empty()));
}

#[test]
fn sidecar_upstreams_use_mesh_sni_san_checks_and_priorities() {
    let index = index_with(None);
    let r = sidecar(&index, "alpha", "client");
    let echo: Cluster = decode(&r, TypeUrl::Cluster, ECHO);
    assert!(
        echo.outlier_detection.is_some(),
        "outlier detection on by default"
    );
    let ts = echo.transport_socket.expect("mTLS upstream");
    let Some(transport_socket::ConfigType::TypedConfig(any)) = ts.config_type else {
        panic!("typed config")
    };
    let tls = UpstreamTlsContext::decode(&*any.value).expect("tls");
    assert_eq!(tls.sni, "outbound_.80_._.echo.demo.svc.cluster.local");
    let text = format!("{:?}", tls.common_tls_context);
    assert!(
        text.contains("spiffe://causeway.local/ns/demo/sa/echo"),
        "{text}"
    );
    let cla: ClusterLoadAssignment = decode(&r, TypeUrl::ClusterLoadAssignment, ECHO);
    let prios: Vec<u32> = cla.endpoints.iter().map(|g| g.priority).collect();
    assert_eq!(prios, vec![0, 1, 2]);
    assert!(
        !format!("{cla:?}").contains("127.3.0.11"),
        "no pod address of the other network"
    );
    // One outbound listener per visible service, each on its own address; an inbound listener
    // on the workload's address requiring client certificates.
    let listeners: Vec<&String> = r.of(TypeUrl::Listener).expect("listeners").keys().collect();
    assert!(listeners
        .iter()
        .any(|l| l.starts_with("outbound|127.200.") && l.ends_with("|demo/greeter")));
    assert!(
        !listeners.iter().any(|l| l.ends_with("|demo/ledger")),
        "unexported ledger is not visible"
    );
    let inbound: Listener = decode(&r, TypeUrl::Listener, "inbound|127.1.0.10:8080");
    let ts = inbound.filter_chains[0]
        .transport_socket
        .clone()
        .expect("mTLS inbound");
    let Some(transport_socket::ConfigType::TypedConfig(any)) = ts.config_type else {
        panic!("typed config")
    };
    let down = DownstreamTlsContext::decode(&*any.value).expect("tls");
    assert_eq!(down.require_client_certificate.map(|b| b.value), Some(true));
}

const POLICY: &str = "apiVersion: causeway.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: greeter-callers, namespace: demo}
spec:
  selector: {app: greeter}
  rules:
  - from: [{principals: [spiffe://causeway.local/ns/demo/sa/client], clusters: [alpha]}]
";

#[test]
fn policies_become_rbac_on_the_inbound_listener() {
    let index = index_with(Some(("clusters/gamma/policy.yaml", POLICY)));
    let r = sidecar(&index, "gamma", "greeter-gamma-1");
    let inbound: Listener = decode(&r, TypeUrl::Listener, "inbound|127.3.0.12:8080");
    let Some(filter::ConfigType::TypedConfig(any)) =
        inbound.filter_chains[0].filters[0].config_type.clone()
    else {
        panic!("hcm")
    };
    let hcm = HttpConnectionManager::decode(&*any.value).expect("hcm");
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["envoy.filters.http.rbac", "envoy.filters.http.router"]
    );
    let Some(http_filter::ConfigType::TypedConfig(any)) = hcm.http_filters[0].config_type.clone()
    else {
        panic!("rbac")
    };
    let rbac = Rbac::decode(&*any.value).expect("rbac");
    let rules = rbac.rules.expect("rules");
    assert_eq!(rules.action, 0, "ALLOW");
    let policy = rules
        .policies
        .get("demo/greeter-callers[0]")
        .expect("policy");
    let text = format!("{policy:?}");
    assert!(
        text.contains("spiffe://causeway.local/ns/demo/sa/client"),
        "{text}"
    );
    let bytes = policy.encode_to_vec();
    let san = b"alpha.cluster.causeway.local";
    assert!(
        bytes.windows(san.len()).any(|w| w == san),
        "caller cluster from the certificate's DNS SAN: {text}"
    );
    assert!(
        text.contains("envoy.rbac.principals.mtls_authenticated"),
        "{text}"
    );
    // Workloads the policy does not select get no RBAC filter.
    let r = sidecar(&index, "gamma", "echo-gamma-1");
    let inbound: Listener = decode(&r, TypeUrl::Listener, "inbound|127.3.0.11:8080");
    let Some(filter::ConfigType::TypedConfig(any)) =
        inbound.filter_chains[0].filters[0].config_type.clone()
    else {
        panic!("hcm")
    };
    let hcm = HttpConnectionManager::decode(&*any.value).expect("hcm");
    assert_eq!(hcm.http_filters.len(), 1);
}

#[test]
fn versions_are_stable_across_rebuilds() {
    let index = index_with(Some(("clusters/gamma/policy.yaml", POLICY)));
    let a = sidecar(&index, "gamma", "greeter-gamma-1");
    let b = sidecar(&index, "gamma", "greeter-gamma-1");
    for t in TypeUrl::ORDER {
        assert_eq!(a.type_version(t), b.type_version(t), "{t:?}");
    }
}
