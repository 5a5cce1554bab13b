//! Pooled HTTP connections to upstream endpoints, per worker and per (cluster, target): the
//! cluster is part of the key because one endpoint (an east-west gateway) serves many clusters
//! under different SNIs, and the target's SNI because the pods behind one gateway each get
//! their own connections. HTTP/2 connections (ALPN `h2`) carry every request on one connection;
//! HTTP/1.1 connections are kept while idle and reused once their previous response is done,
//! at most [`MAX_CONNECTIONS`] per key (Envoy's default circuit breaker), with an idle limit.

use crate::FastMap;
use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use causeway_xds::dataplane::ClusterConfig;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::connect::{connect, ConnectError};
use super::cut::{Cut, Cuttable};
use super::load::InFlight;
use super::Target;
use crate::http::body::RequestBody;
use crate::http::headers::{for_http1, for_http2};
use crate::http::LocalExec;

/// Connections per (cluster, endpoint) (Envoy's `max_connections` default).
pub const MAX_CONNECTIONS: usize = 1024;
/// An idle connection is closed after this (Envoy's upstream `idle_timeout` default is 1 h;
/// ours is shorter so a worker does not hold sockets to endpoints it stopped using).
const IDLE: Duration = Duration::from_secs(300);

/// Why a request could not be sent on a connection.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{MAX_CONNECTIONS} connections to {endpoint} of cluster {cluster} are busy")]
    Overflow { cluster: String, endpoint: Target },
    #[error("HTTP handshake with {endpoint} of cluster {cluster}: {error}")]
    Handshake {
        cluster: String,
        endpoint: Target,
        error: hyper::Error,
    },
    /// The request reached the connection; no (complete) response headers came back.
    #[error("{endpoint} of cluster {cluster}: {error}")]
    Upstream {
        cluster: String,
        endpoint: Target,
        error: hyper::Error,
        /// The peer refused the stream before processing it (HTTP/2 REFUSED_STREAM).
        refused: bool,
    },
}

struct Idle<S> {
    sender: S,
    last_used: Instant,
}

#[derive(Default)]
struct Pool {
    /// The cluster configuration the connections were made under: a changed cluster (TLS,
    /// SNI, timeouts) gets new connections, as Envoy drains a changed cluster's pools.
    cluster: Option<ClusterConfig>,
    h2: Option<http2::SendRequest<RequestBody>>,
    h1: Vec<Idle<http1::SendRequest<RequestBody>>>,
    /// The connections' switches, so [`Pools::close`] can cut them with their requests.
    connections: Vec<Weak<Cut>>,
}

/// One worker's pools.
#[derive(Default)]
pub struct Pools {
    by_key: RefCell<FastMap<(String, Target), Pool>>,
}

type Attempt =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Incoming>, TryError>>>>;
type TryError = hyper::client::conn::TrySendError<Request<RequestBody>>;

/// What the pool offers for a request.
enum Checkout {
    /// Sent on a pooled connection.
    Sent(Attempt),
    /// No connection is ready: open one.
    Open(Box<Request<RequestBody>>),
    Overflow,
}

impl Pools {
    /// Sends `req` to `endpoint` of `cluster` on a pooled connection, or a new one. A request
    /// a pooled connection could not take (it closed while idle) goes on a new connection;
    /// `attempt`'s latency then counts from when that connection is ready.
    pub async fn send(
        self: &Rc<Self>,
        cluster: &ClusterConfig,
        endpoint: &Target,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
        req: Request<RequestBody>,
        attempt: &InFlight,
    ) -> Result<Response<Incoming>, SendError> {
        let key = (cluster.name.clone(), endpoint.clone());
        let upstream = |error: hyper::Error| upstream_error(&cluster.name, endpoint, error);
        let mut req = match self.checkout(&key, cluster, req) {
            Checkout::Sent(attempt) => match attempt.await {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    Some(req) => req,
                    None => return Err(upstream(e.into_error())),
                },
            },
            Checkout::Open(req) => *req,
            Checkout::Overflow => {
                return Err(SendError::Overflow {
                    cluster: key.0,
                    endpoint: key.1,
                })
            }
        };
        let cut = Rc::new(Cut::default());
        let io = Cuttable::new(connect(cluster, endpoint, tls).await?, Rc::clone(&cut));
        let handshake = |error| SendError::Handshake {
            cluster: cluster.name.clone(),
            endpoint: endpoint.clone(),
            error,
        };
        if io.is_h2() {
            for_http2(&mut req);
            let (mut sender, conn) = http2::handshake(LocalExec, TokioIo::new(io))
                .await
                .map_err(handshake)?;
            attempt.sending_on_new_connection();
            tokio::task::spawn_local(async move {
                let _ = conn.await;
            });
            let fut = sender.send_request(req);
            {
                let mut pool = self.entry(key, cluster);
                pool.h2 = Some(sender);
                pool.track(&cut);
            }
            fut.await.map_err(upstream)
        } else {
            for_http1(&mut req);
            let (mut sender, conn) = http1::handshake(TokioIo::new(io))
                .await
                .map_err(handshake)?;
            attempt.sending_on_new_connection();
            tokio::task::spawn_local(async move {
                let _ = conn.await;
            });
            let fut = sender.send_request(req);
            let idle = Idle {
                sender,
                last_used: Instant::now(),
            };
            {
                let mut pools = self.by_key.borrow_mut();
                let pool = pools.entry(key).or_default();
                pool.h1.push(idle);
                pool.track(&cut);
            }
            fut.await.map_err(upstream)
        }
    }

    /// Sends on a ready connection of the pool, if any (no borrow is held across awaits).
    fn checkout(
        &self,
        key: &(String, Target),
        cluster: &ClusterConfig,
        mut req: Request<RequestBody>,
    ) -> Checkout {
        let mut pools = self.by_key.borrow_mut();
        let Some(pool) = pools.get_mut(key) else {
            return Checkout::Open(Box::new(req));
        };
        if pool.cluster.as_ref() != Some(cluster) {
            *pool = Pool {
                cluster: Some(cluster.clone()),
                ..Pool::default()
            };
            return Checkout::Open(Box::new(req));
        }
        if pool.h2.as_ref().is_some_and(|h2| h2.is_closed()) {
            pool.h2 = None;
        }
        if let Some(h2) = &mut pool.h2 {
            for_http2(&mut req);
            return Checkout::Sent(Box::pin(h2.try_send_request(req)));
        }
        let now = Instant::now();
        pool.h1
            .retain(|c| !c.sender.is_closed() && now.duration_since(c.last_used) < IDLE);
        let Some(idle) = pool.h1.iter_mut().find(|c| c.sender.is_ready()) else {
            if pool.h1.len() >= MAX_CONNECTIONS {
                return Checkout::Overflow;
            }
            return Checkout::Open(Box::new(req));
        };
        idle.last_used = now;
        for_http1(&mut req);
        Checkout::Sent(Box::pin(idle.sender.try_send_request(req)))
    }
}

impl Pool {
    /// Keeps `connection`'s switch, forgetting those of connections that ended.
    fn track(&mut self, connection: &Rc<Cut>) {
        self.connections.retain(|c| c.strong_count() > 0);
        self.connections.push(Rc::downgrade(connection));
    }
}

impl Pools {
    /// Cuts every connection to `address` (each cluster and SNI through it), requests in
    /// flight included (they fail as resets, so the router retries them elsewhere): the
    /// address was found dead, and a request waiting on a black hole would only time out.
    pub fn close_address(&self, address: std::net::SocketAddr) {
        let mut pools = self.by_key.borrow_mut();
        let dead: Vec<(String, Target)> = pools
            .keys()
            .filter(|(_, t)| t.address == address)
            .cloned()
            .collect();
        for key in dead {
            for connection in pools.remove(&key).iter().flat_map(|p| &p.connections) {
                if let Some(cut) = connection.upgrade() {
                    cut.pull();
                }
            }
        }
    }

    /// Closes the pools of targets that are no longer in `keep(cluster, target)` (their idle
    /// connections drop with them; requests in flight keep their connection).
    pub fn retain(&self, keep: impl Fn(&str, &Target) -> bool) {
        self.by_key
            .borrow_mut()
            .retain(|(cluster, target), _| keep(cluster, target));
    }

    fn entry(&self, key: (String, Target), cluster: &ClusterConfig) -> std::cell::RefMut<'_, Pool> {
        std::cell::RefMut::map(self.by_key.borrow_mut(), |pools| {
            let pool = pools.entry(key).or_default();
            if pool.cluster.as_ref() != Some(cluster) {
                *pool = Pool {
                    cluster: Some(cluster.clone()),
                    ..Pool::default()
                };
            }
            pool
        })
    }
}

fn upstream_error(cluster: &str, endpoint: &Target, error: hyper::Error) -> SendError {
    let refused = std::error::Error::source(&error)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|e| e.reason() == Some(h2::Reason::REFUSED_STREAM));
    SendError::Upstream {
        cluster: cluster.to_owned(),
        endpoint: endpoint.clone(),
        error,
        refused,
    }
}
