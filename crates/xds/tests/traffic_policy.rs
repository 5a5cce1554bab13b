//! `TrafficPolicy` in a caller's view and in what EDS carries (issue 12's first step):
//! `FailOver` orders the listed clusters as priorities, `ActiveActive` weights them on one
//! priority, and either leaves unlisted clusters out with the reason; callers a policy does not
//! name keep the locality priorities.

mod common;

use std::collections::BTreeMap;

use causeway_discovery::view::view_service;
use causeway_discovery::{ProxyContext, ViewPort};
use causeway_model::{ClusterId, ProxyIdentity, ProxyRole, ServiceKey};
use causeway_xds::resources::TypeUrl;
use common::files::example_with;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

const ECHO: &str = "outbound|80||echo.demo.svc.cluster.local";

fn policy(spec: &str) -> String {
    format!(
        "apiVersion: causeway.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  service: echo\n{spec}"
    )
}

fn echo_port(index: &causeway_discovery::MeshIndex, caller: &str, workload: &str) -> ViewPort {
    let ctx = ProxyContext::resolve(
        index,
        ProxyIdentity {
            cluster: ClusterId::new(caller).expect("id"),
            namespace: "demo".into(),
            workload: workload.into(),
            role: ProxyRole::Sidecar,
        },
    )
    .expect("context");
    let service = view_service(index, &ctx, &ServiceKey::new("demo", "echo")).expect("echo");
    service.ports.into_iter().next().expect("a port")
}

/// Cluster → (priority, total weight) of the endpoints EDS carries.
fn by_cluster(port: &ViewPort) -> BTreeMap<String, (u32, u32)> {
    let mut out: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for e in port.endpoints() {
        let entry = out.entry(e.cluster.to_string()).or_insert((e.priority, 0));
        assert_eq!(entry.0, e.priority, "one priority per cluster: {port:#?}");
        entry.1 += e.weight;
    }
    out
}

#[test]
fn fail_over_orders_the_listed_clusters_and_leaves_the_rest_out() {
    let index = example_with(&[(
        "policies/echo.yaml",
        &policy("  callers: {clusters: [alpha]}\n  mode: FailOver\n  clusters:\n  - {name: gamma}\n  - {name: beta}\n"),
    )]);
    let port = echo_port(&index, "alpha", "client");
    let got = by_cluster(&port);
    // gamma first although it is the farthest; alpha's own echo is not listed.
    assert_eq!(got.get("gamma").map(|g| g.0), Some(0), "{got:?}");
    assert_eq!(got.get("beta").map(|b| b.0), Some(1), "{got:?}");
    assert!(!got.contains_key("alpha"), "{got:?}");
    let hidden: Vec<_> = port
        .hidden
        .iter()
        .filter(|h| h.cluster.as_str() == "alpha")
        .collect();
    assert!(
        hidden.iter().any(|h| h
            .reason
            .contains("TrafficPolicy demo/echo (FailOver) does not list cluster alpha")),
        "{:#?}",
        port.hidden
    );
    let reasons: Vec<&str> = port.endpoints().map(|e| e.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("FailOver (TrafficPolicy demo/echo): 1st choice")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("2nd choice")),
        "{reasons:?}"
    );
    // Only the listed clusters' identities are accepted.
    assert!(port
        .identities
        .iter()
        .all(|i| i.to_string().ends_with("/sa/echo")));

    // A caller the policy does not name keeps the locality priorities (beta's own first).
    let port = echo_port(&index, "beta", "echo-beta-1");
    let got = by_cluster(&port);
    assert_eq!(got.get("beta").map(|b| b.0), Some(0), "{got:?}");
    assert!(got.contains_key("alpha"), "{got:?}");
}

#[test]
fn active_active_puts_the_clusters_on_one_priority_by_their_weights_in_eds_too() {
    let index = example_with(&[(
        "policies/echo.yaml",
        &policy("  mode: ActiveActive\n  clusters:\n  - {name: alpha, weight: 70}\n  - {name: gamma, weight: 30}\n"),
    )]);
    let port = echo_port(&index, "alpha", "client");
    let got = by_cluster(&port);
    assert_eq!(got.len(), 2, "{got:?}");
    let (alpha, gamma) = (got["alpha"], got["gamma"]);
    assert_eq!((alpha.0, gamma.0), (0, 0));
    // 70 : 30 of the weight, whatever the endpoint counts.
    let share = f64::from(alpha.1) / f64::from(alpha.1 + gamma.1);
    assert!((share - 0.7).abs() < 0.001, "{got:?}");

    // The same numbers reach EDS, for Envoy (gamma's gateway aggregate) ...
    let envoy = common::sidecar_of(&index, "alpha", "client");
    let cla = common::decoded::<ClusterLoadAssignment>(&envoy, TypeUrl::ClusterLoadAssignment)
        .into_iter()
        .find(|c| c.cluster_name == ECHO)
        .expect("echo assignment");
    let weights: Vec<(u32, u32)> = cla
        .endpoints
        .iter()
        .flat_map(|g| {
            g.lb_endpoints.iter().map(move |e| {
                (
                    g.priority,
                    e.load_balancing_weight.as_ref().map_or(1, |w| w.value),
                )
            })
        })
        .collect();
    assert!(weights.iter().all(|(p, _)| *p == 0), "{weights:?}");
    let total: u32 = weights.iter().map(|(_, w)| w).sum();
    assert_eq!(total, alpha.1 + gamma.1, "{weights:?}");
    // ... and for the Causeway proxy (gamma's pods one by one, same total).
    let causeway = common::sidecar_on(
        &index,
        "alpha",
        "client",
        causeway_xds::node::DataPlane::Causeway,
    );
    let cla = common::decoded::<ClusterLoadAssignment>(&causeway, TypeUrl::ClusterLoadAssignment)
        .into_iter()
        .find(|c| c.cluster_name == ECHO)
        .expect("echo assignment");
    let total_causeway: u32 = cla
        .endpoints
        .iter()
        .flat_map(|g| &g.lb_endpoints)
        .map(|e| e.load_balancing_weight.as_ref().map_or(1, |w| w.value))
        .sum();
    assert_eq!(total_causeway, total);
}

#[test]
fn check_reports_unknown_clusters_and_policies_that_match_nothing() {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/three-clusters");
    let scratch = tempfile::tempdir().expect("tmp");
    let root = scratch.path().join("mesh");
    common::files::copy_tree(&src, &root);
    std::fs::create_dir_all(root.join("policies")).expect("mkdir");
    std::fs::write(
        root.join("policies/echo.yaml"),
        policy("  mode: FailOver\n  clusters:\n  - {name: gamma}\n  - {name: omega}\n")
            + "---\n"
            + &policy("  callers: {clusters: [beta]}\n")
                .replace("service: echo", "service: nowhere")
                .replace("name: echo,", "name: lost,"),
    )
    .expect("write");
    let dir = causeway_registry::MeshDirectory::open(&root);
    assert!(dir.errors().is_empty(), "{:?}", dir.errors());
    let index = common::index_of(&dir);
    let clusters: BTreeMap<ClusterId, causeway_model::ClusterObjects> = dir
        .clusters()
        .iter()
        .map(|(n, s)| {
            (
                ClusterId::new(n).expect("id"),
                (*s.objects.clone().expect("loaded")).clone(),
            )
        })
        .collect();
    let found = causeway_discovery::check_mesh(index.mesh(), &clusters, &index);
    let policy_findings: Vec<String> = found
        .iter()
        .filter(|d| {
            d.object
                .as_deref()
                .is_some_and(|o| o.starts_with("TrafficPolicy"))
        })
        .map(ToString::to_string)
        .collect();
    assert_eq!(policy_findings.len(), 2, "{policy_findings:#?}");
    assert!(
        policy_findings
            .iter()
            .any(|d| d.contains("TrafficPolicy demo/echo")
                && d.contains("omega")
                && d.starts_with("error")),
        "{policy_findings:#?}"
    );
    assert!(
        policy_findings
            .iter()
            .any(|d| d.contains("TrafficPolicy demo/lost")
                && d.contains("demo/nowhere")
                && d.starts_with("warning")),
        "{policy_findings:#?}"
    );
}

/// The example with a fourth cluster, delta, in a third region (ap-south) on its own network,
/// running an echo replica of its own.
fn with_delta(policy_spec: &str) -> causeway_discovery::MeshIndex {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/three-clusters");
    let mesh = std::fs::read_to_string(src.join("mesh.yaml"))
        .expect("mesh.yaml")
        .replace("networks: [net-a, net-b]", "networks: [net-a, net-b, net-c]")
        + "---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {name: delta}\nspec:\n  network: net-c\n  locality: ap-south/ap-south-1a\n  gateways: [{address: 127.4.255.1, port: 15443}]\n";
    let echo = "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo}\nspec:\n  selector: {app: echo}\n  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]\n---\n\
apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: echo, namespace: demo}\n---\n\
apiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata: {name: echo-delta-1, namespace: demo}\nspec: {address: 127.4.0.11, labels: {app: echo}, serviceAccount: echo, ports: {http: 8080}}\n";
    example_with(&[
        ("mesh.yaml", &mesh),
        ("clusters/delta/workloads.yaml", echo),
        ("policies/echo.yaml", &policy(policy_spec)),
    ])
}

#[test]
fn region_failover_puts_the_named_region_before_every_other() {
    let failover = "  failover:\n  - {from: us-east, to: ap-south}\n";
    let port = echo_port(&with_delta(failover), "alpha", "client");
    let got = by_cluster(&port);
    // Home region first (alpha's zone, then beta's), then the named region, then the rest.
    let order: Vec<(u32, &str)> = {
        let mut v: Vec<(u32, &str)> = got.iter().map(|(c, (p, _))| (*p, c.as_str())).collect();
        v.sort();
        v
    };
    assert_eq!(
        order,
        vec![(0, "alpha"), (1, "beta"), (2, "delta"), (3, "gamma")],
        "{got:?}"
    );
    let delta = port
        .endpoints()
        .find(|e| e.cluster.as_str() == "delta")
        .expect("delta");
    assert!(
        delta
            .reason
            .contains("failover region ap-south of callers in us-east"),
        "{}",
        delta.reason
    );
    // Without the rule both other regions share one priority.
    let port = echo_port(&with_delta("  mode: Locality\n"), "alpha", "client");
    let got = by_cluster(&port);
    assert_eq!(got["delta"].0, got["gamma"].0, "{got:?}");
    // Callers in another region are not affected by a rule from us-east.
    let port = echo_port(&with_delta(failover), "gamma", "echo-gamma-1");
    let got = by_cluster(&port);
    assert_eq!(got["delta"].0, got["alpha"].0, "{got:?}");
}

#[test]
fn retries_timeout_and_outlier_detection_of_a_policy_reach_the_route_and_the_cluster() {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
    use envoy_types::pb::envoy::config::route::v3::route;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_connection_manager, HttpConnectionManager,
    };
    use prost::Message;
    let index = example_with(&[(
        "policies/echo.yaml",
        &policy("  retries: {attempts: 4, perTryTimeout: 250ms, retryOn: \"5xx,reset\"}\n  timeout: 3s\n  outlierDetection: {consecutive5xx: 7, interval: 2s, baseEjectionTime: 30s, maxEjectionPercent: 50}\n"),
    )]);
    let r = common::sidecar_of(&index, "alpha", "client");
    let cluster = common::decoded::<Cluster>(&r, TypeUrl::Cluster)
        .into_iter()
        .find(|c| c.name == ECHO)
        .expect("echo cluster");
    let od = cluster.outlier_detection.expect("outlier detection");
    assert_eq!(od.consecutive_5xx.map(|v| v.value), Some(7));
    assert_eq!(
        od.consecutive_gateway_failure.map(|v| v.value),
        Some(2),
        "unset: the default"
    );
    assert_eq!(od.interval.map(|d| d.seconds), Some(2));
    assert_eq!(od.base_ejection_time.map(|d| d.seconds), Some(30));
    assert_eq!(od.max_ejection_percent.map(|v| v.value), Some(50));
    let listener = common::decoded::<Listener>(&r, TypeUrl::Listener)
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
    assert_eq!(action.timeout.as_ref().map(|d| d.seconds), Some(3));
    let retry = action.retry_policy.as_ref().expect("retries");
    assert_eq!(retry.retry_on, "5xx,reset");
    assert_eq!(retry.num_retries.as_ref().map(|v| v.value), Some(4));
    assert_eq!(
        retry.per_try_timeout.as_ref().map(|d| d.nanos),
        Some(250_000_000)
    );
    // Other services keep the mesh's defaults.
    let greeter = common::decoded::<Cluster>(&r, TypeUrl::Cluster)
        .into_iter()
        .find(|c| c.name == "outbound|80||greeter.demo.svc.cluster.local")
        .expect("greeter");
    assert_eq!(
        greeter
            .outlier_detection
            .and_then(|o| o.consecutive_5xx)
            .map(|v| v.value),
        Some(3)
    );
}

#[test]
fn failover_priority_orders_endpoints_by_the_labels_they_share_with_the_caller() {
    // A second echo pod in beta labelled gold; `tier=gold` ranks endpoints with that value.
    let gold_echo = "apiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata: {name: echo-beta-2, namespace: demo}\nspec:\n  address: 127.2.0.12\n  labels: {app: echo, tier: gold}\n  serviceAccount: echo\n  ports: {http: 8080}\n";
    let index = example_with(&[
        ("clusters/beta/gold.yaml", gold_echo),
        (
            "policies/echo.yaml",
            &policy("  callers: {clusters: [alpha]}\n  failoverPriority: [topology.istio.io/network, tier=gold]\n"),
        ),
    ]);
    let port = echo_port(&index, "alpha", "client");
    let priority_of = |addr: &str| {
        port.endpoints()
            .find(|e| e.address.to_string() == addr)
            .map(|e| e.priority)
            .unwrap_or_else(|| panic!("{addr} not in {port:#?}"))
    };
    // Same network and gold: first, though beta is farther than alpha's own echo; same
    // network only: second; gamma's gateway (another network): last.
    let gold = priority_of("127.2.0.12");
    let alpha = priority_of("127.1.0.11");
    let beta = priority_of("127.2.0.11");
    let gamma = priority_of("127.3.255.1");
    assert_eq!(gold, 0, "{port:#?}");
    assert_eq!((alpha, beta), (1, 1), "{port:#?}");
    assert_eq!(gamma, 2, "{port:#?}");
    let reason = &port
        .endpoints()
        .find(|e| e.address.to_string() == "127.2.0.12")
        .expect("gold")
        .reason;
    assert!(
        reason.contains("failoverPriority: matches the caller on 2 of 2 labels"),
        "{reason}"
    );
}

#[test]
fn distribute_sends_each_listed_locality_its_share_and_hides_the_rest() {
    let index = example_with(&[(
        "policies/echo.yaml",
        &policy("  distribute:\n  - from: us-east/us-east-1a/*\n    to: {\"us-east/us-east-1b/*\": 80, \"eu-west/*\": 20}\n"),
    )]);
    let port = echo_port(&index, "alpha", "client");
    let got = by_cluster(&port);
    // alpha's own zone is not listed: its echo is left out, with the reason.
    assert!(!got.contains_key("alpha"), "{got:?}");
    assert!(
        port.hidden.iter().any(|h| h.cluster.as_str() == "alpha"
            && h.reason
                .contains("distributes callers in us-east/us-east-1a/*")),
        "{:#?}",
        port.hidden
    );
    let (beta, gamma) = (got["beta"], got["gamma"]);
    assert_eq!((beta.0, gamma.0), (0, 0), "one priority: {got:?}");
    let share = f64::from(beta.1) / f64::from(beta.1 + gamma.1);
    assert!((share - 0.8).abs() < 0.001, "{got:?}");
    // Callers elsewhere keep the locality priorities.
    let from_gamma = by_cluster(&echo_port(&index, "gamma", "greeter"));
    assert!(
        from_gamma.contains_key("alpha") && from_gamma["gamma"].0 == 0,
        "{from_gamma:?}"
    );
}
