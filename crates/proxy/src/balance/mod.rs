//! Choosing an endpoint of a cluster, by Envoy's rules for priorities: each priority's health
//! is its share of usable endpoints (healthy, not ejected) × 1.4 (the overprovisioning
//! factor), capped at 100 %; priority 0 takes as much of the load as its health, the next
//! priority the rest up to its own health, and so on (scaled up when the total is below 100 %),
//! so traffic spills over gradually as endpoints fail. Below the panic threshold the lowest
//! priority's endpoints all take traffic, healthy or not. The priorities are interleaved by
//! their load with smooth weighted round robin (`smooth`).
//!
//! Inside a priority, by the cluster's policy: Envoy's round robin (smooth weighted: weights
//! 5:1:1 give a a b a c a a, not a a a a a b c), or the latency balancer (`p2c`: power of two
//! choices over peak-EWMA latency × requests in flight, per weight). State is per worker and
//! per cluster; a new snapshot or a change of ejected endpoints rebuilds it (the latency
//! estimates live on in [`crate::upstream::load`]).

mod p2c;
mod smooth;

use crate::FastMap;
use std::collections::{BTreeMap, BTreeSet};

use causeway_xds::dataplane::{EndpointConfig, LbPolicy, LoadAssignmentConfig};

use crate::upstream::Target;
use smooth::Smooth;

/// Envoy's overprovisioning factor (1.4) in percent per unit share.
const OVERPROVISIONING_PERCENT: f64 = 140.0;

/// How one priority's endpoints are chosen.
#[derive(Debug, Clone)]
enum Within {
    RoundRobin(Smooth<Target>),
    PowerOfTwo(p2c::Choices),
}

/// One cluster's balancer: priorities by load, endpoints by the cluster's policy inside each.
#[derive(Debug, Clone)]
pub struct Balancer {
    levels: Smooth<usize>,
    endpoints: Vec<Within>,
}

/// A priority's endpoints (target, weight = endpoint's × locality's) and which are usable.
struct Level {
    all: Vec<(Target, i64)>,
    usable: Vec<(Target, i64)>,
}

impl Level {
    fn health(&self) -> f64 {
        if self.all.is_empty() {
            return 0.0;
        }
        (OVERPROVISIONING_PERCENT * self.usable.len() as f64 / self.all.len() as f64).min(100.0)
    }
}

fn levels(la: &LoadAssignmentConfig, ejected: &BTreeSet<Target>) -> Vec<Level> {
    let mut by_priority: BTreeMap<u32, Level> = BTreeMap::new();
    for l in &la.localities {
        let level = by_priority.entry(l.priority).or_insert(Level {
            all: Vec::new(),
            usable: Vec::new(),
        });
        let locality_weight = i64::from(l.weight.unwrap_or(1));
        for e in &l.endpoints {
            let target = Target::of(e);
            let usable = usable(e, &target, ejected);
            let entry = (target, i64::from(e.weight) * locality_weight);
            if usable {
                level.usable.push(entry.clone());
            }
            level.all.push(entry);
        }
    }
    by_priority.into_values().collect()
}

fn usable(e: &EndpointConfig, target: &Target, ejected: &BTreeSet<Target>) -> bool {
    e.healthy && !ejected.contains(target)
}

fn within(policy: LbPolicy, endpoints: Vec<(Target, i64)>) -> Within {
    match policy {
        LbPolicy::RoundRobin => Within::RoundRobin(Smooth::new(endpoints)),
        LbPolicy::PeakEwma => Within::PowerOfTwo(p2c::Choices::new(endpoints)),
    }
}

impl Balancer {
    /// Round robin without a panic threshold (the control plane's mesh clusters: traffic
    /// fails over to the next priority instead).
    pub fn new(la: &LoadAssignmentConfig, ejected: &BTreeSet<Target>) -> Self {
        Self::with(LbPolicy::RoundRobin, la, ejected, 0.0)
    }

    /// With `policy` inside priorities and Envoy's healthy panic threshold (percent; 0 turns
    /// panic off).
    pub fn with(
        policy: LbPolicy,
        la: &LoadAssignmentConfig,
        ejected: &BTreeSet<Target>,
        panic_threshold: f64,
    ) -> Self {
        let levels = levels(la, ejected);
        let total_health: f64 = levels.iter().map(Level::health).sum::<f64>().min(100.0);
        if panic_threshold > 0.0 && total_health < panic_threshold {
            let all = levels.into_iter().next().map(|l| l.all).unwrap_or_default();
            return Balancer {
                levels: Smooth::new(vec![(0, 1)]),
                endpoints: vec![within(policy, all)],
            };
        }
        let mut loads = Vec::new();
        let mut endpoints = Vec::new();
        let mut remaining = 100.0;
        for level in levels {
            let share = if total_health > 0.0 {
                level.health() * 100.0 / total_health
            } else {
                0.0
            };
            let load = share.min(remaining);
            remaining -= load;
            // Per mille, so smooth round robin interleaves priorities by their load.
            loads.push((endpoints.len(), (load * 10.0).round() as i64));
            endpoints.push(within(policy, level.usable));
        }
        Balancer {
            levels: Smooth::new(loads),
            endpoints,
        }
    }

    /// The next endpoint; `cost` says how loaded one is (the latency balancer asks it, round
    /// robin does not).
    pub fn pick(&mut self, cost: impl Fn(&Target) -> f64) -> Option<Target> {
        let level = self.levels.pick()?;
        match self.endpoints.get_mut(level)? {
            Within::RoundRobin(rr) => rr.pick(),
            Within::PowerOfTwo(choices) => choices.pick(cost),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }
}

/// A worker's balancers, rebuilt for a cluster when a new snapshot arrives or the set of
/// ejected endpoints changes.
#[derive(Debug, Default)]
pub struct Balancers {
    by_cluster: FastMap<String, ((u64, u64), Balancer)>,
}

impl Balancers {
    /// The balancer of `cluster` for `la`, its assignment in snapshot `generation`, skipping
    /// the endpoints `ejected` gives (outlier detection and failed health checks, as of
    /// `epoch`), with the cluster's policy and panic threshold. `ejected` runs only when the
    /// balancer is rebuilt, not on every pick.
    pub fn of(
        &mut self,
        (generation, epoch): (u64, u64),
        cluster: &str,
        policy: LbPolicy,
        la: &LoadAssignmentConfig,
        ejected: impl FnOnce() -> BTreeSet<Target>,
        panic_threshold: f64,
    ) -> Option<&mut Balancer> {
        let current = self
            .by_cluster
            .get(cluster)
            .is_some_and(|(g, _)| *g == (generation, epoch));
        if !current {
            let balancer = Balancer::with(policy, la, &ejected(), panic_threshold);
            self.by_cluster
                .insert(cluster.to_owned(), ((generation, epoch), balancer));
        }
        self.by_cluster.get_mut(cluster).map(|(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_xds::dataplane::LocalityEndpoints;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    impl Balancer {
        fn with_panic(la: &LoadAssignmentConfig, ejected: &BTreeSet<Target>, panic: f64) -> Self {
            Self::with(LbPolicy::RoundRobin, la, ejected, panic)
        }
    }

    fn ep(last: u8, weight: u32, healthy: bool) -> EndpointConfig {
        EndpointConfig {
            address: SocketAddr::from(([127, 0, 0, last], 80)),
            weight,
            healthy,
            cluster: None,
            sni: None,
            pod: None,
            workload: None,
            active_health_check: false,
            through_gateway: false,
        }
    }

    fn la(localities: Vec<(u32, Vec<EndpointConfig>)>) -> LoadAssignmentConfig {
        LoadAssignmentConfig {
            cluster_name: "c".into(),
            localities: localities
                .into_iter()
                .map(|(priority, endpoints)| LocalityEndpoints {
                    region: String::new(),
                    zone: String::new(),
                    sub_zone: String::new(),
                    priority,
                    weight: None,
                    endpoints,
                })
                .collect(),
        }
    }

    fn counts(rr: &mut Balancer, n: usize) -> HashMap<u8, usize> {
        let mut out = HashMap::new();
        for _ in 0..n {
            let a = rr.pick(|_| 0.0).expect("an endpoint").address;
            let std::net::IpAddr::V4(v4) = a.ip() else {
                unreachable!()
            };
            *out.entry(v4.octets()[3]).or_default() += 1;
        }
        out
    }

    #[test]
    fn weights_are_honoured_exactly_over_a_cycle_and_spread_inside_it() {
        let mut rr = Balancer::new(
            &la(vec![(
                0,
                vec![ep(1, 5, true), ep(2, 1, true), ep(3, 1, true)],
            )]),
            &BTreeSet::new(),
        );
        let first: Vec<_> = (0..7)
            .map(|_| rr.pick(|_| 0.0).expect("ep").address.ip().to_string())
            .collect();
        assert_eq!(first.iter().filter(|a| *a == "127.0.0.1").count(), 5);
        // Smooth: the heavy endpoint never takes more than two picks in a row.
        assert!(
            !first.windows(3).any(|w| w.iter().all(|a| a == "127.0.0.1")),
            "{first:?}"
        );
        let c = counts(&mut rr, 700);
        assert_eq!((c[&1], c[&2], c[&3]), (500, 100, 100));
    }

    #[test]
    fn the_lowest_priority_with_a_healthy_endpoint_takes_everything() {
        let assignment = la(vec![
            (0, vec![ep(1, 1, false)]),
            (1, vec![ep(2, 1, true), ep(3, 1, true)]),
            (2, vec![ep(4, 1, true)]),
        ]);
        let c = counts(&mut Balancer::new(&assignment, &BTreeSet::new()), 10);
        assert_eq!(
            (c.get(&2), c.get(&3), c.get(&4)),
            (Some(&5), Some(&5), None)
        );
        // Ejecting priority 1's endpoints moves traffic to priority 2.
        let ejected = [2, 3]
            .map(|l| Target::at(SocketAddr::from(([127, 0, 0, l], 80))))
            .into();
        let c = counts(&mut Balancer::new(&assignment, &ejected), 4);
        assert_eq!(c.get(&4), Some(&4));
        let none = la(vec![(0, vec![ep(1, 1, false)])]);
        assert!(Balancer::new(&none, &BTreeSet::new())
            .pick(|_| 0.0)
            .is_none());
    }

    #[test]
    fn load_spills_over_to_the_next_priority_as_endpoints_fail() {
        // 4 of 5 healthy: 0.8 x 1.4 > 1, priority 0 still takes everything.
        let mostly = la(vec![
            (0, (1..=5).map(|n| ep(n, 1, n != 5)).collect()),
            (1, vec![ep(9, 1, true)]),
        ]);
        let c = counts(&mut Balancer::new(&mostly, &BTreeSet::new()), 100);
        assert_eq!(c.get(&9), None);
        // 2 of 5 healthy: 56 % stays, 44 % goes to priority 1.
        let half = la(vec![
            (0, (1..=5).map(|n| ep(n, 1, n <= 2)).collect()),
            (1, vec![ep(9, 1, true)]),
        ]);
        let c = counts(&mut Balancer::new(&half, &BTreeSet::new()), 1000);
        assert_eq!((c[&1] + c[&2], c[&9]), (560, 440));
        // Nothing healthy anywhere: no endpoint (panic is off).
        let dead = la(vec![(0, vec![ep(1, 1, false)]), (1, vec![ep(2, 1, false)])]);
        assert!(Balancer::new(&dead, &BTreeSet::new())
            .pick(|_| 0.0)
            .is_none());
    }

    #[test]
    fn below_the_panic_threshold_every_endpoint_of_the_lowest_priority_takes_traffic() {
        let one_of_three = la(vec![(
            0,
            vec![ep(1, 1, true), ep(2, 1, false), ep(3, 1, false)],
        )]);
        let none = BTreeSet::new();
        // 1/3 healthy: health 46.7 % (x 1.4), below Envoy's default 50 %: panic.
        let c = counts(&mut Balancer::with_panic(&one_of_three, &none, 50.0), 30);
        assert_eq!(
            (c.get(&1), c.get(&2), c.get(&3)),
            (Some(&10), Some(&10), Some(&10))
        );
        // Threshold 0 (the mesh clusters): only the healthy endpoint.
        let c = counts(&mut Balancer::with_panic(&one_of_three, &none, 0.0), 30);
        assert_eq!(c.get(&1), Some(&30));
        // A healthy next priority brings the total health to 100 %: no panic; priority 0 keeps
        // the load its health covers (46.7 %), the rest spills over to priority 1.
        let with_backup = la(vec![
            (0, vec![ep(1, 1, true), ep(2, 1, false), ep(3, 1, false)]),
            (1, vec![ep(4, 1, true)]),
        ]);
        let c = counts(&mut Balancer::with_panic(&with_backup, &none, 50.0), 1000);
        assert_eq!(
            (c.get(&1), c.get(&2), c.get(&4)),
            (Some(&467), None, Some(&533))
        );
    }
}
