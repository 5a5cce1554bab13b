//! The names views hand out: the mesh SNI of a service port, the per-endpoint SNI of a pod
//! behind its gateway, and the stable outbound slot of each service in a sidecar's block.
//! Hashes are written out (FNV-1a) so they stay the same across releases and platforms.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use causeway_model::{ClusterId, ServiceKey};

/// Mesh SNI for a service port, Istio's form with an empty subset.
pub fn sni(key: &ServiceKey, port: u16) -> String {
    format!("outbound_.{port}_._.{}", key.fqdn())
}

/// SNI of a `TrafficPolicy` subset of a service port, Istio's subset form
/// `outbound_.<port>_.<subset>_.<fqdn>`: a gateway routes it to its own cluster's endpoints of
/// the subset only.
pub fn subset_sni(key: &ServiceKey, port: u16, subset: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{}", key.fqdn())
}

/// SNI that reaches exactly one endpoint behind its cluster's east-west gateway, Istio's
/// subset slot form: `outbound_.<port>_.ep-<id>_.<fqdn>`. The id is a hash of the endpoint's
/// cluster, address and port, so callers and the gateway compute it alike from their own
/// views, it stays put while the pod does, and it fits a DNS label whatever the address.
pub fn endpoint_sni(
    key: &ServiceKey,
    port: u16,
    cluster: &ClusterId,
    address: IpAddr,
    endpoint_port: u16,
) -> String {
    format!(
        "outbound_.{port}_.ep-{:016x}_.{}",
        endpoint_id(cluster, address, endpoint_port),
        key.fqdn()
    )
}

/// FNV-1a (64 bits) over `cluster/address:port`: stable across releases and platforms.
fn endpoint_id(cluster: &ClusterId, address: IpAddr, port: u16) -> u64 {
    let text = format!("{cluster}/{}", std::net::SocketAddr::new(address, port));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Stable slots for services in an address block of `capacity` addresses: each service hashes
/// to a slot and collisions probe forward in (hash, key) order, so a service keeps its slot when
/// others come and go unless they collide with it. Used to give every service its own outbound
/// address inside a sidecar's block (and, with capture, its virtual IP).
pub fn service_slots<'a>(
    keys: impl IntoIterator<Item = &'a ServiceKey>,
    capacity: u32,
) -> BTreeMap<ServiceKey, u32> {
    let mut hashed: Vec<(u32, &ServiceKey)> = keys
        .into_iter()
        .map(|k| (slot_hash(k) % capacity.max(1), k))
        .collect();
    hashed.sort();
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (start, key) in hashed {
        if taken.len() as u32 >= capacity {
            break;
        }
        let mut slot = start;
        while taken.contains(&slot) {
            slot = (slot + 1) % capacity;
        }
        taken.insert(slot);
        out.insert(key.clone(), slot);
    }
    out
}

/// FNV-1a over `namespace/name`: stable across releases and platforms, unlike std's hasher.
fn slot_hash(key: &ServiceKey) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key
        .namespace
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(key.name.bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_snis_differ_per_endpoint_and_fit_a_dns_label() {
        let key = ServiceKey::new("shop", "cart");
        let east = ClusterId::new("east").expect("id");
        let west = ClusterId::new("west").expect("id");
        let a = IpAddr::from([10, 0, 0, 1]);
        let sni = endpoint_sni(&key, 8080, &east, a, 8080);
        assert!(sni.starts_with("outbound_.8080_.ep-"), "{sni}");
        assert!(sni.ends_with("_.cart.shop.svc.cluster.local"), "{sni}");
        assert!(
            sni.split('.').all(|l| !l.is_empty() && l.len() <= 63),
            "{sni}"
        );
        assert_eq!(sni, endpoint_sni(&key, 8080, &east, a, 8080));
        let others = [
            endpoint_sni(&key, 8080, &west, a, 8080),
            endpoint_sni(&key, 8080, &east, IpAddr::from([10, 0, 0, 2]), 8080),
            endpoint_sni(&key, 8080, &east, a, 8081),
            endpoint_sni(&key, 9090, &east, a, 8080),
        ];
        assert!(others.iter().all(|o| *o != sni), "{others:?}");
    }

    #[test]
    fn slots_are_unique_and_stable() {
        let keys: Vec<ServiceKey> = (0..50)
            .map(|i| ServiceKey::new("ns", format!("s{i}")))
            .collect();
        let slots = service_slots(keys.iter(), 64);
        let distinct: BTreeSet<_> = slots.values().collect();
        assert_eq!(distinct.len(), 50);
        assert!(slots.values().all(|s| *s < 64));
        // Adding a service moves no other service unless it collides.
        let mut more = keys.clone();
        more.push(ServiceKey::new("ns", "new"));
        let again = service_slots(more.iter(), 1 << 16);
        let before = service_slots(keys.iter(), 1 << 16);
        let moved = before
            .iter()
            .filter(|(k, s)| again.get(*k) != Some(*s))
            .count();
        assert!(moved <= 1);
        // Full block: only capacity services get slots.
        assert_eq!(service_slots(keys.iter(), 10).len(), 10);
    }
}
