//! Keeping a control plane's CA directory complete: first-start root and intermediates, and
//! the re-issue of intermediates that lack their cluster's name constraints.

use std::path::{Path, PathBuf};

use causeway_model::ClusterId;

use super::{
    chain_is_cluster_constrained, cluster_dir, cluster_san, create_private_dir, files,
    find_cluster_dir, io, layout, random_suffix, read_file, root_dir, wait_for, CaError, RootCa,
    DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_ROOT_VALIDITY,
};

/// Makes sure a control plane's CA directory exists: generates a root (first start) and an
/// intermediate for each cluster that lacks one. Layout: see [`layout`] (`<dir>/root/` and
/// `<dir>/clusters/<cluster>/`). Operators who bring their own CA fill these directories first;
/// several control planes may share the directory and start at once.
///
/// An intermediate this root signed without the cluster's name constraints (issued before they
/// existed) is replaced by a constrained one: the old directory is retired (moved to
/// `clusters/.<cluster>.retired-*/`, without its key) and the leaves it signed stay valid until
/// they expire. An intermediate of another CA is left alone, with a warning.
pub fn ensure_ca_dir(
    dir: &Path,
    trust_domain: &str,
    clusters: &[ClusterId],
) -> Result<(), CaError> {
    let root_dir = root_dir(dir);
    let root = if root_dir.join(files::ROOT_CERT).exists() {
        RootCa::load(&root_dir)?
    } else {
        tracing::info!(dir = %root_dir.display(), "generating the mesh root CA (first start)");
        let root = RootCa::generate(trust_domain, DEFAULT_ROOT_VALIDITY)?;
        match root.write(&root_dir) {
            Ok(()) => root,
            // Another control plane sharing the directory got there first: use its root.
            Err(CaError::Exists(_)) => {
                wait_for(&root_dir.join(files::ROOT_CERT));
                RootCa::load(&root_dir)?
            }
            Err(e) => return Err(e),
        }
    };
    for cluster in clusters {
        if let Some(existing) = find_cluster_dir(dir, cluster) {
            reissue_unconstrained(dir, &existing, &root, cluster, trust_domain)?;
            continue;
        }
        let cdir = cluster_dir(dir, cluster);
        tracing::info!(cluster = %cluster, "issuing the cluster's intermediate CA");
        match root
            .issue_intermediate(cluster, trust_domain, DEFAULT_INTERMEDIATE_VALIDITY)?
            .write(&cdir)
        {
            Ok(()) => {}
            Err(CaError::Exists(_)) => wait_for(&cdir.join(files::CA_CERT)),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The certificates of a cluster directory that every leaf's chain carries: `ca-cert.pem` and
/// `cert-chain.pem` (when present).
fn read_ca_chain(cdir: &Path) -> Result<String, CaError> {
    let mut pem = read_file(&cdir.join(files::CA_CERT))?;
    let chain_path = cdir.join(files::CERT_CHAIN);
    match std::fs::read_to_string(&chain_path) {
        Ok(chain) => pem.push_str(&chain),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&chain_path)(e)),
    }
    Ok(pem)
}

/// Held while one control plane re-issues a cluster's intermediate:
/// `clusters/.<cluster>.reissue.lock`, created exclusively, removed on drop.
struct ReissueLock(PathBuf);

impl ReissueLock {
    /// `None` when another holder has it (or a crashed one left it behind).
    fn acquire(clusters_dir: &Path, cluster: &ClusterId) -> Result<Option<Self>, CaError> {
        let path = clusters_dir.join(format!(".{cluster}.reissue.lock"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => Ok(Some(Self(path))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                tracing::warn!(cluster = %cluster, lock = %path.display(), "another control plane is re-issuing the cluster's intermediate (remove the lock file if none is)");
                Ok(None)
            }
            Err(e) => Err(io(&path)(e)),
        }
    }
}

impl Drop for ReissueLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Replaces `cluster`'s intermediate in `existing` (either layout) with a name-constrained one
/// ([`cluster_name_constraints`](super::cluster_name_constraints)) when it lacks the
/// constraints and `root` signed it; an operator's own chain is left alone (with
/// [`ClusterCa::load`](super::ClusterCa::load)'s warning).
///
/// The new intermediate is written aside, then swapped in: the old directory moves to
/// `clusters/.<cluster>.retired-<unix time>-<random>/` and loses its key, so it signs nothing
/// more, while the leaves it signed keep verifying until they expire (they carry the old
/// intermediate and chain to the same root). The old intermediate itself stays valid until its
/// own expiry: only a root rotation retires it sooner.
fn reissue_unconstrained(
    ca_dir: &Path,
    existing: &Path,
    root: &RootCa,
    cluster: &ClusterId,
    trust_domain: &str,
) -> Result<(), CaError> {
    let chain = read_ca_chain(existing)?;
    if chain_is_cluster_constrained(&chain, cluster, trust_domain) {
        return Ok(());
    }
    if !root.signed(&chain) {
        tracing::warn!(cluster = %cluster, dir = %existing.display(), "the cluster's intermediate has no name constraints and was not issued by this root; not re-issuing it");
        return Ok(());
    }
    let clusters_dir = ca_dir.join(layout::CLUSTERS_DIR);
    create_private_dir(&clusters_dir)?;
    let Some(_lock) = ReissueLock::acquire(&clusters_dir, cluster)? else {
        return Ok(());
    };
    // Under the lock: another control plane may have finished a re-issue meanwhile.
    let Some(existing) = find_cluster_dir(ca_dir, cluster) else {
        return Ok(());
    };
    if chain_is_cluster_constrained(&read_ca_chain(&existing)?, cluster, trust_domain) {
        return Ok(());
    }
    let issued = root.issue_intermediate(cluster, trust_domain, DEFAULT_INTERMEDIATE_VALIDITY)?;
    let suffix = random_suffix(&clusters_dir)?;
    let staging = clusters_dir.join(format!(".{cluster}.new-{suffix}"));
    if let Err(e) = issued.write(&staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let retired = clusters_dir.join(format!(".{cluster}.retired-{}-{suffix}", crate::now_unix()));
    if let Err(e) = std::fs::rename(&existing, &retired) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(io(&existing)(e));
    }
    let current = cluster_dir(ca_dir, cluster);
    if let Err(e) = std::fs::rename(&staging, &current) {
        let _ = std::fs::remove_dir_all(&staging);
        if current.join(files::CA_CERT).exists() {
            // A control plane without the lock issued one into the gap: it is constrained.
            tracing::info!(cluster = %cluster, dir = %current.display(), "another control plane wrote the cluster's new intermediate; using it");
        } else {
            let _ = std::fs::rename(&retired, &existing);
            return Err(io(&current)(e));
        }
    }
    if let Err(e) = std::fs::remove_file(retired.join(files::CA_KEY)) {
        tracing::warn!(cluster = %cluster, key = %retired.join(files::CA_KEY).display(), error = %e, "could not delete the retired intermediate's key; delete it by hand");
    }
    tracing::warn!(cluster = %cluster, dir = %current.display(), retired = %retired.display(), "re-issued the cluster's intermediate with name constraints (DNS names within {}); leaves of the old one stay valid until they expire", cluster_san(cluster, trust_domain));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::ClusterCa;

    const TD: &str = "mesh.test";

    #[test]
    fn ensure_ca_dir_creates_once_and_keeps_existing_material() {
        let tmp = tempfile::tempdir().expect("tmp");
        let clusters = [
            ClusterId::new("a").expect("id"),
            ClusterId::new("b").expect("id"),
        ];
        ensure_ca_dir(tmp.path(), TD, &clusters).expect("first");
        let read = || {
            std::fs::read_to_string(tmp.path().join("clusters/a").join(files::CA_CERT))
                .expect("a cert")
        };
        let before = read();
        ensure_ca_dir(tmp.path(), TD, &clusters).expect("second");
        assert_eq!(before, read());
        for c in &clusters {
            ClusterCa::load(&cluster_dir(tmp.path(), c), c.clone(), TD).expect("loads");
        }
    }
}
