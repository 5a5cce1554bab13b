//! Power of two choices (linkerd2-proxy's balancer): two distinct endpoints drawn at random,
//! and the request goes to one of them with a probability that falls with its cost per weight
//! (peak-EWMA latency × requests in flight, see [`crate::upstream::load`]) relative to the
//! other's: within [`NOISE_BAND`] inversely proportional to it, beyond it with its square.
//!
//! linkerd compares the two costs and always takes the cheaper. On sub-millisecond estimates
//! that move on every noisy sample, a strict comparison herds: equal pods take turns at getting
//! everything, and one whose last answer was a little slow can starve for seconds (measured: of
//! three equal pods one got none of 300 requests). A plain inverse-cost split fixes that but
//! still sends a pod 50× slower than its partner 2 % of their requests, enough to set the p99.
//! So: costs up to 4× apart (what noise and a busy node make of equal pods) split inversely,
//! a pod 2× costlier still gets a third of its pairs; real slowness falls off with the square —
//! 10× costlier gets 3.8 %, 50× gets 0.16 % — and every pod keeps being sampled, so its
//! estimate stays true. An endpoint that has not answered yet costs nothing while idle: it is
//! tried before estimates decide.

use crate::upstream::Target;

/// Cost ratios up to this are treated as noise between equal endpoints.
pub const NOISE_BAND: f64 = 4.0;

/// The share of a pair's requests that goes to its costlier endpoint when it costs `ratio` (≥ 1)
/// times the other: 1 / (1 + r) up to the band, 1 / (1 + band × (r / band)²) beyond (the two
/// meet at the band, so the share falls continuously).
fn costlier_share(ratio: f64) -> f64 {
    if ratio <= NOISE_BAND {
        1.0 / (1.0 + ratio)
    } else {
        1.0 / (1.0 + NOISE_BAND * (ratio / NOISE_BAND).powi(2))
    }
}

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
            (true, true) if ca >= cb => costlier_share(ca / cb),
            (true, true) => 1.0 - costlier_share(cb / ca),
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
        // In 2 of 3 pairs, 1 / (1 + 4 × 12.5²) = 0.16 % of the time: ~1 of 1,000 (< 10 by far).
        let s = shares(&c, cost, 1000);
        assert!(s.get(&3).copied().unwrap_or(0) < 10, "{s:?}");
        // Of two at a cost ratio of 3 (inside the noise band), the cheaper takes 3/4
        // (3,000 ± 5 sd ≈ 137 of 4,000).
        let c = Choices::new(vec![(t(1), 1), (t(2), 1)]);
        let s = shares(&c, |x| if *x == t(2) { 3.0 } else { 1.0 }, 4000);
        assert!((2860..=3140).contains(&s[&1]), "{s:?}");
        // At 10×, beyond it: 1 / (1 + 4 × 2.5²) = 3.8 % (152 ± 5 sd ≈ 60 of 4,000).
        let s = shares(&c, |x| if *x == t(2) { 10.0 } else { 1.0 }, 4000);
        assert!(
            (92..=212).contains(&s.get(&2).copied().unwrap_or(0)),
            "{s:?}"
        );
    }

    #[test]
    fn weights_scale_the_share_and_an_idle_endpoint_without_an_answer_is_tried_first() {
        let c = Choices::new(vec![(t(1), 3), (t(2), 1)]);
        let s = shares(&c, |_| 1.0, 4000);
        // Weight 3 at the same cost: cost per weight 1/3 against 1, so 3/4 (3,000 ± 137).
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
