//! The processes of a run: the backends (up for the whole bench) and a path's proxies (up only
//! while that path is measured), each with its log in the run directory; readiness through the
//! admin API and then through the path itself; the bounded load and each proxy's CPU and peak
//! RSS around it.

use std::ffi::OsString;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use causeway_bench::demo_mesh::http_get;
use causeway_bench::http_load::{self, LoadResult, LoadSpec};
use causeway_bench::procfs::{
    cpu_seconds, peak_rss_mib, rss_anon_mib, rss_file_mib, rss_mib, threads,
};
use serde_json::Value;

/// A child process, killed when dropped.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[OsString],
        env: &[(&str, String)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let out = File::create(&log).with_context(|| format!("log {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}: {}", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            log,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error with the end of its log once it has exited.
    pub fn alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 15)
            ),
            Err(e) => bail!("{}: {e}", self.name),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines of a log.
pub fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Warnings every Envoy prints at start on these bootstraps, not about the run: the bootstraps
/// are the control plane's resources, which leave the connection limit to the overload
/// manager of the xDS bootstrap (`causeway_xds::bootstrap`), absent from a static one.
const EXPECTED: &[&str] = &["no configured limit to the number of allowed active downstream"];

/// The lines of a log that report a problem (Envoy's `[warning]`/`[error]`/`[critical]`, the
/// Causeway proxy's `WARN`/`ERROR`), but for [`EXPECTED`].
pub fn problems(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| {
            ["[warning]", "[error]", "[critical]", " WARN ", " ERROR "]
                .iter()
                .any(|m| l.contains(m))
                && !EXPECTED.iter().any(|e| l.contains(e))
        })
        .map(str::to_owned)
        .collect()
}

/// Fails when something already accepts connections on one of `addrs` (another bench, a demo
/// or an end-to-end suite on the example mesh's addresses): both data planes listen with
/// SO_REUSEPORT and would silently share the load with it.
pub fn ensure_free(addrs: &[SocketAddr]) -> anyhow::Result<()> {
    for a in addrs {
        if TcpStream::connect_timeout(a, Duration::from_millis(300)).is_ok() {
            bail!(
                "{a} is already in use by another process (a demo or an end-to-end test on the \
                 example mesh's addresses?); stop it and run again"
            );
        }
    }
    Ok(())
}

/// Waits until `admin` answers `/ready` with 200 (both data planes have it).
pub fn wait_ready(p: &mut Proc, admin: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        p.alive()?;
        if http_get(admin, "/ready").is_some() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "{} not ready on {admin}/ready after {timeout:?}; the end of its log:\n{}",
                p.name,
                tail(&p.log, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a request at `entry` is answered by a backend reporting one of `workloads`
/// (this bench's own backends, through every proxy of the path). One answer is enough: one
/// request at a time keeps to one upstream connection, which a gateway passes to one pod;
/// [`measure`] checks in its warm-up that every backend answers.
pub fn wait_answered(
    entry: SocketAddr,
    workloads: &[&str],
    procs: &mut [Proc],
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        for p in procs.iter_mut() {
            p.alive()?;
        }
        let last = match http_get(entry, "/") {
            Some(body) => {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                match v["workload"].as_str() {
                    Some(w) if workloads.contains(&w) => return Ok(()),
                    Some(w) => bail!(
                        "{entry} is answered by workload {w:?}, not this bench's {workloads:?}: \
                         another process holds the example mesh's addresses"
                    ),
                    None => format!("answer without a workload: {body}"),
                }
            }
            None => "no 2xx answer".to_owned(),
        };
        if start.elapsed() > timeout {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("--- {}:\n{}", p.name, tail(&p.log, 10)))
                .collect();
            bail!("{entry}: {last} after {timeout:?}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One proxy's figures over the measured load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyFigures {
    pub name: String,
    pub cpu_seconds: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// Resident memory once ready, before any load.
    pub idle_rss_mib: Option<f64>,
    /// Resident anonymous and file-backed memory after the load.
    pub rss_anon_mib: Option<f64>,
    pub rss_file_mib: Option<f64>,
    pub threads: Option<u32>,
}

pub struct LoadShape {
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
}

fn load(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    count_workloads: bool,
) -> anyhow::Result<LoadResult> {
    // Bounded in time and in count (no loop can run away with a fast path).
    let cap = duration.as_secs().max(1).saturating_mul(1_000_000);
    rt.block_on(http_load::run(LoadSpec {
        addr,
        connections,
        deadline: Instant::now() + duration,
        requests: Some(cap),
        timeout: Duration::from_secs(5),
        progress: None,
        count_workloads,
    }))
}

/// A warm-up (not counted), then the measured load at `entry`, with the CPU each of `procs`
/// spent during it and their peak RSS; every proxy must still run at the end. With more than
/// one of `workloads` (the path's backends), the answers are counted per backend
/// (`LoadResult::workloads`) and each backend must have answered in the warm-up.
pub fn measure(
    rt: &tokio::runtime::Runtime,
    entry: SocketAddr,
    procs: &mut [Proc],
    shape: &LoadShape,
    workloads: &[&str],
) -> anyhow::Result<(LoadResult, Vec<ProxyFigures>)> {
    let count_workloads = workloads.len() > 1;
    let idle: Vec<Option<f64>> = procs.iter().map(|p| rss_mib(p.pid())).collect();
    if !shape.warmup.is_zero() {
        let warm = load(rt, entry, shape.connections, shape.warmup, count_workloads)?;
        let silent: Vec<&&str> = workloads
            .iter()
            .filter(|w| count_workloads && !warm.workloads.contains_key(**w))
            .collect();
        if !silent.is_empty() {
            bail!(
                "{entry}: no answer from {silent:?} in the warm-up (answers: {:?}, failures: {})",
                warm.workloads,
                warm.failure_summary()
            );
        }
    }
    let before: Vec<Option<f64>> = procs.iter().map(|p| cpu_seconds(p.pid())).collect();
    let result = load(
        rt,
        entry,
        shape.connections,
        shape.duration,
        count_workloads,
    )?;
    let figures = procs
        .iter()
        .zip(before.into_iter().zip(idle))
        .map(|(p, (b, idle))| ProxyFigures {
            name: p.name.clone(),
            cpu_seconds: cpu_seconds(p.pid()).zip(b).map(|(a, b)| a - b),
            peak_rss_mib: peak_rss_mib(p.pid()),
            idle_rss_mib: idle,
            rss_anon_mib: rss_anon_mib(p.pid()),
            rss_file_mib: rss_file_mib(p.pid()),
            threads: threads(p.pid()),
        })
        .collect();
    for p in procs.iter_mut() {
        p.alive()
            .with_context(|| format!("{} died under load", p.name))?;
    }
    Ok((result, figures))
}
