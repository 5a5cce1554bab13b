//! Kubernetes objects → endpoints and workloads, resolved by the mesh index: the oracles are what
//! the Kubernetes API documents for Pods, Nodes, Services and EndpointSlices.

mod common {
    pub mod objects;
}

use causeway_kube::translate;
use causeway_model::Health;
use common::objects::*;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

#[test]
fn pod_node_and_slice_give_endpoints_with_identity_locality_and_network() {
    let index = cart_cluster().index();
    let eps = endpoints(&index, "shop", "cart", 80);
    assert_eq!(eps.len(), 3, "one endpoint per slice endpoint: {eps:?}");

    let a = &eps[&ip("10.1.0.1")];
    assert_eq!(
        a.port, 8080,
        "traffic goes to the slice's port, not the service port"
    );
    assert_eq!(
        a.workload.as_deref(),
        Some("cart-a"),
        "targetRef names the pod"
    );
    assert_eq!(
        a.service_account.as_deref(),
        Some("cart-sa"),
        "spec.serviceAccountName of the pod"
    );
    assert_eq!(
        a.locality,
        loc("us-west/us-west-2b/rack-7"),
        "the node's topology labels"
    );
    assert_eq!(a.network.as_str(), "net-east", "the cluster's network");
    assert!(a.is_ready(), "ready endpoint: {:?}", a.not_ready);

    let b = &eps[&ip("10.1.0.2")];
    assert_eq!(
        b.service_account.as_deref(),
        Some("default"),
        "a pod without serviceAccountName runs as the namespace's `default` service account"
    );
    assert_eq!(
        b.locality,
        loc(CLUSTER_LOCALITY),
        "node without topology labels: the cluster's locality"
    );

    let c = &eps[&ip("10.1.0.3")];
    assert_eq!(
        c.locality,
        loc("us-east/us-east-1b"),
        "a node in another zone of the cluster's region: that zone, and not the cluster's subzone (a subzone belongs to its zone)"
    );
}

#[test]
fn endpoint_zone_is_used_when_the_node_is_unknown() {
    // The control plane has not (yet) seen node n-9; the slice still says which zone it is in.
    let index = Cluster::default()
        .service(cart_service())
        .slice(cart_slice(
            "cart-1",
            json!([{
            "addresses": ["10.1.0.9"], "zone": "us-east-1c", "nodeName": "n-9",
            "conditions": {"ready": true}}]),
        ))
        .index();
    let ep = &endpoints(&index, "shop", "cart", 80)[&ip("10.1.0.9")];
    assert_eq!(ep.locality.region, "us-east", "the cluster's region");
    assert_eq!(ep.locality.zone, "us-east-1c", "the endpoint's zone");
    assert_eq!(
        ep.service_account, None,
        "no targetRef, no annotation: identity unknown"
    );
}

#[test]
fn not_ready_and_terminating_endpoints_are_kept_with_their_reasons() {
    let index = Cluster::default()
        .service(cart_service())
        .node(node_manifest("n-1b", json!({
            "topology.kubernetes.io/region": "us-east", "topology.kubernetes.io/zone": "us-east-1b"})))
        .pod(pod_manifest("cart-a", "10.1.0.1", "n-1b", Some("cart-sa"), false))
        .pod(pod_manifest("cart-b", "10.1.0.2", "n-1b", Some("cart-sa"), true))
        .pod(pod_manifest("cart-c", "10.1.0.3", "n-1b", Some("cart-sa"), true))
        .slice(cart_slice("cart-1", json!([
            // Readiness probe failing.
            slice_endpoint("10.1.0.1", "cart-a", "n-1b", json!({"ready": false, "serving": false, "terminating": false})),
            // Shutting down, still serving its last requests: ready is always false then.
            slice_endpoint("10.1.0.2", "cart-b", "n-1b", json!({"ready": false, "serving": true, "terminating": true})),
            // No conditions at all: "a nil value should be interpreted as ready".
            {"addresses": ["10.1.0.3"], "nodeName": "n-1b",
             "targetRef": {"kind": "Pod", "namespace": "shop", "name": "cart-c"}},
        ])))
        .index();
    let eps = endpoints(&index, "shop", "cart", 80);
    assert_eq!(eps.len(), 3, "not-ready endpoints stay listed: {eps:?}");
    let not_ready = eps[&ip("10.1.0.1")]
        .not_ready
        .clone()
        .expect("10.1.0.1 is not ready");
    assert!(
        not_ready.contains("not ready"),
        "reason names readiness: {not_ready}"
    );
    let terminating = eps[&ip("10.1.0.2")]
        .not_ready
        .clone()
        .expect("10.1.0.2 must get no new traffic");
    assert!(
        terminating.contains("terminating"),
        "reason names termination: {terminating}"
    );
    assert!(
        eps[&ip("10.1.0.3")].is_ready(),
        "absent conditions mean ready"
    );
    for ep in eps.values() {
        assert_eq!(
            ep.service_account.as_deref(),
            Some("cart-sa"),
            "identity kept for {}",
            ep.address
        );
        assert_eq!(ep.locality, loc("us-east/us-east-1b"));
    }
}

#[test]
fn terminating_but_serving_endpoints_take_traffic_only_when_nothing_is_ready() {
    let cluster = |with_ready_pod: bool| {
        let mut c = Cluster::default()
            .service(cart_service())
            .node(node_manifest("n-1b", json!({
                "topology.kubernetes.io/region": "us-east", "topology.kubernetes.io/zone": "us-east-1b"})))
            .pod(pod_manifest("cart-old", "10.1.0.1", "n-1b", Some("cart-sa"), true))
            .pod(pod_manifest("cart-gone", "10.1.0.2", "n-1b", Some("cart-sa"), true));
        let mut eps = vec![
            // The last replica of a rolling update: shutting down, still answering.
            slice_endpoint(
                "10.1.0.1",
                "cart-old",
                "n-1b",
                json!({"ready": false, "serving": true, "terminating": true}),
            ),
            // Shutting down and no longer answering.
            slice_endpoint(
                "10.1.0.2",
                "cart-gone",
                "n-1b",
                json!({"ready": false, "serving": false, "terminating": true}),
            ),
        ];
        if with_ready_pod {
            c = c.pod(pod_manifest(
                "cart-new",
                "10.1.0.3",
                "n-1b",
                Some("cart-sa"),
                true,
            ));
            eps.push(slice_endpoint(
                "10.1.0.3",
                "cart-new",
                "n-1b",
                json!({"ready": true, "serving": true, "terminating": false}),
            ));
        }
        c.slice(cart_slice("cart-1", serde_json::Value::Array(eps)))
            .index()
    };
    let only_terminating = endpoints(&cluster(false), "shop", "cart", 80);
    assert!(
        only_terminating[&ip("10.1.0.1")].is_ready(),
        "with nothing ready, a serving terminating endpoint takes traffic (as kube-proxy does)"
    );
    assert!(
        !only_terminating[&ip("10.1.0.2")].is_ready(),
        "one that no longer serves never does"
    );
    let with_ready = endpoints(&cluster(true), "shop", "cart", 80);
    assert!(with_ready[&ip("10.1.0.3")].is_ready());
    assert!(
        !with_ready[&ip("10.1.0.1")].is_ready(),
        "once a ready endpoint exists, terminating ones get no new traffic"
    );
}

#[test]
fn a_service_without_selector_gets_its_endpoints_from_hand_made_slices() {
    let index = Cluster::default()
        .service(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "legacy-db", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 5432, "protocol": "TCP"}]},
        }))
        .slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "legacy-db-1", "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "legacy-db",
                    "endpointslice.kubernetes.io/managed-by": "staff"},
                "annotations": {"causeway.io/service-account": "legacy-db"}},
            "addressType": "IPv4",
            "ports": [{"name": "", "port": 5432, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["192.168.10.5"]}, {"addresses": ["192.168.10.6"], "conditions": {"ready": false}}],
        }))
        .slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "legacy-db-v6", "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "legacy-db"}},
            "addressType": "IPv6",
            "ports": [{"port": 5432}],
            "endpoints": [{"addresses": ["fd00::5"]}],
        }))
        .slice(json!({
            // FQDN slices (deprecated) name hosts, not addresses: nothing to route to directly.
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "legacy-db-fqdn", "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "legacy-db"}},
            "addressType": "FQDN",
            "ports": [{"port": 5432}],
            "endpoints": [{"addresses": ["db.example.com"]}],
        }))
        .index();
    let eps = endpoints(&index, "shop", "legacy-db", 5432);
    assert_eq!(
        eps.keys().copied().collect::<Vec<_>>(),
        vec![ip("192.168.10.5"), ip("192.168.10.6"), ip("fd00::5")],
        "both IP slices' endpoints, none from the FQDN slice"
    );
    let first = &eps[&ip("192.168.10.5")];
    assert_eq!(first.port, 5432);
    assert_eq!(first.workload, None, "no targetRef");
    assert_eq!(
        first.service_account.as_deref(),
        Some("legacy-db"),
        "the slice's service-account annotation"
    );
    assert_eq!(
        first.locality,
        loc(CLUSTER_LOCALITY),
        "no node, no zone: the cluster's locality"
    );
    assert!(first.is_ready());
    assert!(!eps[&ip("192.168.10.6")].is_ready(), "ready: false");
    assert_eq!(
        eps[&ip("fd00::5")].service_account,
        None,
        "that slice has no annotation"
    );
}

#[test]
fn slices_imported_by_another_mcs_implementation_are_ignored() {
    let imported = |source: &str, name: &str, address: &str| {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "shop", "labels": {
                "kubernetes.io/service-name": "cart",
                "multicluster.kubernetes.io/service-name": "cart",
                "multicluster.kubernetes.io/source-cluster": source,
                "endpointslice.kubernetes.io/managed-by": "lighthouse-agent.submariner.io"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
        })
    };
    let west: EndpointSlice = parse(imported("west", "cart-west", "10.2.0.1"));
    assert_eq!(
        translate::endpoint_slice(&cid(CLUSTER), &west).expect("translates"),
        None,
        "endpoints of cluster west are west's to report, not east's"
    );
    let index = cart_cluster()
        .slice(imported("west", "cart-west", "10.2.0.1"))
        .index();
    let eps = endpoints(&index, "shop", "cart", 80);
    assert!(
        !eps.contains_key(&ip("10.2.0.1")),
        "west's endpoint leaked into east: {eps:?}"
    );
    assert_eq!(eps.len(), 3, "east's own endpoints are unaffected");
}

#[test]
fn pods_become_workload_entries() {
    let cluster = cart_cluster()
        .pod(pod_manifest(
            "cart-unready",
            "10.1.0.4",
            "n-west",
            Some("cart-sa"),
            false,
        ))
        .pod(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "cart-pending", "namespace": "shop", "labels": {"app": "cart"}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
            "status": {"phase": "Pending"}}))
        .pod(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "cart-leaving", "namespace": "shop", "labels": {"app": "cart"},
                "deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 30},
            "spec": {"nodeName": "n-bare", "containers": [{"name": "app", "image": "app:1"}]},
            "status": {"phase": "Running", "podIP": "10.1.0.5",
                "conditions": [{"type": "Ready", "status": "True"}]}}));
    let objects = cluster.objects();
    let we = |name: &str| {
        objects
            .workload_entries
            .get(&("shop".to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("workload entry for pod {name}"))
    };
    let a = we("cart-a");
    assert_eq!(a.address, ip("10.1.0.1"), "status.podIP");
    assert_eq!(a.service_account, "cart-sa");
    assert_eq!(a.labels.get("app").map(String::as_str), Some("cart"));
    assert_eq!(a.labels.get("version").map(String::as_str), Some("v2"));
    assert_eq!(
        a.locality,
        Some(loc("us-west/us-west-2b/rack-7")),
        "its node's locality"
    );
    assert_eq!(a.ports.get("http"), Some(&8080), "named container port");
    assert_eq!(a.health, Health::Healthy, "Ready condition True");
    assert_eq!(we("cart-b").service_account, "default");
    assert_eq!(
        we("cart-unready").health,
        Health::Unhealthy,
        "Ready condition False"
    );
    assert_eq!(
        we("cart-leaving").health,
        Health::Draining,
        "deletionTimestamp set: shutting down"
    );
    assert!(
        !objects
            .workload_entries
            .contains_key(&("shop".to_owned(), "cart-pending".to_owned())),
        "a pod without an IP has nowhere to be reached"
    );

    let index = cluster.index();
    let placement = index
        .workloads
        .get(&("shop".to_owned(), "cart-a".to_owned()))
        .expect("placement of cart-a");
    assert_eq!(placement.address, ip("10.1.0.1"));
    assert_eq!(placement.service_account, "cart-sa");
    assert_eq!(placement.network.as_str(), "net-east");
    assert_eq!(placement.locality, loc("us-west/us-west-2b/rack-7"));
    let b = index
        .workloads
        .get(&("shop".to_owned(), "cart-b".to_owned()))
        .expect("placement of cart-b");
    assert_eq!(
        b.locality,
        loc(CLUSTER_LOCALITY),
        "label-less node: the cluster's locality"
    );
    // Pods are placements, not endpoints: a Kubernetes Service's endpoints are its slices.
    assert_eq!(
        endpoints(&index, "shop", "cart", 80).len(),
        3,
        "no endpoint from pods directly"
    );
}

#[test]
fn multi_port_services_match_slice_ports_by_name() {
    let index = Cluster::default()
        .service(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.40", "ports": [
                {"name": "http", "port": 80, "targetPort": "web"},
                {"name": "metrics", "port": 9090, "targetPort": 9102}]}}))
        .slice(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "api-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9102}, {"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.1.1.1"]}]}))
        .index();
    assert_eq!(
        endpoints(&index, "shop", "api", 80)[&ip("10.1.1.1")].port,
        8080,
        "named targetPort resolved by the slice"
    );
    assert_eq!(
        endpoints(&index, "shop", "api", 9090)[&ip("10.1.1.1")].port,
        9102
    );
}
