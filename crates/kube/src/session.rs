//! A *session*: one client's set of watches on one cluster, each feeding a [`KindStore`].
//!
//! A cluster runs one active session; a second one is started to change credentials or to
//! re-list after the API server was unreachable, and replaces the active one only once every
//! one of its watches has completed its initial list (see `cluster.rs`).

use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use causeway_model::{AuthorizationPolicy, ClusterId, Service, TrafficPolicy};
use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;

use tokio::task::{JoinHandle, JoinSet};

use crate::apis::{self, ServedApis};
use crate::store::{Change, KindStore, ObjectKey};
use crate::translate::{
    self, ExportRecord, ImportRecord, NodeRecord, PodRecord, SliceRecord, TranslateError,
};

/// Label on every object Causeway writes into a member cluster.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "causeway";

/// How watches make their initial list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialList {
    /// Paged LIST, then WATCH from its resourceVersion (every Kubernetes version).
    #[default]
    ListWatch,
    /// WATCH with `sendInitialEvents` (streaming lists, Kubernetes 1.32+): less API server memory.
    Streaming,
}

/// Every kind a session watches.
#[derive(Debug, Default)]
pub struct Stores {
    /// Services.
    pub services: KindStore<Service>,
    /// EndpointSlices.
    pub slices: KindStore<SliceRecord>,
    /// Pods.
    pub pods: KindStore<PodRecord>,
    /// Nodes.
    pub nodes: KindStore<NodeRecord>,
    /// ServiceExports.
    pub exports: KindStore<ExportRecord>,
    /// ServiceImports this control plane owns.
    pub imports: KindStore<ImportRecord>,
    /// AuthorizationPolicies.
    pub policies: KindStore<AuthorizationPolicy>,
    /// TrafficPolicies.
    pub traffic_policies: KindStore<TrafficPolicy>,
    /// The About API's cluster id.
    pub cluster_id: KindStore<String>,
}

impl Stores {
    /// Whether every watch has completed its initial list.
    pub fn synced(&self) -> bool {
        self.services.synced()
            && self.slices.synced()
            && self.pods.synced()
            && self.nodes.synced()
            && self.exports.synced()
            && self.imports.synced()
            && self.policies.synced()
            && self.traffic_policies.synced()
            && self.cluster_id.synced()
    }

    /// Every object currently left out because it could not be translated.
    pub fn translate_errors(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        all.extend(self.services.errors().map(ToString::to_string));
        all.extend(self.slices.errors().map(ToString::to_string));
        all.extend(self.pods.errors().map(ToString::to_string));
        all.extend(self.exports.errors().map(ToString::to_string));
        all.extend(self.policies.errors().map(ToString::to_string));
        all.extend(self.traffic_policies.errors().map(ToString::to_string));
        all
    }
}

/// What a session reports to its cluster's runtime.
#[derive(Debug)]
pub enum Signal {
    /// Discovery finished: which optional APIs are watched.
    Started(ServedApis),
    /// Discovery failed (retried).
    StartFailed(String),
    /// A store changed, or completed a list.
    Changed {
        /// The kind whose store changed.
        kind: &'static str,
    },
    /// A watch failed (kube-rs retries it with backoff). `gone` is a 410: the watch re-lists by
    /// itself and nothing is lost.
    WatchError {
        /// The kind.
        kind: &'static str,
        /// What failed.
        error: String,
        /// A 410 Gone / Expired.
        gone: bool,
    },
}

/// A signal, tagged with the session that sent it.
#[derive(Debug)]
pub struct Tagged {
    /// Session id.
    pub session: u64,
    /// The signal.
    pub signal: Signal,
}

/// A running session; dropping it stops its watches.
pub struct Session {
    /// Unique within the process.
    pub id: u64,
    /// Its client.
    pub client: kube::Client,
    /// Its records.
    pub stores: Arc<Mutex<Stores>>,
    /// Optional APIs, once discovered.
    pub served: Option<ServedApis>,
    /// Discovery, then the watches (owned by it in a `JoinSet`, so aborting it stops them all).
    task: JoinHandle<()>,
    /// When it started (a session that never syncs is restarted or given up).
    pub started: tokio::time::Instant,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Locks a mutex, recovering from poisoning (a panicked watch task must not stop the cluster).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Session {
    /// Starts discovery and then every watch of `cluster` with `client`.
    pub fn start(
        id: u64,
        cluster: ClusterId,
        client: kube::Client,
        initial_list: InitialList,
        signals: mpsc::UnboundedSender<Tagged>,
    ) -> Self {
        let stores = Arc::new(Mutex::new(Stores::default()));
        let ctx = WatchContext {
            session: id,
            cluster,
            stores: Arc::clone(&stores),
            signals,
            initial_list,
        };
        let c = client.clone();
        let task = tokio::spawn(async move {
            let served = loop {
                match apis::discover(&ctx.cluster, &c, Duration::from_secs(10)).await {
                    Ok(served) => break served,
                    Err(e) => {
                        ctx.send(Signal::StartFailed(e.to_string()));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            let mut watches = JoinSet::new();
            for watch in core_watches(&ctx, &c)
                .into_iter()
                .chain(optional_watches(&ctx, &c, &served))
            {
                watches.spawn(watch);
            }
            ctx.send(Signal::Started(served));
            while watches.join_next().await.is_some() {}
        });
        Self {
            id,
            client,
            stores,
            served: None,
            task,
            started: tokio::time::Instant::now(),
        }
    }

    /// Whether discovery is done and every watch has listed.
    pub fn synced(&self) -> bool {
        self.served.is_some() && lock(&self.stores).synced()
    }
}

#[derive(Clone)]
struct WatchContext {
    session: u64,
    cluster: ClusterId,
    stores: Arc<Mutex<Stores>>,
    signals: mpsc::UnboundedSender<Tagged>,
    initial_list: InitialList,
}

impl WatchContext {
    fn send(&self, signal: Signal) {
        // The receiver is gone only when the cluster's runtime stopped.
        let _ = self.signals.send(Tagged {
            session: self.session,
            signal,
        });
    }

    fn config(&self) -> watcher::Config {
        let config = watcher::Config::default();
        match self.initial_list {
            InitialList::ListWatch => config,
            InitialList::Streaming => config.streaming_lists(),
        }
    }
}

/// One watch, as a future the session's `JoinSet` runs.
type Watch = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Services, EndpointSlices, Pods and Nodes: every cluster serves them.
fn core_watches(ctx: &WatchContext, client: &kube::Client) -> Vec<Watch> {
    let mut tasks = Vec::new();
    let cfg = ctx.config();
    let cluster = ctx.cluster.clone();
    let c = cluster.clone();
    tasks.push(watch(
        ctx,
        "Service",
        Api::<core::Service>::all(client.clone()),
        cfg.clone(),
        move |o| translate::service(&c, o),
        |s| &mut s.services,
    ));
    let c = cluster.clone();
    tasks.push(watch(
        ctx,
        "EndpointSlice",
        Api::<discovery::EndpointSlice>::all(client.clone()),
        cfg.clone(),
        move |o| translate::endpoint_slice(&c, o),
        |s| &mut s.slices,
    ));
    let c = cluster.clone();
    tasks.push(watch(
        ctx,
        "Pod",
        Api::<core::Pod>::all(client.clone()),
        cfg.clone(),
        move |o| translate::pod(&c, o).map(Some),
        |s| &mut s.pods,
    ));
    tasks.push(watch(
        ctx,
        "Node",
        Api::<core::Node>::all(client.clone()),
        cfg.clone(),
        |o| Ok(Some(translate::node(o))),
        |s| &mut s.nodes,
    ));
    tasks
}

/// The kinds of optional APIs the cluster serves; those it does not serve are empty and synced.
fn optional_watches(ctx: &WatchContext, client: &kube::Client, served: &ServedApis) -> Vec<Watch> {
    let mut tasks = Vec::new();
    let cfg = ctx.config();
    let cluster = ctx.cluster.clone();
    let mut stores = lock(&ctx.stores);
    match (served.service_export(), served.service_import()) {
        (Some(export), Some(import)) => {
            drop(stores);
            let c = cluster.clone();
            tasks.push(watch(
                ctx,
                "ServiceExport",
                Api::<DynamicObject>::all_with(client.clone(), &export),
                cfg.clone(),
                move |o| translate::service_export(&c, o).map(Some),
                |s| &mut s.exports,
            ));
            let owned = cfg
                .clone()
                .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
            tasks.push(watch(
                ctx,
                "ServiceImport",
                Api::<DynamicObject>::all_with(client.clone(), &import),
                owned,
                |o| Ok(Some(translate::service_import(o))),
                |s| &mut s.imports,
            ));
            stores = lock(&ctx.stores);
        }
        _ => {
            stores.exports = KindStore::absent();
            stores.imports = KindStore::absent();
        }
    }
    if !served.authorization_policies {
        stores.policies = KindStore::absent();
    }
    if !served.traffic_policies {
        stores.traffic_policies = KindStore::absent();
    }
    if served.cluster_property().is_none() {
        stores.cluster_id = KindStore::absent();
    }
    drop(stores);
    tasks.extend(causeway_watches(ctx, client, served));
    if let Some(property) = served.cluster_property() {
        let named = cfg.fields(&format!("metadata.name={}", translate::CLUSTER_ID_PROPERTY));
        tasks.push(watch(
            ctx,
            "ClusterProperty",
            Api::<DynamicObject>::all_with(client.clone(), &property),
            named,
            |o| Ok(translate::cluster_property(o)),
            |s| &mut s.cluster_id,
        ));
    }
    tasks
}

/// Causeway's own kinds (AuthorizationPolicy, TrafficPolicy), each when its CRD is served. A
/// CR that fails validation is reported; its store keeps its last good state, if it had one,
/// and every other object.
fn causeway_watches(ctx: &WatchContext, client: &kube::Client, served: &ServedApis) -> Vec<Watch> {
    let mut tasks = Vec::new();
    let cfg = ctx.config();
    let cluster = ctx.cluster.clone();
    if served.authorization_policies {
        let c = cluster.clone();
        tasks.push(watch(
            ctx,
            "AuthorizationPolicy",
            Api::<crate::crd::AuthorizationPolicy>::all(client.clone()),
            cfg.clone(),
            move |o| {
                crate::crd::to_model(o, c.as_str())
                    .map(Some)
                    .map_err(|e| policy_error(&c, "AuthorizationPolicy", &o.metadata, e))
            },
            |s| &mut s.policies,
        ));
    }
    if served.traffic_policies {
        let c = cluster.clone();
        tasks.push(watch(
            ctx,
            "TrafficPolicy",
            Api::<crate::crd::TrafficPolicy>::all(client.clone()),
            cfg.clone(),
            move |o| {
                crate::crd::traffic_policy_to_model(o, c.as_str())
                    .map(Some)
                    .map_err(|e| policy_error(&c, "TrafficPolicy", &o.metadata, e))
            },
            |s| &mut s.traffic_policies,
        ));
    }
    tasks
}

/// A 410 Gone / Expired anywhere (in the stream, on the initial list, on opening a watch): the
/// watcher re-lists by itself and nothing is lost.
fn is_gone(e: &watcher::Error) -> bool {
    let api_gone = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 410);
    match e {
        watcher::Error::WatchError(s) => s.code == 410,
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => api_gone(e),
        _ => false,
    }
}

/// A Causeway custom resource (`kind`) that failed the registry's validation, as the error
/// its store keeps (and reports) while the object is left out.
fn policy_error(
    cluster: &ClusterId,
    kind: &'static str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    e: causeway_registry::LoadError,
) -> TranslateError {
    TranslateError {
        cluster: cluster.clone(),
        kind,
        object: format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or("")
        ),
        field: e.field.clone().unwrap_or_else(|| "spec".to_owned()),
        reason: e.reason.clone(),
    }
}

fn key_of<K: Resource>(obj: &K) -> ObjectKey {
    let meta = obj.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Runs one kind's watcher (with kube-rs's default backoff) into its store.
fn watch<K, R, T, S>(
    ctx: &WatchContext,
    kind: &'static str,
    api: Api<K>,
    config: watcher::Config,
    translate: T,
    store: S,
) -> Watch
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    R: PartialEq + Clone + Send + 'static,
    T: Fn(&K) -> Result<Option<R>, TranslateError> + Send + 'static,
    S: Fn(&mut Stores) -> &mut KindStore<R> + Send + 'static,
{
    let ctx = ctx.clone();
    let span = tracing::info_span!("watch", cluster = %ctx.cluster, kind);
    let task = async move {
        let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        while let Some(item) = events.next().await {
            let change = match item {
                Ok(Event::Init) => Change::Init,
                Ok(Event::InitApply(o)) => Change::InitApply(key_of(&o), translate(&o)),
                Ok(Event::InitDone) => Change::InitDone,
                Ok(Event::Apply(o)) => Change::Apply(key_of(&o), translate(&o)),
                Ok(Event::Delete(o)) => Change::Delete(key_of(&o)),
                Err(e) => {
                    let gone = is_gone(&e);
                    ctx.send(Signal::WatchError {
                        kind,
                        error: e.to_string(),
                        gone,
                    });
                    continue;
                }
            };
            let done = matches!(change, Change::InitDone);
            let changed = store(&mut lock(&ctx.stores)).apply(change);
            if changed || done {
                ctx.send(Signal::Changed { kind });
            }
        }
    };
    Box::pin(tracing::Instrument::instrument(task, span))
}
