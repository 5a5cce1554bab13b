//! The CA client: one `Sign` call over a fresh TLS connection that verifies the CA's identity.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tonic::codegen::http;
use tonic::Code;

use super::messages::ProtoCodec;
use super::{ca_identity, SignRequest, SignResponse, CA_SERVER_NAME, REASON_METADATA, SIGN_PATH};
use crate::verify::VerifyError;

/// Why a client call to the CA failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect, the TLS handshake failed, or no answer in time.
    #[error("cannot reach the CA at {addr}: {reason}")]
    Unreachable {
        /// The CA address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The CA answered and refused.
    #[error("the CA at {addr} refused ({reason}): {message}")]
    Refused {
        /// The CA address.
        addr: SocketAddr,
        /// gRPC status code.
        code: Code,
        /// The refusal reason (the CA's metric label), `unknown` if absent.
        reason: String,
        /// The CA's message.
        message: String,
    },
    /// TLS configuration problem on our side (e.g. an empty root bundle).
    #[error("CA client TLS: {0}")]
    Tls(#[from] VerifyError),
}

/// Settings for calling the CA.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// The CA service address.
    pub addr: SocketAddr,
    /// Roots to verify the CA's certificate with (bootstrap trust).
    pub bundle_pem: String,
    /// Trust domain: the CA must present [`ca_identity`] of it.
    pub trust_domain: String,
    /// Limit on connecting plus the TLS handshake.
    pub connect_timeout: Duration,
    /// Limit on the whole call.
    pub request_timeout: Duration,
}

impl CaClientConfig {
    /// Defaults (5 s to connect, 10 s per call).
    pub fn new(
        addr: SocketAddr,
        bundle_pem: impl Into<String>,
        trust_domain: impl Into<String>,
    ) -> Self {
        Self {
            addr,
            bundle_pem: bundle_pem.into(),
            trust_domain: trust_domain.into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Asks the CA to sign `request`, over a fresh TLS connection whose server certificate must
/// chain to `config.bundle_pem` and carry [`ca_identity`]. Bounded by the config's timeouts.
pub async fn request_certificate(
    config: &CaClientConfig,
    request: SignRequest,
) -> Result<SignResponse, ClientError> {
    let addr = config.addr;
    let unreachable = |reason: String| ClientError::Unreachable { addr, reason };
    let verifier = crate::verify::SpiffeServerVerifier::new(
        &config.bundle_pem,
        &config.trust_domain,
        vec![ca_identity(&config.trust_domain)],
    )?;
    let mut tls = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| VerifyError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let connect_timeout = config.connect_timeout;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(connect_timeout)
        .timeout(config.request_timeout);
    let call = async {
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_uri| {
                let connector = connector.clone();
                async move {
                    let io = tokio::time::timeout(connect_timeout, async {
                        let tcp = TcpStream::connect(addr).await?;
                        let _ = tcp.set_nodelay(true);
                        let name = rustls::pki_types::ServerName::try_from(CA_SERVER_NAME)
                            .map_err(std::io::Error::other)?;
                        connector.connect(name, tcp).await
                    })
                    .await
                    .map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "connect and TLS handshake timed out",
                        )
                    })??;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
                }
            }))
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        grpc.unary(
            tonic::Request::new(request),
            http::uri::PathAndQuery::from_static(SIGN_PATH),
            ProtoCodec::<SignRequest, SignResponse>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| match status.metadata().get(REASON_METADATA) {
            Some(reason) => ClientError::Refused {
                addr,
                code: status.code(),
                reason: reason.to_str().unwrap_or("unknown").to_owned(),
                message: status.message().to_owned(),
            },
            None => unreachable(format!("{:?}: {}", status.code(), status.message())),
        })
    };
    tokio::time::timeout(config.request_timeout + connect_timeout, call)
        .await
        .map_err(|_| unreachable(format!("no answer within {:?}", config.request_timeout)))?
}

/// An error and its sources on one line (transport errors hide the useful part in sources).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
