//! Soak: a bounded cross-network load (default 1,000,000 requests, at most 20 minutes) from the
//! client sidecar of cluster alpha to `demo/greeter` in cluster gamma — sidecar → gamma's
//! east-west gateway → greeter's sidecar, mTLS end to end — while the mesh directory changes
//! every second and the control plane is killed and restarted once, halfway.
//!
//! Prints requests, failures by kind, req/s, p50/p99/max, how many mesh versions the churn
//! produced, how long the control plane was away, and the resident memory of every process
//! after warm-up and at the end (a leak shows as growth). Goals: 0 failed requests, flat RSS.
//!
//! Run: `make soak`, or `cargo build --release -p causeway -p causeway-bench` and
//! `./target/release/soak [--requests N] [--connections N] [--max-seconds N]
//! [--change-every-ms N] [--json FILE]`.

#[path = "soak/churn.rs"]
mod churn;
#[path = "soak/report.rs"]
mod report;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use causeway_bench::demo_mesh::{causeway_bin, copy_tree, envoy_bin, workspace, DemoMesh};
use causeway_bench::http_load::{self, LoadSpec};
use causeway_bench::procfs::rss_mib;
use report::{ProcessMemory, Report};

struct Flags {
    requests: u64,
    connections: usize,
    max_seconds: u64,
    change_every: Duration,
    json: Option<std::path::PathBuf>,
}

fn flags() -> anyhow::Result<Flags> {
    let mut f = Flags {
        requests: 1_000_000,
        connections: 16,
        max_seconds: 1200,
        change_every: Duration::from_millis(1000),
        json: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).context("flags take a value")?;
        match pair[0].as_str() {
            "--requests" => f.requests = v.parse()?,
            "--connections" => f.connections = v.parse()?,
            "--max-seconds" => f.max_seconds = v.parse()?,
            "--change-every-ms" => f.change_every = Duration::from_millis(v.parse()?),
            "--json" => f.json = Some(v.into()),
            other => bail!(
                "unknown flag {other} (--requests, --connections, --max-seconds, \
                 --change-every-ms, --json)"
            ),
        }
    }
    Ok(f)
}

fn main() -> anyhow::Result<()> {
    let flags = flags()?;
    let bin = causeway_bin()?;
    let envoy = envoy_bin()?;
    let run_dir = std::env::temp_dir().join(format!("causeway-soak-{}", std::process::id()));
    let mesh_dir = run_dir.join("mesh");
    copy_tree(&workspace().join("examples/three-clusters"), &mesh_dir)?;
    churn::write(&mesh_dir, 0)?;
    let plan = DemoMesh::plan(&bin, &envoy, &mesh_dir, &run_dir, 32000)?;
    let mut mesh = DemoMesh::start(&bin, plan, &run_dir)?;
    mesh.wait_synced(Duration::from_secs(90))?;
    let target = mesh.outbound("alpha-client-sidecar", "demo/greeter")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Warm-up (not counted): connection pools, TLS sessions, allocator arenas.
    let warm = rt.block_on(http_load::run(LoadSpec {
        addr: target,
        connections: flags.connections,
        deadline: Instant::now() + Duration::from_secs(60),
        requests: Some(20_000),
        timeout: Duration::from_secs(5),
        progress: None,
        count_workloads: false,
    }))?;
    if warm.failed() > 0 || warm.ok() == 0 {
        bail!("warm-up failed: {}", warm.failure_summary());
    }
    let mut memory: Vec<ProcessMemory> = mesh
        .processes()
        .iter()
        .map(|p| ProcessMemory::new(&p.name, &p.kind, rss_mib(p.child.id())))
        .collect();

    let progress = Arc::new(AtomicU64::new(0));
    let spec = LoadSpec {
        addr: target,
        connections: flags.connections,
        deadline: Instant::now() + Duration::from_secs(flags.max_seconds),
        requests: Some(flags.requests),
        timeout: Duration::from_secs(5),
        progress: Some(progress.clone()),
        count_workloads: false,
    };
    let load = std::thread::spawn(move || rt.block_on(http_load::run(spec)));

    let mut report = Report::new(&flags, target);
    let mut versions = VersionCount::default();
    versions.observe(mesh.mesh_version());
    let mut step = 0u64;
    let mut next_change = Instant::now();
    let mut restart: Option<RestartWatch> = None;
    while !load.is_finished() {
        if Instant::now() >= next_change {
            step += 1;
            churn::write(&mesh_dir, step)?;
            next_change += flags.change_every;
            versions.observe(mesh.mesh_version());
        }
        match &mut restart {
            None if progress.load(Ordering::Relaxed) >= flags.requests / 2 => {
                restart = Some(restart_control_plane(&mut mesh, &mut memory)?);
            }
            Some(watch) => watch.poll(&mesh, &mut memory),
            None => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    report.restart = restart.map(|w| w.finish());
    let result = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    report.changes_written = step;
    // The last change must still reach every proxy: the churn ends in a synced mesh.
    let synced = mesh.wait_synced(Duration::from_secs(30)).is_ok();
    versions.observe(mesh.mesh_version());
    report.versions_published = versions.advanced;
    report.synced_at_end = synced;
    if !synced {
        for p in mesh.out_of_sync() {
            eprintln!("not in sync: {p}");
        }
    }
    report.mesh_errors = mesh_errors(&mesh);
    for (m, p) in memory.iter_mut().zip(mesh.processes()) {
        m.end = rss_mib(p.child.id());
    }
    report.memory = memory;
    report.load = Some(result);
    report.print();
    if let Some(path) = &flags.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report.json())?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(mesh);
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}

/// Kills the control plane (xDS, CA and debug API) and starts it again on the same ports and
/// CA directory, without waiting: the churn goes on while it comes back.
fn restart_control_plane(
    mesh: &mut DemoMesh,
    memory: &mut [ProcessMemory],
) -> anyhow::Result<RestartWatch> {
    let cp = mesh
        .processes()
        .iter()
        .position(|p| p.kind == "control-plane")
        .context("no control plane in the plan")?;
    memory[cp].before_restart = rss_mib(mesh.processes()[cp].child.id());
    let name = mesh.processes()[cp].name.clone();
    let started = Instant::now();
    mesh.restart(&name)?;
    Ok(RestartWatch {
        cp,
        started,
        healthy: None,
        synced: None,
    })
}

/// How long the restarted control plane took to answer and to have every proxy in sync.
struct RestartWatch {
    cp: usize,
    started: Instant,
    healthy: Option<Duration>,
    synced: Option<Duration>,
}

impl RestartWatch {
    fn poll(&mut self, mesh: &DemoMesh, memory: &mut [ProcessMemory]) {
        if self.healthy.is_none() && mesh.mesh_version().is_some() {
            self.healthy = Some(self.started.elapsed());
        }
        if self.healthy.is_some() && self.synced.is_none() && mesh.all_in_sync() {
            self.synced = Some(self.started.elapsed());
            memory[self.cp].after_restart = rss_mib(mesh.processes()[self.cp].child.id());
        }
    }

    fn finish(self) -> report::Restart {
        report::Restart {
            healthy_ms: self.healthy.map(|d| d.as_millis() as u64),
            synced_ms: self.synced.map(|d| d.as_millis() as u64),
        }
    }
}

/// Mesh versions published while the churn ran, across the restart (a new control plane counts
/// from 1 again).
#[derive(Default)]
struct VersionCount {
    last: Option<u64>,
    advanced: u64,
}

impl VersionCount {
    fn observe(&mut self, now: Option<u64>) {
        let Some(now) = now else { return };
        match self.last {
            Some(last) if now >= last => self.advanced += now - last,
            Some(_) => self.advanced += now.saturating_sub(1),
            None => {}
        }
        self.last = Some(now);
    }
}

fn mesh_errors(mesh: &DemoMesh) -> Vec<String> {
    causeway_bench::demo_mesh::http_get(mesh.debug, "/debug/errors")
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["errors"].as_array().cloned())
        .map(|a| a.iter().map(|e| e.to_string()).collect())
        .unwrap_or_else(|| vec!["could not read /debug/errors".into()])
}
