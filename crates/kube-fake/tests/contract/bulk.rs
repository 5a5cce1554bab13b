//! Bulk loading at benchmark scale.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use causeway_kube_fake::FakeApiServer;
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};

use crate::common::*;

fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: (!ns.is_empty()).then(|| ns.to_string()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..ObjectMeta::default()
    }
}

/// One benchmark cluster: 1,000 Services, 1,000 EndpointSlices of 5 endpoints, 5,000 Pods,
/// 3 Nodes.
fn load_cluster(s: &FakeApiServer) {
    let services: Vec<Service> = (0..1000)
        .map(|i| Service {
            metadata: meta("bench", &format!("svc-{i}"), &[("app", "bench")]),
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port: 80,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        })
        .collect();
    let slices: Vec<EndpointSlice> = (0..1000)
        .map(|i| EndpointSlice {
            metadata: meta(
                "bench",
                &format!("svc-{i}-abcde"),
                &[("kubernetes.io/service-name", &format!("svc-{i}"))],
            ),
            address_type: "IPv4".to_string(),
            endpoints: Some(
                (0..5)
                    .map(|e| Endpoint {
                        addresses: vec![format!("10.{}.{}.{e}", i / 250, i % 250)],
                        ..Endpoint::default()
                    })
                    .collect(),
            ),
            ..EndpointSlice::default()
        })
        .collect();
    let pods: Vec<Pod> = (0..5000)
        .map(|i| Pod {
            metadata: meta("bench", &format!("pod-{i}"), &[("app", "bench")]),
            spec: Some(PodSpec {
                node_name: Some(format!("node-{}", i % 3)),
                ..PodSpec::default()
            }),
            ..Pod::default()
        })
        .collect();
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node {
            metadata: meta("", &format!("node-{i}"), &[]),
            ..Node::default()
        })
        .collect();
    assert_eq!(s.load(&services).unwrap(), 1000);
    assert_eq!(s.load(&slices).unwrap(), 1000);
    assert_eq!(s.load(&pods).unwrap(), 5000);
    assert_eq!(s.load(&nodes).unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_benchmark_clusters_load_quickly() {
    let started = Instant::now();
    let mut servers = Vec::new();
    for _ in 0..20 {
        let s = server().await;
        load_cluster(&s);
        servers.push(s);
    }
    let loaded = started.elapsed();
    let c = client(&servers[19]).await;
    let pods: Api<Pod> = Api::namespaced(c, "bench");
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        5000
    );
    println!("20 clusters loaded in {loaded:?}");
    // Debug build on a 2-core machine; the release benchmark is far faster.
    assert!(loaded < Duration::from_secs(40), "loading took {loaded:?}");
}
