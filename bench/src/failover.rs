//! Failover: how long a dead east-west gateway keeps receiving traffic. The example mesh runs
//! with a `FailOver` policy for gamma's callers (echo in alpha first, through alpha's gateway on
//! another network; beta second); a client sends GET / to gamma's greeter sidecar at a fixed
//! rate (each request on its own connection) while alpha's gateway freezes (SIGSTOP: sockets
//! stay open and nothing answers, what callers see of a hung host or a black-holed network).
//!
//! Per data plane and round it prints the time from the fault until no request went to the
//! dead path first (the last request that was slow, over 150 ms, or answered by alpha), and
//! the failed requests; then the median against the goal of 1 s. Both data planes run the
//! same policy, with `perTryTimeout: 1s` (Envoy needs it to retry requests caught in flight on
//! the dead path; the Causeway proxy cuts those connections itself).
//!
//! Run: `make bench-failover`, or `cargo build --release -p causeway -p causeway-bench` and
//! `./target/release/failover [--rounds N] [--data-planes envoy,causeway] [--json FILE]`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use causeway_bench::demo_mesh::{causeway_bin, copy_tree, envoy_bin, workspace, DemoMesh};
use serde_json::json;

const CALLER: &str = "gamma-greeter-gamma-1-sidecar";
const DEAD: &str = "alpha-gateway-0";
/// A new request this often; load before and after the fault.
const PERIOD: Duration = Duration::from_millis(10);
const BEFORE: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(5);
/// A request slower than this went to the dead path first.
const SLOW: Duration = Duration::from_millis(150);
/// The goal for the shift.
const GOAL: Duration = Duration::from_secs(1);

const POLICY: &str = "apiVersion: causeway.io/v1alpha1
kind: TrafficPolicy
metadata: {name: echo, namespace: demo}
spec:
  service: echo
  callers: {clusters: [gamma]}
  mode: FailOver
  clusters:
  - {name: alpha}
  - {name: beta}
  retries: {attempts: 2, perTryTimeout: 1s}
";

struct Flags {
    rounds: usize,
    data_planes: Vec<String>,
    json: Option<std::path::PathBuf>,
}

fn flags() -> anyhow::Result<Flags> {
    let mut f = Flags {
        rounds: 3,
        data_planes: vec!["envoy".into(), "causeway".into()],
        json: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).context("flags take a value")?;
        match pair[0].as_str() {
            "--rounds" => f.rounds = v.parse::<usize>()?.clamp(1, 20),
            "--data-planes" => f.data_planes = v.split(',').map(str::to_owned).collect(),
            "--json" => f.json = Some(v.into()),
            other => bail!("unknown flag {other} (--rounds, --data-planes, --json)"),
        }
    }
    Ok(f)
}

/// One round's figures.
struct Round {
    data_plane: String,
    requests: usize,
    failed: usize,
    shifted: Duration,
}

struct Sample {
    at: Duration,
    took: Duration,
    answer: Option<String>,
}

/// One blocking GET / on a new connection: which cluster answered, if any.
fn call(addr: SocketAddr) -> Option<String> {
    let body = causeway_bench::demo_mesh::http_get(addr, "/")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["cluster"].as_str().map(str::to_owned)
}

/// GET / every [`PERIOD`] for `length`, each on its own thread (bounded: one per period).
fn load(addr: SocketAddr, length: Duration) -> Vec<Sample> {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut sent = 0u32;
    while start.elapsed() < length {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let at = start.elapsed();
            let answer = call(addr);
            let _ = tx.send(Sample {
                at,
                took: start.elapsed() - at,
                answer,
            });
        });
        sent += 1;
        if let Some(wait) = (start + PERIOD * sent).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    drop(tx);
    rx.iter().collect()
}

fn round(bin: &Path, envoy: &Path, data_plane: &str, index: usize) -> anyhow::Result<Round> {
    let run_dir = std::env::temp_dir().join(format!(
        "causeway-failover-{}-{data_plane}-{index}",
        std::process::id()
    ));
    let mesh_dir = run_dir.join("mesh");
    copy_tree(&workspace().join("examples/three-clusters"), &mesh_dir)?;
    std::fs::create_dir_all(mesh_dir.join("policies"))?;
    std::fs::write(mesh_dir.join("policies/echo.yaml"), POLICY)?;
    let plan = DemoMesh::plan_with(
        bin,
        envoy,
        &mesh_dir,
        &run_dir,
        32000,
        &["--data-plane", data_plane],
    )?;
    let mesh = DemoMesh::start(bin, plan, &run_dir)?;
    mesh.wait_synced(Duration::from_secs(90))?;
    let echo = mesh.outbound(CALLER, "demo/echo")?;
    // Steady state: alpha answers, and keeps answering for a second (health checks settled).
    let start = Instant::now();
    let mut steady_since = None;
    while steady_since.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(1)) {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{data_plane}: alpha never answered steadily through its gateway");
        }
        match call(echo).as_deref() {
            Some("alpha") => {
                steady_since.get_or_insert_with(Instant::now);
            }
            _ => steady_since = None,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let loader = std::thread::spawn(move || load(echo, BEFORE + AFTER));
    std::thread::sleep(BEFORE);
    mesh.signal(DEAD, "STOP")?;
    let samples = loader
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
    mesh.signal(DEAD, "CONT")?;
    drop(mesh);
    let _ = std::fs::remove_dir_all(&run_dir);
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= BEFORE).collect();
    let shifted = after
        .iter()
        .filter(|s| s.took > SLOW || s.answer.as_deref() == Some("alpha"))
        .map(|s| s.at - BEFORE)
        .max()
        .unwrap_or_default();
    Ok(Round {
        data_plane: data_plane.to_owned(),
        requests: samples.len(),
        failed: samples.iter().filter(|s| s.answer.is_none()).count(),
        shifted,
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let flags = flags()?;
    let bin = causeway_bin()?;
    let envoy = envoy_bin()?;
    let mut rounds = Vec::new();
    println!(
        "{:<10} {:>5} {:>9} {:>7} {:>11}",
        "data plane", "round", "requests", "failed", "shifted ms"
    );
    for data_plane in &flags.data_planes {
        for i in 0..flags.rounds {
            let r = round(&bin, &envoy, data_plane, i)?;
            println!(
                "{:<10} {:>5} {:>9} {:>7} {:>11.0}",
                r.data_plane,
                i + 1,
                r.requests,
                r.failed,
                r.shifted.as_secs_f64() * 1e3
            );
            rounds.push(r);
        }
    }
    let mut summary = Vec::new();
    println!(
        "\n{:<10} {:>18} {:>12} {:>7}",
        "data plane", "median shifted ms", "goal ms", "failed"
    );
    for data_plane in &flags.data_planes {
        let mine: Vec<&Round> = rounds
            .iter()
            .filter(|r| &r.data_plane == data_plane)
            .collect();
        let m = median(mine.iter().map(|r| r.shifted).collect());
        let failed: usize = mine.iter().map(|r| r.failed).sum();
        println!(
            "{:<10} {:>18.0} {:>12.0} {:>7}",
            data_plane,
            m.as_secs_f64() * 1e3,
            GOAL.as_secs_f64() * 1e3,
            failed
        );
        summary.push(json!({
            "dataPlane": data_plane,
            "medianShiftedMs": m.as_secs_f64() * 1e3,
            "goalMs": GOAL.as_secs_f64() * 1e3,
            "failed": failed,
            "rounds": mine.iter().map(|r| json!({
                "requests": r.requests,
                "failed": r.failed,
                "shiftedMs": r.shifted.as_secs_f64() * 1e3,
            })).collect::<Vec<_>>(),
        }));
    }
    if let Some(path) = &flags.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json!({ "failover": summary }))?,
        )?;
    }
    Ok(())
}
