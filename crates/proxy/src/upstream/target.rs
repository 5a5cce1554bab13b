//! What the proxy connects to for one endpoint: an address and, for a remote pod behind its
//! east-west gateway, the SNI that makes the gateway forward to just that pod. Pools, outlier
//! detection and latency estimates are all kept per target, so pods behind one gateway are
//! balanced and ejected one by one.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use causeway_xds::dataplane::EndpointConfig;

/// One endpoint as the proxy reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// Where to connect (a remote pod's gateway).
    pub address: SocketAddr,
    /// The endpoint's own SNI, replacing the cluster's (a pod behind a gateway).
    pub sni: Option<Arc<str>>,
}

impl Target {
    /// A target without an SNI of its own.
    pub fn at(address: SocketAddr) -> Self {
        Target { address, sni: None }
    }

    /// The target of an endpoint of a load assignment.
    pub fn of(e: &EndpointConfig) -> Self {
        Target {
            address: e.address,
            sni: e.sni.as_deref().map(Arc::from),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sni {
            Some(sni) => write!(f, "{} (SNI {sni})", self.address),
            None => write!(f, "{}", self.address),
        }
    }
}
