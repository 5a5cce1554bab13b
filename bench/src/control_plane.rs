//! The `causeway control-plane` child process of the benchmarks and the bits of its debug API
//! they read.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// Upper bound for the control plane to start and sync.
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);

/// A free port on 127.0.0.1 (released at once; the control plane binds it right after).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One GET with `Connection: close`; the status code and body.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: causeway\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP header")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok((status, body.to_owned()))
}

pub fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let (status, body) = http_get(addr, path)?;
    if status != 200 {
        bail!("GET {path}: {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
}

/// A `causeway control-plane` child process, killed on drop.
pub struct ControlPlane {
    child: Child,
    /// Its debug API.
    pub debug: SocketAddr,
    /// Its ADS server.
    pub xds: SocketAddr,
    log: PathBuf,
}

impl ControlPlane {
    /// Starts it with free ports on 127.0.0.1, its output in `log`.
    pub fn spawn(bin: &Path, mesh_dir: &Path, ca_dir: &Path, log: PathBuf) -> anyhow::Result<Self> {
        Self::spawn_with(bin, mesh_dir, ca_dir, log, &[])
    }

    /// [`Self::spawn`] with more arguments.
    pub fn spawn_with(
        bin: &Path,
        mesh_dir: &Path,
        ca_dir: &Path,
        log: PathBuf,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let debug = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let ca = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("control-plane")
            .arg("--mesh-dir")
            .arg(mesh_dir)
            .args(["--debug-addr", &debug.to_string()])
            .args(["--xds-addr", &xds.to_string()])
            .args(["--ca-addr", &ca.to_string()])
            .arg("--ca-dir")
            .arg(ca_dir)
            .arg("--read-only-clusters")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            debug,
            xds,
            log,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when it has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "control plane exited ({status}); log {}:\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Polls `/debug/clusters` every 20 ms until every cluster in `want` (id → endpoints) is
    /// synced with that many endpoints; returns the time since `start`.
    pub fn wait_synced(
        &mut self,
        want: &BTreeMap<String, usize>,
        start: Instant,
    ) -> anyhow::Result<Duration> {
        let mut last = String::from("no answer yet");
        let mut next_report = Duration::from_secs(10);
        while start.elapsed() < SYNC_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "control plane exited ({status}); log {}:\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            if let Ok(rows) = get_json(self.debug, "/debug/clusters") {
                let rows = rows.as_array().cloned().unwrap_or_default();
                let done = rows.iter().filter(|r| row_done(r, want)).count();
                if done == want.len() {
                    return Ok(start.elapsed());
                }
                last = format!("{done}/{} clusters synced", want.len());
            }
            if start.elapsed() > next_report {
                eprintln!("  ... {last} after {:.0} s", start.elapsed().as_secs_f64());
                next_report += Duration::from_secs(10);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "not synced after {} s ({last}); log {}:\n{}",
            SYNC_TIMEOUT.as_secs(),
            self.log.display(),
            self.log_tail()
        )
    }

    /// VmRSS and VmHWM in bytes.
    pub fn rss(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("reading the control plane's /proc status")?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in /proc status"))?;
            Ok(kb * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `/debug/clusters` row is done when it is synced (and, for Kubernetes members, its
/// watches are) with the expected number of endpoints.
fn row_done(row: &Value, want: &BTreeMap<String, usize>) -> bool {
    let Some(expected) = row["id"].as_str().and_then(|id| want.get(id)) else {
        return false;
    };
    let kube_ok = row["source"] != "kubernetes" || row["kubernetes"]["state"] == "synced";
    row["synced"] == true && kube_ok && row["endpoints"].as_u64() == Some(*expected as u64)
}
