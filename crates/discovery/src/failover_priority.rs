//! Istio's `failoverPriority`: endpoints that share more of the listed labels with the caller,
//! in order, come first. With N labels, an endpoint matching the caller on all N gets label
//! priority 0, on the first N-1 priority 1, ..., on none (or not on the first) priority N; a
//! label counts only when every label before it matched. `key=value` matches endpoints whose
//! label has that value, whatever the caller's. Istio's topology labels are known for every
//! endpoint and caller without being set: region, zone and subzone from the locality,
//! `topology.istio.io/network` and `topology.istio.io/cluster`.
//!
//! Alone, the label priority is the priority (Istio's: list the topology labels to keep
//! locality in the order, e.g. network first, then region and zone). With the policy's region
//! `failover` (which then may not list topology labels), it orders endpoints within the
//! locality priorities.

use std::collections::BTreeMap;

use causeway_model::{ClusterId, Locality, NetworkId};

/// What one side (the caller or an endpoint) offers for matching.
pub(crate) struct Side<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub locality: &'a Locality,
    pub network: &'a NetworkId,
    pub cluster: &'a ClusterId,
}

impl Side<'_> {
    fn value(&self, key: &str) -> Option<&str> {
        match key {
            "topology.kubernetes.io/region" => Some(&self.locality.region),
            "topology.kubernetes.io/zone" => Some(&self.locality.zone),
            "topology.istio.io/subzone" => self.locality.subzone.as_deref(),
            "topology.istio.io/network" => Some(self.network.as_str()),
            "topology.istio.io/cluster" => Some(self.cluster.as_str()),
            _ => self.labels.get(key).map(String::as_str),
        }
    }
}

/// The label priority of `endpoint` for `caller` under `labels` (the policy's list).
pub(crate) fn label_priority(labels: &[String], caller: &Side<'_>, endpoint: &Side<'_>) -> u32 {
    let mut matched = 0u32;
    for entry in labels {
        let ok = match entry.split_once('=') {
            Some((key, want)) => endpoint.value(key) == Some(want),
            None => endpoint
                .value(entry)
                .is_some_and(|v| caller.value(entry) == Some(v)),
        };
        if !ok {
            break;
        }
        matched += 1;
    }
    labels.len() as u32 - matched
}

/// The combined priority: locality first, then labels (`n` labels listed).
pub(crate) fn combine(locality_priority: u32, label_priority: u32, n: usize) -> u32 {
    locality_priority
        .saturating_mul(n as u32 + 1)
        .saturating_add(label_priority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side<'a>(
        labels: &'a BTreeMap<String, String>,
        locality: &'a Locality,
        network: &'a NetworkId,
        cluster: &'a ClusterId,
    ) -> Side<'a> {
        Side {
            labels,
            locality,
            network,
            cluster,
        }
    }

    #[test]
    fn leading_matches_count_and_a_miss_ends_the_count() {
        let net = NetworkId::new("net-a").expect("id");
        let other_net = NetworkId::new("net-b").expect("id");
        let c = ClusterId::new("a").expect("id");
        let loc: Locality = "us-east/us-east-1a".parse().expect("locality");
        let caller_labels = BTreeMap::from([("tier".to_owned(), "gold".to_owned())]);
        let caller = side(&caller_labels, &loc, &net, &c);
        let list = vec!["topology.istio.io/network".to_owned(), "tier".to_owned()];
        let gold = BTreeMap::from([("tier".to_owned(), "gold".to_owned())]);
        let none = BTreeMap::new();
        // Same network and tier: 0; same network only: 1; other network (tier ignored): 2.
        assert_eq!(
            label_priority(&list, &caller, &side(&gold, &loc, &net, &c)),
            0
        );
        assert_eq!(
            label_priority(&list, &caller, &side(&none, &loc, &net, &c)),
            1
        );
        assert_eq!(
            label_priority(&list, &caller, &side(&gold, &loc, &other_net, &c)),
            2
        );
        // key=value matches the endpoint's value whatever the caller's.
        let pinned = vec!["tier=silver".to_owned()];
        let silver = BTreeMap::from([("tier".to_owned(), "silver".to_owned())]);
        assert_eq!(
            label_priority(&pinned, &caller, &side(&silver, &loc, &net, &c)),
            0
        );
        assert_eq!(
            label_priority(&pinned, &caller, &side(&gold, &loc, &net, &c)),
            1
        );
        assert_eq!(combine(1, 2, 2), 5);
        assert_eq!(combine(0, 2, 2), 2);
    }
}
