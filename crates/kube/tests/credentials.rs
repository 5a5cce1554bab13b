//! Credentials against fake API servers: kubeconfig rotation (new credentials take over only
//! once synced; broken ones never do) and TokenReview of projected ServiceAccount tokens.

mod common {
    pub mod harness;
}

use causeway_kube::{ClusterUpdate, ReviewError, SyncState, CA_AUDIENCE};
use causeway_kube_fake::{Permissions, ServerOptions};
use common::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_kubeconfig_takes_over_and_a_broken_one_never_does() {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 5);
    server.add_token("token-a", Permissions::All);
    server.add_token("token-b", Permissions::All);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, "token-a");
    h.reconcile();
    let good = h.synced("east").await;
    assert_eq!(
        h.seen.last().expect("update").status.credentials_generation,
        0
    );
    let mark = h.seen.len();

    h.write_kubeconfig("east", &server, "token-b");
    let rotated = h
        .wait_for("generation 1", |u| u.status.credentials_generation == 1)
        .await;
    assert_eq!(
        rotated.objects.as_deref(),
        Some(&*good),
        "objects stay across a rotation"
    );
    assert!(!rotated.status.rotation_pending);
    for u in h.seen_of("east", mark) {
        assert_eq!(
            u.objects.as_deref(),
            Some(&*good),
            "objects changed during rotation: {}",
            describe(u)
        );
        assert_eq!(u.status.state, SyncState::Synced, "{}", describe(u));
    }

    // The new token really serves now: the old one stops working and nothing goes stale.
    server.revoke_token("token-a");
    server.drop_watches();
    server
        .create_json(service("shop", "after-rotation"))
        .expect("service");
    let u = h
        .wait_for("a change seen with token-b", |u| {
            u.objects.as_ref().is_some_and(|o| o.services.len() == 6)
        })
        .await;
    assert_eq!(u.status.state, SyncState::Synced, "{}", describe(&u));
    let current = u.objects.expect("objects");
    let mark = h.seen.len();

    // A token the server does not know: reported, never adopted, old credentials keep serving.
    h.write_kubeconfig("east", &server, "token-unknown");
    let broken = h
        .wait_for("an error about the new credentials", |u| {
            u.status.rotation_pending && !u.status.errors.is_empty()
        })
        .await;
    assert!(
        broken.status.errors.iter().any(|e| e.contains("east")),
        "names the cluster: {:?}",
        broken.status.errors
    );
    assert_eq!(broken.status.credentials_generation, 1, "not adopted");
    assert_eq!(
        broken.status.state,
        SyncState::Synced,
        "the old token still works: not stale"
    );
    assert_eq!(broken.objects.as_deref(), Some(&*current));
    // Changes still arrive through the old session.
    server
        .create_json(service("shop", "during-broken-rotation"))
        .expect("service");
    let u = h
        .wait_for("a change during the broken rotation", |u| {
            u.objects.as_ref().is_some_and(|o| o.services.len() == 7)
        })
        .await;
    assert_eq!(u.status.credentials_generation, 1);
    for u in h.seen_of("east", mark) {
        assert_eq!(u.status.state, SyncState::Synced, "{}", describe(u));
        assert!(u.objects.is_some(), "objects dropped: {}", describe(u));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_kubeconfig_is_reported_until_it_is_back() {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 1);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    let good = h.synced("east").await;

    // A secret volume briefly without the file, then the same file again.
    let path = h.kubeconfig_path("east");
    let contents = std::fs::read(&path).expect("kubeconfig");
    std::fs::remove_file(&path).expect("remove");
    let u = h
        .wait_for("an error about the kubeconfig", |u| {
            u.status.errors.iter().any(|e| e.contains("kubeconfig"))
        })
        .await;
    assert!(
        u.status.errors.iter().any(|e| e.contains("east")),
        "names the cluster: {:?}",
        u.status.errors
    );
    assert_eq!(
        u.objects.as_deref(),
        Some(&*good),
        "the current credentials keep serving"
    );
    assert_eq!(u.status.state, SyncState::Synced);
    std::fs::write(&path, contents).expect("restore");
    let u = h
        .wait_for("the error cleared", |u| u.status.errors.is_empty())
        .await;
    assert_eq!(
        u.status.credentials_generation, 0,
        "the same credentials: no rotation"
    );
}

/// A broken rotation and an API server restart, in either order: the cluster recovers with
/// the credentials that work, and the broken kubeconfig stays reported.
async fn broken_rotation_and_outage(rotation_first: bool) {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 2);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, &server.admin_token());
    h.reconcile();
    h.synced("east").await;
    let rotate = |h: &mut Harness| h.write_kubeconfig("east", &server, "token-unknown");
    if rotation_first {
        rotate(&mut h);
        h.wait_for("the broken rotation", |u| {
            u.status.rotation_pending && !u.status.errors.is_empty()
        })
        .await;
    }
    server.stop().await;
    h.wait_for("stale", |u| u.status.state == SyncState::Stale)
        .await;
    if !rotation_first {
        rotate(&mut h);
        h.wait_for("the rotation pending", |u| u.status.rotation_pending)
            .await;
    }
    server
        .delete(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            Some("shop"),
            "svc-1-abcde",
        )
        .expect("delete");
    server.start_again().await.expect("restart");
    let u = h
        .wait_for("synced again with the old credentials", |u| {
            u.status.state == SyncState::Synced
        })
        .await;
    let objects = u.objects.clone().expect("objects");
    assert_eq!(
        objects.endpoint_slices.len(),
        1,
        "re-listed: {}",
        describe(&u)
    );
    assert_eq!(
        u.status.credentials_generation, 0,
        "the broken credentials never took over"
    );
    let reported = |u: &ClusterUpdate| u.status.rotation_pending && !u.status.errors.is_empty();
    let u = if reported(&u) {
        u
    } else {
        h.wait_for("the broken kubeconfig reported", reported).await
    };
    assert!(
        u.status.errors.iter().any(|e| e.contains("east")),
        "{}",
        describe(&u)
    );
    assert_eq!(u.status.state, SyncState::Synced, "{}", describe(&u));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_during_a_broken_rotation_recovers_with_the_working_credentials() {
    broken_rotation_and_outage(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_rotation_during_an_outage_does_not_cancel_the_relist() {
    broken_rotation_and_outage(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_reviewed_by_their_own_cluster_only() {
    let east = fake(ServerOptions::default()).await;
    let west = fake(ServerOptions::default()).await;
    load_shop(&east, 1);
    load_shop(&west, 1);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &east, &east.admin_token());
    h.add_cluster("west", &west, &west.admin_token());
    h.reconcile();
    h.synced("east").await;
    h.synced("west").await;
    let reviewer = h.registry.token_reviewer();

    let token = east.issue_service_account_token("shop", "sa-0", "svc-0-0", &[CA_AUDIENCE]);
    let who = reviewer
        .review(&cid("east"), &token)
        .await
        .expect("a valid token of east");
    assert_eq!(who.cluster, cid("east"));
    assert_eq!(who.namespace, "shop");
    assert_eq!(who.service_account, "sa-0");
    assert_eq!(
        who.pod.as_deref(),
        Some("svc-0-0"),
        "the pod the token is bound to"
    );

    let other_audience = east.issue_service_account_token("shop", "sa-0", "svc-0-0", &["vault"]);
    let e = reviewer
        .review(&cid("east"), &other_audience)
        .await
        .expect_err("not for the CA");
    assert_eq!(e, ReviewError::WrongAudience(cid("east")), "{e}");

    let wests = west.issue_service_account_token("shop", "sa-0", "svc-0-0", &[CA_AUDIENCE]);
    let e = reviewer
        .review(&cid("east"), &wests)
        .await
        .expect_err("west's token claimed at east");
    assert!(
        matches!(&e, ReviewError::NotAuthenticated { cluster, .. } if *cluster == cid("east")),
        "{e:?}"
    );
    assert!(
        !e.to_string().contains(&wests),
        "an error never shows the token: {e}"
    );
    let ok = reviewer
        .review(&cid("west"), &wests)
        .await
        .expect("at its own cluster");
    assert_eq!(ok.cluster, cid("west"));

    let e = reviewer
        .review(&cid("north"), &token)
        .await
        .expect_err("not a member");
    assert_eq!(e, ReviewError::UnknownCluster(cid("north")));

    // A revoked token (its pod deleted) is no longer accepted.
    east.revoke_token(&token);
    let e = reviewer
        .review(&cid("east"), &token)
        .await
        .expect_err("revoked");
    assert!(matches!(e, ReviewError::NotAuthenticated { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_kubeconfig_path_in_mesh_yaml_is_a_rotation_without_an_empty_moment() {
    let server = fake(ServerOptions::default()).await;
    load_shop(&server, 3);
    server.add_token("token-a", Permissions::All);
    server.add_token("token-b", Permissions::All);
    let mut h = Harness::new(fast());
    h.add_cluster("east", &server, "token-a");
    h.reconcile();
    let good = h.synced("east").await;
    let mark = h.seen.len();
    // `causeway link` pointing the cluster at another file (other credentials).
    let moved = h.dir.path().join("east-moved.kubeconfig");
    std::fs::write(&moved, server.kubeconfig("east", "token-b")).expect("kubeconfig");
    h.mesh.clusters[0].kubernetes = Some(causeway_model::KubernetesSource {
        kubeconfig: moved.clone(),
        context: None,
    });
    h.reconcile();
    h.wait_for("generation 1", |u| u.status.credentials_generation == 1)
        .await;
    for u in h.seen_of("east", mark) {
        assert_eq!(
            u.objects.as_deref(),
            Some(&*good),
            "objects changed while switching kubeconfig files: {}",
            describe(u)
        );
    }
    // The old file's token no longer matters.
    server.revoke_token("token-a");
    server.drop_watches();
    server
        .create_json(service("shop", "after-move"))
        .expect("service");
    h.wait_for("a change seen through the new file", |u| {
        u.objects.as_ref().is_some_and(|o| o.services.len() == 4)
    })
    .await;
}
