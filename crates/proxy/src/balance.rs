//! Choosing an endpoint of a cluster, by Envoy's rules for priorities: each priority's health
//! is its share of usable endpoints (healthy, not ejected) × 1.4 (the overprovisioning
//! factor), capped at 100 %; priority 0 takes as much of the load as its health, the next
//! priority the rest up to its own health, and so on (scaled up when the total is below 100 %),
//! so traffic spills over gradually as endpoints fail. Below the panic threshold the lowest
//! priority's endpoints all take traffic, healthy or not. Inside a priority, smooth weighted
//! round robin (nginx's algorithm: every pick adds each endpoint's weight to its credit and takes
//! the largest, so weights 5:1:1 give a a b a c a a, not a a a a a b c); the priorities are
//! interleaved the same way by their load. State is per worker and per cluster; a new snapshot
//! or a change of ejected endpoints starts it afresh.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use causeway_xds::dataplane::{EndpointConfig, LoadAssignmentConfig};

/// Envoy's overprovisioning factor (1.4) in percent per unit share.
const OVERPROVISIONING_PERCENT: f64 = 140.0;

/// Smooth weighted round robin over weighted items.
#[derive(Debug, Clone)]
struct Smooth<T> {
    entries: Vec<(T, i64, i64)>,
    total: i64,
}

impl<T: Copy> Smooth<T> {
    fn new(entries: Vec<(T, i64)>) -> Self {
        let entries: Vec<(T, i64, i64)> = entries
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(t, w)| (t, w, 0))
            .collect();
        let total = entries.iter().map(|(_, w, _)| w).sum();
        Smooth { entries, total }
    }

    fn pick(&mut self) -> Option<T> {
        for e in &mut self.entries {
            e.2 += e.1;
        }
        // The largest credit; the first such entry on a tie.
        let (i, _) = self
            .entries
            .iter()
            .enumerate()
            .max_by_key(|(i, e)| (e.2, std::cmp::Reverse(*i)))?;
        self.entries[i].2 -= self.total;
        Some(self.entries[i].0)
    }
}

/// One cluster's balancer: priorities by load, endpoints by weight inside each.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    levels: Smooth<usize>,
    endpoints: Vec<Smooth<SocketAddr>>,
}

/// A priority's endpoints (address, weight = endpoint's × locality's) and how many are usable.
struct Level {
    all: Vec<(SocketAddr, i64)>,
    usable: Vec<(SocketAddr, i64)>,
}

impl Level {
    fn health(&self) -> f64 {
        if self.all.is_empty() {
            return 0.0;
        }
        (OVERPROVISIONING_PERCENT * self.usable.len() as f64 / self.all.len() as f64).min(100.0)
    }
}

fn levels(la: &LoadAssignmentConfig, ejected: &BTreeSet<SocketAddr>) -> Vec<Level> {
    let usable = |e: &EndpointConfig| e.healthy && !ejected.contains(&e.address);
    let mut by_priority: BTreeMap<u32, Level> = BTreeMap::new();
    for l in &la.localities {
        let level = by_priority.entry(l.priority).or_insert(Level {
            all: Vec::new(),
            usable: Vec::new(),
        });
        let locality_weight = i64::from(l.weight.unwrap_or(1));
        for e in &l.endpoints {
            let entry = (e.address, i64::from(e.weight) * locality_weight);
            level.all.push(entry);
            if usable(e) {
                level.usable.push(entry);
            }
        }
    }
    by_priority.into_values().collect()
}

impl RoundRobin {
    /// Without a panic threshold (the control plane's mesh clusters: traffic fails over to the
    /// next priority instead).
    pub fn new(la: &LoadAssignmentConfig, ejected: &BTreeSet<SocketAddr>) -> Self {
        Self::with_panic(la, ejected, 0.0)
    }

    /// With Envoy's healthy panic threshold (percent; 0 turns panic off).
    pub fn with_panic(
        la: &LoadAssignmentConfig,
        ejected: &BTreeSet<SocketAddr>,
        panic_threshold: f64,
    ) -> Self {
        let levels = levels(la, ejected);
        let total_health: f64 = levels.iter().map(Level::health).sum::<f64>().min(100.0);
        if panic_threshold > 0.0 && total_health < panic_threshold {
            let all = levels.into_iter().next().map(|l| l.all).unwrap_or_default();
            return RoundRobin {
                levels: Smooth::new(vec![(0, 1)]),
                endpoints: vec![Smooth::new(all)],
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
            endpoints.push(Smooth::new(level.usable));
        }
        RoundRobin {
            levels: Smooth::new(loads),
            endpoints,
        }
    }

    pub fn pick(&mut self) -> Option<SocketAddr> {
        let level = self.levels.pick()?;
        self.endpoints.get_mut(level)?.pick()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.entries.is_empty()
    }
}

/// A worker's balancers, rebuilt for a cluster when a new snapshot arrives or the set of
/// ejected endpoints changes.
#[derive(Debug, Default)]
pub struct Balancers {
    by_cluster: HashMap<String, ((u64, u64), RoundRobin)>,
}

impl Balancers {
    /// The next endpoint of `cluster` from `la`, its assignment in snapshot `generation`,
    /// skipping `ejected` (outlier detection, as of `epoch`), with the cluster's panic
    /// threshold.
    pub fn pick(
        &mut self,
        (generation, epoch): (u64, u64),
        cluster: &str,
        la: &LoadAssignmentConfig,
        ejected: &BTreeSet<SocketAddr>,
        panic_threshold: f64,
    ) -> Option<SocketAddr> {
        let current = self
            .by_cluster
            .get(cluster)
            .is_some_and(|(g, _)| *g == (generation, epoch));
        if !current {
            self.by_cluster.insert(
                cluster.to_owned(),
                (
                    (generation, epoch),
                    RoundRobin::with_panic(la, ejected, panic_threshold),
                ),
            );
        }
        self.by_cluster.get_mut(cluster)?.1.pick()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_xds::dataplane::{EndpointConfig, LocalityEndpoints};

    fn ep(last: u8, weight: u32, healthy: bool) -> EndpointConfig {
        EndpointConfig {
            address: SocketAddr::from(([127, 0, 0, last], 80)),
            weight,
            healthy,
            cluster: None,
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

    fn counts(rr: &mut RoundRobin, n: usize) -> HashMap<u8, usize> {
        let mut out = HashMap::new();
        for _ in 0..n {
            let a = rr.pick().expect("an endpoint");
            let std::net::IpAddr::V4(v4) = a.ip() else {
                unreachable!()
            };
            *out.entry(v4.octets()[3]).or_default() += 1;
        }
        out
    }

    #[test]
    fn weights_are_honoured_exactly_over_a_cycle_and_spread_inside_it() {
        let mut rr = RoundRobin::new(
            &la(vec![(
                0,
                vec![ep(1, 5, true), ep(2, 1, true), ep(3, 1, true)],
            )]),
            &BTreeSet::new(),
        );
        let first: Vec<_> = (0..7)
            .map(|_| rr.pick().expect("ep").ip().to_string())
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
        let c = counts(&mut RoundRobin::new(&assignment, &BTreeSet::new()), 10);
        assert_eq!(
            (c.get(&2), c.get(&3), c.get(&4)),
            (Some(&5), Some(&5), None)
        );
        // Ejecting priority 1's endpoints moves traffic to priority 2.
        let ejected = [2, 3]
            .map(|l| SocketAddr::from(([127, 0, 0, l], 80)))
            .into();
        let c = counts(&mut RoundRobin::new(&assignment, &ejected), 4);
        assert_eq!(c.get(&4), Some(&4));
        let none = la(vec![(0, vec![ep(1, 1, false)])]);
        assert!(RoundRobin::new(&none, &BTreeSet::new()).pick().is_none());
    }

    #[test]
    fn load_spills_over_to_the_next_priority_as_endpoints_fail() {
        // 4 of 5 healthy: 0.8 x 1.4 > 1, priority 0 still takes everything.
        let mostly = la(vec![
            (0, (1..=5).map(|n| ep(n, 1, n != 5)).collect()),
            (1, vec![ep(9, 1, true)]),
        ]);
        let c = counts(&mut RoundRobin::new(&mostly, &BTreeSet::new()), 100);
        assert_eq!(c.get(&9), None);
        // 2 of 5 healthy: 56 % stays, 44 % goes to priority 1.
        let half = la(vec![
            (0, (1..=5).map(|n| ep(n, 1, n <= 2)).collect()),
            (1, vec![ep(9, 1, true)]),
        ]);
        let c = counts(&mut RoundRobin::new(&half, &BTreeSet::new()), 1000);
        assert_eq!((c[&1] + c[&2], c[&9]), (560, 440));
        // Nothing healthy anywhere: no endpoint (panic is off).
        let dead = la(vec![(0, vec![ep(1, 1, false)]), (1, vec![ep(2, 1, false)])]);
        assert!(RoundRobin::new(&dead, &BTreeSet::new()).pick().is_none());
    }

    #[test]
    fn below_the_panic_threshold_every_endpoint_of_the_lowest_priority_takes_traffic() {
        let one_of_three = la(vec![(
            0,
            vec![ep(1, 1, true), ep(2, 1, false), ep(3, 1, false)],
        )]);
        let none = BTreeSet::new();
        // 1/3 healthy: health 46.7 % (x 1.4), below Envoy's default 50 %: panic.
        let c = counts(&mut RoundRobin::with_panic(&one_of_three, &none, 50.0), 30);
        assert_eq!(
            (c.get(&1), c.get(&2), c.get(&3)),
            (Some(&10), Some(&10), Some(&10))
        );
        // Threshold 0 (the mesh clusters): only the healthy endpoint.
        let c = counts(&mut RoundRobin::with_panic(&one_of_three, &none, 0.0), 30);
        assert_eq!(c.get(&1), Some(&30));
        // A healthy next priority brings the total health to 100 %: no panic; priority 0 keeps
        // the load its health covers (46.7 %), the rest spills over to priority 1.
        let with_backup = la(vec![
            (0, vec![ep(1, 1, true), ep(2, 1, false), ep(3, 1, false)]),
            (1, vec![ep(4, 1, true)]),
        ]);
        let c = counts(&mut RoundRobin::with_panic(&with_backup, &none, 50.0), 1000);
        assert_eq!(
            (c.get(&1), c.get(&2), c.get(&4)),
            (Some(&467), None, Some(&533))
        );
    }
}
