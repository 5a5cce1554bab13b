//! How a fake server is set up: transport, optional API groups, watch timing.

use std::time::Duration;

/// Which versions of the Multi-Cluster Services API (`multicluster.x-k8s.io`) a server serves.
///
/// Real clusters differ here, and Causeway detects the served version through discovery, so a
/// test picks one, both, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum McsVersion {
    /// `multicluster.x-k8s.io/v1alpha1`.
    V1alpha1,
    /// `multicluster.x-k8s.io/v1beta1`.
    V1beta1,
}

impl McsVersion {
    /// The version string as it appears in `apiVersion` (`v1alpha1`, `v1beta1`).
    pub fn as_str(self) -> &'static str {
        match self {
            McsVersion::V1alpha1 => "v1alpha1",
            McsVersion::V1beta1 => "v1beta1",
        }
    }
}

/// Options for [`crate::FakeApiServer::start`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Serve HTTPS with a fresh self-signed CA (true) or plain HTTP (false).
    pub tls: bool,
    /// MCS API versions served (`serviceexports`, `serviceimports`, both with `/status`).
    pub mcs_versions: Vec<McsVersion>,
    /// Serve `about.k8s.io/v1alpha1` `clusterproperties` (cluster-scoped).
    pub about_api: bool,
    /// Serve `causeway.io/v1alpha1` `authorizationpolicies` (namespaced).
    pub causeway_crds: bool,
    /// Serve `causeway.io/v1alpha1` `trafficpolicies` (namespaced). Apart from
    /// [`Self::causeway_crds`], so a test can have a cluster with only the older CRD.
    pub traffic_policy_crd: bool,
    /// Interval between BOOKMARK events on watches that allow them (the real server: ~1 min).
    pub bookmark_interval: Duration,
    /// Server-side cap on every watch's duration, so tests can force frequent restarts.
    pub max_watch: Option<Duration>,
    /// Create the namespaces every cluster has (`default`, `kube-system`, `kube-public`,
    /// `kube-node-lease`) at start.
    pub seed_namespaces: bool,
    /// Watch history kept per resource before the oldest entries are compacted away
    /// (the real server keeps about five minutes); `None` keeps everything until [`compact`].
    ///
    /// [`compact`]: crate::FakeApiServer::compact
    pub history_limit: Option<usize>,
    /// Port to listen on (0 picks a free one; the port is kept across `stop`/`start_again`).
    pub port: u16,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            tls: true,
            mcs_versions: vec![McsVersion::V1beta1],
            about_api: false,
            causeway_crds: true,
            traffic_policy_crd: true,
            bookmark_interval: Duration::from_secs(1),
            max_watch: None,
            seed_namespaces: true,
            history_limit: Some(100_000),
            port: 0,
        }
    }
}

impl ServerOptions {
    /// Default options but plain HTTP (no TLS).
    pub fn plain_http() -> Self {
        Self {
            tls: false,
            ..Self::default()
        }
    }
}
