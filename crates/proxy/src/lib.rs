//! Causeway's own data plane (`causeway proxy --data-plane causeway`): sidecars and east-west
//! gateways configured over the same xDS as Envoy. Modules follow the request path: `worker`
//! (threads, runtimes, listeners), `listener` (which path a connection takes), `gateway` (SNI
//! routing without terminating TLS), `outbound` and `inbound` (a sidecar's two sides), `http`
//! (connection manager, routes, router with retries), `tcp` (TCP proxy), `upstream`
//! (balancer, outlier detection, connections, pools) and `copy` (bytes between sockets);
//! `config` is the snapshot they read, `tls` and `credentials` the mesh certificates.

/// The hash map of the per-request lookups (cluster names, endpoints): foldhash instead of the
/// standard library's SipHash, which costs more per lookup than it protects here (the keys come
/// from the proxy's own configuration, not from callers).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub mod admin;
pub mod balance;
pub mod config;
pub mod copy;
pub mod credentials;
pub mod gateway;
pub mod http;
pub mod inbound;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod tcp;
pub mod tls;
pub mod upstream;
pub mod worker;
