//! Outlier detection per endpoint, Envoy's consecutive-failure subset: `consecutive_5xx` counts
//! 5xx answers and local failures (connect, reset, timeout), `consecutive_gateway_failure`
//! counts 502/503/504 and local failures; reaching either threshold ejects the endpoint for
//! `base_ejection_time` × the times it was ejected (at most 300 s, Envoy's
//! `max_ejection_time`), within `max_ejection_percent` of the cluster's endpoints (at least one
//! may always be ejected, as in Envoy). Any other answer resets both counts.
//!
//! State is per worker, like the balancers: with `--concurrency N` each worker detects on the
//! requests it carries (Envoy shares the detector between workers), so ejection takes the
//! same number of failures per worker. The demo runs one worker per proxy.

use crate::FastMap;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::Target;

use causeway_xds::dataplane::OutlierDetectionConfig;

/// Envoy's default `max_ejection_time`.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// What one attempt to an endpoint came to, for the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer with this status (TCP: a connection made counts as 200).
    Status(u16),
    /// Connect failure, reset or timeout: no answer.
    LocalFailure,
    /// Never sent (the endpoint's connections were all busy): says nothing of the endpoint.
    NotSent,
}

#[derive(Debug, Default)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct ClusterHosts {
    hosts: FastMap<Target, Host>,
}

/// One worker's detector state by cluster.
#[derive(Debug, Default)]
pub struct Outliers {
    clusters: FastMap<String, ClusterHosts>,
    /// Changes whenever the set of ejected endpoints does (balancers rebuild on it).
    epoch: u64,
}

impl Outliers {
    /// The endpoints of `cluster` ejected at `now`, and the epoch they belong to.
    pub fn ejected(&mut self, cluster: &str, now: Instant) -> (u64, BTreeSet<Target>) {
        let Some(c) = self.clusters.get_mut(cluster) else {
            return (self.epoch, BTreeSet::new());
        };
        let mut out = BTreeSet::new();
        let mut expired = false;
        for (addr, h) in &mut c.hosts {
            match h.ejected_until {
                Some(until) if until > now => {
                    out.insert(addr.clone());
                }
                Some(_) => {
                    h.ejected_until = None;
                    expired = true;
                    tracing::info!(cluster, endpoint = %addr, "endpoint returned after ejection");
                }
                None => {}
            }
        }
        if expired {
            self.epoch += 1;
        }
        (self.epoch, out)
    }

    /// Forgets the endpoints that are no longer in `keep(cluster, target)` (a pod's target
    /// changes when it is replaced, so the map would otherwise grow with every restart).
    pub fn retain(&mut self, keep: impl Fn(&str, &Target) -> bool) {
        self.clusters.retain(|cluster, c| {
            c.hosts.retain(|t, _| keep(cluster, t));
            !c.hosts.is_empty()
        });
    }

    /// Records an attempt's outcome; the ejection time when it ejected the endpoint.
    pub fn record(
        &mut self,
        cluster: &str,
        cfg: &OutlierDetectionConfig,
        endpoint: &Target,
        endpoints_in_cluster: usize,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Duration> {
        let c = self.clusters.entry(cluster.to_owned()).or_default();
        let ejected_now = c
            .hosts
            .values()
            .filter(|h| h.ejected_until.is_some_and(|u| u > now))
            .count();
        let h = match c.hosts.get_mut(endpoint) {
            Some(h) => h,
            None => c.hosts.entry(endpoint.clone()).or_default(),
        };
        let (five, gateway) = match outcome {
            Outcome::LocalFailure => (true, true),
            Outcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
            Outcome::NotSent => return None,
        };
        if !five && !gateway {
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            return None;
        }
        if five {
            h.consecutive_5xx += 1;
        }
        if gateway {
            h.consecutive_gateway += 1;
        }
        let trip = (cfg.consecutive_5xx > 0
            && h.consecutive_5xx >= cfg.consecutive_5xx
            && enforced(cfg.enforcing_consecutive_5xx_percent))
            || (cfg.consecutive_gateway_failure > 0
                && h.consecutive_gateway >= cfg.consecutive_gateway_failure
                && enforced(cfg.enforcing_consecutive_gateway_failure_percent));
        if !trip || h.ejected_until.is_some_and(|u| u > now) {
            return None;
        }
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        let total = endpoints_in_cluster.max(1);
        let allowed = ejected_now == 0
            || (ejected_now + 1) * 100 <= total * cfg.max_ejection_percent as usize;
        if !allowed {
            return None;
        }
        h.times_ejected += 1;
        let time = cfg
            .base_ejection_time
            .saturating_mul(h.times_ejected)
            .min(MAX_EJECTION.max(cfg.base_ejection_time));
        h.ejected_until = Some(now + time);
        self.epoch += 1;
        tracing::warn!(cluster, endpoint = %endpoint, ejection_s = time.as_secs_f64(), "endpoint ejected after consecutive failures");
        Some(time)
    }
}

fn enforced(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && fastrand::u32(0..100) < percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierDetectionConfig {
        OutlierDetectionConfig {
            consecutive_5xx: 3,
            enforcing_consecutive_5xx_percent: 100,
            consecutive_gateway_failure: 2,
            enforcing_consecutive_gateway_failure_percent: 100,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(5),
            max_ejection_percent: 100,
        }
    }

    fn a(n: u8) -> Target {
        Target::at(std::net::SocketAddr::from(([127, 0, 0, n], 80)))
    }

    #[test]
    fn two_gateway_failures_eject_for_the_base_time_then_twice_as_long() {
        let mut o = Outliers::default();
        let t0 = Instant::now();
        let c = cfg();
        assert!(o
            .record("c", &c, &a(1), 2, Outcome::LocalFailure, t0)
            .is_none());
        assert_eq!(
            o.record("c", &c, &a(1), 2, Outcome::Status(503), t0),
            Some(Duration::from_secs(5))
        );
        assert_eq!(o.ejected("c", t0).1, [a(1)].into());
        assert!(o.ejected("c", t0 + Duration::from_secs(6)).1.is_empty());
        o.record(
            "c",
            &c,
            &a(1),
            2,
            Outcome::Status(502),
            t0 + Duration::from_secs(7),
        );
        o.record(
            "c",
            &c,
            &a(1),
            2,
            Outcome::Status(502),
            t0 + Duration::from_secs(7),
        );
        assert!(!o.ejected("c", t0 + Duration::from_secs(16)).1.is_empty());
        assert!(o.ejected("c", t0 + Duration::from_secs(18)).1.is_empty());
    }

    #[test]
    fn a_success_resets_the_count_and_500_counts_only_towards_5xx() {
        let mut o = Outliers::default();
        let t = Instant::now();
        let c = cfg();
        o.record("c", &c, &a(1), 2, Outcome::Status(503), t);
        o.record("c", &c, &a(1), 2, Outcome::Status(200), t);
        assert!(o
            .record("c", &c, &a(1), 2, Outcome::Status(503), t)
            .is_none());
        let mut o = Outliers::default();
        assert!(o
            .record("c", &c, &a(1), 2, Outcome::Status(500), t)
            .is_none());
        assert!(o
            .record("c", &c, &a(1), 2, Outcome::Status(500), t)
            .is_none());
        assert!(o
            .record("c", &c, &a(1), 2, Outcome::Status(500), t)
            .is_some());
    }

    #[test]
    fn max_ejection_percent_bounds_ejections_but_one_is_always_allowed() {
        let mut c = cfg();
        c.max_ejection_percent = 10;
        let mut o = Outliers::default();
        let t = Instant::now();
        for n in 1..=2 {
            o.record("c", &c, &a(n), 4, Outcome::LocalFailure, t);
            o.record("c", &c, &a(n), 4, Outcome::LocalFailure, t);
        }
        assert_eq!(o.ejected("c", t).1, [a(1)].into());
    }
}
