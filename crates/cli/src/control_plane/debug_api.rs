//! The JSON debug API: what the control plane knows and what each proxy sees, and why.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use causeway_discovery::view::{self, hidden_services};
use causeway_discovery::{HiddenService, MeshIndex, MeshService, ProxyContext};
use causeway_model::{ClusterId, Locality, NetworkId, ProxyIdentity, ProxyRole, ServiceKey};
use serde::{Deserialize, Serialize};

use causeway_xds::ProxyRegistry;

use super::metrics::Metrics;
use super::state::{ClusterStatus, Snapshot, StateHandle};
use super::view_rows::{port_row, RegistryStates, ServiceViewRow};

#[derive(Clone)]
struct AppState {
    state: StateHandle,
    metrics: Arc<Metrics>,
    proxies: Arc<ProxyRegistry>,
}

/// Builds the router. `POST /debug/test/poison` exists only in builds with the `test-hooks`
/// feature (the end-to-end tests' binary), never in a default or release build.
pub fn router(state: StateHandle, metrics: Arc<Metrics>, proxies: Arc<ProxyRegistry>) -> Router {
    let router = Router::new()
        .route("/debug/proxies", get(proxy_list))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .route("/debug/mesh", get(mesh))
        .route("/debug/clusters", get(clusters))
        .route("/debug/services", get(services))
        .route("/debug/errors", get(errors))
        .route("/debug/imports", get(imports))
        .route("/debug/view", get(proxy_view));
    #[cfg(feature = "test-hooks")]
    let router = router.route(
        "/debug/test/poison",
        axum::routing::post(test_hooks::poison),
    );
    router.with_state(AppState {
        state,
        metrics,
        proxies,
    })
}

/// An API error with its status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn snapshot(app: &AppState) -> Arc<Snapshot> {
    app.state.borrow().clone()
}

fn index_of(snap: &Snapshot) -> Result<Arc<MeshIndex>, ApiError> {
    snap.index.clone().ok_or_else(|| {
        let errs: Vec<String> = snap.errors.iter().map(ToString::to_string).collect();
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("mesh.yaml has not loaded yet: {}", errs.join("; ")),
        )
    })
}

fn parse_cluster(value: &str) -> Result<ClusterId, ApiError> {
    ClusterId::new(value).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("query parameter cluster: {e}"),
        )
    })
}

async fn metrics_text(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
}

async fn mesh(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let snap = snapshot(&app);
    let index = index_of(&snap)?;
    let mesh = index.mesh();
    Ok(Json(serde_json::json!({
        "version": snap.version,
        "name": mesh.mesh.name,
        "trustDomain": mesh.mesh.trust_domain,
        "discovery": mesh.mesh.discovery,
        "clusterLocal": mesh.mesh.cluster_local,
        "networks": mesh.networks(),
        "errors": snap.errors,
        "lastChanges": snap.changes,
    })))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterRow {
    id: ClusterId,
    network: NetworkId,
    locality: Locality,
    gateways: Vec<String>,
    /// Its gateways the control plane's probes find dead, with the reason.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    gateways_down: BTreeMap<String, String>,
    /// `directory` or `kubernetes`.
    source: &'static str,
    synced: bool,
    generation: u64,
    services: usize,
    endpoints: usize,
    errors: Vec<String>,
    /// `syncing`, `synced` or `stale` (Kubernetes members), `loaded`/`never loaded` otherwise.
    state: String,
    /// Kubernetes members: since when the last good state is served without a working
    /// connection, credentials generation, served APIs.
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes: Option<causeway_kube::ClusterSyncStatus>,
}

async fn clusters(State(app): State<AppState>) -> Result<Json<Vec<ClusterRow>>, ApiError> {
    let snap = snapshot(&app);
    let index = index_of(&snap)?;
    let rows = index
        .mesh()
        .clusters
        .iter()
        .map(|spec| {
            let status = snap.clusters.get(spec.id.as_str());
            let indexed = index.cluster(&spec.id);
            ClusterRow {
                id: spec.id.clone(),
                network: spec.network.clone(),
                locality: spec.locality.clone(),
                gateways: spec.gateways.iter().map(ToString::to_string).collect(),
                gateways_down: spec
                    .gateways
                    .iter()
                    .filter_map(|g| Some((g.to_string(), index.gateway_down(g)?.to_owned())))
                    .collect(),
                synced: status.is_some_and(|s| s.synced),
                generation: status.map_or(0, |s| s.generation),
                services: indexed.map_or(0, |c| c.services.len()),
                endpoints: indexed.map_or(0, |c| {
                    c.services
                        .values()
                        .flat_map(|s| s.ports.iter())
                        .map(|p| p.endpoints.len())
                        .sum()
                }),
                errors: status
                    .map(|s| {
                        s.errors
                            .iter()
                            .map(ToString::to_string)
                            .chain(s.kubernetes.iter().flat_map(|k| k.errors.iter().cloned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                source: status.map_or("directory", |s| s.source),
                state: match status {
                    Some(ClusterStatus {
                        kubernetes: Some(k),
                        ..
                    }) => match k.state {
                        causeway_kube::SyncState::Syncing => "syncing".to_owned(),
                        causeway_kube::SyncState::Synced => "synced".to_owned(),
                        causeway_kube::SyncState::Stale => match k.stale_for() {
                            Some(d) => format!("stale for {} s", d.as_secs()),
                            None => "stale".to_owned(),
                        },
                    },
                    Some(s) if s.synced => "loaded".to_owned(),
                    _ => "never loaded".to_owned(),
                },
                kubernetes: status.and_then(|s| s.kubernetes.clone()),
            }
        })
        .collect();
    Ok(Json(rows))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceRow<'a> {
    service: String,
    exported: bool,
    #[serde(flatten)]
    merged: &'a MeshService,
}

async fn services(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let snap = snapshot(&app);
    let index = index_of(&snap)?;
    let rows: Vec<ServiceRow<'_>> = index
        .services()
        .values()
        .map(|s| ServiceRow {
            service: s.key.to_string(),
            exported: s.is_exported(),
            merged: s,
        })
        .collect();
    serde_json::to_value(rows)
        .map(Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn errors(State(app): State<AppState>) -> Json<serde_json::Value> {
    let snap = snapshot(&app);
    Json(serde_json::json!({ "version": snap.version, "errors": snap.errors }))
}

#[derive(Deserialize)]
struct ImportsQuery {
    cluster: String,
}

async fn imports(
    State(app): State<AppState>,
    Query(q): Query<ImportsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let snap = snapshot(&app);
    let index = index_of(&snap)?;
    let cluster = parse_cluster(&q.cluster)?;
    if index.mesh().cluster(&cluster).is_none() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("cluster {cluster} is not declared in mesh.yaml"),
        ));
    }
    serde_json::to_value(index.imports_for(&cluster))
        .map(Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[derive(Deserialize)]
struct ViewQuery {
    cluster: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default)]
    workload: String,
    /// Only this service (`namespace/name`).
    service: Option<String>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ViewResponse {
    version: u64,
    proxy: ProxyContext,
    services: Vec<ServiceViewRow>,
    hidden_services: Vec<HiddenService>,
    /// Clusters in this view whose registry is not current: their last good state is served.
    stale_clusters: Vec<StaleCluster>,
}

/// A cluster whose endpoints in a view come from its last good state.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StaleCluster {
    cluster: String,
    stale_seconds: u64,
    withdrawn: bool,
    errors: Vec<String>,
}

fn stale_clusters(
    snap: &Snapshot,
    services: &[causeway_discovery::ViewService],
) -> Vec<StaleCluster> {
    let seen: std::collections::BTreeSet<&str> = services
        .iter()
        .flat_map(|s| s.clusters.iter().map(|c| c.as_str()))
        .collect();
    snap.clusters
        .iter()
        .filter(|(name, _)| seen.contains(name.as_str()))
        .filter_map(|(name, status)| {
            let k = status.kubernetes.as_ref()?;
            Some(StaleCluster {
                cluster: name.clone(),
                stale_seconds: k.stale_for()?.as_secs(),
                withdrawn: k.withdrawn,
                errors: k.errors.clone(),
            })
        })
        .collect()
}

/// How each stale cluster's registry reads in the view's rows.
fn registry_states(stale: &[StaleCluster]) -> RegistryStates {
    stale
        .iter()
        .filter_map(|s| {
            let state = if s.withdrawn {
                format!("withdrawn (stale for {} s)", s.stale_seconds)
            } else {
                format!("stale for {} s", s.stale_seconds)
            };
            Some((ClusterId::new(&s.cluster).ok()?, state))
        })
        .collect()
}

async fn proxy_view(
    State(app): State<AppState>,
    Query(q): Query<ViewQuery>,
) -> Result<Json<ViewResponse>, ApiError> {
    let snap = snapshot(&app);
    let index = index_of(&snap)?;
    let cluster = parse_cluster(&q.cluster)?;
    let identity = ProxyIdentity {
        cluster,
        namespace: q.namespace,
        workload: q.workload,
        role: ProxyRole::Sidecar,
    };
    let ctx = ProxyContext::resolve(&index, identity)
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))?;
    let span = tracing::debug_span!("debug_view", cluster = %ctx.identity.cluster, workload = %ctx.identity.workload);
    let _guard = span.enter();
    let only = match q.service.as_deref() {
        None => None,
        Some(s) => {
            let (ns, name) = s.split_once('/').ok_or_else(|| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("query parameter service: {s:?} is not namespace/name"),
                )
            })?;
            Some(ServiceKey::new(ns, name))
        }
    };
    let services: Vec<_> = match &only {
        Some(key) => view::view_service(&index, &ctx, key).into_iter().collect(),
        None => view::view(&index, &ctx).services,
    };
    let mut hidden = hidden_services(&index, &ctx);
    if let Some(key) = &only {
        hidden.retain(|h| &h.key == key);
    }
    let stale = stale_clusters(&snap, &services);
    let registry = registry_states(&stale);
    Ok(Json(ViewResponse {
        version: snap.version,
        services: services
            .iter()
            .map(|s| ServiceViewRow {
                service: s.key.to_string(),
                hostname: s.hostname.clone(),
                clusters: s.clusters.clone(),
                ports: s.ports.iter().map(|p| port_row(p, &registry)).collect(),
            })
            .collect(),
        hidden_services: hidden,
        stale_clusters: stale,
        proxy: ctx,
    }))
}

async fn proxy_list(State(app): State<AppState>) -> Json<serde_json::Value> {
    let snap = snapshot(&app);
    let proxies: Vec<serde_json::Value> = app
        .proxies
        .proxies()
        .into_iter()
        .map(|p| {
            let in_sync = p.in_sync() && p.mesh_version == snap.version;
            let mut v = serde_json::to_value(&p).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                obj.insert("inSync".into(), serde_json::Value::Bool(in_sync));
            }
            v
        })
        .collect();
    Json(serde_json::json!({
        "meshVersion": snap.version,
        "proxies": proxies,
        "rejected": app.proxies.rejections(),
    }))
}

/// Test-only endpoints: compiled only with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
mod test_hooks {
    use super::*;

    #[derive(Deserialize)]
    pub(super) struct PoisonQuery {
        cluster: String,
        workload: String,
        #[serde(default = "default_on")]
        on: bool,
    }

    fn default_on() -> bool {
        true
    }

    pub(super) async fn poison(
        State(app): State<AppState>,
        Query(q): Query<PoisonQuery>,
    ) -> Result<Json<serde_json::Value>, ApiError> {
        app.proxies
            .poison(&q.cluster, &q.workload, q.on)
            .map_err(|e| ApiError(StatusCode::FORBIDDEN, e.to_owned()))?;
        Ok(Json(
            serde_json::json!({ "cluster": q.cluster, "workload": q.workload, "poisoned": q.on }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The router over an empty state, with the registry's hooks on: only the build decides.
    fn app() -> Router {
        let (_publish, state) = tokio::sync::watch::channel(Arc::new(Snapshot {
            version: 0,
            index: None,
            errors: Vec::new(),
            clusters: std::collections::BTreeMap::new(),
            changes: Default::default(),
        }));
        router(
            state,
            Arc::new(Metrics::new()),
            Arc::new(ProxyRegistry::new(true)),
        )
    }

    async fn post_poison() -> StatusCode {
        use tower::ServiceExt;
        let request = axum::http::Request::post("/debug/test/poison?cluster=a&workload=w")
            .body(axum::body::Body::empty())
            .expect("request");
        app().oneshot(request).await.expect("infallible").status()
    }

    /// A default (and release) build has no poison route at all: 404, whatever the registry.
    #[cfg(not(feature = "test-hooks"))]
    #[tokio::test]
    async fn the_poison_route_is_absent_without_the_test_hooks_feature() {
        assert_eq!(post_poison().await, StatusCode::NOT_FOUND);
    }

    #[cfg(feature = "test-hooks")]
    #[tokio::test]
    async fn the_poison_route_exists_with_the_test_hooks_feature() {
        assert_eq!(post_poison().await, StatusCode::OK);
    }

    const MESH: &str = "apiVersion: causeway.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: td}\n---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {name: a}\nspec: {network: n, locality: r/z}\n";

    const LEGACY: &str = "apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: demo}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: legacy-1
  namespace: demo
  labels: {kubernetes.io/service-name: legacy}
addressType: IPv4
ports:
- {name: http, port: 8080}
endpoints:
- addresses: [10.0.0.7]
  targetRef: {kind: Pod, name: legacy-pod}
";

    /// An endpoint without a known identity shows in `/debug/view` as hidden, with its pod and
    /// the reason, and `causeway proxy-config endpoints` prints that reason.
    #[test]
    fn endpoint_without_identity_is_shown_hidden_with_the_reason() {
        let scratch = crate::check::tests::Scratch::new("debug-view-identity");
        let mesh = scratch.0.join("mesh");
        std::fs::create_dir_all(mesh.join("clusters/a")).expect("mkdir");
        std::fs::write(mesh.join("mesh.yaml"), MESH).expect("write");
        std::fs::write(mesh.join("clusters/a/legacy.yaml"), LEGACY).expect("write");
        let dir = causeway_registry::MeshDirectory::open(&mesh);
        assert!(dir.errors().is_empty(), "{:?}", dir.errors());
        let index = crate::check::index_of(&dir).expect("index");
        let ctx = ProxyContext::resolve(
            &index,
            ProxyIdentity {
                cluster: ClusterId::new("a").expect("id"),
                namespace: "demo".into(),
                workload: "client".into(),
                role: ProxyRole::Sidecar,
            },
        )
        .expect("context");
        let service = view::view_service(&index, &ctx, &ServiceKey::new("demo", "legacy"))
            .expect("legacy visible");
        let row = serde_json::to_value(port_row(&service.ports[0], &RegistryStates::new()))
            .expect("json");
        let endpoints = row["endpoints"].as_array().cloned().unwrap_or_default();
        assert_eq!(endpoints.len(), 1, "{row}");
        let e = &endpoints[0];
        assert_eq!(e["kind"], "hidden");
        assert_eq!(e["address"], "10.0.0.7");
        assert_eq!(e["workload"], "legacy-pod");
        assert_eq!(e["identity"], serde_json::Value::Null);
        assert_eq!(e["reason"], causeway_discovery::NO_IDENTITY_REASON);

        let view = serde_json::json!({
            "proxy": serde_json::to_value(&ctx).expect("json"),
            "services": [{"service": "demo/legacy", "ports": [row]}],
        });
        let text = crate::proxy_config::render_endpoints(&view);
        assert!(
            text.contains(causeway_discovery::NO_IDENTITY_REASON),
            "{text}"
        );
        assert!(text.contains("hidden"), "{text}");
    }
}
