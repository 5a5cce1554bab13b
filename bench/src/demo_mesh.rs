//! The example mesh run as child processes from `causeway demo --print-plan`: the control plane
//! first, then agents, proxies and apps, all on 127.0.0.0/8. Dropping a [`DemoMesh`] kills them.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// The workspace root (the parent of `bench/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The built `causeway` binary, release preferred.
pub fn causeway_bin() -> anyhow::Result<PathBuf> {
    let root = workspace();
    ["release", "debug"]
        .iter()
        .map(|p| root.join("target").join(p).join("causeway"))
        .find(|p| p.exists())
        .context("build causeway first: cargo build --release -p causeway")
}

/// `$CAUSEWAY_ENVOY`, else what `scripts/ensure-envoy` installs or finds.
pub fn envoy_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("CAUSEWAY_ENVOY") {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new(workspace().join("scripts/ensure-envoy"))
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/ensure-envoy")?;
    if !out.status.success() {
        bail!("scripts/ensure-envoy failed");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Copies a directory tree (the example mesh) so the churn never touches the committed one.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// One blocking HTTP/1.1 GET with `Connection: close` (debug API, Envoy admin); `None` on any
/// failure or a non-2xx status.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, mut body) = out.split_once("\r\n\r\n")?;
    let status_ok = head.split_whitespace().nth(1)?.starts_with('2');
    if !status_ok {
        return None;
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(body.to_owned());
    }
    // Envoy's admin answers HTTP/1.1 in chunks.
    let mut decoded = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 || rest.len() < n {
            break;
        }
        decoded.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    Some(decoded)
}

/// A process of the plan.
pub struct Proc {
    pub name: String,
    /// `control-plane`, `agent`, `gateway`, `sidecar` or `app`.
    pub kind: String,
    args: Vec<String>,
    log: PathBuf,
    pub child: Child,
    /// How many times it was started.
    pub starts: u32,
}

pub struct DemoMesh {
    pub plan: Value,
    pub run_dir: PathBuf,
    pub debug: SocketAddr,
    bin: PathBuf,
    procs: Vec<Proc>,
}

impl DemoMesh {
    /// `causeway demo --print-plan` for `mesh_dir`, with state under `run_dir`.
    pub fn plan(
        bin: &Path,
        envoy: &Path,
        mesh_dir: &Path,
        run_dir: &Path,
        port_base: u16,
    ) -> anyhow::Result<Value> {
        Self::plan_with(bin, envoy, mesh_dir, run_dir, port_base, &[])
    }

    /// [`Self::plan`] with more `causeway demo` flags (`--gateway-data-plane causeway`).
    pub fn plan_with(
        bin: &Path,
        envoy: &Path,
        mesh_dir: &Path,
        run_dir: &Path,
        port_base: u16,
        demo_args: &[&str],
    ) -> anyhow::Result<Value> {
        let out = Command::new(bin)
            .args(["demo", "--print-plan", "--port-base"])
            .arg(port_base.to_string())
            .arg("--mesh-dir")
            .arg(mesh_dir)
            .arg("--run-dir")
            .arg(run_dir)
            .arg("--envoy")
            .arg(envoy)
            .args(demo_args)
            .output()?;
        if !out.status.success() {
            bail!("plan: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Starts every process of `plan` (logs in `run_dir/<name>.log`), waiting for the control
    /// plane's health before the rest.
    pub fn start(bin: &Path, plan: Value, run_dir: &Path) -> anyhow::Result<Self> {
        let debug: SocketAddr = plan["debug"].as_str().context("debug")?.parse()?;
        let mut mesh = DemoMesh {
            plan,
            run_dir: run_dir.to_path_buf(),
            debug,
            bin: bin.to_path_buf(),
            procs: Vec::new(),
        };
        let specs = mesh.plan["processes"]
            .as_array()
            .context("processes")?
            .clone();
        for spec in specs {
            let name = spec["name"].as_str().context("name")?.to_owned();
            let args: Vec<String> = spec["args"]
                .as_array()
                .context("args")?
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            let kind = spec["kind"].as_str().unwrap_or("?").to_owned();
            let log = run_dir.join(format!("{name}.log"));
            let child = spawn(bin, &args, &log)?;
            let is_cp = kind == "control-plane";
            mesh.procs.push(Proc {
                name,
                kind,
                args,
                log,
                child,
                starts: 1,
            });
            if is_cp {
                mesh.wait_healthy(Duration::from_secs(20))?;
            }
        }
        Ok(mesh)
    }

    pub fn processes(&self) -> &[Proc] {
        &self.procs
    }

    /// The pid of the process called `name`.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// Waits until the control plane answers `/healthz`.
    pub fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while http_get(self.debug, "/healthz").is_none() {
            if start.elapsed() > timeout {
                bail!("control plane not healthy after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The control plane's mesh version (`/debug/mesh`).
    pub fn mesh_version(&self) -> Option<u64> {
        let body = http_get(self.debug, "/debug/mesh")?;
        serde_json::from_str::<Value>(&body).ok()?["version"].as_u64()
    }

    /// Whether every proxy of the plan is connected and has ACKed the current mesh version.
    pub fn all_in_sync(&self) -> bool {
        let want = self
            .procs
            .iter()
            .filter(|p| p.kind == "gateway" || p.kind == "sidecar")
            .count();
        http_get(self.debug, "/debug/proxies")
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .and_then(|v| {
                v["proxies"]
                    .as_array()
                    .map(|p| p.len() >= want && p.iter().all(|x| x["inSync"] == true))
            })
            .unwrap_or(false)
    }

    /// The entries of `/debug/proxies` that are not in sync, for the report of a failure.
    pub fn out_of_sync(&self) -> Vec<String> {
        let Some(v) = http_get(self.debug, "/debug/proxies")
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
        else {
            return vec!["could not read /debug/proxies".into()];
        };
        let mesh_version = v["meshVersion"].clone();
        v["proxies"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter(|x| x["inSync"] != true)
                    .map(|x| format!("{x} (mesh version {mesh_version})"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until [`Self::all_in_sync`].
    pub fn wait_synced(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.all_in_sync() {
            if start.elapsed() > timeout {
                bail!("proxies not in sync after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// The admin address of a process of the plan.
    pub fn admin_of(&self, name: &str) -> anyhow::Result<SocketAddr> {
        self.plan["processes"]
            .as_array()
            .and_then(|p| p.iter().find(|s| s["name"] == name))
            .and_then(|s| s["admin"].as_str())
            .with_context(|| format!("no admin address for {name}"))?
            .parse()
            .context("admin address")
    }

    /// The outbound listener of `sidecar` for `service` (`namespace/name`), from Envoy's admin.
    pub fn outbound(&self, sidecar: &str, service: &str) -> anyhow::Result<SocketAddr> {
        let listeners =
            http_get(self.admin_of(sidecar)?, "/listeners").context("Envoy admin /listeners")?;
        listeners
            .lines()
            .find_map(|l| {
                l.split("::")
                    .next()?
                    .strip_prefix("outbound|")?
                    .strip_suffix(&format!("|{service}"))
                    .map(str::to_owned)
            })
            .with_context(|| format!("{sidecar} has no outbound listener for {service}"))?
            .parse()
            .context("listener address")
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process called `name` with kill(1): a stopped
    /// process keeps its sockets open and answers nothing, what callers see of a hung host or
    /// a black-holed network.
    pub fn signal(&self, name: &str, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid_of(name)
            .with_context(|| format!("no process {name}"))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .context("kill(1)")?;
        if !status.success() {
            bail!("kill -{signal} {pid} ({name}) failed");
        }
        Ok(())
    }

    /// Kills the process called `name` and starts it again with the same arguments (its log
    /// continues); returns the pid of the old process.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<u32> {
        let proc = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no process {name}"))?;
        let old = proc.child.id();
        proc.child.kill()?;
        proc.child.wait()?;
        proc.child = spawn(&self.bin, &proc.args, &proc.log)?;
        proc.starts += 1;
        Ok(old)
    }
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("log {}", log.display()))?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} {}", bin.display(), args.join(" ")))
}

impl Drop for DemoMesh {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
