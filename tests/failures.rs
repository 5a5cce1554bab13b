//! The failure matrix (docs/failure-modes.md), each row with real traffic, once with every
//! proxy on Envoy and once with every proxy on Causeway's own data plane.

use std::time::Duration;

use causeway_e2e::*;

const CLIENT: &str = "alpha-client-sidecar";
const GREETER: &str = "gamma-greeter-gamma-1-sidecar";

fn proxies(mesh: &MeshRun) -> usize {
    mesh.plan["processes"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter(|s| s["kind"] == "gateway" || s["kind"] == "sidecar")
                .count()
        })
        .unwrap_or(0)
}

fn answered_by(addr: std::net::SocketAddr) -> String {
    call(addr)
        .map(|v| v["cluster"].as_str().unwrap_or("?").to_owned())
        .unwrap_or_else(|e| e)
}

#[test]
fn control_plane_killed_traffic_flows_and_proxies_reconverge_on_envoy() {
    control_plane_killed_traffic_flows_and_proxies_reconverge("envoy", 27000);
}

#[test]
fn control_plane_killed_traffic_flows_and_proxies_reconverge_on_causeway() {
    control_plane_killed_traffic_flows_and_proxies_reconverge("causeway", 27500);
}

fn control_plane_killed_traffic_flows_and_proxies_reconverge(data_plane: &str, port_base: u16) {
    let _guard = mesh_lock();
    let mut mesh = MeshRun::start_on(data_plane, "three-clusters", port_base, |_| {}, &[]);
    let greeter = mesh.outbound(CLIENT, "demo/greeter").expect("listener");
    let echo = mesh.outbound(CLIENT, "demo/echo").expect("listener");
    mesh.stop("control-plane");
    for _ in 0..5 {
        assert_eq!(
            answered_by(greeter),
            "gamma",
            "cross-network traffic on the last config"
        );
        assert_eq!(
            answered_by(echo),
            "alpha",
            "local traffic on the last config"
        );
    }
    // A change made while the control plane is down reaches the proxies once it is back.
    let alpha = mesh.mesh_dir.join("clusters/alpha/workloads.yaml");
    let text = std::fs::read_to_string(&alpha).expect("read");
    std::fs::write(
        &alpha,
        text.replace(
            "name: echo-alpha-1\n  namespace: demo\nspec:\n",
            "name: echo-alpha-1\n  namespace: demo\nspec:\n  health: draining\n",
        ),
    )
    .expect("write");
    mesh.restart("control-plane");
    mesh.wait_in_sync(proxies(&mesh));
    let moved = wait_for(Duration::from_secs(20), || {
        (answered_by(echo) == "beta").then_some(())
    });
    assert!(
        moved.is_some(),
        "the restarted control plane pushed the change (echo-alpha-1 draining)"
    );
}

#[test]
fn broken_cluster_directory_keeps_last_good_endpoints_on_envoy() {
    broken_cluster_directory_keeps_last_good_endpoints("envoy", 28000);
}

#[test]
fn broken_cluster_directory_keeps_last_good_endpoints_on_causeway() {
    broken_cluster_directory_keeps_last_good_endpoints("causeway", 28500);
}

fn broken_cluster_directory_keeps_last_good_endpoints(data_plane: &str, port_base: u16) {
    let _guard = mesh_lock();
    let mesh = MeshRun::start_on(data_plane, "three-clusters", port_base, |_| {}, &[]);
    let greeter = mesh.outbound(CLIENT, "demo/greeter").expect("listener");
    let gamma = mesh.mesh_dir.join("clusters/gamma/workloads.yaml");
    std::fs::write(
        &gamma,
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken\n",
    )
    .expect("write");
    let errors = wait_for(Duration::from_secs(10), || {
        let v = get_json(mesh.debug, "/debug/errors");
        v["errors"].as_array().filter(|e| !e.is_empty()).cloned()
    })
    .expect("the error is visible in the debug API");
    assert_eq!(errors[0]["file"], "clusters/gamma/workloads.yaml");
    for _ in 0..5 {
        assert_eq!(
            answered_by(greeter),
            "gamma",
            "gamma's last good endpoints keep serving"
        );
    }
    let check = run(&["check", mesh.mesh_dir.to_str().expect("utf-8")]);
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("clusters/gamma/workloads.yaml"));
    assert!(mesh
        .log("control-plane")
        .contains("keeping the cluster's last good state"));
    // Other clusters are unaffected: a change in alpha still applies.
    let alpha = mesh.mesh_dir.join("clusters/alpha/workloads.yaml");
    let text = std::fs::read_to_string(&alpha).expect("read");
    std::fs::write(
        &alpha,
        text.replace(
            "name: echo-alpha-1\n  namespace: demo\nspec:\n",
            "name: echo-alpha-1\n  namespace: demo\nspec:\n  health: draining\n",
        ),
    )
    .expect("write");
    let echo = mesh.outbound(CLIENT, "demo/echo").expect("listener");
    assert!(
        wait_for(Duration::from_secs(10), || (answered_by(echo) == "beta")
            .then_some(()))
        .is_some()
    );
}

#[test]
fn gateway_killed_callers_fail_over_and_local_calls_are_unaffected_on_envoy() {
    gateway_killed_callers_fail_over_and_local_calls_are_unaffected("envoy", 29000);
}

#[test]
fn gateway_killed_callers_fail_over_and_local_calls_are_unaffected_on_causeway() {
    gateway_killed_callers_fail_over_and_local_calls_are_unaffected("causeway", 29500);
}

fn gateway_killed_callers_fail_over_and_local_calls_are_unaffected(
    data_plane: &str,
    port_base: u16,
) {
    let _guard = mesh_lock();
    let mut mesh = MeshRun::start_on(data_plane, "three-clusters", port_base, |_| {}, &[]);
    // From gamma (net-b), echo is local first; without it, alpha and beta (net-a) through their
    // gateways.
    let echo_from_gamma = mesh.outbound(GREETER, "demo/echo").expect("listener");
    assert_eq!(answered_by(echo_from_gamma), "gamma");
    mesh.stop("gamma-echo-gamma-1-app-8080");
    let remote = wait_for(Duration::from_secs(15), || {
        let c = answered_by(echo_from_gamma);
        (c == "alpha" || c == "beta").then_some(c)
    });
    assert!(remote.is_some(), "echo fails over to net-a");
    // alpha's gateway dies: callers in gamma fail over to beta, through beta's gateway.
    mesh.stop("alpha-gateway-0");
    let mut answers = Vec::new();
    let settled = wait_for(Duration::from_secs(20), || {
        let window: Vec<String> = (0..6).map(|_| answered_by(echo_from_gamma)).collect();
        answers = window.clone();
        window.iter().all(|c| c == "beta").then_some(())
    });
    assert!(
        settled.is_some(),
        "callers in gamma did not settle on beta: {answers:?}"
    );
    // Inside alpha nothing changed.
    let echo_in_alpha = mesh.outbound(CLIENT, "demo/echo").expect("listener");
    for _ in 0..5 {
        assert_eq!(answered_by(echo_in_alpha), "alpha");
    }
}

#[test]
fn agent_without_ca_keeps_serving_and_says_so_on_envoy() {
    agent_without_ca_keeps_serving_and_says_so("envoy", 30000);
}

#[test]
fn agent_without_ca_keeps_serving_and_says_so_on_causeway() {
    agent_without_ca_keeps_serving_and_says_so("causeway", 30500);
}

fn agent_without_ca_keeps_serving_and_says_so(data_plane: &str, port_base: u16) {
    let _guard = mesh_lock();
    let mut mesh = MeshRun::start_on(data_plane, "three-clusters", port_base, |_| {}, &[]);
    let greeter = mesh.outbound(CLIENT, "demo/greeter").expect("listener");
    // An agent renewing every 2 s (4 s certificates) loses the CA with the control plane.
    let ca = mesh.plan["ca"].as_str().expect("ca").to_owned();
    let root = mesh.dir.path().join("run/ca/root/root-cert.pem");
    let token = mesh.mesh_dir.join("tokens/alpha/client.token");
    let sock = mesh.dir.path().join("probe.sock");
    let log = mesh.dir.path().join("probe-agent.log");
    let _probe = Process::start(
        &[
            "agent",
            "--ca",
            &ca,
            "--ca-root",
            root.to_str().expect("utf-8"),
            "--token-file",
            token.to_str().expect("utf-8"),
            "--namespace",
            "demo",
            "--service-account",
            "client",
            "--sds-socket",
            sock.to_str().expect("utf-8"),
            "--ttl-seconds",
            "4",
        ],
        &log,
    );
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains("certificate obtained")))
        .is_some()
    );
    mesh.stop("control-plane");
    let logged = wait_for(Duration::from_secs(15), || {
        std::fs::read_to_string(&log).ok().filter(|l| {
            l.contains("certificate renewal failed; the current certificate keeps serving")
        })
    });
    assert!(
        logged.is_some(),
        "the condition is visible in the agent's log"
    );
    // The mesh's own workloads hold 24 h certificates: traffic keeps flowing without the CA.
    for _ in 0..5 {
        assert_eq!(answered_by(greeter), "gamma");
    }
}
