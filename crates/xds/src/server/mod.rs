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
//! config. Bursts of changes are coalesced, but the first change after a quiet period is pushed
//! at once.

mod delta;
mod holdings;
mod sotw;
mod stream;
mod tls;

pub use tls::{
    serve_tls, serve_tls_with_limits, AuthenticatedConn, PeerInfo, XdsLimits, XdsTls,
    CONNECTION_WINDOW_BYTES, MAX_HEADER_LIST_BYTES, STREAM_WINDOW_BYTES,
};

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use causeway_discovery::MeshIndex;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth;
use crate::status::ProxyRegistry;
use delta::Delta;
use sotw::Sotw;
use stream::{drive, open_session, Pacer, Session};

/// Largest request message accepted (bytes): a longer one is refused with `OUT_OF_RANGE` as
/// soon as its length prefix is read, before it is buffered.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Responses queued for one stream, at most, before the stream's task waits for the proxy to
/// read (HTTP/2 flow control): a proxy that stops reading stalls only its own stream, and each
/// later push is computed from the mesh state of its time, so no backlog builds up.
pub const MAX_QUEUED_RESPONSES: usize = 8;

/// The mesh state the server serves from.
#[derive(Debug, Clone, Default)]
pub struct MeshState {
    /// Increases with every change.
    pub version: u64,
    /// The index; `None` until the mesh has loaded.
    pub index: Option<Arc<MeshIndex>>,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Changes closer together than this are pushed together.
    pub coalesce: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            coalesce: Duration::from_millis(100),
        }
    }
}

/// The ADS service.
#[derive(Clone)]
pub struct AdsServer {
    state: watch::Receiver<Arc<MeshState>>,
    registry: Arc<ProxyRegistry>,
    config: ServerConfig,
    next_conn: Arc<AtomicU64>,
}

impl AdsServer {
    /// A server over `state`, recording into `registry`.
    pub fn new(
        state: watch::Receiver<Arc<MeshState>>,
        registry: Arc<ProxyRegistry>,
        config: ServerConfig,
    ) -> Self {
        Self {
            state,
            registry,
            config,
            next_conn: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The tonic service to mount.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
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
    /// certificate.
    fn session(
        &self,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
        peer: Option<&auth::PeerCert>,
        stream: &'static str,
    ) -> Result<Session, Status> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        open_session(&self.registry, &self.state, conn, node, peer, stream)
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

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let slot = stream_slot(&request, &self.registry)?;
        let peer = peer_of(&request);
        let mut inbound = request.into_inner();
        let first = first_request(&mut inbound).await?;
        let session = self.session(first.node.as_ref(), peer.as_deref(), "sotw")?;
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

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let slot = stream_slot(&request, &self.registry)?;
        let peer = peer_of(&request);
        let mut inbound = request.into_inner();
        let first = first_request(&mut inbound).await?;
        let session = self.session(first.node.as_ref(), peer.as_deref(), "delta")?;
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
