//! How loaded each endpoint looks to a worker, for the latency balancer: peak-EWMA latency
//! (linkerd2-proxy's balancer, after tower's `PeakEwma`) and requests in flight, plus the
//! counters the admin API reports for every endpoint (`/endpoints`, shared by the workers).
//!
//! The estimate starts at [`DEFAULT_RTT`]; a sample slower than it replaces it at once (peak:
//! a pod that turns slow is avoided from its first slow answer); a faster sample moves it
//! towards the sample by the share of [`DECAY`] elapsed since the last update; and between
//! samples it decays towards zero with the same time constant, so a pod avoided for being slow
//! is tried again after a while and can win its traffic back. Written here, not taken from
//! tower: tower's balancer owns its services behind a `Discover` stream, while ours picks
//! targets for pools keyed per worker, with Envoy's priorities around it.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::outlier::Outcome;
use super::Target;

/// The estimate of an endpoint that has not answered yet (linkerd2-proxy's default).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Time constant of the estimate's decay (linkerd2-proxy's default).
pub const DECAY: Duration = Duration::from_secs(10);

/// One endpoint's load on one worker.
#[derive(Debug)]
pub struct EndpointLoad {
    rtt_ns: Cell<f64>,
    updated: Cell<Instant>,
    pending: Cell<u32>,
    /// Shared with the other workers and the admin API.
    pub stats: Arc<EndpointStats>,
}

impl EndpointLoad {
    fn new(stats: Arc<EndpointStats>, now: Instant) -> Self {
        EndpointLoad {
            rtt_ns: Cell::new(DEFAULT_RTT.as_nanos() as f64),
            updated: Cell::new(now),
            pending: Cell::new(0),
            stats,
        }
    }

    /// The estimate decayed to `now` (towards zero: no sample came since the last update).
    fn decay_to(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated.get());
        let rtt = self.rtt_ns.get() * (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp();
        self.rtt_ns.set(rtt);
        self.updated.set(now);
        rtt
    }

    /// What choosing this endpoint costs: the latency estimate × (requests in flight + 1).
    pub fn cost(&self, now: Instant) -> f64 {
        self.decay_to(now) * f64::from(self.pending.get() + 1)
    }

    /// Takes a latency sample: peak, or a move towards it weighted by the time elapsed.
    fn observe(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let current = self.rtt_ns.get();
        let next = if sample > current {
            sample
        } else {
            let elapsed = now.saturating_duration_since(self.updated.get());
            let keep = (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp();
            current * keep + sample * (1.0 - keep)
        };
        self.rtt_ns.set(next);
        self.updated.set(now);
        self.stats.ewma_ns.store(next as u64, Ordering::Relaxed);
    }

    /// The estimate, for tests and logs.
    pub fn estimate(&self) -> Duration {
        Duration::from_nanos(self.rtt_ns.get() as u64)
    }
}

/// One request (or TCP connection) in flight to an endpoint: counted as pending until dropped.
#[must_use = "the request is pending only while this is held"]
pub struct InFlight {
    load: Rc<EndpointLoad>,
    started: Instant,
}

impl InFlight {
    pub fn start(load: Rc<EndpointLoad>) -> Self {
        load.pending.set(load.pending.get() + 1);
        load.stats.requests.fetch_add(1, Ordering::Relaxed);
        load.stats.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load,
            started: Instant::now(),
        }
    }

    /// The answer came (response headers; for TCP, the connection): answers that are not
    /// failures feed the latency estimate, failures are counted (ejection is outlier
    /// detection's job, so a fast-failing pod is not mistaken for a fast one for long).
    pub fn answered(&self, outcome: Outcome) {
        let failed = match outcome {
            Outcome::Status(s) => s >= 500,
            Outcome::LocalFailure => true,
        };
        if failed {
            self.load.stats.failures.fetch_add(1, Ordering::Relaxed);
        } else {
            let now = Instant::now();
            self.load.observe(now.duration_since(self.started), now);
        }
    }
}

impl InFlight {
    /// The endpoint's shared counters.
    pub fn stats(&self) -> &EndpointStats {
        &self.load.stats
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load
            .pending
            .set(self.load.pending.get().saturating_sub(1));
        self.load.stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker's endpoint loads, by cluster and target.
#[derive(Debug, Default)]
pub struct Loads {
    by_cluster: HashMap<String, HashMap<Target, Rc<EndpointLoad>>>,
}

impl Loads {
    /// The load of `target` in `cluster`, created (with its shared counters) when new.
    pub fn get(&mut self, book: &EndpointBook, cluster: &str, target: &Target) -> Rc<EndpointLoad> {
        if let Some(load) = self.by_cluster.get(cluster).and_then(|c| c.get(target)) {
            return Rc::clone(load);
        }
        let load = Rc::new(EndpointLoad::new(
            book.stats(cluster, target),
            Instant::now(),
        ));
        self.by_cluster
            .entry(cluster.to_owned())
            .or_default()
            .insert(target.clone(), Rc::clone(&load));
        load
    }

    /// The cost of `target` in `cluster` at `now`: its estimate when known, else the default
    /// for a new endpoint (no counters are created just to look).
    pub fn cost(&self, cluster: &str, target: &Target, now: Instant) -> f64 {
        match self.by_cluster.get(cluster).and_then(|c| c.get(target)) {
            Some(load) => load.cost(now),
            None => DEFAULT_RTT.as_nanos() as f64,
        }
    }

    /// Forgets endpoints that are no longer in `keep(cluster, target)`.
    pub fn retain(&mut self, keep: impl Fn(&str, &Target) -> bool) {
        self.by_cluster.retain(|cluster, targets| {
            targets.retain(|t, _| keep(cluster, t));
            !targets.is_empty()
        });
    }
}

/// An endpoint's counters since the proxy started, summed over the workers.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Attempts sent to it (requests, retries, TCP connections).
    pub requests: AtomicU64,
    /// Attempts that failed (5xx, connect failure, reset, timeout).
    pub failures: AtomicU64,
    /// Attempts in flight.
    pub pending: AtomicI64,
    /// The latest latency estimate of any worker, in nanoseconds (0: no answer yet).
    pub ewma_ns: AtomicU64,
    /// Ejected by outlier detection until this many ms after [`clock_base`] (0: never).
    pub ejected_until_ms: AtomicU64,
}

impl EndpointStats {
    /// Records an ejection for `time` from now.
    pub fn eject(&self, time: Duration) {
        let until = since_base(Instant::now() + time);
        self.ejected_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// How much longer the endpoint stays ejected, if it is.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        let now = since_base(Instant::now());
        (until > now).then(|| Duration::from_millis(until - now))
    }
}

/// The instant ejection deadlines are counted from (the first use).
fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn since_base(t: Instant) -> u64 {
    t.saturating_duration_since(clock_base()).as_millis() as u64
}

/// Every endpoint's counters, shared by the workers (each takes an endpoint's handle once and
/// then only touches its atomics) and read by the admin API.
#[derive(Debug, Default)]
pub struct EndpointBook {
    by_cluster: Mutex<BTreeMap<String, BTreeMap<Target, Arc<EndpointStats>>>>,
}

impl EndpointBook {
    /// The counters of `target` in `cluster`, created when new.
    pub fn stats(&self, cluster: &str, target: &Target) -> Arc<EndpointStats> {
        let mut book = self
            .by_cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let targets = book.entry(cluster.to_owned()).or_default();
        Arc::clone(targets.entry(target.clone()).or_default())
    }

    /// The counters of `target` in `cluster`, if any worker used it.
    pub fn get(&self, cluster: &str, target: &Target) -> Option<Arc<EndpointStats>> {
        let book = self
            .by_cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        book.get(cluster)?.get(target).cloned()
    }

    /// Forgets endpoints that are no longer in `keep(cluster, target)`.
    pub fn retain(&self, keep: impl Fn(&str, &Target) -> bool) {
        let mut book = self
            .by_cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        book.retain(|cluster, targets| {
            targets.retain(|t, _| keep(cluster, t));
            !targets.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load() -> EndpointLoad {
        EndpointLoad::new(Arc::default(), Instant::now())
    }

    #[test]
    fn a_slower_sample_is_taken_at_once_and_a_faster_one_only_over_time() {
        let l = load();
        let t0 = l.updated.get();
        l.observe(Duration::from_millis(80), t0);
        assert_eq!(l.estimate(), Duration::from_millis(80));
        // 1 ms later a 1 ms sample barely moves it (1 ms of a 10 s time constant).
        l.observe(Duration::from_millis(1), t0 + Duration::from_millis(1));
        assert!(
            l.estimate() > Duration::from_millis(79),
            "{:?}",
            l.estimate()
        );
        // 10 s later (one time constant) it has moved ~63 % of the way.
        l.observe(Duration::from_millis(1), t0 + Duration::from_secs(10));
        let ms = l.estimate().as_secs_f64() * 1e3;
        assert!((29.0..31.0).contains(&ms), "{ms}");
    }

    #[test]
    fn an_idle_estimate_decays_towards_zero_and_pending_requests_multiply_the_cost() {
        let l = load();
        let t0 = l.updated.get();
        l.observe(Duration::from_millis(50), t0);
        let later = l.cost(t0 + Duration::from_secs(20));
        // e^-2 of 50 ms.
        assert!((6.0e6..7.5e6).contains(&later), "{later}");
        let l = Rc::new(load());
        let idle = l.cost(Instant::now());
        let a = InFlight::start(Rc::clone(&l));
        let b = InFlight::start(Rc::clone(&l));
        assert!(l.cost(Instant::now()) > 2.9 * idle * 0.99);
        assert_eq!(l.stats.pending.load(Ordering::Relaxed), 2);
        drop((a, b));
        assert_eq!(l.stats.pending.load(Ordering::Relaxed), 0);
        assert_eq!(l.stats.requests.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn failures_are_counted_and_do_not_make_an_endpoint_look_fast() {
        let l = Rc::new(load());
        let before = l.estimate();
        let f = InFlight::start(Rc::clone(&l));
        f.answered(Outcome::Status(503));
        assert_eq!(l.estimate(), before);
        assert_eq!(l.stats.failures.load(Ordering::Relaxed), 1);
    }
}
