//! One connection through the east-west gateway: read the ClientHello, pick the filter chain
//! by SNI, pick an endpoint of its cluster, connect, replay the ClientHello and copy bytes both
//! ways. TLS is never terminated: the gateway sees only the server name.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use causeway_model::GATEWAY_PROBE_SNI;
use causeway_xds::dataplane::ChainAction;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::client_hello::{read_client_hello, ClientHelloError};
use crate::config::{chain_for_sni, SharedSnapshot};
use crate::copy::{copy_halves, Counters, Transferred};
use crate::worker::WorkerState;

/// Why a connection was refused or failed, as operators read it; [`GatewayError::reason`] is
/// its metric label.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("listener {0} is no longer configured")]
    ListenerGone(String),
    #[error("refused: {0}")]
    ClientHello(#[from] ClientHelloError),
    #[error("refused: no route for server name {sni:?} on {listener} (only exported services are forwarded)")]
    NoRoute {
        listener: String,
        sni: Option<String>,
    },
    #[error("a control plane's probe ({GATEWAY_PROBE_SNI}) on {0}: answered by closing")]
    Probe(String),
    #[error(
        "filter chain {chain} of {listener} is not a TCP proxy; a gateway forwards bytes only"
    )]
    NotTcp { listener: String, chain: String },
    #[error("cluster {0} of the route is not configured")]
    NoCluster(String),
    #[error("no healthy endpoint in cluster {0}")]
    NoEndpoint(String),
    #[error("connecting to {endpoint} of cluster {cluster}: {error}")]
    Connect {
        cluster: String,
        endpoint: SocketAddr,
        error: std::io::Error,
    },
    #[error("connecting to {endpoint} of cluster {cluster}: no answer within {timeout:?}")]
    ConnectTimeout {
        cluster: String,
        endpoint: SocketAddr,
        timeout: Duration,
    },
    #[error("forwarding: {0}")]
    Copy(#[from] crate::copy::CopyError),
}

impl GatewayError {
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::ListenerGone(_) => "listener_gone",
            GatewayError::ClientHello(e) => e.reason(),
            GatewayError::NoRoute { .. } => "no_route",
            GatewayError::Probe(_) => "probe",
            GatewayError::NotTcp { .. } => "not_tcp",
            GatewayError::NoCluster(_) => "no_cluster",
            GatewayError::NoEndpoint(_) => "no_endpoint",
            GatewayError::Connect { .. } => "connect_failed",
            GatewayError::ConnectTimeout { .. } => "connect_timeout",
            GatewayError::Copy(_) => "copy",
        }
    }
}

/// Where a forwarded connection went and how much it carried.
#[derive(Debug)]
pub struct Forwarded {
    pub sni: Option<String>,
    pub cluster: String,
    pub endpoint: SocketAddr,
    pub transferred: Transferred,
}

/// The route of a new connection, decided before any byte goes upstream.
struct Route {
    cluster: String,
    endpoint: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
}

fn route(
    state: &WorkerState,
    snapshot: &SharedSnapshot,
    listener: &str,
    sni: Option<&str>,
) -> Result<Route, GatewayError> {
    let l = snapshot
        .listeners
        .get(listener)
        .ok_or_else(|| GatewayError::ListenerGone(listener.to_owned()))?;
    if sni == Some(GATEWAY_PROBE_SNI) {
        return Err(GatewayError::Probe(listener.to_owned()));
    }
    let chain = chain_for_sni(l, sni).ok_or_else(|| GatewayError::NoRoute {
        listener: listener.to_owned(),
        sni: sni.map(str::to_owned),
    })?;
    let ChainAction::TcpProxy(proxy) = &chain.action else {
        return Err(GatewayError::NotTcp {
            listener: listener.to_owned(),
            chain: chain.name.clone(),
        });
    };
    let name = proxy.clusters.pick(fastrand::u64(..));
    let cluster = snapshot
        .clusters
        .get(name)
        .ok_or_else(|| GatewayError::NoCluster(name.to_owned()))?;
    let endpoint = snapshot
        .endpoints_of(name)
        .and_then(|la| state.pick(snapshot.generation, cluster, la))
        .map(|target| target.address)
        .ok_or_else(|| GatewayError::NoEndpoint(name.to_owned()))?;
    Ok(Route {
        cluster: name.to_owned(),
        endpoint,
        connect_timeout: cluster.connect_timeout,
        idle_timeout: proxy.idle_timeout,
    })
}

/// Serves one accepted connection on the gateway listener `listener`.
pub async fn forward(
    state: &WorkerState,
    listener: &str,
    mut downstream: TcpStream,
) -> Result<Forwarded, GatewayError> {
    let snapshot = state.snapshot();
    let inspect = snapshot
        .listeners
        .get(listener)
        .map(|l| (l.inspect_tls, l.inspect_timeout))
        .ok_or_else(|| GatewayError::ListenerGone(listener.to_owned()))?;
    let mut hello = BytesMut::new();
    let sni = if inspect.0 {
        read_client_hello(&mut downstream, &mut hello, inspect.1)
            .await?
            .server_name
    } else {
        None
    };
    let r = route(state, &snapshot, listener, sni.as_deref())?;
    drop(snapshot);
    let mut upstream =
        match tokio::time::timeout(r.connect_timeout, TcpStream::connect(r.endpoint)).await {
            Ok(Ok(s)) => s,
            Ok(Err(error)) => {
                return Err(GatewayError::Connect {
                    cluster: r.cluster,
                    endpoint: r.endpoint,
                    error,
                })
            }
            Err(_) => {
                return Err(GatewayError::ConnectTimeout {
                    cluster: r.cluster,
                    endpoint: r.endpoint,
                    timeout: r.connect_timeout,
                })
            }
        };
    let _ = upstream.set_nodelay(true);
    let _ = downstream.set_nodelay(true);
    upstream
        .write_all(&hello)
        .await
        .map_err(|error| GatewayError::Connect {
            cluster: r.cluster.clone(),
            endpoint: r.endpoint,
            error,
        })?;
    // Owned halves of TCP streams need no lock between the two directions.
    let counters = Counters::default();
    let transferred = copy_halves(
        downstream.into_split(),
        upstream.into_split(),
        r.idle_timeout,
        &counters,
    )
    .await?;
    Ok(Forwarded {
        sni,
        cluster: r.cluster,
        endpoint: r.endpoint,
        transferred,
    })
}
