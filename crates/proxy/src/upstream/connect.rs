//! Opening a connection to an endpoint of a cluster: TCP within the cluster's connect timeout,
//! then, when the cluster has upstream TLS, the mTLS handshake with the endpoint's SNI (a pod
//! behind its gateway) or the cluster's, and the
//! check of the server's SPIFFE ID (both inside the same timeout, so a server that accepts and
//! never answers the handshake cannot hold a request longer than the connect timeout).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use causeway_xds::dataplane::ClusterConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Target;
use crate::tls::TlsError;

/// Why no connection to an endpoint could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {endpoint} of cluster {cluster}: {error}")]
    Refused {
        cluster: String,
        endpoint: Target,
        error: io::Error,
    },
    #[error("connecting to {endpoint} of cluster {cluster}: no answer within {timeout:?}")]
    Timeout {
        cluster: String,
        endpoint: Target,
        timeout: Duration,
    },
    #[error("mTLS handshake with {endpoint} of cluster {cluster} (SNI {sni}): {error}")]
    Handshake {
        cluster: String,
        endpoint: Target,
        sni: String,
        error: io::Error,
    },
    #[error("TLS towards cluster {cluster}: {error}")]
    Tls { cluster: String, error: TlsError },
}

impl ConnectError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Refused { .. } => "connect_failed",
            ConnectError::Timeout { .. } => "connect_timeout",
            ConnectError::Handshake { .. } => "tls_handshake_failed",
            ConnectError::Tls { .. } => "tls_config",
        }
    }
}

/// A connection to an upstream endpoint, in plaintext or mTLS.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpstreamIo {
    /// True when ALPN chose HTTP/2.
    pub fn is_h2(&self) -> bool {
        match self {
            UpstreamIo::Plain(_) => false,
            UpstreamIo::Tls(t) => t.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Connects to `endpoint` of `cluster`, with `tls` when the cluster has upstream TLS.
pub async fn connect(
    cluster: &ClusterConfig,
    endpoint: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<UpstreamIo, ConnectError> {
    let timeout = cluster.connect_timeout;
    let attempt = async {
        let tcp = TcpStream::connect(endpoint.address)
            .await
            .map_err(|error| ConnectError::Refused {
                cluster: cluster.name.clone(),
                endpoint: endpoint.clone(),
                error,
            })?;
        let _ = tcp.set_nodelay(true);
        let (Some(config), Some(upstream)) = (tls, cluster.upstream_tls.as_ref()) else {
            return Ok(UpstreamIo::Plain(tcp));
        };
        let sni = endpoint.sni.as_deref().unwrap_or(&upstream.sni);
        let handshake = |error: io::Error| ConnectError::Handshake {
            cluster: cluster.name.clone(),
            endpoint: endpoint.clone(),
            sni: sni.to_owned(),
            error,
        };
        let name = ServerName::try_from(sni.to_owned())
            .map_err(|e| handshake(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(handshake)?;
        Ok(UpstreamIo::Tls(Box::new(stream)))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            cluster: cluster.name.clone(),
            endpoint: endpoint.clone(),
            timeout,
        }),
    }
}
