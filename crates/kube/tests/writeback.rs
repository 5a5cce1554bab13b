//! MCS write-back against fake API servers serving one MCS version each: ServiceImports
//! (owned, labelled, server-side applied), ServiceExport conditions, deletion of owned
//! imports only, only changes written, and read-only clusters.

mod common {
    pub mod harness;
}

use std::collections::BTreeMap;

use causeway_kube::{DesiredCondition, DesiredImport, KubeOptions, McsDesired};
use causeway_kube_fake::{FakeApiServer, McsVersion, ServerOptions};
use causeway_model::{ServiceKey, ServicePort, TargetPort};
use common::harness::*;
use serde_json::{json, Value};

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> DesiredCondition {
    DesiredCondition {
        kind: kind.into(),
        status,
        reason: reason.into(),
        message: message.into(),
    }
}

fn desired(valid_message: &str, with_cart: bool) -> McsDesired {
    let mut imports = vec![DesiredImport {
        key: ServiceKey::new("shop", "db"),
        headless: true,
        ports: vec![ServicePort {
            name: None,
            port: 5432,
            target_port: TargetPort::Number(5432),
            protocol: "TCP".into(),
            app_protocol: None,
        }],
        clusters: vec![cid("west")],
    }];
    if with_cart {
        imports.push(DesiredImport {
            key: ServiceKey::new("shop", "svc-0"),
            headless: false,
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: TargetPort::Number(8080),
                protocol: "TCP".into(),
                app_protocol: Some("http".into()),
            }],
            clusters: vec![cid("east"), cid("west")],
        });
    }
    McsDesired {
        imports,
        export_conditions: BTreeMap::from([(
            ServiceKey::new("shop", "svc-0"),
            vec![
                condition("Valid", true, "Exported", valid_message),
                condition("Conflict", false, "NoConflict", "no conflict"),
            ],
        )]),
        mesh_clusters: [cid("east"), cid("west")].into(),
    }
}

async fn mcs_fake(version: McsVersion) -> (FakeApiServer, String) {
    let server = fake(ServerOptions {
        mcs_versions: vec![version],
        ..ServerOptions::default()
    })
    .await;
    load_shop(&server, 2);
    let api_version = format!("multicluster.x-k8s.io/{}", version.as_str());
    server
        .create_json(json!({"apiVersion": api_version, "kind": "ServiceExport", "metadata": {"name": "svc-0", "namespace": "shop"}}))
        .expect("export");
    // Another MCS implementation's import: not Causeway's to touch.
    server
        .create_json(json!({"apiVersion": api_version, "kind": "ServiceImport", "metadata": {"name": "foreign", "namespace": "shop"},
            "spec": {"type": "ClusterSetIP", "ports": [{"port": 1, "protocol": "TCP"}]}}))
        .expect("foreign import");
    (server, api_version)
}

fn import(server: &FakeApiServer, api_version: &str, name: &str) -> Option<Value> {
    server.get_json(api_version, "ServiceImport", Some("shop"), name)
}

fn conditions(server: &FakeApiServer, api_version: &str) -> Vec<Value> {
    server
        .get_json(api_version, "ServiceExport", Some("shop"), "svc-0")
        .and_then(|e| {
            e.pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
        })
        .unwrap_or_default()
}

fn find<'a>(conditions: &'a [Value], kind: &str) -> &'a Value {
    conditions
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("condition {kind} in {conditions:?}"))
}

fn writes(server: &FakeApiServer, resource: &str) -> u64 {
    ["create", "update", "patch", "delete"]
        .iter()
        .map(|v| server.request_count(v, resource))
        .sum()
}

async fn write_back(version: McsVersion) {
    let (server, api) = mcs_fake(version).await;
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    h.registry
        .set_desired(&cid("east"), desired("exported", true));
    h.synced("east").await;
    let apis = h
        .seen
        .last()
        .and_then(|u| u.status.apis.clone())
        .expect("served APIs");
    assert_eq!(
        apis.mcs_version.as_deref(),
        Some(version.as_str()),
        "the version the cluster serves"
    );

    eventually("imports and export conditions written", || {
        let s = server.clone();
        let api = api.clone();
        async move {
            import(&s, &api, "svc-0").is_some_and(|i| i.pointer("/status/clusters").is_some())
                && import(&s, &api, "db").is_some_and(|i| i.pointer("/status/clusters").is_some())
                && conditions(&s, &api).len() == 2
        }
    })
    .await;
    let cart = import(&server, &api, "svc-0").expect("import");
    assert_eq!(cart["apiVersion"], api.as_str());
    assert_eq!(cart["spec"]["type"], "ClusterSetIP");
    assert_eq!(
        cart["spec"]["ports"],
        json!([{"name": "http", "port": 80, "protocol": "TCP", "appProtocol": "http"}])
    );
    assert_eq!(
        cart["status"]["clusters"],
        json!([{"cluster": "east"}, {"cluster": "west"}])
    );
    assert_eq!(
        cart["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "causeway"
    );
    let managers: Vec<&str> = cart["metadata"]["managedFields"]
        .as_array()
        .map(|m| m.iter().filter_map(|e| e["manager"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        managers.contains(&"causeway"),
        "server-side applied as field manager causeway: {managers:?}"
    );
    let db = import(&server, &api, "db").expect("import");
    assert_eq!(db["spec"]["type"], "Headless");
    assert_eq!(
        db["spec"]["ports"],
        json!([{"port": 5432, "protocol": "TCP"}])
    );
    let conds = conditions(&server, &api);
    let valid = find(&conds, "Valid");
    assert_eq!(
        (&valid["status"], &valid["reason"], &valid["message"]),
        (&json!("True"), &json!("Exported"), &json!("exported"))
    );
    let since = valid["lastTransitionTime"]
        .as_str()
        .expect("lastTransitionTime");
    assert!(
        since.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "RFC 3339: {since}"
    );
    assert_eq!(find(&conds, "Conflict")["status"], "False");

    // The removed import is deleted; the other one and the foreign one are left alone.
    h.registry
        .set_desired(&cid("east"), desired("exported", false));
    eventually("the removed import deleted", || {
        let s = server.clone();
        let api = api.clone();
        async move { import(&s, &api, "svc-0").is_none() }
    })
    .await;
    assert!(import(&server, &api, "db").is_some(), "still desired");
    let foreign = import(&server, &api, "foreign").expect("a foreign import is never deleted");
    assert_eq!(
        foreign["spec"]["ports"],
        json!([{"port": 1, "protocol": "TCP"}]),
        "nor changed"
    );
    drop(h);

    // A new control plane finds everything as desired: it writes only what changed.
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    h.registry
        .set_desired(&cid("east"), desired("exported", false));
    h.synced("east").await;
    server.reset_requests();
    h.registry
        .set_desired(&cid("east"), desired("exported again", false));
    eventually("the new message written", || {
        let s = server.clone();
        let api = api.clone();
        async move {
            conditions(&s, &api)
                .iter()
                .any(|c| c["message"] == "exported again")
        }
    })
    .await;
    assert_eq!(
        writes(&server, "serviceimports") + writes(&server, "serviceimports/status"),
        0,
        "imports unchanged: {:?}",
        server.requests()
    );
    let conds = conditions(&server, &api);
    assert_eq!(
        find(&conds, "Valid")["lastTransitionTime"].as_str(),
        Some(since),
        "the status did not change, so neither does lastTransitionTime"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_to_a_v1beta1_cluster() {
    write_back(McsVersion::V1beta1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_to_a_v1alpha1_cluster() {
    write_back(McsVersion::V1alpha1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_clusters_are_never_written() {
    let (server, api) = mcs_fake(McsVersion::V1beta1).await;
    server.reset_requests();
    let mut h = Harness::new(KubeOptions {
        read_only: true,
        ..fast()
    });
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    h.registry
        .set_desired(&cid("east"), desired("exported", true));
    h.synced("east").await;
    // More rounds of the runtime, each of which would write back if it were allowed to.
    server
        .apply_json(slice(
            "shop",
            "svc-0",
            "svc-0-abcde",
            &["10.1.0.9".to_owned()],
        ))
        .expect("scale");
    h.wait_for("the scaled slice", |u| {
        u.objects
            .as_ref()
            .and_then(|o| slice_endpoints(o, "shop", "svc-0-abcde"))
            == Some(1)
    })
    .await;
    h.registry
        .set_desired(&cid("east"), desired("changed", true));
    server
        .apply_json(slice(
            "shop",
            "svc-0",
            "svc-0-abcde",
            &["10.1.0.8".to_owned()],
        ))
        .expect("change");
    h.wait_for("the changed slice", |u| {
        u.objects
            .as_ref()
            .and_then(|o| {
                o.endpoint_slices
                    .get(&("shop".to_owned(), "svc-0-abcde".to_owned()))
            })
            .is_some_and(|s| s.endpoints[0].addresses[0].to_string() == "10.1.0.8")
    })
    .await;
    for resource in [
        "serviceimports",
        "serviceimports/status",
        "serviceexports",
        "serviceexports/status",
    ] {
        assert_eq!(
            writes(&server, resource),
            0,
            "{resource} written by a read-only control plane: {:?}",
            server.requests()
        );
    }
    assert!(import(&server, &api, "svc-0").is_none());
    assert!(conditions(&server, &api).is_empty());
}

/// Writes Causeway did not make, done while no control plane runs: another controller's
/// `Ready` condition on the ServiceExport and its entry in the ServiceImport's clusters.
fn add_foreign_entries(server: &FakeApiServer, api: &str) {
    let mut conds = conditions(server, api);
    conds.push(
        json!({"type": "Ready", "status": "True", "reason": "OtherController",
        "message": "ready", "lastTransitionTime": "2026-01-01T00:00:00Z"}),
    );
    server
        .merge_patch_json(
            api,
            "ServiceExport",
            Some("shop"),
            "svc-0",
            json!({"status": {"conditions": conds}}),
        )
        .expect("foreign condition");
    server
        .merge_patch_json(
            api,
            "ServiceImport",
            Some("shop"),
            "svc-0",
            json!({"status": {"clusters": [{"cluster": "east"}, {"cluster": "west"}, {"cluster": "other-mcs"}]}}),
        )
        .expect("foreign clusters entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_controllers_entries_cause_no_writes() {
    let (server, api) = mcs_fake(McsVersion::V1beta1).await;
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    h.registry
        .set_desired(&cid("east"), desired("exported", true));
    h.synced("east").await;
    eventually("imports and export conditions written", || {
        let s = server.clone();
        let api = api.clone();
        async move {
            import(&s, &api, "svc-0").is_some_and(|i| i.pointer("/status/clusters").is_some())
                && conditions(&s, &api).len() == 2
        }
    })
    .await;
    drop(h);
    add_foreign_entries(&server, &api);
    server.reset_requests();

    // A new control plane lists them; then one more import is desired, so a pass that is
    // known to run after the first one (which saw the foreign entries) writes it.
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    h.registry
        .set_desired(&cid("east"), desired("exported", true));
    h.synced("east").await;
    let mut more = desired("exported", true);
    let mut extra = more.imports[0].clone();
    extra.key = ServiceKey::new("shop", "extra");
    more.imports.push(extra);
    h.registry.set_desired(&cid("east"), more);
    eventually("the extra import written", || {
        let s = server.clone();
        let api = api.clone();
        async move { import(&s, &api, "extra").is_some_and(|i| i.pointer("/status").is_some()) }
    })
    .await;
    assert_eq!(
        writes(&server, "serviceexports/status"),
        0,
        "a foreign condition is no difference: {:?}",
        server.requests()
    );
    assert_eq!(
        (
            writes(&server, "serviceimports"),
            writes(&server, "serviceimports/status")
        ),
        (1, 1),
        "only the extra import is written, not svc-0 for its foreign entry: {:?}",
        server.requests()
    );
    let conds = conditions(&server, &api);
    assert_eq!(find(&conds, "Ready")["reason"], "OtherController");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_imports_of_other_managers_are_never_deleted() {
    let (server, api) = mcs_fake(McsVersion::V1beta1).await;
    let labels = json!({"app.kubernetes.io/managed-by": "causeway"});
    let spec = json!({"type": "ClusterSetIP", "ports": [{"port": 2, "protocol": "TCP"}]});
    // Causeway's label, but another field manager, or none recorded (created with a copied
    // manifest): not Causeway's to delete.
    server
        .create_json(json!({"apiVersion": api, "kind": "ServiceImport",
            "metadata": {"name": "impostor", "namespace": "shop", "labels": labels,
                "managedFields": [{"manager": "other-mcs", "operation": "Apply", "apiVersion": api,
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
            "spec": spec}))
        .expect("impostor");
    server
        .create_json(json!({"apiVersion": api, "kind": "ServiceImport",
            "metadata": {"name": "copied", "namespace": "shop", "labels": labels},
            "spec": spec}))
        .expect("copied");
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    h.registry
        .set_desired(&cid("east"), desired("exported", true));
    h.synced("east").await;
    eventually("svc-0 written", || {
        let s = server.clone();
        let api = api.clone();
        async move { import(&s, &api, "svc-0").is_some() }
    })
    .await;
    // svc-0 sorts after both: once it is deleted, the pass has considered them.
    h.registry
        .set_desired(&cid("east"), desired("exported", false));
    eventually("Causeway's own import deleted", || {
        let s = server.clone();
        let api = api.clone();
        async move { import(&s, &api, "svc-0").is_none() }
    })
    .await;
    for name in ["impostor", "copied"] {
        assert!(
            import(&server, &api, name).is_some(),
            "{name} was deleted: {:?}",
            server.requests()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_api_server_costs_one_timeout_per_pass() {
    use causeway_kube::apis::ServedApis;
    use causeway_kube::writeback::{write_back, Current, Target};
    use causeway_kube::{ClientFactory, KubeconfigClientFactory, KubeconfigFile};

    let (server, _api) = mcs_fake(McsVersion::V1beta1).await;
    let h = Harness::new(fast());
    h.write_kubeconfig("east", &server, &server.admin_token());
    let file =
        KubeconfigFile::read(&cid("east"), &h.kubeconfig_path("east"), None).expect("kubeconfig");
    let client = KubeconfigClientFactory::default()
        .client(&cid("east"), &file)
        .await
        .expect("client");
    let served = ServedApis {
        mcs_version: Some("v1beta1".into()),
        ..ServedApis::default()
    };
    let target = Target {
        cluster: cid("east"),
        client,
        export_resource: served.service_export().expect("export resource"),
        import_resource: served.service_import().expect("import resource"),
        timeout: std::time::Duration::from_secs(1),
    };
    server.set_fault(causeway_kube_fake::Fault::Hang);
    server.reset_requests();
    let current = Current {
        imports: BTreeMap::new(),
        exports: BTreeMap::new(),
        written: BTreeMap::new(),
    };
    let outcome = write_back(&target, &desired("exported", true), &current).await;
    server.set_fault(causeway_kube_fake::Fault::None);
    assert_eq!(
        writes(&server, "serviceimports"),
        1,
        "the pass stops at the first timeout: {:?}",
        server.requests()
    );
    assert_eq!(outcome.errors.len(), 1, "{:?}", outcome.errors);
    assert!(
        outcome.errors[0].contains("cluster east: applying ServiceImport shop/db: no answer"),
        "{:?}",
        outcome.errors
    );
    assert_eq!(outcome.skipped, 1, "svc-0 left for the retry");
}
