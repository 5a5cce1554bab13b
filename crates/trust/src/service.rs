//! The CA service: gRPC over TLS that signs workload CSRs after authenticating the requester's
//! bootstrap credential.
//!
//! ```text
//! package causeway.ca.v1;
//! service CertificateAuthority {
//!   rpc Sign(SignRequest) returns (SignResponse);
//! }
//! message SignRequest  { string csr_pem = 1; string token = 2; uint64 ttl_seconds = 3;
//!                        string cluster = 4; }
//! message SignResponse { string cert_chain_pem = 1; string trust_bundle_pem = 2;
//!                        int64 not_before = 3; int64 not_after = 4; string serial_hex = 5; }
//! ```
//!
//! The messages and the tonic service are written by hand (no protoc). No request or response
//! carries a private key: the types have no field for one. The server presents a certificate
//! issued by a cluster intermediate for the SPIFFE ID [`ca_identity`] (and DNS name
//! `causeway-ca`); clients verify it against the mesh root bundle and check that identity.
//! Every refusal increments `causeway_ca_rejections_total{reason}` and is logged with its reason,
//! never with the token.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use causeway_model::{ClusterId, SpiffeId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::{Code, Status};

use crate::ca::ClusterCa;
use crate::credential::{AuthError, Authenticator};
use crate::issue::{self, IssueError, IssuedCert};
use crate::verify::VerifyError;

/// gRPC service name.
pub const SERVICE_NAME: &str = "causeway.ca.v1.CertificateAuthority";
/// gRPC path of `Sign`.
pub const SIGN_PATH: &str = "/causeway.ca.v1.CertificateAuthority/Sign";
/// DNS name in the CA's serving certificate (clients use it as the TLS server name).
pub const CA_SERVER_NAME: &str = "causeway-ca";
/// Response metadata key carrying the refusal reason (the metric label).
pub const REASON_METADATA: &str = "x-causeway-reason";
/// Largest request accepted (bytes).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Concurrent requests (HTTP/2 streams) on one connection, at most.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// Largest header list of a request (bytes).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Age after which a connection is closed gracefully (then given `request_timeout` to finish).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// The SPIFFE ID the CA service presents. Reserved: no workload can obtain it.
pub fn ca_identity(trust_domain: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, "causeway-system", "causeway-ca")
}

/// The SPIFFE ID the control plane's xDS server presents (DNS name
/// [`CONTROL_PLANE_SERVER_NAME`]). Reserved like [`ca_identity`].
pub fn control_plane_identity(trust_domain: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, "causeway-system", "causeway-control-plane")
}

/// DNS name in the xDS server's certificate.
pub const CONTROL_PLANE_SERVER_NAME: &str = "causeway-control-plane";

/// A signing request: the CSR, the bootstrap token, an optional lifetime, and the cluster the
/// requester claims to run in.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct SignRequest {
    /// PKCS#10 CSR, PEM, asking for exactly one SPIFFE ID.
    #[prost(string, tag = "1")]
    pub csr_pem: String,
    /// Bootstrap credential. Never logged (`Debug` elides it).
    #[prost(string, tag = "2")]
    pub token: String,
    /// Requested lifetime in seconds; 0 means the CA's default. Capped by the CA.
    #[prost(uint64, tag = "3")]
    pub ttl_seconds: u64,
    /// The cluster the requester claims to run in (the agent's `--cluster`); empty means not
    /// stated (older agents). It picks the authenticator and must match the credential's
    /// cluster; it never chooses the signing cluster by itself.
    #[prost(string, tag = "4")]
    pub cluster: String,
}

impl std::fmt::Debug for SignRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignRequest")
            .field("csr_pem_bytes", &self.csr_pem.len())
            .field("token", &"[elided]")
            .field("ttl_seconds", &self.ttl_seconds)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// A signing answer: certificates only, never a key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignResponse {
    /// Leaf then intermediate(s).
    #[prost(string, tag = "1")]
    pub cert_chain_pem: String,
    /// Roots to trust (several during a root rotation).
    #[prost(string, tag = "2")]
    pub trust_bundle_pem: String,
    /// Start of validity, Unix seconds.
    #[prost(int64, tag = "3")]
    pub not_before: i64,
    /// Expiry, Unix seconds.
    #[prost(int64, tag = "4")]
    pub not_after: i64,
    /// Leaf serial number (hex).
    #[prost(string, tag = "5")]
    pub serial_hex: String,
}

impl From<IssuedCert> for SignResponse {
    fn from(c: IssuedCert) -> Self {
        Self {
            cert_chain_pem: c.chain_pem,
            trust_bundle_pem: c.trust_bundle_pem,
            not_before: c.not_before,
            not_after: c.not_after,
            serial_hex: c.serial_hex,
        }
    }
}

/// Why the CA refused to sign. Each variant has a metric label ([`SignError::reason`]) and a
/// gRPC status code ([`SignError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Missing, unknown or unusable credential, or one for another cluster than claimed.
    #[error("{0}")]
    Credential(#[from] AuthError),
    /// The claimed cluster (`SignRequest::cluster`) is not a valid cluster id.
    #[error("the request claims cluster {0:?}, which is not a cluster id (a DNS label: lower-case letters, digits and '-', at most 63 characters)")]
    BadClusterClaim(String),
    /// Unparseable CSR or bad CSR signature.
    #[error("invalid CSR: {0}")]
    BadCsr(String),
    /// The CSR does not ask for exactly one SPIFFE ID.
    #[error("the CSR does not ask for one SPIFFE identity: {0}")]
    NotSpiffe(String),
    /// The CSR asks for an identity in another trust domain.
    #[error("the CSR asks for {requested}, outside this mesh's trust domain {expected}")]
    WrongTrustDomain {
        /// What the CSR asked for.
        requested: String,
        /// Our trust domain.
        expected: String,
    },
    /// The CSR asks for another identity than the credential grants.
    #[error("workload {workload} in cluster {cluster}: the CSR asks for {requested} but the credential grants {granted}")]
    IdentityNotGranted {
        /// What the CSR asked for.
        requested: String,
        /// What the credential grants.
        granted: String,
        /// `namespace/name` of the credential's workload.
        workload: String,
        /// The credential's cluster.
        cluster: ClusterId,
    },
    /// The identity is reserved for the mesh's own components.
    #[error("{0} is reserved for the mesh CA and control plane and is never issued to workloads")]
    ReservedIdentity(String),
    /// This CA holds no intermediate for the workload's cluster.
    #[error("no intermediate CA for cluster {0} on this control plane (run `causeway ca issue-intermediate --cluster {0}`)")]
    NoClusterCa(ClusterId),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Internal(String),
}

/// Why a connection to the CA was closed before it carried a request (the label of
/// `causeway_ca_handshake_failures_total{reason}`, pre-registered at 0).
pub const HANDSHAKE_FAILURE_REASONS: &[&str] = &["timeout", "tls", "overloaded"];

/// Every value [`SignError::reason`] can take (pre-registered at 0 so dashboards see them).
pub const REJECTION_REASONS: &[&str] = &[
    "missing_credential",
    "bad_credential",
    "ambiguous_credential",
    "auth_unavailable",
    "wrong_cluster",
    "bad_cluster_claim",
    "bad_csr",
    "not_spiffe",
    "wrong_trust_domain",
    "identity_not_granted",
    "reserved_identity",
    "no_cluster_ca",
    "internal",
];

impl SignError {
    /// Label for `causeway_ca_rejections_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            SignError::Credential(AuthError::Missing) => "missing_credential",
            SignError::Credential(AuthError::Unknown) => "bad_credential",
            SignError::Credential(AuthError::Ambiguous) => "ambiguous_credential",
            SignError::Credential(AuthError::Unavailable(_)) => "auth_unavailable",
            SignError::Credential(AuthError::WrongCluster { .. }) => "wrong_cluster",
            SignError::BadClusterClaim(_) => "bad_cluster_claim",
            SignError::BadCsr(_) => "bad_csr",
            SignError::NotSpiffe(_) => "not_spiffe",
            SignError::WrongTrustDomain { .. } => "wrong_trust_domain",
            SignError::IdentityNotGranted { .. } => "identity_not_granted",
            SignError::ReservedIdentity(_) => "reserved_identity",
            SignError::NoClusterCa(_) => "no_cluster_ca",
            SignError::Internal(_) => "internal",
        }
    }

    /// The gRPC status code the refusal maps to.
    pub fn code(&self) -> Code {
        match self {
            SignError::Credential(AuthError::Unavailable(_)) => Code::Unavailable,
            SignError::Credential(_) => Code::Unauthenticated,
            SignError::BadClusterClaim(_) | SignError::BadCsr(_) | SignError::NotSpiffe(_) => {
                Code::InvalidArgument
            }
            SignError::WrongTrustDomain { .. }
            | SignError::IdentityNotGranted { .. }
            | SignError::ReservedIdentity(_) => Code::PermissionDenied,
            SignError::NoClusterCa(_) => Code::FailedPrecondition,
            SignError::Internal(_) => Code::Internal,
        }
    }

    /// The gRPC status sent to the client: code, message, and the reason in metadata.
    pub fn to_status(&self) -> Status {
        let mut status = Status::new(self.code(), self.to_string());
        if let Ok(v) = self.reason().parse() {
            status.metadata_mut().insert(REASON_METADATA, v);
        }
        status
    }
}

impl From<IssueError> for SignError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::BadCsr(m) => SignError::BadCsr(m),
            IssueError::NotSpiffe(m) => SignError::NotSpiffe(m),
            other => SignError::Internal(other.to_string()),
        }
    }
}

/// Why the service could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No intermediate to issue the serving certificate with.
    #[error("the CA service needs at least one cluster intermediate to issue its own certificate")]
    NoCa,
    /// The serving certificate could not be made.
    #[error("CA serving certificate: {0}")]
    Cert(String),
    /// TLS setup.
    #[error("CA TLS: {0}")]
    Tls(#[from] VerifyError),
    /// Socket trouble.
    #[error("CA socket: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("CA gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Settings of the CA service (the control plane's `--ca-addr` listener).
#[derive(Debug, Clone)]
pub struct CaServiceConfig {
    /// SPIFFE trust domain: only identities in it are issued.
    pub trust_domain: String,
    /// Lifetime of workload certificates when the request names none (24 h).
    pub default_ttl: Duration,
    /// Longest lifetime issued whatever is asked (7 days at most).
    pub max_ttl: Duration,
    /// Cluster whose intermediate issues the service's own certificate (first one if `None`).
    pub serving_cluster: Option<ClusterId>,
    /// Lifetime of the service's own certificate; renewed at half of it.
    pub serving_ttl: Duration,
    /// Limit on a TLS handshake, from the accepted TCP connection to the finished handshake
    /// (a connection that sends nothing, or too little, is closed when it passes).
    pub handshake_timeout: Duration,
    /// Limit on one request.
    pub request_timeout: Duration,
    /// Connections accepted but not yet through their TLS handshake, at most; beyond it new
    /// connections are closed at once (`causeway_ca_handshake_failures_total{reason="overloaded"}`).
    /// Reading a ClientHello costs a task and a small buffer, so this bound is generous.
    pub max_pending_handshakes: usize,
    /// TLS handshakes past their ClientHello (the key exchange and signature, the costly part)
    /// at once, at most; further ones wait for a slot within their `handshake_timeout`.
    /// Connections that never complete a ClientHello never take a slot.
    pub max_concurrent_handshakes: usize,
}

impl CaServiceConfig {
    /// Defaults for `trust_domain`.
    pub fn new(trust_domain: impl Into<String>) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            default_ttl: issue::DEFAULT_WORKLOAD_TTL,
            max_ttl: issue::MAX_WORKLOAD_TTL,
            serving_cluster: None,
            serving_ttl: Duration::from_secs(24 * 3600),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_pending_handshakes: 1024,
            max_concurrent_handshakes: 64,
        }
    }
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
    config: CaServiceConfig,
    cas: RwLock<BTreeMap<ClusterId, Arc<ClusterCa>>>,
    auth: RwLock<Arc<dyn Authenticator>>,
    rejections: Family<ReasonLabels, Counter>,
    issued: Family<ClusterLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
}

impl std::fmt::Debug for CaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaService")
            .field("config", &self.config)
            .field("clusters", &self.clusters())
            .finish_non_exhaustive()
    }
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

fn write<T>(lock: &RwLock<T>, value: T) {
    match lock.write() {
        Ok(mut g) => *g = value,
        Err(p) => *p.into_inner() = value,
    }
}

impl CaService {
    /// A CA over `cas` with default settings, issuing `default_ttl` certificates.
    pub fn new(
        trust_domain: &str,
        cas: Vec<ClusterCa>,
        auth: Arc<dyn Authenticator>,
        default_ttl: Duration,
    ) -> Self {
        let mut config = CaServiceConfig::new(trust_domain);
        config.default_ttl = default_ttl;
        Self::with_config(config, cas, auth)
    }

    /// A CA over `cas` with `config`.
    pub fn with_config(
        mut config: CaServiceConfig,
        cas: Vec<ClusterCa>,
        auth: Arc<dyn Authenticator>,
    ) -> Self {
        config.max_ttl = config.max_ttl.min(issue::MAX_WORKLOAD_TTL);
        let rejections = Family::<ReasonLabels, Counter>::default();
        for reason in REJECTION_REASONS {
            let _ = rejections.get_or_create(&ReasonLabels {
                reason: (*reason).to_owned(),
            });
        }
        let handshake_failures = Family::<ReasonLabels, Counter>::default();
        for reason in HANDSHAKE_FAILURE_REASONS {
            let _ = handshake_failures.get_or_create(&ReasonLabels {
                reason: (*reason).to_owned(),
            });
        }
        let service = Self {
            config,
            cas: RwLock::new(BTreeMap::new()),
            auth: RwLock::new(auth),
            rejections,
            issued: Family::default(),
            handshake_failures,
        };
        service.set_cluster_cas(cas);
        service
    }

    /// The settings.
    pub fn config(&self) -> &CaServiceConfig {
        &self.config
    }

    /// Replaces the cluster intermediates (clusters joined or left the mesh). Intermediates of
    /// another trust domain are dropped with an error log.
    pub fn set_cluster_cas(&self, cas: Vec<ClusterCa>) {
        let mut map = BTreeMap::new();
        for ca in cas {
            if ca.trust_domain() != self.config.trust_domain {
                tracing::error!(cluster = %ca.cluster(), trust_domain = ca.trust_domain(), expected = %self.config.trust_domain, "intermediate of another trust domain ignored");
                continue;
            }
            map.insert(ca.cluster().clone(), Arc::new(ca));
        }
        write(&self.cas, map);
    }

    /// Clusters this CA can issue for.
    pub fn clusters(&self) -> Vec<ClusterId> {
        read(&self.cas).keys().cloned().collect()
    }

    /// Replaces the authenticator (the mesh directory changed).
    pub fn set_authenticator(&self, auth: Arc<dyn Authenticator>) {
        write(&self.auth, auth);
    }

    /// Registers `ca_rejections` (`causeway_ca_rejections_total{reason}` under the control
    /// plane's `causeway` prefix) and `ca_issued` (`causeway_ca_issued_total{cluster}`).
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
        registry.register(
            "ca_handshake_failures",
            "Connections to the CA closed before a TLS session was established, by reason",
            self.handshake_failures.clone(),
        );
    }

    /// Connections closed before their TLS session for `reason` (one of
    /// [`HANDSHAKE_FAILURE_REASONS`]) so far.
    pub fn handshake_failure_count(&self, reason: &str) -> u64 {
        self.handshake_failures
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .get()
    }

    fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// Rejections so far for `reason` (for tests and status pages).
    pub fn rejection_count(&self, reason: &str) -> u64 {
        self.rejections
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .get()
    }

    /// Certificates issued so far for `cluster`.
    pub fn issued_count(&self, cluster: &ClusterId) -> u64 {
        self.issued
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_string(),
            })
            .get()
    }

    /// Authenticates `request.token` (with the authenticator of the claimed cluster, if a
    /// router is installed) and signs `request.csr_pem` if, and only if, the credential's
    /// cluster is the claimed one (when a claim is made) and the CSR asks for exactly the
    /// identity the credential grants, in this trust domain. Refusals are counted and logged
    /// (reason, never the token).
    pub async fn sign(&self, request: &SignRequest) -> Result<IssuedCert, SignError> {
        let result = self.sign_inner(request).await;
        if let Err(e) = &result {
            self.rejections
                .get_or_create(&ReasonLabels {
                    reason: e.reason().into(),
                })
                .inc();
            tracing::warn!(reason = e.reason(), claimed_cluster = %request.cluster.chars().take(64).collect::<String>(), error = %e, "certificate request refused");
        }
        result
    }

    async fn sign_inner(&self, request: &SignRequest) -> Result<IssuedCert, SignError> {
        let claimed = parse_claim(&request.cluster)?;
        let token = request.token.trim();
        if token.is_empty() {
            // Never ask a backend (TokenReview) about nothing.
            return Err(AuthError::Missing.into());
        }
        let auth = read(&self.auth);
        let grant = auth.authenticate(token, claimed.as_ref()).await?;
        // Defence in depth: whatever the authenticator does, a claim must match the grant, so
        // a token reviewed as cluster A never yields an identity of cluster B.
        if let Err(e) = AuthError::check_cluster(&grant, claimed.as_ref()) {
            tracing::error!(claimed = %request.cluster, granted = %grant.cluster, "the authenticator returned a grant for another cluster than the request claims; refused");
            return Err(e.into());
        }
        let span = tracing::info_span!("sign", cluster = %grant.cluster, workload = %format!("{}/{}", grant.namespace, grant.workload));
        let _enter = span.enter();
        let csr = issue::parse_csr(&request.csr_pem)?;
        let td = &self.config.trust_domain;
        if &csr.identity.trust_domain != td {
            return Err(SignError::WrongTrustDomain {
                requested: csr.identity.to_string(),
                expected: td.clone(),
            });
        }
        if csr.identity == ca_identity(td) || csr.identity == control_plane_identity(td) {
            return Err(SignError::ReservedIdentity(csr.identity.to_string()));
        }
        let granted = grant.spiffe(td);
        if csr.identity != granted {
            return Err(SignError::IdentityNotGranted {
                requested: csr.identity.to_string(),
                granted: granted.to_string(),
                workload: format!("{}/{}", grant.namespace, grant.workload),
                cluster: grant.cluster.clone(),
            });
        }
        let ca = read(&self.cas)
            .get(&grant.cluster)
            .cloned()
            .ok_or_else(|| SignError::NoClusterCa(grant.cluster.clone()))?;
        let ttl = match request.ttl_seconds {
            0 => self.config.default_ttl,
            s => Duration::from_secs(s),
        }
        .min(self.config.max_ttl);
        let issued = ca
            .sign(&csr, ttl)
            .map_err(|e| SignError::Internal(e.to_string()))?;
        self.issued
            .get_or_create(&ClusterLabels {
                cluster: grant.cluster.to_string(),
            })
            .inc();
        tracing::info!(identity = %granted, serial = %issued.serial_hex, not_after = issued.not_after, "certificate issued");
        Ok(issued)
    }

    /// A certificate and key for one of the mesh's own servers (`identity`, DNS name `dns`),
    /// issued by the serving cluster's intermediate. The key is generated here and stays in
    /// memory.
    fn serving_cert(
        &self,
        identity: &SpiffeId,
        dns: &str,
    ) -> Result<(Arc<CertifiedKey>, i64), ServiceError> {
        let cas = read(&self.cas);
        let ca = match &self.config.serving_cluster {
            Some(c) => cas.get(c),
            None => cas.values().next(),
        }
        .ok_or(ServiceError::NoCa)?;
        let key = rcgen::KeyPair::generate().map_err(|e| ServiceError::Cert(e.to_string()))?;
        let issued = ca
            .sign_key(&key, identity, self.config.serving_ttl, &[dns])
            .map_err(|e| ServiceError::Cert(e.to_string()))?;
        let key_der = crate::verify::key_der(&key.serialize_pem())?;
        let signing_key = crate::provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| ServiceError::Cert(e.to_string()))?;
        let certified = CertifiedKey::new(crate::pem_certs(&issued.chain_pem), signing_key);
        let renew_at = issued.not_before + (issued.not_after - issued.not_before) / 2;
        tracing::info!(cluster = %ca.cluster(), %identity, not_after = issued.not_after, "serving certificate issued");
        Ok((Arc::new(certified), renew_at))
    }

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

/// The cluster a request claims: `None` when not stated.
fn parse_claim(claim: &str) -> Result<Option<ClusterId>, SignError> {
    if claim.is_empty() {
        return Ok(None);
    }
    ClusterId::new(claim).map(Some).map_err(|_| {
        // Echo a bounded prefix only: the value comes from the network.
        SignError::BadClusterClaim(claim.chars().take(64).collect())
    })
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

impl CaService {
    /// A TLS certificate resolver presenting `identity` (DNS `dns`) from this CA, re-issued at
    /// half its lifetime: the control plane's other servers (xDS) use it.
    pub fn serving_resolver(
        self: &Arc<Self>,
        identity: SpiffeId,
        dns: &'static str,
    ) -> Result<Arc<dyn ResolvesServerCert>, ServiceError> {
        Ok(Arc::new(ServingCertResolver::new(
            Arc::clone(self),
            identity,
            dns,
        )?))
    }

    /// The roots every cluster intermediate trusts (each distinct bundle once): what mesh
    /// clients' certificates are verified against.
    pub fn trust_bundle_pem(&self) -> String {
        let mut bundles: Vec<String> = read(&self.cas)
            .values()
            .map(|ca| ca.trust_bundle_pem().to_owned())
            .collect();
        bundles.sort();
        bundles.dedup();
        bundles.concat()
    }
}

/// Hands out a server's certificate, re-issuing it at half its lifetime.
struct ServingCertResolver {
    service: Arc<CaService>,
    identity: SpiffeId,
    dns: &'static str,
    current: Mutex<(Arc<CertifiedKey>, i64)>,
}

impl std::fmt::Debug for ServingCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertResolver")
            .finish_non_exhaustive()
    }
}

impl ServingCertResolver {
    fn new(
        service: Arc<CaService>,
        identity: SpiffeId,
        dns: &'static str,
    ) -> Result<Self, ServiceError> {
        let first = service.serving_cert(&identity, dns)?;
        Ok(Self {
            service,
            identity,
            dns,
            current: Mutex::new(first),
        })
    }
}

impl ResolvesServerCert for ServingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = match self.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if crate::now_unix() >= current.1 {
            match self.service.serving_cert(&self.identity, self.dns) {
                Ok(fresh) => *current = fresh,
                // Keep the old one: still valid for the second half of its life.
                Err(e) => {
                    tracing::error!(identity = %self.identity, error = %e, "cannot renew a serving certificate")
                }
            }
        }
        Some(Arc::clone(&current.0))
    }
}

/// A prost codec (tonic 0.14 moved its own into a crate this workspace does not use).
struct ProtoCodec<E, D>(PhantomData<fn() -> (E, D)>);

impl<E, D> Default for ProtoCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

struct ProtoEncoder<E>(PhantomData<fn() -> E>);
struct ProtoDecoder<D>(PhantomData<fn() -> D>);

impl<E, D> Codec for ProtoCodec<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProtoEncoder<E>;
    type Decoder = ProtoDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        ProtoEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(PhantomData)
    }
}

impl<E: prost::Message> Encoder for ProtoEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the message: {e}")))
    }
}

impl<D: prost::Message + Default> Decoder for ProtoDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed message: {e}")))
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
