//! Prometheus metrics of the control plane's registry and index, served at `/metrics`.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use std::collections::BTreeMap;

use causeway_discovery::MeshIndex;
use causeway_registry::MeshDirectory;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::state::ClusterStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// The control plane's metrics registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    load_errors: Family<ClusterLabels, Gauge>,
    cluster_synced: Family<ClusterLabels, Gauge>,
    cluster_endpoints: Family<ClusterLabels, Gauge>,
    services: Gauge,
    reloads: Family<ResultLabels, Counter>,
    reload_seconds: Histogram,
    cluster_stale_seconds: Family<ClusterLabels, Gauge<f64, AtomicU64>>,
    /// Kubernetes members with series, to remove those of members that left.
    kube_clusters: Mutex<std::collections::BTreeSet<String>>,
    cluster_credentials_rotations: Family<ClusterLabels, Gauge>,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("causeway");
        let load_errors = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "registry_load_errors",
            "Files of a cluster directory (or mesh.yaml, cluster=\"mesh\") that failed to load; the cluster keeps its last good state",
            load_errors.clone(),
        );
        let cluster_synced = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_synced",
            "1 when a cluster's registry has a good state in the index",
            cluster_synced.clone(),
        );
        let cluster_endpoints = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_endpoints",
            "Endpoints (per service port) indexed for a cluster",
            cluster_endpoints.clone(),
        );
        let services = Gauge::default();
        registry.register(
            "index_services",
            "Services merged across clusters",
            services.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "registry_reloads",
            "Mesh directory reloads, by whether errors remained",
            reloads.clone(),
        );
        let reload_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "registry_reload_seconds",
            "Time to reload changed files and update the index",
            reload_seconds.clone(),
        );
        let cluster_stale_seconds = Family::<ClusterLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "cluster_stale_seconds",
            "How long a Kubernetes cluster's API server has been unreachable or its watches failing (0 when current); its last good state is served meanwhile",
            cluster_stale_seconds.clone(),
        );
        let cluster_credentials_rotations = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_credentials_generation",
            "Kubernetes cluster credentials (kubeconfig changes) that took over since start",
            cluster_credentials_rotations.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            cluster_stale_seconds,
            kube_clusters: Mutex::default(),
            cluster_credentials_rotations,
            load_errors,
            cluster_synced,
            cluster_endpoints,
            services,
            reloads,
            reload_seconds,
        }
    }

    /// Records the state after a (re)load.
    pub fn observe(&self, dir: &MeshDirectory, index: Option<&MeshIndex>, elapsed: Duration) {
        let errors = dir.errors();
        self.reloads
            .get_or_create(&ResultLabels {
                result: if errors.is_empty() { "ok" } else { "errors" }.into(),
            })
            .inc();
        self.reload_seconds.observe(elapsed.as_secs_f64());
        let mesh_errors = errors
            .iter()
            .filter(|e| e.file.as_os_str() == "mesh.yaml")
            .count();
        self.load_errors
            .get_or_create(&ClusterLabels {
                cluster: "mesh".into(),
            })
            .set(mesh_errors as i64);
        for (name, slot) in dir.clusters() {
            let labels = ClusterLabels {
                cluster: name.clone(),
            };
            self.load_errors
                .get_or_create(&labels)
                .set(slot.errors.len() as i64);
            self.cluster_synced
                .get_or_create(&labels)
                .set(i64::from(slot.objects.is_some()));
        }
        if let Some(index) = index {
            self.services.set(index.services().len() as i64);
            for (id, cluster) in index.clusters() {
                let count: usize = cluster
                    .services
                    .values()
                    .flat_map(|s| s.ports.iter())
                    .map(|p| p.endpoints.len())
                    .sum();
                self.cluster_endpoints
                    .get_or_create(&ClusterLabels {
                        cluster: id.to_string(),
                    })
                    .set(count as i64);
            }
        }
    }

    /// Records the Kubernetes members' registry state.
    pub fn observe_kubernetes(&self, clusters: &BTreeMap<String, ClusterStatus>) {
        // Series of members that left the mesh go away with them.
        let now: std::collections::BTreeSet<String> = clusters
            .iter()
            .filter(|(_, s)| s.kubernetes.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        let mut known = self
            .kube_clusters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for gone in known.difference(&now) {
            let labels = ClusterLabels {
                cluster: gone.clone(),
            };
            self.cluster_synced.remove(&labels);
            self.cluster_stale_seconds.remove(&labels);
            self.cluster_credentials_rotations.remove(&labels);
            self.cluster_endpoints.remove(&labels);
        }
        *known = now;
        drop(known);
        for (name, status) in clusters {
            let Some(kube) = &status.kubernetes else {
                continue;
            };
            let labels = ClusterLabels {
                cluster: name.clone(),
            };
            self.cluster_synced
                .get_or_create(&labels)
                .set(i64::from(status.synced));
            self.cluster_stale_seconds
                .get_or_create(&labels)
                .set(kube.stale_for().map_or(0.0, |d| d.as_secs_f64()));
            self.cluster_credentials_rotations
                .get_or_create(&labels)
                .set(i64::try_from(kube.credentials_generation).unwrap_or(i64::MAX));
        }
    }

    /// Lets another component register its metrics in the same registry.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        let mut registry = match self.registry.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut registry);
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = match self.registry.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
