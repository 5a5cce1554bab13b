//! What the soak prints and writes as JSON.

use std::net::SocketAddr;

use causeway_bench::http_load::LoadResult;
use serde_json::json;

/// Growth of resident memory tolerated as "flat": allocator arenas and caches settle in steps.
const FLAT_MIB: f64 = 2.0;
const FLAT_RATIO: f64 = 0.10;

pub struct Restart {
    pub healthy_ms: Option<u64>,
    pub synced_ms: Option<u64>,
}

pub struct ProcessMemory {
    pub name: String,
    pub kind: String,
    /// After the warm-up, before the soak.
    pub start: Option<f64>,
    pub end: Option<f64>,
    /// Control plane: the first instance just before it was killed, the second once every
    /// proxy was back in sync.
    pub before_restart: Option<f64>,
    pub after_restart: Option<f64>,
}

impl ProcessMemory {
    pub fn new(name: &str, kind: &str, start: Option<f64>) -> Self {
        ProcessMemory {
            name: name.into(),
            kind: kind.into(),
            start,
            end: None,
            before_restart: None,
            after_restart: None,
        }
    }

    /// The baseline the end is compared with: the restarted instance's own start if any.
    fn baseline(&self) -> Option<f64> {
        self.after_restart.or(self.start)
    }

    fn growth(&self) -> Option<f64> {
        Some(self.end? - self.baseline()?)
    }

    fn flat(&self) -> bool {
        match (self.growth(), self.baseline()) {
            (Some(g), Some(b)) => g <= FLAT_MIB.max(b * FLAT_RATIO),
            _ => false,
        }
    }
}

pub struct Report {
    pub requests: u64,
    pub connections: usize,
    pub target: SocketAddr,
    pub change_every_ms: u64,
    pub restart: Option<Restart>,
    pub changes_written: u64,
    /// Mesh versions the control plane published during the soak (both instances).
    pub versions_published: u64,
    pub synced_at_end: bool,
    pub mesh_errors: Vec<String>,
    pub memory: Vec<ProcessMemory>,
    pub load: Option<LoadResult>,
}

fn mib(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

impl Report {
    pub fn new(flags: &crate::Flags, target: SocketAddr) -> Self {
        Report {
            requests: flags.requests,
            connections: flags.connections,
            target,
            change_every_ms: flags.change_every.as_millis() as u64,
            restart: None,
            changes_written: 0,
            versions_published: 0,
            synced_at_end: false,
            mesh_errors: Vec::new(),
            memory: Vec::new(),
            load: None,
        }
    }

    pub fn print(&self) {
        println!(
            "causeway soak: {} requests over {} keep-alive connections to demo/greeter via {} \
             (alpha sidecar -> gamma east-west gateway -> greeter sidecar, mTLS), mesh \
             directory changed every {} ms, control plane restarted once at half",
            self.requests, self.connections, self.target, self.change_every_ms
        );
        if let Some(l) = &self.load {
            println!("{:<34} {}", "requests sent", l.sent);
            println!("{:<34} {}", "answered 2xx", l.ok());
            println!(
                "{:<34} {} ({})   goal: 0",
                "failed",
                l.failed(),
                l.failure_summary()
            );
            println!("{:<34} {:.1}", "duration s", l.elapsed.as_secs_f64());
            println!("{:<34} {:.0}", "req/s", l.rps());
            println!(
                "{:<34} {:.2} / {:.2} / {:.2}",
                "latency p50 / p99 / max ms",
                l.percentile_ms(0.5),
                l.percentile_ms(0.99),
                l.percentile_ms(1.0)
            );
            println!("{:<34} {}", "connections opened", l.connections_opened);
        }
        println!("{:<34} {}", "mesh directory changes", self.changes_written);
        println!(
            "{:<34} {}",
            "mesh versions published", self.versions_published
        );
        if let Some(r) = &self.restart {
            let ms = |v: Option<u64>| v.map_or("never".into(), |v| format!("{v} ms"));
            println!(
                "{:<34} healthy after {}, every proxy in sync after {}",
                "control plane restart",
                ms(r.healthy_ms),
                ms(r.synced_ms)
            );
        }
        println!(
            "{:<34} {}",
            "all proxies in sync at the end", self.synced_at_end
        );
        println!(
            "{:<34} {}",
            "mesh errors at the end",
            if self.mesh_errors.is_empty() {
                "none".into()
            } else {
                self.mesh_errors.join("; ")
            }
        );
        println!(
            "\n{:<34} {:>13} {:>10} {:>10} {:>8}  (RSS MiB; goal: flat, growth <= max({FLAT_MIB} MiB, {:.0}%))",
            "process", "kind", "start", "end", "growth",
            FLAT_RATIO * 100.0
        );
        for m in &self.memory {
            let start = match (m.before_restart, m.after_restart) {
                (Some(b), Some(a)) => format!("{}|{}>{}", mib(m.start), mib(Some(b)), mib(Some(a))),
                _ => mib(m.start),
            };
            println!(
                "{:<34} {:>13} {:>10} {:>10} {:>8} {}",
                m.name,
                m.kind,
                start,
                mib(m.end),
                m.growth().map_or("-".into(), |g| format!("{g:+.1}")),
                if m.flat() { "flat" } else { "GROWS" }
            );
        }
        if self.memory.iter().any(|m| m.before_restart.is_some()) {
            println!(
                "(control plane: first instance start|at kill > second instance once in sync)"
            );
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let load = self.load.as_ref().map(|l| {
            json!({
                "sent": l.sent,
                "ok": l.ok(),
                "failed": l.failed(),
                "failures": l.failures,
                "seconds": l.elapsed.as_secs_f64(),
                "rps": l.rps(),
                "p50_ms": l.percentile_ms(0.5),
                "p99_ms": l.percentile_ms(0.99),
                "max_ms": l.percentile_ms(1.0),
                "connections_opened": l.connections_opened,
            })
        });
        json!({
            "requests": self.requests,
            "connections": self.connections,
            "change_every_ms": self.change_every_ms,
            "load": load,
            "changes_written": self.changes_written,
            "mesh_versions_published": self.versions_published,
            "restart": self.restart.as_ref().map(|r| json!({"healthy_ms": r.healthy_ms, "synced_ms": r.synced_ms})),
            "synced_at_end": self.synced_at_end,
            "mesh_errors": self.mesh_errors,
            "rss_mib": self.memory.iter().map(|m| json!({
                "name": m.name, "kind": m.kind, "start": m.start, "end": m.end,
                "before_restart": m.before_restart, "after_restart": m.after_restart,
                "growth": m.growth(), "flat": m.flat(),
            })).collect::<Vec<_>>(),
        })
    }
}
