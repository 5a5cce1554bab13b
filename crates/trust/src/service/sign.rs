//! Signing: the checks a request must pass (claimed cluster, credential, CSR identity, trust
//! domain, reserved identities) and the errors it is refused with.

use std::time::Duration;

use causeway_model::ClusterId;
use tonic::{Code, Status};

use super::metrics::{ClusterLabels, ReasonLabels};
use super::{ca_identity, control_plane_identity, read, CaService, SignRequest, REASON_METADATA};
use crate::credential::AuthError;
use crate::issue::{self, IssueError, IssuedCert};

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

impl CaService {
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
