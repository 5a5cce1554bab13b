//! The CA hierarchy: one mesh root, one intermediate CA per cluster, in Istio's `cacerts` layout.
//!
//! The root signs intermediates only and can stay offline ([`init_root`] and
//! [`issue_intermediate`] back `causeway ca init` and `causeway ca issue-intermediate`). A
//! [`ClusterCa`] runs with its cluster's intermediate, chain and root bundle alone, and signs
//! workload CSRs ([`crate::issue`]).

mod cluster_ca;
mod intermediate;
pub mod layout;
mod reissue;
mod root;

use std::path::{Path, PathBuf};
use std::time::Duration;

use causeway_model::ClusterId;
use time::OffsetDateTime;

use crate::issue::IssueError;

pub use crate::issue::IssuedCert;
pub use cluster_ca::ClusterCa;
pub use intermediate::{
    chain_is_cluster_constrained, cluster_name_constraints, cluster_san, issue_intermediate,
    ClusterCaFiles, IntermediateConfig, SERVER_DNS_NAMES,
};
pub use reissue::ensure_ca_dir;
pub use root::{init_root, RootCa, RootInitConfig};

/// Istio `cacerts` file names: the layout an operator provides to plug in their own CA.
pub mod files {
    /// The mesh root certificate(s): several during a root rotation.
    pub const ROOT_CERT: &str = "root-cert.pem";
    /// The root's key (only in the offline root directory).
    pub const ROOT_KEY: &str = "root-key.pem";
    /// The cluster's intermediate certificate.
    pub const CA_CERT: &str = "ca-cert.pem";
    /// The intermediate's key.
    pub const CA_KEY: &str = "ca-key.pem";
    /// Intermediate, any further intermediates, then the root.
    pub const CERT_CHAIN: &str = "cert-chain.pem";
}

/// `<ca_dir>/root/`: the mesh root's directory.
pub fn root_dir(ca_dir: &Path) -> PathBuf {
    ca_dir.join(layout::ROOT_DIR)
}

/// `<ca_dir>/clusters/<cluster>/`: where a cluster's intermediate is written.
pub fn cluster_dir(ca_dir: &Path, cluster: &ClusterId) -> PathBuf {
    ca_dir.join(layout::CLUSTERS_DIR).join(cluster.as_str())
}

/// The directory holding `cluster`'s intermediate, if any: `clusters/<cluster>/`, or else an
/// intermediate of the earlier layout in `<ca_dir>/<cluster>/` (never the root's directory).
pub fn find_cluster_dir(ca_dir: &Path, cluster: &ClusterId) -> Option<PathBuf> {
    let current = cluster_dir(ca_dir, cluster);
    if current.join(files::CA_CERT).exists() {
        return Some(current);
    }
    if cluster.as_str() == layout::ROOT_DIR {
        return None;
    }
    let legacy = ca_dir.join(cluster.as_str());
    if legacy.join(files::CA_CERT).exists() {
        tracing::warn!(cluster = %cluster, dir = %legacy.display(), moved_to = %current.display(), "reading the cluster's intermediate from the earlier CA directory layout; move the directory to clusters/<cluster>/");
        return Some(legacy);
    }
    None
}

/// Default lifetime of a mesh root.
pub const DEFAULT_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a cluster intermediate.
pub const DEFAULT_INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);

/// Why a CA operation failed. Messages name the file, directory or cluster concerned.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("{what}: {source}")]
    Cert {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// CA files exist but are not a usable CA (wrong key, not a CA, expired, broken chain).
    #[error("{path}: not a usable CA: {reason}")]
    Invalid {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A directory already holds a CA; refusing to overwrite it.
    #[error("{0} already holds a CA; refusing to overwrite it")]
    Exists(PathBuf),
    /// Signing a certificate failed.
    #[error("cluster {cluster}: {source}")]
    Issue {
        /// The cluster whose intermediate was signing.
        cluster: ClusterId,
        /// The cause.
        #[source]
        source: IssueError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CaError {
    let what = what.into();
    move |source| CaError::Cert { what, source }
}

fn invalid(path: &Path, reason: impl Into<String>) -> CaError {
    CaError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_file(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

/// 16 random hex digits for temporary names (`path` names the failure).
fn random_suffix(path: &Path) -> Result<String, CaError> {
    let mut suffix = [0u8; 8];
    crate::random_bytes(&mut suffix)
        .map_err(|_| invalid(path, "the system random number generator failed"))?;
    Ok(suffix.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `contents` to `dir/name` without ever replacing an existing file: the data goes to a
/// temporary file (mode 0600 for keys, 0644 otherwise) that is then hard-linked into place,
/// which fails atomically if the name exists. Concurrent writers cannot interleave.
fn write_new(dir: &Path, name: &str, contents: &str, private: bool) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", random_suffix(&target)?));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(contents.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        match std::fs::hard_link(&tmp, &target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(CaError::Exists(dir.to_path_buf()))
            }
            Err(e) => Err(io(&target)(e)),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Facts read from a CA certificate.
struct CaCertInfo {
    is_ca: bool,
    spki: Vec<u8>,
    not_after: OffsetDateTime,
    self_signed: bool,
}

fn ca_cert_info(der: &[u8], path: &Path) -> Result<CaCertInfo, CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| invalid(path, format!("unparseable certificate: {e}")))?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    Ok(CaCertInfo {
        is_ca,
        spki: cert.public_key().raw.to_vec(),
        not_after: cert.validity().not_after.to_datetime(),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
    })
}

/// PEM-encodes a DER certificate verbatim (64-column base64).
fn pem_encode_cert(der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(TABLE[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Waits (at most 2 s) for a concurrent writer to finish a CA directory.
fn wait_for(path: &Path) {
    for _ in 0..40 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "mesh.test";

    #[test]
    fn pem_encoding_round_trips() {
        let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).expect("root");
        let der = crate::pem_certs(root.cert_pem()).remove(0);
        assert_eq!(
            pem_encode_cert(der.as_ref()),
            root.cert_pem().replace("\r\n", "\n")
        );
    }
}
