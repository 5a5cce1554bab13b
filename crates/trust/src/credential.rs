//! Bootstrap credentials: how the CA knows who is asking before it signs anything.
//!
//! In the mesh directory each WorkloadEntry may name a token file; the token grants exactly that
//! workload's identity in its cluster. [`Authenticator`] is the seam where the Kubernetes mode
//! plugs in ServiceAccount token review instead.

use aws_lc_rs::{constant_time, digest};
use causeway_model::{ClusterId, SpiffeId};

/// What a credential entitles its holder to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Cluster the workload runs in (whose intermediate signs).
    pub cluster: ClusterId,
    /// Namespace.
    pub namespace: String,
    /// Service account: the identity.
    pub service_account: String,
    /// Workload name, for logs.
    pub workload: String,
}

impl Grant {
    /// The SPIFFE ID this grant allows.
    pub fn spiffe(&self, trust_domain: &str) -> SpiffeId {
        SpiffeId::new(
            trust_domain,
            self.namespace.clone(),
            self.service_account.clone(),
        )
    }
}

/// Why a credential was refused. Messages never contain the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential presented.
    #[error("no bootstrap credential presented")]
    Missing,
    /// The credential matches no workload.
    #[error("bootstrap credential not recognised")]
    Unknown,
}

/// Authenticates a bootstrap credential.
pub trait Authenticator: Send + Sync {
    /// The grant of `token`, if it is valid.
    fn authenticate(&self, token: &str) -> Result<Grant, AuthError>;
}

/// Static tokens (mesh directory mode). Only SHA-256 digests are kept, compared in constant
/// time.
#[derive(Default)]
pub struct TokenAuthenticator {
    entries: Vec<(Vec<u8>, Grant)>,
}

impl TokenAuthenticator {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token and what it grants. Surrounding whitespace is ignored (token files end in a
    /// newline).
    pub fn add(&mut self, token: &str, grant: Grant) {
        let d = digest::digest(&digest::SHA256, token.trim().as_bytes());
        self.entries.push((d.as_ref().to_vec(), grant));
    }

    /// Number of known tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Authenticator for TokenAuthenticator {
    fn authenticate(&self, token: &str) -> Result<Grant, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let d = digest::digest(&digest::SHA256, token.as_bytes());
        let mut found = None;
        // Visit every entry so timing does not reveal which one matched.
        for (stored, grant) in &self.entries {
            if constant_time::verify_slices_are_equal(stored, d.as_ref()).is_ok() && found.is_none()
            {
                found = Some(grant.clone());
            }
        }
        found.ok_or(AuthError::Unknown)
    }
}

/// A fresh random token (hex, 256 bits) for provisioning workloads.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    if provider.secure_random.fill(&mut bytes).is_err() {
        tracing::error!("system random number generator failed while generating a token");
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grant_their_identity_only() {
        let mut a = TokenAuthenticator::new();
        let grant = Grant {
            cluster: ClusterId::new("alpha").expect("id"),
            namespace: "demo".into(),
            service_account: "client".into(),
            workload: "client".into(),
        };
        a.add("secret-1\n", grant.clone());
        assert_eq!(a.authenticate("secret-1"), Ok(grant));
        assert_eq!(a.authenticate("secret-2"), Err(AuthError::Unknown));
        assert_eq!(a.authenticate("  "), Err(AuthError::Missing));
        assert_eq!(generate_token().len(), 64);
        assert!(!AuthError::Unknown.to_string().contains("secret"));
    }
}
