//! Causeway's own data plane (`causeway proxy --data-plane causeway`): sidecars and east-west
//! gateways configured over the same xDS as Envoy. Modules follow the request path: `worker`
//! (threads, runtimes, listeners), `gateway` (SNI routing without terminating TLS), `balance`
//! (endpoint choice) and `copy` (bytes between sockets); `config` is the snapshot they read.

pub mod admin;
pub mod balance;
pub mod config;
pub mod copy;
pub mod gateway;
pub mod metrics;
pub mod worker;
