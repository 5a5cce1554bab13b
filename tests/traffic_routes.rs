//! A blue-green switch across clusters under load (issue 12): a `TrafficPolicy` routes echo's
//! requests 100/0 to beta, then the file changes to 0/100 (gamma) while a client sends at a
//! fixed rate. No request fails, and within a second of the change every request is answered
//! by gamma — on Causeway's data plane and on Envoy, asserting which cluster answered.

use std::path::Path;
use std::time::{Duration, Instant};

use causeway_e2e::load::{answered_after, fixed_rate, shift, Sample};
use causeway_e2e::*;

const CLIENT: &str = "alpha-client-sidecar";
/// A new request this often, each on its own connection.
const PERIOD: Duration = Duration::from_millis(10);
/// Load before the switch, and after it.
const BEFORE: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_secs(5);
/// At most this many requests in all (the load is bounded in count and in time).
const MAX_REQUESTS: usize = 1_500;

fn write_routes(mesh_dir: &Path, beta: u32, gamma: u32) {
    write_echo_policy(
        mesh_dir,
        &format!(
            "  callers: {{clusters: [alpha]}}\n  routes:\n  - {{cluster: beta, weight: {beta}}}\n  - {{cluster: gamma, weight: {gamma}}}\n"
        ),
    );
}

fn blue_green(data_plane: &str, port_base: u16) {
    let _guard = mesh_lock();
    // Not `start_on`: its warm-up waits for alpha's own echo, which the routes leave out.
    let mesh = MeshRun::start_cold(data_plane, "three-clusters", port_base, |dir| {
        write_routes(dir, 100, 0)
    });
    let echo = mesh.outbound(CLIENT, "demo/echo").expect("echo listener");
    assert!(
        wait_answered_by(echo, "beta", Duration::from_secs(30)),
        "beta never answered"
    );

    let start = Instant::now();
    let load = std::thread::spawn(move || fixed_rate(echo, PERIOD, BEFORE + AFTER, MAX_REQUESTS));
    std::thread::sleep(BEFORE);
    let switched = start.elapsed();
    write_routes(&mesh.mesh_dir, 0, 100);
    let samples = load.join().expect("load thread");

    // Only which cluster answers matters here, not how long it took.
    let s = shift(&samples, switched, "beta", "gamma", Duration::MAX);
    let failed = &s.failed;
    let before: Vec<&Sample> = samples.iter().filter(|x| x.at < switched).collect();
    let beta_before = before
        .iter()
        .filter(|x| x.answer.as_deref() == Ok("beta"))
        .count();
    let moved_in = s.shifted;
    eprintln!(
        "{data_plane}: {} requests ({} before the switch: {beta_before} beta; {} after: {} beta, \
         {} gamma), {} failed; the share moved {moved_in:?} after the file change",
        samples.len(),
        before.len(),
        s.after,
        answered_after(&samples, switched, "beta"),
        answered_after(&samples, switched, "gamma"),
        failed.len(),
    );
    if !failed.is_empty() {
        let admin = mesh.admin(CLIENT);
        for path in ["/stats", "/clusters"] {
            if let Ok((_, text)) = http_get(admin, path) {
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        l.contains("all.gamma") && !l.ends_with(": 0") && !l.ends_with("::0")
                    })
                    .collect();
                eprintln!("{CLIENT} {path}:\n{}", lines.join("\n"));
            }
        }
    }
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    // What the control plane says the client sees: the policy and each route's share.
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
        &mesh.debug.to_string(),
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("demo/echo:80 TrafficPolicy demo/echo (Locality)"),
        "{table}"
    );
    assert!(table.contains("route all.beta 0% -> "), "{table}");
    assert!(table.contains("route all.gamma 100% -> "), "{table}");
    assert!(before.len() > 100 && s.after > 100, "too little load");
    assert_eq!(beta_before, before.len(), "blue is beta");
    assert!(moved_in < Duration::from_secs(1), "moved in {moved_in:?}");
    let settled: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.at >= switched + Duration::from_secs(1))
        .collect();
    assert!(!settled.is_empty());
    assert!(
        settled.iter().all(|x| x.answer.as_deref() == Ok("gamma")),
        "green is gamma a second after the change"
    );
}

#[test]
fn a_blue_green_switch_under_load_fails_no_request_on_causeway() {
    blue_green("causeway", 17000);
}

#[test]
fn a_blue_green_switch_under_load_fails_no_request_on_envoy() {
    blue_green("envoy", 17300);
}
