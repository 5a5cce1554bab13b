//! How loaded each endpoint looks to a worker, for the latency balancer: peak-EWMA latency
//! (linkerd2-proxy's balancer, after tower's `PeakEwma`) and requests in flight, plus the
//! counters the admin API reports for every endpoint (`/endpoints`, shared by the workers).
//!
//! An endpoint's estimate is its first answer's latency; a slower answer replaces it at once
//! (peak: a pod that turns slow is avoided from its first slow answer); a faster one moves it
//! towards the sample by the share of [`DECAY`] elapsed since the last update, and at least by
//! [`MIN_STEP`] (at thousands of answers a second, time alone would take [`DECAY`] to believe
//! that a pod got faster); between answers it decays towards zero with the same time constant,
//! so a pod avoided for being slow is tried more often again. Latency counts from the moment
//! the request is sent on a connection: opening one (TCP, mTLS through the gateway) is not the
//! endpoint's answer time, as in tower, whose balancer connects in `poll_ready`. Written here,
//! not taken from tower: tower's balancer owns its services behind a `Discover` stream, while
//! ours picks targets for pools keyed per worker, with Envoy's priorities around it.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::outlier::Outcome;
use super::Target;

/// What a request in flight to an endpoint that has not answered yet costs (linkerd2-proxy's
/// default estimate): idle, such an endpoint costs nothing and is tried first.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Time constant of the estimate's decay (linkerd2-proxy's default).
pub const DECAY: Duration = Duration::from_secs(10);
/// The least share of the way a faster answer moves the estimate.
pub const MIN_STEP: f64 = 0.3;

/// One endpoint's load on one worker.
#[derive(Debug)]
pub struct EndpointLoad {
    /// Nanoseconds; `None` until the first answer.
    rtt_ns: Cell<Option<f64>>,
    updated: Cell<Instant>,
    pending: Cell<u32>,
    /// Shared with the other workers and the admin API.
    pub stats: Arc<EndpointStats>,
}

fn decay_factor(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

impl EndpointLoad {
    fn new(stats: Arc<EndpointStats>, now: Instant) -> Self {
        EndpointLoad {
            rtt_ns: Cell::new(None),
            updated: Cell::new(now),
            pending: Cell::new(0),
            stats,
        }
    }

    /// The estimate decayed to `now` (towards zero: no answer came since the last update).
    fn decay_to(&self, now: Instant) -> Option<f64> {
        let rtt =
            self.rtt_ns.get()? * decay_factor(now.saturating_duration_since(self.updated.get()));
        self.rtt_ns.set(Some(rtt));
        self.updated.set(now);
        Some(rtt)
    }

    /// What choosing this endpoint costs: the latency estimate × (requests in flight + 1); an
    /// endpoint without an answer yet costs [`DEFAULT_RTT`] per request in flight.
    pub fn cost(&self, now: Instant) -> f64 {
        let pending = f64::from(self.pending.get());
        match self.decay_to(now) {
            Some(rtt) => rtt * (pending + 1.0),
            None => DEFAULT_RTT.as_nanos() as f64 * pending,
        }
    }

    /// Takes a latency sample: peak, or a step towards it.
    fn observe(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let next = match self.rtt_ns.get() {
            Some(current) if sample <= current => {
                let elapsed = now.saturating_duration_since(self.updated.get());
                let keep = decay_factor(elapsed).min(1.0 - MIN_STEP);
                current * keep + sample * (1.0 - keep)
            }
            _ => sample,
        };
        self.rtt_ns.set(Some(next));
        self.updated.set(now);
        self.stats.ewma_ns.store(next as u64, Ordering::Relaxed);
    }

    /// The estimate (zero before any answer), for tests and logs.
    pub fn estimate(&self) -> Duration {
        Duration::from_nanos(self.rtt_ns.get().unwrap_or(0.0) as u64)
    }
}

/// One request (or TCP connection) in flight to an endpoint: counted as pending until dropped.
#[must_use = "the request is pending only while this is held"]
pub struct InFlight {
    load: Rc<EndpointLoad>,
    started: Cell<Instant>,
}

impl InFlight {
    pub fn start(load: Rc<EndpointLoad>) -> Self {
        load.pending.set(load.pending.get() + 1);
        load.stats.requests.fetch_add(1, Ordering::Relaxed);
        load.stats.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load,
            started: Cell::new(Instant::now()),
        }
    }

    /// The connection is ready and the request is being sent: latency counts from here.
    pub fn sending(&self) {
        self.started.set(Instant::now());
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
            self.load
                .observe(now.duration_since(self.started.get()), now);
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

    /// The cost of `target` in `cluster` at `now` (an endpoint never used costs nothing; no
    /// counters are created just to look).
    pub fn cost(&self, cluster: &str, target: &Target, now: Instant) -> f64 {
        self.by_cluster
            .get(cluster)
            .and_then(|c| c.get(target))
            .map_or(0.0, |load| load.cost(now))
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

/// A label value in the exposition format (`\\`, `"` and newlines escaped).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
    /// Ejections by cluster since the proxy started (never pruned: a Prometheus counter).
    ejections: Mutex<BTreeMap<String, u64>>,
}

impl EndpointBook {
    /// Counts an ejection in `cluster`.
    pub fn count_ejection(&self, cluster: &str) {
        let mut ejections = self
            .ejections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match ejections.get_mut(cluster) {
            Some(n) => *n += 1,
            None => {
                ejections.insert(cluster.to_owned(), 1);
            }
        }
    }

    /// Prometheus text: ejections by cluster (counter) and endpoints ejected now (gauge).
    pub fn encode(&self) -> String {
        use std::fmt::Write;
        let mut out = String::from(
            "# HELP causeway_proxy_outlier_ejections Endpoints ejected by outlier detection, by cluster.\n\
             # TYPE causeway_proxy_outlier_ejections counter\n",
        );
        let ejections = self
            .ejections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (cluster, n) in ejections.iter() {
            let _ = writeln!(
                out,
                "causeway_proxy_outlier_ejections_total{{cluster=\"{}\"}} {n}",
                escape(cluster)
            );
        }
        drop(ejections);
        out.push_str(
            "# HELP causeway_proxy_endpoints_ejected Endpoints ejected right now, by cluster.\n\
             # TYPE causeway_proxy_endpoints_ejected gauge\n",
        );
        let book = self
            .by_cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (cluster, targets) in book.iter() {
            let now = targets
                .values()
                .filter(|s| s.ejected_for().is_some())
                .count();
            let _ = writeln!(
                out,
                "causeway_proxy_endpoints_ejected{{cluster=\"{}\"}} {now}",
                escape(cluster)
            );
        }
        out
    }

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
    fn the_first_answer_sets_the_estimate_a_slower_one_replaces_it_a_faster_one_steps_towards_it() {
        let l = load();
        let t0 = l.updated.get();
        assert_eq!(l.estimate(), Duration::ZERO);
        l.observe(Duration::from_millis(10), t0);
        assert_eq!(l.estimate(), Duration::from_millis(10));
        l.observe(Duration::from_millis(80), t0);
        assert_eq!(l.estimate(), Duration::from_millis(80));
        // 1 ms later a 10 ms answer moves it MIN_STEP of the way: 80 - 0.3 × 70 = 59 ms.
        l.observe(Duration::from_millis(10), t0 + Duration::from_millis(1));
        let ms = l.estimate().as_secs_f64() * 1e3;
        assert!((58.9..59.1).contains(&ms), "{ms}");
        // 10 s later (one time constant) the step is 1 - e^-1 ≈ 63 %: 59 - 0.632 × 49 ≈ 28 ms.
        l.observe(
            Duration::from_millis(10),
            t0 + Duration::from_millis(10_001),
        );
        let ms = l.estimate().as_secs_f64() * 1e3;
        assert!((27.5..28.5).contains(&ms), "{ms}");
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
        // No answer yet: free while idle, the default per request once busy.
        assert_eq!(l.cost(Instant::now()), 0.0);
        let a = InFlight::start(Rc::clone(&l));
        assert_eq!(l.cost(Instant::now()), DEFAULT_RTT.as_nanos() as f64);
        let b = InFlight::start(Rc::clone(&l));
        assert_eq!(l.stats.pending.load(Ordering::Relaxed), 2);
        a.answered(Outcome::Status(200));
        let rtt = l.estimate().as_nanos() as f64;
        // Two in flight (the answered one is still held) on the new estimate: 3 ×.
        let cost = l.cost(Instant::now());
        assert!(cost <= 3.0 * rtt && cost > 2.9 * rtt, "{cost} {rtt}");
        drop((a, b));
        assert_eq!(l.stats.pending.load(Ordering::Relaxed), 0);
        assert_eq!(l.stats.requests.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn failures_are_counted_and_do_not_make_an_endpoint_look_fast() {
        let l = Rc::new(load());
        let f = InFlight::start(Rc::clone(&l));
        f.answered(Outcome::Status(503));
        assert_eq!(l.estimate(), Duration::ZERO);
        assert_eq!(l.stats.failures.load(Ordering::Relaxed), 1);
        assert_eq!(l.stats.ewma_ns.load(Ordering::Relaxed), 0);
    }
}
