//! What both protocol variants share: a connection's session (its node and desired
//! resources), the pacer that coalesces mesh changes, and the loop that drives a stream.

use std::sync::Arc;
use std::time::Duration;

use causeway_model::ProxyRole;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;

use std::collections::{BTreeMap, BTreeSet};

use super::MeshState;
use crate::auth::{self, PeerCert, Refusal};
use crate::build::{self, ClassBuild, ServiceSet, SharedBuilds};
use crate::node::ProxyNode;
use crate::resources::{Resource, Resources, TypeUrl};
use crate::status::ProxyRegistry;

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

/// What a proxy should hold: its own inbound resources, the set its class shares (sidecars:
/// outbound; gateways: everything) and the test hook's poison.
#[derive(Default)]
pub(super) struct Desired {
    pub(super) own: Resources,
    pub(super) shared: Option<Arc<ServiceSet>>,
}

impl Desired {
    /// The resource `name` of type `t`.
    pub(super) fn get(&self, t: TypeUrl, name: &str) -> Option<&Resource> {
        self.own
            .of(t)
            .and_then(|m| m.get(name))
            .or_else(|| self.shared.as_ref()?.resources.of(t)?.get(name))
    }

    /// Every resource of type `t` (own first, then shared; a name is in one of them only).
    pub(super) fn iter(&self, t: TypeUrl) -> impl Iterator<Item = (&String, &Resource)> {
        let own = self.own.of(t).into_iter().flatten();
        let shared = self
            .shared
            .as_ref()
            .and_then(|s| s.resources.of(t))
            .into_iter()
            .flatten();
        own.chain(shared)
    }

    /// Names of type `t` whose resource may differ between `older` and `self`.
    fn changed_from(&self, older: &Desired, t: TypeUrl) -> BTreeSet<String> {
        let mut names = build::diff_names(&older.own, &self.own, t);
        match (&older.shared, &self.shared) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {}
            (Some(a), Some(b)) => names.extend(b.changed_from(a, t)),
            // A set came or went: every name of the one there may differ.
            (a, b) => {
                for set in [a, b].into_iter().flatten() {
                    names.extend(
                        set.resources
                            .of(t)
                            .into_iter()
                            .flat_map(|m| m.keys().cloned()),
                    );
                }
            }
        }
        names
    }
}

/// Per type, the names a push must look at: `None` when every name must be (the first build).
pub(super) type Candidates = Option<BTreeMap<TypeUrl, BTreeSet<String>>>;

/// What the inbound resources were built from: the mesh and the proxy's cluster (the same
/// `Arc`s: nothing to look at), else what the inbound builder reads of them, so an endpoint
/// change elsewhere in the proxy's cluster does not rebuild them.
struct OwnInputs {
    mesh: Arc<causeway_model::MeshConfig>,
    cluster: Option<Arc<causeway_discovery::ClusterIndex>>,
    inbound: Option<build::InboundInputs>,
    ctx: causeway_discovery::ProxyContext,
    poisoned: bool,
}

/// What both protocol variants share: the node, its desired resources and the coalescing clock.
pub(super) struct Session {
    pub(super) conn: u64,
    pub(super) node: ProxyNode,
    pub(super) registry: Arc<ProxyRegistry>,
    pub(super) desired: Desired,
    pub(super) mesh_version: u64,
    pub(super) built: bool,
    pub(super) shared: Arc<SharedBuilds>,
    class: Option<(String, Arc<ClassBuild>)>,
    own_inputs: Option<OwnInputs>,
    /// Held until the proxy first ACKs its endpoints (see [`super::MAX_WARMING`]).
    pub(super) warming: Option<WarmingSlot>,
}

/// A place among the proxies receiving their first full config, given back at the first EDS
/// ACK, when the stream ends, or after [`super::WARMING_TIMEOUT`], whichever comes first.
pub(super) type WarmingSlot = Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>;

impl Session {
    /// The proxy ACKed `t`: its first endpoints accepted, it no longer counts as warming.
    pub(super) fn acked(&mut self, t: TypeUrl) {
        if t == TypeUrl::ClusterLoadAssignment {
            if let Some(slot) = self.warming.take() {
                if let Ok(mut permit) = slot.lock() {
                    permit.take();
                }
            }
        }
    }

    /// The proxy's own resources: a sidecar's inbound side, and the test hook's poison.
    fn own_resources(&self, inputs: &OwnInputs) -> Resources {
        let mut own = match &inputs.inbound {
            Some(inbound) => build::sidecar_inbound_from(inbound, &self.node),
            None => Resources::default(),
        };
        if inputs.poisoned {
            own.insert(
                TypeUrl::Listener,
                "causeway-test-poison",
                poison_listener(),
                &"poison",
            );
        }
        own
    }

    /// Rebuilds the desired resources from `state` and returns the names that may have changed.
    /// The class's set is normally built already (the server builds every live class before it
    /// tells sessions); the proxy's own resources are rebuilt only when what they depend on
    /// changed. When the node no longer resolves (its workload was removed), the last
    /// resources are kept: traffic keeps flowing.
    pub(super) fn rebuild(&mut self, state: &MeshState) -> Candidates {
        let Some(index) = state.index.as_ref() else {
            return Some(BTreeMap::new());
        };
        let ctx = match self.node.resolve(index) {
            Ok(ctx) => ctx,
            Err(e) => {
                tracing::warn!(node = %self.node.id, error = %e, "proxy no longer matches the registry; keeping its last config");
                return Some(BTreeMap::new());
            }
        };
        let span = tracing::debug_span!("build", cluster = %self.node.identity.cluster, workload = %self.node.identity.workload);
        let _guard = span.enter();
        let key = match self.node.identity.role {
            ProxyRole::Sidecar => {
                format!("sidecar|{}", build::sidecar_class(index, &self.node, &ctx))
            }
            ProxyRole::Gateway => format!("gateway|{}", ctx.identity.cluster),
        };
        if self.class.as_ref().is_none_or(|(k, _)| *k != key) {
            let class = match self.node.identity.role {
                ProxyRole::Sidecar => self.shared.sidecar(index, &self.node, &ctx),
                ProxyRole::Gateway => self.shared.gateway(&ctx),
            };
            self.class = Some((key, class));
        }
        let shared = self
            .class
            .as_ref()
            .map(|(_, c)| c.set(index, state.version));
        let poisoned = self.registry.is_poisoned(
            self.node.identity.cluster.as_str(),
            &self.node.identity.workload,
        );
        let cluster = index.cluster(&ctx.identity.cluster).cloned();
        let same_sources = self.own_inputs.as_ref().is_some_and(|o| {
            Arc::ptr_eq(&o.mesh, index.mesh())
                && o.cluster.as_ref().map(Arc::as_ptr) == cluster.as_ref().map(Arc::as_ptr)
                && o.ctx == ctx
                && o.poisoned == poisoned
        });
        let own = if same_sources {
            self.desired.own.clone()
        } else {
            let inbound = match self.node.identity.role {
                ProxyRole::Sidecar => Some(build::InboundInputs::of(index, &ctx)),
                ProxyRole::Gateway => None,
            };
            let inputs = OwnInputs {
                mesh: Arc::clone(index.mesh()),
                cluster,
                inbound,
                ctx,
                poisoned,
            };
            let same_inputs = self.own_inputs.as_ref().is_some_and(|o| {
                o.inbound == inputs.inbound && o.ctx == inputs.ctx && o.poisoned == poisoned
            });
            let own = if same_inputs {
                self.desired.own.clone()
            } else {
                self.own_resources(&inputs)
            };
            self.own_inputs = Some(inputs);
            own
        };
        let next = Desired { own, shared };
        let first = !self.built;
        let candidates = TypeUrl::ORDER
            .into_iter()
            .map(|t| (t, next.changed_from(&self.desired, t)))
            .collect();
        self.desired = next;
        self.mesh_version = state.version;
        self.built = true;
        if first {
            None
        } else {
            Some(candidates)
        }
    }
}

/// Validates the first request's node, checks it against the connection's certificate and the
/// current mesh, and refuses it with the reason otherwise.
pub(super) fn open_session(
    registry: &Arc<ProxyRegistry>,
    shared: &Arc<SharedBuilds>,
    state: &watch::Receiver<Arc<MeshState>>,
    conn: u64,
    node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
    peer: Option<&PeerCert>,
    stream: &'static str,
) -> Result<Session, Status> {
    let refuse = |id: &str, refusal: Refusal| {
        registry.reject(id, refusal.reason, &refusal.message);
        tracing::warn!(node = id, reason = refusal.reason, error = %refusal.message, "proxy refused");
        match refusal.reason {
            "no_certificate" => Status::unauthenticated(refusal.message),
            "bad_node" => Status::invalid_argument(refusal.message),
            _ => Status::permission_denied(refusal.message),
        }
    };
    let parsed = ProxyNode::from_node(node)
        .map_err(|e| refuse(node.map_or("", |n| n.id.as_str()), Refusal::from(e)))?;
    let current = state.borrow().clone();
    if let Err(refusal) = auth::authorize(&parsed, peer, current.index.as_deref()) {
        return Err(refuse(&parsed.id, refusal));
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
        desired: Desired::default(),
        mesh_version: 0,
        built: false,
        shared: Arc::clone(shared),
        class: None,
        own_inputs: None,
        warming: None,
    };
    session.rebuild(&current);
    Ok(session)
}

/// Waits for the next moment a push is due: a mesh or test-hook change, pushed at once after a
/// quiet period, else at the end of the coalescing window.
pub(super) struct Pacer {
    pub(super) state: watch::Receiver<Arc<MeshState>>,
    pub(super) poison: watch::Receiver<u64>,
    pub(super) coalesce: Duration,
    pub(super) last_push: Option<Instant>,
    pub(super) due: Option<Instant>,
}

impl Pacer {
    pub(super) fn note_change(&mut self) {
        let now = Instant::now();
        let at = match self.last_push {
            Some(last) if now.duration_since(last) < self.coalesce => last + self.coalesce,
            _ => now,
        };
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
    }

    pub(super) fn pushed(&mut self) {
        self.last_push = Some(Instant::now());
        self.due = None;
    }
}

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
                        // Tell the client why (an oversized message, say), if it still listens.
                        let _ = proto.out.try_send(Err(e));
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
                    let candidates = proto.session.rebuild(&current);
                    pacer.pushed();
                    if proto.push_all(candidates.as_ref()).await.is_err() { break; }
                    // After the pushes, so a proxy owing ACKs is not shown in sync meanwhile.
                    proto.session.registry.built(proto.session.conn, proto.session.mesh_version);
                }
            }
        }
        proto.session.registry.disconnect(proto.session.conn);
        tracing::info!(node = %proto.session.node.id, "proxy disconnected");
    }};
}
pub(super) use drive;

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
