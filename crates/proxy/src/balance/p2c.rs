//! Power of two choices (linkerd2-proxy's balancer): two distinct endpoints drawn at random,
//! weighted by their load-balancing weight, and the one that costs less (peak-EWMA latency ×
//! requests in flight, see [`crate::upstream::load`]) takes the request. Drawing two rather
//! than scanning for the cheapest keeps a burst from piling onto one endpoint before its
//! estimate moves, and still avoids a slow endpoint whenever it is drawn beside a faster one.

use crate::upstream::Target;

/// One priority's usable endpoints with their cumulative weights.
#[derive(Debug, Clone)]
pub(super) struct Choices {
    endpoints: Vec<(Target, i64)>,
    /// `cumulative[i]`: the sum of the weights of endpoints 0..=i.
    cumulative: Vec<i64>,
}

impl Choices {
    pub(super) fn new(endpoints: Vec<(Target, i64)>) -> Self {
        let endpoints: Vec<(Target, i64)> = endpoints.into_iter().filter(|(_, w)| *w > 0).collect();
        let mut sum = 0;
        let cumulative = endpoints
            .iter()
            .map(|(_, w)| {
                sum += w;
                sum
            })
            .collect();
        Choices {
            endpoints,
            cumulative,
        }
    }

    /// An index drawn by weight, never `except`.
    fn draw(&self, except: Option<usize>) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let skip = except.map_or(0, |i| self.endpoints[i].1);
        if total - skip <= 0 {
            return None;
        }
        let mut at = fastrand::i64(0..total - skip);
        for (i, (_, w)) in self.endpoints.iter().enumerate() {
            if Some(i) == except {
                continue;
            }
            if at < *w {
                return Some(i);
            }
            at -= w;
        }
        None
    }

    /// The cheaper of two endpoints drawn at random (the first drawn on a tie).
    pub(super) fn pick(&self, cost: impl Fn(&Target) -> f64) -> Option<Target> {
        let a = self.draw(None)?;
        let Some(b) = self.draw(Some(a)) else {
            return Some(self.endpoints[a].0.clone());
        };
        let (ta, tb) = (&self.endpoints[a].0, &self.endpoints[b].0);
        Some(if cost(tb) < cost(ta) { tb } else { ta }.clone())
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
    fn the_costliest_of_three_is_never_picked_and_of_two_never_either() {
        let slow = t(3);
        let cost = |x: &Target| if *x == slow { 50.0 } else { 1.0 };
        let c = Choices::new(vec![(t(1), 1), (t(2), 1), (t(3), 1)]);
        let s = shares(&c, cost, 1000);
        assert_eq!(s.get(&3), None, "{s:?}");
        assert!(s[&1] > 350 && s[&2] > 350, "{s:?}");
        let c = Choices::new(vec![(t(1), 1), (t(3), 1)]);
        assert_eq!(shares(&c, cost, 200).get(&3), None);
    }

    #[test]
    fn weights_decide_how_often_an_endpoint_is_drawn() {
        let c = Choices::new(vec![(t(1), 3), (t(2), 1)]);
        let s = shares(&c, |_| 1.0, 4000);
        // Ties go to the first drawn: 3/4 of the picks (3,000 ± 5 sd ≈ 137).
        assert!((2860..=3140).contains(&s[&1]), "{s:?}");
        let one = Choices::new(vec![(t(1), 1)]);
        assert_eq!(one.pick(|_| 1.0), Some(t(1)));
        assert_eq!(Choices::new(Vec::new()).pick(|_| 1.0), None);
        assert_eq!(Choices::new(vec![(t(1), 0)]).pick(|_| 1.0), None);
    }
}
