//! Everything towards upstream endpoints, per worker: choosing an endpoint (balancer and
//! outlier detection), connecting (TCP, mTLS), pooled HTTP connections.

pub mod connect;
pub mod outlier;
pub mod pool;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use causeway_xds::dataplane::{ClusterConfig, LoadAssignmentConfig};

use crate::balance::Balancers;
use crate::credentials::MeshCredentials;
use crate::tls::{TlsCache, TlsError};
use outlier::{Outcome, Outliers};

/// One worker's upstream state.
pub struct Upstreams {
    pub credentials: MeshCredentials,
    pub pools: Rc<pool::Pools>,
    pub tls: TlsCache,
    balancers: RefCell<Balancers>,
    outliers: RefCell<Outliers>,
}

impl Upstreams {
    pub fn new(credentials: MeshCredentials) -> Self {
        Upstreams {
            credentials,
            pools: Rc::default(),
            tls: TlsCache::default(),
            balancers: RefCell::default(),
            outliers: RefCell::default(),
        }
    }

    /// The next endpoint of `cluster` in snapshot `generation`, outliers skipped.
    pub fn pick(
        &self,
        generation: u64,
        cluster: &ClusterConfig,
        la: &LoadAssignmentConfig,
    ) -> Option<SocketAddr> {
        let name = &cluster.name;
        let (epoch, ejected) = self.outliers.borrow_mut().ejected(name, Instant::now());
        let panic = cluster.healthy_panic_threshold_percent;
        self.balancers
            .borrow_mut()
            .pick((generation, epoch), name, la, &ejected, panic)
    }

    /// Like [`Upstreams::pick`], preferring endpoints not in `tried`: up to `attempts` more
    /// picks are made while the pick was tried already (Envoy's `previous_hosts` predicate
    /// with `host_selection_retry_max_attempts`).
    pub fn pick_other(
        &self,
        generation: u64,
        cluster: &ClusterConfig,
        la: &LoadAssignmentConfig,
        tried: &[SocketAddr],
        attempts: u32,
    ) -> Option<SocketAddr> {
        let mut pick = self.pick(generation, cluster, la)?;
        for _ in 0..attempts {
            if !tried.contains(&pick) {
                break;
            }
            pick = self.pick(generation, cluster, la)?;
        }
        Some(pick)
    }

    /// Feeds an attempt's outcome to the cluster's outlier detection, if it has one.
    pub fn record(
        &self,
        cluster: &ClusterConfig,
        la: &LoadAssignmentConfig,
        endpoint: SocketAddr,
        outcome: Outcome,
    ) {
        let Some(cfg) = &cluster.outlier_detection else {
            return;
        };
        let endpoints = la.localities.iter().map(|l| l.endpoints.len()).sum();
        self.outliers.borrow_mut().record(
            &cluster.name,
            cfg,
            endpoint,
            endpoints,
            outcome,
            Instant::now(),
        );
    }

    /// The client TLS configuration for `cluster` (None: plaintext).
    pub fn client_tls(
        &self,
        generation: u64,
        cluster: &ClusterConfig,
        http: bool,
    ) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, TlsError> {
        cluster
            .upstream_tls
            .as_ref()
            .map(|cfg| {
                self.tls
                    .client(&self.credentials, generation, &cluster.name, cfg, http)
            })
            .transpose()
    }
}
