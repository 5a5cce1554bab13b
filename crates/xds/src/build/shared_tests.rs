use super::*;
use causeway_model::{Service, ServiceKey};
use proptest::prelude::*;

fn entry(name: &str) -> Arc<ClusterService> {
    Arc::new(ClusterService {
        service: Service {
            key: ServiceKey::new("ns", name),
            ports: Vec::new(),
            selector: None,
            headless: false,
            cluster_local: false,
            source: Default::default(),
        },
        export: None,
        cluster_local: false,
        ports: Vec::new(),
    })
}

proptest! {
    /// The walk in key order finds exactly the keys that are in one map only or whose entries
    /// are different `Arc`s: what looking each key up in the other map finds.
    #[test]
    fn changed_entries_are_the_keys_added_removed_or_replaced(
        before in proptest::collection::btree_set(0u8..24, 0..16),
        after in proptest::collection::btree_set(0u8..24, 0..16),
        replaced in proptest::collection::btree_set(0u8..24, 0..8),
    ) {
        let shared: BTreeMap<u8, Arc<ClusterService>> =
            (0u8..24).map(|i| (i, entry(&format!("s{i:02}")))).collect();
        let a: BTreeMap<ServiceKey, Arc<ClusterService>> = before
            .iter()
            .map(|i| (ServiceKey::new("ns", format!("s{i:02}")), Arc::clone(&shared[i])))
            .collect();
        let b: BTreeMap<ServiceKey, Arc<ClusterService>> = after
            .iter()
            .map(|i| {
                let e = if replaced.contains(i) { entry(&format!("s{i:02}")) } else { Arc::clone(&shared[i]) };
                (ServiceKey::new("ns", format!("s{i:02}")), e)
            })
            .collect();
        let mut found = BTreeSet::new();
        changed_entries(&a, &b, &mut found);
        let expected: BTreeSet<ServiceKey> = before
            .symmetric_difference(&after)
            .chain(before.intersection(&after).filter(|i| replaced.contains(*i)))
            .map(|i| ServiceKey::new("ns", format!("s{i:02}")))
            .collect();
        prop_assert_eq!(found, expected);
    }
}
