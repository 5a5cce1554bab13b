//! Simulated proxies: each a real gRPC ADS client over mTLS with its own mesh certificate,
//! asking and answering like Envoy (CDS and LDS wildcard, EDS for every EDS cluster CDS gave
//! it, an ACK for every response) but keeping only each resource's name and version, so that
//! thousands fit in one process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// FNV-1a of a resource's type URL and name: what a simulated proxy keys its holdings by
/// (a cluster and its load assignment share a name).
pub fn name_hash(type_url: &str, name: &str) -> u64 {
    let mut key = Vec::with_capacity(type_url.len() + 1 + name.len());
    key.extend_from_slice(type_url.as_bytes());
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    causeway_xds::resources::content_hash(&key)
}

/// A resource version as the server writes it (16 hex digits); 0 when it is not one.
pub fn version_number(v: &str) -> u64 {
    u64::from_str_radix(v, 16).unwrap_or(0)
}

/// The first fields of a Cluster: its name and discovery type (EDS = 3). Decoding only these
/// keeps 2,000 proxies' CDS cheap; prost skips the rest.
#[derive(Clone, PartialEq, prost::Message)]
struct ClusterHead {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, tag = "2")]
    discovery_type: i32,
}

/// The name of a Listener or a ClusterLoadAssignment (field 1 of both).
#[derive(Clone, PartialEq, prost::Message)]
struct NameHead {
    #[prost(string, tag = "1")]
    name: String,
}

const EDS_TYPE: i32 = 3;

/// What one change needs of one proxy: name → version (`None`: removed).
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    pub change: usize,
    pub want: Vec<(u64, Option<u64>)>,
}

/// One proxy's progress, shared with the benchmark's coordinator.
#[derive(Debug, Default)]
pub struct Progress {
    /// When its first full config was ACKed.
    pub full_at: Mutex<Option<Instant>>,
    /// What the current change needs of it.
    pub expect: Mutex<Option<Expectation>>,
    /// The change it has ACKed everything of, and when.
    pub done_change: AtomicUsize,
    pub done_at: Mutex<Option<Instant>>,
    /// The last change during which it received a response.
    pub pushed_change: AtomicUsize,
    pub responses: AtomicU64,
    /// The last connection or stream error, and how often it reconnected.
    pub error: Mutex<Option<String>>,
    pub reconnects: AtomicU64,
}

/// Every proxy's progress and the change being measured.
#[derive(Debug)]
pub struct Board {
    pub proxies: Vec<Progress>,
    /// The change in flight (0: none yet).
    pub current: AtomicUsize,
    /// Proxies that received a response during each change.
    pub pushed: Vec<AtomicUsize>,
}

impl Board {
    pub fn new(proxies: usize, changes: usize) -> Self {
        Self {
            proxies: (0..proxies).map(|_| Progress::default()).collect(),
            current: AtomicUsize::new(0),
            pushed: (0..=changes).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    fn note_response(&self, proxy: usize) {
        let p = &self.proxies[proxy];
        p.responses.fetch_add(1, Ordering::Relaxed);
        let current = self.current.load(Ordering::Acquire);
        if current > 0 && p.pushed_change.swap(current, Ordering::AcqRel) != current {
            self.pushed[current].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One simulated proxy.
pub struct SimProxy {
    pub index: usize,
    pub node: Node,
    pub tls: Arc<rustls::ClientConfig>,
}

/// What a simulated proxy holds: per type, name → version (state of the world: the body's
/// hash), and the EDS names it subscribed to.
#[derive(Default)]
struct Held {
    cds: HashMap<u64, u64>,
    eds: HashMap<u64, u64>,
    lds: HashMap<u64, u64>,
    eds_names: HashMap<u64, String>,
    cds_acked: bool,
    lds_acked: bool,
    /// EDS names seen since the current change began (state of the world has no
    /// per-resource versions, so a wanted name counts once a response carries it).
    seen: Vec<u64>,
    seen_change: usize,
}

impl Held {
    fn of(&mut self, type_url: &str) -> Option<&mut HashMap<u64, u64>> {
        match type_url {
            CDS => Some(&mut self.cds),
            EDS => Some(&mut self.eds),
            LDS => Some(&mut self.lds),
            _ => None,
        }
    }

    fn full(&self) -> bool {
        self.cds_acked && self.lds_acked && self.eds_names.keys().all(|n| self.eds.contains_key(n))
    }

    fn satisfies(&self, e: &Expectation, delta: bool) -> bool {
        e.want.iter().all(|(name, version)| {
            let held = self
                .cds
                .get(name)
                .or_else(|| self.eds.get(name))
                .or_else(|| self.lds.get(name));
            match version {
                None => held.is_none(),
                Some(v) if delta => held == Some(v),
                Some(_) => self.seen_change == e.change && self.seen.contains(name),
            }
        })
    }
}

async fn channel(
    xds: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<tonic::transport::Channel> {
    let connector = tokio_rustls::TlsConnector::from(tls);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))?
        .connect_timeout(Duration::from_secs(10));
    Ok(endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(xds).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from(
                    causeway_trust::service::CONTROL_PLANE_SERVER_NAME,
                )
                .map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await?)
}

impl SimProxy {
    /// Runs for as long as the benchmark does: like Envoy, reconnects with backoff (100 ms
    /// doubling to 5 s) when a connection fails or a stream breaks, starting afresh; the last
    /// error and the number of reconnects land on the board.
    pub async fn run(self, xds: SocketAddr, delta: bool, board: Arc<Board>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = if delta {
                self.run_delta(xds, &board).await
            } else {
                self.run_sotw(xds, &board).await
            };
            let p = &board.proxies[self.index];
            if let (Err(e), Ok(mut slot)) = (result, p.error.lock()) {
                *slot = Some(format!("{e:#}"));
            }
            p.reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// After an ACK: records a first full config and a satisfied expectation.
    fn after_ack(&self, held: &Held, board: &Board, delta: bool) {
        let p = &board.proxies[self.index];
        if held.full() {
            if let Ok(mut at) = p.full_at.lock() {
                at.get_or_insert_with(Instant::now);
            }
        }
        let Ok(expect) = p.expect.lock() else { return };
        if let Some(e) = expect.as_ref() {
            if p.done_change.load(Ordering::Acquire) != e.change && held.satisfies(e, delta) {
                if let Ok(mut at) = p.done_at.lock() {
                    *at = Some(Instant::now());
                }
                p.done_change.store(e.change, Ordering::Release);
            }
        }
    }

    fn note_seen(held: &mut Held, board: &Board, name: u64) {
        let current = board.current.load(Ordering::Acquire);
        if held.seen_change != current {
            held.seen.clear();
            held.seen_change = current;
        }
        held.seen.push(name);
    }

    async fn run_delta(&self, xds: SocketAddr, board: &Board) -> anyhow::Result<()> {
        let mut client =
            AggregatedDiscoveryServiceClient::new(channel(xds, Arc::clone(&self.tls)).await?)
                .max_decoding_message_size(256 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(16);
        let ask = |type_url: &str, node: Option<Node>| DeltaDiscoveryRequest {
            node,
            type_url: type_url.into(),
            ..Default::default()
        };
        tx.send(ask(CDS, Some(self.node.clone()))).await?;
        tx.send(ask(LDS, None)).await?;
        let mut stream = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut held = Held::default();
        while let Some(r) = stream.next().await {
            let r: DeltaDiscoveryResponse = r?;
            board.note_response(self.index);
            if std::env::var("XDS_SCALE_TRACE").ok() == Some(self.index.to_string()) {
                for res in &r.resources {
                    eprintln!(
                        "trace {}: {} {} {}",
                        self.index, r.type_url, res.name, res.version
                    );
                }
            }
            let mut subscribe = Vec::new();
            let mut unsubscribe = Vec::new();
            let is_cds = r.type_url == CDS;
            for res in &r.resources {
                let name = name_hash(&r.type_url, &res.name);
                if is_cds {
                    let head = res
                        .resource
                        .as_ref()
                        .map(|a| ClusterHead::decode(&*a.value));
                    if let Some(Ok(head)) = head {
                        if head.discovery_type == EDS_TYPE
                            && held
                                .eds_names
                                .insert(name_hash(EDS, &res.name), res.name.clone())
                                .is_none()
                        {
                            subscribe.push(res.name.clone());
                        }
                    }
                }
                if let Some(map) = held.of(&r.type_url) {
                    map.insert(name, version_number(&res.version));
                }
            }
            for removed in &r.removed_resources {
                let name = name_hash(&r.type_url, removed);
                if let Some(map) = held.of(&r.type_url) {
                    map.remove(&name);
                }
                if is_cds {
                    let eds_key = name_hash(EDS, removed);
                    if let Some(n) = held.eds_names.remove(&eds_key) {
                        held.eds.remove(&eds_key);
                        unsubscribe.push(n);
                    }
                }
            }
            if !subscribe.is_empty() || !unsubscribe.is_empty() {
                tx.send(DeltaDiscoveryRequest {
                    type_url: EDS.into(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    ..Default::default()
                })
                .await?;
            }
            match r.type_url.as_str() {
                CDS => held.cds_acked = true,
                LDS => held.lds_acked = true,
                _ => {}
            }
            tx.send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await?;
            self.after_ack(&held, board, true);
        }
        anyhow::bail!("the control plane ended the stream")
    }

    async fn run_sotw(&self, xds: SocketAddr, board: &Board) -> anyhow::Result<()> {
        let mut client =
            AggregatedDiscoveryServiceClient::new(channel(xds, Arc::clone(&self.tls)).await?)
                .max_decoding_message_size(256 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(16);
        let ask = |type_url: &str,
                   node: Option<Node>,
                   names: Vec<String>,
                   version: String,
                   nonce: String| DiscoveryRequest {
            node,
            type_url: type_url.into(),
            resource_names: names,
            version_info: version,
            response_nonce: nonce,
            ..Default::default()
        };
        tx.send(ask(
            CDS,
            Some(self.node.clone()),
            Vec::new(),
            String::new(),
            String::new(),
        ))
        .await?;
        tx.send(ask(LDS, None, Vec::new(), String::new(), String::new()))
            .await?;
        let mut stream = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut held = Held::default();
        while let Some(r) = stream.next().await {
            let r: DiscoveryResponse = r?;
            board.note_response(self.index);
            let full_state = r.type_url != EDS;
            let mut next: HashMap<u64, u64> = HashMap::new();
            let mut eds_names: HashMap<u64, String> = HashMap::new();
            for any in &r.resources {
                let Some(text) = sotw_name(&r.type_url, any) else {
                    continue;
                };
                let hash = name_hash(&r.type_url, &text);
                if r.type_url == CDS
                    && ClusterHead::decode(&*any.value).is_ok_and(|h| h.discovery_type == EDS_TYPE)
                {
                    eds_names.insert(name_hash(EDS, &text), text);
                }
                Self::note_seen(&mut held, board, hash);
                next.insert(hash, causeway_xds::resources::content_hash(&any.value));
            }
            let mut eds_changed = false;
            if let Some(map) = held.of(&r.type_url) {
                if full_state {
                    *map = next;
                } else {
                    map.extend(next);
                }
            }
            if r.type_url == CDS {
                eds_changed = eds_names.len() != held.eds_names.len()
                    || eds_names.keys().any(|k| !held.eds_names.contains_key(k));
                held.eds.retain(|n, _| eds_names.contains_key(n));
                held.eds_names = eds_names;
            }
            match r.type_url.as_str() {
                CDS => held.cds_acked = true,
                LDS => held.lds_acked = true,
                _ => {}
            }
            tx.send(ask(
                &r.type_url,
                None,
                names_of(&r.type_url, &held),
                r.version_info.clone(),
                r.nonce.clone(),
            ))
            .await?;
            if eds_changed {
                tx.send(ask(
                    EDS,
                    None,
                    held.eds_names.values().cloned().collect(),
                    String::new(),
                    String::new(),
                ))
                .await?;
            }
            self.after_ack(&held, board, false);
        }
        anyhow::bail!("the control plane ended the stream")
    }
}

/// The names a state-of-the-world request of `type_url` asks for (wildcard for CDS and LDS).
fn names_of(type_url: &str, held: &Held) -> Vec<String> {
    if type_url == EDS {
        held.eds_names.values().cloned().collect()
    } else {
        Vec::new()
    }
}

fn sotw_name(type_url: &str, any: &Any) -> Option<String> {
    Some(match type_url {
        CDS => ClusterHead::decode(&*any.value).ok()?.name,
        _ => NameHead::decode(&*any.value).ok()?.name,
    })
}

use prost::Message as _;
