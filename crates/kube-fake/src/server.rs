//! Shared server state, the listener and its connections: start, stop, start again on the
//! same port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::auth::Auth;
use crate::error::FakeError;
use crate::faults::FaultControl;
use crate::options::ServerOptions;
use crate::store::Store;
use crate::tls::TlsMaterial;

/// Locks a mutex, recovering the data if a panicking test thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which requests a server has answered: verb, API group and resource (`plural` or
/// `plural/status`; for non-resource paths such as discovery, the path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKey {
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// API group (`""` for core and for non-resource paths).
    pub group: String,
    /// Resource, or the path of a non-resource request.
    pub resource: String,
}

/// State shared by the handle, the listener and every connection.
pub(crate) struct Inner {
    pub store: Mutex<Store>,
    pub auth: Mutex<Auth>,
    pub faults: FaultControl,
    pub options: ServerOptions,
    pub addr: SocketAddr,
    pub tls: Option<TlsMaterial>,
    requests: Mutex<BTreeMap<RequestKey, u64>>,
}

impl Inner {
    pub fn new(options: ServerOptions, addr: SocketAddr, tls: Option<TlsMaterial>) -> Self {
        Self {
            store: Mutex::new(Store::new(&options)),
            auth: Mutex::new(Auth::default()),
            faults: FaultControl::new(),
            options,
            addr,
            tls,
            requests: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn count_request(&self, verb: &str, group: &str, resource: &str) {
        let key = RequestKey {
            verb: verb.to_string(),
            group: group.to_string(),
            resource: resource.to_string(),
        };
        *lock(&self.requests).entry(key).or_insert(0) += 1;
    }

    pub fn requests(&self) -> BTreeMap<RequestKey, u64> {
        lock(&self.requests).clone()
    }

    pub fn reset_requests(&self) {
        lock(&self.requests).clear();
    }
}

/// A listening server: how to stop it.
pub(crate) struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops listening, closes every connection, and waits until all are gone.
    pub async fn stop(self) {
        // The loop may already have ended; either way, wait for it.
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }

    /// Asks the loop to stop without waiting (for `Drop`).
    pub fn signal(self) {
        let _ = self.shutdown.send(());
    }
}

/// Opens the listening socket (with `SO_REUSEADDR`, so the same port can be taken again at
/// once after a stop).
pub(crate) fn bind(addr: SocketAddr) -> Result<TcpListener, FakeError> {
    let err = |source| FakeError::Bind { addr, source };
    let socket = TcpSocket::new_v4().map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

/// Starts the accept loop on `listener`.
pub(crate) fn spawn(inner: Arc<Inner>, listener: TcpListener) -> Running {
    let (shutdown, rx) = oneshot::channel();
    let task = tokio::spawn(accept_loop(inner, listener, rx));
    Running { shutdown, task }
}

async fn accept_loop(
    inner: Arc<Inner>,
    listener: TcpListener,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve(inner.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!("fake API server: accept failed: {e}");
                    // Back off briefly so a persistent error (out of file descriptors) does
                    // not spin the loop.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn serve(inner: Arc<Inner>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let handler = inner.clone();
    let svc = service_fn(move |req| crate::http::handle(handler.clone(), req));
    let builder = hyper::server::conn::http1::Builder::new();
    let result = match &inner.tls {
        Some(tls) => {
            let accepted =
                tokio::time::timeout(Duration::from_secs(10), tls.acceptor.accept(stream)).await;
            match accepted {
                Ok(Ok(tls_stream)) => {
                    builder
                        .serve_connection(TokioIo::new(tls_stream), svc)
                        .await
                }
                Ok(Err(e)) => {
                    tracing::debug!("fake API server: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            }
        }
        None => builder.serve_connection(TokioIo::new(stream), svc).await,
    };
    if let Err(e) = result {
        tracing::debug!("fake API server: connection ended: {e}");
    }
}
