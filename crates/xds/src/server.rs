//! The ADS server: state-of-the-world and delta variants over one gRPC service.
//!
//! Each connection validates its node, builds its resources from the latest mesh state, and
//! sends only what the proxy does not already have: a changed ClusterLoadAssignment goes out
//! alone, and a proxy whose resources did not change gets nothing. ACKs and NACKs are matched
//! by nonce; after a NACK the server diffs against what the proxy last accepted, and Envoy keeps
//! serving its last good config. Bursts of changes are coalesced, but the first change after a
//! quiet period is pushed at once.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use causeway_discovery::MeshIndex;
use causeway_model::ProxyRole;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::build;
use crate::node::ProxyNode;
use crate::resources::{Resources, TypeUrl};
use crate::status::ProxyRegistry;

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
        AggregatedDiscoveryServiceServer::new(self)
    }
}

/// A listener Envoy refuses (its filter has no registered implementation); only ever built for
/// proxies poisoned through the test hook.
fn poison_listener() -> Any {
    pack_any(listener::Listener {
        name: "causeway-test-poison".into(),
        address: Some(envoy_types::pb::envoy::config::core::v3::Address {
            address: Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                envoy_types::pb::envoy::config::core::v3::SocketAddress {
                    address: "127.0.0.1".into(),
                    port_specifier: Some(
                        envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(1),
                    ),
                    ..Default::default()
                },
            )),
        }),
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: "causeway.test.poison".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(Any {
                    type_url: "type.googleapis.com/causeway.test.DoesNotExist".into(),
                    value: Vec::new(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// What both protocol variants share: the node, its desired resources and the coalescing clock.
struct Session {
    conn: u64,
    node: ProxyNode,
    registry: Arc<ProxyRegistry>,
    desired: Resources,
    mesh_version: u64,
    built: bool,
    cache: build::SidecarCache,
}

impl Session {
    /// Rebuilds the desired resources from `state`. When the node no longer resolves (its
    /// workload was removed), the last resources are kept: traffic keeps flowing.
    fn rebuild(&mut self, state: &MeshState) {
        let Some(index) = &state.index else {
            return;
        };
        let ctx = match self.node.resolve(index) {
            Ok(ctx) => ctx,
            Err(e) => {
                tracing::warn!(node = %self.node.id, error = %e, "proxy no longer matches the registry; keeping its last config");
                return;
            }
        };
        let span = tracing::debug_span!("build", cluster = %self.node.identity.cluster, workload = %self.node.identity.workload);
        let _guard = span.enter();
        let mut desired = match self.node.identity.role {
            ProxyRole::Sidecar => self.cache.build(index, &self.node, &ctx),
            ProxyRole::Gateway => build::gateway_resources(index, &ctx),
        };
        if self.registry.is_poisoned(
            self.node.identity.cluster.as_str(),
            &self.node.identity.workload,
        ) {
            desired.insert(
                TypeUrl::Listener,
                "causeway-test-poison",
                poison_listener(),
                &"poison",
            );
        }
        self.desired = desired;
        self.mesh_version = state.version;
        self.built = true;
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Validates the first request's node and resolves it against the current mesh.
fn open_session(
    registry: &Arc<ProxyRegistry>,
    state: &watch::Receiver<Arc<MeshState>>,
    conn: u64,
    node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
    stream: &'static str,
) -> Result<Session, Status> {
    let parsed = ProxyNode::from_node(node).map_err(|e| {
        registry.reject(node.map(|n| n.id.as_str()).unwrap_or(""), &e.to_string());
        tracing::warn!(error = %e, "proxy refused");
        Status::invalid_argument(e.to_string())
    })?;
    let current = state.borrow().clone();
    if let Some(index) = &current.index {
        if let Err(e) = parsed.resolve(index) {
            registry.reject(&parsed.id, &e.to_string());
            tracing::warn!(error = %e, "proxy refused");
            return Err(Status::invalid_argument(e.to_string()));
        }
    }
    registry.connect(conn, &parsed, stream);
    tracing::info!(
        node = %parsed.id,
        cluster = %parsed.identity.cluster,
        workload = %parsed.identity.workload,
        role = ?parsed.identity.role,
        stream,
        "proxy connected"
    );
    let mut session = Session {
        conn,
        node: parsed,
        registry: Arc::clone(registry),
        desired: Resources::default(),
        mesh_version: 0,
        built: false,
        cache: build::SidecarCache::default(),
    };
    session.rebuild(&current);
    Ok(session)
}

/// Waits for the next moment a push is due: a mesh or test-hook change, pushed at once after a
/// quiet period, else at the end of the coalescing window.
struct Pacer {
    state: watch::Receiver<Arc<MeshState>>,
    poison: watch::Receiver<u64>,
    coalesce: Duration,
    last_push: Option<Instant>,
    due: Option<Instant>,
}

impl Pacer {
    fn note_change(&mut self) {
        let now = Instant::now();
        let at = match self.last_push {
            Some(last) if now.duration_since(last) < self.coalesce => last + self.coalesce,
            _ => now,
        };
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
    }

    fn pushed(&mut self) {
        self.last_push = Some(Instant::now());
        self.due = None;
    }
}

// ---------------------------------------------------------------------------------------------
// State of the world

#[derive(Default)]
struct SotwType {
    names: BTreeSet<String>,
    wildcard: bool,
    subscribed: bool,
    sent: BTreeMap<String, String>,
    acked: BTreeMap<String, String>,
    nonce: String,
    version_info: String,
}

struct Sotw {
    session: Session,
    types: BTreeMap<TypeUrl, SotwType>,
    nonce: u64,
    out: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

fn version_of(sent: &BTreeMap<String, String>) -> String {
    let mut bytes = Vec::new();
    for (n, v) in sent {
        bytes.extend_from_slice(n.as_bytes());
        bytes.extend_from_slice(v.as_bytes());
    }
    format!("{:016x}", crate::resources::content_hash(&bytes))
}

impl Sotw {
    /// Sends `t` if the proxy lacks anything of it; `force` sends the requested set regardless.
    async fn push(&mut self, t: TypeUrl, force: bool) -> Result<(), ()> {
        let Some(st) = self.types.get_mut(&t) else {
            return Ok(());
        };
        if !st.subscribed || !self.session.built {
            return Ok(());
        }
        let empty = BTreeMap::new();
        let desired = self.session.desired.of(t).unwrap_or(&empty);
        let in_scope = |name: &String| st.wildcard || st.names.contains(name);
        let (to_send, next_sent): (Vec<(String, Any)>, BTreeMap<String, String>) = if t.full_state()
        {
            let all: BTreeMap<String, String> = desired
                .iter()
                .filter(|(n, _)| in_scope(n))
                .map(|(n, r)| (n.clone(), r.version.clone()))
                .collect();
            if !force && all == st.sent {
                if st.sent == st.acked {
                    self.session
                        .registry
                        .settled(self.session.conn, t, &version_of(&st.acked));
                }
                return Ok(());
            }
            let bodies = desired
                .iter()
                .filter(|(n, _)| in_scope(n))
                .map(|(n, r)| (n.clone(), (*r.body).clone()))
                .collect();
            (bodies, all)
        } else {
            let mut next = st.sent.clone();
            next.retain(|n, _| st.names.contains(n));
            let mut bodies = Vec::new();
            for name in &st.names {
                if let Some(r) = desired.get(name) {
                    if force || st.sent.get(name) != Some(&r.version) {
                        bodies.push((name.clone(), (*r.body).clone()));
                        next.insert(name.clone(), r.version.clone());
                    }
                }
            }
            if bodies.is_empty() && !force {
                if st.sent == st.acked {
                    self.session
                        .registry
                        .settled(self.session.conn, t, &version_of(&st.acked));
                }
                return Ok(());
            }
            (bodies, next)
        };
        self.nonce += 1;
        let nonce = format!("{}-{}", self.session.conn, self.nonce);
        let version_info = version_of(&next_sent);
        let count = next_sent.len();
        let response = DiscoveryResponse {
            version_info: version_info.clone(),
            resources: to_send.into_iter().map(|(_, body)| body).collect(),
            type_url: t.as_str().to_owned(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        let sent_count = response.resources.len();
        st.sent = next_sent;
        st.nonce = nonce;
        st.version_info = version_info.clone();
        self.session.registry.sent(
            self.session.conn,
            t,
            &version_info,
            count,
            self.session.mesh_version,
        );
        tracing::debug!(node = %self.session.node.id, r#type = t.short(), resources = sent_count, version = %version_info, "pushed");
        self.out.send(Ok(response)).await.map_err(|_| ())
    }

    async fn push_all(&mut self) -> Result<(), ()> {
        for t in TypeUrl::ORDER {
            self.push(t, false).await?;
        }
        Ok(())
    }

    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), ()> {
        let Some(t) = TypeUrl::parse(&req.type_url) else {
            tracing::debug!(node = %self.session.node.id, type_url = %req.type_url, "unsupported type requested; ignored");
            return Ok(());
        };
        let st = self.types.entry(t).or_default();
        let initial = req.response_nonce.is_empty();
        if !initial {
            if req.response_nonce != st.nonce {
                return Ok(()); // stale: a newer response is in flight
            }
            if let Some(err) = &req.error_detail {
                tracing::warn!(
                    node = %self.session.node.id,
                    cluster = %self.session.node.identity.cluster,
                    r#type = t.short(),
                    version = %st.version_info,
                    error = %err.message,
                    "proxy rejected config (NACK); it keeps its last good config"
                );
                self.session
                    .registry
                    .nacked(self.session.conn, t, &st.version_info, &err.message);
                st.sent = st.acked.clone();
            } else {
                st.acked = st.sent.clone();
                self.session
                    .registry
                    .acked(self.session.conn, t, &req.version_info);
            }
        }
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let wildcard = (names.is_empty() && t.full_state()) || names.contains("*");
        let changed = names != st.names || wildcard != st.wildcard || !st.subscribed;
        st.names = names;
        st.wildcard = wildcard;
        st.subscribed = true;
        if initial {
            // A first request (or a reconnect's): answer with everything requested.
            self.push(t, true).await
        } else if changed {
            self.push(t, false).await
        } else {
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Delta

#[derive(Default)]
struct DeltaType {
    subscribed: BTreeSet<String>,
    wildcard: bool,
    started: bool,
    known: BTreeMap<String, String>,
    nonce: String,
    in_flight: BTreeMap<String, Option<String>>,
}

struct Delta {
    session: Session,
    types: BTreeMap<TypeUrl, DeltaType>,
    nonce: u64,
    out: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl Delta {
    async fn push(&mut self, t: TypeUrl, force: bool) -> Result<(), ()> {
        let Some(st) = self.types.get_mut(&t) else {
            return Ok(());
        };
        if !st.started || !self.session.built {
            return Ok(());
        }
        let empty = BTreeMap::new();
        let desired = self.session.desired.of(t).unwrap_or(&empty);
        let in_scope = |name: &String| st.wildcard || st.subscribed.contains(name);
        let mut resources = Vec::new();
        let mut before: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (name, r) in desired.iter().filter(|(n, _)| in_scope(n)) {
            if st.known.get(name) != Some(&r.version) {
                before.insert(name.clone(), st.known.get(name).cloned());
                resources.push(DeltaResource {
                    name: name.clone(),
                    version: r.version.clone(),
                    resource: Some((*r.body).clone()),
                    ..Default::default()
                });
            }
        }
        let removed: Vec<String> = st
            .known
            .keys()
            .filter(|n| !desired.contains_key(*n))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() && !force {
            if st.in_flight.is_empty() {
                self.session
                    .registry
                    .settled(self.session.conn, t, &version_of(&st.known));
            }
            return Ok(());
        }
        for r in &resources {
            st.known.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            before.insert(n.clone(), st.known.remove(n));
        }
        self.nonce += 1;
        let nonce = format!("{}-{}", self.session.conn, self.nonce);
        st.nonce = nonce.clone();
        st.in_flight = before;
        let version = version_of(&st.known);
        self.session.registry.sent(
            self.session.conn,
            t,
            &version,
            st.known.len(),
            self.session.mesh_version,
        );
        tracing::debug!(node = %self.session.node.id, r#type = t.short(), updated = resources.len(), removed = removed.len(), "pushed (delta)");
        let response = DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: t.as_str().to_owned(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        self.out.send(Ok(response)).await.map_err(|_| ())
    }

    async fn push_all(&mut self) -> Result<(), ()> {
        for t in TypeUrl::ORDER {
            self.push(t, false).await?;
        }
        Ok(())
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), ()> {
        let Some(t) = TypeUrl::parse(&req.type_url) else {
            tracing::debug!(node = %self.session.node.id, type_url = %req.type_url, "unsupported type requested; ignored");
            return Ok(());
        };
        let st = self.types.entry(t).or_default();
        let first = !st.started;
        if !req.response_nonce.is_empty() && req.response_nonce == st.nonce {
            let version = version_of(&st.known);
            if let Some(err) = &req.error_detail {
                tracing::warn!(
                    node = %self.session.node.id,
                    cluster = %self.session.node.identity.cluster,
                    r#type = t.short(),
                    error = %err.message,
                    "proxy rejected config (NACK); it keeps its last good config"
                );
                self.session
                    .registry
                    .nacked(self.session.conn, t, &version, &err.message);
                // The proxy did not take these: forget we sent them.
                for (name, prev) in std::mem::take(&mut st.in_flight) {
                    match prev {
                        Some(v) => st.known.insert(name, v),
                        None => st.known.remove(&name),
                    };
                }
            } else {
                st.in_flight.clear();
                self.session.registry.acked(self.session.conn, t, &version);
            }
        }
        if first {
            st.started = true;
            st.wildcard = req.resource_names_subscribe.is_empty() && t.full_state();
            // After a reconnect the proxy tells us what it already has.
            st.known = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
            } else {
                st.subscribed.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.subscribed.remove(name);
                st.known.remove(name);
            }
        }
        let subscription_changed =
            !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
        if first || subscription_changed {
            self.push(t, first).await
        } else {
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The connection loops

/// Drives one stream: requests, mesh changes and coalescing, until the proxy goes away.
macro_rules! drive {
    ($proto:expr, $inbound:expr, $pacer:expr, $state:expr) => {{
        let proto = &mut $proto;
        let mut inbound = $inbound;
        let pacer = &mut $pacer;
        loop {
            let due = pacer.due;
            tokio::select! {
                req = inbound.next() => match req {
                    Some(Ok(req)) => {
                        if proto.on_request(req).await.is_err() { break; }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(node = %proto.session.node.id, error = %e, "stream error");
                        break;
                    }
                    None => break,
                },
                changed = pacer.state.changed() => {
                    if changed.is_err() { break; }
                    pacer.note_change();
                }
                changed = pacer.poison.changed() => {
                    if changed.is_err() { break; }
                    pacer.note_change();
                }
                () = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    let current = $state.borrow().clone();
                    proto.session.rebuild(&current);
                    pacer.pushed();
                    if proto.push_all().await.is_err() { break; }
                }
            }
        }
        proto.session.registry.disconnect(proto.session.conn);
        tracing::info!(node = %proto.session.node.id, "proxy disconnected");
    }};
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
    /// A connection's session, validated from its first request's node.
    fn session(
        &self,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
        stream: &'static str,
    ) -> Result<Session, Status> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        open_session(&self.registry, &self.state, conn, node, stream)
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
        let mut inbound = request.into_inner();
        let first = first_request(&mut inbound).await?;
        let session = self.session(first.node.as_ref(), "sotw")?;
        let (tx, rx) = mpsc::channel(16);
        let mut pacer = self.pacer();
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut proto = Sotw {
                session,
                types: BTreeMap::new(),
                nonce: 0,
                out: tx,
            };
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
        let mut inbound = request.into_inner();
        let first = first_request(&mut inbound).await?;
        let session = self.session(first.node.as_ref(), "delta")?;
        let (tx, rx) = mpsc::channel(16);
        let mut pacer = self.pacer();
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut proto = Delta {
                session,
                types: BTreeMap::new(),
                nonce: 0,
                out: tx,
            };
            if proto.on_request(first).await.is_ok() {
                drive!(proto, inbound, pacer, state);
            } else {
                proto.session.registry.disconnect(proto.session.conn);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_model::{ClusterId, ClusterObjects, Health, ProxyIdentity, ServiceKey};

    /// The example mesh and its objects.
    fn example() -> (MeshIndex, BTreeMap<ClusterId, ClusterObjects>) {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/three-clusters");
        let dir = causeway_registry::MeshDirectory::open(root);
        let objects: BTreeMap<ClusterId, ClusterObjects> = dir
            .clusters()
            .iter()
            .map(|(n, s)| {
                (
                    ClusterId::new(n).expect("id"),
                    (*s.objects.clone().expect("loaded")).clone(),
                )
            })
            .collect();
        let index = MeshIndex::build(Arc::clone(dir.mesh().expect("mesh")), objects.iter());
        (index, objects)
    }

    fn versions(r: &Resources) -> BTreeMap<(TypeUrl, String), String> {
        r.by_type
            .iter()
            .flat_map(|(t, m)| {
                m.iter()
                    .map(move |(n, res)| ((*t, n.clone()), res.version.clone()))
            })
            .collect()
    }

    #[test]
    fn cached_build_equals_full_build_and_rebuilds_only_what_changed() {
        let (mut index, mut objects) = example();
        let identity = ProxyIdentity {
            cluster: ClusterId::new("alpha").expect("id"),
            namespace: "demo".into(),
            workload: "client".into(),
            role: ProxyRole::Sidecar,
        };
        let node = ProxyNode {
            id: "client".into(),
            identity: identity.clone(),
            app_address: None,
            outbound: crate::node::OutboundBlock::parse("127.200.0.0/16").ok(),
            network: None,
        };
        let ctx = causeway_discovery::ProxyContext::resolve(&index, identity).expect("ctx");
        let mut session = Session {
            conn: 1,
            node: node.clone(),
            registry: Arc::new(ProxyRegistry::new(false)),
            desired: Resources::default(),
            mesh_version: 0,
            built: false,
            cache: build::SidecarCache::default(),
        };
        let cached = session.cache.build(&index, &node, &ctx);
        assert_eq!(
            versions(&cached),
            versions(&build::sidecar_resources(&index, &node, &ctx))
        );
        let greeter_before = Arc::clone(
            &session
                .cache
                .cached(&ServiceKey::new("demo", "greeter"))
                .expect("cached")
                .by_type[&TypeUrl::ClusterLoadAssignment]
                ["outbound|80||greeter.demo.svc.cluster.local"]
                .body,
        );

        // echo-gamma-1 becomes unhealthy: only echo's resources change.
        let gamma = ClusterId::new("gamma").expect("id");
        let o = objects.get_mut(&gamma).expect("gamma");
        if let Some(we) = o
            .workload_entries
            .get_mut(&("demo".to_owned(), "echo-gamma-1".to_owned()))
        {
            we.health = Health::Unhealthy;
        }
        index.set_cluster(&gamma, o).expect("set");
        let cached = session.cache.build(&index, &node, &ctx);
        let full = build::sidecar_resources(&index, &node, &ctx);
        assert_eq!(versions(&cached), versions(&full));
        let greeter_after = &session
            .cache
            .cached(&ServiceKey::new("demo", "greeter"))
            .expect("cached")
            .by_type[&TypeUrl::ClusterLoadAssignment]
            ["outbound|80||greeter.demo.svc.cluster.local"]
            .body;
        assert!(
            Arc::ptr_eq(&greeter_before, greeter_after),
            "greeter was not rebuilt"
        );
    }
}
