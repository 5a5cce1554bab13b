//! Field parsers shared by several kinds: names, namespaces, IP addresses, localities, lists
//! in messages, durations, and bootstrap credential paths.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use causeway_model::Locality;

use super::documents::Doc;
use crate::wire;
use crate::LoadError;

pub(super) fn required_name(
    doc: &Doc<'_>,
    kind: &str,
    meta: &wire::ObjectMeta,
) -> Result<String, LoadError> {
    match meta.name.as_deref() {
        Some(n) if !n.is_empty() => Ok(n.to_owned()),
        _ => Err(doc.error(Some(kind), Some("metadata.name"), "missing")),
    }
}

pub(super) fn namespace_of(meta: &wire::ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

pub(super) fn parse_ip(
    doc: &Doc<'_>,
    object: &str,
    field: &str,
    value: &str,
) -> Result<IpAddr, LoadError> {
    value.parse().map_err(|_| {
        doc.error(
            Some(object),
            Some(field),
            format!("{value:?} is not an IP address"),
        )
    })
}

pub(super) fn parse_locality(
    doc: &Doc<'_>,
    object: &str,
    field: &str,
    value: &str,
) -> Result<Locality, LoadError> {
    value
        .parse()
        .map_err(|e| doc.error(Some(object), Some(field), format!("{e}")))
}

/// A duration written as humans do (`250ms`, `2s`, `5m`, `1h 30m`), or why it is not one.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration such as 250ms, 30s, 5m or 1h: {e}"))
}

pub(super) fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a bootstrap credential path lexically: it must name a file inside the mesh directory,
/// so it is relative and has no `..` component. (Symbolic links are resolved and checked where
/// the file is read.)
pub(super) fn credential_path(
    doc: &Doc<'_>,
    object: &str,
    value: &str,
) -> Result<PathBuf, LoadError> {
    credential_path_at(doc, object, "spec.credential.tokenFile", value)
}

/// [`credential_path`] for the field `field`.
pub(super) fn credential_path_at(
    doc: &Doc<'_>,
    object: &str,
    field: &str,
    value: &str,
) -> Result<PathBuf, LoadError> {
    let path = Path::new(value);
    let reason = if value.trim().is_empty() {
        Some("must name a token file inside the mesh directory".to_owned())
    } else if path.is_absolute() {
        Some(format!(
            "{value:?} is an absolute path; a credential file must lie inside the mesh directory (give it relative to the directory)"
        ))
    } else if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        Some(format!(
            "{value:?} contains '..'; a credential file must lie inside the mesh directory"
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(doc.error(Some(object), Some(field), reason)),
        None => Ok(path.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use causeway_model::ClusterObjects;

    use crate::file::parse_cluster_documents;

    #[test]
    fn credential_files_outside_the_mesh_directory_are_refused() {
        for (token_file, reason) in [
            ("/etc/shadow", "absolute path"),
            ("../outside.token", "contains '..'"),
            ("tokens/../../outside.token", "contains '..'"),
            ("tokens/./../a.token", "contains '..'"),
            ("\"\"", "must name a token file"),
        ] {
            let text = format!(
                "apiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: echo-1, namespace: demo}}\nspec:\n  address: 10.0.0.1\n  credential: {{tokenFile: {token_file}}}\n"
            );
            let mut objects = ClusterObjects::default();
            let mut errors = Vec::new();
            parse_cluster_documents(
                Path::new("clusters/east/w.yaml"),
                &text,
                &mut objects,
                &mut errors,
            );
            assert_eq!(errors.len(), 1, "{token_file}: {errors:?}");
            let e = &errors[0];
            assert_eq!(e.file, Path::new("clusters/east/w.yaml"));
            assert_eq!(e.line, Some(1), "{e}");
            assert_eq!(e.object.as_deref(), Some("WorkloadEntry demo/echo-1"));
            assert_eq!(e.field.as_deref(), Some("spec.credential.tokenFile"));
            assert!(e.reason.contains(reason), "{token_file}: {e}");
            assert!(objects.workload_entries.is_empty());
        }
        let text = "apiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata: {name: echo-1}\nspec: {address: 10.0.0.1, credential: {tokenFile: tokens/./a..b.token}}\n";
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(Path::new("w.yaml"), text, &mut objects, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let we = &objects.workload_entries[&("default".to_owned(), "echo-1".to_owned())];
        assert_eq!(
            we.credential_file.as_deref(),
            Some(Path::new("tokens/./a..b.token"))
        );
    }
}
