//! Causeway's trust component.
//!
//! One mesh root; one intermediate CA per cluster signed by it (Istio's `cacerts` layout, so an
//! operator can keep the root offline); short-lived workload certificates whose only URI SAN is
//! the SPIFFE ID `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` and whose DNS SAN
//! `<cluster>.cluster.<trust-domain>` names the cluster they were issued for.
//!
//! Keys never move: a workload's [`agent`] generates its key pair and sends a CSR ([`issue`]);
//! the [`service`] (gRPC over TLS) authenticates the requester with a bootstrap
//! [`credential`] and signs only the identity that credential grants, with the cluster's
//! intermediate ([`ca`]). The agent serves the certificate and the trust bundle to Envoy over
//! SDS ([`sds`]). [`verify`] checks chains and identities, including across root rotations.
//!
//! Entry points for the command line:
//! - `causeway ca init DIR`: [`ca::init_root`] with [`ca::RootInitConfig`];
//! - `causeway ca issue-intermediate --cluster C`: [`ca::issue_intermediate`] with
//!   [`ca::IntermediateConfig`];
//! - the control plane's CA: [`ca::ensure_ca_dir`], [`ca::ClusterCa::load`],
//!   [`credential::CredentialStore::from_workloads`] (file tokens), optionally wrapped in a
//!   [`credential::RoutedAuthenticator`] with per-cluster authenticators (Kubernetes
//!   TokenReview), [`service::CaService::with_config`] and [`service::CaService::serve`];
//! - `causeway agent`: [`agent::Agent::new`] with [`agent::AgentConfig`], [`agent::Agent::run`],
//!   and [`sds::SdsServer::serve`].

pub mod agent;
pub mod ca;
pub mod credential;
pub mod issue;
pub mod sds;
pub mod service;
pub mod verify;

/// Installs aws-lc-rs as rustls' process-wide crypto provider. Idempotent: if a provider is
/// already installed (by us or by another library) that one stays.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The crypto provider this crate uses for its own TLS configurations and verifiers, whatever
/// the process default is (so behaviour does not depend on initialisation order).
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Splits a PEM bundle into its certificates (DER), skipping anything that is not a
/// certificate (keys, comments) and unparseable blocks.
pub fn pem_certs(pem: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// Fills `buf` from the system's secure random number generator.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(buf)
}

/// Current time as Unix seconds (0 if the clock is before 1970, which no caller relies on).
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
