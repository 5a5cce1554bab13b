//! A proxy's resources by type and name, each with a content version, ready to diff and send.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use serde::Serialize;

/// The resource types Causeway serves over ADS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum TypeUrl {
    /// CDS.
    Cluster,
    /// EDS.
    ClusterLoadAssignment,
    /// LDS.
    Listener,
}

impl TypeUrl {
    /// Push order: clusters before their endpoints, listeners last (Envoy's ADS guidance).
    pub const ORDER: [TypeUrl; 3] = [
        TypeUrl::Cluster,
        TypeUrl::ClusterLoadAssignment,
        TypeUrl::Listener,
    ];

    /// The type URL on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
        }
    }

    /// Parses a wire type URL.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ORDER.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether a state-of-the-world response must carry every resource of the type (LDS and
    /// CDS); for EDS only the changed ones are sent.
    pub fn full_state(self) -> bool {
        !matches!(self, TypeUrl::ClusterLoadAssignment)
    }

    /// Short name for logs and metrics.
    pub fn short(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "cds",
            TypeUrl::ClusterLoadAssignment => "eds",
            TypeUrl::Listener => "lds",
        }
    }
}

/// One resource with its content version.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Hash of what the resource is built from, as 16 hex digits: changes exactly when the
    /// content does.
    pub version: String,
    /// The encoded resource (shared: caches, pushes and responses in flight hold it without
    /// copying).
    pub body: Arc<Any>,
    /// The version as a number ([`version_id`]; `version` is its digits).
    id: u64,
}

impl Resource {
    /// A resource whose version is `id`.
    pub fn new(id: u64, body: Any) -> Self {
        Self {
            version: format!("{id:016x}"),
            body: Arc::new(body),
            id,
        }
    }

    /// The version as a number ([`version_id`]).
    pub fn version_id(&self) -> u64 {
        self.id
    }
}

/// Every resource of a proxy, by type then name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// Resources.
    pub by_type: BTreeMap<TypeUrl, BTreeMap<String, Resource>>,
}

/// The names and versions of what one builder call made (a service's resources), in type
/// then name order: what a cache needs to tell what a rebuild changed, kept as one slice
/// (a map per type per service cost a B-tree node each, room for eleven entries where a
/// service has one to three: 2.5 KB per service in every class in `bench/xds-scale`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Made(Box<[(TypeUrl, String, u64)]>);

impl Made {
    /// Every entry of `resources`.
    pub fn of(resources: &Resources) -> Self {
        Self(
            resources
                .by_type
                .iter()
                .flat_map(|(t, m)| m.iter().map(|(n, r)| (*t, n.clone(), r.version_id())))
                .collect(),
        )
    }

    /// The version made of `name` of type `t`, if it was (entries are in (type, name) order,
    /// as `of` walks the maps, so a lookup per rebuilt resource is a binary search).
    pub fn version(&self, t: TypeUrl, name: &str) -> Option<u64> {
        self.0
            .binary_search_by(|(et, en, _)| (*et, en.as_str()).cmp(&(t, name)))
            .ok()
            .map(|i| self.0[i].2)
    }

    /// Every (type, name, version).
    pub fn iter(&self) -> impl Iterator<Item = &(TypeUrl, String, u64)> {
        self.0.iter()
    }
}

/// Bump when resource builders change what they emit for the same inputs.
pub const RESOURCE_SCHEMA: u32 = 4;

/// A resource version as a number: the value of its 16 hex digits (every version the builders
/// make), else a hash of the text (a version a reconnecting proxy reports that this server did
/// not make; it equals none of ours, so the resource is sent again).
pub fn version_id(version: &str) -> u64 {
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if version.len() == 16 && version.bytes().all(lower_hex) {
        if let Ok(v) = u64::from_str_radix(version, 16) {
            return v;
        }
    }
    content_hash(version.as_bytes())
}

/// FNV-1a 64 over bytes: a stable content hash for versions.
pub fn content_hash(bytes: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET, bytes)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 continued from `h` (it hashes a byte at a time, so parts can be hashed in turn
/// without joining them first).
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Resources {
    /// Adds a resource whose version is the hash of `inputs`: everything the resource is built
    /// from, in a deterministic serialization. (Hashing the encoded resource would not do:
    /// protobuf maps encode in hash-map order, which differs between builds of equal content.)
    pub fn insert(&mut self, type_url: TypeUrl, name: &str, body: Any, inputs: &impl Serialize) {
        let encoded = serde_json::to_vec(inputs).unwrap_or_else(|_| body.value.clone());
        // The builder's own version is an input too: a control plane with new resource
        // builders must not look unchanged to proxies that reconnect with cached versions.
        let mut bytes =
            format!("{}/{RESOURCE_SCHEMA}/{name}", env!("CARGO_PKG_VERSION")).into_bytes();
        bytes.extend_from_slice(&encoded);
        self.by_type
            .entry(type_url)
            .or_default()
            .insert(name.to_owned(), Resource::new(content_hash(&bytes), body));
    }

    /// Adds every resource of `other`.
    pub fn extend(&mut self, other: &Resources) {
        for (t, map) in &other.by_type {
            let into = self.by_type.entry(*t).or_default();
            for (name, r) in map {
                into.insert(name.clone(), r.clone());
            }
        }
    }

    /// Resources of one type.
    pub fn of(&self, type_url: TypeUrl) -> Option<&BTreeMap<String, Resource>> {
        self.by_type.get(&type_url)
    }

    /// A version for the whole set of one type (state-of-the-world `version_info`).
    pub fn type_version(&self, type_url: TypeUrl) -> String {
        set_version(
            self.of(type_url)
                .into_iter()
                .flatten()
                .map(|(name, r)| (name.as_str(), r.version.as_str())),
        )
    }
}

/// A version for a set of resources given as `(name, version)`: what a proxy holds of one
/// type, as the server reports it (`/debug/proxies`) and sends it as `version_info`. The sum of
/// each entry's hash, so it does not depend on order and a server can keep it current as
/// single resources come and go ([`entry_hash`]) instead of rehashing every name per push.
pub fn set_version<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    format_set_version(
        entries
            .into_iter()
            .fold(0u64, |sum, (n, v)| sum.wrapping_add(entry_hash(n, v))),
    )
}

/// One entry's share of [`set_version`]: the hash of `name`, a zero byte and the version's
/// text. Pushes call it for every changed resource, so it hashes the parts in turn rather than
/// allocating their concatenation.
pub fn entry_hash(name: &str, version: impl AsRef<[u8]>) -> u64 {
    let h = fnv1a(FNV_OFFSET, name.as_bytes());
    fnv1a(fnv1a(h, &[0]), version.as_ref())
}

/// [`set_version`] from a sum of [`entry_hash`]es.
pub fn format_set_version(sum: u64) -> String {
    format!("{sum:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_hash_is_the_content_hash_of_name_zero_version() {
        // Set versions reported before entries were hashed in parts stay equal.
        let joined = b"outbound|80||echo.demo\x0000ab00cd00ef0012";
        assert_eq!(
            entry_hash("outbound|80||echo.demo", "00ab00cd00ef0012"),
            content_hash(joined)
        );
        assert_ne!(entry_hash("a", "bc"), entry_hash("ab", "c"));
    }
}
