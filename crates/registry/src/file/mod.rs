//! Parsing and validating mesh directory files into model types.
//!
//! - [`documents`]: splitting a YAML stream into documents that remember their file and line,
//!   and reading each one's type;
//! - [`mesh`]: `mesh.yaml` (one `Mesh`, one `Cluster` per member, any `TrafficPolicy`);
//! - [`policies`]: the `TrafficPolicy` files under `policies/`, and the checks across every
//!   traffic policy of the mesh;
//! - [`cluster`]: one file of a cluster directory, dispatched by kind to [`objects`] (Service,
//!   WorkloadEntry, EndpointSlice, ServiceExport, AuthorizationPolicy; and TrafficPolicy, for
//!   `mesh.yaml` and `policies/`);
//! - [`fields`]: parsers of fields several kinds share (names, addresses, localities,
//!   credential paths);
//! - this module: the annotation and label names, and reading the files from disk.
// Parse errors are the cold path of reading configuration files, and carrying the full
// location in the error keeps every call site simple; boxing would buy nothing measurable.
#![allow(clippy::result_large_err)]

mod cache;
mod cluster;
mod documents;
mod fields;
mod mesh;
mod objects;
mod policies;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use causeway_model::{ClusterObjects, MeshConfig, TrafficPolicy};

use crate::LoadError;

pub use cache::{FileCache, Stamp};
pub use cluster::parse_cluster_documents;
pub use mesh::parse_mesh_documents;
pub use objects::{policy_from_spec, traffic_policy_from_spec};
pub use policies::{check_traffic_policies, POLICIES_DIR};

/// Annotation on a Service: `"true"` keeps it in its cluster.
pub const CLUSTER_LOCAL_ANNOTATION: &str = "causeway.io/cluster-local";
/// Annotation on a ServiceExport: comma-separated cluster ids that alone may import it. An
/// annotation, not a spec field, so the object stays valid under the upstream MCS CRD schema
/// (which prunes unknown fields).
pub const EXPORT_TO_ANNOTATION: &str = "causeway.io/export-to";
/// Annotation on an EndpointSlice naming the service account of its endpoints.
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "causeway.io/service-account";
/// Annotation on a WorkloadEntry: milliseconds the demo's sample app waits before each
/// response (0-60000). For `causeway demo` only; nothing else reads it.
pub const DEMO_DELAY_ANNOTATION: &str = "causeway.io/demo-delay-ms";
/// Annotation on a WorkloadEntry: HTTP status (100-599) of every response of the demo's sample
/// app. For `causeway demo` only; nothing else reads it.
pub const DEMO_STATUS_ANNOTATION: &str = "causeway.io/demo-status";
/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

const CAUSEWAY_API: &str = "causeway.io/v1alpha1";

/// Largest mesh-directory file read (bytes). Files are parsed whole, so this bounds the memory
/// one file can take; it is far above what a cluster of 100,000 endpoints needs in one file,
/// and a cluster directory may hold any number of files.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Reads a file as UTF-8, refusing it past `limit` bytes (read through a bounded reader, so a
/// file that grows while being read is refused too).
fn read_limited(path: &Path, limit: u64) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "larger than {} MiB; split it into several files",
            limit / (1024 * 1024)
        ));
    }
    String::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 (at byte {})", e.utf8_error().valid_up_to()))
}

/// Reads and parses `<root>/mesh.yaml`.
pub fn load_mesh_file(root: &Path) -> Result<MeshConfig, Vec<LoadError>> {
    let rel = PathBuf::from("mesh.yaml");
    let text = read_limited(&root.join(&rel), MAX_FILE_BYTES)
        .map_err(|e| vec![LoadError::file(&rel, e)])?;
    parse_mesh_documents(&rel, &text)
}

/// Reads the mesh scope: `<root>/mesh.yaml` and every policy file under `<root>/policies/`.
/// It loads as one: any error (in either, or between policies of both) fails it whole, with
/// every error.
pub(crate) fn load_mesh_scope(
    root: &Path,
) -> Result<(MeshConfig, Vec<TrafficPolicy>), Vec<LoadError>> {
    let rel = PathBuf::from("mesh.yaml");
    let (config, mut traffic_policies, mut errors) =
        match read_limited(&root.join(&rel), MAX_FILE_BYTES) {
            Ok(text) => {
                let file = mesh::parse_mesh_file(&rel, &text);
                (file.config, file.traffic_policies, file.errors)
            }
            Err(e) => (None, Vec::new(), vec![LoadError::file(&rel, e)]),
        };
    policies::load_policies_dir(root, &mut traffic_policies, &mut errors);
    errors.extend(policies::check_traffic_policies(&traffic_policies));
    match config {
        Some(mut config) if errors.is_empty() => {
            config.traffic_policies = traffic_policies.clone();
            Ok((config, traffic_policies))
        }
        _ => Err(errors),
    }
}

/// Reads and parses every `*.yaml`/`*.yml` file of `<root>/clusters/<dir_name>/`, in name order.
/// A missing directory is a cluster with no objects.
pub fn load_cluster_dir(root: &Path, dir_name: &str) -> Result<ClusterObjects, Vec<LoadError>> {
    load_cluster_dir_cached(root, dir_name, &mut FileCache::default())
        .unwrap_or_else(|| Ok(ClusterObjects::default()))
}

/// [`load_cluster_dir`], reparsing only the files whose text changed since `cache` saw them;
/// `None` when no file of the directory changed at all (the last result stands).
pub fn load_cluster_dir_cached(
    root: &Path,
    dir_name: &str,
    cache: &mut FileCache,
) -> Option<Result<ClusterObjects, Vec<LoadError>>> {
    let rel_dir = Path::new("clusters").join(dir_name);
    let dir = root.join(&rel_dir);
    let mut objects = ClusterObjects::default();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            cache.retain_dir(&rel_dir, &[]);
            return Some(Ok(objects));
        }
        Err(e) => {
            return Some(Err(vec![LoadError::file(
                &rel_dir,
                format!("cannot read directory: {e}"),
            )]))
        }
    };
    let mut files: BTreeMap<String, (PathBuf, Option<Stamp>)> = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if !is_yaml || name.starts_with('.') {
            continue;
        }
        // Following symbolic links (a mounted ConfigMap's files are links).
        let path = entry.path();
        if let Some(meta) = std::fs::metadata(&path)
            .ok()
            .filter(std::fs::Metadata::is_file)
        {
            files.insert(name, (path, Stamp::of(&meta)));
        }
    }
    let mut texts = Vec::with_capacity(files.len());
    for (name, (path, stamp)) in files {
        let rel = rel_dir.join(&name);
        if cache.known(&rel, stamp) {
            texts.push((rel, None, stamp));
            continue;
        }
        match read_limited(&path, MAX_FILE_BYTES) {
            Ok(text) => texts.push((rel, Some(text), stamp)),
            Err(e) => errors.push(LoadError::file(&rel, e)),
        }
    }
    if errors.is_empty() && cache.unchanged(&rel_dir, &texts) {
        return None;
    }
    let seen: Vec<PathBuf> = texts.iter().map(|(rel, _, _)| rel.clone()).collect();
    cache.retain_dir(&rel_dir, &seen);
    for (rel, text, stamp) in &texts {
        cache.merge_file(rel, text.as_deref(), *stamp, &mut objects, &mut errors);
    }
    Some(if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: NAME\n  namespace: demo\nspec:\n  ports:\n  - port: 80\n";

    #[test]
    fn cached_loads_reparse_only_changed_files_and_still_catch_duplicates() {
        let root = tempfile::tempdir().expect("dir");
        let dir = root.path().join("clusters/east");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("a.yaml"), SERVICE.replace("NAME", "a")).expect("write");
        std::fs::write(dir.join("b.yaml"), SERVICE.replace("NAME", "b")).expect("write");
        let mut cache = FileCache::default();
        let first = load_cluster_dir_cached(root.path(), "east", &mut cache)
            .expect("loaded")
            .expect("good");
        assert_eq!(first.services.len(), 2);
        assert!(
            load_cluster_dir_cached(root.path(), "east", &mut cache).is_none(),
            "nothing changed"
        );
        // b now declares a as well: a duplicate across files, reported where the second is.
        std::fs::write(dir.join("b.yaml"), SERVICE.replace("NAME", "a")).expect("write");
        let errors = load_cluster_dir_cached(root.path(), "east", &mut cache)
            .expect("reloaded")
            .expect_err("duplicate");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].file.ends_with("b.yaml"), "{errors:?}");
        assert!(
            errors[0]
                .reason
                .contains("duplicate object; first declared at"),
            "{errors:?}"
        );
        assert_eq!(
            load_cluster_dir(root.path(), "east").expect_err("uncached agrees"),
            errors
        );
        std::fs::remove_file(dir.join("b.yaml")).expect("rm");
        let after = load_cluster_dir_cached(root.path(), "east", &mut cache)
            .expect("reloaded")
            .expect("good");
        assert_eq!(
            after,
            load_cluster_dir(root.path(), "east").expect("uncached")
        );
        assert_eq!(after.services.len(), 1);
    }

    /// Rewrites `path` in place (same inode) with `text` and gives it modification time `at`.
    fn rewrite(path: &Path, text: &str, at: std::time::SystemTime) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .expect("open");
        f.write_all(text.as_bytes()).expect("write");
        f.set_modified(at).expect("mtime");
    }

    /// The service names of cluster `east` after a reload that must find a change.
    fn reloaded_names(root: &Path, cache: &mut FileCache) -> Vec<String> {
        let objects = load_cluster_dir_cached(root, "east", cache)
            .expect("a change is seen")
            .expect("good");
        objects.services.keys().map(|k| k.name.clone()).collect()
    }

    #[test]
    fn files_still_for_a_while_are_not_read_again_and_recent_ones_always_are() {
        let root = tempfile::tempdir().expect("dir");
        let dir = root.path().join("clusters/east");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (a, b) = (dir.join("a.yaml"), dir.join("b.yaml"));
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::write(&a, SERVICE.replace("NAME", "a")).expect("write");
        rewrite(&a, &SERVICE.replace("NAME", "a"), old);
        std::fs::write(&b, SERVICE.replace("NAME", "b")).expect("write");
        let mut cache = FileCache::default();
        let first = load_cluster_dir_cached(root.path(), "east", &mut cache)
            .expect("loaded")
            .expect("good");
        assert_eq!(first.services.len(), 2);
        // b was written just now: a same-length rewrite within the timestamp granularity
        // would keep its stamp, so it is read again and the change is seen.
        rewrite(
            &b,
            &SERVICE.replace("NAME", "c"),
            std::fs::metadata(&b)
                .expect("stat")
                .modified()
                .expect("mtime"),
        );
        assert_eq!(reloaded_names(root.path(), &mut cache), ["a", "c"]);
        // a has been still for a minute: its stamp is trusted, so a rewrite that keeps the
        // stamp (same inode, length and time, which only a deliberate reset does) is not read.
        rewrite(&a, &SERVICE.replace("NAME", "z"), old);
        let third = load_cluster_dir_cached(root.path(), "east", &mut cache);
        assert!(
            third.is_none(),
            "a's unchanged stamp means unchanged: {third:?}"
        );
        // Any change to the stamp is seen.
        rewrite(
            &a,
            &SERVICE.replace("NAME", "z"),
            old + std::time::Duration::from_secs(1),
        );
        assert_eq!(reloaded_names(root.path(), &mut cache), ["c", "z"]);
    }

    #[test]
    fn files_past_the_limit_or_not_utf8_are_refused_with_why() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("workloads.yaml");
        std::fs::write(&path, "a".repeat(1024)).expect("write");
        assert_eq!(read_limited(&path, 1024).map(|s| s.len()), Ok(1024));
        let e = read_limited(&path, 1023).expect_err("one byte over");
        assert!(e.contains("split it into several files"), "{e}");
        std::fs::write(&path, [b'a', 0xff, b'b']).expect("write");
        assert_eq!(
            read_limited(&path, 1024),
            Err("not UTF-8 (at byte 1)".into())
        );
        assert!(read_limited(&dir.path().join("missing.yaml"), 1024)
            .expect_err("missing")
            .starts_with("cannot read"));
    }
}
