//! The control plane over a real mesh directory: views change when files change, a broken file
//! is reported while the last good view keeps being served, and `check`/`proxy-config` work
//! against it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use causeway_e2e::*;
use serde_json::Value;

fn start_example() -> ControlPlane {
    ControlPlane::start("three-clusters", &[])
}

fn echo_endpoints(addr: SocketAddr) -> Vec<Value> {
    let view = get_json(
        addr,
        "/debug/view?cluster=alpha&namespace=demo&workload=client&service=demo/echo",
    );
    view["services"][0]["ports"][0]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn gateway_weight(eps: &[Value]) -> Option<u64> {
    eps.iter()
        .find(|e| e["kind"] == "gateway")
        .and_then(|e| e["weight"].as_u64())
}

const EXTRA_ECHO: &str = "
---
apiVersion: causeway.io/v1alpha1
kind: WorkloadEntry
metadata:
  name: echo-gamma-2
  namespace: demo
spec:
  address: 127.3.0.21
  labels:
    app: echo
  serviceAccount: echo
  ports:
    http: 8080
";

#[test]
fn view_follows_file_edits_and_survives_a_broken_file() {
    let cp = start_example();
    let eps = echo_endpoints(cp.debug);
    // alpha's client: two direct endpoints on net-a, gamma's behind its gateway.
    let kinds: Vec<(&str, &str, &str)> = eps
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or(""),
                e["cluster"].as_str().unwrap_or(""),
                e["address"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("direct", "alpha", "127.1.0.11")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("direct", "beta", "127.2.0.11")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("gateway", "gamma", "127.3.255.1")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("remote", "gamma", "127.3.0.11")),
        "{kinds:?}"
    );
    for e in &eps {
        for field in [
            "address", "port", "cluster", "network", "locality", "priority", "weight", "via",
            "reason",
        ] {
            assert!(e.get(field).is_some(), "endpoint lacks {field}: {e}");
        }
    }
    assert_eq!(gateway_weight(&eps), Some(1));

    // Add a second gamma replica: the gateway's weight becomes 2 within a second.
    let gamma = cp.mesh_dir.join("clusters/gamma/workloads.yaml");
    let original = std::fs::read_to_string(&gamma).expect("read");
    std::fs::write(&gamma, format!("{original}{EXTRA_ECHO}")).expect("write");
    let written = Instant::now();
    let seen = wait_for(Duration::from_secs(5), || {
        (gateway_weight(&echo_endpoints(cp.debug)) == Some(2)).then(Instant::now)
    });
    let seen = seen.unwrap_or_else(|| panic!("view did not change:\n{}", cp.process.log_text()));
    assert!(
        seen - written <= Duration::from_secs(1),
        "change took {:?}",
        seen - written
    );

    // Break the file: the error is reported with file, line and field, and the last good view
    // (weight 2) is still served.
    std::fs::write(&gamma, format!("{original}{EXTRA_ECHO}  weight: many\n")).expect("write");
    let errors = wait_for(Duration::from_secs(5), || {
        let errs = get_json(cp.debug, "/debug/errors");
        errs["errors"].as_array().filter(|a| !a.is_empty()).cloned()
    })
    .unwrap_or_else(|| panic!("no error reported:\n{}", cp.process.log_text()));
    assert_eq!(errors.len(), 1, "{errors:?}");
    let err = &errors[0];
    assert_eq!(err["file"], "clusters/gamma/workloads.yaml");
    assert_eq!(err["field"], "spec.weight");
    assert!(err["line"].as_u64().is_some_and(|l| l > 100), "{err}");
    assert_eq!(
        gateway_weight(&echo_endpoints(cp.debug)),
        Some(2),
        "last good view kept"
    );
    let clusters = get_json(cp.debug, "/debug/clusters");
    let gamma_row = clusters
        .as_array()
        .and_then(|a| a.iter().find(|c| c["id"] == "gamma"))
        .cloned()
        .expect("gamma");
    assert_eq!(gamma_row["synced"], true);
    assert_eq!(gamma_row["errors"].as_array().map(Vec::len), Some(1));
    let alpha_row = clusters
        .as_array()
        .and_then(|a| a.iter().find(|c| c["id"] == "alpha"))
        .cloned()
        .expect("alpha");
    assert_eq!(
        alpha_row["errors"].as_array().map(Vec::len),
        Some(0),
        "other clusters unaffected"
    );
    assert!(
        cp.process.log_text().contains("spec.weight"),
        "the log names the field"
    );

    // Other clusters keep changing while gamma is broken.
    let alpha = cp.mesh_dir.join("clusters/alpha/workloads.yaml");
    let alpha_text = std::fs::read_to_string(&alpha).expect("read");
    std::fs::write(
        &alpha,
        alpha_text.replace("address: 127.1.0.11", "address: 127.1.0.12"),
    )
    .expect("write");
    let moved = wait_for(Duration::from_secs(5), || {
        echo_endpoints(cp.debug)
            .iter()
            .any(|e| e["address"] == "127.1.0.12")
            .then_some(())
    });
    assert!(
        moved.is_some(),
        "alpha change not applied while gamma is broken"
    );

    // Repair: the error clears.
    std::fs::write(&gamma, original).expect("write");
    let cleared = wait_for(Duration::from_secs(5), || {
        (get_json(cp.debug, "/debug/errors")["errors"]
            .as_array()
            .map(Vec::len)
            == Some(0))
        .then_some(())
    });
    assert!(cleared.is_some());
    assert_eq!(gateway_weight(&echo_endpoints(cp.debug)), Some(1));
}

#[test]
fn services_imports_and_proxy_config_table() {
    let cp = start_example();
    let services = get_json(cp.debug, "/debug/services");
    let echo = services
        .as_array()
        .and_then(|a| a.iter().find(|s| s["service"] == "demo/echo"))
        .cloned()
        .expect("echo");
    let exporters: Vec<&str> = echo["exports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["cluster"].as_str())
        .collect();
    assert_eq!(
        exporters,
        vec!["alpha", "beta", "gamma"],
        "oldest export first"
    );
    assert_eq!(echo["conditions"][0]["type"], "Valid");
    let imports = get_json(cp.debug, "/debug/imports?cluster=gamma");
    let names: Vec<&str> = imports
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["key"]["name"].as_str())
        .collect();
    assert!(
        names.contains(&"echo") && !names.contains(&"legacy"),
        "legacy is exported to alpha only: {names:?}"
    );

    let out = run(&[
        "proxy-config",
        "endpoints",
        "--cluster",
        "alpha",
        "--namespace",
        "demo",
        "--workload",
        "client",
        "--control-plane",
        &cp.debug.to_string(),
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("SERVICE"), "{table}");
    let gateway_row = table
        .lines()
        .find(|l| l.contains("demo/greeter") && l.contains(" gateway "))
        .expect("greeter via gateway");
    assert!(gateway_row.contains("127.3.255.1:15443"), "{gateway_row}");
    assert!(
        table.contains("demo/ledger in cluster gamma: not exported"),
        "{table}"
    );

    let out = run(&[
        "proxy-config",
        "endpoints",
        "--cluster",
        "nowhere",
        "-o",
        "json",
        "--control-plane",
        &cp.debug.to_string(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nowhere"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_accepts_the_example_and_lists_every_error() {
    let out = run(&[
        "check",
        workspace()
            .join("examples/three-clusters")
            .to_str()
            .expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("clusters/a")).expect("mkdir");
    std::fs::create_dir_all(root.join("clusters/b")).expect("mkdir");
    std::fs::create_dir_all(root.join("clusters/ghost")).expect("mkdir");
    std::fs::write(
        root.join("mesh.yaml"),
        "apiVersion: causeway.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: td}\n---\n\
apiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {name: a}\nspec: {network: n1, locality: r/z, gateways: [{address: 127.0.0.9, port: 15443}]}\n---\n\
apiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {name: b}\nspec: {network: n2, locality: r/z}\n",
    )
    .expect("write");
    let svc = |port_name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  selector: {{app: web}}\n  ports: [{{name: {port_name}, port: 80}}]\n---\n\
apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {{name: web, namespace: shop, annotations: {{causeway.io/export-to: \"a,zz\"}}}}\n---\n\
apiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: w1, namespace: shop}}\nspec: {{address: 10.0.0.1, labels: {{app: wbe}}, network: n9}}\n"
        )
    };
    std::fs::write(root.join("clusters/a/web.yaml"), svc("http")).expect("write");
    std::fs::write(root.join("clusters/b/web.yaml"), svc("grpc")).expect("write");
    let out = run(&["check", root.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    for expected in [
        "unknown cluster \"ghost\"",           // directory without a Cluster
        "network n2 has no east-west gateway", // multi-network cluster without a gateway
        "unknown network n9",                  // WorkloadEntry on an undeclared network
        "unknown cluster zz",                  // export-to names an unknown cluster
        "selects nothing",                     // selector matches no workload
        "export conflict (PortConflict)",      // a and b disagree on port 80
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(
        text.contains("clusters/a/web.yaml:1: Service shop/web: field spec.selector"),
        "{text}"
    );

    // Duplicate cluster ids and a parse error are load errors with file and line.
    std::fs::write(
        root.join("mesh.yaml"),
        "apiVersion: causeway.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: td}\n---\n\
apiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {name: a}\nspec: {network: n1, locality: r/z}\n---\n\
apiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {name: a}\nspec: {network: n1, locality: r/z}\n",
    )
    .expect("write");
    let out = run(&["check", root.to_str().expect("utf-8"), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let findings: Value = serde_json::from_slice(&out.stdout).expect("json");
    let dup = findings
        .as_array()
        .and_then(|a| {
            a.iter().find(|f| {
                f["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("duplicate cluster id"))
            })
        })
        .cloned()
        .expect("duplicate reported");
    assert_eq!(dup["file"], "mesh.yaml");
    assert_eq!(dup["line"], 11);
}
