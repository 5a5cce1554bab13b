//! The SDS client of Causeway's own data plane: it follows the local agent's secrets
//! ([`causeway_trust::sds`]) over its Unix socket as Envoy does, and turns them into rustls
//! configurations for the xDS connection and for mesh mTLS.
//!
//! [`SdsClient::start`] keeps one StreamSecrets stream open for `default` and `ROOTCA`, ACKs every
//! response it accepts, NACKs one it cannot use (keeping the last good credentials) and
//! reconnects with bounded exponential backoff. Key material never reaches logs or `Debug`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use causeway_model::SpiffeId;
use causeway_trust::sds::{SECRET_CERT, SECRET_ROOT, SECRET_TYPE};
use causeway_trust::verify::VerifyError;
use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource, Node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

pub use super::tls::{mesh_client_tls, mesh_server_tls, xds_client_tls};
use super::tls::{provider, spiffe_of};

const CHAIN: &str = "tls_certificate.certificate_chain";
const KEY: &str = "tls_certificate.private_key";
const TRUSTED_CA: &str = "validation_context.trusted_ca";
/// Requests queued towards the agent; one per response, so a full queue means a stalled agent.
const REQUEST_QUEUE: usize = 8;
/// HTTP/2 keepalive (interval, timeout): detects a dead agent on an idle stream.
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(10));

/// Why SDS credentials could not be had or used. Messages never quote key material.
#[derive(Debug, thiserror::Error)]
pub enum SdsClientError {
    /// The agent's socket could not be used: missing, refused, timed out, or the stream failed.
    #[error("SDS from the agent at {socket}: {problem}")]
    Agent { socket: PathBuf, problem: String },
    /// A response or resource of another type than `Secret`.
    #[error("SDS response carries type {0}, not {SECRET_TYPE}")]
    WrongType(String),
    /// A resource that does not decode as a `Secret`.
    #[error("SDS resource does not decode as a Secret: {0}")]
    Undecodable(#[source] prost::DecodeError),
    /// A secret without a field it needs.
    #[error("secret {secret}: {field} is missing")]
    Missing {
        secret: &'static str,
        field: &'static str,
    },
    /// A secret field that cannot be used.
    #[error("secret {secret}: {field} is invalid: {reason}")]
    Malformed {
        secret: &'static str,
        field: &'static str,
        reason: String,
    },
    /// Not `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    #[error("{0:?} is not a SPIFFE ID (spiffe://<trust-domain>/ns/<ns>/sa/<sa>)")]
    BadIdentity(String),
    /// Expected peer identities must be given, all of one trust domain.
    #[error("expected peer identities: {0}")]
    ExpectedIdentities(String),
    /// A certificate or bundle refused by the trust crate.
    #[error("SDS credentials: {0}")]
    Verify(#[from] VerifyError),
    /// rustls refused the configuration.
    #[error("TLS configuration from the SDS credentials: {0}")]
    Tls(String),
}

fn malformed(
    secret: &'static str,
    field: &'static str,
    reason: impl Into<String>,
) -> SdsClientError {
    SdsClientError::Malformed {
        secret,
        field,
        reason: reason.into(),
    }
}

/// The workload's credentials as the agent serves them: certificate chain (leaf first) and key
/// from `default`, trusted roots from `ROOTCA`, and the SDS version they came with.
#[derive(PartialEq, Eq)]
pub struct Credentials {
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The workload's private key; never printed (`Debug` elides it).
    pub key: PrivateKeyDer<'static>,
    /// Mesh roots (several during a root rotation).
    pub roots: Vec<CertificateDer<'static>>,
    /// SDS `version_info` of the response that completed them.
    pub version: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("chain", &format_args!("{} certificates", self.chain.len()))
            .field("key", &format_args!("[elided]"))
            .field("roots", &format_args!("{} certificates", self.roots.len()))
            .field("version", &self.version)
            .finish()
    }
}

impl Credentials {
    /// Credentials from PEM text, checked like the secrets (errors name `default`/`ROOTCA`).
    pub fn from_pem(
        chain_pem: &str,
        key_pem: &str,
        roots_pem: &str,
        version: impl Into<String>,
    ) -> Result<Self, SdsClientError> {
        let (chain, key) = cert_and_key(SECRET_CERT, chain_pem.as_bytes(), key_pem.as_bytes())?;
        Ok(Self {
            chain,
            key,
            roots: roots(SECRET_ROOT, roots_pem.as_bytes())?,
            version: version.into(),
        })
    }

    /// The workload's own SPIFFE ID (its leaf's).
    pub fn identity(&self) -> Result<SpiffeId, SdsClientError> {
        let leaf = self.chain.first().ok_or(VerifyError::NoCertificate)?;
        Ok(spiffe_of(leaf)?)
    }
}

fn inline<'a>(
    secret: &'static str,
    field: &'static str,
    source: Option<&'a DataSource>,
) -> Result<&'a [u8], SdsClientError> {
    match source.and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) if !b.is_empty() => Ok(b),
        Some(Specifier::InlineString(s)) if !s.is_empty() => Ok(s.as_bytes()),
        Some(Specifier::Filename(_)) => Err(malformed(secret, field, "a file; inline PEM only")),
        Some(Specifier::EnvironmentVariable(_)) => {
            Err(malformed(secret, field, "a variable; inline PEM only"))
        }
        _ => Err(SdsClientError::Missing { secret, field }),
    }
}

fn certs(
    secret: &'static str,
    field: &'static str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, SdsClientError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(secret, field, format!("unreadable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(malformed(secret, field, "no PEM certificate"));
    }
    Ok(certs)
}

type CertAndKey = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn cert_and_key(
    secret: &'static str,
    chain: &[u8],
    key: &[u8],
) -> Result<CertAndKey, SdsClientError> {
    let chain = certs(secret, CHAIN, chain)?;
    // The parser's own message is not shown: it could quote part of the key.
    let bad_key = |reason: String| malformed(secret, KEY, reason);
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|_| bad_key("not a PEM private key (PKCS#8, SEC1 or PKCS#1)".into()))?;
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider())
        .map_err(|e| bad_key(format!("unusable with the certificate chain: {e}")))?;
    Ok((chain, key))
}

fn roots(secret: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, SdsClientError> {
    let roots = certs(secret, TRUSTED_CA, pem)?;
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(roots.iter().cloned());
    if added == 0 {
        return Err(malformed(secret, TRUSTED_CA, "no usable root certificate"));
    }
    Ok(roots)
}

/// One secret of a response.
enum Part {
    Cert(CertAndKey),
    Roots(Vec<CertificateDer<'static>>),
}

fn parse_resource(any: &Any) -> Result<Option<Part>, SdsClientError> {
    if any.type_url != SECRET_TYPE {
        return Err(SdsClientError::WrongType(any.type_url.clone()));
    }
    let s = Secret::decode(any.value.as_slice()).map_err(SdsClientError::Undecodable)?;
    let missing = |secret, field| SdsClientError::Missing { secret, field };
    match (s.name.as_str(), &s.r#type) {
        (SECRET_CERT, Some(secret::Type::TlsCertificate(t))) => {
            let chain = inline(SECRET_CERT, CHAIN, t.certificate_chain.as_ref())?;
            let key = inline(SECRET_CERT, KEY, t.private_key.as_ref())?;
            Ok(Some(Part::Cert(cert_and_key(SECRET_CERT, chain, key)?)))
        }
        (SECRET_CERT, _) => Err(missing(SECRET_CERT, "tls_certificate")),
        (SECRET_ROOT, Some(secret::Type::ValidationContext(v))) => {
            let pem = inline(SECRET_ROOT, TRUSTED_CA, v.trusted_ca.as_ref())?;
            Ok(Some(Part::Roots(roots(SECRET_ROOT, pem)?)))
        }
        (SECRET_ROOT, _) => Err(missing(SECRET_ROOT, "validation_context")),
        (other, _) => {
            tracing::debug!(secret = other, "SDS secret not asked for; ignored");
            Ok(None)
        }
    }
}

/// The last good secrets, kept across responses and reconnections.
#[derive(Default)]
struct Held {
    cert: Option<CertAndKey>,
    roots: Option<Vec<CertificateDer<'static>>>,
}

impl Held {
    /// Applies a whole response or none of it; returns new credentials when they differ from
    /// `current`.
    fn apply(
        &mut self,
        resp: &DiscoveryResponse,
        current: Option<&Credentials>,
    ) -> Result<Option<Credentials>, SdsClientError> {
        if !resp.type_url.is_empty() && resp.type_url != SECRET_TYPE {
            return Err(SdsClientError::WrongType(resp.type_url.clone()));
        }
        let parts = resp
            .resources
            .iter()
            .map(parse_resource)
            .collect::<Result<Vec<_>, _>>()?;
        for part in parts.into_iter().flatten() {
            match part {
                Part::Cert(c) => self.cert = Some(c),
                Part::Roots(r) => self.roots = Some(r),
            }
        }
        let (Some((chain, key)), Some(roots)) = (&self.cert, &self.roots) else {
            return Ok(None);
        };
        let next = Credentials {
            chain: chain.clone(),
            key: key.clone_key(),
            roots: roots.clone(),
            version: resp.version_info.clone(),
        };
        Ok((current != Some(&next)).then_some(next))
    }
}

/// Timing of the SDS client.
#[derive(Debug, Clone)]
pub struct SdsTuning {
    /// Limit on connecting to the socket.
    pub connect_timeout: Duration,
    /// Limit on opening the stream and on its first response.
    pub response_timeout: Duration,
    /// First reconnection delay; doubled after each failure.
    pub backoff_initial: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
}

impl Default for SdsTuning {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

type Publisher = watch::Sender<Option<Arc<Credentials>>>;

/// A client of the agent's SDS socket; see the module documentation.
#[derive(Debug, Clone)]
pub struct SdsClient {
    socket: PathBuf,
    node: Node,
    tuning: SdsTuning,
}

/// [`SdsClient::start`] with default timing.
pub fn watch(socket: PathBuf, node: Node) -> watch::Receiver<Option<Arc<Credentials>>> {
    SdsClient::new(socket, node).start()
}

impl SdsClient {
    /// A client of the agent at `socket`, presenting `node` on each stream's first request.
    pub fn new(socket: impl Into<PathBuf>, node: Node) -> Self {
        Self {
            socket: socket.into(),
            node,
            tuning: SdsTuning::default(),
        }
    }

    /// Other timing.
    pub fn with_tuning(mut self, tuning: SdsTuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// Spawns the client on the current Tokio runtime (panics outside one, like
    /// `tokio::spawn`). The receiver holds `None` until both a certificate and roots arrived,
    /// then each new version; the task ends when every receiver is dropped.
    pub fn start(self) -> watch::Receiver<Option<Arc<Credentials>>> {
        let (publish, rx) = watch::channel(None);
        tokio::spawn(async move {
            tokio::select! {
                () = publish.closed() => {}
                () = self.run(&publish) => {}
            }
        });
        rx
    }

    async fn run(&self, publish: &Publisher) {
        let mut held = Held::default();
        let mut delay = self.tuning.backoff_initial;
        loop {
            let mut accepted = false;
            let Err(error) = self.stream(publish, &mut held, &mut accepted).await;
            if accepted {
                delay = self.tuning.backoff_initial;
            }
            tracing::warn!(socket = %self.socket.display(), %error, retry_in = ?delay, "no SDS stream to the agent; reconnecting");
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(self.tuning.backoff_max);
        }
    }

    /// One stream, until it fails; `accepted` is set once a response was accepted.
    async fn stream(
        &self,
        publish: &Publisher,
        held: &mut Held,
        accepted: &mut bool,
    ) -> Result<Infallible, SdsClientError> {
        let mut client = SecretDiscoveryServiceClient::new(self.connect().await?);
        let (requests, rx) = mpsc::channel(REQUEST_QUEUE);
        let node = Some(self.node.clone());
        self.send(
            &requests,
            DiscoveryRequest {
                node,
                ..request(String::new(), String::new(), None)
            },
        )?;
        let wait = self.tuning.response_timeout;
        let mut responses =
            tokio::time::timeout(wait, client.stream_secrets(ReceiverStream::new(rx)))
                .await
                .map_err(|_| self.no_response())?
                .map_err(|s| self.status(&s))?
                .into_inner();
        let mut version = String::new();
        let mut answered = false;
        loop {
            let next = responses.message();
            let next = if answered {
                next.await
            } else {
                tokio::time::timeout(wait, next)
                    .await
                    .map_err(|_| self.no_response())?
            };
            let resp = next
                .map_err(|s| self.status(&s))?
                .ok_or_else(|| self.failed("the agent closed the stream"))?;
            answered = true;
            let current = publish.borrow().clone();
            let nack = match held.apply(&resp, current.as_deref()) {
                Ok(update) => {
                    *accepted = true;
                    version.clone_from(&resp.version_info);
                    if let Some(creds) = update {
                        announce(publish, creds);
                    }
                    None
                }
                Err(e) => {
                    tracing::warn!(version = %resp.version_info, error = %e, "SDS response rejected (NACK); keeping the last good credentials");
                    Some(RpcStatus {
                        code: tonic::Code::InvalidArgument as i32,
                        message: e.to_string(),
                        ..Default::default()
                    })
                }
            };
            self.send(&requests, request(version.clone(), resp.nonce, nack))?;
        }
    }

    async fn connect(&self) -> Result<tonic::transport::Channel, SdsClientError> {
        let t = &self.tuning;
        let endpoint = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_timeout(t.connect_timeout)
            .http2_keep_alive_interval(KEEPALIVE.0)
            .keep_alive_timeout(KEEPALIVE.1)
            .keep_alive_while_idle(true);
        let socket = self.socket.clone();
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        match tokio::time::timeout(
            t.connect_timeout,
            endpoint.connect_with_connector(connector),
        )
        .await
        {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(self.failed(format!("cannot connect: {}", error_chain(&e)))),
            Err(_) => Err(self.failed(format!(
                "connecting timed out after {:?}",
                t.connect_timeout
            ))),
        }
    }

    fn send(
        &self,
        requests: &mpsc::Sender<DiscoveryRequest>,
        req: DiscoveryRequest,
    ) -> Result<(), SdsClientError> {
        requests
            .try_send(req)
            .map_err(|_| self.failed("the agent stopped reading requests"))
    }

    fn failed(&self, problem: impl Into<String>) -> SdsClientError {
        SdsClientError::Agent {
            socket: self.socket.clone(),
            problem: problem.into(),
        }
    }

    fn no_response(&self) -> SdsClientError {
        let after = self.tuning.response_timeout;
        self.failed(format!(
            "no secrets within {after:?} (has the agent got a certificate yet?)"
        ))
    }

    fn status(&self, status: &tonic::Status) -> SdsClientError {
        let (code, message) = (status.code(), status.message());
        self.failed(format!("stream failed: {code:?}: {message}"))
    }
}

/// A request for both secrets; an ACK, or a NACK with `error_detail`, when `response_nonce` is set.
fn request(
    version_info: String,
    response_nonce: String,
    error: Option<RpcStatus>,
) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info,
        resource_names: vec![SECRET_CERT.to_owned(), SECRET_ROOT.to_owned()],
        type_url: SECRET_TYPE.to_owned(),
        response_nonce,
        error_detail: error,
        ..Default::default()
    }
}

/// Publishes new credentials, logging their version (only).
fn announce(publish: &Publisher, creds: Credentials) {
    let previous = publish.borrow().as_ref().map(|c| c.version.clone());
    match previous {
        None => tracing::info!(version = %creds.version, "SDS credentials received from the agent"),
        Some(previous) => {
            tracing::info!(version = %creds.version, %previous, "SDS credentials rotated")
        }
    }
    publish.send_replace(Some(Arc::new(creds)));
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let chain = std::iter::successors(Some(e), |e| e.source());
    chain
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
