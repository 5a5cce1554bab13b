//! The per-cluster runtime against a fake API server over HTTPS: the initial sync, changes,
//! objects the translation rejects, optional APIs, the About API's cluster id, and clusters
//! leaving the mesh.

mod common {
    pub mod harness;
}

use causeway_kube::{InitialList, KubeOptions, SyncState};
use causeway_kube_fake::{Permissions, ServerOptions};
use common::harness::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_published_before_every_watch_has_listed_then_everything_at_once() {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 50);
    let mut h = Harness::new(KubeOptions {
        initial_list: InitialList::Streaming,
        ..fast()
    });
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let objects = h.synced("east").await;
    for u in &h.seen[..h.seen.len() - 1] {
        assert!(
            u.objects.is_none(),
            "published before the initial sync: {}",
            describe(u)
        );
        assert_eq!(u.status.state, SyncState::Syncing, "{}", describe(u));
    }
    assert_eq!(
        objects.services.len(),
        50,
        "every service in the first update"
    );
    assert_eq!(
        objects.endpoint_slices.len(),
        50,
        "every slice in the first update"
    );
    assert_eq!(
        objects.workload_entries.len(),
        100,
        "every pod in the first update"
    );
    for (i, s) in (0..50).map(|i| {
        (
            i,
            &objects.endpoint_slices[&("shop".to_owned(), format!("svc-{i}-abcde"))],
        )
    }) {
        assert_eq!(s.endpoints.len(), 2, "{}", s.name);
        for ep in &s.endpoints {
            assert_eq!(
                ep.service_account.as_deref(),
                Some(format!("sa-{i}").as_str()),
                "joined with its pod"
            );
            let locality = ep.locality.as_ref().expect("joined with its node");
            assert_eq!(
                (locality.region.as_str(), locality.zone.as_str()),
                ("us-west", "us-west-2a")
            );
        }
    }
    assert!(
        server.request_count("watch", "pods") >= 1,
        "streaming lists are watches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_that_cannot_be_listed_holds_everything_back() {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 3);
    // Everything but pods: the pod watch never lists.
    let rules = [
        "services",
        "endpointslices",
        "nodes",
        "serviceexports",
        "serviceimports",
        "clusterproperties",
        "authorizationpolicies",
        "trafficpolicies",
    ]
    .iter()
    .map(|r| causeway_kube_fake::Rule::new(&["get", "list", "watch"], &["*"], &[r]))
    .collect();
    server.add_token("no-pods", Permissions::Rules(rules));
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, "no-pods");
    h.reconcile();
    let u = h
        .wait_for("an error about pods", |u| {
            u.status.errors.iter().any(|e| e.contains("Pod"))
        })
        .await;
    assert!(
        u.status.errors.iter().any(|e| e.contains("east")),
        "names the cluster: {:?}",
        u.status.errors
    );
    assert!(
        h.seen.iter().all(|u| u.objects.is_none()),
        "a partial state was published: {:?}",
        h.seen.iter().map(describe).collect::<Vec<_>>()
    );

    // Fixing the kubeconfig brings the whole state at once.
    h.write_kubeconfig("east", &server, &server.admin_token());
    let objects = h.synced("east").await;
    assert_eq!(
        (objects.services.len(), objects.workload_entries.len()),
        (3, 6)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_an_endpoint_slice_publishes_the_new_endpoints() {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 2);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let first = h.synced("east").await;
    assert_eq!(slice_endpoints(&first, "shop", "svc-0-abcde"), Some(2));

    let ips: Vec<String> = (1..=5).map(|j| format!("10.1.0.{j}")).collect();
    server
        .apply_json(slice("shop", "svc-0", "svc-0-abcde", &ips))
        .expect("scale up");
    let up = h
        .wait_for("5 endpoints", |u| {
            u.objects
                .as_ref()
                .and_then(|o| slice_endpoints(o, "shop", "svc-0-abcde"))
                == Some(5)
        })
        .await;
    let objects = up.objects.expect("objects");
    let addresses: Vec<String> = objects.endpoint_slices
        [&("shop".to_owned(), "svc-0-abcde".to_owned())]
        .endpoints
        .iter()
        .map(|e| e.addresses[0].to_string())
        .collect();
    assert_eq!(addresses, ips);
    assert_eq!(
        slice_endpoints(&objects, "shop", "svc-1-abcde"),
        Some(2),
        "the other slice is untouched"
    );
    assert!(up.objects_changed);

    server
        .apply_json(slice("shop", "svc-0", "svc-0-abcde", &ips[..1]))
        .expect("scale down");
    h.wait_for("1 endpoint", |u| {
        u.objects
            .as_ref()
            .and_then(|o| slice_endpoints(o, "shop", "svc-0-abcde"))
            == Some(1)
    })
    .await;
    assert!(
        h.seen.iter().all(|u| u.status.state != SyncState::Stale),
        "no update was stale"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_about_api_names_another_id_contributes_nothing() {
    let server = fake(ServerOptions {
        about_api: true,
        ..ServerOptions::default()
    })
    .await;
    load_shop(&server, 2);
    let property = |value: &str| {
        json!({"apiVersion": "about.k8s.io/v1alpha1", "kind": "ClusterProperty",
            "metadata": {"name": "cluster.clusterset.k8s.io"}, "spec": {"value": value}})
    };
    server.create_json(property("west-2")).expect("property");
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let u = h
        .wait_for("the id mismatch", |u| {
            u.status.errors.iter().any(|e| e.contains("west-2"))
        })
        .await;
    let error = u
        .status
        .errors
        .iter()
        .find(|e| e.contains("west-2"))
        .expect("error");
    assert!(
        error.contains("cluster east") && error.contains("\"east\""),
        "names both ids: {error}"
    );
    assert!(
        !error.contains("ClusterId("),
        "ids are quoted, not Debug-printed: {error}"
    );
    assert!(
        error.contains("cluster.clusterset.k8s.io"),
        "names the property: {error}"
    );
    assert!(
        h.seen.iter().all(|u| u.objects.is_none()),
        "objects of the wrong cluster published"
    );
    assert_eq!(
        u.status.state,
        causeway_kube::SyncState::Syncing,
        "not reported as synced"
    );
    // Nor does it review tokens: a token its API server accepts must not become an identity
    // of the cluster mesh.yaml calls east.
    let token = server.issue_service_account_token("shop", "default", "pod-0", &["causeway-ca"]);
    assert_eq!(
        h.registry
            .token_reviewer()
            .review(&cid("east"), &token)
            .await,
        Err(causeway_kube::ReviewError::NotConnected(cid("east")))
    );

    // Correcting the property lets the cluster in.
    server.apply_json(property("east")).expect("fix property");
    let objects = h.synced("east").await;
    assert_eq!(objects.services.len(), 2);
    let last = h.seen.last().expect("update");
    assert!(
        !last.status.errors.iter().any(|e| e.contains("west-2")),
        "error cleared: {:?}",
        last.status.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_object_is_reported_and_its_last_good_state_kept() {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 1);
    let bad = |port: i64| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", "namespace": "shop"},
            "spec": {"ports": [{"name": "http", "port": port}]}})
    };
    server
        .create_json(bad(70000))
        .expect("the fake takes any int32");
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let objects = h.synced("east").await;
    assert_eq!(
        objects.services.len(),
        1,
        "the bad service is left out, the rest is published"
    );
    let errors = &h.seen.last().expect("update").status.errors;
    assert!(
        errors.iter().any(|e| e.contains("east")
            && e.contains("shop/bad")
            && e.contains("spec.ports[0].port")),
        "names cluster, object and field: {errors:?}"
    );

    server.apply_json(bad(8443)).expect("fix");
    let u = h
        .wait_for("the fixed service", |u| {
            u.objects.as_ref().is_some_and(|o| o.services.len() == 2)
        })
        .await;
    assert!(
        u.status.errors.is_empty(),
        "error cleared: {:?}",
        u.status.errors
    );

    // Broken again: the last good translation stays, with the error.
    server.apply_json(bad(-1)).expect("break");
    let u = h
        .wait_for("the error again", |u| {
            u.status.errors.iter().any(|e| e.contains("shop/bad"))
        })
        .await;
    let kept =
        &u.objects.expect("objects").services[&causeway_model::ServiceKey::new("shop", "bad")];
    assert_eq!(kept.ports[0].port, 8443, "last good state kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_optional_apis_syncs() {
    let server = fake(ServerOptions {
        mcs_versions: Vec::new(),
        causeway_crds: false,
        traffic_policy_crd: false,
        about_api: false,
        ..ServerOptions::default()
    })
    .await;
    load_shop(&server, 2);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let objects = h.synced("east").await;
    assert_eq!(objects.services.len(), 2);
    let apis = h
        .seen
        .last()
        .and_then(|u| u.status.apis.clone())
        .expect("apis");
    assert_eq!(
        (
            apis.mcs_version,
            apis.about_version,
            apis.authorization_policies,
            apis.traffic_policies
        ),
        (None, None, false, false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multicluster_group_without_mcs_kinds_is_not_taken_for_mcs() {
    // The Cluster Inventory API (ClusterProfile) lives in multicluster.x-k8s.io/v1alpha1 too.
    let server = fake(ServerOptions {
        mcs_versions: Vec::new(),
        ..ServerOptions::default()
    })
    .await;
    server.serve(causeway_kube_fake::ResourceSpec::new(
        "multicluster.x-k8s.io",
        "v1alpha1",
        "ClusterProfile",
        "clusterprofiles",
    ));
    load_shop(&server, 2);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let objects = h.synced("east").await;
    assert_eq!(objects.services.len(), 2, "the cluster syncs");
    let apis = h
        .seen
        .last()
        .and_then(|u| u.status.apis.clone())
        .expect("apis");
    assert_eq!(
        apis.mcs_version, None,
        "no ServiceExport/ServiceImport served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcs_installed_after_linking_is_picked_up_without_a_restart() {
    let server = fake(ServerOptions {
        mcs_versions: Vec::new(),
        ..ServerOptions::default()
    })
    .await;
    load_shop(&server, 2);
    let mut h = Harness::new(KubeOptions {
        rediscover_interval: std::time::Duration::from_millis(200),
        ..fast()
    });
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let objects = h.synced("east").await;
    assert!(objects.exports.is_empty());
    // The operator installs the MCS CRDs and exports a service.
    for (kind, plural) in [
        ("ServiceExport", "serviceexports"),
        ("ServiceImport", "serviceimports"),
    ] {
        server.serve(
            causeway_kube_fake::ResourceSpec::new("multicluster.x-k8s.io", "v1beta1", kind, plural)
                .with_status(),
        );
    }
    server
        .create_json(
            json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
            "metadata": {"name": "svc-0", "namespace": "shop"}}),
        )
        .expect("export");
    let u = h
        .wait_for("the export, through the newly served API", |u| {
            u.objects.as_ref().is_some_and(|o| o.exports.len() == 1)
        })
        .await;
    assert_eq!(
        u.status.apis.and_then(|a| a.mcs_version).as_deref(),
        Some("v1beta1")
    );
    assert_eq!(u.status.state, SyncState::Synced);
    for earlier in h.seen_of("east", 0) {
        if let Some(o) = &earlier.objects {
            assert_eq!(
                o.services.len(),
                2,
                "no partial state while re-listing: {}",
                describe(earlier)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_removed_from_the_mesh_contributes_nothing() {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 1);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    h.synced("east").await;
    assert!(h.registry.contains(&cid("east")));

    h.mesh.clusters.clear();
    h.reconcile();
    let u = h.wait_for("the last update", |u| u.objects.is_none()).await;
    assert!(u.objects_changed);
    assert!(!h.registry.contains(&cid("east")));
    assert_eq!(
        h.registry.token_reviewer().review(&cid("east"), "t").await,
        Err(causeway_kube::ReviewError::UnknownCluster(cid("east"))),
        "its tokens are no longer reviewed"
    );
    eventually("its watches closed", || {
        let s = server.clone();
        async move { s.open_watches() == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policies_come_from_the_crd_and_bad_ones_are_reported() {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 1);
    let policy = |name: &str, principal: &str| {
        json!({"apiVersion": "causeway.io/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"action": "DENY", "selector": {"app": "svc-0"},
                "rules": [{"from": [{"principals": [principal]}]}]}})
    };
    server
        .create_json(policy("deny-sa-1", "spiffe://td.local/ns/shop/sa/sa-1"))
        .expect("policy");
    server
        .create_json(policy("bad", "sa-1"))
        .expect("the fake does not validate");
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let objects = h.synced("east").await;
    let p = objects
        .policies
        .get(&("shop".to_owned(), "deny-sa-1".to_owned()))
        .unwrap_or_else(|| panic!("policy published: {:?}", objects.policies.keys()));
    assert_eq!(p.action, causeway_model::PolicyAction::Deny);
    assert_eq!(
        p.selector
            .as_ref()
            .and_then(|s| s.get("app"))
            .map(String::as_str),
        Some("svc-0")
    );
    assert!(
        p.source.file.to_string_lossy().contains("east"),
        "the source names the cluster: {:?}",
        p.source
    );
    assert!(!objects
        .policies
        .contains_key(&("shop".to_owned(), "bad".to_owned())));
    let errors = &h.seen.last().expect("update").status.errors;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("east") && e.contains("shop/bad") && e.contains("principals[0]")),
        "names cluster, object and field: {errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_cluster_locality_reaches_endpoints_on_unlabelled_nodes() {
    let server = fake(ServerOptions::default()).await;
    server
        .load_json(vec![
            namespace("shop"),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bare"}}),
            service("shop", "svc"),
            pod("shop", "svc-0", "10.1.0.1", "sa"),
            slice("shop", "svc", "svc-1", &["10.1.0.1".to_owned()]),
        ])
        .expect("load");
    // The slice's endpoint runs on node-1, which this cluster does not have: move it.
    let mut s = slice("shop", "svc", "svc-1", &["10.1.0.1".to_owned()]);
    s["endpoints"][0]["nodeName"] = json!("bare");
    server.apply_json(s).expect("slice on the bare node");
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let locality = |o: &causeway_model::ClusterObjects| {
        o.endpoint_slices[&("shop".to_owned(), "svc-1".to_owned())].endpoints[0]
            .locality
            .as_ref()
            .map(ToString::to_string)
    };
    h.wait_for("the endpoint on the bare node", |u| {
        u.objects
            .as_ref()
            .is_some_and(|o| locality(o).as_deref() == Some("us-east/us-east-1a"))
    })
    .await;

    h.mesh.clusters[0].locality = "eu-north/eu-north-1b".parse().expect("locality");
    h.reconcile();
    h.wait_for("the new cluster locality", |u| {
        u.objects
            .as_ref()
            .is_some_and(|o| locality(o).as_deref() == Some("eu-north/eu-north-1b"))
    })
    .await;
}
