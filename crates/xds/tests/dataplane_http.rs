//! The HTTP connection managers the control plane builds for sidecars convert into the
//! Causeway proxy's configuration (routes, retries, XFCC, the RBAC filters, the router
//! last), and what the proxy does not honour is refused naming the field's path.

mod common;

use std::time::Duration;

use causeway_discovery::MeshIndex;
use causeway_xds::dataplane::http::{
    http_manager_config, Codec, HttpManagerConfig, PathMatch, RetryBackoff, RetryOn, XfccConfig,
};
use causeway_xds::dataplane::rbac::RbacAction;
use causeway_xds::dataplane::{ClusterSplit, ConfigError};
use causeway_xds::resources::{Resources, TypeUrl};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};
use envoy_types::util::pack_any;
use prost::Message;

const ECHO: &str = "outbound|80||echo.demo.svc.cluster.local";
const HCM: &str = "envoy.filters.network.http_connection_manager";

const ALLOW: &str = "apiVersion: causeway.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: greeter-callers, namespace: demo}
spec:
  selector: {app: greeter}
  rules:
  - from: [{principals: [spiffe://causeway.local/ns/demo/sa/client]}]
";

const DENY: &str = "apiVersion: causeway.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-strangers, namespace: demo}
spec:
  selector: {app: greeter}
  action: DENY
  rules:
  - from: [{namespaces: [strangers]}]
";

/// The example mesh with `extra` files (path relative to the mesh directory, text) over it.
fn index_with_files(extra: &[(&str, &str)]) -> MeshIndex {
    common::files::example_with(extra)
}

fn sidecar(index: &MeshIndex, cluster: &str, workload: &str) -> Resources {
    common::sidecar_of(index, cluster, workload)
}

/// Every HTTP connection manager of the sidecar's listeners: (listener name, typed config).
fn managers(r: &Resources) -> Vec<(String, Any)> {
    let mut out = Vec::new();
    for res in r.of(TypeUrl::Listener).expect("listeners").values() {
        let l = Listener::decode(&*res.body.value).expect("listener");
        for f in l.filter_chains.iter().flat_map(|c| &c.filters) {
            if f.name != HCM {
                continue;
            }
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                panic!("{}: no typed config", l.name)
            };
            out.push((l.name.clone(), any.clone()));
        }
    }
    out
}

fn convert((listener, any): &(String, Any)) -> Result<HttpManagerConfig, ConfigError> {
    http_manager_config(&format!("Listener {listener}"), any)
}

fn client() -> Resources {
    sidecar(&index_with_files(&[]), "alpha", "client")
}

/// The manager of the listener named `name` of `r`.
fn manager_of(r: &Resources, name: &str) -> (String, Any) {
    managers(r)
        .into_iter()
        .find(|(l, _)| l == name)
        .unwrap_or_else(|| panic!("no HTTP listener {name}"))
}

/// The outbound manager to echo of alpha's client.
fn echo_manager() -> (String, hcm::HttpConnectionManager) {
    let (name, any) = managers(&client())
        .into_iter()
        .find(|(l, _)| l.starts_with("outbound|") && l.ends_with("|demo/echo"))
        .expect("an outbound listener to echo");
    (
        name,
        hcm::HttpConnectionManager::decode(&*any.value).expect("hcm"),
    )
}

fn refused(listener: &str, m: hcm::HttpConnectionManager) -> ConfigError {
    let e = convert(&(listener.to_owned(), pack_any(m))).expect_err("refused");
    assert_eq!(e.resource, format!("Listener {listener}"));
    e
}

fn first_route(m: &mut hcm::HttpConnectionManager) -> &mut route::Route {
    let Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc)) =
        &mut m.route_specifier
    else {
        panic!("inline routes")
    };
    &mut rc.virtual_hosts[0].routes[0]
}

fn first_action(m: &mut hcm::HttpConnectionManager) -> &mut route::RouteAction {
    let Some(route::route::Action::Route(a)) = &mut first_route(m).action else {
        panic!("route action")
    };
    a
}

#[test]
fn outbound_managers_route_everything_to_their_cluster_with_retries() {
    let r = client();
    let outbound: Vec<_> = managers(&r)
        .into_iter()
        .filter(|(l, _)| l.starts_with("outbound|"))
        .collect();
    assert!(outbound.len() >= 2, "{outbound:?}");
    let mut clusters = Vec::new();
    for m in &outbound {
        let cfg = convert(m).unwrap_or_else(|e| panic!("{}: {e}", m.0));
        assert_eq!(cfg.codec, Codec::Auto);
        assert_eq!(cfg.stream_idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(cfg.request_headers_timeout, Some(Duration::from_secs(10)));
        assert_eq!(cfg.forward_client_cert, None, "outbound: SANITIZE");
        assert!(cfg.rbac.is_empty());
        let [vh] = cfg.routes.virtual_hosts.as_slice() else {
            panic!("one virtual host: {cfg:?}")
        };
        assert_eq!(vh.domains, vec!["*"]);
        let [rt] = vh.routes.as_slice() else {
            panic!("one route: {vh:?}")
        };
        assert_eq!(rt.matches, PathMatch::Prefix("/".into()));
        assert_eq!(rt.action.clusters.pick(0), cfg.stat_prefix);
        assert_eq!(rt.action.timeout, Some(Duration::from_secs(15)));
        let retry = rt.action.retry.as_ref().expect("outbound retries");
        assert_eq!(
            retry.retry_on,
            vec![
                RetryOn::ConnectFailure,
                RetryOn::RefusedStream,
                RetryOn::Reset,
                RetryOn::Unavailable,
                RetryOn::GatewayError
            ]
        );
        assert_eq!(retry.num_retries, 2);
        assert!(retry.retry_other_hosts, "previous_hosts predicate");
        assert_eq!(retry.host_selection_retry_max_attempts, 3);
        assert_eq!(retry.per_try_timeout, None);
        assert!(retry.retriable_status_codes.is_empty());
        assert_eq!(
            retry.backoff,
            RetryBackoff {
                base_interval: Duration::from_millis(25),
                max_interval: Duration::from_millis(250)
            }
        );
        clusters.push(rt.action.clusters.pick(0).to_owned());
    }
    assert!(clusters.iter().any(|c| c == ECHO), "{clusters:?}");
    assert!(clusters.iter().all(|c| c.starts_with("outbound|")));
}

#[test]
fn inbound_manager_sets_the_callers_spiffe_id_and_does_not_retry() {
    let r = client();
    let cfg = convert(&manager_of(&r, "inbound|127.1.0.10:8080")).expect("accepted");
    assert_eq!(cfg.stat_prefix, "inbound_8080");
    assert_eq!(
        cfg.forward_client_cert,
        Some(XfccConfig {
            uri: true,
            ..XfccConfig::default()
        }),
        "SANITIZE_SET with the URI SAN only"
    );
    let rt = &cfg.routes.virtual_hosts[0].routes[0];
    assert_eq!(rt.action.clusters.pick(0), "inbound|8080||");
    assert_eq!(rt.action.retry, None, "no retries to the local app");
    assert!(cfg.rbac.is_empty(), "no policy selects the client");
}

#[test]
fn inbound_rbac_filters_are_converted_deny_then_allow_before_the_router() {
    let index = index_with_files(&[
        ("clusters/gamma/policy.yaml", ALLOW),
        ("clusters/gamma/deny.yaml", DENY),
    ]);
    let r = sidecar(&index, "gamma", "greeter-gamma-1");
    let m = manager_of(&r, "inbound|127.3.0.12:8080");
    let cfg = convert(&m).expect("accepted");
    assert!(cfg.rbac.iter().all(|f| f.name == "envoy.filters.http.rbac"));
    let actions: Vec<RbacAction> = cfg.rbac.iter().map(|f| f.action).collect();
    assert_eq!(actions, vec![RbacAction::Deny, RbacAction::Allow]);
    let names: Vec<Vec<&str>> = cfg
        .rbac
        .iter()
        .map(|f| f.policies.keys().map(String::as_str).collect())
        .collect();
    assert_eq!(
        names,
        vec![
            vec!["demo/no-strangers[0]"],
            vec!["demo/greeter-callers[0]"]
        ]
    );
    assert_eq!(
        cfg.routes.virtual_hosts[0].routes[0]
            .action
            .clusters
            .pick(0),
        "inbound|8080||"
    );
    let json = serde_json::to_value(&cfg).expect("json");
    assert_eq!(json["rbac"][0]["action"], "Deny", "{json}");

    // The router must stay last.
    let mut raw = hcm::HttpConnectionManager::decode(&*m.1.value).expect("hcm");
    raw.http_filters.rotate_right(1);
    let e = refused(&m.0, raw.clone());
    assert_eq!(e.field, "http_filters[0]");
    assert!(e.reason.contains("router must be the last"), "{e}");
    raw.http_filters.remove(0);
    let e = refused(&m.0, raw);
    assert_eq!(e.field, "http_filters[1]");
    assert!(e.reason.contains("must be the router"), "{e}");
}

#[test]
fn rds_is_refused_the_routes_come_inline() {
    let (name, mut m) = echo_manager();
    m.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::Rds(
        hcm::Rds::default(),
    ));
    let e = refused(&name, m);
    assert_eq!(e.field, "rds");
    assert!(e.reason.contains("inline"), "{e}");
}

#[test]
fn an_unknown_http_filter_is_refused_naming_it() {
    let (name, mut m) = echo_manager();
    m.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.lua".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua".into(),
                value: Vec::new(),
            })),
            ..Default::default()
        },
    );
    let e = refused(&name, m);
    assert_eq!(e.field, "http_filters[0].typed_config");
    assert!(e.reason.contains("envoy.filters.http.lua"), "{e}");

    let (name, mut m) = echo_manager();
    m.http_filters.clear();
    assert_eq!(refused(&name, m).field, "http_filters");
}

#[test]
fn a_regex_path_match_is_refused() {
    let (name, mut m) = echo_manager();
    first_route(&mut m).r#match = Some(route::RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::SafeRegex(RegexMatcher {
            regex: "/api/.*".into(),
            ..Default::default()
        })),
        ..Default::default()
    });
    let e = refused(&name, m);
    assert_eq!(
        e.field,
        "route_config.virtual_hosts[0].routes[0].match.safe_regex"
    );
}

fn weighted(clusters: &[(&str, Option<u32>)]) -> route::route_action::ClusterSpecifier {
    route::route_action::ClusterSpecifier::WeightedClusters(route::WeightedCluster {
        clusters: clusters
            .iter()
            .map(|(name, weight)| route::weighted_cluster::ClusterWeight {
                name: (*name).to_owned(),
                weight: weight.map(|value| UInt32Value { value }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

#[test]
fn weighted_clusters_become_a_split_and_bad_ones_are_refused() {
    let (name, mut m) = echo_manager();
    first_action(&mut m).cluster_specifier = Some(weighted(&[
        ("blue", Some(95)),
        ("green", Some(5)),
        ("old", Some(0)),
    ]));
    let cfg = convert(&(name, pack_any(m))).expect("converted");
    let clusters = &cfg.routes.virtual_hosts[0].routes[0].action.clusters;
    assert_eq!(
        clusters,
        &ClusterSplit::Weighted {
            clusters: vec![("blue".into(), 95), ("green".into(), 5), ("old".into(), 0)],
            total: 100
        }
    );
    let at = "route_config.virtual_hosts[0].routes[0].route.weighted_clusters";
    for (split, field, reason) in [
        (vec![], "clusters", "needs at least one cluster"),
        (
            vec![("a", Some(0)), ("b", Some(0))],
            "clusters",
            "add up to 0",
        ),
        (vec![("a", None)], "clusters[0].weight", "missing"),
        (
            vec![("a", Some(1)), ("a", Some(1))],
            "clusters[1].name",
            "listed twice",
        ),
        (vec![("", Some(1))], "clusters[0].name", "missing"),
    ] {
        let (name, mut m) = echo_manager();
        first_action(&mut m).cluster_specifier = Some(weighted(&split));
        let e = refused(&name, m);
        assert_eq!(e.field, format!("{at}.{field}"), "{e}");
        assert!(e.reason.contains(reason), "{e}");
    }
    let (name, mut m) = echo_manager();
    let mut spec = weighted(&[("a", Some(1))]);
    if let route::route_action::ClusterSpecifier::WeightedClusters(w) = &mut spec {
        w.runtime_key_prefix = "canary".into();
    }
    first_action(&mut m).cluster_specifier = Some(spec);
    assert_eq!(refused(&name, m).field, format!("{at}.runtime_key_prefix"));
}

#[test]
fn use_remote_address_is_refused() {
    let (name, mut m) = echo_manager();
    m.use_remote_address = Some(BoolValue { value: true });
    let e = refused(&name, m);
    assert_eq!(e.field, "use_remote_address");
    assert!(e.reason.contains("not supported"), "{e}");
}

#[test]
fn other_refusals_name_the_field() {
    let (name, mut m) = echo_manager();
    let retry = first_action(&mut m).retry_policy.as_mut().expect("retry");
    retry.retry_on.push_str(",envoy-ratelimited");
    let e = refused(&name, m);
    assert_eq!(
        e.field,
        "route_config.virtual_hosts[0].routes[0].route.retry_policy.retry_on"
    );
    assert!(e.reason.contains("envoy-ratelimited"), "{e}");

    let (name, mut m) = echo_manager();
    m.forward_client_cert_details =
        hcm::http_connection_manager::ForwardClientCertDetails::AppendForward as i32;
    assert_eq!(refused(&name, m).field, "forward_client_cert_details");

    let (name, mut m) = echo_manager();
    first_action(&mut m).prefix_rewrite = "/v2".into();
    assert_eq!(
        refused(&name, m).field,
        "route_config.virtual_hosts[0].routes[0].route.prefix_rewrite"
    );

    let (name, m) = echo_manager();
    let mut any = pack_any(m);
    any.type_url =
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy".into();
    let e = convert(&(name, any)).expect_err("not an HCM");
    assert_eq!(e.field, "typed_config");
}

#[test]
fn unset_timeouts_take_envoys_defaults_and_zero_disables_them() {
    let (name, mut m) = echo_manager();
    m.stream_idle_timeout = None;
    m.request_headers_timeout = None;
    first_action(&mut m).timeout = None;
    let cfg = convert(&(name.clone(), pack_any(m))).expect("accepted");
    assert_eq!(cfg.stream_idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(cfg.request_headers_timeout, None);
    let action = &cfg.routes.virtual_hosts[0].routes[0].action;
    assert_eq!(action.timeout, Some(Duration::from_secs(15)));

    let (name, mut m) = echo_manager();
    m.stream_idle_timeout = Some(Default::default());
    first_action(&mut m).timeout = Some(Default::default());
    let cfg = convert(&(name, pack_any(m))).expect("accepted");
    assert_eq!(cfg.stream_idle_timeout, None);
    assert_eq!(cfg.routes.virtual_hosts[0].routes[0].action.timeout, None);
}
