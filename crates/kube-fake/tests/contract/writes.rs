//! Writes: create, replace with optimistic concurrency, merge and JSON patch, server-side
//! apply, the status subresource, delete, CRDs, and the direct store's test controls.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::json;

use crate::common::*;

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API Status error, got {other:?}"),
    }
}

fn export_resource(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("multicluster.x-k8s.io", version, "ServiceExport"),
        "serviceexports",
    )
}

fn export(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
        "metadata": {"name": name, "namespace": "default"},
        "status": {"conditions": [{"type": "Valid", "status": "True"}]},
    }))
    .unwrap()
}

#[tokio::test]
async fn create_fills_metadata_and_a_duplicate_is_409_already_exists() {
    let s = server().await;
    let pods: Api<Pod> = Api::default_namespaced(client(&s).await);
    let before = s.resource_version();
    let created = pods
        .create(&PostParams::default(), &pod("default", "a", &[]))
        .await
        .unwrap();
    let m = &created.metadata;
    assert!(m.uid.is_some() && m.creation_timestamp.is_some());
    assert_eq!(
        m.resource_version.as_deref(),
        Some((before + 1).to_string().as_str())
    );
    assert_eq!(m.generation, Some(1));
    assert_eq!(
        created.status.and_then(|st| st.phase).as_deref(),
        Some("Pending")
    );
    let err = pods
        .create(&PostParams::default(), &pod("default", "a", &[]))
        .await
        .unwrap_err();
    let (code, reason, message) = api_error(err);
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (409, "AlreadyExists", "pods \"a\" already exists")
    );
    let mut generated = pod("default", "", &[]);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let g = pods
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    assert!(g.metadata.name.unwrap().starts_with("gen-"));
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_is_409_conflict() {
    let s = server().await;
    let pods: Api<Pod> = Api::default_namespaced(client(&s).await);
    let v1 = pods
        .create(&PostParams::default(), &pod("default", "a", &[]))
        .await
        .unwrap();
    let mut v2 = v1.clone();
    v2.metadata.labels = Some([("v".to_string(), "2".to_string())].into());
    let stored = pods
        .replace("a", &PostParams::default(), &v2)
        .await
        .unwrap();
    assert_ne!(
        stored.metadata.resource_version,
        v1.metadata.resource_version
    );
    let err = pods
        .replace("a", &PostParams::default(), &v1)
        .await
        .unwrap_err();
    let (code, reason, message) = api_error(err);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(
        message.contains("the object has been modified"),
        "{message}"
    );
    let mut absent = pod("default", "absent", &[]);
    absent.metadata.resource_version = None;
    assert_eq!(
        api_error(
            pods.replace("absent", &PostParams::default(), &absent)
                .await
                .unwrap_err()
        )
        .0,
        404
    );
}

#[tokio::test]
async fn merge_and_json_patches() {
    let s = server().await;
    s.create(&pod("default", "a", &[("keep", "1"), ("drop", "1")]))
        .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client(&s).await);
    let patch = json!({"metadata": {"labels": {"drop": null, "new": "x"}}});
    let p = pods
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let labels = p.metadata.labels.unwrap();
    assert_eq!(labels.keys().collect::<Vec<_>>(), ["keep", "new"]);
    let ops = json!([{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}]);
    let c = client(&s).await;
    let (code, p) = raw(
        &c,
        "PATCH",
        "/api/v1/namespaces/default/pods/a",
        "application/json-patch+json",
        ops,
    )
    .await;
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["metadata"]["annotations"]["a"], "b");
    // A patch carrying a stale resourceVersion is a conflict, like a replace.
    let stale = json!({"metadata": {"resourceVersion": "1", "labels": {"z": "1"}}});
    assert_eq!(
        api_error(
            pods.patch("a", &PatchParams::default(), &Patch::Merge(&stale))
                .await
                .unwrap_err()
        )
        .0,
        409
    );
    assert_eq!(
        api_error(
            pods.patch("nope", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap_err()
        )
        .0,
        404
    );
}

#[tokio::test]
async fn server_side_apply_creates_then_updates_and_records_the_manager() {
    let s = server().await;
    let c = client(&s).await;
    let svcs: Api<Service> = Api::default_namespaced(c.clone());
    let applied = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"a": "1"}},
                         "spec": {"ports": [{"port": 80}]}});
    let pp = PatchParams::apply("causeway").force();
    let created = svcs
        .patch("web", &pp, &Patch::Apply(&applied))
        .await
        .unwrap();
    let ip = created.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    assert!(ip.starts_with("10.96."), "a cluster IP is allocated: {ip}");
    let mf = created.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(
        (mf[0].manager.as_deref(), mf[0].operation.as_deref()),
        (Some("causeway"), Some("Apply"))
    );
    let again = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"a": "2"}},
                       "spec": {"ports": [{"port": 80}]}});
    let updated = svcs.patch("web", &pp, &Patch::Apply(&again)).await.unwrap();
    assert_eq!(updated.metadata.labels.unwrap()["a"], "2");
    assert_eq!(updated.metadata.uid, created.metadata.uid);
    assert_eq!(
        updated.spec.unwrap().cluster_ip.unwrap(),
        ip,
        "allocated IP kept"
    );
    assert_eq!(updated.metadata.managed_fields.unwrap().len(), 1);
    // Applying the same object again changes nothing: no new resourceVersion.
    let same = svcs.patch("web", &pp, &Patch::Apply(&again)).await.unwrap();
    assert_eq!(
        same.metadata.resource_version,
        svcs.get("web").await.unwrap().metadata.resource_version
    );
    let rv = s.resource_version();
    svcs.patch("web", &pp, &Patch::Apply(&again)).await.unwrap();
    assert_eq!(s.resource_version(), rv, "a no-op apply does not write");
    let (code, st) = raw(
        &c,
        "PATCH",
        "/api/v1/namespaces/default/services/web",
        "application/apply-patch+yaml",
        again,
    )
    .await;
    assert_eq!(
        (code, st["kind"].as_str()),
        (400, Some("Status")),
        "fieldManager is required: {st}"
    );
}

#[tokio::test]
async fn status_is_written_only_through_the_status_subresource() {
    let s = server().await;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client(&s).await, "default", &export_resource("v1beta1"));
    let created = api
        .create(&PostParams::default(), &export("web"))
        .await
        .unwrap();
    assert!(
        created.data.get("status").is_none(),
        "status is dropped on create: {:?}",
        created.data
    );
    let mut with_status = created.clone();
    with_status.data["status"] = json!({"conditions": [{"type": "Valid", "status": "True"}]});
    with_status.metadata.labels = Some([("ignored".to_string(), "x".to_string())].into());
    let st = api
        .replace_status("web", &PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(st.data["status"]["conditions"][0]["type"], "Valid");
    assert!(
        st.metadata.labels.is_none(),
        "a status write changes only status"
    );
    let mut main = st.clone();
    main.data["status"] = json!({"conditions": []});
    main.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    let kept = api
        .replace("web", &PostParams::default(), &main)
        .await
        .unwrap();
    assert_eq!(
        kept.data["status"]["conditions"][0]["type"], "Valid",
        "main writes keep status"
    );
    assert_eq!(kept.metadata.labels.unwrap()["app"], "web");
    let patched = api
        .patch_status("web", &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": [{"type": "Conflict", "status": "False"}]}, "metadata": {"labels": null}})))
        .await
        .unwrap();
    assert_eq!(patched.data["status"]["conditions"][0]["type"], "Conflict");
    assert_eq!(patched.metadata.labels.unwrap()["app"], "web");
    // Pods have no such subresource name as "scale"; unknown subresources are 404.
    let c = client(&s).await;
    assert_eq!(
        get(&c, "/api/v1/namespaces/default/pods/x/scale").await.0,
        404
    );
}

#[tokio::test]
async fn delete_returns_the_object_and_honours_preconditions() {
    let s = server().await;
    let pods: Api<Pod> = Api::default_namespaced(client(&s).await);
    let created = pods
        .create(&PostParams::default(), &pod("default", "a", &[]))
        .await
        .unwrap();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    assert_eq!(api_error(pods.delete("a", &dp).await.unwrap_err()).0, 409);
    let deleted = pods.delete("a", &DeleteParams::default()).await.unwrap();
    let obj = deleted.left().expect("the deleted object is returned");
    assert_eq!(obj.metadata.uid, created.metadata.uid);
    assert_eq!(api_error(pods.get("a").await.unwrap_err()).0, 404);
    assert_eq!(
        api_error(
            pods.delete("a", &DeleteParams::default())
                .await
                .unwrap_err()
        )
        .0,
        404
    );
    assert!(s.get_json("v1", "Pod", Some("default"), "a").is_none());
}

#[tokio::test]
async fn both_mcs_versions_share_storage() {
    use causeway_kube_fake::{McsVersion, ServerOptions};
    let s = server_with(ServerOptions {
        mcs_versions: vec![McsVersion::V1alpha1, McsVersion::V1beta1],
        ..ServerOptions::default()
    })
    .await;
    let c = client(&s).await;
    let beta: Api<DynamicObject> =
        Api::namespaced_with(c.clone(), "default", &export_resource("v1beta1"));
    let alpha: Api<DynamicObject> =
        Api::namespaced_with(c, "default", &export_resource("v1alpha1"));
    beta.create(&PostParams::default(), &export("web"))
        .await
        .unwrap();
    let seen = alpha.get("web").await.unwrap();
    assert_eq!(
        seen.types.unwrap().api_version,
        "multicluster.x-k8s.io/v1alpha1"
    );
}

#[tokio::test]
async fn a_crd_created_through_the_api_serves_its_resource() {
    let s = server().await;
    let c = client(&s).await;
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                               "subresources": {"status": {}}}]}}))
    .unwrap();
    let created = crds.create(&PostParams::default(), &crd).await.unwrap();
    let conditions = created.status.unwrap().conditions.unwrap();
    assert!(conditions
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True"));
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &ar);
    let w: DynamicObject =
        serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 3}}))
        .unwrap();
    widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(widgets.get("w1").await.unwrap().data["spec"]["size"], 3);
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_error(widgets.get("w1").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn direct_store_writes_keep_status_and_creation_timestamp() {
    let s = server().await;
    let mut p = pod("default", "a", &[]);
    p.metadata.creation_timestamp =
        Some(serde_json::from_value(json!("2020-01-02T03:04:05Z")).unwrap());
    p.status =
        Some(serde_json::from_value(json!({"phase": "Running", "podIP": "10.0.0.7"})).unwrap());
    let stored = s.create(&p).unwrap();
    assert_eq!(
        stored["metadata"]["creationTimestamp"],
        "2020-01-02T03:04:05Z"
    );
    assert_eq!(stored["status"]["podIP"], "10.0.0.7");
    assert!(s.create(&p).is_err(), "a direct duplicate create fails too");
    let moved = s
        .set_creation_timestamp("v1", "Pod", Some("default"), "a", "2021-01-01T00:00:00Z")
        .unwrap();
    assert_eq!(
        moved["metadata"]["creationTimestamp"],
        "2021-01-01T00:00:00Z"
    );
    let e = s
        .create_json(
            json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
        "metadata": {"name": "web", "namespace": "default"}, "status": {"x": 1}}),
        )
        .unwrap();
    assert_eq!(e["status"]["x"], 1);
    assert_eq!(
        s.list_json("multicluster.x-k8s.io/v1beta1", "ServiceExport")
            .len(),
        1
    );
    let unserved = s.create_json(
        json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": {"name": "web", "namespace": "default"}}),
    );
    assert!(unserved.is_err(), "v1alpha1 is not served by default");
}

#[tokio::test]
async fn errors_are_status_objects() {
    let s = server().await;
    let c = client(&s).await;
    for path in [
        "/api/v1/namespaces/default/pods/missing",
        "/apis/nope.example.com/v1/things",
        "/api/v1/widgets",
    ] {
        let (code, st) = get(&c, path).await;
        assert_eq!(code, 404, "{path}");
        assert_eq!(
            (
                st["kind"].as_str(),
                st["apiVersion"].as_str(),
                st["status"].as_str()
            ),
            (Some("Status"), Some("v1"), Some("Failure"))
        );
        assert_eq!(st["code"], 404);
        assert_eq!(st["reason"], "NotFound");
    }
    let (code, st) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/pods",
        "application/json",
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {}}),
    )
    .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (422, Some("Invalid")),
        "{st}"
    );
    let (code, _) = raw(
        &c,
        "PATCH",
        "/api/v1/namespaces/default/pods/x",
        "text/plain",
        json!({}),
    )
    .await;
    assert_eq!(code, 415);
}
