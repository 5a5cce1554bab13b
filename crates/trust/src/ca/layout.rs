//! Layout of a control plane's CA directory (`--ca-dir`). The root and the clusters live in
//! separate name spaces, so no cluster id can address the root's directory:
//!
//! ```text
//! <ca-dir>/root/root-cert.pem, root-key.pem            the mesh root (key absent when offline)
//! <ca-dir>/clusters/<cluster>/ca-cert.pem, ca-key.pem,  each cluster's intermediate (cacerts)
//!                             cert-chain.pem, root-cert.pem
//! ```
//!
//! Directories of the earlier layout, `<ca-dir>/<cluster>/`, are still read in place (with a
//! warning) when `clusters/<cluster>/` holds no intermediate; `<ca-dir>/root/` is never taken
//! for a cluster's. New intermediates are always written in the current layout.

/// The root's directory under the CA directory.
pub const ROOT_DIR: &str = "root";
/// The directory holding one directory per cluster under the CA directory.
pub const CLUSTERS_DIR: &str = "clusters";
