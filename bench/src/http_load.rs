//! HTTP/1.1 keep-alive load from a fixed number of connections, bounded by a deadline and,
//! optionally, by a total number of requests shared by the connections.
//!
//! A request counts once it is sent: a 2xx answer is a success (its latency recorded), any
//! other status, a transport error or no answer within the timeout is a failure. A connection
//! the proxy closed between requests (keep-alive ended, listener drained) is replaced without
//! counting anything, since no request was lost.
//!
//! With `count_workloads`, each successful answer's JSON body (`causeway echo`'s) is read for
//! its `workload`, counted per workload: which backend answered how many.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

pub struct LoadSpec {
    pub addr: SocketAddr,
    pub connections: usize,
    pub deadline: Instant,
    /// Total requests to send across all connections; `None` runs until the deadline.
    pub requests: Option<u64>,
    pub timeout: Duration,
    /// Counts requests as they are sent, for a caller watching progress.
    pub progress: Option<Arc<AtomicU64>>,
    /// Count the successful answers per `workload` of their JSON body.
    pub count_workloads: bool,
}

#[derive(Default)]
pub struct LoadResult {
    pub sent: u64,
    /// Latencies of the successful requests in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// Failures by kind (`status 503`, `timeout`, `transport: …`, `connect: …`).
    pub failures: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// Connections opened, including replacements of closed ones.
    pub connections_opened: u64,
    /// With `count_workloads`: successful answers per `workload` of their body (`?` without
    /// one).
    pub workloads: BTreeMap<String, u64>,
}

impl LoadResult {
    pub fn ok(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    pub fn rps(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency percentile `p` (0..=1) in milliseconds; NaN without successes.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    /// A one-line summary of the failures, `none` without any.
    pub fn failure_summary(&self) -> String {
        if self.failures.is_empty() {
            return "none".into();
        }
        self.failures
            .iter()
            .map(|(k, v)| format!("{v}× {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Shared {
    budget: Option<AtomicU64>,
    deadline: Instant,
    progress: Option<Arc<AtomicU64>>,
}

impl Shared {
    /// Claims one request of the budget; false once the budget or the time is spent.
    fn claim(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        let claimed = match &self.budget {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        };
        if claimed {
            if let Some(p) = &self.progress {
                p.fetch_add(1, Ordering::Relaxed);
            }
        }
        claimed
    }

    fn give_back(&self) {
        if let Some(left) = &self.budget {
            left.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(p) = &self.progress {
            p.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct ConnResult {
    sent: u64,
    lat: Vec<u32>,
    failures: BTreeMap<String, u64>,
    opened: u64,
    workloads: BTreeMap<String, u64>,
}

/// The part of an answer's body `count_workloads` reads.
#[derive(serde::Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    workload: Option<std::borrow::Cow<'a, str>>,
}

impl ConnResult {
    fn fail(&mut self, kind: String) {
        *self.failures.entry(kind).or_default() += 1;
    }

    /// A successful answer's latency (and workload, with `count_workloads`), else a failure.
    fn answer(
        &mut self,
        status: hyper::StatusCode,
        body: Result<Bytes, hyper::Error>,
        start: Instant,
        count_workloads: bool,
    ) {
        match body {
            Ok(body) if status.is_success() => {
                self.lat
                    .push(start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                if count_workloads {
                    self.answered_by(&body);
                }
            }
            Ok(_) => self.fail(format!("status {}", status.as_u16())),
            Err(_) => self.fail("transport: body cut".into()),
        }
    }

    fn answered_by(&mut self, body: &[u8]) {
        let answer = serde_json::from_slice::<Answer>(body).ok();
        let workload = answer.as_ref().and_then(|a| a.workload.as_deref());
        let workload = workload.unwrap_or("?");
        match self.workloads.get_mut(workload) {
            Some(n) => *n += 1,
            None => {
                self.workloads.insert(workload.to_owned(), 1);
            }
        }
    }
}

/// Runs the load on the current tokio runtime.
pub async fn run(spec: LoadSpec) -> anyhow::Result<LoadResult> {
    let shared = Arc::new(Shared {
        budget: spec.requests.map(AtomicU64::new),
        deadline: spec.deadline,
        progress: spec.progress.clone(),
    });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..spec.connections {
        let shared = shared.clone();
        tasks.push(tokio::spawn(connection(
            spec.addr,
            spec.timeout,
            spec.count_workloads,
            shared,
        )));
    }
    let mut out = LoadResult::default();
    for t in tasks {
        let r = t.await.context("load task")?;
        out.sent += r.sent;
        out.latencies_us.extend(r.lat);
        out.connections_opened += r.opened;
        for (k, v) in r.failures {
            *out.failures.entry(k).or_default() += v;
        }
        for (k, v) in r.workloads {
            *out.workloads.entry(k).or_default() += v;
        }
    }
    out.elapsed = start.elapsed();
    out.latencies_us.sort_unstable();
    Ok(out)
}

async fn connection(
    addr: SocketAddr,
    timeout: Duration,
    count_workloads: bool,
    shared: Arc<Shared>,
) -> ConnResult {
    let mut r = ConnResult::default();
    'conn: while Instant::now() < shared.deadline {
        let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await
        {
            Ok(Ok(s)) => s,
            failed => {
                // A refused connection loses the request the caller wanted to send.
                if !shared.claim() {
                    break;
                }
                r.sent += 1;
                r.fail(match failed {
                    Ok(Err(e)) => format!("connect: {}", e.kind()),
                    _ => "connect: timeout".into(),
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        r.opened += 1;
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        loop {
            // A connection closed by the proxy between requests is replaced, nothing lost.
            if sender.ready().await.is_err() {
                continue 'conn;
            }
            if !shared.claim() {
                break 'conn;
            }
            let req = match hyper::Request::get("/")
                .header("host", "bench")
                .body(Empty::<Bytes>::new())
            {
                Ok(req) => req,
                Err(_) => break 'conn,
            };
            let start = Instant::now();
            let sent = sender.try_send_request(req);
            match tokio::time::timeout(timeout, sent).await {
                Ok(Ok(resp)) => {
                    r.sent += 1;
                    let status = resp.status();
                    let body = resp.into_body().collect().await;
                    r.answer(status, body.map(|b| b.to_bytes()), start, count_workloads);
                }
                Ok(Err(e)) if e.message().is_some() => {
                    // hyper handed the request back unsent: the connection closed first.
                    shared.give_back();
                    continue 'conn;
                }
                Ok(Err(e)) => {
                    r.sent += 1;
                    r.fail(format!("transport: {}", e.error()));
                    continue 'conn;
                }
                Err(_) => {
                    r.sent += 1;
                    r.fail("timeout".into());
                    continue 'conn;
                }
            }
        }
    }
    r
}
