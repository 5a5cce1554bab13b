//! The xDS listener: TLS 1.3 with a mandatory client certificate of the mesh (chained to the
//! mesh root, one SPIFFE ID of the trust domain). Each connection carries its verified
//! [`PeerCert`] to the ADS handlers as tonic connect info; a connection without one (plaintext,
//! a foreign root, an expired certificate) never reaches them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;

use super::AdsServer;
use crate::auth::PeerCert;
use crate::status::ProxyRegistry;

/// Who is on the other end of an xDS connection, as its TLS handshake proved.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The TCP peer.
    pub addr: Option<SocketAddr>,
    /// The verified mesh certificate; `None` on connections served without TLS (which the
    /// ADS handlers refuse).
    pub cert: Option<Arc<PeerCert>>,
}

/// A TLS connection whose client certificate was verified.
pub struct AuthenticatedConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl Connected for AuthenticatedConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for AuthenticatedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AuthenticatedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// TLS settings of the xDS listener.
#[derive(Clone)]
pub struct XdsTls {
    /// A server config that requires and verifies mesh client certificates
    /// (`causeway_trust::verify::mtls_server_config`).
    pub config: Arc<rustls::ServerConfig>,
    /// The mesh's trust domain (client SPIFFE IDs are read in it).
    pub trust_domain: String,
    /// Limit on one TLS handshake.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for XdsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsTls")
            .field("trust_domain", &self.trust_domain)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Serves `ads` on `listener` over mTLS until `shutdown` resolves.
pub async fn serve_tls(
    ads: AdsServer,
    listener: TcpListener,
    tls: XdsTls,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (tx, rx) = mpsc::channel(64);
    let accept = tokio::spawn(accept_loop(listener, tls, Arc::clone(&ads.registry), tx));
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(ads.into_service())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), shutdown)
        .await;
    accept.abort();
    result
}

async fn accept_loop(
    listener: TcpListener,
    tls: XdsTls,
    registry: Arc<ProxyRegistry>,
    tx: mpsc::Sender<Result<AuthenticatedConn, io::Error>>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config));
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "xDS listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let registry = Arc::clone(&registry);
        let (timeout, trust_domain) = (tls.handshake_timeout, tls.trust_domain.clone());
        tokio::spawn(async move {
            let refuse = |message: String| {
                tracing::warn!(peer = %addr, reason = "tls", %message, "xDS connection refused");
                registry.reject(&addr.to_string(), "tls", &message);
            };
            let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return refuse(format!(
                        "TLS handshake failed (xDS requires mTLS with a mesh certificate): {e}"
                    ))
                }
                Err(_) => return refuse(format!("TLS handshake not completed in {timeout:?}")),
            };
            let certs = stream.get_ref().1.peer_certificates();
            let cert = match causeway_trust::verify::peer_identity(certs, &trust_domain) {
                Ok(id) => PeerCert {
                    spiffe: id.spiffe,
                    cluster: id.cluster,
                },
                Err(e) => return refuse(format!("client certificate: {e}")),
            };
            let conn = AuthenticatedConn {
                inner: stream,
                peer: PeerInfo {
                    addr: Some(addr),
                    cert: Some(Arc::new(cert)),
                },
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}
