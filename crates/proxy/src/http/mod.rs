//! The HTTP connection manager: serves HTTP/1.1 and HTTP/2 on a downstream connection (plain
//! from the app on outbound listeners, inside mTLS from callers on inbound ones), runs the
//! RBAC filters, sets `x-forwarded-client-cert`, picks the route and hands the request to the
//! router.

pub mod body;
pub mod headers;
pub mod route;
pub mod router;

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use causeway_xds::dataplane::http::{Codec, HttpManagerConfig};
use causeway_xds::dataplane::ChainAction;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::SharedSnapshot;
use crate::metrics::{DurationLabels, ListenerLabels, Metrics, RequestLabels};
use crate::tls::Caller;
use crate::worker::WorkerState;
use body::ResponseBody;

/// Runs hyper's connection tasks on the worker's own single-threaded runtime (their futures
/// hold the worker's state, which never leaves its thread).
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// A reply the proxy makes itself (no upstream answered), with Envoy's status and text.
pub fn local_reply(status: StatusCode, text: &str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::local(text.to_owned()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

/// What every request of one downstream connection shares.
pub struct Connection {
    pub snapshot: SharedSnapshot,
    pub listener: String,
    /// Index of the filter chain in the listener; None: its default chain.
    pub chain: Option<usize>,
    /// The verified caller (inbound mTLS); None on plain outbound listeners.
    pub caller: Option<Caller>,
    /// This proxy's own SPIFFE ID (XFCC's `By`), on inbound chains.
    pub own_uri: Option<String>,
    /// The port the connection arrived on (RBAC's `destination_port`).
    pub destination_port: u16,
    pub peer: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub handles: MetricHandles,
    /// The `x-forwarded-client-cert` value of this connection's requests, once computed.
    pub xfcc: std::cell::OnceCell<Option<http::HeaderValue>>,
}

impl Connection {
    fn manager(&self) -> Option<&HttpManagerConfig> {
        let listener = self.snapshot.listeners.get(&self.listener)?;
        let chain = match self.chain {
            Some(i) => listener.filter_chains.get(i)?,
            None => listener.default_chain.as_ref()?,
        };
        match &chain.action {
            ChainAction::Http(m) => Some(m),
            ChainAction::TcpProxy(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("serving HTTP on {listener}: {error}")]
pub struct ServeError {
    listener: String,
    error: Box<dyn std::error::Error + Send + Sync>,
}

/// Serves `io` as HTTP with the connection manager of `conn`'s chain until it closes.
pub async fn serve<I>(state: Rc<WorkerState>, conn: Rc<Connection>, io: I) -> Result<(), ServeError>
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let Some(manager) = conn.manager() else {
        return Ok(());
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
    builder.http1().timer(TokioTimer::new());
    if let Some(t) = manager.request_headers_timeout {
        builder.http1().header_read_timeout(t);
    }
    builder.http2().timer(TokioTimer::new());
    let builder = match manager.codec {
        Codec::Auto => builder,
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
    };
    let listener = conn.listener.clone();
    let started = Arc::clone(&conn.snapshot);
    let svc_state = Rc::clone(&state);
    let service = hyper::service::service_fn(move |req| {
        let state = Rc::clone(&svc_state);
        let conn = Rc::clone(&conn);
        async move { Ok::<_, std::convert::Infallible>(handle(&state, &conn, req).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let drain = crate::listener::listener_changed(&state, &started, &listener);
    tokio::pin!(drain);
    let mut draining = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                return served.map_err(|error| ServeError {
                    listener: listener.clone(),
                    error,
                });
            }
            () = &mut drain, if !draining => {
                // The listener changed: finish the request in flight (HTTP/1.1) or the open
                // streams (HTTP/2, after GOAWAY), then close; the caller reconnects to the new
                // configuration.
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// One request: RBAC, headers, route, router; counted and timed.
async fn handle(
    state: &Rc<WorkerState>,
    conn: &Connection,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let Some(manager) = conn.manager() else {
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, "listener gone");
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Err(denied) = headers::authorize(manager, conn, &path) {
        conn.metrics
            .rbac_denied
            .get_or_create(&ListenerLabels {
                listener: conn.listener.clone(),
            })
            .inc();
        tracing::debug!(listener = %conn.listener, peer = ?conn.peer, %denied, "request denied by RBAC");
        return count(
            conn,
            "",
            started,
            local_reply(StatusCode::FORBIDDEN, "RBAC: access denied"),
        );
    }
    headers::prepare_request(&mut req, manager, conn);
    let authority = headers::authority(&req);
    let Some(route) = route::route(&manager.routes, &authority, &path) else {
        return count(conn, "", started, local_reply(StatusCode::NOT_FOUND, ""));
    };
    // Borrowed from the connection's snapshot, which outlives the request: no copy per request.
    let action = &route.action;
    // The route comes from the listener the connection was accepted on (its configuration
    // stays with the connection, as an Envoy listener's does while it drains), but clusters and
    // endpoints are the worker's current ones, as Envoy's cluster manager's are for every new
    // request: an open connection must not keep sending to endpoints an update removed.
    let snapshot = state.snapshot();
    let idle = manager.stream_idle_timeout;
    // One cluster per request, by weight when a policy splits the route; retries stay with it.
    let cluster = action.clusters.pick(fastrand::u64(..));
    let routed = router::forward(state, &snapshot, (action, cluster), idle, req).await;
    if routed.retries > 0 {
        conn.metrics
            .http_retries
            .get_or_create(&crate::metrics::ClusterLabels {
                cluster: cluster.to_owned(),
            })
            .inc_by(u64::from(routed.retries));
    }
    let mut response = routed.response;
    headers::prepare_response(&mut response);
    tracing::trace!(listener = %conn.listener, %cluster, endpoint = ?routed.endpoint, status = response.status().as_u16(), "request routed");
    count(conn, cluster, started, response)
}

fn count(
    conn: &Connection,
    cluster: &str,
    started: Instant,
    response: Response<ResponseBody>,
) -> Response<ResponseBody> {
    let class = response.status().as_u16() / 100;
    let (requests, duration) = conn.handles(cluster, class);
    requests.inc();
    duration.observe(started.elapsed().as_secs_f64());
    response
}

/// A connection's metric handles by (cluster, status class): the label sets are built and
/// looked up once per connection, not per request.
#[derive(Default)]
pub struct MetricHandles(RefCell<Vec<(String, u16, Counter, Histogram)>>);

impl Connection {
    fn handles(&self, cluster: &str, class: u16) -> (Counter, Histogram) {
        let mut cache = self.handles.0.borrow_mut();
        if let Some((_, _, c, h)) = cache
            .iter()
            .find(|(n, k, _, _)| n == cluster && *k == class)
        {
            return (c.clone(), h.clone());
        }
        let requests = self
            .metrics
            .http_requests
            .get_or_create(&RequestLabels {
                listener: self.listener.clone(),
                cluster: cluster.to_owned(),
                code: format!("{class}xx"),
            })
            .clone();
        let duration = self
            .metrics
            .http_request_duration
            .get_or_create(&DurationLabels {
                listener: self.listener.clone(),
                cluster: cluster.to_owned(),
            })
            .clone();
        cache.push((
            cluster.to_owned(),
            class,
            requests.clone(),
            duration.clone(),
        ));
        (requests, duration)
    }
}
