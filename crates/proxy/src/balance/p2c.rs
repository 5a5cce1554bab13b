//! Power of two choices (linkerd2-proxy's balancer): two distinct endpoints drawn at random,
//! and the request goes to one of them with a probability inversely proportional to its cost
//! per weight (peak-EWMA latency × requests in flight, see [`crate::upstream::load`]).
//!
//! linkerd compares the two costs and always takes the cheaper. On sub-millisecond estimates
//! that moves on every noisy sample, a strict comparison herds: equal pods take turns at
//! getting everything, and one whose last answer was a little slow can starve for seconds. The
//! inverse-cost split keeps what P2C is for — a pod 50× slower than its partner gets 2 % of
//! their requests, a burst never piles onto one endpoint — while equal pods share evenly and
//! every pod keeps being sampled, so its estimate stays true. An endpoint that has not
//! answered yet costs nothing while idle: it is tried before estimates decide.

use crate::upstream::Target;

/// One priority's usable endpoints with their weights.
#[derive(Debug, Clone)]
pub(super) struct Choices {
    endpoints: Vec<(Target, i64)>,
}

impl Choices {
    pub(super) fn new(endpoints: Vec<(Target, i64)>) -> Self {
        let endpoints = endpoints.into_iter().filter(|(_, w)| *w > 0).collect();
        Choices { endpoints }
    }

    /// One of two endpoints drawn at random: each with a probability inversely proportional
    /// to its cost per weight (an idle endpoint costing nothing is taken at once).
    pub(super) fn pick(&self, cost: impl Fn(&Target) -> f64) -> Option<Target> {
        let n = self.endpoints.len();
        if n <= 1 {
            return self.endpoints.first().map(|(t, _)| t.clone());
        }
        let a = fastrand::usize(0..n);
        let b = (a + 1 + fastrand::usize(0..n - 1)) % n;
        let (ta, wa) = &self.endpoints[a];
        let (tb, wb) = &self.endpoints[b];
        // Per weight: a weight-2 endpoint at the same latency takes twice the requests.
        let (ca, cb) = (cost(ta) / *wa as f64, cost(tb) / *wb as f64);
        let share_a = match (ca > 0.0, cb > 0.0) {
            (true, true) => cb / (ca + cb),
            (false, true) => 1.0,
            (true, false) => 0.0,
            (false, false) => *wa as f64 / (*wa + *wb) as f64,
        };
        Some(if fastrand::f64() < share_a { ta } else { tb }.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn t(n: u8) -> Target {
        Target::at(SocketAddr::from(([127, 0, 0, n], 80)))
    }

    fn shares(c: &Choices, cost: impl Fn(&Target) -> f64, n: usize) -> HashMap<u8, usize> {
        let mut out = HashMap::new();
        for _ in 0..n {
            let picked = c.pick(&cost).expect("an endpoint");
            let std::net::IpAddr::V4(v4) = picked.address.ip() else {
                unreachable!("the tests use IPv4")
            };
            *out.entry(v4.octets()[3]).or_default() += 1;
        }
        out
    }

    #[test]
    fn equal_costs_spread_evenly() {
        let c = Choices::new(vec![(t(1), 1), (t(2), 1), (t(3), 1)]);
        let s = shares(&c, |_| 1.0, 3000);
        // Each of three takes a third: 1,000 ± 5 standard deviations (~26).
        assert!(s.values().all(|n| (870..=1130).contains(n)), "{s:?}");
    }

    #[test]
    fn a_costlier_endpoint_gets_a_share_inverse_to_its_cost() {
        let slow = t(3);
        let cost = |x: &Target| if *x == slow { 50.0 } else { 1.0 };
        let c = Choices::new(vec![(t(1), 1), (t(2), 1), (t(3), 1)]);
        // In 2 of 3 pairs, 1/51 of the time: ~13 of 1,000 (± 5 sd ≈ 18).
        let s = shares(&c, cost, 1000);
        assert!(s.get(&3).copied().unwrap_or(0) < 35, "{s:?}");
        // Of two at a cost ratio of 3, the cheaper takes 3/4 (3,000 ± 5 sd ≈ 137 of 4,000).
        let c = Choices::new(vec![(t(1), 1), (t(2), 1)]);
        let s = shares(&c, |x| if *x == t(2) { 3.0 } else { 1.0 }, 4000);
        assert!((2860..=3140).contains(&s[&1]), "{s:?}");
    }

    #[test]
    fn weights_scale_the_share_and_an_idle_endpoint_without_an_answer_is_tried_first() {
        let c = Choices::new(vec![(t(1), 3), (t(2), 1)]);
        let s = shares(&c, |_| 1.0, 4000);
        // Weight 3 at the same cost: 3/4 (3,000 ± 5 sd ≈ 137).
        assert!((2860..=3140).contains(&s[&1]), "{s:?}");
        let fresh = t(2);
        let c = Choices::new(vec![(t(1), 1), (t(2), 1)]);
        let s = shares(&c, |x| if *x == fresh { 0.0 } else { 1.0 }, 100);
        assert_eq!(s.get(&2), Some(&100), "{s:?}");
        let one = Choices::new(vec![(t(1), 1)]);
        assert_eq!(one.pick(|_| 1.0), Some(t(1)));
        assert_eq!(Choices::new(Vec::new()).pick(|_| 1.0), None);
        assert_eq!(Choices::new(vec![(t(1), 0)]).pick(|_| 1.0), None);
    }
}
