//! TrafficPolicy custom resources of a member cluster, against a fake API server: they reach
//! `ClusterObjects.traffic_policies` validated like the mesh directory's, a bad one is reported
//! by object and field without taking anything else away, and a cluster without the CRD
//! contributes none.

mod common {
    pub mod harness;
}

use std::time::Duration;

use causeway_kube_fake::ServerOptions;
use causeway_model::{ClusterObjects, ServiceKey, TrafficMode};
use common::harness::*;
use serde_json::{json, Value};

fn traffic_policy(name: &str, mode: &str) -> Value {
    json!({"apiVersion": "causeway.io/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"service": "svc-0", "callers": {"clusters": ["east"]}, "mode": mode,
            "clusters": [{"name": "west"}, {"name": "east"}], "timeout": "3s"}})
}

fn names(objects: &ClusterObjects) -> Vec<String> {
    objects
        .traffic_policies
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_policies_come_from_the_crd_and_bad_ones_are_reported() {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 2);
    server
        .create_json(traffic_policy("svc-0-failover", "FailOver"))
        .expect("policy");
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let objects = h.synced("east").await;
    assert_eq!(names(&objects), ["shop/svc-0-failover"]);
    let p = &objects.traffic_policies[0];
    assert_eq!(p.service, ServiceKey::new("shop", "svc-0"));
    assert_eq!(p.mode, TrafficMode::FailOver);
    let order: Vec<&str> = p.clusters.iter().map(|c| c.cluster.as_str()).collect();
    assert_eq!(order, ["west", "east"]);
    assert_eq!(p.callers, Some(vec![cid("east")]));
    assert_eq!(p.timeout, Some(Duration::from_secs(3)));
    assert_eq!(
        p.source.file.to_string_lossy(),
        "kubernetes:east/causeway.io/v1alpha1/TrafficPolicy/shop/svc-0-failover"
    );
    let apis = h
        .seen
        .last()
        .and_then(|u| u.status.apis.clone())
        .expect("apis");
    assert!(apis.traffic_policies, "{apis:?}");

    // A new bad CR: reported by cluster, object and field; left out; nothing else goes.
    server
        .create_json(traffic_policy("bad", "Failover"))
        .expect("the fake does not validate");
    let u = h
        .wait_for("the bad policy reported", |u| {
            u.status.errors.iter().any(|e| e.contains("shop/bad"))
        })
        .await;
    let error = u
        .status
        .errors
        .iter()
        .find(|e| e.contains("shop/bad"))
        .expect("found above");
    assert!(
        error.contains("east") && error.contains("TrafficPolicy") && error.contains("spec.mode"),
        "names cluster, kind, object and field: {error}"
    );
    let objects = u.objects.expect("still published");
    assert_eq!(names(&objects), ["shop/svc-0-failover"]);
    assert_eq!(objects.services.len(), 2, "other objects stay");

    // The good CR turning bad keeps its last good state, and reports why.
    server
        .apply_json(traffic_policy("svc-0-failover", "Sometimes"))
        .expect("update");
    let u = h
        .wait_for("the broken policy reported", |u| {
            u.status
                .errors
                .iter()
                .any(|e| e.contains("shop/svc-0-failover") && e.contains("spec.mode"))
        })
        .await;
    let objects = u.objects.expect("still published");
    assert_eq!(names(&objects), ["shop/svc-0-failover"]);
    assert_eq!(objects.traffic_policies[0].mode, TrafficMode::FailOver);

    // Fixing the new one brings it in, in (namespace, name) order, and clears its error.
    let mut fixed = traffic_policy("bad", "ActiveActive");
    fixed["spec"]["clusters"] = json!([{"name": "west", "weight": 1}]);
    server.apply_json(fixed).expect("update");
    let u = h
        .wait_for("the fixed policy published", |u| {
            u.objects
                .as_ref()
                .is_some_and(|o| o.traffic_policies.len() == 2)
        })
        .await;
    let objects = u.objects.expect("published");
    assert_eq!(names(&objects), ["shop/bad", "shop/svc-0-failover"]);
    assert_eq!(objects.traffic_policies[0].mode, TrafficMode::ActiveActive);
    assert!(
        !u.status.errors.iter().any(|e| e.contains("shop/bad")),
        "{:?}",
        u.status.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_the_traffic_policy_crd_contributes_none() {
    let server = fake(ServerOptions {
        traffic_policy_crd: false,
        ..ServerOptions::default()
    })
    .await;
    load_shop(&server, 1);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let objects = h.synced("east").await;
    assert!(objects.traffic_policies.is_empty());
    assert_eq!(objects.services.len(), 1);
    let apis = h
        .seen
        .last()
        .and_then(|u| u.status.apis.clone())
        .expect("apis");
    assert!(
        apis.authorization_policies && !apis.traffic_policies,
        "{apis:?}"
    );
    assert_eq!(server.request_count("list", "trafficpolicies"), 0);
}
