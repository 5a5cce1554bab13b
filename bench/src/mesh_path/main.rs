//! Mesh-path benchmark: both data planes on the same paths in one invocation, each path's
//! proxies run from static bootstraps (`causeway proxy --data-plane X --config P.pb`, the same
//! `.pb` for Envoy and for Causeway's proxy), without control plane or agents:
//!
//! 1. direct to the app (the limit),
//! 2. one HTTP hop (an outbound HTTP connection manager to a static plaintext cluster),
//! 3. one TCP hop (a TCP proxy to it),
//! 4. sidecar -> sidecar with mTLS (alpha/client's sidecar to echo-alpha-1's),
//! 5. sidecar -> gamma's east-west gateway -> sidecar with mTLS (to greeter-gamma-1's),
//! 6. `tail`: sidecar -> gamma's gateway -> the sidecars of catalog-gamma-1 and catalog-gamma-2,
//!    whose backend answers 20 ms late: the p99 of a client balancing over the pods (Causeway:
//!    one endpoint per pod, peak-EWMA) against one that sees only the gateway (Envoy).
//!
//! The mesh paths' bootstraps are what the control plane builds for the example mesh's nodes
//! (examples/three-clusters) with real SPIFFE certificates written to files; the tail path's
//! client runs the one built for the data plane under test. The backends are
//! the release `causeway echo` on the sidecars' app addresses, one runtime thread by default
//! (`--backend-threads`), up for the whole bench; a path's proxies run only while that path is
//! measured. Rounds interleave the data planes (the order alternates between rounds); each run
//! is a warm-up of 0.5 s, then the bounded load (default 10 s x 16 connections, HTTP/1.1
//! keep-alive), with each proxy's CPU (procfs, before/after) and peak RSS (VmHWM).
//!
//! Run: `make bench`, or after `cargo build --release -p causeway -p causeway-bench`:
//! `target/release/mesh-path [--seconds N] [--connections N] [--rounds N] [--json FILE]
//! [--paths direct,http-hop,tcp-hop,sidecars,gateway,tail (the default: all)] [--concurrency N]
//! [--backend-threads N] [--data-planes envoy,causeway,causeway-<build>=BINARY]` (Envoy:
//! `$CAUSEWAY_ENVOY`, else `scripts/ensure-envoy`). On `tail` the report also counts the
//! answers of each pod per data plane.

mod config;
mod hops;
mod pki;
mod report;
mod run;

/// The keys of `--paths`, in the order they run.
const PATH_KEYS: &str = "direct, http-hop, tcp-hop, sidecars, gateway, tail";

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use causeway_bench::demo_mesh::{causeway_bin, envoy_bin, workspace};
use config::{Backend, PathSpec};
use run::{LoadShape, Proc};
use serde_json::json;

/// Admin addresses of the proxies: 127.0.0.1 from this port up.
const ADMIN_BASE: u16 = 31700;
const WARMUP: Duration = Duration::from_millis(500);
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A data plane to measure: Envoy, or a build of the `causeway` binary running its own proxy.
#[derive(Debug, Clone)]
struct DataPlane {
    label: String,
    /// `--data-plane` of `causeway proxy`.
    kind: &'static str,
    /// The `causeway` binary that runs `causeway proxy` (for Envoy: the one that execs it).
    bin: PathBuf,
}

struct Flags {
    seconds: u64,
    connections: usize,
    rounds: usize,
    json: Option<PathBuf>,
    paths: Option<Vec<String>>,
    concurrency: usize,
    backend_threads: usize,
    data_planes: Vec<DataPlane>,
}

fn data_planes(list: &str, default_bin: &Path) -> anyhow::Result<Vec<DataPlane>> {
    list.split(',')
        .map(|item| {
            let (label, bin) = match item.split_once('=') {
                Some((l, b)) => (l, PathBuf::from(b)),
                None => (item, default_bin.to_path_buf()),
            };
            let kind = match label {
                "envoy" => "envoy",
                l if l == "causeway" || l.starts_with("causeway-") => "causeway",
                other => bail!("--data-planes: {other:?} is neither envoy nor causeway[-BUILD]"),
            };
            if !bin.exists() {
                bail!("--data-planes {label}: no binary {}", bin.display());
            }
            Ok(DataPlane {
                label: label.to_owned(),
                kind,
                bin,
            })
        })
        .collect()
}

fn flags() -> anyhow::Result<Flags> {
    let bin = causeway_bin()?;
    if bin.components().any(|c| c.as_os_str() == "debug") {
        eprintln!(
            "mesh-path: {} is a debug build: build the release first (cargo build --release -p \
             causeway), or the Causeway figures mean nothing",
            bin.display()
        );
    }
    let mut f = Flags {
        seconds: 10,
        connections: 16,
        rounds: 2,
        json: None,
        paths: None,
        concurrency: 1,
        backend_threads: 1,
        data_planes: data_planes("envoy,causeway", &bin)?,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).context("flags take a value")?;
        match pair[0].as_str() {
            "--seconds" => f.seconds = v.parse()?,
            "--connections" => f.connections = v.parse()?,
            "--rounds" => f.rounds = v.parse()?,
            "--json" => f.json = Some(v.into()),
            "--paths" => f.paths = Some(v.split(',').map(str::to_owned).collect()),
            "--concurrency" => f.concurrency = v.parse()?,
            "--backend-threads" => f.backend_threads = v.parse()?,
            "--data-planes" => f.data_planes = data_planes(v, &bin)?,
            other => bail!(
                "unknown flag {other} (--seconds, --connections, --rounds, --json, --paths \
                 (default: all of {PATH_KEYS}), --concurrency, --backend-threads, --data-planes)"
            ),
        }
    }
    if f.rounds < 2 {
        eprintln!("mesh-path: --rounds {}: at least 2 are needed for figures to compare; a smoke run only", f.rounds);
    }
    Ok(f)
}

fn start_backend(bin: &Path, b: &Backend, threads: usize, dir: &Path) -> anyhow::Result<Proc> {
    let mut args: Vec<OsString> = [
        "echo",
        "--listen",
        &b.listen.to_string(),
        "--cluster",
        b.cluster,
        "--workload",
        &b.workload,
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if b.delay_ms > 0 {
        args.extend(["--delay-ms".into(), b.delay_ms.to_string().into()]);
    }
    let mut p = Proc::spawn(
        &format!("backend {}", b.listen),
        bin,
        &args,
        &[
            ("TOKIO_WORKER_THREADS", threads.to_string()),
            ("RUST_LOG", "warn".into()),
        ],
        dir.join(format!("backend-{}.log", b.listen.ip())),
    )?;
    run::wait_answered(
        b.listen,
        &[b.workload.as_str()],
        std::slice::from_mut(&mut p),
        READY_WITHIN,
    )?;
    Ok(p)
}

/// Starts `path`'s proxies on `dp`, each ready and the path answering through them (from one
/// of `workloads`, the path's backends).
fn start_proxies(
    path: &PathSpec,
    dp: &DataPlane,
    envoy: &Path,
    f: &Flags,
    workloads: &[&str],
    logs: &Path,
) -> anyhow::Result<Vec<Proc>> {
    let mut procs = Vec::new();
    for spec in &path.proxies {
        let mut addrs = spec.listens.clone();
        addrs.push(spec.admin);
        run::ensure_free(&addrs)?;
        let mut args: Vec<OsString> = vec!["proxy".into(), "--data-plane".into(), dp.kind.into()];
        args.extend(["--config".into(), spec.config_for(dp.kind).into()]);
        args.extend(["--concurrency".into(), f.concurrency.to_string().into()]);
        args.extend(["--envoy".into(), envoy.as_os_str().to_owned()]);
        args.extend(["--log-level".into(), "warning".into()]);
        let mut p = Proc::spawn(
            spec.name,
            &dp.bin,
            &args,
            &[("RUST_LOG", "warn".into())],
            logs.join(format!("{}-{}.log", dp.label, spec.name)),
        )?;
        run::wait_ready(&mut p, spec.admin, READY_WITHIN)?;
        procs.push(p);
    }
    run::wait_answered(path.entry, workloads, &mut procs, READY_WITHIN)?;
    Ok(procs)
}

fn main() -> anyhow::Result<()> {
    let f = flags()?;
    let envoy = envoy_bin()?;
    let envoy_version = std::process::Command::new(&envoy)
        .arg("--version")
        .output()
        .map(|o| {
            let out = String::from_utf8_lossy(&o.stdout);
            let v = out
                .split_once("version:")
                .map_or(out.trim(), |(_, v)| v.trim());
            format!("envoy {v}")
        })
        .with_context(|| format!("running {} --version", envoy.display()))?;
    let dir = std::env::temp_dir().join(format!("causeway-mesh-path-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let outcome = bench(&f, &envoy, &envoy_version, &dir);
    let any_logs = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("round"))
        })
        .unwrap_or(false);
    match &outcome {
        // The logs of a failed run are what explains it; bootstraps and certificates alone not.
        Err(_) if any_logs => eprintln!("mesh-path: logs kept in {}", dir.display()),
        Ok(true) => eprintln!("mesh-path: logs kept in {}", dir.display()),
        _ => {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    outcome.map(|_| ())
}

/// The whole bench in `dir`; true when a proxy logged a problem or a request failed (the logs
/// are then kept).
fn bench(f: &Flags, envoy: &Path, envoy_version: &str, dir: &Path) -> anyhow::Result<bool> {
    let tag = format!("bench-{}", std::process::id());
    let (backends, all_paths) = config::paths(
        &workspace().join("examples/three-clusters"),
        dir,
        ADMIN_BASE,
        &tag,
    )?;
    let paths: Vec<PathSpec> = match &f.paths {
        None => all_paths,
        Some(keys) => {
            for k in keys {
                if !all_paths.iter().any(|p| p.key == k) {
                    bail!("--paths: no path {k:?} ({PATH_KEYS})");
                }
            }
            all_paths
                .into_iter()
                .filter(|p| keys.iter().any(|k| k == p.key))
                .collect()
        }
    };
    run::ensure_free(&backends.iter().map(|b| b.listen).collect::<Vec<_>>())?;
    let backend_bin = causeway_bin()?;
    let mut backend_procs: Vec<Proc> = backends
        .iter()
        .map(|b| start_backend(&backend_bin, b, f.backend_threads, dir))
        .collect::<anyhow::Result<_>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shape = shape(f);
    let mut runs = Vec::new();
    let mut problems: Vec<Problem> = Vec::new();
    for round in 0..f.rounds.max(1) {
        let mut order = f.data_planes.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for path in paths.iter().filter(|p| p.proxies.is_empty()) {
            let (result, _) = run::measure(&rt, path.entry, &mut [], &shape, &[])?;
            eprintln!(
                "round {round} {:<9} {:<18} {:>8.0} req/s",
                path.key,
                "-",
                result.rps()
            );
            runs.push(report::Run::new(round, path.key, "-", &result, Vec::new()));
        }
        for dp in &order {
            for path in paths.iter().filter(|p| !p.proxies.is_empty()) {
                for b in &mut backend_procs {
                    b.alive()?;
                }
                let workloads: Vec<&str> = path
                    .backends
                    .iter()
                    .map(|&i| backends[i].workload.as_str())
                    .collect();
                let ctx = Measured {
                    f,
                    envoy,
                    dir,
                    rt: &rt,
                };
                let (run, lines) = measure_path(&ctx, round, path, dp, &workloads)?;
                runs.push(run);
                problems.extend(lines);
            }
        }
    }
    output(f, envoy_version, dir, &paths, &runs, &problems)?;
    Ok(!problems.is_empty() || runs.iter().any(|r| r.errors > 0))
}

fn shape(f: &Flags) -> LoadShape {
    LoadShape {
        connections: f.connections,
        duration: Duration::from_secs(f.seconds),
        warmup: WARMUP,
    }
}

/// A proxy log (its path) and its lines that report a problem.
type Problem = (String, Vec<String>);

/// What every measured path needs: the flags, Envoy, the run directory, the load's runtime.
struct Measured<'a> {
    f: &'a Flags,
    envoy: &'a Path,
    dir: &'a Path,
    rt: &'a tokio::runtime::Runtime,
}

/// One run of `path` on `dp`: its proxies started, the load, the proxies stopped; the run and
/// the proxy logs that reported problems.
fn measure_path(
    ctx: &Measured,
    round: usize,
    path: &PathSpec,
    dp: &DataPlane,
    workloads: &[&str],
) -> anyhow::Result<(report::Run, Vec<Problem>)> {
    let logs = ctx.dir.join(format!("round{round}-{}", path.key));
    std::fs::create_dir_all(&logs)?;
    let what = || format!("round {round}: {} on {}", path.key, dp.label);
    let mut procs =
        start_proxies(path, dp, ctx.envoy, ctx.f, workloads, &logs).with_context(what)?;
    let (result, figures) = run::measure(ctx.rt, path.entry, &mut procs, &shape(ctx.f), workloads)
        .with_context(what)?;
    drop(procs);
    eprintln!(
        "round {round} {:<9} {:<18} {:>8.0} req/s, failures: {}",
        path.key,
        dp.label,
        result.rps(),
        result.failure_summary()
    );
    let mut problems = Vec::new();
    for spec in &path.proxies {
        let log = logs.join(format!("{}-{}.log", dp.label, spec.name));
        let lines = run::problems(&log);
        if !lines.is_empty() {
            problems.push((log.display().to_string(), lines));
        }
    }
    let run = report::Run::new(round, path.key, &dp.label, &result, figures);
    Ok((run, problems))
}

/// The table, the per-proxy figures, the failures and problems, and the JSON.
fn output(
    f: &Flags,
    envoy_version: &str,
    dir: &Path,
    paths: &[PathSpec],
    runs: &[report::Run],
    problems: &[Problem],
) -> anyhow::Result<()> {
    let labels: Vec<String> = f.data_planes.iter().map(|d| d.label.clone()).collect();
    let keys: Vec<(&'static str, &'static str)> = paths.iter().map(|p| (p.key, p.title)).collect();
    let summaries = report::summarize(runs, &keys, &labels);
    let ratios = report::ratios(&summaries);
    println!(
        "\ncauseway mesh-path: {} connections, {} s per run after a {} ms warm-up, HTTP/1.1 \
         keep-alive; backend `causeway echo` ({} runtime thread(s)); proxies from static \
         bootstraps, --concurrency {}; {} round(s), data planes interleaved",
        f.connections,
        f.seconds,
        WARMUP.as_millis(),
        f.backend_threads,
        f.concurrency,
        f.rounds
    );
    println!("{envoy_version}");
    println!(
        "means over the rounds; cpu ms/1k: CPU ms per 1,000 requests summed over the path's \
         proxies (= millicores per 1,000 req/s); RSS MiB: the peak (VmHWM) of the path's \
         largest proxy\n"
    );
    report::print_table(&summaries, &ratios);
    report::print_answers(&summaries);
    let proxies = report::per_proxy(runs);
    report::print_per_proxy(&proxies, &keys);
    let failed: Vec<&report::Run> = runs.iter().filter(|r| r.errors > 0).collect();
    if !failed.is_empty() {
        println!("\nfailed requests:");
        for r in failed {
            println!(
                "  round {} {} on {}: {:?}",
                r.round, r.path, r.data_plane, r.failures
            );
        }
    }
    if !problems.is_empty() {
        println!(
            "\nproxy logs with warnings or errors (kept in {}):",
            dir.display()
        );
        for (log, lines) in problems {
            println!("  {log}: {} line(s), first: {}", lines.len(), lines[0]);
        }
    }
    if let Some(path) = &f.json {
        let out = json!({
            "connections": f.connections,
            "seconds": f.seconds,
            "warmup_ms": WARMUP.as_millis() as u64,
            "rounds": f.rounds,
            "concurrency": f.concurrency,
            "backend": "causeway echo",
            "envoy": envoy_version,
            "backend_threads": f.backend_threads,
            "cpu_ms_per_1k": "CPU ms per 1,000 requests, summed over the path's proxies",
            "peak_rss_mib": "the largest peak RSS (VmHWM) among the path's proxies",
            "runs": runs,
            "summary": summaries,
            "per_proxy": proxies,
            "causeway_over_envoy": ratios,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
