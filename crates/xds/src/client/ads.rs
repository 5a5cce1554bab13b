//! The Causeway proxy's ADS client: one stream to the control plane over mTLS (the
//! certificate from the agent), delta or state of the world as Envoy's `--delta` choice, with
//! resources converted at the boundary (`dataplane`), ACKs and NACKs like Envoy's, and
//! reconnects with backoff. While the control plane is away the proxy keeps serving its last
//! good snapshot; on reconnect it tells the server what it holds (delta: every resource's
//! version; state of the world: each type's version).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::delta_state::DeltaState;
use super::sotw_state::SotwState;
use crate::dataplane::Snapshot;

/// Where and as whom the proxy connects.
#[derive(Debug, Clone)]
pub struct AdsClientConfig {
    pub xds: SocketAddr,
    /// TLS server name sent to the control plane.
    pub server_name: String,
    pub node: Node,
    pub connect_timeout: Duration,
    /// Delta xDS; false: state of the world.
    pub delta: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AdsClientError {
    #[error("connecting to the control plane at {addr}: {error}")]
    Connect {
        addr: SocketAddr,
        error: tonic::transport::Error,
    },
    #[error("the control plane refused the stream: {0}")]
    Refused(tonic::Status),
    #[error("the xDS stream broke: {0}")]
    Stream(tonic::Status),
    #[error("the xDS stream ended")]
    Ended,
}

/// What the client did, for the admin port and logs.
#[derive(Debug, Default)]
pub struct AdsStatus {
    pub connected: AtomicBool,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub connects: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_rejection: Mutex<Option<String>>,
}

impl AdsStatus {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }

    pub fn last_rejection(&self) -> Option<String> {
        self.last_rejection.lock().ok().and_then(|g| g.clone())
    }

    fn set(slot: &Mutex<Option<String>>, value: String) {
        if let Ok(mut g) = slot.lock() {
            *g = Some(value);
        }
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs the client for ever: waits for TLS credentials, streams, publishes every accepted
/// snapshot on `out`, reconnects on any failure. Cancel it by dropping its task.
pub async fn run(
    config: AdsClientConfig,
    mut tls: watch::Receiver<Option<Arc<rustls::ClientConfig>>>,
    out: watch::Sender<Arc<Snapshot>>,
    status: Arc<AdsStatus>,
) {
    let mut delta = DeltaState::default();
    let mut sotw = SotwState::default();
    let mut backoff = BACKOFF_MIN;
    loop {
        let current = tls.borrow_and_update().clone();
        let Some(current) = current else {
            if tls.changed().await.is_err() {
                return;
            }
            continue;
        };
        status.connects.fetch_add(1, Ordering::Relaxed);
        let result = if config.delta {
            session(&config, current, &mut delta, &out, &status, &mut backoff).await
        } else {
            session(&config, current, &mut sotw, &out, &status, &mut backoff).await
        };
        status.connected.store(false, Ordering::Relaxed);
        if let Err(e) = result {
            tracing::warn!(xds = %config.xds, error = %e, retry_in = ?backoff, "xDS stream down; serving the last good config");
            AdsStatus::set(&status.last_error, e.to_string());
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn channel(
    config: &AdsClientConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, AdsClientError> {
    let addr = config.xds;
    let server_name = config.server_name.clone();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|error| AdsClientError::Connect { addr, error })?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from(server_name)
                    .map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|error| AdsClientError::Connect { addr, error })
}

/// What differs between the two ADS protocols for the stream loop: the messages, how the
/// stream opens, and what the protocol state makes of a response.
trait Protocol {
    type Request: Send + 'static;
    type Response: Send + 'static;
    const NAME: &'static str;

    fn opening(&self, node: Node) -> Vec<Self::Request>;

    /// The answer to send, what was refused, an EDS request to send after it, a snapshot.
    fn apply(&mut self, r: &Self::Response) -> Applied<Self::Request>;

    fn type_url(r: &Self::Response) -> &str;

    async fn open(
        client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
        requests: ReceiverStream<Self::Request>,
    ) -> Result<tonic::Streaming<Self::Response>, tonic::Status>;
}

/// A protocol state's reply to one response.
struct Applied<Q> {
    answer: Q,
    refused: Vec<crate::dataplane::ConfigError>,
    eds: Option<Q>,
    snapshot: Option<Snapshot>,
}

impl Protocol for DeltaState {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";

    fn opening(&self, node: Node) -> Vec<Self::Request> {
        self.opening_requests(node)
    }

    fn apply(&mut self, r: &Self::Response) -> Applied<Self::Request> {
        let reply = self.on_response(r);
        Applied {
            answer: reply.answer,
            refused: reply.refused,
            eds: reply.eds,
            snapshot: reply.snapshot,
        }
    }

    fn type_url(r: &Self::Response) -> &str {
        &r.type_url
    }

    async fn open(
        client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
        requests: ReceiverStream<Self::Request>,
    ) -> Result<tonic::Streaming<Self::Response>, tonic::Status> {
        Ok(client
            .delta_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}

impl Protocol for SotwState {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "state of the world";

    fn opening(&self, node: Node) -> Vec<Self::Request> {
        self.opening_requests(node)
    }

    fn apply(&mut self, r: &Self::Response) -> Applied<Self::Request> {
        let reply = self.on_response(r);
        Applied {
            answer: reply.answer,
            refused: reply.refused,
            eds: reply.eds,
            snapshot: reply.snapshot,
        }
    }

    fn type_url(r: &Self::Response) -> &str {
        &r.type_url
    }

    async fn open(
        client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
        requests: ReceiverStream<Self::Request>,
    ) -> Result<tonic::Streaming<Self::Response>, tonic::Status> {
        Ok(client
            .stream_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}

/// One stream: open it with what `state` holds, then answer every response (ACK or NACK),
/// publish every accepted snapshot, until the stream breaks.
async fn session<P: Protocol>(
    config: &AdsClientConfig,
    tls: Arc<rustls::ClientConfig>,
    state: &mut P,
    out: &watch::Sender<Arc<Snapshot>>,
    status: &AdsStatus,
    backoff: &mut Duration,
) -> Result<(), AdsClientError> {
    let channel = channel(config, tls).await?;
    let (tx, rx) = mpsc::channel(16);
    for r in state.opening(config.node.clone()) {
        // The channel is fresh and larger than the opening requests: this cannot block.
        let _ = tx.try_send(r);
    }
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let mut inbound = P::open(&mut client, ReceiverStream::new(rx))
        .await
        .map_err(AdsClientError::Refused)?;
    status.connected.store(true, Ordering::Relaxed);
    tracing::info!(xds = %config.xds, node = %config.node.id, protocol = P::NAME, "xDS stream open");
    loop {
        let response = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(AdsClientError::Ended),
            Err(s) => return Err(AdsClientError::Stream(s)),
        };
        *backoff = BACKOFF_MIN;
        let reply = state.apply(&response);
        report(status, P::type_url(&response), &reply.refused);
        for request in std::iter::once(reply.answer).chain(reply.eds) {
            if tx.send(request).await.is_err() {
                return Err(AdsClientError::Ended);
            }
        }
        if let Some(snapshot) = reply.snapshot {
            out.send_replace(Arc::new(snapshot));
        }
    }
}

/// Counts and logs what became of a response.
fn report(status: &AdsStatus, type_url: &str, refused: &[crate::dataplane::ConfigError]) {
    if refused.is_empty() {
        status.accepted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(r#type = %type_url, "config accepted");
        return;
    }
    status.rejected.fetch_add(1, Ordering::Relaxed);
    let message = refused
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    tracing::warn!(r#type = %type_url, error = %message, "config rejected (NACK); keeping the last good config");
    AdsStatus::set(&status.last_rejection, message);
}
