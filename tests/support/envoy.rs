//! A real Envoy run from a static config written by a test, and Envoy admin stats as numbers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::{envoy_bin, free_port, http_get, wait_for, Process};

/// Envoy's counters and gauges from its admin `/stats` (histograms left out), by full name.
pub fn stats(admin: SocketAddr) -> BTreeMap<String, u64> {
    let (status, body) = http_get(admin, "/stats").expect("Envoy admin /stats");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(": ")?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// One stat of [`stats`]; panics, listing the names that share its first two parts, when
/// Envoy has no stat of that name.
pub fn stat(admin: SocketAddr, name: &str) -> u64 {
    let all = stats(admin);
    all.get(name).copied().unwrap_or_else(|| {
        let prefix: String = name.split('.').take(2).collect::<Vec<_>>().join(".");
        let similar: Vec<&String> = all.keys().filter(|k| k.starts_with(&prefix)).collect();
        panic!("Envoy has no stat {name}; {prefix}.*: {similar:#?}")
    })
}

/// The stats whose value differs between two [`stats`] snapshots: name -> (before, after); a
/// stat missing on one side counts as 0 there.
pub fn changed(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for name in before.keys().chain(after.keys()) {
        let (b, a) = (
            before.get(name).copied().unwrap_or(0),
            after.get(name).copied().unwrap_or(0),
        );
        if a != b {
            out.insert(name.clone(), (b, a));
        }
    }
    out
}

/// Envoy over a static config, killed on drop.
pub struct Envoy {
    /// The process (log in the test's directory).
    pub process: Process,
    /// Its admin address.
    pub admin: SocketAddr,
}

impl Envoy {
    /// Writes `dir/envoy.yaml` (an admin listener on a free port, then `static_resources`,
    /// YAML indented as a top-level key's value) and starts Envoy on it, one worker, with
    /// connection-level debug logs (certificate verification errors are logged at debug);
    /// waits up to 30 s for `/ready`. Panics when Envoy is missing (it never skips).
    pub fn start(dir: &Path, static_resources: &str) -> Self {
        let admin_port = free_port();
        let config = format!(
            "admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}\nstatic_resources:{static_resources}\n"
        );
        std::fs::write(dir.join("envoy.yaml"), &config).expect("write config");
        let envoy = envoy_bin();
        let mut process = Process::start_program(
            envoy.to_str().expect("utf-8"),
            &[
                "-c",
                dir.join("envoy.yaml").to_str().expect("utf-8"),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "info",
                "--component-log-level",
                "connection:debug",
            ],
            &dir.join("envoy.log"),
        );
        let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
        let ready = wait_for(Duration::from_secs(30), || {
            assert!(
                process.is_running(),
                "Envoy exited:\n{}",
                process.log_text()
            );
            matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
        });
        assert!(ready.is_some(), "Envoy not ready:\n{}", process.log_text());
        Self { process, admin }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// Whether it is still running and answers `/ready` with 200.
    pub fn is_running_and_ready(&mut self) -> bool {
        self.process.is_running() && matches!(http_get(self.admin, "/ready"), Ok((200, _)))
    }

    /// See [`stats`].
    pub fn stats(&self) -> BTreeMap<String, u64> {
        stats(self.admin)
    }

    /// See [`stat`].
    pub fn stat(&self, name: &str) -> u64 {
        stat(self.admin, name)
    }
}
