//! The xDS listener: TLS 1.3 with a mandatory client certificate of the mesh (chained to the
//! mesh root, one SPIFFE ID of the trust domain). Each connection carries its verified
//! [`PeerCert`] to the ADS handlers as tonic connect info; a connection without one (plaintext,
//! a foreign root, an expired certificate) never reaches them.
//!
//! The listener is bounded ([`XdsLimits`]): connections in total, connections in a TLS
//! handshake, handshakes past their ClientHello, a time limit on each handshake, streams per
//! connection, and the HTTP/2 windows and header size. A silent, trickling or garbage-sending
//! client holds at most one pending-handshake slot for at most the handshake timeout, and never
//! delays another client's handshake.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
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
    /// The connection's stream slots ([`XdsLimits::max_streams_per_connection`]); each ADS
    /// stream holds one while it lasts. `None`: unbounded (connections not from
    /// [`serve_tls`]).
    pub streams: Option<Arc<Semaphore>>,
}

/// A TLS connection whose client certificate was verified.
pub struct AuthenticatedConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerInfo,
    /// The connection's place among [`XdsLimits::max_connections`], given back when the
    /// connection is dropped.
    _slot: OwnedSemaphorePermit,
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

/// Bounds of the xDS listener (see `docs/security.md`, "Limits on the listeners").
#[derive(Debug, Clone)]
pub struct XdsLimits {
    /// Connections open at once, handshakes included; beyond it new connections are closed at
    /// once (`causeway_xds_rejected_nodes_total{reason="overloaded"}`).
    pub max_connections: usize,
    /// Connections accepted but not yet through their TLS handshake, at most (within
    /// `max_connections`); beyond it new connections are closed at once (`overloaded`).
    pub max_pending_handshakes: usize,
    /// TLS handshakes past their ClientHello (key exchange and signature) at once; further ones
    /// wait for a slot within their handshake timeout. A connection that never completes a
    /// ClientHello never takes one.
    pub max_concurrent_handshakes: usize,
    /// ADS streams open at once on one connection (Envoy uses one); a further stream is refused
    /// with `RESOURCE_EXHAUSTED` (`overloaded`) and the others are untouched.
    pub max_streams_per_connection: usize,
}

impl Default for XdsLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            // As many as may be open: when a control plane restarts, every proxy reconnects at
            // once, and each one closed at the door comes back only after its backoff (behind a
            // bound of 1,024, 2,000 proxies connecting at once in `bench/xds-scale` saw up to
            // 1,700 closed handshakes). A pending handshake costs a task and a ClientHello
            // buffer for at most the handshake timeout.
            max_pending_handshakes: 4096,
            max_concurrent_handshakes: 64,
            max_streams_per_connection: 8,
        }
    }
}

/// Largest header list of a request (bytes).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Unread request data a stream may buffer (its HTTP/2 flow-control window).
pub const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
/// Unread request data a connection may buffer, all streams together.
pub const CONNECTION_WINDOW_BYTES: u32 = 2 * 1024 * 1024;

/// Serves `ads` on `listener` over mTLS until `shutdown` resolves, with the default
/// [`XdsLimits`].
pub async fn serve_tls(
    ads: AdsServer,
    listener: TcpListener,
    tls: XdsTls,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    serve_tls_with_limits(ads, listener, tls, XdsLimits::default(), shutdown).await
}

/// Serves `ads` on `listener` over mTLS within `limits` until `shutdown` resolves.
pub async fn serve_tls_with_limits(
    ads: AdsServer,
    listener: TcpListener,
    tls: XdsTls,
    limits: XdsLimits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (tx, rx) = mpsc::channel(64);
    // HTTP/2 itself allows twice the streams the ADS handlers accept, so a stream beyond the
    // handlers' bound is refused with a gRPC status saying why, and one beyond HTTP/2's waits.
    let h2_streams = u32::try_from(limits.max_streams_per_connection.max(1) * 2).unwrap_or(16);
    let accept = tokio::spawn(accept_loop(
        listener,
        tls,
        limits,
        Arc::clone(&ads.registry),
        tx,
    ));
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(h2_streams)
        .http2_max_pending_accept_reset_streams(Some(h2_streams as usize))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(ads.into_service())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), shutdown)
        .await;
    accept.abort();
    result
}

/// Accepts TCP connections and completes TLS handshakes concurrently, handing verified
/// connections to the gRPC server. Mirrors the CA's listener: each handshake is bounded by the
/// handshake timeout (from the accept), at most `max_pending_handshakes` connections are in one
/// and at most `max_concurrent_handshakes` past their ClientHello; no connection waits for
/// another's.
async fn accept_loop(
    listener: TcpListener,
    tls: XdsTls,
    limits: XdsLimits,
    registry: Arc<ProxyRegistry>,
    tx: mpsc::Sender<Result<AuthenticatedConn, io::Error>>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let pending = Arc::new(Semaphore::new(limits.max_pending_handshakes.max(1)));
    let crypto = Arc::new(Semaphore::new(limits.max_concurrent_handshakes.max(1)));
    let mut overloaded_logged: Option<Instant> = None;
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
        let slots = Arc::clone(&connections)
            .try_acquire_owned()
            .map_err(|_| ("connections open", limits.max_connections))
            .and_then(|conn| {
                Arc::clone(&pending)
                    .try_acquire_owned()
                    .map(|handshake| (conn, handshake))
                    .map_err(|_| {
                        (
                            "connections in a TLS handshake",
                            limits.max_pending_handshakes,
                        )
                    })
            });
        let (slot, handshake_slot) = match slots {
            Ok(slots) => slots,
            Err((what, limit)) => {
                let message = format!("too many {what} (at most {limit}); connection closed");
                registry.reject(&addr.to_string(), "overloaded", &message);
                if overloaded_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    overloaded_logged = Some(Instant::now());
                    tracing::warn!(peer = %addr, reason = "overloaded", %message, "xDS connection refused (logged every 10 s at most)");
                }
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (config, crypto, tx) = (Arc::clone(&tls.config), Arc::clone(&crypto), tx.clone());
        let registry = Arc::clone(&registry);
        let (timeout, trust_domain) = (tls.handshake_timeout, tls.trust_domain.clone());
        let streams = limits.max_streams_per_connection.max(1);
        tokio::spawn(async move {
            let refuse = |message: String| {
                tracing::warn!(peer = %addr, reason = "tls", %message, "xDS connection refused");
                registry.reject(&addr.to_string(), "tls", &message);
            };
            let handshake = async {
                // Reading the ClientHello costs a task and a small buffer; the key exchange
                // and signature after it wait for a slot.
                let start =
                    tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
                        .await?;
                let _permit = crypto.acquire_owned().await.map_err(io::Error::other)?;
                start.into_stream(config).await
            };
            let result = tokio::time::timeout(timeout, handshake).await;
            drop(handshake_slot);
            let stream = match result {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return refuse(format!(
                        "TLS handshake failed (xDS requires mTLS with a mesh certificate): {}",
                        handshake_error(&e)
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
                    streams: Some(Arc::new(Semaphore::new(streams))),
                },
                _slot: slot,
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

/// A failed handshake for operators: the mesh verifier's own message when it refused the
/// peer's certificate (rustls shows those only as a debug dump), rustls' otherwise.
fn handshake_error(e: &io::Error) -> String {
    use rustls::{CertificateError, Error as Tls};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Tls>()) {
        Some(Tls::InvalidCertificate(CertificateError::Other(other))) => {
            format!("invalid peer certificate: {other}")
        }
        _ => e.to_string(),
    }
}
