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

use super::MeshState;
use crate::auth::{self, PeerCert, Refusal};
use crate::build;
use crate::node::ProxyNode;
use crate::resources::{Resources, TypeUrl};
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

/// What both protocol variants share: the node, its desired resources and the coalescing clock.
pub(super) struct Session {
    pub(super) conn: u64,
    pub(super) node: ProxyNode,
    pub(super) registry: Arc<ProxyRegistry>,
    pub(super) desired: Resources,
    pub(super) mesh_version: u64,
    pub(super) built: bool,
    pub(super) cache: build::SidecarCache,
}

impl Session {
    /// Rebuilds the desired resources from `state`. When the node no longer resolves (its
    /// workload was removed), the last resources are kept: traffic keeps flowing.
    pub(super) fn rebuild(&mut self, state: &MeshState) {
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

/// Validates the first request's node, checks it against the connection's certificate and the
/// current mesh, and refuses it with the reason otherwise.
pub(super) fn open_session(
    registry: &Arc<ProxyRegistry>,
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
                    proto.session.rebuild(&current);
                    pacer.pushed();
                    if proto.push_all().await.is_err() { break; }
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
mod tests {
    use super::*;
    use causeway_discovery::MeshIndex;
    use causeway_model::{ClusterId, ClusterObjects, Health, ProxyIdentity, ServiceKey};
    use std::collections::BTreeMap;

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
            data_plane: Default::default(),
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
