//! Causeway's xDS: per-proxy views as Envoy v3 resources, served over ADS.
//!
//! [`node`] reads who a connecting Envoy claims to be and [`auth`] checks that against the mesh
//! certificate of its connection; [`bootstrap`] writes the Envoy bootstrap `causeway proxy` runs; [`build`] turns the mesh index and a proxy into
//! listeners, clusters and endpoints (pure, unit-tested); [`server`] speaks ADS in both
//! state-of-the-world and delta form with versions, nonces, ACK/NACK and incremental pushes;
//! [`status`] records what each proxy was sent and acknowledged, for `causeway proxy-status`.

pub mod auth;
pub mod bootstrap;
pub mod build;
pub mod client;
pub mod dataplane;
pub mod node;
pub mod resources;
pub mod server;
pub mod status;

pub use server::{serve_tls, AdsServer, MeshState, PeerInfo, ServerConfig, XdsTls};
pub use status::{ProxyRegistry, ProxyStatus};
