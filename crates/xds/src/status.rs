//! What every connected proxy was sent and acknowledged: the data behind
//! `causeway proxy-status` and the xDS metrics.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::node::ProxyNode;
use crate::resources::TypeUrl;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A rejected configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    /// The version the proxy refused.
    pub version: String,
    /// Envoy's error message.
    pub message: String,
    /// The resources the refused response updated (delta: exactly that response's; SotW: those
    /// the proxy had not acknowledged yet).
    pub resources: Vec<String>,
    /// When (Unix seconds).
    pub at: u64,
}

/// Per resource type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    /// Version last sent.
    pub sent_version: String,
    /// Version last acknowledged.
    pub acked_version: String,
    /// Resources the proxy holds.
    pub resources: usize,
    /// Responses sent.
    pub pushes: u64,
    /// The last NACK, kept until a later version is acknowledged (delta: until every resource
    /// it refused is acknowledged at a later version or no longer wanted).
    pub last_nack: Option<Nack>,
}

/// One connected proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// Envoy node id.
    pub id: String,
    /// Cluster.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Workload (or gateway) name.
    pub workload: String,
    /// `sidecar` or `gateway`.
    pub role: String,
    /// `sotw` or `delta`.
    pub stream: &'static str,
    /// Connected since (Unix seconds).
    pub connected_at: u64,
    /// Mesh state version its last push was computed from.
    pub mesh_version: u64,
    /// Per type (`cds`, `eds`, `lds`).
    pub types: BTreeMap<&'static str, TypeStatus>,
}

impl ProxyStatus {
    /// In sync: every type's last sent version is acknowledged.
    pub fn in_sync(&self) -> bool {
        self.types
            .values()
            .all(|t| t.sent_version == t.acked_version)
    }
}

/// A node the server refused, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// Node id, when given (the peer's address when the TLS handshake failed).
    pub node: String,
    /// Why, as a short label (the `reason` of `causeway_xds_rejected_nodes_total`).
    pub reason: String,
    /// What happened, for operators.
    pub message: String,
    /// When (Unix seconds).
    pub at: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

/// xDS metrics.
#[derive(Default)]
struct Metrics {
    pushes: Family<TypeLabels, Counter>,
    nacks: Family<TypeLabels, Counter>,
    connected: Family<ClusterLabels, Gauge>,
    rejected: Family<ReasonLabels, Counter>,
}

/// Shared registry of connections and test hooks.
pub struct ProxyRegistry {
    proxies: Mutex<BTreeMap<u64, ProxyStatus>>,
    rejections: Mutex<VecDeque<Rejection>>,
    poisoned: Mutex<BTreeSet<(String, String)>>,
    poison_tx: watch::Sender<u64>,
    test_hooks: bool,
    metrics: Metrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl ProxyRegistry {
    /// A registry; `test_hooks` enables [`Self::poison`].
    pub fn new(test_hooks: bool) -> Self {
        let (poison_tx, _) = watch::channel(0);
        let registry = Self {
            proxies: Mutex::new(BTreeMap::new()),
            rejections: Mutex::new(VecDeque::new()),
            poisoned: Mutex::new(BTreeSet::new()),
            poison_tx,
            test_hooks,
            metrics: Metrics::default(),
        };
        for reason in crate::auth::REFUSAL_REASONS.iter().chain(&["tls"]) {
            let _ = registry.metrics.rejected.get_or_create(&ReasonLabels {
                reason: (*reason).to_owned(),
            });
        }
        registry
    }

    /// Registers the xDS metrics.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "xds_pushes",
            "xDS responses sent, by type",
            self.metrics.pushes.clone(),
        );
        registry.register(
            "xds_nacks",
            "Configurations proxies rejected, by type",
            self.metrics.nacks.clone(),
        );
        registry.register(
            "xds_connected_proxies",
            "Proxies connected over ADS, by cluster",
            self.metrics.connected.clone(),
        );
        registry.register(
            "xds_rejected_nodes",
            "xDS clients refused, by reason (no or failed mTLS, a node whose claims are not its certificate's, an unknown or not yet loaded cluster, bad metadata)",
            self.metrics.rejected.clone(),
        );
    }

    pub(crate) fn connect(&self, conn: u64, node: &ProxyNode, stream: &'static str) {
        let status = ProxyStatus {
            id: node.id.clone(),
            cluster: node.identity.cluster.to_string(),
            namespace: node.identity.namespace.clone(),
            workload: node.identity.workload.clone(),
            role: format!("{:?}", node.identity.role).to_lowercase(),
            stream,
            connected_at: now_unix(),
            mesh_version: 0,
            types: BTreeMap::new(),
        };
        self.metrics
            .connected
            .get_or_create(&ClusterLabels {
                cluster: status.cluster.clone(),
            })
            .inc();
        lock(&self.proxies).insert(conn, status);
    }

    pub(crate) fn disconnect(&self, conn: u64) {
        if let Some(s) = lock(&self.proxies).remove(&conn) {
            self.metrics
                .connected
                .get_or_create(&ClusterLabels { cluster: s.cluster })
                .dec();
        }
    }

    pub(crate) fn reject(&self, node: &str, reason: &str, message: &str) {
        self.metrics
            .rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        let mut r = lock(&self.rejections);
        r.push_back(Rejection {
            node: node.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            at: now_unix(),
        });
        while r.len() > 50 {
            r.pop_front();
        }
    }

    fn update(&self, conn: u64, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(s) = lock(&self.proxies).get_mut(&conn) {
            f(s);
        }
    }

    pub(crate) fn sent(
        &self,
        conn: u64,
        t: TypeUrl,
        version: &str,
        resources: usize,
        mesh_version: u64,
    ) {
        self.metrics
            .pushes
            .get_or_create(&TypeLabels {
                r#type: t.short().into(),
            })
            .inc();
        self.update(conn, |s| {
            s.mesh_version = mesh_version;
            let ts = s.types.entry(t.short()).or_default();
            ts.sent_version = version.to_owned();
            ts.resources = resources;
            ts.pushes += 1;
        });
    }

    /// The proxy's resources were rebuilt for `mesh_version` and whatever changed was sent: it
    /// holds that version once every type is ACKed, even if the change did not touch it.
    pub(crate) fn built(&self, conn: u64, mesh_version: u64) {
        self.update(conn, |s| s.mesh_version = mesh_version);
    }

    pub(crate) fn acked(&self, conn: u64, t: TypeUrl, version: &str) {
        self.update(conn, |s| {
            let ts = s.types.entry(t.short()).or_default();
            ts.acked_version = version.to_owned();
            if ts.last_nack.as_ref().is_some_and(|n| n.version != version) {
                ts.last_nack = None;
            }
        });
    }

    /// A delta ACK: `version` is what the proxy now confirms holding; the last NACK stands
    /// while resources it refused are `outstanding`.
    pub(crate) fn delta_acked(&self, conn: u64, t: TypeUrl, version: &str, outstanding: bool) {
        self.update(conn, |s| {
            let ts = s.types.entry(t.short()).or_default();
            ts.acked_version = version.to_owned();
            if !outstanding {
                ts.last_nack = None;
            }
        });
    }

    /// The proxy runs exactly what it should: nothing in flight, no rejection outstanding.
    pub(crate) fn settled(&self, conn: u64, t: TypeUrl, version: &str) {
        self.update(conn, |s| {
            let ts = s.types.entry(t.short()).or_default();
            if ts.sent_version != version || ts.acked_version != version || ts.last_nack.is_some() {
                ts.sent_version = version.to_owned();
                ts.acked_version = version.to_owned();
                ts.last_nack = None;
            }
        });
    }

    pub(crate) fn nacked(
        &self,
        conn: u64,
        t: TypeUrl,
        version: &str,
        message: &str,
        resources: Vec<String>,
    ) {
        self.metrics
            .nacks
            .get_or_create(&TypeLabels {
                r#type: t.short().into(),
            })
            .inc();
        self.update(conn, |s| {
            s.types.entry(t.short()).or_default().last_nack = Some(Nack {
                version: version.to_owned(),
                message: message.to_owned(),
                resources,
                at: now_unix(),
            });
        });
    }

    /// Every connected proxy.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        lock(&self.proxies).values().cloned().collect()
    }

    /// Recently refused nodes.
    pub fn rejections(&self) -> Vec<Rejection> {
        lock(&self.rejections).iter().cloned().collect()
    }

    /// Test-only hook: the next pushes to `cluster/workload` carry a listener Envoy rejects,
    /// to exercise NACK handling. Refused unless the server runs with test hooks.
    pub fn poison(&self, cluster: &str, workload: &str, on: bool) -> Result<(), &'static str> {
        if !self.test_hooks {
            return Err(
                "test hooks are disabled (start the control plane with --enable-test-hooks)",
            );
        }
        let mut p = lock(&self.poisoned);
        let key = (cluster.to_owned(), workload.to_owned());
        if on {
            p.insert(key);
        } else {
            p.remove(&key);
        }
        drop(p);
        self.poison_tx.send_modify(|v| *v += 1);
        Ok(())
    }

    pub(crate) fn is_poisoned(&self, cluster: &str, workload: &str) -> bool {
        self.test_hooks && lock(&self.poisoned).contains(&(cluster.to_owned(), workload.to_owned()))
    }

    pub(crate) fn poison_changes(&self) -> watch::Receiver<u64> {
        self.poison_tx.subscribe()
    }
}
