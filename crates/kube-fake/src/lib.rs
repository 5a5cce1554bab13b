//! A fake Kubernetes API server for tests and benchmarks (dev-only; never shipped).
//!
//! [`FakeApiServer`] speaks the real Kubernetes REST API over HTTPS (or HTTP) on 127.0.0.1
//! with an in-memory store, faithful where kube-rs's `Client`, `Api` and `watcher` depend on
//! it: discovery, lists with `resourceVersion` and `limit`/`continue`, chunked watches with
//! bookmarks, `sendInitialEvents`, selector transitions and 410 after compaction, writes with
//! optimistic concurrency, merge patch, simplified server-side apply, the status subresource,
//! bearer-token auth with RBAC-like rules, TokenReview and SelfSubjectAccessReview. Tests
//! drive it directly too: direct store writes (same events as API writes), fault injection,
//! stop and start on the same port.
//!
//! ```no_run
//! # async fn demo() -> Result<(), causeway_kube_fake::FakeError> {
//! use causeway_kube_fake::{FakeApiServer, ServerOptions};
//! let server = FakeApiServer::start(ServerOptions::default()).await?;
//! let kubeconfig = server.kubeconfig("member-1", &server.admin_token());
//! # let _ = kubeconfig; Ok(()) }
//! ```
//!
//! Clients need a process-wide rustls provider:
//! `rustls::crypto::aws_lc_rs::default_provider().install_default()` (ignore the error if
//! one is installed already).
//!
//! # Faithful
//! - One global, monotonically increasing `resourceVersion` (a string in JSON); uid,
//!   `creationTimestamp`, `generation` (bumped on spec changes) set by the server; no-op
//!   updates write nothing and emit no event.
//! - Built-in objects are normalised through their k8s-openapi types; their list items omit
//!   `apiVersion`/`kind` (custom resources keep them), watch objects always carry them;
//!   every error is a `Status` object.
//! - Lists: `limit`/`continue` over one snapshot (opaque base64 token, 410 once compacted),
//!   `resourceVersion`/`resourceVersionMatch` (unset, `0`, `NotOlderThan`, `Exact`),
//!   `remainingItemCount`, label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`,
//!   `<`, `>`) and field selectors on any dotted path.
//! - Watches: chunked JSON lines; replay from a version; in-stream `ERROR` 410 for compacted
//!   versions; BOOKMARK with `apiVersion`/`kind`; `sendInitialEvents` with the
//!   `k8s.io/initial-events-end` bookmark (validated as the real server does); selector
//!   transitions as ADDED/DELETED; `timeoutSeconds` and a server-side cap; metadata-only
//!   (`PartialObjectMetadata`) lists and watches; a watch without a version starts with the
//!   current state.
//! - Writes: 409 AlreadyExists / Conflict, 404, 422 for missing names, `generateName`,
//!   merge, JSON and (as merge) strategic patches, `dryRun=All`, delete preconditions,
//!   deletecollection, status subresource isolation, Service cluster-IP allocation.
//! - Discovery, legacy and aggregated (`apidiscovery.k8s.io/v2`); versions of one resource
//!   share storage, as a CRD's do; CRDs created through the API serve their resource.
//! - Auth: bearer tokens, 401 once revoked (open watches stay open), RBAC-worded 403s,
//!   SelfSubjectAccessReview, TokenReview, TokenRequest (`serviceaccounts/{name}/token`).
//!
//! # Simplified
//! - Server-side apply merges the applied object into the live one (RFC 7386) and records the
//!   manager; it does not remove fields a manager stopped applying, and never reports
//!   conflicts (`force` is accepted and changes nothing). `fieldsV1` treats lists as leaves.
//! - Deletion is immediate (no graceful deletion, finalizers or garbage collection), except
//!   that deleting a namespace deletes its objects and deleting a CRD its resource.
//! - No schema validation of custom resources; no admission; no protobuf; no tables.
//! - Creating in a namespace does not require the namespace to exist.
//! - TokenReview without requested audiences authenticates against the token's own
//!   audiences (the real server uses its API audiences).
//! - Permissions are not namespaced; service-account tokens have no permissions as bearers.
//! - Direct store writes (test controls) keep a given `status` and `creationTimestamp`.

mod auth;
mod direct;
mod error;
mod faults;
mod http;
mod ids;
mod kubeconfig;
mod options;
mod resources;
mod selector;
mod server;
mod store;
mod tls;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

pub use auth::{Permissions, Rule};
pub use error::{ApiError, FakeError};
pub use faults::Fault;
pub use options::{McsVersion, ServerOptions};
pub use resources::ResourceSpec;
pub use server::RequestKey;

use server::{lock, Inner, Running};

/// A running fake API server. Cheap to clone: every clone drives the same server, which
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<Inner>,
    running: Mutex<Option<Running>>,
    admin_token: String,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(r) = lock(&self.running).take() {
            r.signal();
        }
    }
}

fn random_token(prefix: &str) -> String {
    let hex: String = ids::random_bytes(16)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{prefix}-{hex}")
}

impl FakeApiServer {
    /// Starts a server on 127.0.0.1 (a free port unless `opts.port` is set), with an admin
    /// token that may do everything.
    pub async fn start(opts: ServerOptions) -> Result<Self, FakeError> {
        let tls = if opts.tls {
            Some(tls::generate()?)
        } else {
            None
        };
        let wanted = SocketAddr::from((Ipv4Addr::LOCALHOST, opts.port));
        let listener = server::bind(wanted)?;
        let addr = listener.local_addr().map_err(|source| FakeError::Bind {
            addr: wanted,
            source,
        })?;
        let seed = opts.seed_namespaces;
        let inner = Arc::new(Inner::new(opts, addr, tls));
        let admin_token = random_token("admin");
        lock(&inner.auth).add(&admin_token, "kubernetes-admin", Permissions::All);
        let srv = Self {
            shared: Arc::new(Shared {
                inner: inner.clone(),
                running: Mutex::new(None),
                admin_token,
            }),
        };
        if seed {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                srv.create_json(serde_json::json!({
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
                }))?;
            }
        }
        *lock(&srv.shared.running) = Some(server::spawn(inner, listener));
        Ok(srv)
    }

    fn inner(&self) -> &Inner {
        &self.shared.inner
    }

    /// Base URL, e.g. `https://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        let scheme = if self.inner().tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.inner().addr)
    }

    /// The listening address (stable across `stop`/`start_again`).
    pub fn addr(&self) -> SocketAddr {
        self.inner().addr
    }

    /// PEM of the CA that signed the serving certificate (`None` for plain HTTP).
    pub fn ca_pem(&self) -> Option<String> {
        self.inner().tls.as_ref().map(|t| t.ca_pem.clone())
    }

    /// A token with all permissions, created at start.
    pub fn admin_token(&self) -> String {
        self.shared.admin_token.clone()
    }

    /// Registers a client token for user `test-user` with the given permissions.
    pub fn add_token(&self, token: &str, perms: Permissions) {
        self.add_token_for_user(token, "test-user", perms);
    }

    /// Registers a client token for a named user (the name appears in 403 messages).
    pub fn add_token_for_user(&self, token: &str, user: &str, perms: Permissions) {
        lock(&self.inner().auth).add(token, user, perms);
    }

    /// Revokes a token: later requests with it get 401 and TokenReview says unauthenticated.
    /// Watches already open stay open, as on the real server (see [`Self::drop_watches`]).
    pub fn revoke_token(&self, token: &str) {
        lock(&self.inner().auth).revoke(token);
    }

    /// Issues a service-account token (JWT-shaped) bound to a pod, for TokenReview. The pod
    /// uid is the stored pod's if that pod exists, else a fresh one. As a bearer token it
    /// authenticates as `system:serviceaccount:<ns>:<sa>` with no permissions.
    pub fn issue_service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
        audiences: &[&str],
    ) -> String {
        let pod_uid = self
            .get_json("v1", "Pod", Some(namespace), pod)
            .and_then(|p| {
                p.pointer("/metadata/uid")
                    .and_then(|u| u.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(ids::uuid);
        let issuer = "https://kubernetes.default.svc.cluster.local";
        lock(&self.inner().auth).issue_service_account_token(
            namespace,
            service_account,
            pod,
            &pod_uid,
            audiences,
            issuer,
        )
    }

    /// YAML kubeconfig whose cluster, user and context are all named `context`.
    pub fn kubeconfig(&self, context: &str, token: &str) -> String {
        kubeconfig::render(&self.url(), context, token, self.ca_pem().as_deref())
    }

    /// Switches fault injection (see [`Fault`]).
    pub fn set_fault(&self, fault: Fault) {
        self.inner().faults.set(fault);
    }

    /// The fault currently injected.
    pub fn fault(&self) -> Fault {
        self.inner().faults.current()
    }

    /// Ends every open watch stream now (cleanly, as a server-side timeout would).
    pub fn drop_watches(&self) {
        self.inner().faults.drop_watches();
    }

    /// Number of watch streams currently open.
    pub fn open_watches(&self) -> usize {
        lock(&self.inner().store).open_watches()
    }

    /// Requests received so far, per verb, group and resource (counted before auth and
    /// faults, so refused requests count too).
    pub fn requests(&self) -> BTreeMap<RequestKey, u64> {
        self.inner().requests()
    }

    /// Requests received for `verb` on `resource` (any group).
    pub fn request_count(&self, verb: &str, resource: &str) -> u64 {
        self.inner()
            .requests()
            .iter()
            .filter(|(k, _)| k.verb == verb && k.resource == resource)
            .map(|(_, n)| n)
            .sum()
    }

    /// Forgets the request counts.
    pub fn reset_requests(&self) {
        self.inner().reset_requests();
    }

    /// Whether the server is listening.
    pub fn is_running(&self) -> bool {
        lock(&self.shared.running).is_some()
    }

    /// Stops listening and closes every connection (open watches break), keeping the store,
    /// tokens and port for [`Self::start_again`].
    pub async fn stop(&self) {
        let running = lock(&self.shared.running).take();
        if let Some(r) = running {
            r.stop().await;
        }
    }

    /// Listens again on the same port after [`Self::stop`].
    pub async fn start_again(&self) -> Result<(), FakeError> {
        if self.is_running() {
            return Err(FakeError::AlreadyRunning(self.addr()));
        }
        let listener = server::bind(self.addr())?;
        let running = server::spawn(self.shared.inner.clone(), listener);
        let mut slot = lock(&self.shared.running);
        match slot.as_ref() {
            Some(_) => {
                running.signal();
                Err(FakeError::AlreadyRunning(self.addr()))
            }
            None => {
                *slot = Some(running);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync::<FakeApiServer>();
    }

    #[tokio::test]
    async fn kubeconfig_names_everything_after_the_context() {
        let s = FakeApiServer::start(ServerOptions::default())
            .await
            .unwrap();
        let yaml = s.kubeconfig("member-1", "tok");
        let v: serde_json::Value = yaml_serde::from_str(&yaml).unwrap();
        assert_eq!(v["current-context"], "member-1");
        assert_eq!(v["clusters"][0]["name"], "member-1");
        assert_eq!(v["clusters"][0]["cluster"]["server"], s.url());
        assert!(v["clusters"][0]["cluster"]["certificate-authority-data"].is_string());
        assert_eq!(v["users"][0]["user"]["token"], "tok");
        assert_eq!(v["contexts"][0]["context"]["user"], "member-1");
        let plain = FakeApiServer::start(ServerOptions::plain_http())
            .await
            .unwrap();
        let v: serde_json::Value = yaml_serde::from_str(&plain.kubeconfig("c", "t")).unwrap();
        assert!(v["clusters"][0]["cluster"]
            .get("certificate-authority-data")
            .is_none());
    }
}
