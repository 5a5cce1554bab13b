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
    common_tls_context, subject_alt_name_matcher, DownstreamTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use proptest::prelude::*;
use prost::Message;

fn index_with(extra: Option<(&str, &str)>) -> MeshIndex {
    index_with_files(extra.as_slice())
}

/// The example mesh with `extra` files (path relative to the mesh directory, text) written over it.
fn index_with_files(extra: &[(&str, &str)]) -> MeshIndex {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/three-clusters");
    let scratch = tempfile::tempdir().expect("tmp");
    let tmp = scratch.path().join("mesh");
    copy(&src, &tmp);
    for (file, text) in extra {
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
        data_plane: Default::default(),
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
    let (pods, services): (Vec<String>, Vec<String>) =
        snis.into_iter().partition(|s| s.contains("_.ep-"));
    assert_eq!(
        services,
        vec![
            "outbound_.80_._.catalog.demo.svc.cluster.local",
            "outbound_.80_._.echo.demo.svc.cluster.local",
            "outbound_.80_._.greeter.demo.svc.cluster.local"
        ]
    );
    // One per ready pod of the exported services: catalog's two, echo's and greeter's one.
    assert_eq!(pods.len(), 4, "{pods:?}");
    assert!(!pods.iter().any(|s| s.contains("ledger")), "{pods:?}");
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

/// The upstream TLS context of an outbound cluster, decoded.
fn upstream_tls(r: &Resources, name: &str) -> UpstreamTlsContext {
    let cluster: Cluster = decode(r, TypeUrl::Cluster, name);
    let ts = cluster.transport_socket.expect("mTLS upstream");
    let Some(transport_socket::ConfigType::TypedConfig(any)) = ts.config_type else {
        panic!("typed config")
    };
    UpstreamTlsContext::decode(&*any.value).expect("tls")
}

/// The SAN matchers the client checks the server's certificate against: every one must be an
/// exact URI match (never a prefix, suffix, substring or regex); returns the URIs.
fn exact_uri_sans(tls: &UpstreamTlsContext) -> Vec<String> {
    let common = tls.common_tls_context.as_ref().expect("common tls");
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(combined)) =
        &common.validation_context_type
    else {
        panic!("combined validation context: {common:?}")
    };
    let sans = &combined
        .default_validation_context
        .as_ref()
        .expect("validation context")
        .match_typed_subject_alt_names;
    assert!(
        !sans.is_empty(),
        "an empty SAN list accepts any certificate"
    );
    sans.iter()
        .map(|m| {
            assert_eq!(
                m.san_type,
                subject_alt_name_matcher::SanType::Uri as i32,
                "{m:?}"
            );
            let matcher = m.matcher.as_ref().expect("string matcher");
            assert!(!matcher.ignore_case, "{m:?}");
            match &matcher.match_pattern {
                Some(MatchPattern::Exact(uri)) => {
                    assert!(!uri.contains('*'), "wildcard in {uri}");
                    uri.clone()
                }
                other => panic!("SAN matcher is not an exact match: {other:?}"),
            }
        })
        .collect()
}

fn cla_addresses(r: &Resources, name: &str) -> Vec<(String, u32)> {
    let cla: ClusterLoadAssignment = decode(r, TypeUrl::ClusterLoadAssignment, name);
    let mut out: Vec<(String, u32)> = cla
        .endpoints
        .iter()
        .flat_map(|g| g.lb_endpoints.iter())
        .filter_map(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                match ep.address.as_ref()?.address.as_ref()? {
                    address::Address::SocketAddress(sa) => Some((
                        sa.address.clone(),
                        e.load_balancing_weight.as_ref().map_or(1, |w| w.value),
                    )),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// An EndpointSlice of `service` in namespace demo on port `http`/8080, with the
/// `causeway.io/service-account` annotation when `account` is given.
fn slice_yaml(service: &str, name: &str, account: Option<&str>, addresses: &[String]) -> String {
    let annotations = account
        .map(|a| format!("  annotations:\n    causeway.io/service-account: {a}\n"))
        .unwrap_or_default();
    let endpoints: String = addresses
        .iter()
        .map(|a| format!("- addresses: [{a}]\n  conditions:\n    ready: true\n"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: demo\n  labels:\n    kubernetes.io/service-name: {service}\n{annotations}addressType: IPv4\nports:\n- name: http\n  port: 8080\nendpoints:\n{endpoints}"
    )
}

const LEGACY: &str = "outbound|80||legacy.demo.svc.cluster.local";
const BARE: &str = "outbound|80||bare.demo.svc.cluster.local";

const BARE_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: bare, namespace: demo}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: bare, namespace: demo}
---
";

#[test]
fn upstream_san_lists_exactly_the_identities_of_the_endpoints_included() {
    // beta's legacy gets a second slice without the annotation: its endpoint has no known
    // identity. bare's only endpoints have none either.
    let legacy_2 = slice_yaml("legacy", "legacy-2", None, &["127.2.0.22".into()]);
    let bare = format!(
        "{BARE_SERVICE}{}",
        slice_yaml("bare", "bare-1", None, &["127.2.0.31".into()])
    );
    let index = index_with_files(&[
        ("clusters/beta/legacy-2.yaml", &legacy_2),
        ("clusters/beta/bare.yaml", &bare),
    ]);
    let r = sidecar(&index, "alpha", "client");

    let echo = upstream_tls(&r, ECHO);
    assert_eq!(
        exact_uri_sans(&echo),
        vec!["spiffe://causeway.local/ns/demo/sa/echo"]
    );

    // Only the annotated slice's endpoint, and only its identity: the client no longer
    // accepts any workload of the trust domain because one endpoint lacks an identity.
    assert_eq!(
        exact_uri_sans(&upstream_tls(&r, LEGACY)),
        vec!["spiffe://causeway.local/ns/demo/sa/legacy"]
    );
    assert_eq!(cla_addresses(&r, LEGACY), vec![("127.2.0.21".into(), 1)]);

    // No endpoint with an identity: no endpoint at all, and a SAN no certificate carries.
    assert!(cla_addresses(&r, BARE).is_empty());
    let bare_sans = exact_uri_sans(&upstream_tls(&r, BARE));
    assert_eq!(bare_sans.len(), 1);
    assert!(
        bare_sans[0].starts_with("spiffe://causeway.local/") && !bare_sans[0].contains("/ns/"),
        "{bare_sans:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Over mixes of EndpointSlices with and without an identity, on the client's network
    /// (beta) and behind a gateway (gamma): the SAN matchers are exact and list exactly the
    /// identities of the endpoints included, and EDS carries exactly those endpoints (the
    /// gateway's weight counts only those behind it).
    #[test]
    fn san_matchers_are_exact_over_mixes_of_endpoints(
        slices in proptest::collection::vec(
            (any::<bool>(), proptest::option::of(0usize..3), 1usize..3),
            0..5,
        ),
    ) {
        const ACCOUNTS: [&str; 3] = ["echo", "legacy", "batch"];
        let mut files: Vec<(String, String)> = Vec::new();
        let mut want_sans = std::collections::BTreeSet::from([
            "spiffe://causeway.local/ns/demo/sa/echo".to_owned(),
        ]);
        // The example's own echo endpoints: alpha's and beta's direct, gamma's one behind
        // gamma's gateway.
        let mut want_direct = vec!["127.1.0.11".to_owned(), "127.2.0.11".to_owned()];
        let mut gateway_weight = 1u32;
        let mut left_out = Vec::new();
        for (i, (in_gamma, account, count)) in slices.iter().enumerate() {
            let (cluster, net) = if *in_gamma { ("gamma", 3) } else { ("beta", 2) };
            let addresses: Vec<String> =
                (0..*count).map(|j| format!("127.{net}.{}.{}", 10 + i, j + 1)).collect();
            let account = account.map(|a| ACCOUNTS[a]);
            match account {
                Some(a) => {
                    want_sans.insert(format!("spiffe://causeway.local/ns/demo/sa/{a}"));
                    if *in_gamma {
                        gateway_weight += *count as u32;
                    } else {
                        want_direct.extend(addresses.iter().cloned());
                    }
                }
                None => left_out.extend(addresses.iter().cloned()),
            }
            files.push((
                format!("clusters/{cluster}/extra-{i}.yaml"),
                slice_yaml("echo", &format!("echo-extra-{i}"), account, &addresses),
            ));
        }
        let refs: Vec<(&str, &str)> =
            files.iter().map(|(f, t)| (f.as_str(), t.as_str())).collect();
        let index = index_with_files(&refs);
        let r = sidecar(&index, "alpha", "client");
        let sans: std::collections::BTreeSet<String> =
            exact_uri_sans(&upstream_tls(&r, ECHO)).into_iter().collect();
        prop_assert_eq!(&sans, &want_sans);
        let mut want: Vec<(String, u32)> = want_direct.into_iter().map(|a| (a, 1)).collect();
        want.push(("127.3.255.1".into(), gateway_weight));
        want.sort();
        let got = cla_addresses(&r, ECHO);
        prop_assert_eq!(&got, &want);
        for a in &left_out {
            prop_assert!(!got.iter().any(|(g, _)| g == a), "{} has no identity", a);
        }
    }
}
