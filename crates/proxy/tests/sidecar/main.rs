//! The Causeway sidecar over real sockets on 127.0.0.0/8: `listener::handler` on workers started
//! with certificates from PEM files, talking to plaintext backends, echo servers and each
//! other. Expected behaviour is Envoy's (its documentation and router, connection manager,
//! RBAC and outlier detection semantics), not read off the proxy's code.
//!
//! - `outbound_http`: routing by authority and path, 404, 503 `no healthy upstream`,
//!   hop-by-hop headers, `x-request-id`, h2c from the app.
//! - `retries`: retry conditions, `num_retries`, `previous_hosts`, body replay, connect
//!   failures.
//! - `resilience`: route and per-try timeouts, outlier detection with priority failover.
//! - `mtls`: sidecar to sidecar mTLS, XFCC, ALPN h2, SAN checks, refused callers, HTTP and
//!   network RBAC, TCP over mTLS.
//! - `tcp`: the TCP proxy's bytes, half-close and idle timeout.
//! - `config_change`: new snapshots on the watch channel.

mod config_change;
mod mtls;
mod outbound_http;
mod resilience;
mod retries;
mod support;
mod tcp;
