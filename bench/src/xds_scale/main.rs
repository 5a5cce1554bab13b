//! Control plane at scale: a generated mesh (default 20 clusters × 1,000 services × 5
//! endpoints on two networks), the release `causeway control-plane` serving it, and N
//! simulated proxies (default 2,000, one east-west gateway per cluster and sidecars, each a
//! real ADS client over mTLS that ACKs like Envoy; delta, or `--sotw`) in this process.
//!
//! Prints the time until every proxy holds a full ACKed config, then for `--changes` single-
//! endpoint changes written to the directory the time from the write to the ACK of the last
//! proxy that needed it (p50/p99/max), how many proxies were pushed against how many needed a
//! push (from the reference builders, `oracle`), the control plane's RSS per endpoint and per
//! proxy and its CPU per change, beside the goals. `--json FILE` writes the figures.
//!
//! Run: `cargo build --release -p causeway -p causeway-bench && ./target/release/xds-scale`
//! (`--proxies N --clusters N --services N --endpoints N --changes N --sotw --json FILE
//! --causeway PATH`). Diagnostics: `XDS_SCALE_TRACE=<proxy>` prints what that proxy receives
//! and is owed; `XDS_SCALE_SIZES=1` prints the size of two proxies' full configs.

mod client;
mod mesh;
mod oracle;
mod pki;
mod report;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use causeway_bench::control_plane::ControlPlane;
use causeway_bench::procfs;
use causeway_model::ClusterId;
use causeway_xds::node::keys;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

use client::{Board, SimProxy};
use mesh::Size;
use report::{Figures, Latencies};

/// Bound on connecting every proxy and serving each its first full config.
const FIRST_CONFIG_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on one change reaching every proxy that needs it.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between changes, so responses of one change are not counted for the next and no
/// coalescing window of the server is hit.
const BETWEEN_CHANGES: Duration = Duration::from_millis(150);

struct Args {
    size: Size,
    proxies: usize,
    changes: usize,
    delta: bool,
    json: Option<PathBuf>,
    causeway: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        size: Size {
            clusters: 20,
            services: 1000,
            endpoints: 5,
        },
        proxies: 2000,
        changes: 100,
        delta: true,
        json: None,
        causeway: std::env::current_exe()?
            .parent()
            .context("no exe directory")?
            .join("causeway"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} takes a value"));
        let mut number = || -> anyhow::Result<usize> {
            value()?
                .parse()
                .with_context(|| format!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--proxies" => args.proxies = number()?,
            "--clusters" => args.size.clusters = number()?,
            "--services" => args.size.services = number()?,
            "--endpoints" => args.size.endpoints = number()?,
            "--changes" => args.changes = number()?,
            "--sotw" => args.delta = false,
            "--json" => args.json = Some(value()?.into()),
            "--causeway" => args.causeway = value()?.into(),
            other => bail!(
                "unknown flag {other} (--proxies --clusters --services --endpoints --changes --sotw --json FILE --causeway PATH)"
            ),
        }
    }
    if args.size.clusters == 0 || args.size.services == 0 || args.size.endpoints == 0 {
        bail!("--clusters, --services and --endpoints must be at least 1");
    }
    if args.size.clusters > 500 || args.size.endpoints > 8 || args.size.services > 8000 {
        bail!("at most 500 clusters, 8,000 services and 8 endpoints per service");
    }
    Ok(args)
}

fn node(id: String, md: &[(&str, String)]) -> Node {
    Node {
        id,
        user_agent_name: "envoy".into(),
        metadata: Some(Struct {
            fields: md
                .iter()
                .map(|(k, v)| {
                    let value = Value {
                        kind: Some(Kind::StringValue(v.clone())),
                    };
                    ((*k).to_owned(), value)
                })
                .collect(),
        }),
        ..Node::default()
    }
}

/// Proxy `i`: in cluster `i % clusters`; the first of each cluster is its east-west gateway,
/// the others sidecars of the cluster's workloads in turn.
fn proxy_node(i: usize, size: Size) -> (usize, Node, (String, String)) {
    let c = i % size.clusters;
    let k = i / size.clusters;
    let cluster = mesh::cluster_name(c);
    if k == 0 {
        let md = [
            (keys::CLUSTER, cluster.clone()),
            (keys::ROLE, "gateway".to_owned()),
            (keys::WORKLOAD, "eastwest-0".to_owned()),
            (keys::NAMESPACE, mesh::GATEWAY_NAMESPACE.to_owned()),
        ];
        let id = format!("gateway~{cluster}~eastwest-0");
        let who = (
            mesh::GATEWAY_NAMESPACE.to_owned(),
            mesh::GATEWAY_ACCOUNT.to_owned(),
        );
        return (c, node(id, &md), who);
    }
    let s = (k - 1) % size.services;
    let e = ((k - 1) / size.services) % size.endpoints;
    let workload = mesh::workload_name(s, e);
    let md = [
        (keys::CLUSTER, cluster.clone()),
        (keys::NAMESPACE, mesh::NAMESPACE.to_owned()),
        (keys::WORKLOAD, workload.clone()),
        (keys::OUTBOUND_CIDR, "127.101.0.0/16".to_owned()),
    ];
    let id = format!("sidecar~{cluster}~{}~{workload}", mesh::NAMESPACE);
    (
        c,
        node(id, &md),
        (mesh::NAMESPACE.to_owned(), mesh::service_name(s)),
    )
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.proxies > args.size.clusters * (1 + args.size.services * args.size.endpoints) {
        bail!("more proxies than the mesh has workloads and gateways");
    }
    causeway_trust::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

async fn run(args: Args) -> anyhow::Result<()> {
    let size = args.size;
    let work = tempfile::tempdir()?;
    let mesh_dir = work.path().join("mesh");
    let shadow = work.path().join("shadow");
    let ca_dir = work.path().join("ca");
    let started = Instant::now();
    mesh::write_mesh(&mesh_dir, size)?;
    mesh::write_mesh(&shadow, size)?;
    let clusters: Vec<ClusterId> = (0..size.clusters)
        .map(|c| ClusterId::new(mesh::cluster_name(c)))
        .collect::<Result<_, _>>()?;
    let pki = pki::Pki::create(&ca_dir, &clusters)?;
    let mut proxies = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..args.proxies {
        let (c, node, (ns, sa)) = proxy_node(i, size);
        let tls = pki.client_tls(c, &ns, &sa)?;
        nodes.push(node.clone());
        proxies.push(SimProxy {
            index: i,
            node,
            tls,
        });
    }
    let mut oracle = oracle::Oracle::load(&shadow, &nodes)?;
    eprintln!(
        "xds-scale: mesh of {} endpoints, {} proxy certificates and the reference index ready in {:.1} s",
        size.clusters * size.services * size.endpoints,
        args.proxies,
        started.elapsed().as_secs_f64()
    );

    let log = work.path().join("control-plane.log");
    let cp_started = Instant::now();
    let mut cp = ControlPlane::spawn_with(&args.causeway, &mesh_dir, &ca_dir, log, &[])?;
    let want = (0..size.clusters)
        .map(|c| (mesh::cluster_name(c), size.services * size.endpoints))
        .collect();
    let synced = cp.wait_synced(&want, cp_started)?;
    let pid = cp.pid();
    let rss_before = procfs::rss_mib(pid).unwrap_or(0.0);
    eprintln!(
        "xds-scale: control plane synced in {:.1} s ({rss_before:.0} MiB); connecting {} proxies",
        synced.as_secs_f64(),
        args.proxies
    );

    let board = Arc::new(Board::new(args.proxies, args.changes));
    let connect_started = Instant::now();
    for p in proxies {
        tokio::spawn(p.run(cp.xds, args.delta, Arc::clone(&board)));
    }
    let first_config = wait_first_config(&board, &mut cp, connect_started).await?;
    let rss_connected = procfs::rss_mib(pid).unwrap_or(0.0);
    let reconnects: u64 = board
        .proxies
        .iter()
        .map(|p| p.reconnects.load(Ordering::Relaxed))
        .sum();
    eprintln!(
        "xds-scale: every proxy holds a full ACKed config after {:.1} s ({rss_connected:.0} MiB)",
        first_config.as_secs_f64()
    );
    for (error, count) in common_errors(board.as_ref()) {
        eprintln!("xds-scale: {count} proxies last reconnected after: {error}");
    }

    let cpu_before = procfs::cpu_seconds(pid).unwrap_or(0.0);
    let mut moves = mesh::Moves::new(size);
    let mut latencies = Vec::new();
    let (mut pushed, mut needed) = (Vec::new(), Vec::new());
    for number in 1..=args.changes {
        let change = mesh::change(number - 1, size);
        let text = moves.apply(change);
        let owed = oracle.apply(number, change, &text)?;
        for (proxy, expect) in &owed {
            if let Ok(mut slot) = board.proxies[*proxy].expect.lock() {
                *slot = Some(expect.clone());
            }
        }
        board.current.store(number, Ordering::Release);
        let written = Instant::now();
        mesh::write_atomically(
            &mesh::service_file(&mesh_dir, change.cluster, change.service),
            &text,
        )?;
        let last = wait_change(&board, &owed, number, written, &mut cp).await?;
        latencies.push(last.as_secs_f64() * 1000.0);
        needed.push(owed.len());
        tokio::time::sleep(BETWEEN_CHANGES).await;
        pushed.push(board.pushed[number].load(Ordering::Relaxed));
    }
    let cpu_after = procfs::cpu_seconds(pid).unwrap_or(0.0);
    let rss_after = procfs::rss_mib(pid).unwrap_or(0.0);
    let hwm = procfs::peak_rss_mib(pid).unwrap_or(0.0);
    latencies.sort_by(f64::total_cmp);
    let endpoints = size.clusters * size.services * size.endpoints;
    let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
    let figures = Figures {
        delta: args.delta,
        proxies: args.proxies,
        clusters: size.clusters,
        services: size.services,
        endpoints,
        changes: args.changes,
        first_config_all_s: first_config.as_secs_f64(),
        reconnects_before_first_config: reconnects,
        change_to_ack_ms: Latencies {
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            max: latencies.last().copied().unwrap_or(0.0),
        },
        pushed_per_change: mean(&pushed),
        needed_per_change: mean(&needed),
        cp_rss_mib: rss_after,
        cp_peak_rss_mib: hwm,
        cp_rss_before_proxies_mib: rss_before,
        cp_rss_bytes_per_endpoint: rss_after * 1024.0 * 1024.0 / endpoints as f64,
        cp_rss_bytes_per_proxy: (rss_after - rss_before).max(0.0) * 1024.0 * 1024.0
            / args.proxies.max(1) as f64,
        cpu_seconds_per_change: (cpu_after - cpu_before) / args.changes.max(1) as f64,
    };
    report::print(&figures);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The proxies' last connection errors, most common first (three at most).
fn common_errors(board: &Board) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for p in &board.proxies {
        if let Some(e) = p.error.lock().ok().and_then(|e| e.clone()) {
            *counts.entry(e).or_default() += 1;
        }
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts.truncate(3);
    counts
}

fn proxy_errors(board: &Board) -> Vec<String> {
    board
        .proxies
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            p.error
                .lock()
                .ok()?
                .clone()
                .map(|e| format!("proxy {i}: {e}"))
        })
        .take(5)
        .collect()
}

async fn wait_first_config(
    board: &Board,
    cp: &mut ControlPlane,
    since: Instant,
) -> anyhow::Result<Duration> {
    let mut next_report = Duration::from_secs(10);
    loop {
        let full: Vec<Instant> = board
            .proxies
            .iter()
            .filter_map(|p| *p.full_at.lock().ok()?)
            .collect();
        if full.len() == board.proxies.len() {
            let last = full.into_iter().max().unwrap_or(since);
            return Ok(last.duration_since(since));
        }
        cp.check_running()?;
        if since.elapsed() > FIRST_CONFIG_TIMEOUT {
            bail!(
                "only {} of {} proxies hold a full config after {} s; errors:\n{}",
                full.len(),
                board.proxies.len(),
                FIRST_CONFIG_TIMEOUT.as_secs(),
                proxy_errors(board).join("\n")
            );
        }
        if since.elapsed() > next_report {
            eprintln!(
                "  ... {} of {} proxies hold a full config",
                full.len(),
                board.proxies.len()
            );
            next_report += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every proxy in `owed` ACKed change `number`; the time from `written` to the
/// last ACK.
async fn wait_change(
    board: &Board,
    owed: &[(usize, client::Expectation)],
    number: usize,
    written: Instant,
    cp: &mut ControlPlane,
) -> anyhow::Result<Duration> {
    loop {
        let pending: Vec<usize> = owed
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| board.proxies[*p].done_change.load(Ordering::Acquire) != number)
            .collect();
        if pending.is_empty() {
            let last = owed
                .iter()
                .filter_map(|(p, _)| *board.proxies[*p].done_at.lock().ok()?)
                .max()
                .unwrap_or(written);
            return Ok(last.saturating_duration_since(written));
        }
        if written.elapsed() > CHANGE_TIMEOUT {
            bail!(
                "change {number}: {} of {} proxies that needed it did not ACK it within {} s ({} were pushed; first pending: {:?}); errors: {:?}",
                pending.len(),
                owed.len(),
                CHANGE_TIMEOUT.as_secs(),
                board.pushed[number].load(Ordering::Relaxed),
                &pending[..pending.len().min(5)],
                proxy_errors(board)
            );
        }
        cp.check_running()?;
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}
