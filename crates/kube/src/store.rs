//! One watched kind's records, fed by a kube-rs watcher: `InitApply` events are buffered until
//! `InitDone` and then swapped in at once (kube-rs's reflector pattern), so a re-list never
//! shows an empty or half-listed state, and objects deleted while the watch was down are gone
//! after it (no ghosts).

use std::collections::BTreeMap;

use crate::translate::TranslateError;

/// Key of an object: (namespace, name); the namespace is empty for cluster-scoped kinds.
pub type ObjectKey = (String, String);

/// What happened to one object, already translated.
#[derive(Debug)]
pub enum Change<R> {
    /// A re-list starts.
    Init,
    /// An object of the re-list.
    InitApply(ObjectKey, Result<Option<R>, TranslateError>),
    /// The re-list is complete.
    InitDone,
    /// Added or modified.
    Apply(ObjectKey, Result<Option<R>, TranslateError>),
    /// Deleted.
    Delete(ObjectKey),
}

/// Records of one kind.
#[derive(Debug)]
pub struct KindStore<R> {
    items: BTreeMap<ObjectKey, R>,
    errors: BTreeMap<ObjectKey, TranslateError>,
    buffer: Option<(BTreeMap<ObjectKey, R>, BTreeMap<ObjectKey, TranslateError>)>,
    synced: bool,
}

impl<R> Default for KindStore<R> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            errors: BTreeMap::new(),
            buffer: None,
            synced: false,
        }
    }
}

impl<R: PartialEq + Clone> KindStore<R> {
    /// A store for a kind the cluster does not serve: synced and empty.
    pub fn absent() -> Self {
        Self {
            synced: true,
            ..Self::default()
        }
    }

    /// Whether a complete list has been seen.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The current records.
    pub fn items(&self) -> &BTreeMap<ObjectKey, R> {
        &self.items
    }

    /// Objects that could not be translated (left out).
    pub fn errors(&self) -> impl Iterator<Item = &TranslateError> {
        self.errors.values()
    }

    /// Applies one change; returns whether the published records or the reported errors
    /// changed.
    pub fn apply(&mut self, change: Change<R>) -> bool {
        match change {
            Change::Init => {
                self.buffer = Some((BTreeMap::new(), BTreeMap::new()));
                false
            }
            Change::InitApply(key, result) => {
                let (items, errors) = self.buffer.get_or_insert_with(Default::default);
                if let Err(e) = &result {
                    // Keep the last good translation of an object that turned bad.
                    if let Some(previous) = self.items.get(&key) {
                        items.insert(key.clone(), previous.clone());
                    }
                    report(e);
                    errors.insert(key, e.clone());
                } else {
                    put(items, errors, key, result);
                }
                false
            }
            Change::InitDone => {
                let (items, errors) = self.buffer.take().unwrap_or_default();
                let changed = !self.synced || items != self.items || errors != self.errors;
                self.items = items;
                self.errors = errors;
                self.synced = true;
                changed
            }
            Change::Apply(key, result) => {
                if let Err(e) = &result {
                    // Keep the last good translation of an object that turned bad.
                    report(e);
                    let changed = self.errors.get(&key) != Some(e);
                    self.errors.insert(key, e.clone());
                    return self.synced && changed;
                }
                let had_error = self.errors.contains_key(&key);
                let old = self.items.remove(&key);
                put(&mut self.items, &mut self.errors, key.clone(), result);
                self.synced && (had_error || old.as_ref() != self.items.get(&key))
            }
            Change::Delete(key) => {
                let had_error = self.errors.remove(&key).is_some();
                (self.items.remove(&key).is_some() || had_error) && self.synced
            }
        }
    }
}

fn put<R>(
    items: &mut BTreeMap<ObjectKey, R>,
    errors: &mut BTreeMap<ObjectKey, TranslateError>,
    key: ObjectKey,
    result: Result<Option<R>, TranslateError>,
) {
    match result {
        Ok(Some(record)) => {
            errors.remove(&key);
            items.insert(key, record);
        }
        Ok(None) => {
            errors.remove(&key);
            items.remove(&key);
        }
        Err(e) => {
            report(&e);
            errors.insert(key, e);
        }
    }
}

fn report(e: &TranslateError) {
    tracing::warn!(cluster = %e.cluster, error = %e, "object rejected; its last good state (if any) stays");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> ObjectKey {
        ("ns".into(), n.into())
    }

    #[test]
    fn relist_swaps_at_init_done_and_drops_objects_deleted_meanwhile() {
        let mut store: KindStore<u32> = KindStore::default();
        assert!(!store.apply(Change::Init));
        store.apply(Change::InitApply(key("a"), Ok(Some(1))));
        store.apply(Change::InitApply(key("b"), Ok(Some(2))));
        assert!(!store.synced());
        assert!(store.apply(Change::InitDone));
        assert_eq!(store.items().len(), 2);

        // A re-list (e.g. after 410 Gone) in which b no longer exists.
        store.apply(Change::Init);
        store.apply(Change::InitApply(key("a"), Ok(Some(1))));
        assert_eq!(store.items().len(), 2, "old state kept until InitDone");
        assert!(store.apply(Change::InitDone));
        assert_eq!(store.items().keys().collect::<Vec<_>>(), vec![&key("a")]);

        // An identical re-list changes nothing.
        store.apply(Change::Init);
        store.apply(Change::InitApply(key("a"), Ok(Some(1))));
        assert!(!store.apply(Change::InitDone));
    }

    #[test]
    fn a_bad_update_keeps_the_last_good_record() {
        let mut store: KindStore<u32> = KindStore::default();
        store.apply(Change::Init);
        store.apply(Change::InitApply(key("a"), Ok(Some(1))));
        store.apply(Change::InitDone);
        let bad = || {
            Err(TranslateError {
                cluster: causeway_model::ClusterId::new("c").expect("id"),
                kind: "Service",
                object: "ns/a".into(),
                field: "spec.ports[0].port".into(),
                reason: "bad".into(),
            })
        };
        assert!(
            store.apply(Change::Apply(key("a"), bad())),
            "the error is news"
        );
        assert!(
            !store.apply(Change::Apply(key("a"), bad())),
            "the same error again is not"
        );
        assert_eq!(store.items().get(&key("a")), Some(&1));
        assert_eq!(store.errors().count(), 1);
        store.apply(Change::Init);
        store.apply(Change::InitApply(key("a"), bad()));
        store.apply(Change::InitDone);
        assert_eq!(
            store.items().get(&key("a")),
            Some(&1),
            "kept across a re-list"
        );
        assert!(store.apply(Change::Apply(key("a"), Ok(Some(3)))));
        assert_eq!(store.errors().count(), 0);
    }

    #[test]
    fn apply_and_delete_report_changes() {
        let mut store: KindStore<u32> = KindStore::default();
        store.apply(Change::Init);
        store.apply(Change::InitDone);
        assert!(store.apply(Change::Apply(key("a"), Ok(Some(1)))));
        assert!(!store.apply(Change::Apply(key("a"), Ok(Some(1)))));
        assert!(store.apply(Change::Apply(key("a"), Ok(Some(2)))));
        assert!(store.apply(Change::Delete(key("a"))));
        assert!(!store.apply(Change::Delete(key("a"))));
    }
}
