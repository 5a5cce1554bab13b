//! Translation of single objects: what is rejected (naming cluster, object and field), what is
//! skipped, and the MCS and About API objects.

mod common {
    pub mod objects;
}

use causeway_kube::translate;
use causeway_model::{ServiceKey, TargetPort};
use common::objects::*;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use serde_json::{json, Value};

#[test]
fn bad_ports_and_addresses_are_rejected_naming_cluster_object_and_field() {
    let svc = |ports: Value| -> Service {
        parse(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "bad", "namespace": "shop"}, "spec": {"ports": ports}}))
    };
    let e = translate::service(
        &cid(CLUSTER),
        &svc(json!([{"name": "a", "port": 80}, {"name": "b", "port": 70000}])),
    )
    .expect_err("port 70000 does not fit in 16 bits");
    assert_names(&e, "Service", "shop/bad", "spec.ports[1].port");
    assert!(e.to_string().contains("70000"), "names the value: {e}");
    let e = translate::service(&cid(CLUSTER), &svc(json!([{"port": 0}]))).expect_err("port 0");
    assert_names(&e, "Service", "shop/bad", "spec.ports[0].port");
    let e = translate::service(&cid(CLUSTER), &svc(json!([{"port": 80, "targetPort": -1}])))
        .expect_err("negative targetPort");
    assert_names(&e, "Service", "shop/bad", "spec.ports[0].targetPort");

    let slice = |ports: Value, address: &str| -> EndpointSlice {
        parse(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "bad-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "bad"}},
            "addressType": "IPv4", "ports": ports, "endpoints": [{"addresses": [address]}]}),
        )
    };
    let e = translate::endpoint_slice(&cid(CLUSTER), &slice(json!([{"port": 65536}]), "10.0.0.1"))
        .expect_err("slice port 65536");
    assert_names(&e, "EndpointSlice", "shop/bad-1", "ports[0].port");
    let e = translate::endpoint_slice(&cid(CLUSTER), &slice(json!([{"port": 80}]), "10.0.0.300"))
        .expect_err("not an IPv4 address");
    assert_names(
        &e,
        "EndpointSlice",
        "shop/bad-1",
        "endpoints[0].addresses[0]",
    );

    let pod: Pod = parse(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "shop"}, "status": {"podIP": "nope"}}));
    let e = translate::pod(&cid(CLUSTER), &pod).expect_err("bad pod IP");
    assert_names(&e, "Pod", "shop/p", "status.podIP");
}

#[test]
fn external_name_services_are_skipped_and_other_kinds_kept() {
    let external: Service = parse(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ext", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com"}}));
    assert_eq!(
        translate::service(&cid(CLUSTER), &external).expect("translates"),
        None,
        "an ExternalName service is a DNS CNAME: it has no endpoints to mesh"
    );
    let cluster = Cluster::default()
        .service(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"}}))
        .service(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "lb", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.30", "ports": [{"port": 443, "targetPort": 8443}]}}))
        .service(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "headless", "namespace": "shop", "annotations": {"causeway.io/cluster-local": "true"}},
            "spec": {"clusterIP": "None", "ports": [{"port": 9000}]}}));
    let objects = cluster.objects();
    assert_eq!(
        objects
            .services
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["shop/headless".to_owned(), "shop/lb".to_owned()],
        "every kind but ExternalName"
    );
    let lb = &objects.services[&ServiceKey::new("shop", "lb")];
    assert_eq!(lb.ports[0].port, 443);
    assert_eq!(lb.ports[0].target_port, TargetPort::Number(8443));
    assert_eq!(lb.ports[0].protocol, "TCP", "protocol defaults to TCP");
    let headless = &objects.services[&ServiceKey::new("shop", "headless")];
    assert!(headless.headless, "clusterIP: None");
    assert_eq!(
        headless.ports[0].target_port,
        TargetPort::Number(9000),
        "targetPort defaults to port"
    );
    assert!(
        service_of(&cluster.index(), "shop", "headless").cluster_local,
        "annotation honoured"
    );
}

#[test]
fn service_exports_and_the_cluster_property() {
    let export: DynamicObject = parse(json!({
        "apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
        "metadata": {"name": "cart", "namespace": "shop", "creationTimestamp": "2026-01-02T03:04:05Z",
            "annotations": {"causeway.io/export-to": "west, north"}},
        "status": {"conditions": [{"type": "Valid", "status": "True", "reason": "Exported", "message": "", "lastTransitionTime": "2026-01-02T03:04:05Z"}]},
    }));
    let record = translate::service_export(&cid(CLUSTER), &export).expect("export translates");
    assert_eq!(record.export.key, ServiceKey::new("shop", "cart"));
    assert_eq!(
        record.export.created,
        Some(1_767_323_045),
        "creationTimestamp as Unix seconds"
    );
    assert_eq!(
        record.export.export_to,
        Some([cid("north"), cid("west")].into_iter().collect()),
    );
    assert_eq!(
        record.conditions.len(),
        1,
        "status.conditions kept for write-back"
    );
    let bad: DynamicObject = parse(json!({
        "apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
        "metadata": {"name": "cart", "namespace": "shop", "annotations": {"causeway.io/export-to": "West"}},
    }));
    let e = translate::service_export(&cid(CLUSTER), &bad).expect_err("not a cluster id");
    assert_names(
        &e,
        "ServiceExport",
        "shop/cart",
        "metadata.annotations[causeway.io/export-to]",
    );

    let property = |name: &str, value: &str| -> DynamicObject {
        parse(
            json!({"apiVersion": "about.k8s.io/v1alpha1", "kind": "ClusterProperty",
            "metadata": {"name": name}, "spec": {"value": value}}),
        )
    };
    assert_eq!(
        translate::cluster_property(&property("cluster.clusterset.k8s.io", "east")).as_deref(),
        Some("east")
    );
    assert_eq!(
        translate::cluster_property(&property("clusterset.k8s.io", "set-1")),
        None,
        "the ClusterSet's id, not the cluster's"
    );
}
