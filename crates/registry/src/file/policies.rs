//! Mesh-wide traffic policies: the `TrafficPolicy` documents of every `*.yaml`/`*.yml` file
//! under `policies/` (read in path order, subdirectories included), and the checks across all
//! policies of the mesh, wherever they are declared (`mesh.yaml` or `policies/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use causeway_model::{ClusterId, TrafficPolicy};

use super::documents::{expect_api, split_documents, type_of, Doc};
use super::objects::parse_traffic_policy;
use super::{read_limited, CAUSEWAY_API, MAX_FILE_BYTES};
use crate::LoadError;

/// The directory of policy files, relative to the mesh directory.
pub const POLICIES_DIR: &str = "policies";

/// Parses one file of `policies/` into `policies`, collecting errors: every document must be a
/// `TrafficPolicy`. Policies are not checked against each other here (see
/// [`check_traffic_policies`]).
pub(super) fn parse_policy_documents(
    file: &Path,
    text: &str,
    policies: &mut Vec<TrafficPolicy>,
    errors: &mut Vec<LoadError>,
) {
    for (index, (start_line, text)) in split_documents(text).iter().enumerate() {
        let doc = Doc {
            file,
            index,
            start_line: *start_line,
            text,
        };
        match parse_policy_object(&doc) {
            Ok(policy) => policies.push(policy),
            Err(e) => errors.push(e),
        }
    }
}

fn parse_policy_object(doc: &Doc<'_>) -> Result<TrafficPolicy, LoadError> {
    let (api, kind) = type_of(doc)?;
    if kind == "TrafficPolicy" {
        expect_api(doc, &kind, &api, CAUSEWAY_API)?;
        return parse_traffic_policy(doc);
    }
    let place = match kind.as_str() {
        "Mesh" | "Cluster" => "it belongs in mesh.yaml",
        _ => "it belongs in a cluster directory, if anywhere",
    };
    Err(doc.error(
        Some(&kind),
        Some("kind"),
        format!("only TrafficPolicy objects belong in {POLICIES_DIR}/, not {kind}: {place}"),
    ))
}

/// Reads every policy file under `<root>/policies/` into `policies`, collecting errors. A
/// missing directory holds no policies.
pub(super) fn load_policies_dir(
    root: &Path,
    policies: &mut Vec<TrafficPolicy>,
    errors: &mut Vec<LoadError>,
) {
    let mut files = Vec::new();
    collect_files(root, Path::new(POLICIES_DIR), &mut files, errors);
    files.sort();
    for rel in files {
        match read_limited(&root.join(&rel), MAX_FILE_BYTES) {
            Ok(text) => parse_policy_documents(&rel, &text, policies, errors),
            Err(e) => errors.push(LoadError::file(&rel, e)),
        }
    }
}

/// The YAML files under `<root>/<rel_dir>`, recursively; hidden entries are skipped, and
/// symbolic links to directories are not followed (no cycles).
fn collect_files(
    root: &Path,
    rel_dir: &Path,
    files: &mut Vec<PathBuf>,
    errors: &mut Vec<LoadError>,
) {
    let entries = match std::fs::read_dir(root.join(rel_dir)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            errors.push(LoadError::file(
                rel_dir,
                format!("cannot read directory: {e}"),
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let rel = rel_dir.join(&name);
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            collect_files(root, &rel, files, errors);
        } else if (name.ends_with(".yaml") || name.ends_with(".yml")) && entry.path().is_file() {
            files.push(rel);
        }
    }
}

/// Checks across the traffic policies of the mesh: each `TrafficPolicy` name once per
/// namespace, and for each service at most one policy for any caller cluster (one without
/// callers, and any number whose caller lists do not share a cluster). Errors are reported on
/// the later declaration, so with policies in precedence order (the mesh directory's, then each
/// cluster's) the one reported is the one that does not apply. Any registry's policies may be
/// checked together.
pub fn check_traffic_policies(policies: &[TrafficPolicy]) -> Vec<LoadError> {
    let mut errors = Vec::new();
    let mut names: BTreeMap<(&str, &str), &TrafficPolicy> = BTreeMap::new();
    for (i, p) in policies.iter().enumerate() {
        if let Some(first) = names.get(&(p.namespace.as_str(), p.name.as_str())) {
            errors.push(policy_error(
                p,
                "metadata.name",
                format!("duplicate object; first declared at {}", first.source),
            ));
            continue;
        }
        names.insert((&p.namespace, &p.name), p);
        let same_service = policies[..i].iter().filter(|q| q.service == p.service);
        if let Some((first, shared)) = same_service
            .filter_map(|q| overlap(q, p).map(|shared| (q, shared)))
            .next()
        {
            let whom = match shared {
                None => "every caller".to_owned(),
                Some(c) => format!("callers in cluster {c}"),
            };
            errors.push(policy_error(
                p,
                "spec.callers",
                format!(
                    "a second policy for service {} and {whom}: TrafficPolicy {}/{} at {} \
                     already applies to them",
                    p.service, first.namespace, first.name, first.source
                ),
            ));
        }
        if let Some(e) = subset_mismatch(&policies[..i], p) {
            errors.push(e);
        }
    }
    errors
}

/// A subset of `p` that an earlier policy of the same service defines with other labels:
/// gateways route a subset's SNI for every caller alike, so one name means one set of labels.
fn subset_mismatch(earlier: &[TrafficPolicy], p: &TrafficPolicy) -> Option<LoadError> {
    for (i, s) in p.subsets.iter().enumerate() {
        let other = earlier
            .iter()
            .filter(|q| q.service == p.service)
            .find_map(|q| {
                q.subset(&s.name)
                    .filter(|o| o.labels != s.labels)
                    .map(|_| q)
            });
        if let Some(q) = other {
            return Some(policy_error(
                p,
                &format!("spec.subsets[{i}].labels"),
                format!(
                    "subset {:?} of service {} has other labels in TrafficPolicy {}/{} at {}; \
                     a subset name selects the same endpoints in every policy of a service",
                    s.name, p.service, q.namespace, q.name, q.source
                ),
            ));
        }
    }
    None
}

/// Whether two policies apply to the same callers: `Some(None)` when both apply to every
/// caller, `Some(Some(cluster))` when their caller lists share `cluster`, else `None`.
fn overlap(a: &TrafficPolicy, b: &TrafficPolicy) -> Option<Option<ClusterId>> {
    match (&a.callers, &b.callers) {
        (None, None) => Some(None),
        (Some(x), Some(y)) => x.iter().find(|c| y.contains(c)).cloned().map(Some),
        _ => None,
    }
}

/// An error about `field` of `p`; a policy read from an API server (line 0) has no document or
/// line.
fn policy_error(p: &TrafficPolicy, field: &str, reason: String) -> LoadError {
    let in_file = p.source.line > 0;
    LoadError {
        file: p.source.file.clone(),
        document: in_file.then_some(p.source.document),
        line: in_file.then_some(p.source.line),
        object: Some(format!("TrafficPolicy {}/{}", p.namespace, p.name)),
        field: Some(field.to_owned()),
        reason,
    }
}
