//! Shared helpers: servers, kube clients from the generated kubeconfig, raw requests, raw
//! watch streams, and bounded waiting on conditions.

use std::collections::BTreeMap;
use std::time::Duration;

use causeway_kube_fake::{FakeApiServer, ServerOptions};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{json, Value};

/// Upper bound for every wait in the suite.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn init_crypto() {
    // Already installed by another test in this process is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub async fn server() -> FakeApiServer {
    server_with(ServerOptions::default()).await
}

pub async fn server_with(opts: ServerOptions) -> FakeApiServer {
    FakeApiServer::start(opts)
        .await
        .expect("fake API server starts")
}

pub async fn config_for(server: &FakeApiServer, token: &str) -> Config {
    init_crypto();
    let kc = Kubeconfig::from_yaml(&server.kubeconfig("fake", token)).expect("kubeconfig parses");
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig loads")
}

pub async fn client_for(server: &FakeApiServer, token: &str) -> Client {
    Client::try_from(config_for(server, token).await).expect("client builds")
}

/// A client that does not retry 429/503/504 (kube-rs retries those by default).
pub async fn client_without_retry(server: &FakeApiServer) -> Client {
    let mut cfg = config_for(server, &server.admin_token()).await;
    cfg.default_retry = false;
    Client::try_from(cfg).expect("client builds")
}

pub async fn client(server: &FakeApiServer) -> Client {
    client_for(server, &server.admin_token()).await
}

pub fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> Pod {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
    }))
    .expect("pod JSON is a Pod")
}

/// Polls `f` until it holds, failing the test after [`WAIT`].
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a raw request through the kube client (auth and base URL applied); returns the
/// status code and the parsed JSON body.
pub async fn raw(
    client: &Client,
    method: &str,
    path: &str,
    ctype: &str,
    body: Value,
) -> (u16, Value) {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ctype)
        .body(kube::client::Body::from(bytes))
        .unwrap();
    let resp = client.send(req).await.expect("request is answered");
    let code = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body reads")
        .to_bytes();
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).expect("JSON body")
    };
    (code, v)
}

pub async fn get(client: &Client, path: &str) -> (u16, Value) {
    raw(client, "GET", path, "application/json", Value::Null).await
}

/// A raw watch stream, read line by line.
pub struct Lines {
    body: kube::client::Body,
    buf: Vec<u8>,
}

impl Lines {
    /// The next event, or `None` once the server ended the stream. Fails after [`WAIT`].
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(
                    serde_json::from_slice(&line[..pos]).expect("each line is one JSON event"),
                );
            }
            match tokio::time::timeout(WAIT, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Ok(Some(Err(_))) | Ok(None) => {
                    assert!(self.buf.is_empty(), "stream ended inside a line");
                    return None;
                }
                Err(_) => panic!("no watch event within {WAIT:?}"),
            }
        }
    }

    /// The next event that is not a periodic bookmark.
    pub async fn next_non_bookmark(&mut self) -> Option<Value> {
        loop {
            let ev = self.next().await?;
            if ev["type"] != "BOOKMARK" {
                return Some(ev);
            }
        }
    }
}

/// Opens a raw watch; asserts HTTP 200 and chunked transfer.
pub async fn raw_watch(client: &Client, path: &str) -> Lines {
    let req = hyper::Request::get(path)
        .body(kube::client::Body::from(Vec::new()))
        .unwrap();
    let resp = client.send(req).await.expect("watch is answered");
    assert_eq!(resp.status().as_u16(), 200, "watch {path}");
    let te = resp
        .headers()
        .get("transfer-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(te.as_deref(), Some("chunked"), "watch {path} is chunked");
    Lines {
        body: resp.into_body(),
        buf: Vec::new(),
    }
}

/// `metadata.name` of an event's object.
pub fn name_of(ev: &Value) -> &str {
    ev["object"]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
}

/// A reflector over a watcher, running until dropped.
pub struct Reflected<K: kube::Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    pub store: kube::runtime::reflector::Store<K>,
    task: tokio::task::JoinHandle<()>,
}

impl<K: kube::Resource + Clone + 'static> Drop for Reflected<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts kube-rs's watcher (with its default backoff) feeding a reflector store.
pub fn reflect(api: kube::Api<Pod>, cfg: kube::runtime::watcher::Config) -> Reflected<Pod> {
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    let (store, writer) = reflector::store::<Pod>();
    let stream = reflector(writer, watcher(api, cfg)).default_backoff();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    Reflected { store, task }
}

/// Names of the pods a reflector holds.
pub fn names(store: &kube::runtime::reflector::Store<Pod>) -> std::collections::BTreeSet<String> {
    store
        .state()
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// A set of names, for comparisons.
pub fn set(names: &[&str]) -> std::collections::BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}
