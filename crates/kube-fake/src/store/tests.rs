//! Store unit tests: versions, history, snapshots, cascades, watch channels.

use serde_json::{json, Value};

use super::*;
use crate::selector::Selectors;

fn pods() -> GroupResource {
    GroupResource::new("", "pods")
}

fn store() -> Store {
    Store::new(&ServerOptions::default())
}

fn direct() -> WriteOpts {
    WriteOpts {
        direct: true,
        ..WriteOpts::default()
    }
}

fn pod(ns: &str, name: &str, label: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"v": label}}})
}

fn names(page: &ListPage) -> Vec<String> {
    page.items
        .iter()
        .map(|o| meta_str(o, "name").unwrap_or_default().to_string())
        .collect()
}

fn exact(rv: u64) -> ListRequest {
    ListRequest {
        resource_version: Some(rv.to_string()),
        resource_version_match: Some("Exact".into()),
        ..ListRequest::default()
    }
}

#[test]
fn every_write_gets_the_next_version_and_noops_get_none() {
    let mut s = store();
    let start = s.resource_version();
    let a = s
        .create(&pods(), "v1", Some("ns"), pod("ns", "a", "1"), &direct())
        .unwrap();
    assert_eq!(
        meta_str(&a, "resourceVersion"),
        Some((start + 1).to_string().as_str())
    );
    let same = s
        .update(
            &pods(),
            "v1",
            Some("ns"),
            "a",
            pod("ns", "a", "1"),
            false,
            &direct(),
        )
        .unwrap();
    assert_eq!(
        s.resource_version(),
        start + 1,
        "an unchanged update is not a write"
    );
    assert!(Arc::ptr_eq(&a, &same));
    s.update(
        &pods(),
        "v1",
        Some("ns"),
        "a",
        pod("ns", "a", "2"),
        false,
        &direct(),
    )
    .unwrap();
    assert_eq!(s.resource_version(), start + 2);
}

#[test]
fn exact_lists_reconstruct_the_past_from_history() {
    let mut s = store();
    s.create(&pods(), "v1", Some("ns"), pod("ns", "a", "old"), &direct())
        .unwrap();
    s.create(&pods(), "v1", Some("ns"), pod("ns", "b", "old"), &direct())
        .unwrap();
    let then = s.resource_version();
    s.update(
        &pods(),
        "v1",
        Some("ns"),
        "a",
        pod("ns", "a", "new"),
        false,
        &direct(),
    )
    .unwrap();
    s.delete(&pods(), Some("ns"), "b", &Preconditions::default(), false)
        .unwrap();
    s.create(&pods(), "v1", Some("ns"), pod("ns", "c", "new"), &direct())
        .unwrap();
    let past = s
        .list(&pods(), Some("ns"), &Selectors::default(), &exact(then))
        .unwrap();
    assert_eq!(names(&past), ["a", "b"]);
    assert_eq!(past.items[0]["metadata"]["labels"]["v"], "old");
    let now = s
        .list(
            &pods(),
            None,
            &Selectors::default(),
            &ListRequest::default(),
        )
        .unwrap();
    assert_eq!(names(&now), ["a", "c"]);
    s.compact();
    assert_eq!(
        s.list(&pods(), None, &Selectors::default(), &exact(then))
            .unwrap_err()
            .code,
        410
    );
}

#[test]
fn the_history_limit_compacts_old_versions() {
    let mut s = Store::new(&ServerOptions {
        history_limit: Some(2),
        ..ServerOptions::default()
    });
    let before = s.resource_version();
    for name in ["a", "b", "c"] {
        s.create(&pods(), "v1", Some("ns"), pod("ns", name, "1"), &direct())
            .unwrap();
    }
    let err = s
        .subscribe(&pods(), None, WatchStart::After(before))
        .err()
        .unwrap();
    assert_eq!((err.code, err.reason.as_str()), (410, "Expired"));
    let ok = s
        .subscribe(&pods(), None, WatchStart::After(before + 1))
        .ok()
        .unwrap();
    assert_eq!(ok.replay.len(), 2);
}

#[test]
fn watchers_get_changes_then_bookmarks_in_order() {
    let mut s = store();
    let mut sub = s.subscribe(&pods(), None, WatchStart::Now).ok().unwrap();
    assert_eq!(s.open_watches(), 1);
    s.create(&pods(), "v1", Some("ns"), pod("ns", "a", "1"), &direct())
        .unwrap();
    s.bookmark(&sub.tx);
    match sub.rx.try_recv() {
        Ok(WatchMsg::Change(c)) => assert_eq!((c.kind, c.key.1.as_str()), (ChangeType::Added, "a")),
        other => panic!("expected the change first, got {other:?}"),
    }
    match sub.rx.try_recv() {
        Ok(WatchMsg::Bookmark(rv)) => assert_eq!(rv, s.resource_version()),
        other => panic!("expected a bookmark, got {other:?}"),
    }
    drop(sub);
    assert_eq!(s.open_watches(), 0);
}

#[test]
fn deleting_a_namespace_deletes_its_objects() {
    let mut s = store();
    let ns = GroupResource::new("", "namespaces");
    let ns_obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "doomed"}});
    s.create(&ns, "v1", None, ns_obj, &direct()).unwrap();
    s.create(
        &pods(),
        "v1",
        Some("doomed"),
        pod("doomed", "a", "1"),
        &direct(),
    )
    .unwrap();
    s.create(
        &pods(),
        "v1",
        Some("kept"),
        pod("kept", "b", "1"),
        &direct(),
    )
    .unwrap();
    s.delete(&ns, None, "doomed", &Preconditions::default(), false)
        .unwrap();
    let left: Vec<String> = s
        .all(&pods())
        .iter()
        .map(|o| meta_str(o, "name").unwrap().to_string())
        .collect();
    assert_eq!(left, ["b"]);
}

#[test]
fn services_get_distinct_cluster_ips_and_keep_them() {
    let mut s = store();
    let svc = GroupResource::new("", "services");
    let mk = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns"},
                                  "spec": {"ports": [{"port": 80}]}})
    };
    let a = s
        .create(&svc, "v1", Some("ns"), mk("a"), &WriteOpts::default())
        .unwrap();
    let b = s
        .create(&svc, "v1", Some("ns"), mk("b"), &WriteOpts::default())
        .unwrap();
    assert_ne!(a["spec"]["clusterIP"], b["spec"]["clusterIP"]);
    assert_eq!(a["spec"]["ports"][0]["targetPort"], 80);
    assert_eq!(a["spec"]["ports"][0]["protocol"], "TCP");
    let mut update = mk("a");
    update["metadata"]["labels"] = json!({"x": "1"});
    let a2 = s
        .update(
            &svc,
            "v1",
            Some("ns"),
            "a",
            update,
            false,
            &WriteOpts::default(),
        )
        .unwrap();
    assert_eq!(a2["spec"]["clusterIP"], a["spec"]["clusterIP"]);
}

#[test]
fn api_creates_reject_bad_bodies() {
    let mut s = store();
    let api = WriteOpts::default();
    let wrong_kind = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}});
    assert_eq!(
        s.create(&pods(), "v1", Some("ns"), wrong_kind, &api)
            .unwrap_err()
            .code,
        400
    );
    let with_rv = json!({"metadata": {"name": "a", "resourceVersion": "5"}});
    assert_eq!(
        s.create(&pods(), "v1", Some("ns"), with_rv, &api)
            .unwrap_err()
            .code,
        400
    );
    let other_ns = json!({"metadata": {"name": "a", "namespace": "elsewhere"}});
    assert_eq!(
        s.create(&pods(), "v1", Some("ns"), other_ns, &api)
            .unwrap_err()
            .code,
        400
    );
    let bad_field = json!({"metadata": {"name": "a"}, "spec": {"containers": "not a list"}});
    assert_eq!(
        s.create(&pods(), "v1", Some("ns"), bad_field, &api)
            .unwrap_err()
            .code,
        400
    );
    let upper = json!({"metadata": {"name": "Upper"}});
    assert_eq!(
        s.create(&pods(), "v1", Some("ns"), upper, &api)
            .unwrap_err()
            .code,
        422
    );
}
