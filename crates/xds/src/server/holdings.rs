//! What a delta proxy holds of one resource type, with every response still in flight.
//!
//! Delta xDS answers each response on its own: Envoy ACKs or NACKs every nonce, in order, and
//! the server may send the next response before the previous one is answered. So the server
//! keeps each unanswered response with the changes it carried: an ACK moves exactly those
//! changes into what the proxy has confirmed, a NACK takes them back out of what the next
//! response is diffed against (so the refused resources are sent again with the next push, once
//! fixed) and records them as rejected until a later version of each is acknowledged.
//!
//! Names are shared and versions are numbers ([`super::names`]), and what the proxy confirmed
//! is kept only where it differs from what it will hold: a settled stream keeps one map per
//! type, not two.

use std::collections::{BTreeMap, VecDeque};

use super::names::{version_digits, Name};
use crate::resources::{entry_hash, format_set_version};

/// One entry's share of the set version (the same as for its version's text).
fn share(name: &str, version: u64) -> u64 {
    entry_hash(name, version_digits(version))
}

/// Name → version, with its [`crate::resources::set_version`] kept current on every insert and
/// removal (a push then costs what it changes, not what the proxy holds).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct VersionedMap {
    map: BTreeMap<Name, u64>,
    sum: u64,
}

impl VersionedMap {
    pub(super) fn insert(&mut self, name: Name, version: u64) {
        self.sum = self.sum.wrapping_add(share(&name, version));
        if let Some(old) = self.map.insert(Name::clone(&name), version) {
            self.sum = self.sum.wrapping_sub(share(&name, old));
        }
    }

    pub(super) fn remove(&mut self, name: &str) {
        if let Some(old) = self.map.remove(name) {
            self.sum = self.sum.wrapping_sub(share(name, old));
        }
    }

    /// The version held of `name`.
    pub(super) fn get(&self, name: &str) -> Option<u64> {
        self.map.get(name).copied()
    }

    pub(super) fn contains_key(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &Name> {
        self.map.keys()
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// The set's version.
    pub(super) fn version(&self) -> String {
        format_set_version(self.sum)
    }
}

impl From<BTreeMap<Name, u64>> for VersionedMap {
    fn from(map: BTreeMap<Name, u64>) -> Self {
        let sum = map
            .iter()
            .fold(0u64, |s, (n, v)| s.wrapping_add(share(n, *v)));
        Self { map, sum }
    }
}

/// A response the proxy has not answered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pending {
    /// Its nonce.
    pub(super) nonce: String,
    /// The `system_version_info` it carried (what a NACK of it refused).
    pub(super) version: String,
    /// Name → version sent; `None` for a removal.
    pub(super) changes: BTreeMap<Name, Option<u64>>,
}

/// Responses kept per type while unanswered. Envoy answers every response, so this is only
/// reached by a client that stops answering; the oldest are then forgotten (their changes stay
/// in `known`, never confirmed).
const MAX_IN_FLIGHT: usize = 256;

/// One type's resources as a delta proxy holds them.
#[derive(Debug, Default)]
pub(super) struct Holdings {
    /// What the proxy holds once every response in flight is accepted: what the next response
    /// is diffed against.
    pub(super) known: VersionedMap,
    /// What the proxy has confirmed holding (its initial versions, then ACKs) of the names
    /// where that differs from `known` or some response in flight carries them (`None`: it
    /// holds none); every other name it has confirmed at its `known` version.
    acked_apart: BTreeMap<Name, Option<u64>>,
    /// The set version of what the proxy has confirmed, as a sum of entry hashes.
    acked_sum: u64,
    /// Unanswered responses, oldest first.
    in_flight: VecDeque<Pending>,
    /// Resources of NACKed responses at the version refused, until a later version of each is
    /// acknowledged or it is no longer wanted.
    pub(super) rejected: BTreeMap<Name, u64>,
}

impl Holdings {
    /// What a reconnecting proxy says it already has.
    pub(super) fn initial(versions: BTreeMap<Name, u64>) -> Self {
        let known = VersionedMap::from(versions);
        Self {
            acked_sum: known.sum,
            known,
            ..Self::default()
        }
    }

    /// Whether the proxy runs exactly what it was sent: nothing in flight, nothing refused.
    pub(super) fn settled(&self) -> bool {
        self.in_flight.is_empty() && self.rejected.is_empty()
    }

    /// The version the proxy has confirmed holding of `name`.
    pub(super) fn acked(&self, name: &str) -> Option<u64> {
        match self.acked_apart.get(name) {
            Some(v) => *v,
            None => self.known.get(name),
        }
    }

    /// The set version of what the proxy has confirmed.
    pub(super) fn acked_version(&self) -> String {
        format_set_version(self.acked_sum)
    }

    /// Records that the proxy confirmed `version` of `name`.
    fn confirm(&mut self, name: &Name, version: Option<u64>) {
        let old = self.acked(name);
        if let Some(old) = old {
            self.acked_sum = self.acked_sum.wrapping_sub(share(name, old));
        }
        if let Some(v) = version {
            self.acked_sum = self.acked_sum.wrapping_add(share(name, v));
        }
        self.acked_apart.insert(Name::clone(name), version);
        self.settle(name);
    }

    /// Drops `name`'s separate confirmed version once it is `known`'s and no response in
    /// flight carries it.
    fn settle(&mut self, name: &str) {
        let apart = self.acked_apart.get(name).copied();
        if apart.is_some_and(|v| v == self.known.get(name))
            && !self.in_flight.iter().any(|p| p.changes.contains_key(name))
        {
            self.acked_apart.remove(name);
        }
    }

    /// A response goes out with `changes`: returns its `system_version_info`, the version of
    /// what the proxy holds once it is accepted.
    pub(super) fn sent(&mut self, nonce: String, changes: BTreeMap<Name, Option<u64>>) -> String {
        for (name, v) in &changes {
            if !self.acked_apart.contains_key(&**name) {
                let confirmed = self.known.get(name);
                self.acked_apart.insert(Name::clone(name), confirmed);
            }
            match v {
                Some(v) => self.known.insert(Name::clone(name), *v),
                None => self.known.remove(name),
            };
        }
        let version = self.known.version();
        self.in_flight.push_back(Pending {
            nonce,
            version: version.clone(),
            changes,
        });
        while self.in_flight.len() > MAX_IN_FLIGHT {
            if let Some(dropped) = self.in_flight.pop_front() {
                tracing::debug!(nonce = %dropped.nonce, "unanswered delta response forgotten");
            }
        }
        version
    }

    fn take(&mut self, nonce: &str) -> Option<(usize, Pending)> {
        let at = self.in_flight.iter().position(|p| p.nonce == nonce)?;
        self.in_flight.remove(at).map(|p| (at, p))
    }

    /// The proxy accepted `nonce`: exactly its changes are confirmed. `None` when no response
    /// with that nonce is in flight.
    pub(super) fn ack(&mut self, nonce: &str) -> Option<Pending> {
        let (at, p) = self.take(nonce)?;
        for (name, v) in &p.changes {
            // What the proxy holds of `name` is now this response's; an answer to an older one
            // must not overwrite it.
            for older in self.in_flight.iter_mut().take(at) {
                older.changes.remove(&**name);
            }
            self.rejected.remove(&**name);
            self.confirm(name, *v);
        }
        Some(p)
    }

    /// The proxy refused `nonce`: its changes are taken back (the proxy keeps what it had) and
    /// its updates are recorded as rejected. `None` when no response with that nonce is in
    /// flight.
    pub(super) fn nack(&mut self, nonce: &str) -> Option<Pending> {
        let (at, p) = self.take(nonce)?;
        for (name, v) in &p.changes {
            if let Some(v) = v {
                self.rejected.insert(Name::clone(name), *v);
            }
            if self
                .in_flight
                .iter()
                .skip(at)
                .any(|q| q.changes.contains_key(&**name))
            {
                continue; // a newer response in flight decides what the proxy will hold
            }
            let older = self
                .in_flight
                .iter()
                .take(at)
                .rev()
                .find_map(|q| q.changes.get(&**name))
                .copied();
            match older.unwrap_or_else(|| self.acked(name)) {
                Some(v) => self.known.insert(Name::clone(name), v),
                None => self.known.remove(name),
            };
            self.settle(name);
        }
        Some(p)
    }

    /// The proxy unsubscribed from `name`: it drops it.
    pub(super) fn forget(&mut self, name: &str) {
        if let Some(old) = self.acked(name) {
            self.acked_sum = self.acked_sum.wrapping_sub(share(name, old));
        }
        self.acked_apart.remove(name);
        self.known.remove(name);
        self.rejected.remove(name);
        for p in &mut self.in_flight {
            p.changes.remove(name);
        }
    }

    /// Drops rejections that no longer matter: the resource is not wanted any more (`wanted`
    /// gives its desired version, `None` when not wanted), or what the proxy holds already is
    /// what it should (nothing will be sent to fix it).
    pub(super) fn prune_rejected(&mut self, wanted: impl Fn(&str) -> Option<u64>) {
        let known = &self.known;
        self.rejected.retain(|name, refused| match wanted(name) {
            None => false,
            Some(v) => v == *refused || known.get(name) != Some(v),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::names::{intern, version_id, version_text};
    use crate::server::sotw::version_of;

    /// A version the builders could have made, from a short tag.
    fn v(tag: &str) -> String {
        format!(
            "{:0>16}",
            tag.replace(|c: char| !c.is_ascii_hexdigit(), "f")
        )
    }

    fn changes(items: &[(&str, Option<&str>)]) -> BTreeMap<Name, Option<u64>> {
        items
            .iter()
            .map(|(n, x)| (intern(n), x.map(|x| version_id(&v(x)))))
            .collect()
    }

    fn map(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items.iter().map(|(n, x)| ((*n).to_owned(), v(x))).collect()
    }

    fn ids(items: &[(&str, &str)]) -> BTreeMap<Name, u64> {
        items
            .iter()
            .map(|(n, x)| (intern(n), version_id(&v(x))))
            .collect()
    }

    fn known(h: &Holdings) -> BTreeMap<String, String> {
        h.known
            .map
            .iter()
            .map(|(n, x)| (n.to_string(), version_text(*x)))
            .collect()
    }

    /// What the proxy confirmed, checked against its set version.
    fn acked(h: &Holdings) -> BTreeMap<String, String> {
        let mut names: Vec<&Name> = h.known.keys().collect();
        names.extend(h.acked_apart.keys());
        let out: BTreeMap<String, String> = names
            .into_iter()
            .filter_map(|n| Some((n.to_string(), version_text(h.acked(n)?))))
            .collect();
        assert_eq!(h.acked_version(), version_of(&out), "acked set version");
        out
    }

    fn rejected(h: &Holdings) -> BTreeMap<String, String> {
        h.rejected
            .iter()
            .map(|(n, x)| (n.to_string(), version_text(*x)))
            .collect()
    }

    fn two_in_flight() -> Holdings {
        let mut h = Holdings::initial(ids(&[("a", "a0"), ("b", "b0")]));
        h.sent("n1".into(), changes(&[("a", Some("a1"))]));
        h.sent("n2".into(), changes(&[("b", Some("b1"))]));
        h
    }

    #[test]
    fn nack_of_an_earlier_response_takes_back_only_its_changes() {
        let mut h = two_in_flight();
        let refused = h.nack("n1").map(|p| p.version);
        assert_eq!(refused, Some(version_of(&map(&[("a", "a1"), ("b", "b0")]))));
        assert!(h.ack("n2").is_some());
        assert_eq!(known(&h), map(&[("a", "a0"), ("b", "b1")]));
        assert_eq!(acked(&h), map(&[("a", "a0"), ("b", "b1")]));
        assert_eq!(rejected(&h), map(&[("a", "a1")]));
        assert!(!h.settled());
        // a1 is still wanted and still refused: the rejection stands.
        let id = |x: &str| version_id(&v(x));
        h.prune_rejected(|n| (n == "a").then(|| id("a1")));
        assert_eq!(h.rejected.len(), 1);
        // Fixed: a2 goes out and is accepted.
        h.prune_rejected(|n| (n == "a").then(|| id("a2")));
        h.sent("n3".into(), changes(&[("a", Some("a2"))]));
        assert!(h.ack("n3").is_some());
        assert!(h.settled());
        assert_eq!(acked(&h), map(&[("a", "a2"), ("b", "b1")]));
        assert!(h.acked_apart.is_empty(), "a settled stream keeps one map");
    }

    #[test]
    fn ack_of_an_earlier_response_confirms_exactly_its_changes() {
        let mut h = two_in_flight();
        assert!(h.ack("n1").is_some());
        assert_eq!(acked(&h), map(&[("a", "a1"), ("b", "b0")]));
        assert!(h.nack("n2").is_some());
        assert_eq!(known(&h), map(&[("a", "a1"), ("b", "b0")]));
        assert_eq!(rejected(&h), map(&[("b", "b1")]));
        assert!(h.ack("n2").is_none(), "answered once");
        assert!(h.ack("unknown").is_none());
    }

    #[test]
    fn the_newest_answer_for_a_name_wins() {
        let mut h = Holdings::initial(ids(&[("a", "a0")]));
        h.sent("n1".into(), changes(&[("a", Some("a1"))]));
        h.sent("n2".into(), changes(&[("a", Some("a2"))]));
        // Refusing the older one leaves the newer one in charge of what is expected.
        assert!(h.nack("n1").is_some());
        assert_eq!(known(&h), map(&[("a", "a2")]));
        // Refusing the newer one falls back to the older one still in flight.
        let mut h2 = Holdings::initial(ids(&[("a", "a0")]));
        h2.sent("n1".into(), changes(&[("a", Some("a1"))]));
        h2.sent("n2".into(), changes(&[("a", None)]));
        assert!(h2.nack("n2").is_some());
        assert_eq!(known(&h2), map(&[("a", "a1")]));
        assert_eq!(acked(&h2), map(&[("a", "a0")]));
        // An ACK of the newer one is not overwritten by a late ACK of the older one.
        assert!(h.ack("n2").is_some());
        let mut h3 = Holdings::initial(ids(&[("a", "a0")]));
        h3.sent("n1".into(), changes(&[("a", Some("a1"))]));
        h3.sent("n2".into(), changes(&[("a", Some("a2"))]));
        assert!(h3.ack("n2").is_some());
        assert!(h3.ack("n1").is_some());
        assert_eq!(acked(&h3), map(&[("a", "a2")]));
    }

    #[test]
    fn a_confirmed_version_equal_to_a_later_one_in_flight_is_kept_apart() {
        // a1, then a2, then a1 again: the ACK of the first leaves the proxy confirmed at a1,
        // and refusing the last must fall back to a2 (in flight) while a1 stays confirmed.
        let mut h = Holdings::initial(ids(&[("a", "a0")]));
        h.sent("n1".into(), changes(&[("a", Some("a1"))]));
        h.sent("n2".into(), changes(&[("a", Some("a2"))]));
        h.sent("n3".into(), changes(&[("a", Some("a1"))]));
        assert!(h.ack("n1").is_some());
        assert!(h.nack("n3").is_some());
        assert_eq!(known(&h), map(&[("a", "a2")]));
        assert_eq!(acked(&h), map(&[("a", "a1")]));
        assert!(h.nack("n2").is_some());
        assert_eq!(known(&h), map(&[("a", "a1")]));
        assert_eq!(acked(&h), map(&[("a", "a1")]));
    }

    #[test]
    fn unsubscribing_and_unwanted_rejections_are_forgotten() {
        let mut h = two_in_flight();
        assert!(h.nack("n1").is_some());
        h.forget("b");
        assert!(h.ack("n2").is_some());
        assert!(!acked(&h).contains_key("b"));
        h.prune_rejected(|_| None);
        assert!(h.settled());
    }

    #[test]
    fn in_flight_is_bounded() {
        let mut h = Holdings::default();
        for i in 0..(MAX_IN_FLIGHT + 10) {
            h.sent(format!("n{i}"), changes(&[("a", Some("x"))]));
        }
        assert_eq!(h.in_flight.len(), MAX_IN_FLIGHT);
        assert!(h.ack("n0").is_none(), "the oldest was forgotten");
    }
}
