//! The in-memory store: objects per resource, a global resource version, per-resource history
//! for watches and consistent paginated lists, and the subscribers of open watches.

mod crd;
mod meta;
mod snapshot;
mod write;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::error::ApiError;
use crate::options::ServerOptions;
use crate::resources::{self, GroupResource, ResourceSpec, ResourceType};

pub(crate) use meta::{meta_str, WriteOpts};
pub(crate) use snapshot::{ListPage, ListRequest};
pub(crate) use write::{Patch, Preconditions};

/// Namespace (`""` for cluster-scoped) and name: the key of a stored object.
pub(crate) type ObjKey = (String, String);

/// What happened to an object at one resource version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One entry of a resource's history: the object before and after the change.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub kind: ChangeType,
    pub key: ObjKey,
    /// State before the change (`None` for a create).
    pub old: Option<Arc<Value>>,
    /// State after the change; for a delete, the last state with the deletion's version.
    pub new: Arc<Value>,
}

impl Change {
    /// The object's state just before this change, i.e. at `rv - 1`.
    fn before(&self) -> Option<Arc<Value>> {
        self.old.clone()
    }
}

/// What a watch subscriber receives, in resource-version order.
#[derive(Debug, Clone)]
pub(crate) enum WatchMsg {
    Change(Arc<Change>),
    /// Every change up to this version has been delivered.
    Bookmark(u64),
    /// The resource is no longer served (its CRD was deleted).
    Gone,
}

/// Where a new watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchStart {
    /// Only changes after now.
    Now,
    /// Synthetic ADDED events for the current state, then changes after now.
    InitialState,
    /// Replay the history after this version, then live changes.
    After(u64),
}

/// A registered watch: what to send first, and the channel of what follows.
pub(crate) struct Subscription {
    /// Current objects, for `WatchStart::InitialState`.
    pub initial: Vec<Arc<Value>>,
    /// History after the requested version, for `WatchStart::After`.
    pub replay: Vec<Arc<Change>>,
    /// The store's resource version when the watch was registered.
    pub rv: u64,
    pub rx: UnboundedReceiver<WatchMsg>,
    /// Sender into `rx`, used to queue bookmarks in order with changes.
    pub tx: UnboundedSender<WatchMsg>,
}

/// The objects, history and watchers of one resource.
pub(crate) struct Table {
    pub ty: ResourceType,
    pub objects: BTreeMap<ObjKey, Arc<Value>>,
    pub history: VecDeque<Arc<Change>>,
    /// Versions up to and including this one have been forgotten.
    pub compacted: u64,
    watchers: Vec<UnboundedSender<WatchMsg>>,
}

impl Table {
    fn new(ty: ResourceType) -> Self {
        Self {
            ty,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            watchers: Vec::new(),
        }
    }
}

/// The whole store. Callers hold it behind one mutex; every method is synchronous and short.
pub(crate) struct Store {
    rv: u64,
    tables: BTreeMap<GroupResource, Table>,
    kinds: HashMap<(String, String), GroupResource>,
    history_limit: Option<usize>,
    next_ip: u32,
}

impl Store {
    /// A store serving the built-in and option-selected resources, at resource version 1.
    pub fn new(opts: &ServerOptions) -> Self {
        let mut store = Self {
            rv: 1,
            tables: BTreeMap::new(),
            kinds: HashMap::new(),
            history_limit: opts.history_limit,
            next_ip: 10,
        };
        for (gr, ty) in resources::initial_resources(opts) {
            store
                .kinds
                .insert((ty.group.clone(), ty.kind.clone()), gr.clone());
            store.tables.insert(gr, Table::new(ty));
        }
        store
    }

    /// The current (latest) resource version.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// All served resources.
    pub fn types(&self) -> impl Iterator<Item = &ResourceType> {
        self.tables.values().map(|t| &t.ty)
    }

    /// Serves another resource (or another version of one already served).
    pub fn serve(&mut self, spec: &ResourceSpec) {
        let gr = GroupResource::new(&spec.group, &spec.plural);
        match self.tables.get_mut(&gr) {
            Some(t) => {
                if !t.ty.serves(&spec.version) {
                    t.ty.versions.push(spec.version.clone());
                }
                t.ty.status_subresource |= spec.status_subresource;
            }
            None => {
                let ty = ResourceType::from_spec(spec);
                self.kinds
                    .insert((ty.group.clone(), ty.kind.clone()), gr.clone());
                self.tables.insert(gr, Table::new(ty));
            }
        }
    }

    /// The resource at `group/version/plural`, or 404 if not served.
    pub fn resolve(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Result<&ResourceType, ApiError> {
        self.tables
            .get(&GroupResource::new(group, plural))
            .map(|t| &t.ty)
            .filter(|t| t.serves(version))
            .ok_or_else(ApiError::not_served)
    }

    /// The resource serving `apiVersion` + `kind`, or 404.
    pub fn resolve_kind(&self, api_version: &str, kind: &str) -> Result<&ResourceType, ApiError> {
        let (group, version) = resources::split_api_version(api_version);
        let gr = self
            .kinds
            .get(&(group.to_string(), kind.to_string()))
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    format!("no matches for kind \"{kind}\" in version \"{api_version}\""),
                )
            })?;
        self.resolve(group, version, &gr.plural)
    }

    fn table(&self, gr: &GroupResource) -> Result<&Table, ApiError> {
        self.tables.get(gr).ok_or_else(ApiError::not_served)
    }

    fn table_mut(&mut self, gr: &GroupResource) -> Result<&mut Table, ApiError> {
        self.tables.get_mut(gr).ok_or_else(ApiError::not_served)
    }

    /// One object, or 404 NotFound worded as the real server.
    pub fn get(&self, gr: &GroupResource, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        let table = self.table(gr)?;
        table
            .objects
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| not_found(&table.ty, name))
    }

    /// Every object of a resource, in key order (no snapshot, no selectors).
    pub fn all(&self, gr: &GroupResource) -> Vec<Arc<Value>> {
        self.tables
            .get(gr)
            .map(|t| t.objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Records a change at the next resource version: stores it, appends it to the history
    /// and sends it to every watcher of the resource. Returns the stored object.
    fn commit(
        &mut self,
        gr: &GroupResource,
        key: ObjKey,
        kind: ChangeType,
        mut new: Value,
        old: Option<Arc<Value>>,
    ) -> Result<Arc<Value>, ApiError> {
        let rv = self.rv + 1;
        let limit = self.history_limit;
        let table = self.table_mut(gr)?;
        meta::set_resource_version(&mut new, rv);
        let new = Arc::new(new);
        match kind {
            ChangeType::Deleted => table.objects.remove(&key),
            _ => table.objects.insert(key.clone(), new.clone()),
        };
        let change = Arc::new(Change {
            rv,
            kind,
            key,
            old,
            new: new.clone(),
        });
        table.history.push_back(change.clone());
        if let Some(limit) = limit {
            while table.history.len() > limit {
                if let Some(dropped) = table.history.pop_front() {
                    table.compacted = dropped.rv;
                }
            }
        }
        table
            .watchers
            .retain(|tx| tx.send(WatchMsg::Change(change.clone())).is_ok());
        self.rv = rv;
        Ok(new)
    }

    /// Forgets all history up to the current version: older watches and continue tokens get
    /// 410 Expired.
    pub fn compact(&mut self) {
        let rv = self.rv;
        for t in self.tables.values_mut() {
            t.history.clear();
            t.compacted = rv;
        }
    }

    /// Registers a watch on `gr` starting at `start`.
    pub fn subscribe(
        &mut self,
        gr: &GroupResource,
        ns: Option<&str>,
        start: WatchStart,
    ) -> Result<Subscription, ApiError> {
        let rv = self.rv;
        let table = self.table_mut(gr)?;
        let mut initial = Vec::new();
        let mut replay = Vec::new();
        match start {
            WatchStart::Now => {}
            WatchStart::InitialState => {
                initial = snapshot::range(&table.objects, ns)
                    .map(|(_, v)| v.clone())
                    .collect();
            }
            WatchStart::After(from) => {
                if from < table.compacted {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {from} ({})",
                        table.compacted + 1
                    )));
                }
                let first = table.history.partition_point(|c| c.rv <= from);
                replay = table.history.range(first..).cloned().collect();
            }
        }
        let (tx, rx) = unbounded_channel();
        table.watchers.push(tx.clone());
        Ok(Subscription {
            initial,
            replay,
            rv,
            rx,
            tx,
        })
    }

    /// Queues a bookmark at the current version into one watcher's channel, after every change
    /// already sent to it.
    pub fn bookmark(&self, tx: &UnboundedSender<WatchMsg>) {
        // A closed channel means the watch has ended; nothing to do.
        let _ = tx.send(WatchMsg::Bookmark(self.rv));
    }

    /// Number of watch streams still open.
    pub fn open_watches(&self) -> usize {
        self.tables
            .values()
            .map(|t| t.watchers.iter().filter(|tx| !tx.is_closed()).count())
            .sum()
    }

    /// Removes a resource defined by a CRD, deleting its objects and ending its watches.
    fn unserve(&mut self, gr: &GroupResource) -> Result<(), ApiError> {
        let keys: Vec<ObjKey> = self.table(gr)?.objects.keys().cloned().collect();
        for key in keys {
            self.delete_key(gr, &key)?;
        }
        if let Some(table) = self.tables.remove(gr) {
            self.kinds
                .remove(&(table.ty.group.clone(), table.ty.kind.clone()));
            for tx in table.watchers {
                let _ = tx.send(WatchMsg::Gone);
            }
        }
        Ok(())
    }

    /// Deletes one object by key, emitting DELETED with the deletion's version.
    fn delete_key(&mut self, gr: &GroupResource, key: &ObjKey) -> Result<Arc<Value>, ApiError> {
        let table = self.table(gr)?;
        let old = table
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| not_found(&table.ty, &key.1))?;
        let last = (*old).clone();
        self.commit(gr, key.clone(), ChangeType::Deleted, last, Some(old))
    }
}

/// `pods "x" not found`, with details, as the real server words it.
pub(crate) fn not_found(ty: &ResourceType, name: &str) -> ApiError {
    let what = GroupResource::new(&ty.group, &ty.plural).qualified();
    ApiError::new(404, "NotFound", format!("{what} \"{name}\" not found"))
        .with_details(&ty.group, &ty.plural, name)
}

#[cfg(test)]
mod tests;
