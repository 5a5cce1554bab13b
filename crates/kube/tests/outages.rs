//! An unreachable or misbehaving API server: the last good state is kept and marked stale,
//! other clusters carry on, `staleEndpointTtl` withdraws endpoints, and the re-list that
//! follows (or one forced by compaction) never publishes an empty, partial or ghostly state.

mod common {
    pub mod harness;
}

use std::time::Duration;

use causeway_kube::{InitialList, KubeOptions, SyncState};
use causeway_kube_fake::{Fault, ServerOptions};
use common::harness::*;
use serde_json::json;

async fn unreachable_then_back(initial_list: InitialList) {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 3);
    let mut h = Harness::new(KubeOptions {
        initial_list,
        ..fast()
    });
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let good = h.synced("east").await;

    server.stop().await;
    let stale = h
        .wait_for("state stale", |u| u.status.state == SyncState::Stale)
        .await;
    assert_eq!(
        stale.objects.as_deref(),
        Some(&*good),
        "the last good state is kept"
    );
    assert!(stale.status.stale_since.is_some(), "stale_since set");
    assert!(!stale.status.withdrawn, "no TTL: nothing withdrawn");
    assert!(
        stale.status.errors.iter().any(|e| e.contains("east")),
        "errors name the cluster: {:?}",
        stale.status.errors
    );

    // Changed while the control plane could not watch: no event will ever say so.
    server
        .delete("v1", "Pod", Some("shop"), "svc-1-0")
        .expect("delete pod");
    server
        .delete(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            Some("shop"),
            "svc-1-abcde",
        )
        .expect("delete slice");
    server
        .create_json(service("shop", "new"))
        .expect("create service");
    server.start_again().await.expect("restart");
    let back = h
        .wait_for("synced again", |u| u.status.state == SyncState::Synced)
        .await;
    let objects = back.objects.expect("objects");
    assert!(
        !objects
            .endpoint_slices
            .contains_key(&("shop".to_owned(), "svc-1-abcde".to_owned())),
        "ghost slice"
    );
    assert!(
        !objects
            .workload_entries
            .contains_key(&("shop".to_owned(), "svc-1-0".to_owned())),
        "ghost pod"
    );
    assert_eq!(objects.endpoint_slices.len(), 2);
    assert_eq!(objects.workload_entries.len(), 5);
    assert_eq!(
        objects.services.len(),
        4,
        "the service created meanwhile is there"
    );
    assert_eq!(back.status.stale_since, None);
    let first_synced = h
        .seen
        .iter()
        .position(|u| u.objects.is_some())
        .expect("synced once");
    for u in &h.seen[first_synced..] {
        let o = u
            .objects
            .as_ref()
            .unwrap_or_else(|| panic!("objects dropped: {}", describe(u)));
        assert!(
            o.services.len() >= 3 && o.endpoint_slices.len() >= 2,
            "partial state published: {}",
            describe(u)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_keeps_the_last_state_marked_stale_and_relists_without_ghosts() {
    unreachable_then_back(InitialList::ListWatch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_streaming_lists() {
    unreachable_then_back(InitialList::Streaming).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_is_stale_by_probe_and_recovers_when_it_answers() {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 3);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let good = h.synced("east").await;

    // Connections stay open, nothing answers: only the probe's time limit can tell.
    server.set_fault(Fault::Hang);
    let stale = h
        .wait_for("state stale", |u| u.status.state == SyncState::Stale)
        .await;
    assert_eq!(
        stale.objects.as_deref(),
        Some(&*good),
        "the last good state is kept"
    );
    assert!(
        stale
            .status
            .errors
            .iter()
            .any(|e| e.contains("east") && e.contains("probing")),
        "the probe's timeout is reported: {:?}",
        stale.status.errors
    );
    server
        .delete(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            Some("shop"),
            "svc-2-abcde",
        )
        .expect("delete slice");
    server.set_fault(Fault::None);
    let back = h
        .wait_for("synced again", |u| u.status.state == SyncState::Synced)
        .await;
    let objects = back.objects.expect("objects");
    assert_eq!(
        objects.endpoint_slices.len(),
        2,
        "the slice deleted during the hang is gone"
    );
    assert!(
        back.status.errors.is_empty(),
        "errors cleared: {:?}",
        back.status.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_clusters_carry_on_while_one_is_unreachable() {
    let east = fake(ServerOptions::default()).await;
    let west = fake(ServerOptions::default()).await;
    load_shop(&east, 2);
    load_shop(&west, 2);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &east, &east.admin_token());
    h.add_cluster("west", &west, &west.admin_token());
    h.reconcile();
    h.synced("east").await;
    h.synced("west").await;

    east.stop().await;
    h.wait_for("east stale", |u| {
        u.cluster == cid("east") && u.status.state == SyncState::Stale
    })
    .await;
    west.create_json(service("shop", "while-east-is-down"))
        .expect("service");
    let u = h
        .wait_for("west's change", |u| {
            u.cluster == cid("west") && u.objects.as_ref().is_some_and(|o| o.services.len() == 3)
        })
        .await;
    assert_eq!(
        u.status.state,
        SyncState::Synced,
        "west is unaffected: {}",
        describe(&u)
    );
    assert!(
        u.status.errors.is_empty(),
        "west reports no problem: {:?}",
        u.status.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_after_compaction_publishes_no_empty_or_partial_state() {
    let server = fake(ServerOptions {
        // No bookmarks: every watch stays behind the newest version, so compaction expires it.
        bookmark_interval: Duration::from_secs(3600),
        ..ServerOptions::default()
    })
    .await;
    load_shop(&server, 20);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let good = h.synced("east").await;
    let mark = h.seen.len();

    // A write no watch sees moves the newest version past every watch's.
    server
        .create_json(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bump", "namespace": "shop"}}))
        .expect("configmap");
    server.compact();
    server.reset_requests();
    server.drop_watches();
    // 410 Gone on resume: each watch lists again.
    eventually("every watched kind re-listed", || {
        let s = server.clone();
        async move {
            ["services", "endpointslices", "pods", "nodes"]
                .iter()
                .all(|r| s.request_count("list", r) >= 1)
        }
    })
    .await;

    // A change after the re-list arrives, and nothing before it lost anything.
    server
        .create_json(service("shop", "marker"))
        .expect("marker");
    let u = h
        .wait_for("the marker service", |u| {
            u.objects.as_ref().is_some_and(|o| o.services.len() == 21)
        })
        .await;
    let objects = u.objects.expect("objects");
    assert_eq!(
        objects.endpoint_slices, good.endpoint_slices,
        "slices unchanged by the re-list"
    );
    assert_eq!(
        objects.workload_entries, good.workload_entries,
        "pods unchanged by the re-list"
    );
    for u in h.seen_of("east", mark) {
        let o = u
            .objects
            .as_ref()
            .unwrap_or_else(|| panic!("objects dropped: {}", describe(u)));
        assert!(
            o.services.len() >= 20
                && o.endpoint_slices.len() == 20
                && o.workload_entries.len() == 40,
            "partial: {}",
            describe(u)
        );
        assert_eq!(
            u.status.state,
            SyncState::Synced,
            "a compaction is routine, not an outage: {}",
            describe(u)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_endpoint_ttl_withdraws_endpoints_until_the_server_is_back() {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 2);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token())
        .stale_endpoint_ttl = Some(Duration::from_millis(300));
    h.reconcile();
    let good = h.synced("east").await;

    server.stop().await;
    let withdrawn = h.wait_for("withdrawn", |u| u.status.withdrawn).await;
    let objects = withdrawn
        .objects
        .clone()
        .expect("a withdrawn cluster still has objects");
    assert!(
        objects.endpoint_slices.is_empty(),
        "endpoints withdrawn: {}",
        describe(&withdrawn)
    );
    assert_eq!(objects.services, good.services, "services stay");
    assert_eq!(withdrawn.status.state, SyncState::Stale);
    let stale_for = withdrawn.status.stale_for().expect("stale");
    assert!(
        stale_for >= Duration::from_millis(300),
        "withdrawn after the TTL, not before ({stale_for:?})"
    );

    server.start_again().await.expect("restart");
    let back = h
        .wait_for("synced again", |u| u.status.state == SyncState::Synced)
        .await;
    assert!(!back.status.withdrawn);
    assert_eq!(back.objects.as_deref(), Some(&*good), "endpoints are back");
}
