//! `TrafficPolicy` with real traffic through a whole mesh (issue 12): `ActiveActive` splits the
//! example's echo 70/30 between two clusters, `FailOver` sends everything to the first listed
//! cluster, moves to the second when the first's endpoints stop and comes back when they
//! return — on Causeway's data plane and on Envoy, asserting which cluster answered.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use causeway_e2e::*;

const CLIENT: &str = "alpha-client-sidecar";

/// The policy for alpha's callers of echo.
fn write_policy(mesh_dir: &Path, spec: &str) {
    write_echo_policy(
        mesh_dir,
        &format!("  callers: {{clusters: [alpha]}}\n{spec}"),
    );
}

/// Which cluster answered each of `n` calls (a new connection each), and the failures.
fn clusters_answering(addr: std::net::SocketAddr, n: usize) -> (BTreeMap<String, usize>, usize) {
    let mut by = BTreeMap::new();
    let mut failed = 0;
    for _ in 0..n {
        match call(addr) {
            Ok(v) => {
                *by.entry(v["cluster"].as_str().unwrap_or("?").to_owned())
                    .or_default() += 1
            }
            Err(_) => failed += 1,
        }
    }
    eprintln!("{n} calls: {by:?}, {failed} failed");
    (by, failed)
}

fn active_active(data_plane: &str, port_base: u16) {
    let _guard = mesh_lock();
    let mesh = MeshRun::start_on(
        data_plane,
        "three-clusters",
        port_base,
        |dir| {
            write_policy(
                dir,
                "  mode: ActiveActive\n  clusters:\n  - {name: alpha, weight: 70}\n  - {name: gamma, weight: 30}\n",
            )
        },
        &[],
    );
    let echo = mesh.outbound(CLIENT, "demo/echo").expect("echo listener");
    // Warm: both clusters answer once the gateway path is up.
    let both = wait_for(Duration::from_secs(20), || {
        let (by, _) = clusters_answering(echo, 20);
        (by.contains_key("alpha") && by.contains_key("gamma")).then_some(())
    });
    assert!(both.is_some(), "alpha and gamma never both answered");
    let (by, failed) = clusters_answering(echo, 500);
    assert_eq!(failed, 0, "{by:?}");
    let alpha = by.get("alpha").copied().unwrap_or(0) as f64 / 500.0;
    assert!(
        (0.6..=0.8).contains(&alpha),
        "alpha's share {alpha}: {by:?}"
    );
    assert_eq!(by.get("beta"), None, "beta is not listed: {by:?}");
}

#[test]
fn active_active_splits_70_30_on_causeway() {
    active_active("causeway", 20300);
}

#[test]
fn active_active_splits_70_30_on_envoy() {
    active_active("envoy", 20600);
}

fn fail_over(data_plane: &str, port_base: u16) {
    let _guard = mesh_lock();
    // Not `start_on`: its warm-up waits for alpha's own echo, which this policy leaves out.
    let mut mesh = MeshRun::start_cold(data_plane, "three-clusters", port_base, |dir| {
        write_policy(
            dir,
            "  mode: FailOver\n  clusters:\n  - {name: beta}\n  - {name: gamma}\n",
        )
    });
    let echo = mesh.outbound(CLIENT, "demo/echo").expect("echo listener");
    // The first choice takes everything, though alpha's own echo is nearer.
    assert!(
        wait_answered_by(echo, "beta", Duration::from_secs(20)),
        "beta never answered"
    );
    let (by, failed) = clusters_answering(echo, 50);
    assert_eq!((by.get("beta"), failed), (Some(&50), 0), "{by:?}");
    // beta's endpoints stop: traffic moves to gamma, the second choice.
    mesh.stop("beta-echo-beta-1-app-8080");
    assert!(
        wait_answered_by(echo, "gamma", Duration::from_secs(20)),
        "traffic never moved to gamma"
    );
    let (by, failed) = clusters_answering(echo, 50);
    assert_eq!((by.get("gamma"), failed), (Some(&50), 0), "{by:?}");
    // beta returns: traffic comes back once its ejection ends.
    mesh.restart("beta-echo-beta-1-app-8080");
    assert!(
        wait_answered_by(echo, "beta", Duration::from_secs(40)),
        "traffic never came back to beta"
    );
}

#[test]
fn fail_over_follows_the_listed_order_on_causeway() {
    fail_over("causeway", 20900);
}

#[test]
fn fail_over_follows_the_listed_order_on_envoy() {
    fail_over("envoy", 21600);
}

/// A fourth cluster, delta, in a third region (ap-south) on its own network, with an echo
/// replica: for alpha's client, gamma (eu-west) and delta are both "another region".
fn add_delta(mesh: &Path) {
    let yaml = std::fs::read_to_string(mesh.join("mesh.yaml")).expect("mesh.yaml");
    let yaml = yaml.replace("networks: [net-a, net-b]", "networks: [net-a, net-b, net-c]")
        + "---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: delta\nspec:\n  \
           network: net-c\n  locality: ap-south/ap-south-1a\n  gateways:\n  - address: 127.4.255.1\n    \
           port: 15443\n  gatewayIdentity:\n    serviceAccount: eastwest-gateway\n    credential:\n      \
           tokenFile: tokens/delta/eastwest-gateway.token\n";
    std::fs::write(mesh.join("mesh.yaml"), yaml).expect("mesh.yaml");
    std::fs::create_dir_all(mesh.join("tokens/delta")).expect("tokens");
    for name in ["eastwest-gateway", "echo-delta-1"] {
        std::fs::write(
            mesh.join(format!("tokens/delta/{name}.token")),
            format!("{name}-token-for-the-test\n"),
        )
        .expect("token");
    }
    std::fs::create_dir_all(mesh.join("clusters/delta")).expect("delta");
    std::fs::write(
        mesh.join("clusters/delta/workloads.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo}\nspec:\n  selector: {app: echo}\n  \
         ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]\n---\n\
         apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: echo, namespace: demo}\n---\n\
         apiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata: {name: echo-delta-1, namespace: demo}\n\
         spec:\n  address: 127.4.0.11\n  labels: {app: echo}\n  serviceAccount: echo\n  ports: {http: 8080}\n  \
         credential: {tokenFile: tokens/delta/echo-delta-1.token}\n",
    )
    .expect("delta workloads");
}

fn region_failover(data_plane: &str, port_base: u16) {
    let _guard = mesh_lock();
    let mut mesh = MeshRun::start_on(
        data_plane,
        "three-clusters",
        port_base,
        |dir| {
            add_delta(dir);
            write_policy(dir, "  failover:\n  - {from: us-east, to: ap-south}\n");
        },
        &[],
    );
    let echo = mesh.outbound(CLIENT, "demo/echo").expect("echo listener");
    // us-east's endpoints stop (alpha's and beta's): the named region takes over, although
    // gamma's eu-west is just as far by locality.
    mesh.stop("alpha-echo-alpha-1-app-8080");
    mesh.stop("beta-echo-beta-1-app-8080");
    assert!(
        wait_answered_by(echo, "delta", Duration::from_secs(30)),
        "traffic never reached delta"
    );
    let (by, failed) = clusters_answering(echo, 50);
    assert_eq!((by.get("delta"), failed), (Some(&50), 0), "{by:?}");
}

#[test]
fn region_failover_goes_to_the_named_region_on_causeway() {
    region_failover("causeway", 22600);
}

#[test]
fn region_failover_goes_to_the_named_region_on_envoy() {
    region_failover("envoy", 22900);
}
