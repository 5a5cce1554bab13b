//! Kubernetes manifests for the translation tests, and the records the watches would hold.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use causeway_discovery::{ClusterIndex, ClusterService, ResolvedEndpoint};
use causeway_kube::translate::{self, Records, TranslateError};
use causeway_model::{
    ClusterId, ClusterSpec, DiscoveryMode, Locality, MeshConfig, MeshSpec, NetworkId, ObjectSource,
    ServiceKey,
};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

pub const CLUSTER: &str = "east";
/// The cluster's default locality (what `mesh.yaml` declares for it).
pub const CLUSTER_LOCALITY: &str = "us-east/us-east-1a/rack-1";

pub fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).expect("cluster id")
}

pub fn loc(s: &str) -> Locality {
    s.parse().expect("locality")
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

pub fn spec() -> ClusterSpec {
    ClusterSpec::new(
        cid(CLUSTER),
        NetworkId::new("net-east").expect("network"),
        loc(CLUSTER_LOCALITY),
        Vec::new(),
        ObjectSource::default(),
    )
}

pub fn mesh() -> MeshConfig {
    MeshConfig {
        mesh: MeshSpec {
            name: "test".into(),
            trust_domain: "td.local".into(),
            discovery: DiscoveryMode::Exported,
            cluster_local: Vec::new(),
            networks: None,
            source: ObjectSource::default(),
        },
        clusters: vec![spec()],
        traffic_policies: Vec::new(),
    }
}

pub fn parse<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid Kubernetes object")
}

/// Builds the records the watches would hold for these manifests, panicking on any object the
/// translation rejects (tests of rejection call `translate::*` directly).
#[derive(Default)]
pub struct Cluster {
    pub records: Records,
}

pub fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl Cluster {
    pub fn service(mut self, manifest: Value) -> Self {
        let svc: Service = parse(manifest);
        if let Some(s) = translate::service(&cid(CLUSTER), &svc).expect("service translates") {
            self.records.services.insert(key(&svc.metadata), s);
        }
        self
    }

    pub fn slice(mut self, manifest: Value) -> Self {
        let slice: EndpointSlice = parse(manifest);
        if let Some(r) = translate::endpoint_slice(&cid(CLUSTER), &slice).expect("slice translates")
        {
            self.records.slices.insert(key(&slice.metadata), r);
        }
        self
    }

    pub fn pod(mut self, manifest: Value) -> Self {
        let pod: Pod = parse(manifest);
        let record = translate::pod(&cid(CLUSTER), &pod).expect("pod translates");
        self.records.pods.insert(key(&pod.metadata), record);
        self
    }

    pub fn node(mut self, manifest: Value) -> Self {
        let node: Node = parse(manifest);
        self.records
            .nodes
            .insert(key(&node.metadata), translate::node(&node));
        self
    }

    pub fn objects(&self) -> causeway_model::ClusterObjects {
        translate::assemble(&spec(), &self.records)
    }

    pub fn index(&self) -> ClusterIndex {
        ClusterIndex::build(&mesh(), &spec(), &self.objects())
    }
}

pub fn service_of<'a>(index: &'a ClusterIndex, ns: &str, name: &str) -> &'a ClusterService {
    index
        .services
        .get(&ServiceKey::new(ns, name))
        .unwrap_or_else(|| {
            panic!(
                "service {ns}/{name} in the index: {:?}",
                index.services.keys()
            )
        })
}

/// The endpoints of service port `port`/TCP, by address.
pub fn endpoints(
    index: &ClusterIndex,
    ns: &str,
    name: &str,
    port: u16,
) -> BTreeMap<IpAddr, ResolvedEndpoint> {
    let svc = service_of(index, ns, name);
    let p = svc
        .port(port, "TCP")
        .unwrap_or_else(|| panic!("{ns}/{name} has port {port}/TCP: {:?}", svc.ports));
    p.endpoints.iter().map(|e| (e.address, e.clone())).collect()
}

pub fn pod_manifest(name: &str, ip: &str, node: &str, sa: Option<&str>, ready: bool) -> Value {
    let mut spec = json!({"nodeName": node, "containers": [{"name": "app", "image": "app:1",
        "ports": [{"name": "http", "containerPort": 8080}]}]});
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "cart", "version": "v2"}},
        "spec": spec,
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

pub fn node_manifest(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
}

pub fn cart_service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "cart", "namespace": "shop"},
        "spec": {"selector": {"app": "cart"}, "clusterIP": "10.96.0.10",
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
    })
}

/// One endpoint of a controller-made slice (`targetRef` to its Pod, `nodeName`, conditions).
pub fn slice_endpoint(ip: &str, pod: &str, node: &str, conditions: Value) -> Value {
    json!({"addresses": [ip], "conditions": conditions, "nodeName": node,
        "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod}})
}

pub fn cart_slice(name: &str, endpoints: Value) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "labels": {
            "kubernetes.io/service-name": "cart",
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

pub fn cart_cluster() -> Cluster {
    let ready = json!({"ready": true, "serving": true, "terminating": false});
    Cluster::default()
        .service(cart_service())
        .node(node_manifest(
            "n-west",
            json!({
            "topology.kubernetes.io/region": "us-west",
            "topology.kubernetes.io/zone": "us-west-2b",
            "topology.istio.io/subzone": "rack-7",
            "kubernetes.io/hostname": "n-west"}),
        ))
        .node(node_manifest(
            "n-bare",
            json!({"kubernetes.io/hostname": "n-bare"}),
        ))
        .node(node_manifest(
            "n-1b",
            json!({
            "topology.kubernetes.io/region": "us-east",
            "topology.kubernetes.io/zone": "us-east-1b"}),
        ))
        .pod(pod_manifest(
            "cart-a",
            "10.1.0.1",
            "n-west",
            Some("cart-sa"),
            true,
        ))
        .pod(pod_manifest("cart-b", "10.1.0.2", "n-bare", None, true))
        .pod(pod_manifest(
            "cart-c",
            "10.1.0.3",
            "n-1b",
            Some("cart-sa"),
            true,
        ))
        .slice(cart_slice(
            "cart-x7k2p",
            json!([
                slice_endpoint("10.1.0.1", "cart-a", "n-west", ready.clone()),
                slice_endpoint("10.1.0.2", "cart-b", "n-bare", ready.clone()),
                slice_endpoint("10.1.0.3", "cart-c", "n-1b", ready),
            ]),
        ))
}

pub fn assert_names(e: &TranslateError, kind: &str, object: &str, field: &str) {
    assert_eq!(e.cluster.as_str(), CLUSTER);
    assert_eq!(e.kind, kind);
    assert_eq!(e.object, object);
    assert_eq!(e.field, field);
    let text = e.to_string();
    for part in [CLUSTER, object, field] {
        assert!(text.contains(part), "{text:?} names {part:?}");
    }
}
