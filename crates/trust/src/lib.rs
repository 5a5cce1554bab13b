//! Causeway's trust component.
//!
//! One mesh root; one intermediate CA per cluster signed by it (Istio's `cacerts` layout, so an
//! operator can keep the root offline); short-lived workload certificates whose only URI SAN is
//! the SPIFFE ID `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` and whose DNS SAN
//! `<cluster>.cluster.<trust-domain>` names the cluster they were issued for.
//!
//! Keys never move: a workload's [`agent`] generates its key pair and sends a CSR; the
//! [`service`] authenticates the requester with a bootstrap [`credential`] and signs only the
//! identity that credential grants. The agent serves the certificate and the trust bundle to
//! Envoy over SDS ([`sds`]). [`verify`] checks chains and identities.

pub mod agent;
pub mod ca;
pub mod credential;
pub mod sds;
pub mod service;
pub mod verify;

/// Installs aws-lc-rs as rustls' process-wide crypto provider (once; later calls are no-ops).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Splits a PEM bundle into its certificates (DER).
pub fn pem_certs(pem: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}
