//! The CA service: an HTTPS endpoint (TLS, verified against the mesh root) that signs workload
//! CSRs after authenticating the requester's bootstrap credential.
//!
//! `POST /v1/sign` with `Authorization: Bearer <token>` and `{"csr_pem": ..., "ttl_seconds":
//! ...}` answers `{"cert_chain_pem", "trust_bundle_pem", "not_after"}`. No request or answer
//! ever carries a private key: the types below have no field for one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use causeway_model::{ClusterId, SpiffeId};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rcgen::{CertificateSigningRequestParams, KeyPair, SanType};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::ca::{ClusterCa, IssuedCert};
use crate::credential::{AuthError, Authenticator};
use crate::verify::VerifyError;

/// The SPIFFE ID the CA service presents.
pub fn ca_identity(trust_domain: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, "causeway-system", "causeway-ca")
}

/// A signing request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignRequest {
    /// PKCS#10 CSR, PEM.
    pub csr_pem: String,
    /// Requested lifetime; capped by the CA.
    pub ttl_seconds: Option<u64>,
}

/// A signing answer: certificates only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignResponse {
    /// Leaf then intermediate.
    pub cert_chain_pem: String,
    /// Roots to trust.
    pub trust_bundle_pem: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
}

/// Why the CA refused to sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Missing or unknown credential.
    #[error("{0}")]
    Credential(#[from] AuthError),
    /// The CSR asks for another identity than the credential grants.
    #[error("CSR asks for {requested} but the credential grants {granted}")]
    IdentityNotGranted {
        /// What the CSR asked for.
        requested: String,
        /// What the credential grants.
        granted: String,
    },
    /// Unparseable CSR or bad CSR signature.
    #[error("invalid CSR: {0}")]
    BadCsr(String),
    /// This CA holds no intermediate for the workload's cluster.
    #[error("no intermediate CA for cluster {0} on this control plane")]
    NoClusterCa(ClusterId),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Internal(String),
}

impl SignError {
    /// Label for `causeway_ca_rejections_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            SignError::Credential(AuthError::Missing) => "missing_credential",
            SignError::Credential(AuthError::Unknown) => "bad_credential",
            SignError::IdentityNotGranted { .. } => "identity_not_granted",
            SignError::BadCsr(_) => "bad_csr",
            SignError::NoClusterCa(_) => "no_cluster_ca",
            SignError::Internal(_) => "internal",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            SignError::Credential(_) => StatusCode::UNAUTHORIZED,
            SignError::IdentityNotGranted { .. } => StatusCode::FORBIDDEN,
            SignError::BadCsr(_) => StatusCode::BAD_REQUEST,
            SignError::NoClusterCa(_) | SignError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Why the service could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No intermediate to issue the serving certificate with.
    #[error("the CA service needs at least one cluster intermediate")]
    NoCa,
    /// Certificate trouble.
    #[error("CA serving certificate: {0}")]
    Cert(String),
    /// TLS setup.
    #[error("CA TLS: {0}")]
    Tls(#[from] VerifyError),
    /// Socket trouble.
    #[error("CA socket: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

/// The CA: every cluster intermediate this control plane holds, and the authenticator.
pub struct CaService {
    trust_domain: String,
    cas: RwLock<BTreeMap<ClusterId, Arc<ClusterCa>>>,
    auth: RwLock<Arc<dyn Authenticator>>,
    default_ttl: Duration,
    max_ttl: Duration,
    rejections: Family<ReasonLabels, Counter>,
    issued: Family<ClusterLabels, Counter>,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

impl CaService {
    /// A CA over `cas`, issuing `default_ttl` certificates (at most 7 days).
    pub fn new(
        trust_domain: &str,
        cas: Vec<ClusterCa>,
        auth: Arc<dyn Authenticator>,
        default_ttl: Duration,
    ) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            cas: RwLock::new(
                cas.into_iter()
                    .map(|c| (c.cluster().clone(), Arc::new(c)))
                    .collect(),
            ),
            auth: RwLock::new(auth),
            default_ttl,
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            rejections: Family::default(),
            issued: Family::default(),
        }
    }

    /// Replaces the cluster intermediates (clusters joined or left the mesh).
    pub fn set_cluster_cas(&self, cas: Vec<ClusterCa>) {
        let map: BTreeMap<ClusterId, Arc<ClusterCa>> = cas
            .into_iter()
            .map(|c| (c.cluster().clone(), Arc::new(c)))
            .collect();
        match self.cas.write() {
            Ok(mut g) => *g = map,
            Err(p) => *p.into_inner() = map,
        }
    }

    /// Clusters this CA can issue for.
    pub fn clusters(&self) -> Vec<ClusterId> {
        read(&self.cas).keys().cloned().collect()
    }

    /// Replaces the authenticator (the mesh directory changed).
    pub fn set_authenticator(&self, auth: Arc<dyn Authenticator>) {
        match self.auth.write() {
            Ok(mut g) => *g = auth,
            Err(p) => *p.into_inner() = auth,
        }
    }

    /// Registers `causeway_ca_rejections_total{reason}` and `causeway_ca_issued_total{cluster}`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "ca_rejections",
            "Certificate requests the CA refused, by reason",
            self.rejections.clone(),
        );
        registry.register(
            "ca_issued",
            "Workload certificates issued, by cluster",
            self.issued.clone(),
        );
    }

    /// Rejections so far for `reason` (for tests and status pages).
    pub fn rejection_count(&self, reason: &str) -> u64 {
        self.rejections
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .get()
    }

    /// Authenticates `token` and signs `csr_pem` for exactly the granted identity.
    pub fn sign(&self, token: &str, request: &SignRequest) -> Result<IssuedCert, SignError> {
        let result = self.sign_inner(token, request);
        if let Err(e) = &result {
            self.rejections
                .get_or_create(&ReasonLabels {
                    reason: e.reason().into(),
                })
                .inc();
            tracing::warn!(reason = e.reason(), error = %e, "certificate request refused");
        }
        result
    }

    fn sign_inner(&self, token: &str, request: &SignRequest) -> Result<IssuedCert, SignError> {
        let auth = read(&self.auth);
        let grant = auth.authenticate(token)?;
        let granted = grant.spiffe(&self.trust_domain);
        let csr = CertificateSigningRequestParams::from_pem(&request.csr_pem)
            .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|s| match s {
                SanType::URI(u) => Some(u.as_str().to_owned()),
                _ => None,
            })
            .collect();
        if requested.len() != 1 || requested[0] != granted.to_string() {
            return Err(SignError::IdentityNotGranted {
                requested: if requested.is_empty() {
                    "no identity".into()
                } else {
                    requested.join(", ")
                },
                granted: granted.to_string(),
            });
        }
        let ca = read(&self.cas)
            .get(&grant.cluster)
            .cloned()
            .ok_or_else(|| SignError::NoClusterCa(grant.cluster.clone()))?;
        let ttl = request
            .ttl_seconds
            .map(Duration::from_secs)
            .unwrap_or(self.default_ttl)
            .min(self.max_ttl);
        let issued = ca
            .sign(&request.csr_pem, &granted, ttl)
            .map_err(|e| SignError::Internal(e.to_string()))?;
        self.issued
            .get_or_create(&ClusterLabels {
                cluster: grant.cluster.to_string(),
            })
            .inc();
        tracing::info!(cluster = %grant.cluster, workload = %grant.workload, identity = %granted, ttl_s = ttl.as_secs(), "certificate issued");
        Ok(issued)
    }

    /// The TLS server config of the service: a certificate for the CA's own SPIFFE ID issued by
    /// the first cluster intermediate (key generated here, never written anywhere).
    fn tls_config(&self) -> Result<rustls::ServerConfig, ServiceError> {
        let cas = read(&self.cas);
        let ca = cas.values().next().ok_or(ServiceError::NoCa)?;
        let key = KeyPair::generate().map_err(|e| ServiceError::Cert(e.to_string()))?;
        let issued = ca
            .sign_key(
                &key,
                &ca_identity(&self.trust_domain),
                Duration::from_secs(365 * 24 * 3600),
                &["causeway-ca"],
            )
            .map_err(|e| ServiceError::Cert(e.to_string()))?;
        crate::install_crypto_provider();
        use rustls::pki_types::pem::PemObject;
        let key_der =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
                .map_err(|e| ServiceError::Cert(e.to_string()))?;
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(crate::pem_certs(&issued.chain_pem), key_der)
            .map_err(|e| ServiceError::Cert(e.to_string()))
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServiceError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(self.tls_config()?));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => accepted?,
                () = &mut shutdown => return Ok(()),
            };
            let acceptor = acceptor.clone();
            let svc = Arc::clone(&self);
            tokio::spawn(async move {
                let tls =
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "CA TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let service = hyper::service::service_fn(move |req| {
                    let svc = Arc::clone(&svc);
                    async move { Ok::<_, std::convert::Infallible>(svc.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .header_read_timeout(Duration::from_secs(10))
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(TokioIo::new(tls), service);
                if let Err(e) = tokio::time::timeout(Duration::from_secs(60), conn)
                    .await
                    .unwrap_or(Ok(()))
                {
                    tracing::debug!(%peer, error = %e, "CA connection ended");
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let json = |status: StatusCode, body: serde_json::Value| {
            let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
            *r.status_mut() = status;
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        };
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/v1/trust-bundle") => {
                let bundle = read(&self.cas)
                    .values()
                    .next()
                    .map(|c| c.trust_bundle_pem().to_owned())
                    .unwrap_or_default();
                json(
                    StatusCode::OK,
                    serde_json::json!({ "trust_bundle_pem": bundle }),
                )
            }
            (&Method::POST, "/v1/sign") => {
                let token = req
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("")
                    .to_owned();
                let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return json(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            serde_json::json!({ "error": e.to_string() }),
                        )
                    }
                };
                let request: SignRequest = match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        return json(
                            StatusCode::BAD_REQUEST,
                            serde_json::json!({ "error": format!("request body: {e}") }),
                        )
                    }
                };
                match self.sign(&token, &request) {
                    Ok(issued) => json(
                        StatusCode::OK,
                        serde_json::to_value(SignResponse {
                            cert_chain_pem: issued.chain_pem,
                            trust_bundle_pem: issued.trust_bundle_pem,
                            not_after: issued.not_after,
                            not_before: issued.not_before,
                        })
                        .unwrap_or_default(),
                    ),
                    Err(e) => json(
                        e.status(),
                        serde_json::json!({ "error": e.to_string(), "reason": e.reason() }),
                    ),
                }
            }
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": "not found" }),
            ),
        }
    }
}

/// Why a client call to the CA failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect or the TLS handshake failed.
    #[error("cannot reach the CA at {addr}: {reason}")]
    Unreachable {
        /// The CA address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The CA refused.
    #[error("the CA refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The CA's message.
        message: String,
    },
    /// TLS configuration problem.
    #[error("{0}")]
    Tls(#[from] VerifyError),
}

/// Asks the CA at `addr` to sign `request`, authenticating with `token` and verifying that the
/// server is the mesh CA (its SPIFFE ID, chained to `bundle_pem`). Bounded by `timeout`.
pub async fn request_certificate(
    addr: SocketAddr,
    bundle_pem: &str,
    trust_domain: &str,
    token: &str,
    request: &SignRequest,
    timeout: Duration,
) -> Result<SignResponse, ClientError> {
    crate::install_crypto_provider();
    let verifier = crate::verify::SpiffeServerVerifier::new(
        bundle_pem,
        trust_domain,
        vec![ca_identity(trust_domain)],
    )?;
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let unreachable = |reason: String| ClientError::Unreachable { addr, reason };
    let call = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from("causeway-ca")
            .map_err(|e| unreachable(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let body = serde_json::to_vec(request).map_err(|e| unreachable(e.to_string()))?;
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/sign")
            .header("host", "causeway-ca")
            .header("content-type", "application/json")
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), 1024 * 1024)
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| unreachable(format!("bad answer: {e}")))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
}
