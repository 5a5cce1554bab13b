//! Choosing an endpoint of a cluster: the lowest priority that has a healthy endpoint, then
//! smooth weighted round robin inside it (nginx's algorithm: every pick adds each endpoint's
//! weight to its credit and takes the largest, so weights 5:1:1 give a a b a c a a, not
//! a a a a a b c). State is per worker and per cluster; a new snapshot starts it afresh.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use causeway_xds::dataplane::LoadAssignmentConfig;

/// Smooth weighted round robin over one priority's endpoints.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    entries: Vec<(SocketAddr, i64, i64)>,
    total: i64,
}

impl RoundRobin {
    /// Endpoints of the lowest priority with a healthy endpoint not in `ejected`; each weight is
    /// the endpoint's times its locality's.
    pub fn new(la: &LoadAssignmentConfig, ejected: &BTreeSet<SocketAddr>) -> Self {
        let usable = |e: &causeway_xds::dataplane::EndpointConfig| {
            e.healthy && !ejected.contains(&e.address)
        };
        let priority = la
            .localities
            .iter()
            .filter(|l| l.endpoints.iter().any(usable))
            .map(|l| l.priority)
            .min();
        let mut entries = Vec::new();
        if let Some(p) = priority {
            for l in la.localities.iter().filter(|l| l.priority == p) {
                let locality_weight = i64::from(l.weight.unwrap_or(1));
                for e in l.endpoints.iter().filter(|e| usable(e)) {
                    entries.push((e.address, i64::from(e.weight) * locality_weight, 0));
                }
            }
        }
        let total = entries.iter().map(|(_, w, _)| w).sum();
        RoundRobin { entries, total }
    }

    pub fn pick(&mut self) -> Option<SocketAddr> {
        for e in &mut self.entries {
            e.2 += e.1;
        }
        // The largest credit; the first such endpoint on a tie.
        let (i, _) = self
            .entries
            .iter()
            .enumerate()
            .max_by_key(|(i, e)| (e.2, std::cmp::Reverse(*i)))?;
        self.entries[i].2 -= self.total;
        Some(self.entries[i].0)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
    /// skipping `ejected` (outlier detection, as of `epoch`).
    pub fn pick(
        &mut self,
        (generation, epoch): (u64, u64),
        cluster: &str,
        la: &LoadAssignmentConfig,
        ejected: &BTreeSet<SocketAddr>,
    ) -> Option<SocketAddr> {
        let current = self
            .by_cluster
            .get(cluster)
            .is_some_and(|(g, _)| *g == (generation, epoch));
        if !current {
            self.by_cluster.insert(
                cluster.to_owned(),
                ((generation, epoch), RoundRobin::new(la, ejected)),
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
}
