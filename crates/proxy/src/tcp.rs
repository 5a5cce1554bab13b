//! The TCP proxy of a sidecar filter chain: an endpoint of the chain's cluster (outlier
//! detection fed with whether the connection could be made), mTLS towards it when the cluster
//! has upstream TLS, then bytes both ways with the adaptive copy until either side closes or
//! the idle timeout passes.

use std::rc::Rc;

use causeway_xds::dataplane::TcpProxyConfig;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::SharedSnapshot;
use crate::copy::{copy_with, CopyError, Counters, Transferred};
use crate::upstream::connect::{connect, ConnectError};
use crate::upstream::outlier::Outcome;
use crate::worker::WorkerState;

#[derive(Debug, thiserror::Error)]
pub enum TcpProxyError {
    #[error("cluster {0} of the TCP proxy is not configured")]
    NoCluster(String),
    #[error("no healthy endpoint in cluster {0}")]
    NoEndpoint(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("forwarding: {0}")]
    Copy(#[from] CopyError),
}

impl TcpProxyError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            TcpProxyError::NoCluster(_) => "no_cluster",
            TcpProxyError::NoEndpoint(_) => "no_endpoint",
            TcpProxyError::Connect(e) => e.reason(),
            TcpProxyError::Copy(_) => "reset",
        }
    }
}

/// A finished TCP proxy connection.
#[derive(Debug)]
pub struct Proxied {
    pub cluster: String,
    pub endpoint: crate::upstream::Target,
    pub transferred: Transferred,
}

/// Proxies `downstream` to the cluster of `cfg`.
pub async fn proxy<D>(
    state: &Rc<WorkerState>,
    snapshot: &SharedSnapshot,
    cfg: &TcpProxyConfig,
    downstream: D,
) -> Result<Proxied, TcpProxyError>
where
    D: AsyncRead + AsyncWrite,
{
    let up = &state.upstreams;
    // One cluster per connection, by weight when a policy splits the port.
    let name = cfg.clusters.pick(fastrand::u64(..));
    let cluster = snapshot
        .clusters
        .get(name)
        .ok_or_else(|| TcpProxyError::NoCluster(name.to_owned()))?;
    let la = snapshot
        .endpoints_of(name)
        .ok_or_else(|| TcpProxyError::NoEndpoint(name.to_owned()))?;
    let endpoint = up
        .pick(snapshot.generation, cluster, la)
        .ok_or_else(|| TcpProxyError::NoEndpoint(name.to_owned()))?;
    let tls = up
        .client_tls(snapshot.generation, cluster, false)
        .map_err(|error| ConnectError::Tls {
            cluster: cluster.name.clone(),
            error,
        })?;
    // In flight for as long as the connection lasts; its latency sample is the connect time.
    let in_flight = up.start(cluster, &endpoint);
    let upstream = match connect(cluster, &endpoint, tls).await {
        Ok(u) => {
            up.record(cluster, la, &in_flight, &endpoint, Outcome::Status(200));
            u
        }
        Err(e) => {
            up.record(cluster, la, &in_flight, &endpoint, Outcome::LocalFailure);
            return Err(e.into());
        }
    };
    let counters = Counters::default();
    let transferred = copy_with(downstream, upstream, cfg.idle_timeout, &counters).await?;
    drop(in_flight);
    Ok(Proxied {
        cluster: cluster.name.clone(),
        endpoint,
        transferred,
    })
}
