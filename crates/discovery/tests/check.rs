//! `causeway check` rules over built meshes.

mod common;

use causeway_discovery::{check_mesh, Diagnostic, Severity};
use common::*;

const FIELD: &str = "metadata.annotations[causeway.io/service-account]";

fn identity_warnings(m: &MeshBuilder) -> Vec<Diagnostic> {
    check_mesh(&m.config, &m.objects, &m.index())
        .into_iter()
        .filter(|d| d.field.as_deref() == Some(FIELD))
        .collect()
}

#[test]
fn service_port_with_endpoints_without_identity_is_warned_about() {
    let m = mesh()
        .cluster("a", "net1", "r1/z1", &[])
        .service("a", "shop", "legacy", &[80, 81])
        .slice(
            "a",
            "shop",
            "legacy",
            "legacy-80",
            80,
            None,
            &[
                ("10.0.1.1", "l-1", None),
                ("10.0.1.2", "l-2", Some("legacy")),
            ],
        )
        .slice(
            "a",
            "shop",
            "legacy",
            "legacy-80-more",
            80,
            None,
            &[("10.0.1.3", "l-3", None)],
        )
        .slice(
            "a",
            "shop",
            "legacy",
            "legacy-81",
            81,
            None,
            &[("10.0.1.1", "l-1", None)],
        );
    let warnings = identity_warnings(&m);
    // One warning per Service port, at the first slice, naming every slice that holds them.
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    let w80 = &warnings[0];
    assert_eq!(w80.severity, Severity::Warning);
    assert_eq!(w80.object.as_deref(), Some("EndpointSlice shop/legacy-80"));
    assert_eq!(
        w80.file.as_deref(),
        Some(std::path::Path::new("clusters/a/legacy-80.yaml"))
    );
    assert_eq!(w80.line, Some(3));
    for needle in [
        "Service shop/legacy port 80 (p80) in cluster a",
        "2 endpoint(s) have no known identity (10.0.1.1:8080, 10.0.1.3:8080)",
        "EndpointSlice shop/legacy-80, shop/legacy-80-more",
        "never reached over mesh mTLS",
        "causeway.io/service-account",
    ] {
        assert!(
            w80.message.contains(needle),
            "{needle:?} not in {}",
            w80.message
        );
    }
    assert!(!w80.message.contains("10.0.1.2"), "{}", w80.message);
    let w81 = &warnings[1];
    assert_eq!(w81.object.as_deref(), Some("EndpointSlice shop/legacy-81"));
    assert!(
        w81.message.contains("port 81 (p81)") && w81.message.contains("10.0.1.1:8081"),
        "{}",
        w81.message
    );
}

#[test]
fn endpoints_with_an_identity_are_not_warned_about() {
    let m = mesh()
        .cluster("a", "net1", "r1/z1", &[])
        .service("a", "shop", "echo", &[80])
        .workload("a", "shop", "e-1", "10.0.0.1", "echo")
        .slice(
            "a",
            "shop",
            "echo",
            "annotated",
            80,
            Some("legacy"),
            &[("10.0.1.1", "l-1", None)],
        )
        .slice(
            "a",
            "shop",
            "echo",
            "pods",
            80,
            None,
            &[("10.0.1.2", "p-1", Some("echo"))],
        );
    assert_eq!(identity_warnings(&m), Vec::<Diagnostic>::new());
}
