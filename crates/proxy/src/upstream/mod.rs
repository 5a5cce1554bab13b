//! Everything towards upstream endpoints, per worker: choosing an endpoint (balancer, latency
//! estimates and outlier detection), connecting (TCP, mTLS), pooled HTTP connections.

pub mod connect;
mod cut;
pub mod health;
pub mod load;
pub mod outlier;
pub mod pool;
mod target;

use crate::FastMap;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use causeway_xds::dataplane::{ClusterConfig, LoadAssignmentConfig, Snapshot};

use crate::balance::Balancers;
use crate::credentials::MeshCredentials;
use crate::tls::{TlsCache, TlsError};
use load::{EndpointBook, InFlight, Loads};
use outlier::{Outcome, Outliers};
pub use target::Target;

/// One worker's upstream state.
pub struct Upstreams {
    pub credentials: MeshCredentials,
    pub pools: Rc<pool::Pools>,
    pub tls: TlsCache,
    /// Every endpoint's counters, shared with the other workers and the admin API.
    pub book: Arc<EndpointBook>,
    /// Active health checks and the endpoints they found unhealthy.
    pub health: health::HealthChecks,
    balancers: RefCell<Balancers>,
    outliers: RefCell<Outliers>,
    loads: RefCell<Loads>,
    /// Retries in flight by cluster (the `max_retries` circuit breaker, per worker).
    retries: Rc<RefCell<FastMap<String, u32>>>,
}

/// One retry in flight; dropping it frees its slot.
pub struct RetrySlot {
    retries: Rc<RefCell<FastMap<String, u32>>>,
    cluster: String,
}

impl Drop for RetrySlot {
    fn drop(&mut self) {
        let mut retries = self.retries.borrow_mut();
        if let Some(n) = retries.get_mut(&self.cluster) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                retries.remove(&self.cluster);
            }
        }
    }
}

impl Upstreams {
    pub fn new(credentials: MeshCredentials, book: Arc<EndpointBook>) -> Self {
        Upstreams {
            credentials,
            pools: Rc::default(),
            tls: TlsCache::default(),
            book,
            health: health::HealthChecks::default(),
            balancers: RefCell::default(),
            outliers: RefCell::default(),
            loads: RefCell::default(),
            retries: Rc::default(),
        }
    }

    /// A slot for one more retry to `cluster`, unless its `max_retries` are all in flight
    /// (Envoy's retry circuit breaker: the request then ends with the attempt it has).
    pub fn retry_slot(&self, cluster: &ClusterConfig) -> Option<RetrySlot> {
        let mut retries = self.retries.borrow_mut();
        let n = retries.entry(cluster.name.clone()).or_insert(0);
        if *n >= cluster.max_retries {
            return None;
        }
        *n += 1;
        Some(RetrySlot {
            retries: Rc::clone(&self.retries),
            cluster: cluster.name.clone(),
        })
    }

    /// The next endpoint of `cluster` in snapshot `generation`, outliers and endpoints that
    /// failed their health checks skipped.
    pub fn pick(
        &self,
        generation: u64,
        cluster: &ClusterConfig,
        la: &LoadAssignmentConfig,
    ) -> Option<Target> {
        let name = &cluster.name;
        let now = Instant::now();
        let (outlier_epoch, mut ejected) = self.outliers.borrow_mut().ejected(name, now);
        // Both only grow, so their sum changes whenever either does.
        let epoch = outlier_epoch.wrapping_add(self.health.epoch());
        let with_unhealthy = || {
            ejected.extend(self.health.unhealthy(la));
            ejected
        };
        let panic = cluster.healthy_panic_threshold_percent;
        let loads = self.loads.borrow();
        self.balancers
            .borrow_mut()
            .of(
                (generation, epoch),
                name,
                cluster.lb_policy,
                la,
                with_unhealthy,
                panic,
            )?
            .pick(|t| loads.cost(name, t, now))
    }

    /// Like [`Upstreams::pick`], preferring endpoints not in `tried`: up to `attempts` more
    /// picks are made while the pick was tried already (Envoy's `previous_hosts` predicate
    /// with `host_selection_retry_max_attempts`).
    pub fn pick_other(
        &self,
        generation: u64,
        cluster: &ClusterConfig,
        la: &LoadAssignmentConfig,
        tried: &[Target],
        attempts: u32,
    ) -> Option<Target> {
        let mut pick = self.pick(generation, cluster, la)?;
        for _ in 0..attempts {
            if !tried.contains(&pick) {
                break;
            }
            pick = self.pick(generation, cluster, la)?;
        }
        Some(pick)
    }

    /// Counts an attempt to `endpoint` as in flight until the returned guard is dropped.
    pub fn start(&self, cluster: &ClusterConfig, endpoint: &Target) -> InFlight {
        let load = self
            .loads
            .borrow_mut()
            .get(&self.book, &cluster.name, endpoint);
        InFlight::start(load)
    }

    /// Feeds an attempt's outcome to its latency estimate and to the cluster's outlier
    /// detection, if it has one.
    pub fn record(
        &self,
        cluster: &ClusterConfig,
        la: &LoadAssignmentConfig,
        attempt: &InFlight,
        endpoint: &Target,
        outcome: Outcome,
    ) {
        attempt.answered(outcome);
        let Some(cfg) = &cluster.outlier_detection else {
            return;
        };
        let endpoints = la.localities.iter().map(|l| l.endpoints.len()).sum();
        let ejected = self.outliers.borrow_mut().record(
            &cluster.name,
            cfg,
            endpoint,
            endpoints,
            outcome,
            Instant::now(),
        );
        if let Some(time) = ejected {
            attempt.stats().eject(time);
            self.book.count_ejection(&cluster.name);
        }
    }

    /// Forgets the latency estimates, outlier state and pooled connections of endpoints
    /// `snapshot` no longer has (a replaced pod comes back as a new target).
    pub fn retain_endpoints(&self, snapshot: &Snapshot) {
        let keep = |cluster: &str, target: &Target| has_endpoint(snapshot, cluster, target);
        self.loads.borrow_mut().retain(keep);
        self.outliers.borrow_mut().retain(keep);
        self.pools.retain(keep);
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

/// Whether `cluster` in `snapshot` still has `target` among its endpoints.
pub fn has_endpoint(snapshot: &Snapshot, cluster: &str, target: &Target) -> bool {
    snapshot.endpoints_of(cluster).is_some_and(|la| {
        la.localities
            .iter()
            .flat_map(|l| &l.endpoints)
            .any(|e| e.address == target.address && e.sni.as_deref() == target.sni.as_deref())
    })
}
