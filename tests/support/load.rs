//! Fixed-rate load for failure tests: GET / every period, each request on its own connection
//! and thread (one stuck on a dead path does not hold the others back), bounded in time and
//! count, with what answered each request and how long it took.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::call;

/// One request of the load.
pub struct Sample {
    /// When it was sent, from the start of the load.
    pub at: Duration,
    pub took: Duration,
    /// The cluster that answered, or the error.
    pub answer: Result<String, String>,
}

/// A new request to `addr` every `period` for `length`, at most `max` in all; the samples in
/// the order they were sent. Threads it starts inherit the caller's network namespace.
pub fn fixed_rate(addr: SocketAddr, period: Duration, length: Duration, max: usize) -> Vec<Sample> {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut sent = 0u32;
    while start.elapsed() < length && (sent as usize) < max {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let at = start.elapsed();
            let answer = call(addr).map(|v| v["cluster"].as_str().unwrap_or("?").to_owned());
            let _ = tx.send(Sample {
                at,
                took: start.elapsed() - at,
                answer,
            });
        });
        sent += 1;
        if let Some(wait) = (start + period * sent).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    drop(tx);
    let mut out: Vec<Sample> = rx.iter().collect();
    out.sort_by_key(|s| s.at);
    out
}

/// What a fault at `fault` (from the start of the load) did to `samples`, `dead` being the
/// cluster behind the dead path.
pub struct Shift {
    /// The failed requests, with when they were sent relative to the fault.
    pub failed: Vec<String>,
    /// Requests sent after the fault.
    pub after: usize,
    /// From the fault until the last request that still went to the dead path first (slower
    /// than `slow`, or answered by `dead`).
    pub shifted: Duration,
    /// Requests sent after `shifted` and every one of them answered by `to`.
    pub settled_on: usize,
    pub all_settled: bool,
}

pub fn shift(samples: &[Sample], fault: Duration, dead: &str, to: &str, slow: Duration) -> Shift {
    let failed = samples
        .iter()
        .filter_map(|s| {
            let e = s.answer.as_ref().err()?;
            let when = match s.at.checked_sub(fault) {
                Some(d) => format!("{d:?} after the fault"),
                None => format!("{:?} before the fault", fault - s.at),
            };
            Some(format!("{e} (sent {when}, {:?})", s.took))
        })
        .collect();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= fault).collect();
    let shifted = after
        .iter()
        .filter(|s| s.took > slow || s.answer.as_deref() == Ok(dead))
        .map(|s| s.at - fault)
        .max()
        .unwrap_or_default();
    let settled: Vec<&&Sample> = after.iter().filter(|s| s.at > fault + shifted).collect();
    Shift {
        failed,
        after: after.len(),
        shifted,
        settled_on: settled.len(),
        all_settled: settled.iter().all(|s| s.answer.as_deref() == Ok(to)),
    }
}

/// How many of `samples` sent after `fault` `cluster` answered.
pub fn answered_after(samples: &[Sample], fault: Duration, cluster: &str) -> usize {
    samples
        .iter()
        .filter(|s| s.at >= fault && s.answer.as_deref() == Ok(cluster))
        .count()
}
