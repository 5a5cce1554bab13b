//! Failover: how long a dead cluster keeps receiving traffic, for two faults.
//! - `partition`: the mesh of `causeway_e2e::partition_mesh`, three clusters in three network
//!   namespaces. A `FailOver` policy sends a's calls to b first, c second. b's veth goes down:
//!   its gateway vanishes from a's network, packets dropped without an answer. Needs root and
//!   iproute2.
//! - `freeze`: the example mesh, with a `FailOver` policy for gamma's callers (echo in alpha
//!   first, through alpha's gateway on another network; beta second). Alpha's gateway freezes
//!   (SIGSTOP: sockets stay open and nothing answers, what callers see of a hung host).
//!
//! In both, a client sends GET / at a fixed rate, each request on its own connection. Per data
//! plane, fault and round it prints the time from the fault until no request went to the dead
//! path first (the last request that was slow, over 150 ms, or answered by the dead cluster),
//! and the failed requests; then the median against the goal of 1 s. Both data planes run the
//! same policy, with `perTryTimeout: 1s` (Envoy needs it to retry requests caught in flight on
//! the dead path; the Causeway proxy cuts those connections itself).
//!
//! Run: `make bench-failover`, or `cargo build --release -p causeway -p causeway-bench` and
//! `./target/release/failover [--rounds N] [--data-planes envoy,causeway]
//! [--faults partition,freeze] [--json FILE]`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use causeway_bench::demo_mesh::{causeway_bin, copy_tree, envoy_bin, workspace, DemoMesh};
use causeway_e2e::load::{fixed_rate, shift, Sample};
use causeway_e2e::netns::enter;
use causeway_e2e::partition_mesh::PartitionMesh;
use serde_json::json;

const CALLER: &str = "gamma-greeter-gamma-1-sidecar";
const FROZEN: &str = "alpha-gateway-0";
/// A new request this often; load before and after the fault.
const PERIOD: Duration = Duration::from_millis(10);
const BEFORE: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(5);
/// Bounds the load: more than BEFORE + AFTER at PERIOD can send.
const MAX_REQUESTS: usize = 1_000;
/// A request slower than this went to the dead path first.
const SLOW: Duration = Duration::from_millis(150);
/// The goal for the shift.
const GOAL: Duration = Duration::from_secs(1);
/// What both faults' policies add to their `FailOver` spec.
const RETRIES: &str = "  retries: {attempts: 2, perTryTimeout: 1s}\n";

const FREEZE_POLICY: &str = "apiVersion: causeway.io/v1alpha1
kind: TrafficPolicy
metadata: {name: echo, namespace: demo}
spec:
  service: echo
  callers: {clusters: [gamma]}
  mode: FailOver
  clusters:
  - {name: alpha}
  - {name: beta}
";

const FAULTS: [&str; 2] = ["partition", "freeze"];

struct Flags {
    rounds: usize,
    data_planes: Vec<String>,
    faults: Vec<String>,
    json: Option<std::path::PathBuf>,
}

fn flags() -> anyhow::Result<Flags> {
    let mut f = Flags {
        rounds: 3,
        data_planes: vec!["envoy".into(), "causeway".into()],
        faults: FAULTS.map(str::to_owned).to_vec(),
        json: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).context("flags take a value")?;
        match pair[0].as_str() {
            "--rounds" => f.rounds = v.parse::<usize>()?.clamp(1, 20),
            "--data-planes" => f.data_planes = v.split(',').map(str::to_owned).collect(),
            "--faults" => f.faults = v.split(',').map(str::to_owned).collect(),
            "--json" => f.json = Some(v.into()),
            other => bail!("unknown flag {other} (--rounds, --data-planes, --faults, --json)"),
        }
    }
    if let Some(bad) = f.faults.iter().find(|x| !FAULTS.contains(&x.as_str())) {
        bail!("unknown fault {bad} (partition, freeze)");
    }
    Ok(f)
}

/// One round's figures.
struct Round {
    data_plane: String,
    fault: String,
    requests: usize,
    failed: usize,
    shifted: Duration,
}

impl Round {
    fn of(data_plane: &str, fault: &str, samples: &[Sample], dead: &str, to: &str) -> Self {
        let s = shift(samples, BEFORE, dead, to, SLOW);
        Self {
            data_plane: data_plane.to_owned(),
            fault: fault.to_owned(),
            requests: samples.len(),
            failed: s.failed.len(),
            shifted: s.shifted,
        }
    }
}

/// A partition round: b's veth goes down under load from a's namespace.
fn partition_round(data_plane: &str, index: usize) -> Round {
    let mesh = PartitionMesh::start(data_plane, RETRIES, &format!("{}{index}", &data_plane[..1]));
    mesh.wait_steady("b");
    let (caller_ns, echo) = (mesh.caller_ns.clone(), mesh.echo);
    let loader = std::thread::spawn(move || {
        enter(&caller_ns);
        fixed_rate(echo, PERIOD, BEFORE + AFTER, MAX_REQUESTS)
    });
    std::thread::sleep(BEFORE);
    mesh.cut();
    let samples = loader.join().unwrap_or_default();
    Round::of(data_plane, "partition", &samples, "b", "c")
}

/// A freeze round: alpha's gateway gets SIGSTOP under load from gamma's greeter sidecar.
fn freeze_round(bin: &Path, envoy: &Path, data_plane: &str, index: usize) -> anyhow::Result<Round> {
    let run_dir = std::env::temp_dir().join(format!(
        "causeway-failover-{}-{data_plane}-{index}",
        std::process::id()
    ));
    let mesh_dir = run_dir.join("mesh");
    copy_tree(&workspace().join("examples/three-clusters"), &mesh_dir)?;
    std::fs::create_dir_all(mesh_dir.join("policies"))?;
    std::fs::write(
        mesh_dir.join("policies/echo.yaml"),
        format!("{FREEZE_POLICY}{RETRIES}"),
    )?;
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
        match causeway_e2e::call(echo) {
            Ok(v) if v["cluster"] == "alpha" => {
                steady_since.get_or_insert_with(Instant::now);
            }
            _ => steady_since = None,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let loader = std::thread::spawn(move || fixed_rate(echo, PERIOD, BEFORE + AFTER, MAX_REQUESTS));
    std::thread::sleep(BEFORE);
    mesh.signal(FROZEN, "STOP")?;
    let samples = loader.join().unwrap_or_default();
    mesh.signal(FROZEN, "CONT")?;
    drop(mesh);
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(Round::of(data_plane, "freeze", &samples, "alpha", "beta"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let flags = flags()?;
    let bin = causeway_bin()?;
    let envoy = envoy_bin()?;
    // The partition mesh (test support) finds its binaries through these; set before any
    // thread starts.
    std::env::set_var("CAUSEWAY_BIN", &bin);
    std::env::set_var("CAUSEWAY_ENVOY", &envoy);
    let mut rounds = Vec::new();
    println!(
        "{:<10} {:<9} {:>5} {:>9} {:>7} {:>11}",
        "data plane", "fault", "round", "requests", "failed", "shifted ms"
    );
    for fault in &flags.faults {
        for data_plane in &flags.data_planes {
            for i in 0..flags.rounds {
                let r = match fault.as_str() {
                    "partition" => partition_round(data_plane, i),
                    _ => freeze_round(&bin, &envoy, data_plane, i)?,
                };
                println!(
                    "{:<10} {:<9} {:>5} {:>9} {:>7} {:>11.0}",
                    r.data_plane,
                    r.fault,
                    i + 1,
                    r.requests,
                    r.failed,
                    r.shifted.as_secs_f64() * 1e3
                );
                rounds.push(r);
            }
        }
    }
    let summary = summarise(&flags, &rounds);
    if let Some(path) = &flags.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json!({ "failover": summary }))?,
        )?;
    }
    Ok(())
}

/// Prints the median table and returns it as JSON rows.
fn summarise(flags: &Flags, rounds: &[Round]) -> Vec<serde_json::Value> {
    let mut summary = Vec::new();
    println!(
        "\n{:<10} {:<9} {:>18} {:>8} {:>7}",
        "data plane", "fault", "median shifted ms", "goal ms", "failed"
    );
    for fault in &flags.faults {
        for data_plane in &flags.data_planes {
            let mine: Vec<&Round> = rounds
                .iter()
                .filter(|r| &r.data_plane == data_plane && &r.fault == fault)
                .collect();
            let m = median(mine.iter().map(|r| r.shifted).collect());
            let failed: usize = mine.iter().map(|r| r.failed).sum();
            println!(
                "{:<10} {:<9} {:>18.0} {:>8.0} {:>7}",
                data_plane,
                fault,
                m.as_secs_f64() * 1e3,
                GOAL.as_secs_f64() * 1e3,
                failed
            );
            summary.push(json!({
                "dataPlane": data_plane,
                "fault": fault,
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
    }
    summary
}
