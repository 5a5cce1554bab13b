//! A `KubeRegistry` watching fake API servers, the updates it sends, and manifests to load.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use causeway_kube::{ClusterUpdate, KubeOptions, KubeRegistry, KubeconfigClientFactory, SyncState};
use causeway_kube_fake::{FakeApiServer, ServerOptions};
use causeway_model::{
    ClusterId, ClusterObjects, ClusterSpec, DiscoveryMode, KubernetesSource, MeshConfig, MeshSpec,
    NetworkId, ObjectSource,
};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

/// How long any one expected event may take. Generous for a loaded 2-core machine; a passing
/// run takes a fraction of it.
pub const PATIENCE: Duration = Duration::from_secs(8);

pub fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).expect("cluster id")
}

/// Options for fast tests: poll every 100 ms, probes time out after 500 ms.
pub fn fast() -> KubeOptions {
    KubeOptions {
        poll_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_millis(500),
        ..KubeOptions::default()
    }
}

pub async fn fake(opts: ServerOptions) -> FakeApiServer {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    FakeApiServer::start(opts)
        .await
        .expect("fake API server starts")
}

/// One registry, the mesh it is reconciled with, and every update it has sent so far.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub registry: KubeRegistry,
    pub rx: UnboundedReceiver<ClusterUpdate>,
    /// Every update received, in order.
    pub seen: Vec<ClusterUpdate>,
    pub mesh: MeshConfig,
}

impl Harness {
    pub fn new(options: KubeOptions) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let (registry, rx) = KubeRegistry::new(
            dir.path().to_path_buf(),
            Arc::new(KubeconfigClientFactory::default()),
            options,
        );
        Self {
            dir,
            registry,
            rx,
            seen: Vec::new(),
            mesh: MeshConfig {
                mesh: MeshSpec {
                    name: "test".into(),
                    trust_domain: "td.local".into(),
                    discovery: DiscoveryMode::Exported,
                    cluster_local: Vec::new(),
                    networks: None,
                    source: ObjectSource::default(),
                },
                clusters: Vec::new(),
                traffic_policies: Vec::new(),
            },
        }
    }

    /// The kubeconfig file of `cluster` (relative paths in mesh.yaml are under the mesh dir).
    pub fn kubeconfig_path(&self, cluster: &str) -> PathBuf {
        self.dir.path().join(format!("{cluster}.kubeconfig"))
    }

    /// Writes `cluster`'s kubeconfig for `server` with `token` (atomically, as a secret
    /// mount or `kubectl config` would replace it).
    pub fn write_kubeconfig(&self, cluster: &str, server: &FakeApiServer, token: &str) {
        let path = self.kubeconfig_path(cluster);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, server.kubeconfig(cluster, token)).expect("write kubeconfig");
        std::fs::rename(&tmp, &path).expect("replace kubeconfig");
    }

    /// Adds a Kubernetes member `id` on `server` to the mesh (not yet reconciled).
    pub fn add_cluster(
        &mut self,
        id: &str,
        server: &FakeApiServer,
        token: &str,
    ) -> &mut ClusterSpec {
        self.write_kubeconfig(id, server, token);
        let mut spec = ClusterSpec::new(
            cid(id),
            NetworkId::new(format!("net-{id}")).expect("network"),
            "us-east/us-east-1a".parse().expect("locality"),
            Vec::new(),
            ObjectSource::default(),
        );
        spec.kubernetes = Some(KubernetesSource {
            kubeconfig: format!("{id}.kubeconfig").into(),
            context: None,
        });
        self.mesh.clusters.push(spec);
        self.mesh.clusters.last_mut().expect("just pushed")
    }

    pub fn reconcile(&mut self) {
        self.registry.reconcile(&self.mesh);
    }

    /// Waits for the next update satisfying `pred`, recording every update on the way.
    pub async fn wait_for(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&ClusterUpdate) -> bool,
    ) -> ClusterUpdate {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let update = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(u)) => u,
                Ok(None) => panic!("update channel closed while waiting for {what}"),
                Err(_) => panic!(
                    "no update with {what} within {PATIENCE:?}; last update: {}",
                    self.seen.last().map_or("none".to_owned(), describe)
                ),
            };
            self.seen.push(update.clone());
            if pred(&update) {
                return update;
            }
        }
    }

    /// `cluster`'s objects once it is synced: its latest update if that is synced already,
    /// else the next synced update with objects.
    pub async fn synced(&mut self, cluster: &str) -> Arc<ClusterObjects> {
        let id = cid(cluster);
        let latest = self.seen.iter().rev().find(|u| u.cluster == id);
        if let Some(u) = latest.filter(|u| u.status.state == SyncState::Synced) {
            if let Some(objects) = &u.objects {
                return Arc::clone(objects);
            }
        }
        let u = self
            .wait_for(&format!("{cluster} synced"), |u| {
                u.cluster == id && u.status.state == SyncState::Synced && u.objects.is_some()
            })
            .await;
        u.objects.expect("objects")
    }

    /// Updates of `cluster` received so far, from the `from`-th recorded one on.
    pub fn seen_of(&self, cluster: &str, from: usize) -> Vec<&ClusterUpdate> {
        let id = cid(cluster);
        self.seen[from..]
            .iter()
            .filter(|u| u.cluster == id)
            .collect()
    }
}

/// One line about an update, for failure messages.
pub fn describe(u: &ClusterUpdate) -> String {
    let objects = u.objects.as_ref().map_or("no objects".to_owned(), |o| {
        format!(
            "{} services, {} slices ({} endpoints), {} workloads",
            o.services.len(),
            o.endpoint_slices.len(),
            o.endpoint_slices
                .values()
                .map(|s| s.endpoints.len())
                .sum::<usize>(),
            o.workload_entries.len()
        )
    });
    format!(
        "{}: {:?}, {objects}, stale_since {:?}, withdrawn {}, generation {}, rotation pending {}, errors {:?}",
        u.cluster,
        u.status.state,
        u.status.stale_since,
        u.status.withdrawn,
        u.status.credentials_generation,
        u.status.rotation_pending,
        u.status.errors
    )
}

/// Polls `cond` (a fake's state) until it holds, for at most [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The number of endpoints of slice `ns/name`, if present.
pub fn slice_endpoints(objects: &ClusterObjects, ns: &str, name: &str) -> Option<usize> {
    objects
        .endpoint_slices
        .get(&(ns.to_owned(), name.to_owned()))
        .map(|s| s.endpoints.len())
}

pub fn service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

/// The EndpointSlice the controller would make for `service` with these pod IPs
/// (pods `<service>-<i>` on node `node-1`).
pub fn slice(ns: &str, service: &str, name: &str, ips: &[String]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "node-1", "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("{service}-{i}")}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints})
}

pub fn pod(ns: &str, name: &str, ip: &str, service_account: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name.rsplit_once('-').map_or(name, |(a, _)| a)}},
        "spec": {"nodeName": "node-1", "serviceAccountName": service_account,
            "containers": [{"name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})
}

pub fn node(name: &str, region: &str, zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
        "topology.kubernetes.io/region": region, "topology.kubernetes.io/zone": zone}}})
}

pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// Loads `n` services `svc-<i>` in namespace `shop`, each with one slice of two endpoints and
/// their two pods (service account `sa-<i>`), and the node they run on.
pub fn load_shop(server: &FakeApiServer, n: usize) {
    let mut objs = vec![namespace("shop"), node("node-1", "us-west", "us-west-2a")];
    for i in 0..n {
        let svc = format!("svc-{i}");
        let ips = [format!("10.1.{i}.1"), format!("10.1.{i}.2")];
        objs.push(service("shop", &svc));
        objs.push(slice("shop", &svc, &format!("{svc}-abcde"), &ips));
        for (j, ip) in ips.iter().enumerate() {
            objs.push(pod("shop", &format!("{svc}-{j}"), ip, &format!("sa-{i}")));
        }
    }
    server.load_json(objs).expect("objects load");
}
