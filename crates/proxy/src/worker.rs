//! Workers: `--concurrency N` threads, each with a single-threaded tokio runtime, its own
//! listening sockets (SO_REUSEPORT: the kernel spreads connections) and its own copy of the
//! configuration and balancer state, so nothing on the request path takes a lock. A new
//! snapshot reaches every worker through a watch channel and replaces its copy between
//! connections.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use causeway_xds::dataplane::LoadAssignmentConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{SharedSnapshot, Snapshot};
use crate::credentials::MeshCredentials;
use crate::upstream::health::HealthChecks;
use crate::upstream::load::EndpointBook;
use crate::upstream::Upstreams;

/// What one worker keeps: the snapshot it serves and its upstream state (balancers, outlier
/// detection, TLS configurations, connection pools).
pub struct WorkerState {
    snapshot: RefCell<SharedSnapshot>,
    /// The generation of the snapshot served, for connections that drain on a change.
    changes: watch::Sender<u64>,
    pub upstreams: Upstreams,
    pub index: usize,
    /// Connections this worker holds open, and how many it may.
    open: Cell<usize>,
    max_open: usize,
}

impl WorkerState {
    pub fn new(
        index: usize,
        snapshot: SharedSnapshot,
        max_open: usize,
        credentials: MeshCredentials,
        book: Arc<EndpointBook>,
    ) -> Self {
        WorkerState {
            changes: watch::Sender::new(snapshot.generation),
            snapshot: RefCell::new(snapshot),
            upstreams: Upstreams::new(credentials, book),
            index,
            open: Cell::new(0),
            max_open,
        }
    }

    /// Connections open on this worker.
    pub fn open_connections(&self) -> usize {
        self.open.get()
    }

    /// The snapshot connections start on (a connection keeps the one it started with).
    pub fn snapshot(&self) -> SharedSnapshot {
        Arc::clone(&self.snapshot.borrow())
    }

    pub fn pick(
        &self,
        generation: u64,
        cluster: &causeway_xds::dataplane::ClusterConfig,
        la: &LoadAssignmentConfig,
    ) -> Option<crate::upstream::Target> {
        self.upstreams.pick(generation, cluster, la)
    }

    /// Notified whenever the worker starts serving a new snapshot.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn replace(&self, snapshot: SharedSnapshot) {
        let generation = snapshot.generation;
        self.upstreams.retain_endpoints(&snapshot);
        if self.index == 0 {
            // One worker prunes the shared counters, so the book follows the configuration.
            self.upstreams.book.retain(|cluster, target| {
                crate::upstream::has_endpoint(&snapshot, cluster, target)
            });
        }
        *self.snapshot.borrow_mut() = snapshot;
        self.changes.send_replace(generation);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("starting worker thread {index}: {error}")]
    Thread { index: usize, error: std::io::Error },
    #[error("binding listener {name} on {address}: {error}")]
    Bind {
        name: String,
        address: SocketAddr,
        error: std::io::Error,
    },
}

/// A listening socket shared by the workers through SO_REUSEPORT.
fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The running workers; dropping the handle does not stop them, [`Workers::stop`] does.
pub struct Workers {
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    overloaded: Arc<AtomicU64>,
    endpoints: Arc<EndpointBook>,
}

/// Bounds of the workers.
#[derive(Debug, Clone, Copy)]
pub struct WorkerLimits {
    /// Open downstream connections across all workers (Envoy's
    /// `global_downstream_max_connections`, which the Envoy bootstrap sets to 50,000); beyond
    /// it a new connection is closed at once, so a flood of idle connections cannot take the
    /// process's file descriptors or memory.
    pub max_connections: usize,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        WorkerLimits {
            max_connections: 50_000,
        }
    }
}

/// Counts a connection open on its worker for as long as it lives.
struct OpenGuard(Rc<WorkerState>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
    }
}

/// A connection's task on its worker (not `Send`: it stays on the worker that accepted it).
pub type LocalTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// What a worker does with an accepted connection on a listener (by listener name).
pub type Handler =
    Arc<dyn Fn(Rc<WorkerState>, String, tokio::net::TcpStream) -> LocalTask + Send + Sync>;

impl Workers {
    /// Starts `concurrency` workers serving `snapshots` with `handler`, mesh TLS from
    /// `credentials`.
    pub fn start(
        concurrency: usize,
        limits: WorkerLimits,
        credentials: MeshCredentials,
        snapshots: watch::Receiver<SharedSnapshot>,
        handler: Handler,
    ) -> Result<Self, WorkerError> {
        let (stop, stopped) = watch::channel(false);
        let overloaded = Arc::new(AtomicU64::new(0));
        let endpoints = Arc::new(EndpointBook::default());
        let workers = concurrency.max(1);
        // Each worker gets its share (rounded up): no shared counter on the accept path.
        let max_open = limits.max_connections.div_ceil(workers).max(1);
        let mut threads = Vec::new();
        for index in 0..workers {
            let worker = WorkerSetup {
                index,
                max_open,
                credentials: credentials.clone(),
                snapshots: snapshots.clone(),
                stopped: stopped.clone(),
                handler: Arc::clone(&handler),
                overloaded: Arc::clone(&overloaded),
                endpoints: Arc::clone(&endpoints),
            };
            let thread = std::thread::Builder::new()
                .name(format!("causeway-worker-{index}"))
                .spawn(move || run_worker(worker))
                .map_err(|error| WorkerError::Thread { index, error })?;
            threads.push(thread);
        }
        Ok(Workers {
            stop,
            threads,
            overloaded,
            endpoints,
        })
    }

    /// Every upstream endpoint's counters and latency estimate (the admin API's `/endpoints`).
    pub fn endpoints(&self) -> Arc<EndpointBook> {
        Arc::clone(&self.endpoints)
    }

    /// Connections closed at once because the workers were at their connection limit.
    pub fn overloaded(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.overloaded)
    }

    /// Stops accepting, ends every worker's runtime and waits for the threads.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// What one worker thread starts with.
struct WorkerSetup {
    index: usize,
    max_open: usize,
    credentials: MeshCredentials,
    snapshots: watch::Receiver<SharedSnapshot>,
    stopped: watch::Receiver<bool>,
    handler: Handler,
    overloaded: Arc<AtomicU64>,
    endpoints: Arc<EndpointBook>,
}

fn run_worker(setup: WorkerSetup) {
    let WorkerSetup {
        index,
        max_open,
        credentials,
        mut snapshots,
        mut stopped,
        handler,
        overloaded,
        endpoints,
    } = setup;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(worker = index, %error, "worker runtime did not start");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let first = Arc::clone(&snapshots.borrow_and_update());
        let state = Rc::new(WorkerState::new(
            index,
            Arc::clone(&first),
            max_open,
            credentials,
            endpoints,
        ));
        let mut listeners = Listeners {
            running: HashMap::new(),
            overloaded,
        };
        listeners.apply(&state, &first, &handler);
        HealthChecks::sync(&state, &first);
        loop {
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() { break; }
                    let next = Arc::clone(&snapshots.borrow_and_update());
                    state.replace(Arc::clone(&next));
                    listeners.apply(&state, &next, &handler);
                    HealthChecks::sync(&state, &next);
                }
                _ = stopped.changed() => break,
            }
        }
        listeners.stop_all();
    });
}

/// A worker's accept loops by listener name, with the address each is bound to.
struct Listeners {
    running: HashMap<String, (SocketAddr, JoinHandle<()>)>,
    overloaded: Arc<AtomicU64>,
}

impl Listeners {
    /// Starts listeners that are new or moved, stops those that are gone.
    fn apply(&mut self, state: &Rc<WorkerState>, snapshot: &Snapshot, handler: &Handler) {
        self.running.retain(|name, (address, task)| {
            let keep = snapshot
                .listeners
                .get(name)
                .is_some_and(|l| l.address == *address);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, l) in &snapshot.listeners {
            // A listener that does not bind gets its connections from a capture listener.
            if self.running.contains_key(name) || !l.bind {
                continue;
            }
            match bind(l.address) {
                Ok(socket) => {
                    let task = tokio::task::spawn_local(accept_loop(
                        Rc::clone(state),
                        name.clone(),
                        socket,
                        Arc::clone(handler),
                        Arc::clone(&self.overloaded),
                    ));
                    self.running.insert(name.clone(), (l.address, task));
                }
                Err(error) => {
                    let e = WorkerError::Bind {
                        name: name.clone(),
                        address: l.address,
                        error,
                    };
                    tracing::error!(worker = state.index, error = %e, "listener not started");
                }
            }
        }
    }

    fn stop_all(&mut self) {
        for (_, (_, task)) in self.running.drain() {
            task.abort();
        }
    }
}

/// The original destination of a redirected connection (iptables REDIRECT keeps it as the
/// socket's `SO_ORIGINAL_DST`).
pub fn original_dst(conn: &tokio::net::TcpStream) -> std::io::Result<SocketAddr> {
    let addr = socket2::SockRef::from(conn).original_dst_v4()?;
    addr.as_socket()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an IP address"))
}

/// For a connection accepted by a capture listener (`use_original_dst`), the listener of its
/// original destination, when there is one (Envoy's hand-off rule).
fn handed_over(
    state: &WorkerState,
    listener: &str,
    conn: &tokio::net::TcpStream,
) -> Option<String> {
    let snapshot = state.snapshot();
    if !snapshot.listeners.get(listener)?.use_original_dst {
        return None;
    }
    let dst = original_dst(conn).ok()?;
    let exact = snapshot.listeners.iter().find(|(_, l)| l.address == dst);
    let wildcard = || {
        snapshot
            .listeners
            .iter()
            .find(|(_, l)| l.address.port() == dst.port() && l.address.ip().is_unspecified())
    };
    exact
        .or_else(wildcard)
        .filter(|(name, _)| name.as_str() != listener)
        .map(|(name, _)| name.clone())
}

async fn accept_loop(
    state: Rc<WorkerState>,
    name: String,
    socket: TcpListener,
    handler: Handler,
    overloaded: Arc<AtomicU64>,
) {
    loop {
        match socket.accept().await {
            Ok((conn, peer)) => {
                if state.open.get() >= state.max_open {
                    // Closed at once (dropping it): the limit protects everyone else's.
                    let n = overloaded.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(listener = %name, worker = state.index, %peer, refused = n, limit = state.max_open, "connection limit reached; closing new connections");
                    }
                    continue;
                }
                state.open.set(state.open.get() + 1);
                let guard = OpenGuard(Rc::clone(&state));
                let target = handed_over(&state, &name, &conn).unwrap_or_else(|| name.clone());
                let task = handler(Rc::clone(&state), target, conn);
                tokio::task::spawn_local(async move {
                    task.await;
                    drop(guard);
                });
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %name, %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
