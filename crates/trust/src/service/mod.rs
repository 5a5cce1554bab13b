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

mod client;
mod identity;
mod messages;
mod metrics;
mod serve;
mod sign;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use causeway_model::ClusterId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use self::metrics::{ClusterLabels, ReasonLabels};
use crate::ca::ClusterCa;
use crate::credential::Authenticator;
use crate::issue;
use crate::verify::VerifyError;

pub use client::{request_certificate, CaClientConfig, ClientError};
pub use identity::{ca_identity, control_plane_identity, CONTROL_PLANE_SERVER_NAME};
pub use messages::{SignRequest, SignResponse};
pub use metrics::HANDSHAKE_FAILURE_REASONS;
pub use sign::{SignError, REJECTION_REASONS};

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
        let service = Self {
            config,
            cas: RwLock::new(BTreeMap::new()),
            auth: RwLock::new(auth),
            rejections: metrics::reason_family(REJECTION_REASONS),
            issued: Family::default(),
            handshake_failures: metrics::reason_family(HANDSHAKE_FAILURE_REASONS),
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
