//! Serving: TLS 1.3 over TCP with bounded handshakes (timeout, pending and concurrent
//! handshakes), HTTP/2 limits, and the tonic service routing `Sign`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::Status;

use super::identity::ServingCertResolver;
use super::messages::ProtoCodec;
use super::{
    ca_identity, CaService, ServiceError, SignRequest, SignResponse, CA_SERVER_NAME,
    MAX_CONNECTION_AGE, MAX_HEADER_LIST_BYTES, MAX_REQUEST_BYTES, MAX_STREAMS_PER_CONNECTION,
    SERVICE_NAME, SIGN_PATH,
};

impl CaService {
    /// Serves gRPC over TLS on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServiceError> {
        let resolver = ServingCertResolver::new(
            Arc::clone(&self),
            ca_identity(&self.config.trust_domain),
            CA_SERVER_NAME,
        )?;
        let mut tls = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ServiceError::Cert(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, trust_domain = %self.config.trust_domain, clusters = ?self.clusters(), "CA service listening");
        let (tx, rx) = mpsc::channel(64);
        let accept = tokio::spawn(accept_loop(listener, Arc::new(tls), tx, Arc::clone(&self)));
        let result = tonic::transport::Server::builder()
            .timeout(self.config.request_timeout)
            .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .http2_max_pending_accept_reset_streams(Some(MAX_STREAMS_PER_CONNECTION as usize))
            // Each stream may buffer at most one request (and its frame header) unread.
            .initial_stream_window_size(MAX_REQUEST_BYTES as u32 + 1024)
            .initial_connection_window_size(
                (MAX_REQUEST_BYTES as u32 + 1024) * MAX_STREAMS_PER_CONNECTION,
            )
            // Agents open a connection per request; nothing legitimate stays for long.
            .max_connection_age(MAX_CONNECTION_AGE)
            .max_connection_age_grace(self.config.request_timeout)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(CaGrpcServer {
                inner: Arc::clone(&self),
            })
            .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), shutdown)
            .await;
        accept.abort();
        tracing::info!(addr = %local, "CA service stopped");
        result.map_err(ServiceError::from)
    }
}

type TlsConn = tokio_rustls::server::TlsStream<TcpStream>;

/// Accepts TCP connections and completes TLS handshakes concurrently, handing finished
/// connections to the gRPC server. Each handshake is bounded by `handshake_timeout` (from the
/// accept); at most `max_pending_handshakes` connections may be in one (further connections
/// are closed at once), and at most `max_concurrent_handshakes` past their ClientHello (further
/// ones wait for a slot within their deadline). A connection that sends garbage, or nothing, is
/// closed when rustls refuses it or its time is up; no other connection waits for it.
async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    tx: mpsc::Sender<Result<TlsConn, std::io::Error>>,
    service: Arc<CaService>,
) {
    let timeout = service.config.handshake_timeout;
    let pending = Arc::new(Semaphore::new(service.config.max_pending_handshakes.max(1)));
    let crypto = Arc::new(Semaphore::new(
        service.config.max_concurrent_handshakes.max(1),
    ));
    let mut overloaded_logged: Option<Instant> = None;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "CA listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let Ok(slot) = Arc::clone(&pending).try_acquire_owned() else {
            service.handshake_failed("overloaded");
            if overloaded_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                overloaded_logged = Some(Instant::now());
                tracing::warn!(%peer, limit = service.config.max_pending_handshakes, "CA: too many connections in a TLS handshake; closing new ones (logged every 10 s at most)");
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (tls, crypto, conn_tx, service) = (
            Arc::clone(&tls),
            Arc::clone(&crypto),
            tx.clone(),
            Arc::clone(&service),
        );
        tokio::spawn(async move {
            let handshake = async {
                // Reading the ClientHello costs nothing worth bounding; the key exchange and
                // signature after it wait for a slot.
                let start =
                    tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
                        .await?;
                let _permit = crypto
                    .acquire_owned()
                    .await
                    .map_err(std::io::Error::other)?;
                start.into_stream(tls).await
            };
            let result = tokio::time::timeout(timeout, handshake).await;
            drop(slot);
            match result {
                Ok(Ok(tls)) => {
                    let _ = conn_tx.send(Ok(tls)).await;
                }
                Ok(Err(e)) => {
                    service.handshake_failed("tls");
                    tracing::debug!(%peer, error = %e, "CA TLS handshake failed");
                }
                Err(_) => {
                    service.handshake_failed("timeout");
                    tracing::debug!(%peer, "CA TLS handshake timed out");
                }
            }
        });
    }
}

/// The tonic service: routes `Sign` to [`CaService::sign`].
#[derive(Clone)]
struct CaGrpcServer {
    inner: Arc<CaService>,
}

impl tonic::server::NamedService for CaGrpcServer {
    const NAME: &'static str = SERVICE_NAME;
}

struct SignMethod(Arc<CaService>);

impl tonic::server::UnaryService<SignRequest> for SignMethod {
    type Response = SignResponse;
    type Future = BoxFuture<tonic::Response<SignResponse>, Status>;

    fn call(&mut self, request: tonic::Request<SignRequest>) -> Self::Future {
        let service = Arc::clone(&self.0);
        Box::pin(async move {
            let peer = request.remote_addr();
            let started = Instant::now();
            let result = service.sign(request.get_ref()).await;
            tracing::debug!(peer = ?peer, elapsed_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "Sign");
            result
                .map(|issued| tonic::Response::new(SignResponse::from(issued)))
                .map_err(|e| e.to_status())
        })
    }
}

impl<B> Service<http::Request<B>> for CaGrpcServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == SIGN_PATH {
            let method = SignMethod(Arc::clone(&self.inner));
            Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(ProtoCodec::<SignResponse, SignRequest>::default())
                        .max_decoding_message_size(MAX_REQUEST_BYTES);
                Ok(grpc.unary(method, req).await)
            })
        } else {
            let path = req.uri().path().to_owned();
            Box::pin(async move {
                Ok(
                    Status::unimplemented(format!("{path}: no such method on {SERVICE_NAME}"))
                        .into_http(),
                )
            })
        }
    }
}
