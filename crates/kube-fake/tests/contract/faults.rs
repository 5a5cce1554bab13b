//! Fault controls: injected status codes, hangs, dropped watches, stop and start on the same
//! port; kube-rs's watcher must recover from each.

use std::time::Duration;

use causeway_kube_fake::Fault;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use kube::Client;

use crate::common::*;

#[tokio::test]
async fn injected_status_codes_are_status_errors() {
    let s = server().await;
    s.set_fault(Fault::Status(503));
    let pods: Api<Pod> = Api::default_namespaced(client_without_retry(&s).await);
    match pods.list(&ListParams::default()).await.unwrap_err() {
        kube::Error::Api(st) => {
            assert_eq!((st.code, st.reason.as_str()), (503, "ServiceUnavailable"))
        }
        other => panic!("expected a 503 Status, got {other:?}"),
    }
    s.set_fault(Fault::Status(500));
    assert!(
        matches!(pods.list(&ListParams::default()).await, Err(kube::Error::Api(st)) if st.code == 500)
    );
    s.set_fault(Fault::None);
    pods.list(&ListParams::default()).await.unwrap();

    // kube-rs retries 503 by default, so a short outage is ridden out.
    s.set_fault(Fault::Status(503));
    let before = s.request_count("list", "pods");
    let retrying: Api<Pod> = Api::default_namespaced(client(&s).await);
    let call = tokio::spawn(async move { retrying.list(&ListParams::default()).await });
    wait_until("the client retried", || {
        s.request_count("list", "pods") >= before + 2
    })
    .await;
    s.set_fault(Fault::None);
    let listed = tokio::time::timeout(WAIT, call)
        .await
        .expect("retry finished")
        .expect("task ran");
    assert!(listed.is_ok(), "{listed:?}");
}

#[tokio::test]
async fn a_hung_server_makes_requests_time_out() {
    let s = server().await;
    let mut cfg = config_for(&s, &s.admin_token()).await;
    cfg.read_timeout = Some(Duration::from_millis(300));
    cfg.default_retry = false;
    let pods: Api<Pod> = Api::default_namespaced(Client::try_from(cfg).unwrap());
    pods.list(&ListParams::default()).await.unwrap();
    s.set_fault(Fault::Hang);
    let before = s.request_count("list", "pods");
    let started = std::time::Instant::now();
    let err = pods.list(&ListParams::default()).await.unwrap_err();
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "no answer, so no Status: {err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        s.request_count("list", "pods"),
        before + 1,
        "the request was read"
    );
    s.set_fault(Fault::None);
    pods.list(&ListParams::default()).await.unwrap();
}

#[tokio::test]
async fn open_watches_pause_while_hung_and_resume() {
    let s = server().await;
    let c = client(&s).await;
    let mut w = raw_watch(
        &c,
        "/api/v1/namespaces/default/pods?watch=true&resourceVersion=1",
    )
    .await;
    s.set_fault(Fault::Hang);
    s.create(&pod("default", "during-hang", &[])).unwrap();
    s.set_fault(Fault::None);
    let ev = w.next_non_bookmark().await.unwrap();
    assert_eq!(name_of(&ev), "during-hang");
}

#[tokio::test]
async fn dropped_watches_are_resumed_by_the_watcher() {
    let s = server().await;
    s.create(&pod("default", "a", &[])).unwrap();
    let r = reflect(Api::all(client(&s).await), watcher::Config::default());
    wait_until("synced", || names(&r.store) == set(&["a"])).await;
    wait_until("one watch open", || s.open_watches() == 1).await;
    let watches = s.request_count("watch", "pods");
    let lists = s.request_count("list", "pods");
    s.drop_watches();
    wait_until("watch reopened", || {
        s.request_count("watch", "pods") > watches
    })
    .await;
    s.create(&pod("default", "b", &[])).unwrap();
    wait_until("receiving again", || names(&r.store) == set(&["a", "b"])).await;
    assert_eq!(
        s.request_count("list", "pods"),
        lists,
        "resumed from its version, no re-list"
    );
}

#[tokio::test]
async fn stop_and_start_again_on_the_same_port() {
    let s = server().await;
    for name in ["a", "b"] {
        s.create(&pod("default", name, &[])).unwrap();
    }
    let r = reflect(Api::all(client(&s).await), watcher::Config::default());
    wait_until("synced", || names(&r.store) == set(&["a", "b"])).await;
    let url = s.url();
    s.stop().await;
    assert!(!s.is_running());
    wait_until("watches closed", || s.open_watches() == 0).await;
    let down: Api<Pod> = Api::default_namespaced(client_without_retry(&s).await);
    assert!(
        down.list(&ListParams::default()).await.is_err(),
        "nothing listens while stopped"
    );
    s.delete("v1", "Pod", Some("default"), "a").unwrap();
    s.start_again().await.unwrap();
    assert_eq!(s.url(), url);
    assert!(s.start_again().await.is_err(), "already running");
    wait_until("the pod deleted while down is gone", || {
        names(&r.store) == set(&["b"])
    })
    .await;
    down.list(&ListParams::default()).await.unwrap();
}
