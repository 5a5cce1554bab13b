//! Discovery: what kube-rs's `Discovery` (legacy and aggregated) finds, and 404 for what a
//! server does not serve, which is how callers tell MCS versions apart.

use causeway_kube_fake::{McsVersion, ResourceSpec, ServerOptions};
use kube::discovery::{Discovery, Scope};

use crate::common::*;

#[tokio::test]
async fn kube_discovery_finds_served_groups_and_versions() {
    let s = server().await;
    let c = client(&s).await;
    let info = c.apiserver_version().await.unwrap();
    assert_eq!(info.major, "1");
    for d in [
        Discovery::new(c.clone()).run().await.unwrap(),
        Discovery::new(c.clone()).run_aggregated().await.unwrap(),
    ] {
        assert!(d.has_group("multicluster.x-k8s.io"));
        assert!(d.has_group("causeway.io"));
        let causeway = d.get("causeway.io").unwrap();
        for kind in ["AuthorizationPolicy", "TrafficPolicy"] {
            let (_, caps) = causeway.recommended_kind(kind).unwrap();
            assert_eq!(caps.scope, Scope::Namespaced, "{kind}");
        }
        let (traffic, _) = causeway.recommended_kind("TrafficPolicy").unwrap();
        assert_eq!(traffic.plural, "trafficpolicies");
        assert!(!d.has_group("about.k8s.io"), "about API is off by default");
        let mcs = d.get("multicluster.x-k8s.io").unwrap();
        assert_eq!(mcs.preferred_version_or_latest(), "v1beta1");
        let (ar, caps) = mcs.recommended_kind("ServiceExport").unwrap();
        assert_eq!(ar.plural, "serviceexports");
        assert_eq!(caps.scope, Scope::Namespaced);
        assert!(caps
            .subresources
            .iter()
            .any(|(sub, _)| sub.plural == "serviceexports/status" || sub.plural == "status"));
        let core = d.get("").unwrap();
        let (nodes, caps) = core.recommended_kind("Node").unwrap();
        assert_eq!(
            (nodes.plural.as_str(), caps.scope.clone()),
            ("nodes", Scope::Cluster)
        );
        let slices = d.get("discovery.k8s.io").unwrap();
        assert!(slices.recommended_kind("EndpointSlice").is_some());
    }
}

#[tokio::test]
async fn unserved_versions_and_groups_are_404() {
    let s = server_with(ServerOptions {
        mcs_versions: vec![McsVersion::V1alpha1],
        about_api: true,
        causeway_crds: false,
        traffic_policy_crd: false,
        ..ServerOptions::default()
    })
    .await;
    let c = client(&s).await;
    let (code, list) = get(&c, "/apis/multicluster.x-k8s.io/v1alpha1").await;
    assert_eq!(code, 200);
    let names: Vec<&str> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "serviceexports",
            "serviceexports/status",
            "serviceimports",
            "serviceimports/status"
        ]
    );
    let (code, st) = get(&c, "/apis/multicluster.x-k8s.io/v1beta1").await;
    assert_eq!((code, st["kind"].as_str()), (404, Some("Status")));
    assert_eq!(get(&c, "/apis/causeway.io").await.0, 404);
    let (code, group) = get(&c, "/apis/about.k8s.io").await;
    assert_eq!(code, 200);
    assert_eq!(
        group["preferredVersion"]["groupVersion"],
        "about.k8s.io/v1alpha1"
    );
    let (_, about) = get(&c, "/apis/about.k8s.io/v1alpha1").await;
    assert_eq!(about["resources"][0]["namespaced"], false);
    let (_, core) = get(&c, "/api").await;
    assert_eq!(core["versions"][0], "v1");
    // Serving more at run time shows up in discovery.
    s.serve(
        ResourceSpec::new(
            "multicluster.x-k8s.io",
            "v1beta1",
            "ServiceExport",
            "serviceexports",
        )
        .with_status(),
    );
    assert_eq!(get(&c, "/apis/multicluster.x-k8s.io/v1beta1").await.0, 200);
    let (_, group) = get(&c, "/apis/multicluster.x-k8s.io").await;
    assert_eq!(group["preferredVersion"]["version"], "v1beta1");
    assert_eq!(group["versions"].as_array().unwrap().len(), 2);
}
