//! Kubernetes sync benchmark: N fake Kubernetes API servers (default 20 clusters × 1,000
//! services × 5 endpoints, every endpoint a Pod) watched by one `causeway control-plane`.
//! Prints the time from the control plane's start to every cluster synced, its RSS per
//! endpoint (against the same binary with an empty mesh, measured first), and the latency
//! from one EndpointSlice change to the changed `/debug/view`. No figure is asserted.
//!
//! Run: `make bench`, or `cargo build --release -p causeway -p causeway-bench` then
//! `./target/release/kube-sync [--clusters N] [--services N] [--endpoints N] [--changes N]
//! [--json] [--causeway PATH]`.

#[path = "kube_sync/objects.rs"]
mod objects;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use causeway_bench::control_plane::{get_json, ControlPlane};
use causeway_kube_fake::{FakeApiServer, Permissions, ServerOptions};
use objects::{
    cluster_id, endpoint_slice, mesh_yaml, pod_ip, pod_name, populate, service_name, NS,
};
use serde_json::{json, Value};

const USAGE: &str = "kube-sync [--clusters N] [--services N] [--endpoints N] [--changes N] [--json] [--causeway PATH] [--log FILE]";
/// Upper bound for one change to show in the view.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The comparison point users bring (istio/istio issues, as collected in the field reference).
const REFERENCE: &str = "Istio reference (istio/istio #41658, #50084): istiod memory explodes with many clusters (10 GB at 10 clusters); not measured here";

/// Command-line settings.
struct Args {
    clusters: usize,
    services: usize,
    endpoints: usize,
    changes: usize,
    json: bool,
    causeway: PathBuf,
    /// Keep the measured control plane's log here (default: a temporary file).
    log: Option<PathBuf>,
}

fn value(it: &mut impl Iterator<Item = String>, flag: &str) -> anyhow::Result<String> {
    it.next()
        .with_context(|| format!("{flag} takes a value ({USAGE})"))
}

fn number(it: &mut impl Iterator<Item = String>, flag: &str) -> anyhow::Result<usize> {
    let v = value(it, flag)?;
    v.parse()
        .with_context(|| format!("{flag}: {v:?} is not a number"))
}

fn parse_args() -> anyhow::Result<Args> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let mut args = Args {
        clusters: 20,
        services: 1000,
        endpoints: 5,
        changes: 20,
        json: false,
        causeway: exe.with_file_name("causeway"),
        log: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--clusters" => args.clusters = number(&mut it, &flag)?,
            "--services" => args.services = number(&mut it, &flag)?,
            "--endpoints" => args.endpoints = number(&mut it, &flag)?,
            "--changes" => args.changes = number(&mut it, &flag)?,
            "--causeway" => args.causeway = PathBuf::from(value(&mut it, &flag)?),
            "--json" => args.json = true,
            "--log" => args.log = Some(PathBuf::from(value(&mut it, &flag)?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other} ({USAGE})"),
        }
    }
    // Gateways are 127.<c+1>.255.1; pod IPs 127.<128+c/4>.y.z with 254 per /24.
    if !(1..=127).contains(&args.clusters) {
        bail!("--clusters must be 1..=127");
    }
    if args.services == 0 || args.endpoints == 0 || args.services * args.endpoints > 254 * 256 {
        bail!("--services and --endpoints must be at least 1, with at most 65,024 endpoints per cluster");
    }
    if !args.causeway.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p causeway) or pass --causeway PATH",
            args.causeway.display()
        );
    }
    Ok(args)
}

/// Whether a `/debug/view` answer lists `address` from `cluster` (any kind but hidden).
fn view_has(view: &Value, cluster: &str, address: &str) -> bool {
    view["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["ports"].as_array().into_iter().flatten())
        .flat_map(|p| p["endpoints"].as_array().into_iter().flatten())
        .any(|e| e["cluster"] == cluster && e["address"] == address && e["kind"] != "hidden")
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Removes (even k) or restores (odd k) the last endpoint of one slice, each pair in another
/// cluster and service, and times until the view of a pod in that cluster shows it.
fn measure_changes(
    cp: &ControlPlane,
    servers: &[FakeApiServer],
    args: &Args,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for k in 0..args.changes {
        let pair = k / 2;
        let remove = k % 2 == 0;
        let c = (pair * 7 + 3) % args.clusters;
        let s = (pair * 131 + 17) % args.services;
        let last = args.endpoints - 1;
        let ip = pod_ip(c, s, last, args.endpoints);
        let id = cluster_id(c);
        let path = format!(
            "/debug/view?cluster={id}&namespace={NS}&workload={}&service={NS}/{}",
            pod_name((s + 1) % args.services, 0),
            service_name(s)
        );
        // Before: present when it is about to be removed, absent when about to be restored.
        let before = view_has(&get_json(cp.debug, &path)?, &id, &ip);
        if before != remove {
            bail!(
                "change {k}: {ip} in {id} already {}",
                if remove { "absent" } else { "present" }
            );
        }
        let count = if remove { last } else { args.endpoints };
        let slice = endpoint_slice(c, s, count, args.endpoints);
        let t = Instant::now();
        servers[c].apply_object(&slice)?;
        loop {
            if view_has(&get_json(cp.debug, &path)?, &id, &ip) != remove {
                samples.push(t.elapsed());
                break;
            }
            if t.elapsed() > CHANGE_TIMEOUT {
                bail!(
                    "change {k} ({} {ip} in {id} {NS}/{}) not in the view after {} s",
                    if remove { "remove" } else { "add" },
                    service_name(s),
                    CHANGE_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(samples)
}

/// Every figure the benchmark prints.
struct Report {
    objects: usize,
    load: Duration,
    sync: Duration,
    rss_empty: (u64, u64),
    rss_synced: (u64, u64),
    changes: Vec<Duration>,
}

fn print_table(args: &Args, total: usize, r: &Report) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let per = per_endpoint(r, total);
    let row = |k: &str, v: String| println!("{k:<52} {v:>14}");
    println!(
        "causeway kube-sync benchmark (release build recommended): {}",
        args.causeway.display()
    );
    println!("{:<52} {:>14}", "measure", "value");
    row(
        "clusters (Kubernetes, fake API servers)",
        args.clusters.to_string(),
    );
    row("services per cluster", args.services.to_string());
    row(
        &format!("endpoints ({} per service, one Pod each)", args.endpoints),
        total.to_string(),
    );
    row(
        &format!("load fake stores ({} objects; setup only)", r.objects),
        format!("{:.2} s", r.load.as_secs_f64()),
    );
    row(
        "start -> all clusters synced",
        format!("{:.2} s", r.sync.as_secs_f64()),
    );
    row(
        "RSS empty mesh (VmRSS / VmHWM)",
        format!("{:.1} / {:.1} MiB", mib(r.rss_empty.0), mib(r.rss_empty.1)),
    );
    row(
        "RSS synced (VmRSS / VmHWM)",
        format!(
            "{:.1} / {:.1} MiB",
            mib(r.rss_synced.0),
            mib(r.rss_synced.1)
        ),
    );
    row(
        "RSS per endpoint ((synced - empty) / endpoints)",
        format!("{per} B"),
    );
    let mut sorted = r.changes.clone();
    sorted.sort();
    let label = format!("EndpointSlice change -> view ({} changes)", sorted.len());
    if sorted.is_empty() {
        row(&label, "-".into());
    } else {
        row(&format!("{label} p50"), ms(percentile(&sorted, 0.5)));
        row(&format!("{label} p90"), ms(percentile(&sorted, 0.9)));
        row(&format!("{label} max"), ms(percentile(&sorted, 1.0)));
    }
    println!("\n{REFERENCE}");
}

fn per_endpoint(r: &Report, total: usize) -> u64 {
    r.rss_synced.0.saturating_sub(r.rss_empty.0) / total.max(1) as u64
}

fn print_json(args: &Args, total: usize, r: &Report) -> anyhow::Result<()> {
    let mut sorted = r.changes.clone();
    sorted.sort();
    // Milliseconds to the microsecond, seconds to the millisecond.
    let ms = |d: Duration| d.as_micros() as f64 / 1e3;
    let secs = |d: Duration| d.as_millis() as f64 / 1e3;
    let v = json!({
        "clusters": args.clusters,
        "services": args.services,
        "endpointsPerService": args.endpoints,
        "endpoints": total,
        "objectsLoaded": r.objects,
        "loadSeconds": secs(r.load),
        "syncSeconds": secs(r.sync),
        "rssEmptyBytes": r.rss_empty.0,
        "rssEmptyPeakBytes": r.rss_empty.1,
        "rssSyncedBytes": r.rss_synced.0,
        "rssSyncedPeakBytes": r.rss_synced.1,
        "rssPerEndpointBytes": per_endpoint(r, total),
        "changeToView": {
            "changes": sorted.len(),
            "p50Ms": (!sorted.is_empty()).then(|| ms(percentile(&sorted, 0.5))),
            "p90Ms": (!sorted.is_empty()).then(|| ms(percentile(&sorted, 0.9))),
            "maxMs": (!sorted.is_empty()).then(|| ms(percentile(&sorted, 1.0))),
            "samplesMs": r.changes.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        },
        "reference": REFERENCE,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let total = args.clusters * args.services * args.endpoints;
    let tmp = tempfile::Builder::new()
        .prefix("causeway-kube-sync-")
        .tempdir()?;
    // Shared by both runs: the first generates the mesh root, so the timed run does not.
    let ca_dir = tmp.path().join("ca");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // 1. The control plane alone: a mesh with one empty directory cluster.
    eprintln!("kube-sync: control plane with an empty mesh ...");
    let empty_dir = tmp.path().join("empty-mesh");
    std::fs::create_dir_all(empty_dir.join("clusters/empty"))?;
    std::fs::write(
        empty_dir.join("mesh.yaml"),
        mesh_yaml(&[("empty".into(), 0, String::new())]),
    )?;
    let rss_empty = {
        let log = tmp.path().join("control-plane-empty.log");
        let mut cp = ControlPlane::spawn(&args.causeway, &empty_dir, &ca_dir, log)?;
        cp.wait_synced(&BTreeMap::from([("empty".to_owned(), 0)]), Instant::now())?;
        cp.rss()?
    };

    // 2. The fake API servers, filled directly (in parallel, one store each).
    eprintln!(
        "kube-sync: {} fake API servers, {} services x {} endpoints each ...",
        args.clusters, args.services, args.endpoints
    );
    let mut servers = Vec::new();
    for _ in 0..args.clusters {
        servers.push(rt.block_on(FakeApiServer::start(ServerOptions::default()))?);
    }
    let t = Instant::now();
    let objects = std::thread::scope(|scope| -> anyhow::Result<usize> {
        let tasks: Vec<_> = servers
            .iter()
            .enumerate()
            .map(|(c, server)| {
                let args = &args;
                scope.spawn(move || populate(server, c, args.services, args.endpoints))
            })
            .collect();
        let mut n = 0;
        for task in tasks {
            n += task
                .join()
                .map_err(|_| anyhow::anyhow!("a loader thread panicked"))??;
        }
        Ok(n)
    })?;
    let load = t.elapsed();

    // 3. The mesh directory naming every fake through its kubeconfig.
    let mesh_dir = tmp.path().join("mesh");
    std::fs::create_dir_all(mesh_dir.join("kubeconfigs"))?;
    let mut clusters = Vec::new();
    for (c, server) in servers.iter().enumerate() {
        let id = cluster_id(c);
        let token = format!("{id}-control-plane");
        server.add_token(&token, Permissions::All);
        let path = mesh_dir.join(format!("kubeconfigs/{id}.yaml"));
        std::fs::write(&path, server.kubeconfig(&id, &token))?;
        let extra = format!("  kubernetes: {{kubeconfig: {}}}\n", path.display());
        clusters.push((id, c % 4, extra));
    }
    std::fs::write(mesh_dir.join("mesh.yaml"), mesh_yaml(&clusters))?;

    // 4. Start to synced, memory, then changes.
    eprintln!(
        "kube-sync: control plane watching {} clusters ...",
        args.clusters
    );
    let want: BTreeMap<String, usize> = clusters
        .iter()
        .map(|(id, _, _)| (id.clone(), args.services * args.endpoints))
        .collect();
    let log = args
        .log
        .clone()
        .unwrap_or_else(|| tmp.path().join("control-plane.log"));
    let start = Instant::now();
    let mut cp = ControlPlane::spawn(&args.causeway, &mesh_dir, &ca_dir, log)?;
    let sync = cp.wait_synced(&want, start)?;
    let rss_synced = cp.rss()?;
    eprintln!(
        "kube-sync: synced in {:.2} s; {} changes ...",
        sync.as_secs_f64(),
        args.changes
    );
    let changes = measure_changes(&cp, &servers, &args)?;
    drop(cp);
    drop(servers);
    drop(rt);

    let report = Report {
        objects,
        load,
        sync,
        rss_empty,
        rss_synced,
        changes,
    };
    if args.json {
        print_json(&args, total, &report)
    } else {
        print_table(&args, total, &report);
        Ok(())
    }
}
