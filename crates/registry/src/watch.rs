//! Watching a mesh directory: file system events become [`ReloadScope`]s, with bursts coalesced.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::ReloadScope;

/// Why the directory cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The OS watcher failed to start or to add the directory.
    #[error("cannot watch mesh directory {path}: {source}")]
    Notify {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: notify::Error,
    },
}

/// A running watch; dropping it stops watching.
pub struct DirectoryWatcher {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<ReloadScope>,
    settle: Duration,
}

/// Maps a changed path to what must be reloaded, or `None` when it does not matter.
pub fn scope_for(root: &Path, path: &Path) -> Option<ReloadScope> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Vec<&str> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    match parts.as_slice() {
        ["mesh.yaml"] => Some(ReloadScope::Mesh),
        ["policies", ..] => Some(ReloadScope::Mesh),
        ["clusters", name, ..] => Some(ReloadScope::Clusters(BTreeSet::from([(*name).to_owned()]))),
        ["clusters"] => Some(ReloadScope::All),
        [] => Some(ReloadScope::All),
        _ => None,
    }
}

/// Starts watching `root` recursively. `settle` is how long to wait after an event for the
/// rest of a burst (an editor's save is several events).
pub fn watch(root: &Path, settle: Duration) -> Result<DirectoryWatcher, WatchError> {
    let (tx, events) = mpsc::unbounded_channel();
    let root_owned = root.to_path_buf();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            // Reads (ours included: every reload opens every file of a cluster) change nothing;
            // reloading on them would reload forever.
            Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => {}
            Ok(event) => {
                for path in &event.paths {
                    if let Some(scope) = scope_for(&root_owned, path) {
                        // The receiver is gone only when the control plane shuts down.
                        let _ = tx.send(scope);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "mesh directory watch error; reloading everything");
                let _ = tx.send(ReloadScope::All);
            }
        })
        .map_err(|source| WatchError::Notify {
            path: root.to_path_buf(),
            source,
        })?;
    watcher
        .watch(root, RecursiveMode::Recursive)
        .map_err(|source| WatchError::Notify {
            path: root.to_path_buf(),
            source,
        })?;
    Ok(DirectoryWatcher {
        _watcher: watcher,
        events,
        settle,
    })
}

impl DirectoryWatcher {
    /// Waits for the next change, then gathers the rest of its burst into one scope.
    pub async fn next(&mut self) -> Option<ReloadScope> {
        let mut scope = self.events.recv().await?;
        let deadline = tokio::time::Instant::now() + self.settle;
        while let Ok(Some(more)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            scope = scope.merge(more);
        }
        Some(scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_scopes() {
        let root = Path::new("/m");
        assert_eq!(
            scope_for(root, Path::new("/m/mesh.yaml")),
            Some(ReloadScope::Mesh)
        );
        assert_eq!(
            scope_for(root, Path::new("/m/clusters/east/a.yaml")),
            Some(ReloadScope::Clusters(BTreeSet::from(["east".to_owned()])))
        );
        for policy in [
            "/m/policies",
            "/m/policies/shop.yaml",
            "/m/policies/shop/checkout.yml",
        ] {
            assert_eq!(
                scope_for(root, Path::new(policy)),
                Some(ReloadScope::Mesh),
                "{policy}"
            );
        }
        assert_eq!(scope_for(root, Path::new("/m/README")), None);
        assert_eq!(scope_for(root, Path::new("/elsewhere/x")), None);
    }
}
