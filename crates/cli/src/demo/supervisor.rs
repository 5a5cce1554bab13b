//! Supervised child processes: each logs to a file in the run directory, a crash is reported
//! with the tail of its log, and stopping the supervisor stops every child.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use tokio::process::{Child, Command};

use super::plan::ProcessSpec;

struct Running {
    spec: ProcessSpec,
    child: Child,
    log: PathBuf,
}

/// The set of running children.
pub struct Supervisor {
    binary: PathBuf,
    log_dir: PathBuf,
    running: BTreeMap<String, Running>,
    stopped: BTreeMap<String, ProcessSpec>,
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Supervisor {
    /// A supervisor running `binary` (this executable), logging into `log_dir`.
    pub fn new(binary: PathBuf, log_dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Self {
            binary,
            log_dir,
            running: BTreeMap::new(),
            stopped: BTreeMap::new(),
        })
    }

    /// Starts a child.
    pub fn start(&mut self, spec: &ProcessSpec) -> anyhow::Result<()> {
        let log = self.log_dir.join(format!("{}.log", spec.name));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(&self.binary)
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", spec.name))?;
        self.stopped.remove(&spec.name);
        self.running.insert(
            spec.name.clone(),
            Running {
                spec: spec.clone(),
                child,
                log,
            },
        );
        Ok(())
    }

    /// Stops a child (SIGKILL) and remembers it so it can be restarted.
    pub async fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        let mut r = self
            .running
            .remove(name)
            .with_context(|| format!("no running process {name}"))?;
        let _ = r.child.start_kill();
        let _ = r.child.wait().await;
        self.stopped.insert(name.to_owned(), r.spec);
        Ok(())
    }

    /// Restarts a child stopped with [`Self::stop`].
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let spec = self
            .stopped
            .get(name)
            .cloned()
            .with_context(|| format!("{name} was not stopped"))?;
        self.start(&spec)
    }

    /// Children that exited since the last call: (name, exit status, log tail).
    pub fn crashed(&mut self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let exited = match self.running.get_mut(&name) {
                Some(r) => match r.child.try_wait() {
                    Ok(Some(status)) => Some(status.to_string()),
                    Ok(None) => None,
                    Err(e) => Some(e.to_string()),
                },
                None => None,
            };
            if let Some(status) = exited {
                if let Some(r) = self.running.remove(&name) {
                    out.push((name.clone(), status, tail(&r.log, 15)));
                    self.stopped.insert(name, r.spec);
                }
            }
        }
        out
    }

    /// Log file of a child.
    pub fn log_of(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Number of running children.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Stops every child.
    pub async fn shutdown(&mut self) {
        for r in self.running.values_mut() {
            let _ = r.child.start_kill();
        }
        for (_, mut r) in std::mem::take(&mut self.running) {
            let _ = r.child.wait().await;
        }
    }
}
