//! Replacing `mesh.yaml` with an edited stream: staged next to it, loaded with the registry's
//! own loader and checked, then renamed over it if nobody changed it meanwhile.

use std::path::Path;

use causeway_model::KubernetesSource;

use super::{ClusterEntry, EditError};

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EditError {
    let path = path.to_path_buf();
    move |source| EditError::Io {
        action,
        path,
        source,
    }
}

/// Writes `text` to `mesh.yaml` in a new temporary directory inside `dir`, with the mode of
/// `target` when it exists. The directory is removed when dropped.
fn stage(dir: &Path, target: &Path, text: &str) -> Result<tempfile::TempDir, EditError> {
    use std::io::Write;
    let staging = tempfile::Builder::new()
        .prefix(".causeway-link-")
        .tempdir_in(dir)
        .map_err(io_error("create a temporary directory in", dir))?;
    let staged = staging.path().join("mesh.yaml");
    let mut file = std::fs::File::create(&staged).map_err(io_error("create", &staged))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &staged))?;
    drop(file);
    if let Ok(meta) = std::fs::metadata(target) {
        std::fs::set_permissions(&staged, meta.permissions())
            .map_err(io_error("set the mode of", &staged))?;
    }
    Ok(staging)
}

/// Loads the staged `mesh.yaml` of `staging` and checks that it holds `entry` as written and
/// that the Mesh declares its network. `target` is the file it is to replace.
fn validate_staged(staging: &Path, target: &Path, entry: &ClusterEntry) -> Result<(), EditError> {
    let loaded = crate::load_mesh_file(staging).map_err(|errors| EditError::WouldNotLoad {
        file: target.to_path_buf(),
        cluster: entry.name.clone(),
        errors,
    })?;
    let expected = KubernetesSource {
        kubeconfig: entry.kubeconfig.clone(),
        context: entry.context.clone(),
    };
    let linked = loaded.cluster(&entry.name);
    if linked.and_then(|c| c.kubernetes.as_ref()) != Some(&expected) {
        return Err(EditError::NotAsLinked {
            file: target.to_path_buf(),
            cluster: entry.name.clone(),
            found: linked.map(|c| Box::new(c.clone())),
        });
    }
    if let Some(networks) = &loaded.mesh.networks {
        if !networks.contains(&entry.network) {
            return Err(EditError::UndeclaredNetwork {
                file: target.to_path_buf(),
                network: entry.network.clone(),
                networks: networks.iter().cloned().collect(),
            });
        }
    }
    Ok(())
}

/// Replaces `DIR/mesh.yaml` with `text` once it loads with the registry's loader and holds
/// `entry` as expected, and only if the file still reads `original`. On any error the file is
/// left as it was.
pub fn write_mesh_file(
    dir: &Path,
    original: &str,
    text: &str,
    entry: &ClusterEntry,
) -> Result<(), EditError> {
    let target = dir.join("mesh.yaml");
    let staging = stage(dir, &target, text)?;
    validate_staged(staging.path(), &target, entry)?;
    let current = std::fs::read_to_string(&target).map_err(io_error("read", &target))?;
    if current != original {
        return Err(EditError::ChangedMeanwhile { file: target });
    }
    std::fs::rename(staging.path().join("mesh.yaml"), &target)
        .map_err(io_error("replace", &target))?;
    // Make the rename durable; failing to is not worth failing the link for.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::tests::{entry, MESH};
    use crate::edit::upsert_cluster;

    #[test]
    fn writing_validates_before_replacing() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("mesh.yaml"), MESH).expect("write");
        let e = entry("gamma", "net-a", Some("us-east/us-east-1c"));
        let edited = upsert_cluster(MESH, &e).expect("edit");
        write_mesh_file(dir.path(), MESH, &edited.text, &e).expect("write");
        let written = std::fs::read_to_string(dir.path().join("mesh.yaml")).expect("read");
        assert_eq!(written, edited.text);
        assert!(crate::load_mesh_file(dir.path()).is_ok());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("mesh.yaml")]);

        // A network the Mesh does not declare, a result that does not load, and a file that
        // changed meanwhile all leave mesh.yaml as it was.
        let undeclared = entry("delta", "net-z", Some("us-east/us-east-1c"));
        let edited2 = upsert_cluster(&written, &undeclared).expect("edit");
        let err = write_mesh_file(dir.path(), &written, &edited2.text, &undeclared)
            .expect_err("undeclared network");
        assert!(err.to_string().contains("net-z"), "{err}");
        let broken = written.replace("trustDomain: causeway.local", "trustDomain: [1]");
        let err = write_mesh_file(dir.path(), &written, &broken, &e).expect_err("broken");
        assert!(err.to_string().contains("would not load"), "{err}");
        let err = write_mesh_file(dir.path(), MESH, &edited.text, &e).expect_err("changed");
        assert!(err.to_string().contains("changed while"), "{err}");
        let after = std::fs::read_to_string(dir.path().join("mesh.yaml")).expect("read");
        assert_eq!(after, written);
    }
}
