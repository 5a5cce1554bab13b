//! A `TrafficPolicy` read from a member cluster (a Kubernetes custom resource, here its
//! validated model) is mesh-wide like one of the mesh directory: it shapes a caller's view and
//! EDS exactly alike, a cached sidecar picks it up, and a conflict with another source is
//! reported by `causeway check` while the first in precedence order applies.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use causeway_discovery::{check_mesh, MeshIndex, ProxyContext, Severity, ViewPort};
use causeway_model::{ClusterId, ClusterObjects, ObjectSource, ProxyIdentity, ProxyRole};
use causeway_model::{ServiceKey, TrafficPolicy};
use causeway_registry::traffic_wire::{
    traffic_policy_from_spec, TrafficCallers, TrafficCluster, TrafficPolicySpec,
};
use causeway_xds::node::{OutboundBlock, ProxyNode};
use causeway_xds::resources::TypeUrl;
use common::files::example_with;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

const ECHO: &str = "outbound|80||echo.demo.svc.cluster.local";

/// `demo/<name>` for callers in alpha: FailOver to gamma, then beta.
const FAIL_OVER: &str = "apiVersion: causeway.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: echo, namespace: demo}\nspec:\n  service: echo\n  callers: {clusters: [alpha]}\n  mode: FailOver\n  clusters:\n  - {name: gamma}\n  - {name: beta}\n";

fn fail_over_spec(order: &[&str]) -> TrafficPolicySpec {
    TrafficPolicySpec {
        service: "echo".into(),
        callers: Some(TrafficCallers {
            clusters: vec!["alpha".into()],
        }),
        mode: Some("FailOver".into()),
        clusters: order
            .iter()
            .map(|c| TrafficCluster {
                name: (*c).into(),
                weight: None,
            })
            .collect(),
        ..TrafficPolicySpec::default()
    }
}

/// The policy as the Kubernetes registry of `cluster` would hand it over.
fn from_cluster(cluster: &str, name: &str, order: &[&str]) -> TrafficPolicy {
    let source = ObjectSource {
        file: PathBuf::from(format!(
            "kubernetes:{cluster}/causeway.io/v1alpha1/TrafficPolicy/demo/{name}"
        )),
        document: 0,
        line: 0,
    };
    traffic_policy_from_spec("demo", name, &fail_over_spec(order), source).expect("valid")
}

/// The example mesh's clusters' objects, with `policies` added to `cluster`'s.
fn objects_with(
    cluster: &str,
    policies: Vec<TrafficPolicy>,
) -> (
    Arc<causeway_model::MeshConfig>,
    BTreeMap<ClusterId, ClusterObjects>,
) {
    let dir = common::example();
    let mut objects: BTreeMap<ClusterId, ClusterObjects> = dir
        .clusters()
        .iter()
        .map(|(n, s)| {
            let objects = s.objects.as_deref().cloned().expect("loaded");
            (ClusterId::new(n).expect("id"), objects)
        })
        .collect();
    let id = ClusterId::new(cluster).expect("id");
    objects.get_mut(&id).expect("cluster").traffic_policies = policies;
    (Arc::clone(dir.mesh().expect("mesh")), objects)
}

fn index_of(
    mesh: &Arc<causeway_model::MeshConfig>,
    objects: &BTreeMap<ClusterId, ClusterObjects>,
) -> MeshIndex {
    MeshIndex::build(Arc::clone(mesh), objects.iter())
}

fn context(index: &MeshIndex) -> ProxyContext {
    ProxyContext::resolve(
        index,
        ProxyIdentity {
            cluster: ClusterId::new("alpha").expect("id"),
            namespace: "demo".into(),
            workload: "client".into(),
            role: ProxyRole::Sidecar,
        },
    )
    .expect("context")
}

fn echo_port(index: &MeshIndex) -> ViewPort {
    let key = ServiceKey::new("demo", "echo");
    let service = causeway_discovery::view::view_service(index, &context(index), &key);
    service
        .expect("echo")
        .ports
        .into_iter()
        .next()
        .expect("a port")
}

fn echo_assignment(resources: &causeway_xds::resources::Resources) -> ClusterLoadAssignment {
    common::decoded::<ClusterLoadAssignment>(resources, TypeUrl::ClusterLoadAssignment)
        .into_iter()
        .find(|c| c.cluster_name == ECHO)
        .expect("echo assignment")
}

#[test]
fn a_cluster_policy_shapes_the_view_and_eds_like_the_same_policy_from_the_directory() {
    let from_file = example_with(&[("policies/echo.yaml", FAIL_OVER)]);
    let (mesh, objects) = objects_with(
        "beta",
        vec![from_cluster("beta", "echo", &["gamma", "beta"])],
    );
    let from_kube = index_of(&mesh, &objects);
    assert_eq!(from_kube.traffic_policies().len(), 1);
    assert!(from_kube.mesh().traffic_policies.is_empty());

    let (file_port, kube_port) = (echo_port(&from_file), echo_port(&from_kube));
    let priorities = |p: &ViewPort| -> Vec<(String, u32)> {
        p.endpoints()
            .map(|e| (e.cluster.to_string(), e.priority))
            .collect()
    };
    let got = priorities(&kube_port);
    assert!(got.iter().any(|(c, p)| c == "gamma" && *p == 0), "{got:?}");
    assert!(got.iter().any(|(c, p)| c == "beta" && *p == 1), "{got:?}");
    assert!(!got.iter().any(|(c, _)| c == "alpha"), "{got:?}");
    assert_eq!(
        kube_port, file_port,
        "the same view, wherever the policy is declared"
    );

    let eds = |index: &MeshIndex| echo_assignment(&common::sidecar_of(index, "alpha", "client"));
    assert_eq!(eds(&from_kube), eds(&from_file));
}

#[test]
fn a_cached_sidecar_picks_up_a_cluster_policy_when_it_arrives() {
    let (mesh, objects) = objects_with("beta", Vec::new());
    let mut index = index_of(&mesh, &objects);
    let ctx = context(&index);
    let node = ProxyNode {
        id: "client".into(),
        identity: ctx.identity.clone(),
        app_address: Some("127.1.100.10".parse().expect("ip")),
        outbound: Some(OutboundBlock::parse("127.200.0.0/16").expect("block")),
        network: None,
        data_plane: Default::default(),
    };
    let mut cache = causeway_xds::build::SidecarCache::default();
    let before = echo_assignment(&cache.build(&index, &node, &ctx));

    let (_, with_policy) = objects_with("beta", vec![from_cluster("beta", "echo", &["gamma"])]);
    let beta = ClusterId::new("beta").expect("id");
    let changed = index
        .set_cluster(&beta, &with_policy[&beta])
        .expect("declared");
    assert!(
        changed.contains(&ServiceKey::new("demo", "echo")),
        "{changed:?}"
    );
    let after = echo_assignment(&cache.build(&index, &node, &ctx));
    assert_ne!(after, before, "the policy changes alpha's EDS");
    let fresh = echo_assignment(&causeway_xds::build::sidecar_resources(&index, &node, &ctx));
    assert_eq!(after, fresh, "the cache builds what a fresh build does");
}

#[test]
fn conflicting_policies_across_sources_are_reported_and_the_first_applies() {
    let dir_index = example_with(&[("policies/echo.yaml", FAIL_OVER)]);
    let mesh = Arc::clone(dir_index.mesh());
    let (_, mut objects) = objects_with(
        "gamma",
        vec![from_cluster("gamma", "echo-gamma", &["alpha"])],
    );
    // The same policy in beta too: another name, the same service and callers.
    let beta = ClusterId::new("beta").expect("id");
    objects.get_mut(&beta).expect("beta").traffic_policies =
        vec![from_cluster("beta", "echo-beta", &["beta"])];
    let index = index_of(&mesh, &objects);
    let names: Vec<&str> = index
        .traffic_policies()
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    // mesh.yaml lists alpha, beta, gamma: the directory's, then beta's, then gamma's.
    assert_eq!(names, ["echo", "echo-beta", "echo-gamma"]);
    let caller = ClusterId::new("alpha").expect("id");
    let applied = TrafficPolicy::select(
        index.traffic_policies(),
        &ServiceKey::new("demo", "echo"),
        &caller,
    )
    .expect("a policy");
    assert_eq!(applied.name, "echo", "the mesh directory's comes first");
    let got: Vec<(String, u32)> = echo_port(&index)
        .endpoints()
        .map(|e| (e.cluster.to_string(), e.priority))
        .collect();
    assert!(got.iter().any(|(c, p)| c == "gamma" && *p == 0), "{got:?}");

    let diagnostics = check_mesh(&mesh, &objects, &index);
    let conflicts: Vec<_> = diagnostics
        .iter()
        .filter(|d| d.field.as_deref() == Some("spec.callers"))
        .collect();
    assert_eq!(conflicts.len(), 2, "{diagnostics:#?}");
    for (d, name) in conflicts.iter().zip(["echo-beta", "echo-gamma"]) {
        assert_eq!(d.severity, Severity::Error);
        assert_eq!(
            d.object.as_deref(),
            Some(format!("TrafficPolicy demo/{name}").as_str())
        );
        assert_eq!(d.line, None, "a custom resource has no line");
        assert!(
            d.message
                .contains("TrafficPolicy demo/echo at policies/echo.yaml")
                && d.message.contains("this one does not apply"),
            "{}",
            d.message
        );
    }
}

#[test]
fn the_same_policy_rolled_out_to_every_cluster_is_one_policy() {
    let (mesh, mut objects) = objects_with(
        "gamma",
        vec![from_cluster("gamma", "echo", &["gamma", "beta"])],
    );
    // One manifest applied to beta and gamma alike: the same name and spec, read twice.
    let beta = ClusterId::new("beta").expect("id");
    objects.get_mut(&beta).expect("beta").traffic_policies =
        vec![from_cluster("beta", "echo", &["gamma", "beta"])];
    let index = index_of(&mesh, &objects);
    assert_eq!(index.traffic_policies().len(), 1, "one policy");
    let diagnostics = check_mesh(&mesh, &objects, &index);
    assert!(
        diagnostics
            .iter()
            .all(|d| d.severity != Severity::Error || !d.message.contains("TrafficPolicy")),
        "{diagnostics:#?}"
    );
    assert!(
        diagnostics
            .iter()
            .all(|d| d.object.as_deref() != Some("TrafficPolicy demo/echo")),
        "{diagnostics:#?}"
    );

    // The same name with another spec is still a conflict.
    objects.get_mut(&beta).expect("beta").traffic_policies =
        vec![from_cluster("beta", "echo", &["beta", "gamma"])];
    let index = index_of(&mesh, &objects);
    assert_eq!(index.traffic_policies().len(), 2);
    let diagnostics = check_mesh(&mesh, &objects, &index);
    assert!(
        diagnostics.iter().any(|d| d.severity == Severity::Error
            && d.message
                .starts_with("duplicate object; first declared at kubernetes:beta")),
        "{diagnostics:#?}"
    );
}
