//! A blue-green switch across clusters under load (issue 12): a `TrafficPolicy` routes echo's
//! requests 100/0 to beta, then the file changes to 0/100 (gamma) while a client sends at a
//! fixed rate. No request fails, and within a second of the change every request is answered
//! by gamma — on Causeway's data plane and on Envoy, asserting which cluster answered.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use causeway_e2e::*;

const CLIENT: &str = "alpha-client-sidecar";
/// One request every this long, on a new connection each.
const PERIOD: Duration = Duration::from_millis(10);
/// Load before the switch, and after it.
const BEFORE: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_secs(5);
/// At most this many requests in all (the load is bounded in count and in time).
const MAX_REQUESTS: usize = 1_500;

fn write_routes(mesh_dir: &Path, beta: u32, gamma: u32) {
    std::fs::create_dir_all(mesh_dir.join("policies")).expect("mkdir");
    let text = format!(
        "apiVersion: causeway.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  service: echo\n  callers: {{clusters: [alpha]}}\n  routes:\n  - {{cluster: beta, weight: {beta}}}\n  - {{cluster: gamma, weight: {gamma}}}\n"
    );
    // Written whole and renamed over the old file, as an editor or a deploy tool does.
    let tmp = mesh_dir.join("policies/.echo.yaml.tmp");
    std::fs::write(&tmp, text).expect("write policy");
    std::fs::rename(&tmp, mesh_dir.join("policies/echo.yaml")).expect("rename policy");
}

/// One request of the load: when it started, and which cluster answered (or the error).
struct Sample {
    at: Instant,
    answer: Result<String, String>,
}

/// Calls `addr` every [`PERIOD`] until `until` (or [`MAX_REQUESTS`]).
fn load(addr: SocketAddr, until: Instant) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut next = Instant::now();
    while Instant::now() < until && out.len() < MAX_REQUESTS {
        let at = Instant::now();
        let answer = call(addr).map(|v| v["cluster"].as_str().unwrap_or("?").to_owned());
        out.push(Sample { at, answer });
        next += PERIOD;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    out
}

fn blue_green(data_plane: &str, port_base: u16) {
    let _guard = mesh_lock();
    // Not `start_on`: its warm-up waits for alpha's own echo, which the routes leave out.
    let dir = tempfile::tempdir().expect("tmp");
    let mesh_dir = dir.path().join("mesh");
    copy_dir(&workspace().join("examples/three-clusters"), &mesh_dir);
    write_routes(&mesh_dir, 100, 0);
    let mesh = MeshRun::launch_with(
        dir,
        mesh_dir.clone(),
        port_base,
        &[],
        &[],
        &["--data-plane", data_plane],
    );
    let echo = mesh.outbound(CLIENT, "demo/echo").expect("echo listener");
    let blue = wait_for(Duration::from_secs(30), || {
        call(echo)
            .ok()
            .filter(|v| v["cluster"] == "beta")
            .map(|_| ())
    });
    assert!(blue.is_some(), "beta never answered");

    let start = Instant::now();
    let load = std::thread::spawn(move || load(echo, start + BEFORE + AFTER));
    std::thread::sleep(BEFORE);
    let switched = Instant::now();
    write_routes(&mesh_dir, 0, 100);
    let samples = load.join().expect("load thread");

    let failed: Vec<String> = samples
        .iter()
        .filter_map(|s| {
            let e = s.answer.as_ref().err()?;
            let when = match s.at.checked_duration_since(switched) {
                Some(d) => format!("{d:?} after the change"),
                None => format!("{:?} before the change", switched - s.at),
            };
            Some(format!("{e} ({when})"))
        })
        .collect();
    let before: Vec<&Sample> = samples.iter().filter(|s| s.at < switched).collect();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= switched).collect();
    let answered = |set: &[&Sample], cluster: &str| {
        set.iter()
            .filter(|s| s.answer.as_deref() == Ok(cluster))
            .count()
    };
    // From the change until the last request beta answered (0 if none did after it).
    let moved_in = after
        .iter()
        .filter(|s| s.answer.as_deref() == Ok("beta"))
        .map(|s| s.at - switched)
        .max()
        .unwrap_or_default();
    eprintln!(
        "{data_plane}: {} requests ({} before the switch: {} beta; {} after: {} beta, {} gamma), \
         {} failed; the share moved {:?} after the file change",
        samples.len(),
        before.len(),
        answered(&before, "beta"),
        after.len(),
        answered(&after, "beta"),
        answered(&after, "gamma"),
        failed.len(),
        moved_in,
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
    assert!(before.len() > 100 && after.len() > 100, "too little load");
    assert_eq!(answered(&before, "beta"), before.len(), "blue is beta");
    assert!(moved_in < Duration::from_secs(1), "moved in {moved_in:?}");
    let settled: Vec<&&Sample> = after
        .iter()
        .filter(|s| s.at >= switched + Duration::from_secs(1))
        .collect();
    assert!(!settled.is_empty());
    assert!(
        settled.iter().all(|s| s.answer.as_deref() == Ok("gamma")),
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
