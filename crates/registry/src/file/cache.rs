//! Cluster files as last parsed, so that reloading a cluster reparses only the files whose text
//! changed: a cluster of a thousand files then reloads in the time it takes to read them, not to
//! parse them (parsing YAML was 2.5 s of every one-endpoint change in `bench/xds-scale`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use causeway_model::{
    AuthorizationPolicy, ClusterObjects, EndpointSlice, ObjectSource, Service, ServiceExport,
    ServiceKey, WorkloadEntry,
};

use super::cluster::parse_cluster_documents;
use crate::error::LoadError;

/// What `stat` tells of a file: while it is the same, the file is not read again, unless it
/// was modified within [`RACY_WINDOW`] of being read (a second write within the file system's
/// timestamp granularity would leave the stamp as it was; git treats its index the same way).
/// A rename onto the file changes the inode; a symbolic link is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    modified: SystemTime,
    inode: u64,
    device: u64,
}

/// How long after its last modification a stamp is trusted.
const RACY_WINDOW: Duration = Duration::from_secs(2);

impl Stamp {
    /// The stamp of a file's metadata (`None` where the platform gives no modification time).
    pub fn of(meta: &std::fs::Metadata) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        Some(Self {
            len: meta.len(),
            modified: meta.modified().ok()?,
            inode: meta.ino(),
            device: meta.dev(),
        })
    }
}

/// One file's parse, keyed by a hash of its text.
#[derive(Debug, Clone)]
struct ParsedFile {
    text_hash: u64,
    text_len: usize,
    /// Its stamp when read, if it may be trusted to tell the file did not change.
    stamp: Option<Stamp>,
    objects: FileObjects,
    errors: Vec<LoadError>,
}

/// One file's objects in key order, each kind in a slice of its exact length: a file holds a
/// handful, where a B-tree map's first node has room for eleven (keeping the files of
/// `bench/xds-scale`'s 20,000 as maps cost 170 MB of empty slots).
#[derive(Debug, Clone, Default)]
struct FileObjects {
    services: Box<[(ServiceKey, Service)]>,
    workload_entries: Box<[((String, String), WorkloadEntry)]>,
    endpoint_slices: Box<[((String, String), EndpointSlice)]>,
    exports: Box<[(ServiceKey, ServiceExport)]>,
    policies: Box<[((String, String), AuthorizationPolicy)]>,
}

impl From<ClusterObjects> for FileObjects {
    fn from(o: ClusterObjects) -> Self {
        // Every field named, so a new kind of object cannot be dropped here unnoticed. A
        // cluster file has no TrafficPolicies: the mesh directory's are mesh-wide
        // (`ClusterObjects::traffic_policies` is for Kubernetes clusters).
        let ClusterObjects {
            services,
            workload_entries,
            endpoint_slices,
            exports,
            policies,
            traffic_policies: _,
        } = o;
        Self {
            services: services.into_iter().collect(),
            workload_entries: workload_entries.into_iter().collect(),
            endpoint_slices: endpoint_slices.into_iter().collect(),
            exports: exports.into_iter().collect(),
            policies: policies.into_iter().collect(),
        }
    }
}

/// Parsed cluster files by cluster directory, then path (relative to the mesh directory).
#[derive(Debug, Default)]
pub struct FileCache {
    dirs: HashMap<PathBuf, HashMap<PathBuf, ParsedFile>>,
}

/// FNV-1a 64 of a file's text: the cache key (the text is read anyway; only parsing is saved).
fn text_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl FileCache {
    /// Whether file `rel` is known unchanged from its stamp alone (then it need not be read).
    pub fn known(&self, rel: &Path, stamp: Option<Stamp>) -> bool {
        let dir = rel.parent().unwrap_or(Path::new(""));
        stamp.is_some()
            && self
                .dirs
                .get(dir)
                .and_then(|files| files.get(rel))
                .is_some_and(|p| p.stamp == stamp)
    }

    /// Whether `files` (path and text, `None` for a file [`FileCache::known`] unchanged; the
    /// whole directory `dir`) are exactly what the cache last parsed of `dir`: then nothing
    /// in the cluster changed.
    pub fn unchanged(
        &self,
        dir: &Path,
        files: &[(PathBuf, Option<String>, Option<Stamp>)],
    ) -> bool {
        let Some(cached) = self.dirs.get(dir) else {
            return false;
        };
        cached.len() == files.len()
            && files.iter().all(|(rel, text, _)| {
                cached.get(rel).is_some_and(|p| match text {
                    None => true,
                    Some(text) => p.text_len == text.len() && p.text_hash == text_hash(text),
                })
            })
    }

    /// Adds the objects of file `rel` to `into`, parsing it only when its text (`None`: known
    /// unchanged) changed since the last call; `stamp` is its stamp when read. Duplicates
    /// across files are errors, as within one file.
    pub fn merge_file(
        &mut self,
        rel: &Path,
        text: Option<&str>,
        stamp: Option<Stamp>,
        into: &mut ClusterObjects,
        errors: &mut Vec<LoadError>,
    ) {
        let dir = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let files = self.dirs.entry(dir).or_default();
        if let Some(text) = text {
            let hash = text_hash(text);
            // Trusted from the next reload on only once the file has been still for a while.
            let settled = stamp.filter(|s| {
                s.modified
                    .checked_add(RACY_WINDOW)
                    .is_some_and(|t| t <= SystemTime::now())
            });
            match files.get_mut(rel) {
                Some(p) if p.text_hash == hash && p.text_len == text.len() => p.stamp = settled,
                _ => {
                    let mut objects = ClusterObjects::default();
                    let mut file_errors = Vec::new();
                    parse_cluster_documents(rel, text, &mut objects, &mut file_errors);
                    files.insert(
                        rel.to_path_buf(),
                        ParsedFile {
                            text_hash: hash,
                            text_len: text.len(),
                            stamp: settled,
                            objects: objects.into(),
                            errors: file_errors,
                        },
                    );
                }
            }
        }
        let Some(parsed) = files.get(rel) else {
            return;
        };
        errors.extend(parsed.errors.iter().cloned());
        let o = &parsed.objects;
        merge(
            &mut into.services,
            &o.services,
            |v| &v.source,
            |k| format!("Service {k}"),
            errors,
        );
        merge(
            &mut into.workload_entries,
            &o.workload_entries,
            |v| &v.source,
            |k| format!("WorkloadEntry {}/{}", k.0, k.1),
            errors,
        );
        merge(
            &mut into.endpoint_slices,
            &o.endpoint_slices,
            |v| &v.source,
            |k| format!("EndpointSlice {}/{}", k.0, k.1),
            errors,
        );
        merge(
            &mut into.exports,
            &o.exports,
            |v| &v.source,
            |k| format!("ServiceExport {k}"),
            errors,
        );
        merge(
            &mut into.policies,
            &o.policies,
            |v| &v.source,
            |k| format!("AuthorizationPolicy {}/{}", k.0, k.1),
            errors,
        );
    }

    /// Forgets the files of `dir` (relative) not in `keep`.
    pub fn retain_dir(&mut self, dir: &Path, keep: &[PathBuf]) {
        let keep: std::collections::HashSet<&PathBuf> = keep.iter().collect();
        if let Some(files) = self.dirs.get_mut(dir) {
            files.retain(|path, _| keep.contains(path));
        }
    }
}

/// Adds `from` into `into`; a key already there is a duplicate, reported where the second is.
fn merge<K: Ord + Clone, V: Clone>(
    into: &mut BTreeMap<K, V>,
    from: &[(K, V)],
    source: impl Fn(&V) -> &ObjectSource,
    name: impl Fn(&K) -> String,
    errors: &mut Vec<LoadError>,
) {
    for (k, v) in from {
        if let Some(first) = into.get(k) {
            let second = source(v);
            errors.push(LoadError {
                file: second.file.clone(),
                document: Some(second.document),
                line: Some(second.line),
                object: Some(name(k)),
                field: Some("metadata.name".into()),
                reason: format!("duplicate object; first declared at {}", source(first)),
            });
        } else {
            into.insert(k.clone(), v.clone());
        }
    }
}
