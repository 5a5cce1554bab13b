//! How loaded each endpoint looks to a worker, for the latency balancer: peak-EWMA latency
//! (linkerd2-proxy's balancer, after tower's `PeakEwma`) and requests in flight, plus the
//! counters the admin API reports for every endpoint (`/endpoints`, shared by the workers).
//!
//! An endpoint's estimate is its first warm answer's latency (an answer on a connection opened
//! for it only stands in until then, see `observe_cold`); a slower answer moves it half the way
//! at once ([`ATTACK`]: a pod that turns slow is avoided from its first slow answer); a faster one moves it
//! towards the sample by the share of [`DECAY`] elapsed since the last update, and at least by
//! [`MIN_STEP`] (at thousands of answers a second, time alone would take [`DECAY`] to believe
//! that a pod got faster); between answers it decays towards zero with the same time constant,
//! so a pod avoided for being slow is tried more often again. Latency counts from the moment
//! the request is sent on a connection: opening one (TCP, mTLS through the gateway) is not the
//! endpoint's answer time, as in tower, whose balancer connects in `poll_ready`. Written here,
//! not taken from tower: tower's balancer owns its services behind a `Discover` stream, while
//! ours picks targets for pools keyed per worker, with Envoy's priorities around it.

use crate::FastMap;
use std::cell::Cell;
use std::collections::BTreeMap;
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
/// The share of the way a slower answer moves it at once. linkerd's peak-EWMA jumps all the
/// way; one scheduling hiccup then makes an equal pod look several times slower than its
/// peers until it is chosen again. Half the way still puts a pod that turns 50× slower past
/// the balancer's noise band on its first slow answer (see `balance::p2c`).
pub const ATTACK: f64 = 0.5;

/// One endpoint's load on one worker.
#[derive(Debug)]
pub struct EndpointLoad {
    /// Nanoseconds; `None` until the first answer.
    rtt_ns: Cell<Option<f64>>,
    /// The estimate comes from a cold answer only (see [`EndpointLoad::observe_cold`]).
    provisional: Cell<bool>,
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
            provisional: Cell::new(false),
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

    /// Takes a latency sample: a step towards it, half the way when slower.
    fn observe(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let next = match self.rtt_ns.get() {
            // A warm answer replaces what a cold one guessed.
            Some(_) if self.provisional.replace(false) => sample,
            Some(current) if sample <= current => {
                let elapsed = now.saturating_duration_since(self.updated.get());
                let keep = decay_factor(elapsed).min(1.0 - MIN_STEP);
                current * keep + sample * (1.0 - keep)
            }
            Some(current) => current + (sample - current) * ATTACK,
            None => sample,
        };
        self.rtt_ns.set(Some(next));
        self.updated.set(now);
        self.stats.ewma_ns.store(next as u64, Ordering::Relaxed);
    }

    /// An answer on a connection opened for it: it carries the set-up of every hop behind (the
    /// server sidecar's and the app's connections too), so it never counts as a peak. With no
    /// estimate yet it stands in until the first warm answer replaces it; otherwise it moves
    /// the estimate by [`MIN_STEP`] at most.
    fn observe_cold(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let next = match self.decay_to(now) {
            None => {
                self.provisional.set(true);
                sample
            }
            Some(current) => current + (sample - current) * MIN_STEP,
        };
        self.rtt_ns.set(Some(next));
        self.updated.set(now);
        self.stats.ewma_ns.store(next as u64, Ordering::Relaxed);
    }

    /// A failure only ever raises the estimate: to the time it took when longer (a timeout, a
    /// connect that hung), and to [`DEFAULT_RTT`] for an endpoint that never answered, which
    /// would otherwise look free and draw every request until it is ejected.
    fn failed(&self, elapsed: Duration, now: Instant) {
        let floor = match self.decay_to(now) {
            Some(current) => current,
            None => DEFAULT_RTT.as_nanos() as f64,
        };
        let next = floor.max(elapsed.as_nanos() as f64);
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
    /// Sent on a connection opened for it.
    cold: Cell<bool>,
}

impl InFlight {
    pub fn start(load: Rc<EndpointLoad>) -> Self {
        load.pending.set(load.pending.get() + 1);
        load.stats.requests.fetch_add(1, Ordering::Relaxed);
        load.stats.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load,
            started: Cell::new(Instant::now()),
            cold: Cell::new(false),
        }
    }

    /// A connection was opened for this request and is ready: latency counts from here, and
    /// the answer is a cold one.
    pub fn sending_on_new_connection(&self) {
        self.started.set(Instant::now());
        self.cold.set(true);
    }

    /// The answer came (response headers; for TCP, the connection): answers that are not
    /// failures feed the latency estimate, failures are counted (ejection is outlier
    /// detection's job, so a fast-failing pod is not mistaken for a fast one for long).
    pub fn answered(&self, outcome: Outcome) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.started.get());
        match outcome {
            Outcome::Status(s) if s < 500 && self.cold.get() => {
                self.load.observe_cold(elapsed, now)
            }
            Outcome::Status(s) if s < 500 => self.load.observe(elapsed, now),
            Outcome::Status(_) | Outcome::LocalFailure => {
                self.load.stats.failures.fetch_add(1, Ordering::Relaxed);
                self.load.failed(elapsed, now);
            }
            Outcome::NotSent => {}
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
    by_cluster: FastMap<String, FastMap<Target, Rc<EndpointLoad>>>,
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
    /// Failed its active health checks (on some worker) and not passed them since.
    pub unhealthy: std::sync::atomic::AtomicBool,
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

/// Adds one to `cluster`'s count.
fn count_in(counts: &Mutex<BTreeMap<String, u64>>, cluster: &str) {
    let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
    match counts.get_mut(cluster) {
        Some(n) => *n += 1,
        None => {
            counts.insert(cluster.to_owned(), 1);
        }
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
    /// Failed health checks by cluster since the proxy started (a Prometheus counter).
    health_failures: Mutex<BTreeMap<String, u64>>,
}

impl EndpointBook {
    /// Counts an ejection in `cluster`.
    pub fn count_ejection(&self, cluster: &str) {
        count_in(&self.ejections, cluster);
    }

    /// Marks every endpoint at `address` (in every cluster) as failing its health checks or not:
    /// one check stands for all of them (`health`).
    pub fn set_unhealthy_at(&self, address: std::net::SocketAddr, unhealthy: bool) {
        let book = self
            .by_cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for stats in book
            .values()
            .flat_map(|targets| targets.iter())
            .filter(|(t, _)| t.address == address)
            .map(|(_, s)| s)
        {
            stats.unhealthy.store(unhealthy, Ordering::Relaxed);
        }
    }

    /// Counts a failed health check in `cluster`.
    pub fn count_health_failure(&self, cluster: &str) {
        count_in(&self.health_failures, cluster);
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
        out.push_str(
            "# HELP causeway_proxy_endpoints_unhealthy Endpoints failing their active health checks, by cluster.\n\
             # TYPE causeway_proxy_endpoints_unhealthy gauge\n",
        );
        for (cluster, targets) in book.iter() {
            let now = targets
                .values()
                .filter(|s| s.unhealthy.load(Ordering::Relaxed))
                .count();
            let _ = writeln!(
                out,
                "causeway_proxy_endpoints_unhealthy{{cluster=\"{}\"}} {now}",
                escape(cluster)
            );
        }
        drop(book);
        out.push_str(
            "# HELP causeway_proxy_health_check_failures Failed active health checks, by cluster.\n\
             # TYPE causeway_proxy_health_check_failures counter\n",
        );
        let failures = self
            .health_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (cluster, n) in failures.iter() {
            let _ = writeln!(
                out,
                "causeway_proxy_health_check_failures_total{{cluster=\"{}\"}} {n}",
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

    /// Forgets endpoints that are no longer in `keep(cluster, target)` and that no worker
    /// holds any more (a worker that has not seen the new snapshot yet keeps its counters).
    pub fn retain(&self, keep: impl Fn(&str, &Target) -> bool) {
        let mut book = self
            .by_cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        book.retain(|cluster, targets| {
            targets.retain(|t, stats| keep(cluster, t) || Arc::strong_count(stats) > 1);
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
    fn the_first_answer_sets_the_estimate_and_later_ones_step_towards_themselves() {
        let l = load();
        let t0 = l.updated.get();
        assert_eq!(l.estimate(), Duration::ZERO);
        l.observe(Duration::from_millis(10), t0);
        assert_eq!(l.estimate(), Duration::from_millis(10));
        // A slower answer: half the way at once, 10 + 0.5 × (150 - 10) = 80 ms.
        l.observe(Duration::from_millis(150), t0);
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
    fn a_cold_answer_stands_in_until_a_warm_one_and_is_never_a_peak() {
        let l = Rc::new(load());
        let cold = InFlight::start(Rc::clone(&l));
        cold.sending_on_new_connection();
        std::thread::sleep(Duration::from_millis(5));
        cold.answered(Outcome::Status(200));
        let guess = l.estimate();
        assert!(guess >= Duration::from_millis(5), "{guess:?}");
        // The first warm answer replaces the guess, even far below it.
        l.observe(Duration::from_micros(300), Instant::now());
        assert_eq!(l.estimate(), Duration::from_micros(300));
        // Later cold answers only step towards themselves: 0.3 + 0.3 × (10 - 0.3) ≈ 3.2 ms.
        l.observe_cold(Duration::from_millis(10), Instant::now());
        let ms = l.estimate().as_secs_f64() * 1e3;
        assert!((3.1..3.3).contains(&ms), "{ms}");
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
    fn failures_are_counted_and_only_ever_raise_the_estimate() {
        let l = Rc::new(load());
        // Never answered, then a fast 503: no longer free, the default estimate.
        let f = InFlight::start(Rc::clone(&l));
        f.answered(Outcome::Status(503));
        assert_eq!(l.estimate(), DEFAULT_RTT);
        assert_eq!(l.stats.failures.load(Ordering::Relaxed), 1);
        drop(f);
        // A fast answer, then a failure that took longer: the failure's time.
        let t0 = Instant::now();
        l.observe(Duration::from_millis(40), t0);
        l.failed(Duration::from_millis(900), t0);
        assert_eq!(l.estimate(), Duration::from_millis(900));
        // A fast failure does not lower it.
        l.failed(Duration::from_micros(10), t0);
        assert_eq!(l.estimate(), Duration::from_millis(900));
        // A request never sent says nothing.
        let before = l.stats.failures.load(Ordering::Relaxed);
        InFlight::start(Rc::clone(&l)).answered(Outcome::NotSent);
        assert_eq!(l.stats.failures.load(Ordering::Relaxed), before);
    }
}
