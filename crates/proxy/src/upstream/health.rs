//! Active health checks, per worker (Envoy's connect-only TCP health checker): every endpoint a
//! cluster's check covers gets a task that connects to it each interval — TCP and, with
//! upstream TLS, the whole mTLS handshake, so behind a gateway the check crosses the gateway to
//! the pod — and marks it unhealthy after the failed checks in a row the cluster sets, healthy
//! again after the passed ones. An unhealthy endpoint is left out of balancing like an ejected
//! one (traffic moves to the next priority), and its pooled connections are closed so requests
//! stuck on a dead path are reset and retried. Each worker checks on its own (no lock on the
//! request path); with `--concurrency N` an endpoint sees N checks per interval.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use causeway_xds::dataplane::{HealthCheckConfig, Snapshot};
use tokio::task::JoinHandle;

use super::connect::connect;
use super::Target;
use crate::worker::WorkerState;

/// One endpoint's check task; dropping it stops the task.
struct Running {
    config: HealthCheckConfig,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One worker's health checks and what they found.
#[derive(Default)]
pub struct HealthChecks {
    /// Endpoints found unhealthy, by cluster.
    down: RefCell<HashMap<String, BTreeSet<Target>>>,
    /// Changes whenever `down` does (balancers rebuild on it).
    epoch: Cell<u64>,
    running: RefCell<HashMap<(String, Target), Running>>,
}

impl HealthChecks {
    /// The endpoints of `cluster` found unhealthy, and the epoch they belong to.
    pub fn unhealthy(&self, cluster: &str) -> (u64, BTreeSet<Target>) {
        let down = self.down.borrow();
        (
            self.epoch.get(),
            down.get(cluster).cloned().unwrap_or_default(),
        )
    }

    /// Starts the checks `snapshot` asks for that are not running, and stops those it no
    /// longer has (or whose settings changed; they restart with the new ones).
    pub fn sync(state: &Rc<WorkerState>, snapshot: &Snapshot) {
        let health = &state.upstreams.health;
        let mut wanted: HashMap<(String, Target), HealthCheckConfig> = HashMap::new();
        for (name, cluster) in &snapshot.clusters {
            let Some(cfg) = &cluster.health_check else {
                continue;
            };
            let Some(la) = snapshot.endpoints_of(name) else {
                continue;
            };
            for e in la
                .localities
                .iter()
                .flat_map(|l| &l.endpoints)
                .filter(|e| e.active_health_check)
            {
                let target = Target::of(e);
                wanted.insert((name.clone(), target), cfg.clone());
            }
        }
        health
            .running
            .borrow_mut()
            .retain(|key, r| wanted.get(key) == Some(&r.config));
        let before = health
            .down
            .borrow()
            .values()
            .map(BTreeSet::len)
            .sum::<usize>();
        health.down.borrow_mut().retain(|cluster, targets| {
            targets.retain(|t| wanted.contains_key(&(cluster.clone(), t.clone())));
            !targets.is_empty()
        });
        if health
            .down
            .borrow()
            .values()
            .map(BTreeSet::len)
            .sum::<usize>()
            != before
        {
            health.bump();
        }
        for (key, config) in wanted {
            if health.running.borrow().contains_key(&key) {
                continue;
            }
            let task = tokio::task::spawn_local(check_loop(
                Rc::clone(state),
                key.0.clone(),
                key.1.clone(),
                config.clone(),
            ));
            health
                .running
                .borrow_mut()
                .insert(key, Running { config, task });
        }
    }

    fn bump(&self) {
        self.epoch.set(self.epoch.get() + 1);
    }

    /// Records a change of `target`'s health in `cluster`.
    fn mark(&self, cluster: &str, target: &Target, healthy: bool) {
        let mut down = self.down.borrow_mut();
        let changed = if healthy {
            let removed = down.get_mut(cluster).is_some_and(|s| s.remove(target));
            down.retain(|_, s| !s.is_empty());
            removed
        } else {
            down.entry(cluster.to_owned())
                .or_default()
                .insert(target.clone())
        };
        if changed {
            self.bump();
        }
    }
}

/// Checks `target` of `cluster` every interval until stopped.
async fn check_loop(
    state: Rc<WorkerState>,
    cluster: String,
    target: Target,
    cfg: HealthCheckConfig,
) {
    let stats = state.upstreams.book.stats(&cluster, &target);
    let (mut failed, mut passed, mut healthy) = (0u32, 0u32, true);
    loop {
        match probe(&state, &cluster, &target, &cfg).await {
            Ok(()) => {
                failed = 0;
                passed = passed.saturating_add(1);
                if !healthy && passed >= cfg.healthy_threshold {
                    healthy = true;
                    state.upstreams.health.mark(&cluster, &target, true);
                    stats.unhealthy.store(false, Ordering::Relaxed);
                    tracing::info!(%cluster, endpoint = %target, "endpoint passed its health checks: healthy again");
                }
            }
            Err(reason) => {
                passed = 0;
                failed = failed.saturating_add(1);
                state.upstreams.book.count_health_failure(&cluster);
                if healthy && failed >= cfg.unhealthy_threshold {
                    healthy = false;
                    state.upstreams.health.mark(&cluster, &target, false);
                    stats.unhealthy.store(true, Ordering::Relaxed);
                    if cfg.close_connections_on_failure {
                        state.upstreams.pools.close(&cluster, &target);
                    }
                    tracing::warn!(%cluster, endpoint = %target, %reason, failed, "endpoint failed its health checks: unhealthy, traffic moves to the others");
                }
            }
        }
        tokio::time::sleep(cfg.interval).await;
    }
}

/// One check: a new connection (and handshake) within the check's timeout.
async fn probe(
    state: &Rc<WorkerState>,
    cluster: &str,
    target: &Target,
    cfg: &HealthCheckConfig,
) -> Result<(), String> {
    let snapshot = state.snapshot();
    let Some(config) = snapshot.clusters.get(cluster) else {
        // Gone with the last update; the next sync stops this check.
        return Ok(());
    };
    let tls = state
        .upstreams
        .client_tls(snapshot.generation, config, false)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(cfg.timeout, connect(config, target, tls)).await {
        Ok(Ok(_connection)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {:?}", cfg.timeout)),
    }
}
