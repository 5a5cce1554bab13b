//! Watches: kube-rs watcher in both list modes, history replay, selector transitions,
//! bookmarks, initial events, compaction, timeouts.

use std::time::Duration;

use causeway_kube_fake::ServerOptions;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use kube::runtime::watcher;
use serde_json::json;

use crate::common::*;

async fn follows_changes(cfg: watcher::Config) -> causeway_kube_fake::FakeApiServer {
    let s = server().await;
    s.create(&pod("default", "a", &[])).unwrap();
    let c = client(&s).await;
    let r = reflect(Api::all(c), cfg);
    wait_until("initial state", || names(&r.store) == set(&["a"])).await;
    s.create(&pod("other", "b", &[])).unwrap();
    s.apply_object(&pod("default", "a", &[("v", "2")])).unwrap();
    wait_until("modification", || {
        r.store.state().iter().any(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get("v").is_some_and(|v| v == "2"))
        })
    })
    .await;
    s.delete("v1", "Pod", Some("default"), "a").unwrap();
    wait_until("deletion", || names(&r.store) == set(&["b"])).await;
    s
}

#[tokio::test]
async fn kube_watcher_list_then_watch_follows_changes() {
    let s = follows_changes(watcher::Config::default()).await;
    assert!(s.request_count("list", "pods") >= 1);
    assert!(s.request_count("watch", "pods") >= 1);
}

#[tokio::test]
async fn kube_watcher_streaming_list_follows_changes() {
    let s = follows_changes(watcher::Config::default().streaming_lists()).await;
    assert_eq!(
        s.request_count("list", "pods"),
        0,
        "a streaming list never lists"
    );
    assert!(s.request_count("watch", "pods") >= 1);
}

#[tokio::test]
async fn watch_from_resource_version_replays_history_then_goes_live() {
    let s = server().await;
    s.create(&pod("default", "b", &[])).unwrap();
    let from = s.resource_version();
    s.create(&pod("default", "a", &[])).unwrap();
    s.apply_object(&pod("default", "a", &[("v", "2")])).unwrap();
    s.delete("v1", "Pod", Some("default"), "b").unwrap();
    let deleted_at = s.resource_version().to_string();
    let c = client(&s).await;
    let mut w = raw_watch(
        &c,
        &format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={from}"),
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let ev = w.next().await.unwrap();
        if ev["type"] == "DELETED" {
            // The deleted object carries the deletion's version.
            assert_eq!(ev["object"]["metadata"]["resourceVersion"], deleted_at);
        }
        assert_eq!(
            ev["object"]["apiVersion"], "v1",
            "watch objects carry apiVersion: {ev}"
        );
        assert_eq!(ev["object"]["kind"], "Pod");
        got.push((
            ev["type"].as_str().unwrap().to_string(),
            name_of(&ev).to_string(),
        ));
    }
    assert_eq!(
        got,
        [
            ("ADDED".into(), "a".into()),
            ("MODIFIED".into(), "a".into()),
            ("DELETED".into(), "b".into())
        ]
    );
    s.create(&pod("default", "live", &[])).unwrap();
    let ev = w.next().await.unwrap();
    assert_eq!((ev["type"].as_str(), name_of(&ev)), (Some("ADDED"), "live"));
    assert_eq!(s.open_watches(), 1);
}

#[tokio::test]
async fn selector_transitions_become_added_and_deleted() {
    let s = server().await;
    s.create(&pod("default", "p", &[("app", "db")])).unwrap();
    let c = client(&s).await;
    let rv = s.resource_version();
    let mut w = raw_watch(
        &c,
        &format!(
            "/api/v1/namespaces/default/pods?watch=1&labelSelector=app%3Dweb&resourceVersion={rv}"
        ),
    )
    .await;
    s.apply_object(&pod("default", "p", &[("app", "web")]))
        .unwrap();
    let ev = w.next().await.unwrap();
    assert_eq!(ev["type"], "ADDED", "moved into the selector: {ev}");
    s.apply_object(&pod("default", "p", &[("app", "web"), ("x", "1")]))
        .unwrap();
    assert_eq!(w.next().await.unwrap()["type"], "MODIFIED");
    s.apply_object(&pod("default", "p", &[("app", "db")]))
        .unwrap();
    let ev = w.next().await.unwrap();
    assert_eq!(ev["type"], "DELETED", "moved out of the selector: {ev}");
    assert_eq!(
        ev["object"]["metadata"]["labels"]["app"], "db",
        "DELETED carries the new state"
    );
    // Changes outside the selector are not sent; the next event is the next match.
    s.apply_object(&pod("default", "p", &[("app", "db"), ("y", "1")]))
        .unwrap();
    s.create(&pod("default", "q", &[("app", "web")])).unwrap();
    let ev = w.next().await.unwrap();
    assert_eq!((ev["type"].as_str(), name_of(&ev)), (Some("ADDED"), "q"));
}

#[tokio::test]
async fn bookmarks_carry_type_fields_and_mark_the_end_of_initial_events() {
    let s = server_with(ServerOptions {
        bookmark_interval: Duration::from_millis(100),
        ..ServerOptions::default()
    })
    .await;
    for name in ["a", "b"] {
        s.create(&pod("default", name, &[])).unwrap();
    }
    let c = client(&s).await;
    let path = "/api/v1/namespaces/default/pods?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&resourceVersion=0";
    let mut w = raw_watch(&c, path).await;
    for name in ["a", "b"] {
        let ev = w.next().await.unwrap();
        assert_eq!((ev["type"].as_str(), name_of(&ev)), (Some("ADDED"), name));
    }
    let end = w.next().await.unwrap();
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(end["object"]["apiVersion"], "v1");
    assert_eq!(end["object"]["kind"], "Pod");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(
        end["object"]["metadata"]["resourceVersion"],
        s.resource_version().to_string()
    );
    s.create(&pod("default", "c", &[])).unwrap();
    let ev = w.next_non_bookmark().await.unwrap();
    assert_eq!(name_of(&ev), "c");
    let periodic = w.next().await.unwrap();
    assert_eq!(periodic["type"], "BOOKMARK");
    assert_eq!(periodic["object"]["kind"], "Pod");
    assert!(periodic["object"]["metadata"].get("annotations").is_none());
    assert_eq!(
        periodic["object"]["metadata"]["resourceVersion"],
        s.resource_version().to_string()
    );
    // The real server refuses sendInitialEvents without NotOlderThan or without bookmarks.
    let (code, st) = get(
        &c,
        "/api/v1/pods?watch=true&sendInitialEvents=true&allowWatchBookmarks=true",
    )
    .await;
    assert_eq!((code, st["reason"].as_str()), (422, Some("Invalid")));
    let (code, _) = get(
        &c,
        "/api/v1/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
    )
    .await;
    assert_eq!(code, 422);
}

#[tokio::test]
async fn compaction_ends_old_watches_with_410_and_the_watcher_relists() {
    let s = server_with(ServerOptions {
        bookmark_interval: Duration::from_secs(600),
        ..ServerOptions::default()
    })
    .await;
    let c = client(&s).await;
    let rv = s.resource_version();
    s.create(&pod("default", "a", &[])).unwrap();
    s.compact();
    let mut w = raw_watch(&c, &format!("/api/v1/pods?watch=true&resourceVersion={rv}")).await;
    let ev = w.next().await.unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["kind"], "Status");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    assert!(ev["object"]["message"]
        .as_str()
        .unwrap()
        .starts_with(&format!("too old resource version: {rv}")));
    assert!(w.next().await.is_none(), "the stream ends after the error");

    let r = reflect(Api::all(c), watcher::Config::default());
    wait_until("synced", || names(&r.store) == set(&["a"])).await;
    assert_eq!(s.request_count("list", "pods"), 1);
    // Move the cluster past the watcher's version (the pod watch sees no event and, with
    // bookmarks far apart, keeps its version), forget history, break the watch: resuming
    // from the old version gets 410 and the watcher lists again.
    s.create(
        &serde_json::from_value::<Service>(
            json!({"metadata": {"name": "svc", "namespace": "default"}}),
        )
        .unwrap(),
    )
    .unwrap();
    s.compact();
    s.drop_watches();
    wait_until("relisted", || s.request_count("list", "pods") >= 2).await;
    s.delete("v1", "Pod", Some("default"), "a").unwrap();
    s.create(&pod("default", "b", &[])).unwrap();
    wait_until("following again", || names(&r.store) == set(&["b"])).await;
}

#[tokio::test]
async fn timeout_seconds_and_the_server_cap_end_watches_cleanly() {
    let s = server().await;
    let c = client(&s).await;
    let started = std::time::Instant::now();
    let mut w = raw_watch(
        &c,
        "/api/v1/pods?watch=true&timeoutSeconds=1&resourceVersion=1",
    )
    .await;
    assert!(w.next().await.is_none());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "ended after {:?}",
        started.elapsed()
    );

    let capped = server_with(ServerOptions {
        max_watch: Some(Duration::from_millis(200)),
        ..ServerOptions::default()
    })
    .await;
    let c = client(&capped).await;
    let mut w = raw_watch(
        &c,
        "/api/v1/pods?watch=true&timeoutSeconds=290&resourceVersion=1",
    )
    .await;
    assert!(w.next().await.is_none(), "max_watch ends the stream");
    // A watcher behind a capped server keeps going across restarts.
    let r = reflect(Api::all(c), watcher::Config::default());
    wait_until("watch restarted", || {
        capped.request_count("watch", "pods") >= 3
    })
    .await;
    capped.create(&pod("default", "x", &[])).unwrap();
    wait_until("still receiving", || names(&r.store) == set(&["x"])).await;
}

#[tokio::test]
async fn watch_without_version_starts_with_current_state() {
    let s = server().await;
    s.create(&pod("default", "a", &[])).unwrap();
    let c = client(&s).await;
    let mut w = raw_watch(&c, "/api/v1/namespaces/default/pods?watch=true").await;
    let ev = w.next().await.unwrap();
    assert_eq!((ev["type"].as_str(), name_of(&ev)), (Some("ADDED"), "a"));
    let mut one = raw_watch(
        &c,
        "/api/v1/namespaces/default/pods/a?watch=true&resourceVersion=1",
    )
    .await;
    s.create(&pod("default", "other", &[])).unwrap();
    s.apply_object(&pod("default", "a", &[("k", "v")])).unwrap();
    let ev = one.next().await.unwrap();
    assert_eq!(name_of(&ev), "a", "a named watch sees only that object");
}

#[tokio::test]
async fn metadata_only_lists_and_watches() {
    use futures::StreamExt;
    use kube::core::PartialObjectMeta;
    use kube::runtime::WatchStreamExt;
    let s = server().await;
    s.create(&pod("default", "a", &[("app", "web")])).unwrap();
    let c = client(&s).await;
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let list = pods
        .list_metadata(&kube::api::ListParams::default())
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.items[0].metadata.labels.as_ref().unwrap()["app"],
        "web"
    );
    let meta: Api<PartialObjectMeta<Pod>> = Api::default_namespaced(c.clone());
    let stream = watcher(meta, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("a"));
    s.create(&pod("default", "b", &[])).unwrap();
    let second = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.metadata.name.as_deref(), Some("b"));
    let req = hyper::Request::get("/api/v1/namespaces/default/pods/a")
        .header(
            "accept",
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
        )
        .body(Vec::new())
        .unwrap();
    let v: serde_json::Value = c.request(req).await.unwrap();
    assert_eq!(v["kind"], "PartialObjectMetadata");
    assert!(v.get("spec").is_none(), "{v}");
}

#[tokio::test]
async fn plain_http_serves_the_same_api() {
    let s = server_with(ServerOptions::plain_http()).await;
    assert!(s.url().starts_with("http://127.0.0.1:"));
    assert!(s.ca_pem().is_none());
    s.create(&pod("default", "a", &[])).unwrap();
    let r = reflect(
        Api::all(client(&s).await),
        watcher::Config::default().streaming_lists(),
    );
    wait_until("synced over http", || names(&r.store) == set(&["a"])).await;
}

#[tokio::test]
async fn the_serving_certificate_is_valid_for_localhost_too() {
    let s = server().await;
    let mut cfg = config_for(&s, &s.admin_token()).await;
    cfg.cluster_url = format!("https://localhost:{}", s.addr().port())
        .parse()
        .unwrap();
    let c = kube::Client::try_from(cfg).unwrap();
    assert_eq!(get(&c, "/api").await.0, 200);
}
