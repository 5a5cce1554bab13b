//! Mesh-path benchmark: the same bounded HTTP load (default 10 s, 16 connections) sent
//! (1) directly to the app, (2) through the client and server sidecars, (3) across networks
//! through sidecar → east-west gateway → sidecar with mTLS, the gateway run by each data plane
//! in turn (Envoy, then Causeway's own, `--rounds` times, interleaved), with the gateway's CPU per
//! 1,000 requests and peak RSS, and the ratio Causeway / Envoy. It runs the example mesh itself
//! (the `causeway demo` plan) on 127.0.0.0/8, one mesh at a time.
//!
//! Run: `make bench` or `cargo run --release -p causeway-bench --bin mesh-path -- [--seconds N]
//! [--connections N] [--rounds N] [--json FILE]` after `cargo build --release -p causeway`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use causeway_bench::demo_mesh::{causeway_bin, envoy_bin, workspace, DemoMesh};
use causeway_bench::http_load::{self, LoadResult, LoadSpec};
use causeway_bench::procfs::{cpu_seconds, peak_rss_mib};
use serde_json::json;

const GATEWAY: &str = "gamma-gateway-0";

struct Flags {
    seconds: u64,
    connections: usize,
    rounds: usize,
    json: Option<PathBuf>,
}

fn flags() -> anyhow::Result<Flags> {
    let mut f = Flags {
        seconds: 10,
        connections: 16,
        rounds: 2,
        json: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).context("flags take a value")?;
        match pair[0].as_str() {
            "--seconds" => f.seconds = v.parse()?,
            "--connections" => f.connections = v.parse()?,
            "--rounds" => f.rounds = v.parse()?,
            "--json" => f.json = Some(v.into()),
            other => bail!("unknown flag {other} (--seconds, --connections, --rounds, --json)"),
        }
    }
    Ok(f)
}

/// One measured path.
struct Row {
    path: String,
    data_plane: &'static str,
    result: LoadResult,
    /// The gateway's CPU seconds per 1,000 requests and its peak RSS (gateway paths only).
    gateway_cpu_ms_per_1k: Option<f64>,
    gateway_peak_rss_mib: Option<f64>,
}

fn load(rt: &tokio::runtime::Runtime, addr: SocketAddr, f: &Flags) -> anyhow::Result<LoadResult> {
    rt.block_on(http_load::run(LoadSpec {
        addr,
        connections: f.connections,
        deadline: Instant::now() + Duration::from_secs(f.seconds),
        requests: None,
        timeout: Duration::from_secs(5),
        progress: None,
    }))
}

/// Starts the example mesh with its gateways on `data_plane`.
fn start_mesh(data_plane: &str) -> anyhow::Result<DemoMesh> {
    let bin = causeway_bin()?;
    let envoy = envoy_bin()?;
    let run_dir = std::env::temp_dir().join(format!(
        "causeway-bench-{}-{data_plane}",
        std::process::id()
    ));
    std::fs::create_dir_all(&run_dir)?;
    let plan = DemoMesh::plan_with(
        &bin,
        &envoy,
        &workspace().join("examples/three-clusters"),
        &run_dir,
        31000,
        &["--gateway-data-plane", data_plane],
    )?;
    let mesh = DemoMesh::start(&bin, plan, &run_dir)?;
    mesh.wait_synced(Duration::from_secs(60))?;
    Ok(mesh)
}

fn gateway_round(
    rt: &tokio::runtime::Runtime,
    f: &Flags,
    data_plane: &'static str,
    rows: &mut Vec<Row>,
    with_local_paths: bool,
) -> anyhow::Result<()> {
    let mesh = start_mesh(data_plane)?;
    let outbound = |service: &str| mesh.outbound("alpha-client-sidecar", service);
    if with_local_paths {
        // echo-alpha-1's app directly, and through the client's and echo-alpha-1's sidecars.
        for (path, addr) in [
            (
                "direct to the app",
                "127.1.100.11:8080".parse::<SocketAddr>()?,
            ),
            (
                "client sidecar -> server sidecar (mTLS)",
                outbound("demo/echo")?,
            ),
        ] {
            rows.push(Row {
                path: path.into(),
                data_plane: "envoy",
                result: load(rt, addr, f)?,
                gateway_cpu_ms_per_1k: None,
                gateway_peak_rss_mib: None,
            });
        }
    }
    // greeter exists only in gamma: across networks through gamma's gateway.
    let addr = outbound("demo/greeter")?;
    let pid = mesh.pid_of(GATEWAY).context("no gamma gateway")?;
    let cpu_before = cpu_seconds(pid);
    let result = load(rt, addr, f)?;
    let cpu = cpu_seconds(pid).zip(cpu_before).map(|(a, b)| a - b);
    rows.push(Row {
        path: "sidecar -> gateway -> sidecar (mTLS, other network)".into(),
        data_plane,
        gateway_cpu_ms_per_1k: cpu.map(|c| c * 1000.0 * 1000.0 / result.ok().max(1) as f64),
        gateway_peak_rss_mib: peak_rss_mib(pid),
        result,
    });
    let run_dir = mesh.run_dir.clone();
    drop(mesh);
    let _ = std::fs::remove_dir_all(run_dir);
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn mean(rows: &[&Row], f: impl Fn(&Row) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = rows.iter().filter_map(|r| f(r)).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn main() -> anyhow::Result<()> {
    let f = flags()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for round in 0..f.rounds.max(1) {
        for data_plane in ["envoy", "causeway"] {
            gateway_round(
                &rt,
                &f,
                data_plane,
                &mut rows,
                round == 0 && data_plane == "envoy",
            )?;
        }
    }
    println!(
        "causeway mesh-path benchmark: {} connections, {} s per path, HTTP/1.1 keep-alive, \
         sidecars on Envoy, gamma's gateway on each data plane ({} rounds, interleaved)",
        f.connections, f.seconds, f.rounds
    );
    println!(
        "{:<52} {:>9} {:>9} {:>8} {:>8} {:>7} {:>11} {:>9}",
        "path", "gateway", "req/s", "p50 ms", "p99 ms", "errors", "gw cpu ms/1k", "gw RSS MiB"
    );
    for r in &rows {
        println!(
            "{:<52} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>7} {:>11} {:>9}",
            r.path,
            if r.gateway_peak_rss_mib.is_some() {
                r.data_plane
            } else {
                "-"
            },
            r.result.rps(),
            r.result.percentile_ms(0.5),
            r.result.percentile_ms(0.99),
            r.result.failed(),
            fmt(r.gateway_cpu_ms_per_1k),
            fmt(r.gateway_peak_rss_mib),
        );
    }
    let of = |dp: &str| -> Vec<&Row> {
        rows.iter()
            .filter(|r| r.data_plane == dp && r.gateway_peak_rss_mib.is_some())
            .collect()
    };
    let (envoy, causeway) = (of("envoy"), of("causeway"));
    let ratio = |m: &dyn Fn(&Row) -> Option<f64>| {
        mean(&causeway, m).zip(mean(&envoy, m)).map(|(c, e)| c / e)
    };
    let rps = ratio(&|r| Some(r.result.rps()));
    let p99 = ratio(&|r| Some(r.result.percentile_ms(0.99)));
    let cpu = ratio(&|r| r.gateway_cpu_ms_per_1k);
    let rss = ratio(&|r| r.gateway_peak_rss_mib);
    let x = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.2}x"));
    println!(
        "\ncauseway / envoy gateway (means): req/s {}, p99 {}, gateway CPU per request {}, \
         gateway RSS {}",
        x(rps),
        x(p99),
        x(cpu),
        x(rss)
    );
    println!(
        "(the sidecars are Envoy in both: the path's req/s and p99 are bounded by them; the \
         gateway's own cost is its CPU per request and RSS)"
    );
    if let Some(path) = &f.json {
        let out = json!({
            "connections": f.connections,
            "seconds": f.seconds,
            "rows": rows.iter().map(|r| json!({
                "path": r.path,
                "gateway_data_plane": r.gateway_peak_rss_mib.map(|_| r.data_plane),
                "rps": r.result.rps(),
                "p50_ms": r.result.percentile_ms(0.5),
                "p99_ms": r.result.percentile_ms(0.99),
                "errors": r.result.failed(),
                "gateway_cpu_ms_per_1k": r.gateway_cpu_ms_per_1k,
                "gateway_peak_rss_mib": r.gateway_peak_rss_mib,
            })).collect::<Vec<_>>(),
            "causeway_over_envoy_gateway": {"rps": rps, "p99": p99, "cpu": cpu, "rss": rss},
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
