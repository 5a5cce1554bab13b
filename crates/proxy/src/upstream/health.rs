//! Active health checks, per worker (Envoy's connect-only TCP health checker, shared per
//! address): every address a cluster's check covers — in a mesh, an east-west gateway — gets
//! one task that checks it each interval (see below for how). After the failed checks in
//! a row the cluster sets, every endpoint at that address (each pod behind the gateway, in
//! every cluster that reaches it) is left out of balancing like an ejected one and traffic
//! moves to the next priority; their pooled connections are cut, so requests stuck on the dead
//! path are reset and retried. After the passed checks it sets, they return.
//!
//! One check per address, not per endpoint: the gateway and the network to it are what fails
//! as a whole, and a sidecar reaching a hundred pods through three gateways makes three checks
//! per interval, not a hundred (a pod that dies alone is outlier detection's). At a gateway
//! (endpoints the control plane marks as reached through one) the check is its liveness probe, which no service
//! behind it can fail: a check through one service's pod would take every service behind the
//! gateway down with that pod. Elsewhere it uses the first cluster and endpoint (in name
//! order) that needs the address for its TLS settings. Each worker checks on its own (no lock on the request path); with
//! `--concurrency N` a gateway sees N checks per interval.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;

use causeway_xds::dataplane::{HealthCheckConfig, LoadAssignmentConfig, Snapshot};
use tokio::task::JoinHandle;

use super::connect::connect;
use super::Target;
use crate::gateway::probe as gateway_probe;
use crate::worker::WorkerState;

/// What one address's check connects as: a cluster that reaches it and one of its endpoints
/// there (for the TLS settings and SNI), with the cluster's check settings.
#[derive(Clone, PartialEq)]
struct Probe {
    cluster: String,
    target: Target,
    config: HealthCheckConfig,
    /// Some endpoint at the address is reached through an east-west gateway.
    gateway: bool,
}

/// One address's check task; dropping it stops the task.
struct Running {
    probe: Probe,
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
    /// Addresses found unhealthy.
    down: RefCell<BTreeSet<SocketAddr>>,
    /// Changes whenever `down` does (balancers rebuild on it).
    epoch: Cell<u64>,
    running: RefCell<HashMap<SocketAddr, Running>>,
}

impl HealthChecks {
    /// Changes whenever the unhealthy addresses do: balancers rebuild on it.
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// The endpoints of `la` (under active checks) whose address was found unhealthy.
    pub fn unhealthy(&self, la: &LoadAssignmentConfig) -> BTreeSet<Target> {
        let down = self.down.borrow();
        if down.is_empty() {
            return BTreeSet::new();
        }
        la.localities
            .iter()
            .flat_map(|l| &l.endpoints)
            .filter(|e| e.active_health_check && down.contains(&e.address))
            .map(Target::of)
            .collect()
    }

    /// Starts the checks `snapshot` asks for that are not running, and stops those it no
    /// longer has (or whose probe changed; they restart with the new one).
    pub fn sync(state: &Rc<WorkerState>, snapshot: &Snapshot) {
        let health = &state.upstreams.health;
        let mut wanted: BTreeMap<SocketAddr, Probe> = BTreeMap::new();
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
                let probe = wanted.entry(e.address).or_insert_with(|| Probe {
                    cluster: name.clone(),
                    target: Target::of(e),
                    config: cfg.clone(),
                    gateway: false,
                });
                probe.gateway |= e.through_gateway;
            }
        }
        health
            .running
            .borrow_mut()
            .retain(|addr, r| wanted.get(addr) == Some(&r.probe));
        let forgotten = {
            let mut down = health.down.borrow_mut();
            let before = down.len();
            down.retain(|addr| wanted.contains_key(addr));
            down.len() != before
        };
        if forgotten {
            health.bump();
        }
        for (addr, probe) in wanted {
            if health.running.borrow().contains_key(&addr) {
                continue;
            }
            let task = tokio::task::spawn_local(check_loop(Rc::clone(state), probe.clone()));
            health
                .running
                .borrow_mut()
                .insert(addr, Running { probe, task });
        }
    }

    fn bump(&self) {
        self.epoch.set(self.epoch.get() + 1);
    }

    /// Records a change of `addr`'s health.
    fn mark(&self, addr: SocketAddr, healthy: bool) {
        let changed = if healthy {
            self.down.borrow_mut().remove(&addr)
        } else {
            self.down.borrow_mut().insert(addr)
        };
        if changed {
            self.bump();
        }
    }
}

/// Checks `probe`'s address every interval until stopped.
async fn check_loop(state: Rc<WorkerState>, probe: Probe) {
    let Probe {
        cluster,
        target,
        config: cfg,
        ..
    } = &probe;
    let addr = target.address;
    // Counted under the probing cluster's endpoint, so the address shows in the book even
    // before any request went to it.
    let _stats = state.upstreams.book.stats(cluster, target);
    let (mut failed, mut passed, mut healthy) = (0u32, 0u32, true);
    loop {
        match check(&state, &probe).await {
            Ok(()) => {
                failed = 0;
                passed = passed.saturating_add(1);
                if !healthy && passed >= cfg.healthy_threshold {
                    healthy = true;
                    state.upstreams.health.mark(addr, true);
                    state.upstreams.book.set_unhealthy_at(addr, false);
                    tracing::info!(%cluster, endpoint = %addr, "passed its health checks: healthy again, traffic returns");
                }
            }
            Err(reason) => {
                passed = 0;
                failed = failed.saturating_add(1);
                state.upstreams.book.count_health_failure(cluster);
                if healthy && failed >= cfg.unhealthy_threshold {
                    healthy = false;
                    state.upstreams.health.mark(addr, false);
                    state.upstreams.book.set_unhealthy_at(addr, true);
                    if cfg.close_connections_on_failure {
                        state.upstreams.pools.close_address(addr);
                    }
                    tracing::warn!(%cluster, endpoint = %addr, %reason, failed, "failed its health checks: unhealthy, traffic moves to the other endpoints");
                }
            }
        }
        tokio::time::sleep(cfg.interval).await;
    }
}

/// One check within the check's timeout. At an east-west gateway the check is its liveness
/// probe ([`gateway_probe`]), so the gateway and the network to it are what it finds dead,
/// never one service's pods. Any other address: a new connection and, with upstream TLS, the
/// whole handshake (Envoy's connect-only check).
async fn check(state: &Rc<WorkerState>, probe: &Probe) -> Result<(), String> {
    if probe.gateway {
        let hello = gateway_probe::client_hello().map_err(|e| e.to_string())?;
        return gateway_probe::probe(probe.target.address, &hello, probe.config.timeout)
            .await
            .map_err(|e| format!("gateway probe: {e}"));
    }
    let snapshot = state.snapshot();
    let Some(config) = snapshot.clusters.get(&probe.cluster) else {
        // Gone with the last update; the next sync stops or moves this check.
        return Ok(());
    };
    let tls = state
        .upstreams
        .client_tls(snapshot.generation, config, false)
        .map_err(|e| e.to_string())?;
    let timeout = probe.config.timeout;
    match tokio::time::timeout(timeout, connect(config, &probe.target, tls)).await {
        Ok(Ok(_connection)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}
