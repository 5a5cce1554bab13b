//! Verifying workload certificates: chain to a mesh root, validity, and the SPIFFE identity.

use std::sync::Arc;

use causeway_model::{ClusterId, SpiffeId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use x509_parser::extensions::GeneralName;

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No certificate at all.
    #[error("no certificate presented")]
    NoCertificate,
    /// The chain does not lead to a trusted mesh root.
    #[error("certificate does not chain to a trusted mesh root (unknown issuer)")]
    UnknownRoot,
    /// Expired.
    #[error("certificate expired")]
    Expired,
    /// Not valid yet.
    #[error("certificate not valid yet")]
    NotYetValid,
    /// Any other chain problem.
    #[error("invalid certificate chain: {0}")]
    BadChain(String),
    /// No usable SPIFFE ID.
    #[error("certificate carries no SPIFFE ID: {0}")]
    NotSpiffe(String),
    /// SPIFFE ID of another trust domain.
    #[error("certificate is for trust domain {found}, not {expected}")]
    WrongTrustDomain {
        /// Ours.
        expected: String,
        /// Theirs.
        found: String,
    },
    /// The trust bundle is unusable.
    #[error("trust bundle has no usable root certificate")]
    EmptyBundle,
    /// Not the identity expected.
    #[error("peer is {found}, expected {expected}")]
    UnexpectedIdentity {
        /// Expected.
        expected: String,
        /// Presented.
        found: String,
    },
}

impl VerifyError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::NoCertificate => "no_certificate",
            VerifyError::UnknownRoot => "unknown_root",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::BadChain(_) => "bad_chain",
            VerifyError::NotSpiffe(_) => "not_spiffe",
            VerifyError::WrongTrustDomain { .. } => "wrong_trust_domain",
            VerifyError::EmptyBundle => "empty_bundle",
            VerifyError::UnexpectedIdentity { .. } => "unexpected_identity",
        }
    }
}

/// A verified peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// SPIFFE ID.
    pub spiffe: SpiffeId,
    /// Cluster named by the certificate's cluster DNS SAN, when present.
    pub cluster: Option<ClusterId>,
}

/// A root store from a PEM bundle (one or several roots).
pub fn root_store(bundle_pem: &str) -> Result<RootCertStore, VerifyError> {
    let mut store = RootCertStore::empty();
    for cert in crate::pem_certs(bundle_pem) {
        let _ = store.add(cert);
    }
    if store.is_empty() {
        return Err(VerifyError::EmptyBundle);
    }
    Ok(store)
}

fn map_chain_error(e: rustls::Error) -> VerifyError {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            VerifyError::UnknownRoot
        }
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            VerifyError::UnknownRoot
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired)
        | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            VerifyError::Expired
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidYet)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => {
            VerifyError::NotYetValid
        }
        other => VerifyError::BadChain(other.to_string()),
    }
}

/// The SPIFFE ID and cluster of a certificate, checked against `trust_domain`.
pub fn identity_of(
    cert: &CertificateDer<'_>,
    trust_domain: &str,
) -> Result<PeerIdentity, VerifyError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| VerifyError::NotSpiffe(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| VerifyError::NotSpiffe(e.to_string()))?
        .ok_or_else(|| VerifyError::NotSpiffe("no subject alternative names".into()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(VerifyError::NotSpiffe(format!(
            "{} URI SANs (exactly one expected)",
            uris.len()
        )));
    };
    let spiffe = SpiffeId::parse(uri).map_err(|e| VerifyError::NotSpiffe(e.to_string()))?;
    if spiffe.trust_domain != trust_domain {
        return Err(VerifyError::WrongTrustDomain {
            expected: trust_domain.to_owned(),
            found: spiffe.trust_domain,
        });
    }
    let suffix = format!(".cluster.{trust_domain}");
    let cluster = san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => d.strip_suffix(&suffix).and_then(|c| ClusterId::new(c).ok()),
        _ => None,
    });
    Ok(PeerIdentity { spiffe, cluster })
}

/// Verifies a presented chain (leaf first) against the trust bundle and returns the identity.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    bundle_pem: &str,
    trust_domain: &str,
    now: UnixTime,
) -> Result<PeerIdentity, VerifyError> {
    let result = verify_chain_inner(chain, bundle_pem, trust_domain, now);
    if let Err(e) = &result {
        tracing::warn!(reason = e.reason(), error = %e, "peer certificate rejected");
    }
    result
}

fn verify_chain_inner(
    chain: &[CertificateDer<'_>],
    bundle_pem: &str,
    trust_domain: &str,
    now: UnixTime,
) -> Result<PeerIdentity, VerifyError> {
    let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::NoCertificate)?;
    let roots = root_store(bundle_pem)?;
    let parsed = ParsedCertificate::try_from(leaf).map_err(map_chain_error)?;
    let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        intermediates,
        now,
        algs.all,
    )
    .map_err(map_chain_error)?;
    identity_of(leaf, trust_domain)
}

/// A rustls server-certificate verifier for mesh peers: the chain must lead to a mesh root and
/// the leaf must carry a SPIFFE ID of the trust domain (one of `expected`, when given). Host
/// names play no part: identities are SPIFFE IDs.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    trust_domain: String,
    expected: Vec<SpiffeId>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// A verifier over `bundle_pem`.
    pub fn new(
        bundle_pem: &str,
        trust_domain: &str,
        expected: Vec<SpiffeId>,
    ) -> Result<Self, VerifyError> {
        Ok(Self {
            roots: Arc::new(root_store(bundle_pem)?),
            trust_domain: trust_domain.to_owned(),
            expected,
            algs: rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let id = identity_of(end_entity, &self.trust_domain)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        if !self.expected.is_empty() && !self.expected.contains(&id.spiffe) {
            return Err(rustls::Error::General(
                VerifyError::UnexpectedIdentity {
                    expected: self
                        .expected
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" or "),
                    found: id.spiffe.to_string(),
                }
                .to_string(),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn key_der(key_pem: &str) -> Result<PrivateKeyDer<'static>, VerifyError> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| VerifyError::BadChain(format!("private key: {e}")))
}

/// A server config for mesh mTLS: presents `chain_pem`, requires a client certificate chained to
/// the bundle.
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    bundle_pem: &str,
) -> Result<rustls::ServerConfig, VerifyError> {
    crate::install_crypto_provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(root_store(bundle_pem)?))
        .build()
        .map_err(|e| VerifyError::BadChain(e.to_string()))?;
    rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(crate::pem_certs(chain_pem), key_der(key_pem)?)
        .map_err(|e| VerifyError::BadChain(e.to_string()))
}

/// A client config for mesh mTLS: presents `chain_pem`, verifies the server's SPIFFE ID.
pub fn client_config(
    chain_pem: &str,
    key_pem: &str,
    bundle_pem: &str,
    trust_domain: &str,
    expected: Vec<SpiffeId>,
) -> Result<rustls::ClientConfig, VerifyError> {
    crate::install_crypto_provider();
    let verifier = SpiffeServerVerifier::new(bundle_pem, trust_domain, expected)?;
    rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(crate::pem_certs(chain_pem), key_der(key_pem)?)
        .map_err(|e| VerifyError::BadChain(e.to_string()))
}
