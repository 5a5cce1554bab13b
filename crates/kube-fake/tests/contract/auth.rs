//! Authentication and authorisation: bearer tokens, 401 after revocation, 403 with RBAC-worded
//! messages, SelfSubjectAccessReview, TokenReview for issued service-account tokens.

use causeway_kube_fake::{Permissions, Rule};
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use crate::common::*;

fn status_code(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API Status error, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_and_revoked_tokens_are_401() {
    let s = server().await;
    let unknown: Api<Pod> = Api::default_namespaced(client_for(&s, "no-such-token").await);
    let (code, reason, _) = status_code(unknown.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (401, "Unauthorized"));
    s.add_token("t1", Permissions::All);
    let c = client_for(&s, "t1").await;
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    pods.list(&ListParams::default()).await.unwrap();
    // A watch opened before revocation stays open, as on the real server.
    let mut w = raw_watch(
        &c,
        "/api/v1/namespaces/default/pods?watch=true&resourceVersion=1",
    )
    .await;
    assert_eq!(s.open_watches(), 1);
    s.revoke_token("t1");
    assert_eq!(
        status_code(pods.list(&ListParams::default()).await.unwrap_err()).0,
        401
    );
    s.create(&pod("default", "after-revoke", &[])).unwrap();
    let ev = w.next_non_bookmark().await.unwrap();
    assert_eq!(name_of(&ev), "after-revoke");
    s.drop_watches();
    while let Some(ev) = w.next().await {
        assert_eq!(
            ev["type"], "BOOKMARK",
            "only bookmarks may precede the end: {ev}"
        );
    }
}

#[tokio::test]
async fn forbidden_requests_are_403_and_access_reviews_say_why() {
    let s = server().await;
    s.add_token_for_user(
        "reader",
        "alice",
        Permissions::Rules(vec![
            Rule::new(&["get", "list", "watch"], &[""], &["pods"]),
            Rule::new(
                &["create"],
                &["authorization.k8s.io"],
                &["selfsubjectaccessreviews"],
            ),
        ]),
    );
    let c = client_for(&s, "reader").await;
    Api::<Pod>::default_namespaced(c.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let svcs: Api<Service> = Api::default_namespaced(c.clone());
    let (code, reason, message) = status_code(svcs.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        "services is forbidden: User \"alice\" cannot list resource \"services\" in API group \"\" in the namespace \"default\""
    );
    let ssar = |verb: &str, group: &str, resource: &str| -> SelfSubjectAccessReview {
        serde_json::from_value(json!({"spec": {"resourceAttributes": {"namespace": "default", "verb": verb, "group": group, "resource": resource}}})).unwrap()
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(c.clone());
    let allowed = reviews
        .create(&PostParams::default(), &ssar("watch", "", "pods"))
        .await
        .unwrap();
    assert!(allowed.status.unwrap().allowed);
    let denied = reviews
        .create(
            &PostParams::default(),
            &ssar("update", "multicluster.x-k8s.io", "serviceexports"),
        )
        .await
        .unwrap();
    assert!(!denied.status.unwrap().allowed);
    // Discovery needs no rule.
    assert_eq!(get(&c, "/apis").await.0, 200);
}

#[tokio::test]
async fn token_review_authenticates_issued_service_account_tokens() {
    let s = server().await;
    let pod_json = s.create(&pod("apps", "web-0", &[])).unwrap();
    let token = s.issue_service_account_token("apps", "web", "web-0", &["causeway", "other"]);
    let reviews: Api<TokenReview> = Api::all(client(&s).await);
    let review = |token: &str, audiences: &[&str]| -> TokenReview {
        serde_json::from_value(json!({"spec": {"token": token, "audiences": audiences}})).unwrap()
    };
    let ok = reviews
        .create(&PostParams::default(), &review(&token, &["causeway"]))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(ok.authenticated, Some(true));
    assert_eq!(ok.audiences.unwrap(), ["causeway"]);
    let user = ok.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:apps:web")
    );
    assert!(user
        .groups
        .unwrap()
        .contains(&"system:serviceaccounts:apps".to_string()));
    let extra = user.extra.unwrap();
    assert_eq!(extra["authentication.kubernetes.io/pod-name"], ["web-0"]);
    assert_eq!(
        extra["authentication.kubernetes.io/pod-uid"][0],
        pod_json["metadata"]["uid"].as_str().unwrap()
    );

    let wrong = reviews
        .create(&PostParams::default(), &review(&token, &["elsewhere"]))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(wrong.authenticated, Some(true));
    assert!(wrong.error.unwrap().contains("audiences"));
    let garbage = reviews
        .create(&PostParams::default(), &review("garbage", &[]))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(garbage.authenticated, Some(true));
    s.revoke_token(&token);
    let revoked = reviews
        .create(&PostParams::default(), &review(&token, &["causeway"]))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(revoked.authenticated, Some(true));
    assert!(revoked.error.is_some());

    // Reviewing tokens needs `create tokenreviews`.
    s.add_token("nobody", Permissions::none());
    let denied: Api<TokenReview> = Api::all(client_for(&s, "nobody").await);
    let (code, _, _) = status_code(
        denied
            .create(&PostParams::default(), &review(&token, &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
}

#[tokio::test]
async fn token_requests_issue_reviewable_pod_bound_tokens() {
    let s = server().await;
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "apps"}})).unwrap();
    s.create(&sa).unwrap();
    let c = client(&s).await;
    let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["causeway"], "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web-0", "uid": "uid-1"}}});
    let path = "/api/v1/namespaces/apps/serviceaccounts/web/token";
    let (code, issued) = raw(&c, "POST", path, "application/json", request.clone()).await;
    assert_eq!(code, 201, "{issued}");
    let token = issued["status"]["token"].as_str().unwrap();
    assert!(issued["status"]["expirationTimestamp"].is_string());
    let reviews: Api<TokenReview> = Api::all(c.clone());
    let review: TokenReview =
        serde_json::from_value(json!({"spec": {"token": token, "audiences": ["causeway"]}}))
            .unwrap();
    let status = reviews
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.authenticated, Some(true));
    let extra = status.user.unwrap().extra.unwrap();
    assert_eq!(extra["authentication.kubernetes.io/pod-uid"], ["uid-1"]);
    let (code, _) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/apps/serviceaccounts/missing/token",
        "application/json",
        request,
    )
    .await;
    assert_eq!(code, 404);
}
