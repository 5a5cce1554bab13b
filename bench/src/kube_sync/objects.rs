//! What each fake cluster holds: a Namespace, Nodes with topology labels, and per service a
//! Service (one port), one EndpointSlice whose endpoints are Pods (service account, node,
//! pod IP), and a ServiceExport; plus the mesh.yaml that names the clusters.

use std::collections::BTreeMap;

use causeway_kube_fake::FakeApiServer;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Node, ObjectReference, Pod, PodCondition, PodSpec,
    PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

/// Namespace of every benchmark service.
pub const NS: &str = "bench";
/// Nodes per cluster (endpoints are spread over them).
const NODES: usize = 3;

/// How cluster `c` and its objects are named and placed.
pub fn cluster_id(c: usize) -> String {
    format!("k8s-{c:02}")
}

pub fn service_name(s: usize) -> String {
    format!("svc-{s:04}")
}

pub fn pod_name(s: usize, e: usize) -> String {
    format!("svc-{s:04}-{e}")
}

fn node_name(n: usize) -> String {
    format!("node-{n}")
}

fn region(c: usize) -> String {
    format!("region-{}", c % 4)
}

fn zone(c: usize, n: usize) -> String {
    format!("zone-{c:02}-{n}")
}

/// Pod IP of endpoint `e` of service `s` in cluster `c`: unique on the cluster's network;
/// clusters on different networks reuse the same addresses.
pub fn pod_ip(c: usize, s: usize, e: usize, per_service: usize) -> String {
    let i = s * per_service + e;
    format!("127.{}.{}.{}", 128 + c / 4, i / 254, i % 254 + 1)
}

fn meta(name: String, namespace: Option<&str>, labels: &[(&str, String)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: namespace.map(str::to_owned),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

fn node(c: usize, n: usize) -> Node {
    Node {
        metadata: meta(
            node_name(n),
            None,
            &[
                ("topology.kubernetes.io/region", region(c)),
                ("topology.kubernetes.io/zone", zone(c, n)),
            ],
        ),
        ..Node::default()
    }
}

fn service(s: usize) -> Service {
    Service {
        metadata: meta(service_name(s), Some(NS), &[]),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([("app".to_owned(), service_name(s))])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn pod(c: usize, s: usize, e: usize, per_service: usize) -> Pod {
    Pod {
        metadata: meta(pod_name(s, e), Some(NS), &[("app", service_name(s))]),
        spec: Some(PodSpec {
            service_account_name: Some(service_name(s)),
            node_name: Some(node_name(e % NODES)),
            containers: vec![Container {
                name: "app".into(),
                image: Some("causeway-echo".into()),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(pod_ip(c, s, e, per_service)),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

/// The one EndpointSlice of service `s` in cluster `c`, with its first `count` endpoints.
pub fn endpoint_slice(c: usize, s: usize, count: usize, per_service: usize) -> EndpointSlice {
    let endpoints = (0..count)
        .map(|e| Endpoint {
            addresses: vec![pod_ip(c, s, e, per_service)],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some(node_name(e % NODES)),
            zone: Some(zone(c, e % NODES)),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod_name(s, e)),
                namespace: Some(NS.into()),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        })
        .collect();
    EndpointSlice {
        metadata: meta(
            format!("{}-x7k2q", service_name(s)),
            Some(NS),
            &[("kubernetes.io/service-name", service_name(s))],
        ),
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
        endpoints: Some(endpoints),
    }
}

fn service_export(c: usize, s: usize) -> Value {
    json!({
        "apiVersion": "multicluster.x-k8s.io/v1beta1",
        "kind": "ServiceExport",
        "metadata": {
            "name": service_name(s),
            "namespace": NS,
            "creationTimestamp": format!("2026-11-01T00:{:02}:{:02}Z", c / 60, c % 60),
        },
    })
}

/// Fills fake cluster `c` with `s_n` services of `e_n` endpoints through the bulk loader
/// (direct store access, one lock per kind). Returns the number of objects created.
pub fn populate(server: &FakeApiServer, c: usize, s_n: usize, e_n: usize) -> anyhow::Result<usize> {
    let mut n = server.load(&[Namespace {
        metadata: meta(NS.into(), None, &[]),
        ..Namespace::default()
    }])?;
    n += server.load(&(0..NODES).map(|i| node(c, i)).collect::<Vec<_>>())?;
    n += server.load(&(0..s_n).map(service).collect::<Vec<_>>())?;
    let pods: Vec<Pod> = (0..s_n)
        .flat_map(|s| (0..e_n).map(move |e| (s, e)))
        .map(|(s, e)| pod(c, s, e, e_n))
        .collect();
    n += server.load(&pods)?;
    n += server.load(
        &(0..s_n)
            .map(|s| endpoint_slice(c, s, e_n, e_n))
            .collect::<Vec<_>>(),
    )?;
    n += server.load_json((0..s_n).map(|s| service_export(c, s)).collect())?;
    Ok(n)
}

/// mesh.yaml for the given clusters: `(id, network index, extra spec lines)`.
pub fn mesh_yaml(clusters: &[(String, usize, String)]) -> String {
    let mut networks: Vec<String> = clusters
        .iter()
        .map(|(_, n, _)| format!("net-{n}"))
        .collect();
    networks.sort();
    networks.dedup();
    let mut out = format!(
        "apiVersion: causeway.io/v1alpha1\nkind: Mesh\nmetadata: {{name: kube-sync}}\nspec: {{trustDomain: bench.local, networks: [{}]}}\n",
        networks.join(", ")
    );
    for (c, (id, net, extra)) in clusters.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {{name: {id}}}\nspec:\n  network: net-{net}\n  locality: {}/{}\n  gateways: [{{address: 127.{}.255.1, port: 15443}}]\n{extra}",
            region(c),
            zone(c, 0),
            c + 1
        ));
    }
    out
}
