//! The debug API's listener: loopback unless asked otherwise, a bounded number of connections,
//! and timeouts on reading a request's headers, on answering it, and on a connection's life,
//! so a slow or silent client holds nothing for long and never delays others.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's line and headers must arrive within this, counted from the first byte a
    /// new connection, or an idle keep-alive one, waits for; then the connection is closed.
    pub header_read_timeout: Duration,
    /// An answer must be ready within this (503 otherwise).
    pub request_timeout: Duration,
    /// Open connections at most; further ones are closed at once.
    pub max_connections: usize,
    /// A connection is closed gracefully after this (then given `request_timeout` to finish
    /// its answer), so a client that stops reading cannot keep it.
    pub max_connection_age: Duration,
    /// Largest request line and headers (bytes): 431 beyond.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_connections: 128,
            max_connection_age: Duration::from_secs(120),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Why the debug API does not listen where it was told to.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    /// A non-loopback address without `--debug-addr-public`.
    #[error("--debug-addr {0} is not a loopback address: the debug API has no authentication and shows the whole mesh; use 127.0.0.1 or [::1], or add --debug-addr-public to expose it on purpose (only on a trusted network)")]
    NotLoopback(SocketAddr),
}

/// Refuses a non-loopback `addr` unless `public`; allows it with a warning when `public`.
pub fn check_addr(addr: SocketAddr, public: bool) -> Result<(), AddrError> {
    if addr.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    if !public {
        return Err(AddrError::NotLoopback(addr));
    }
    tracing::warn!(%addr, "the debug API listens beyond loopback (--debug-addr-public): anyone who can reach it reads the whole mesh and /metrics; it has no authentication");
    Ok(())
}

fn timed_out(limit: Duration) -> Response<axum::body::Body> {
    let body = serde_json::json!({
        "error": format!("the answer took longer than {} s", limit.as_secs_f64())
    });
    let mut response = Response::new(axum::body::Body::from(body.to_string()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves `app` on `listener` (HTTP/1.1) within `limits` until `shutdown` resolves; then stops
/// accepting (open connections end with the process).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(100);
    let builder = Arc::new(builder);
    let mut refused_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "debug API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if refused_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                refused_logged = Some(Instant::now());
                tracing::warn!(%peer, limit = limits.max_connections, "debug API: too many open connections; closing new ones (logged every 10 s at most)");
            }
            drop(tcp);
            continue;
        };
        let (app, builder) = (app.clone(), Arc::clone(&builder));
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                async move {
                    match tokio::time::timeout(limits.request_timeout, app.oneshot(req)).await {
                        Ok(Ok(response)) => Ok::<_, Infallible>(response),
                        Ok(Err(never)) => match never {},
                        Err(_) => Ok(timed_out(limits.request_timeout)),
                    }
                }
            });
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = tokio::time::sleep(limits.max_connection_age) => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(limits.request_timeout, conn.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "debug API connection closed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[test]
    fn only_loopback_unless_public() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        for ok in [
            "127.0.0.1:15010",
            "127.9.0.1:1",
            "[::1]:15010",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(check_addr(addr(ok), false).is_ok(), "{ok}");
        }
        for refused in ["0.0.0.0:15010", "[::]:15010", "10.0.0.1:15010"] {
            let err = check_addr(addr(refused), false).expect_err(refused);
            assert!(err.to_string().contains("--debug-addr-public"), "{err}");
            assert!(check_addr(addr(refused), true).is_ok(), "{refused}");
        }
    }

    async fn start(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let app = Router::new()
            .route("/fast", axum::routing::get(|| async { "ok" }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    std::future::pending::<()>().await;
                    "never"
                }),
            );
        start_app(limits, app).await
    }

    /// The debug API's own router over an empty state, served within `limits`.
    async fn start_debug_api(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let (_publish, state) =
            tokio::sync::watch::channel(Arc::new(super::super::state::Snapshot {
                version: 0,
                index: None,
                errors: Vec::new(),
                clusters: std::collections::BTreeMap::new(),
                changes: Default::default(),
            }));
        let app = super::super::debug_api::router(
            state,
            Arc::new(super::super::metrics::Metrics::new()),
            Arc::new(causeway_xds::ProxyRegistry::new(false)),
        );
        start_app(limits, app).await
    }

    async fn start_app(
        limits: Limits,
        app: Router,
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, app, limits, async move {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    /// Sends `request` and reads until the server closes (at most 5 s): the answer, or `None`
    /// when the connection stayed open.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> Option<String> {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // A connection closed at once may refuse the write: then the answer is empty.
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .ok()
            .map(|_| String::from_utf8_lossy(&out).into_owned())
    }

    const FAST: &[u8] = b"GET /fast HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

    #[tokio::test]
    async fn slow_headers_and_slow_answers_are_cut_and_others_served() {
        let (addr, _stop) = start(Limits {
            header_read_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        // Headers that never end: closed after the header timeout, while others are served.
        let started = Instant::now();
        let mut stuck = TcpStream::connect(addr).await.expect("connect");
        stuck
            .write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\n")
            .await
            .expect("write");
        let served = exchange(addr, FAST).await.expect("closed after the answer");
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), stuck.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "unfinished headers kept the connection open"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));

        let slow = exchange(
            addr,
            b"GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("the slow request was cut");
        assert!(slow.starts_with("HTTP/1.1 503"), "{slow}");
        assert!(slow.contains("took longer"), "{slow}");
    }

    #[tokio::test]
    async fn garbage_is_refused_and_connections_beyond_the_limit_closed() {
        let (addr, _stop) = start(Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(30),
            ..Limits::default()
        })
        .await;
        let garbage = exchange(addr, b"\x16\x03\x01\x00\x05hello\xff\xfe\r\n\r\n")
            .await
            .expect("garbage closed");
        assert!(
            garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
            "{garbage}"
        );
        // Two idle connections take both slots: a third is closed unanswered.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET").await.expect("write");
            held.push(s);
        }
        let refused = exchange(addr, FAST).await.expect("closed at once");
        assert!(refused.is_empty(), "{refused}");
        drop(held);
        // Slots free up as the server sees the held connections close.
        let deadline = Instant::now() + Duration::from_secs(5);
        let served = loop {
            let answer = exchange(addr, FAST).await.unwrap_or_default();
            if answer.starts_with("HTTP/1.1 200") || Instant::now() >= deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    }

    #[tokio::test]
    async fn a_request_head_over_16_kib_gets_431_and_healthz_is_served_after() {
        let limits = Limits::default();
        assert_eq!(limits.max_header_bytes, 16 * 1024);
        let (addr, _stop) = start_debug_api(limits).await;
        const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        let with_pad = |bytes: usize| {
            format!(
                "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
                "p".repeat(bytes)
            )
        };
        // One header making the head 17 KiB.
        let big = exchange(addr, with_pad(17 * 1024).as_bytes())
            .await
            .expect("closed after the answer");
        assert!(
            big.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
            "{big}"
        );
        // 101 small headers (the limit is 100) get the same.
        let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
        let many = exchange(
            addr,
            format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("closed after the answer");
        assert!(many.starts_with("HTTP/1.1 431"), "{many}");
        // A head just under the limit is answered, and so is a plain /healthz after.
        let under = exchange(addr, with_pad(15 * 1024).as_bytes())
            .await
            .expect("closed after the answer");
        assert!(under.starts_with("HTTP/1.1 200"), "{under}");
        let health = exchange(addr, HEALTHZ)
            .await
            .expect("closed after the answer");
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.ends_with("ok"), "{health}");
    }
}
