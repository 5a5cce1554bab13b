//! Lists: wire shape, pagination over a snapshot, resource-version semantics, selectors.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::common::*;

#[tokio::test]
async fn list_items_omit_type_fields_and_metadata_is_server_populated() {
    let s = server().await;
    for name in ["a", "b", "c"] {
        s.create(&pod("default", name, &[])).unwrap();
    }
    let c = client(&s).await;
    let (code, list) = get(&c, "/api/v1/namespaces/default/pods").await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(
        list["metadata"]["resourceVersion"],
        s.resource_version().to_string()
    );
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for item in items {
        assert!(
            item.get("apiVersion").is_none() && item.get("kind").is_none(),
            "{item}"
        );
        let m = &item["metadata"];
        assert!(m["uid"].as_str().is_some_and(|u| u.len() == 36));
        assert!(m["resourceVersion"].is_string());
        assert!(m["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
        assert_eq!(m["generation"], 1);
    }
    // kube-rs copes with the missing type fields.
    let pods: Api<Pod> = Api::default_namespaced(c);
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
}

#[tokio::test]
async fn pagination_returns_each_object_once_from_one_snapshot() {
    let s = server().await;
    for i in 0..5 {
        s.create(&pod("default", &format!("p{i}"), &[])).unwrap();
    }
    let c = client(&s).await;
    let (_, first) = get(&c, "/api/v1/namespaces/default/pods?limit=2").await;
    let snapshot_rv = first["metadata"]["resourceVersion"].clone();
    assert_eq!(first["metadata"]["remainingItemCount"], 3);
    // Changes after the first page must not leak into later pages.
    s.delete("v1", "Pod", Some("default"), "p4").unwrap();
    s.create(&pod("default", "p5", &[])).unwrap();
    let mut seen = Vec::new();
    let mut page = first;
    loop {
        assert_eq!(page["metadata"]["resourceVersion"], snapshot_rv);
        for item in page["items"].as_array().unwrap() {
            seen.push(item["metadata"]["name"].as_str().unwrap().to_string());
        }
        let Some(token) = page["metadata"]["continue"].as_str() else {
            break;
        };
        let (code, next) = get(
            &c,
            &format!("/api/v1/namespaces/default/pods?limit=2&continue={token}"),
        )
        .await;
        assert_eq!(code, 200);
        page = next;
    }
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4"]);
    // kube-rs's own paging (watcher page size) agrees.
    let pods: Api<Pod> = Api::default_namespaced(c);
    let all = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(all.items.len(), 2);
    assert!(all.metadata.continue_.is_some());
}

#[tokio::test]
async fn continue_token_from_before_compaction_is_410_expired() {
    let s = server().await;
    for i in 0..3 {
        s.create(&pod("default", &format!("p{i}"), &[])).unwrap();
    }
    let c = client(&s).await;
    let (_, first) = get(&c, "/api/v1/namespaces/default/pods?limit=1").await;
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    s.create(&pod("default", "later", &[])).unwrap();
    s.compact();
    let (code, status) = get(
        &c,
        &format!("/api/v1/namespaces/default/pods?limit=1&continue={token}"),
    )
    .await;
    assert_eq!(code, 410);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Expired");
    let (code, _) = get(
        &c,
        "/api/v1/namespaces/default/pods?limit=1&continue=not-a-token",
    )
    .await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn resource_version_match_semantics() {
    let s = server().await;
    s.create(&pod("default", "a", &[])).unwrap();
    let old_rv = s.resource_version();
    s.create(&pod("default", "b", &[])).unwrap();
    let c = client_without_retry(&s).await;
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, exact) = get(
        &c,
        &format!(
            "/api/v1/namespaces/default/pods?resourceVersion={old_rv}&resourceVersionMatch=Exact"
        ),
    )
    .await;
    assert_eq!(names(&exact), ["a"]);
    assert_eq!(exact["metadata"]["resourceVersion"], old_rv.to_string());
    let (_, newer) = get(&c, &format!("/api/v1/namespaces/default/pods?resourceVersion={old_rv}&resourceVersionMatch=NotOlderThan")).await;
    assert_eq!(names(&newer), ["a", "b"]);
    let (_, any) = get(&c, "/api/v1/namespaces/default/pods?resourceVersion=0").await;
    assert_eq!(names(&any), ["a", "b"]);
    let future = s.resource_version() + 100;
    let (code, _) = get(&c, &format!("/api/v1/namespaces/default/pods?resourceVersion={future}&resourceVersionMatch=NotOlderThan")).await;
    assert_eq!(code, 504);
    s.compact();
    let (code, st) = get(
        &c,
        &format!(
            "/api/v1/namespaces/default/pods?resourceVersion={old_rv}&resourceVersionMatch=Exact"
        ),
    )
    .await;
    assert_eq!((code, st["reason"].as_str()), (410, Some("Expired")));
    let (code, _) = get(
        &c,
        "/api/v1/namespaces/default/pods?resourceVersionMatch=Exact",
    )
    .await;
    assert_eq!(code, 422);
}

async fn selector_fixture() -> (causeway_kube_fake::FakeApiServer, kube::Client) {
    let s = server().await;
    s.create(&pod(
        "default",
        "web-1",
        &[("app", "web"), ("tier", "front")],
    ))
    .unwrap();
    s.create(&pod("default", "web-2", &[("app", "web")]))
        .unwrap();
    s.create(&pod("default", "db-1", &[("app", "db")])).unwrap();
    s.create(&pod("other", "web-3", &[("app", "web")])).unwrap();
    let mut on_node = pod("default", "pinned", &[]);
    on_node.spec.as_mut().unwrap().node_name = Some("node-1".into());
    s.create(&on_node).unwrap();
    let c = client(&s).await;
    (s, c)
}

async fn listed(api: &Api<Pod>, lp: &ListParams) -> Vec<String> {
    let mut names: Vec<String> = api
        .list(lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn label_selectors() {
    let (_s, c) = selector_fixture().await;
    let ns: Api<Pod> = Api::namespaced(c.clone(), "default");
    let all: Api<Pod> = Api::all(c);
    let cases: Vec<(&Api<Pod>, &str, Vec<&str>)> = vec![
        (&ns, "app=web", vec!["web-1", "web-2"]),
        (&all, "app==web", vec!["web-1", "web-2", "web-3"]),
        (&ns, "app!=web", vec!["db-1", "pinned"]),
        (&ns, "app in (db, web),tier", vec!["web-1"]),
        (&ns, "app notin (web)", vec!["db-1", "pinned"]),
        (&ns, "!app", vec!["pinned"]),
    ];
    for (api, sel, want) in cases {
        assert_eq!(
            listed(api, &ListParams::default().labels(sel)).await,
            want,
            "{sel}"
        );
    }
    let err = ns
        .list(&ListParams::default().labels("app in web"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400),
        "{err:?}"
    );
}

#[tokio::test]
async fn field_selectors() {
    let (_s, c) = selector_fixture().await;
    let ns: Api<Pod> = Api::namespaced(c.clone(), "default");
    let all: Api<Pod> = Api::all(c);
    let cases: Vec<(&Api<Pod>, &str, Vec<&str>)> = vec![
        (&ns, "metadata.name=db-1", vec!["db-1"]),
        (&all, "metadata.namespace!=default", vec!["web-3"]),
        (&ns, "spec.nodeName=node-1", vec!["pinned"]),
        (
            &ns,
            "spec.nodeName==node-1,metadata.name!=x",
            vec!["pinned"],
        ),
    ];
    for (api, sel, want) in cases {
        assert_eq!(
            listed(api, &ListParams::default().fields(sel)).await,
            want,
            "{sel}"
        );
    }
    let both = ListParams::default()
        .labels("app=web")
        .fields("metadata.name!=web-1");
    assert_eq!(listed(&ns, &both).await, ["web-2"]);
}

#[tokio::test]
async fn list_of_thousands_is_not_quadratic() {
    let s = server().await;
    let pods: Vec<Pod> = (0..5000)
        .map(|i| pod("bulk", &format!("p{i:05}"), &[("app", "bulk")]))
        .collect();
    let started = std::time::Instant::now();
    assert_eq!(s.load(&pods).unwrap(), 5000);
    let c = client(&s).await;
    let api: Api<Pod> = Api::namespaced(c, "bulk");
    let listed = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 5000);
    let mut paged = BTreeSet::new();
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await.unwrap();
        paged.extend(page.items.into_iter().map(|p| p.metadata.name.unwrap()));
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => lp = lp.continue_token(&t),
            _ => break,
        }
    }
    assert_eq!(paged.len(), 5000);
    // Generous for debug builds on a small machine; quadratic behaviour takes minutes.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn custom_resource_list_items_keep_their_type_fields() {
    let s = server().await;
    s.create_json(
        serde_json::json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
        "metadata": {"name": "web", "namespace": "default"}}),
    )
    .unwrap();
    let c = client(&s).await;
    let (code, list) = get(
        &c,
        "/apis/multicluster.x-k8s.io/v1beta1/namespaces/default/serviceexports",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "ServiceExportList");
    assert_eq!(
        list["items"][0]["kind"], "ServiceExport",
        "unstructured items keep kind: {list}"
    );
    assert_eq!(
        list["items"][0]["apiVersion"],
        "multicluster.x-k8s.io/v1beta1"
    );
}
