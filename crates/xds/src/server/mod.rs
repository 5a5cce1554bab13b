//! The ADS server: state-of-the-world and delta variants over one gRPC service.
//!
//! `stream` holds what both variants share (the session with the node and its desired
//! resources, the pacer, the loop that drives a stream); `sotw` and `delta` are the two
//! protocol state machines, and `holdings` is what a delta proxy holds of one type.
//!
//! Connections arrive over mTLS (`tls`): each carries its verified mesh certificate, and the
//! first request's node must claim exactly what that certificate proves (`crate::auth`).
//! Each connection validates its node, builds its resources from the latest mesh state, and
//! sends only what the proxy does not already have: a changed ClusterLoadAssignment goes out
//! alone, and a proxy whose resources did not change gets nothing. ACKs and NACKs are matched
//! by nonce (SotW: the latest of a type; delta: every response still in flight); after a NACK
//! the server diffs against what the proxy last accepted, and Envoy keeps serving its last good
//! config.
//!
//! The push path: for every new mesh state, one task builds the resource set of every live
//! class (sidecars with equal inputs share one, see `crate::build::shared`; only the changed
//! services are rebuilt) on at most one thread per core off the async runtime, then hands the
//! state to the sessions. Each session takes its class's set, rebuilds its own inbound
//! resources only if what they depend on changed, and looks only at the names that changed
//! between the sets it held and the new ones: a proxy the change did not touch sends nothing
//! and is recorded at the new mesh version. Changes that arrive during a build are built
//! together; nothing waits on a timer.

mod delta;
mod holdings;
mod names;
mod service;
mod sotw;
mod stream;
mod tls;
mod wire;

pub use service::AdsService;

pub use tls::{
    serve_tls, serve_tls_with_limits, AuthenticatedConn, PeerInfo, XdsLimits, XdsTls,
    CONNECTION_WINDOW_BYTES, MAX_HEADER_LIST_BYTES, STREAM_WINDOW_BYTES,
};

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use causeway_discovery::MeshIndex;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth;
use crate::build::{ClassBuild, SharedBuilds};
use crate::status::ProxyRegistry;
use delta::Delta;
use sotw::Sotw;
use stream::{drive, open_session, Pacer, Session, WarmingSlot};
use wire::DeltaResponseWire;

/// Largest request message accepted (bytes): a longer one is refused with `OUT_OF_RANGE` as
/// soon as its length prefix is read, before it is buffered.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Responses queued for one stream, at most, before the stream's task waits for the proxy to
/// read (HTTP/2 flow control): a proxy that stops reading stalls only its own stream, and each
/// later push is computed from the mesh state of its time, so no backlog builds up.
pub const MAX_QUEUED_RESPONSES: usize = 8;

/// Proxies receiving their first full config at once, at most: the others wait for a place
/// before their first build. A first config is the whole mesh view (megabytes for a thousand
/// services), so a reconnect storm of thousands of proxies would otherwise hold all their
/// first responses in memory at once; a warming stream holds at most
/// [`MAX_QUEUED_RESPONSES`] responses of at most 32 KiB each (`delta::MAX_RESPONSE_BYTES`).
pub const MAX_WARMING: usize = 64;

/// A proxy that has not ACKed its endpoints this long after its first build gives its place
/// to the next.
pub const WARMING_TIMEOUT: Duration = Duration::from_secs(15);

/// The mesh state the server serves from.
#[derive(Debug, Clone, Default)]
pub struct MeshState {
    /// Increases with every change.
    pub version: u64,
    /// The index; `None` until the mesh has loaded.
    pub index: Option<Arc<MeshIndex>>,
}

/// Server settings.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// The least time between two pushes to one proxy: changes closer together are pushed
    /// together. Zero by default: a change is pushed as soon as it is built, and changes that
    /// arrive while a build runs are built together.
    pub coalesce: Duration,
}

/// The ADS service.
#[derive(Clone)]
pub struct AdsServer {
    /// The mesh state once every live class's resources are built for it: what sessions
    /// serve from.
    state: watch::Receiver<Arc<MeshState>>,
    registry: Arc<ProxyRegistry>,
    config: ServerConfig,
    next_conn: Arc<AtomicU64>,
    shared: Arc<SharedBuilds>,
    /// Bounds the builds of connecting sessions running off the async runtime at once.
    build_slots: Arc<Semaphore>,
    /// Places among the proxies receiving their first config ([`MAX_WARMING`]).
    warming: Arc<Semaphore>,
}

/// Threads building class resource sets at once: one per core.
fn build_threads() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

impl AdsServer {
    /// A server over `state`, recording into `registry`. Starts the task that builds every
    /// live class's resources for each new state before sessions push it (call it inside a
    /// Tokio runtime).
    pub fn new(
        state: watch::Receiver<Arc<MeshState>>,
        registry: Arc<ProxyRegistry>,
        config: ServerConfig,
    ) -> Self {
        let shared = Arc::new(SharedBuilds::default());
        let (built, built_rx) = watch::channel(state.borrow().clone());
        tokio::spawn(build_ahead(state, Arc::clone(&shared), built));
        Self {
            state: built_rx,
            registry,
            config,
            next_conn: Arc::new(AtomicU64::new(1)),
            shared,
            build_slots: Arc::new(Semaphore::new(build_threads())),
            warming: Arc::new(Semaphore::new(MAX_WARMING)),
        }
    }

    /// The mesh state sessions serve from and check nodes against: the newest state once its
    /// class resource sets are built (it can trail the input state by one build).
    pub fn served(&self) -> watch::Receiver<Arc<MeshState>> {
        self.state.clone()
    }

    /// The tonic service to mount.
    pub fn into_service(self) -> AdsService {
        AdsService::new(self)
    }
}

/// For every new mesh state: builds every live class's resources on at most
/// [`build_threads`] threads off the async runtime, then hands the state to the sessions. A
/// state that arrives during a build waits for it, and only the newest waiting one is built
/// (changes coalesce only while a build runs; there is no fixed delay).
async fn build_ahead(
    mut state: watch::Receiver<Arc<MeshState>>,
    shared: Arc<SharedBuilds>,
    built: watch::Sender<Arc<MeshState>>,
) {
    loop {
        let current = state.borrow_and_update().clone();
        if let Some(index) = current.index.clone() {
            let (shared, version) = (Arc::clone(&shared), current.version);
            let started = std::time::Instant::now();
            let classes = tokio::task::spawn_blocking(move || {
                let classes = shared.live();
                build_classes(&classes, &index, version);
                classes.len()
            })
            .await
            .unwrap_or(0);
            tracing::debug!(
                version,
                classes,
                elapsed_us = started.elapsed().as_micros() as u64,
                "resource sets built"
            );
        }
        built.send_replace(current);
        if state.changed().await.is_err() {
            break;
        }
    }
}

fn build_classes(classes: &[Arc<ClassBuild>], index: &MeshIndex, version: u64) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = build_threads().min(classes.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(class) = classes.get(i) else { break };
                class.set(index, version);
            });
        }
    });
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The certificate the request's connection presented (`None` without mTLS).
fn peer_of<T>(request: &Request<T>) -> Option<Arc<auth::PeerCert>> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.cert.clone())
}

/// Takes one of the connection's stream slots, or refuses the stream (the connection's other
/// streams are untouched).
fn stream_slot<T>(
    request: &Request<T>,
    registry: &ProxyRegistry,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, Status> {
    let Some(peer) = request.extensions().get::<PeerInfo>() else {
        return Ok(None);
    };
    let Some(streams) = &peer.streams else {
        return Ok(None);
    };
    match Arc::clone(streams).try_acquire_owned() {
        Ok(permit) => Ok(Some(permit)),
        Err(_) => {
            let who = peer.addr.map(|a| a.to_string()).unwrap_or_default();
            let message =
                "too many ADS streams on one connection (an Envoy needs one); stream refused";
            tracing::warn!(peer = %who, reason = "overloaded", message, "xDS stream refused");
            registry.reject(&who, "overloaded", message);
            Err(Status::resource_exhausted(message))
        }
    }
}

/// The first request of a stream: it carries the node.
async fn first_request<T>(inbound: &mut Streaming<T>) -> Result<T, Status> {
    match inbound.next().await {
        Some(Ok(r)) => Ok(r),
        Some(Err(e)) => Err(e),
        None => Err(Status::cancelled("stream closed before its first request")),
    }
}

impl AdsServer {
    /// A connection's session, validated from its first request's node and the connection's
    /// certificate, its first resources built off the async runtime (at most
    /// [`build_threads`] at once).
    async fn session(
        &self,
        node: Option<envoy_types::pb::envoy::config::core::v3::Node>,
        peer: Option<Arc<auth::PeerCert>>,
        stream: &'static str,
    ) -> Result<Session, Status> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let closed = || Status::unavailable("the xDS server is shutting down");
        let warming = Arc::clone(&self.warming)
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let warming: WarmingSlot = Arc::new(std::sync::Mutex::new(Some(warming)));
        let expiry = Arc::clone(&warming);
        tokio::spawn(async move {
            tokio::time::sleep(WARMING_TIMEOUT).await;
            if let Ok(mut permit) = expiry.lock() {
                permit.take();
            }
        });
        let _slot = Arc::clone(&self.build_slots)
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let (registry, shared, state) = (
            Arc::clone(&self.registry),
            Arc::clone(&self.shared),
            self.state.clone(),
        );
        let mut session = tokio::task::spawn_blocking(move || {
            open_session(
                &registry,
                &shared,
                &state,
                conn,
                node.as_ref(),
                peer.as_deref(),
                stream,
            )
        })
        .await
        .map_err(|_| Status::internal("building the proxy's first resources failed"))??;
        session.warming = Some(warming);
        Ok(session)
    }

    /// A pacer that ignores changes from before the connection.
    fn pacer(&self) -> Pacer {
        let mut pacer = Pacer {
            state: self.state.clone(),
            poison: self.registry.poison_changes(),
            coalesce: self.config.coalesce,
            last_push: None,
            due: None,
        };
        pacer.state.mark_unchanged();
        pacer.poison.mark_unchanged();
        pacer
    }
}

impl AdsServer {
    /// A state-of-the-world ADS stream.
    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream<DiscoveryResponse>>, Status> {
        let slot = stream_slot(&request, &self.registry)?;
        let peer = peer_of(&request);
        let mut inbound = request.into_inner();
        let first = first_request(&mut inbound).await?;
        let session = self.session(first.node.clone(), peer, "sotw").await?;
        let (tx, rx) = mpsc::channel(MAX_QUEUED_RESPONSES);
        let mut pacer = self.pacer();
        let state = self.state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut proto = Sotw::new(session, tx);
            if proto.on_request(first).await.is_ok() {
                drive!(proto, inbound, pacer, state);
            } else {
                proto.session.registry.disconnect(proto.session.conn);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// A delta ADS stream.
    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream<DeltaResponseWire>>, Status> {
        let slot = stream_slot(&request, &self.registry)?;
        let peer = peer_of(&request);
        let mut inbound = request.into_inner();
        let first = first_request(&mut inbound).await?;
        let session = self.session(first.node.clone(), peer, "delta").await?;
        let (tx, rx) = mpsc::channel(MAX_QUEUED_RESPONSES);
        let mut pacer = self.pacer();
        let state = self.state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut proto = Delta::new(session, tx);
            if proto.on_request(first).await.is_ok() {
                drive!(proto, inbound, pacer, state);
            } else {
                proto.session.registry.disconnect(proto.session.conn);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
