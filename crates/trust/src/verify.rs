//! Verifying workload certificates: the chain leads to a root of the trust bundle (several roots
//! during a rotation), the leaf is valid now, and it carries exactly one SPIFFE ID of our trust
//! domain. Chain checks are webpki's (through rustls' `WebPkiClientVerifier` and its server-side
//! trust-anchor check); identities are read with x509-parser. Host names play no part. webpki
//! enforces the intermediates' name constraints ([`crate::ca::cluster_name_constraints`]): a
//! leaf with another cluster's SAN is refused ([`VerifyError::NameConstraint`]).

use std::sync::Arc;

use causeway_model::{ClusterId, SpiffeId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use x509_parser::extensions::GeneralName;

/// Why a certificate was refused. Each case has its own variant and metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No certificate at all.
    #[error("no certificate presented")]
    NoCertificate,
    /// The chain does not lead to a root of the trust bundle.
    #[error("certificate does not chain to a trusted mesh root (unknown issuer)")]
    UnknownRoot,
    /// The leaf (or a CA in its chain) has expired.
    #[error("certificate expired")]
    Expired,
    /// The leaf is not valid yet (clock skew, or a certificate from the future).
    #[error("certificate not valid yet")]
    NotYetValid,
    /// The leaf carries a name its intermediate's name constraints forbid: a certificate naming
    /// another cluster (`<cluster>.cluster.<trust-domain>`) than the one whose intermediate
    /// signed it, i.e. forged with that intermediate's key.
    #[error("certificate names a DNS name outside its issuing intermediate's name constraints (another cluster's SAN?)")]
    NameConstraint,
    /// Any other chain problem (bad encoding, wrong key usage, ...).
    #[error("invalid certificate chain: {0}")]
    BadChain(String),
    /// The leaf does not carry exactly one SPIFFE ID.
    #[error("certificate carries no single SPIFFE ID: {0}")]
    NotSpiffe(String),
    /// The SPIFFE ID belongs to another trust domain.
    #[error("certificate is for trust domain {found}, not {expected}")]
    WrongTrustDomain {
        /// Ours.
        expected: String,
        /// Theirs.
        found: String,
    },
    /// The trust bundle holds no usable root.
    #[error("trust bundle has no usable root certificate")]
    EmptyBundle,
    /// A valid peer, but not one of the identities allowed here.
    #[error("peer is {found}, expected {expected}")]
    UnexpectedIdentity {
        /// Allowed identities.
        expected: String,
        /// Presented identity.
        found: String,
    },
    /// An issued certificate names another identity than its CSR asked for.
    #[error("certificate is for {issued}, but the CSR asked for {requested}")]
    IdentityMismatch {
        /// The identity in the CSR.
        requested: String,
        /// The identity in the certificate.
        issued: String,
    },
    /// An issued certificate carries another public key than the CSR's.
    #[error("certificate does not carry the requester's public key")]
    KeyMismatch,
    /// A TLS configuration could not be built (unreadable key, inconsistent chain).
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl VerifyError {
    /// Short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::NoCertificate => "no_certificate",
            VerifyError::UnknownRoot => "unknown_root",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::NameConstraint => "name_constraint",
            VerifyError::BadChain(_) => "bad_chain",
            VerifyError::NotSpiffe(_) => "not_spiffe",
            VerifyError::WrongTrustDomain { .. } => "wrong_trust_domain",
            VerifyError::EmptyBundle => "empty_bundle",
            VerifyError::UnexpectedIdentity { .. } => "unexpected_identity",
            VerifyError::IdentityMismatch { .. } => "identity_mismatch",
            VerifyError::KeyMismatch => "key_mismatch",
            VerifyError::Config(_) => "config",
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

/// A root store from a PEM bundle (one or several roots). Unparseable entries are skipped; a
/// bundle without any usable root is an error.
pub fn root_store(bundle_pem: &str) -> Result<Arc<RootCertStore>, VerifyError> {
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(crate::pem_certs(bundle_pem));
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "trust bundle entries that are not usable roots were skipped"
        );
    }
    if added == 0 {
        return Err(VerifyError::EmptyBundle);
    }
    Ok(Arc::new(store))
}

fn map_chain_error(e: &rustls::Error) -> VerifyError {
    match e {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => VerifyError::UnknownRoot,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => VerifyError::Expired,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => VerifyError::NotYetValid,
        rustls::Error::InvalidCertificate(CertificateError::Other(other))
            if matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::NameConstraintViolation)
            ) =>
        {
            VerifyError::NameConstraint
        }
        other => VerifyError::BadChain(other.to_string()),
    }
}

/// The SPIFFE ID and cluster of a certificate, checked against `trust_domain`: exactly one URI
/// SAN, of the form `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`. Does not check the chain.
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
    let cluster = san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => ClusterId::from_certificate_san(d, trust_domain),
        _ => None,
    });
    Ok(PeerIdentity { spiffe, cluster })
}

/// What RBAC matches a caller's certificate on (Envoy's `authenticated` principal): its URI
/// SANs, its DNS SANs and its subject (RFC 2253 form). Does not check the chain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertificateNames {
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub subject: String,
}

/// The names of `cert` (see [`CertificateNames`]).
pub fn certificate_names(cert: &CertificateDer<'_>) -> Result<CertificateNames, VerifyError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| VerifyError::NotSpiffe(e.to_string()))?;
    let mut names = CertificateNames {
        subject: parsed.subject().to_string(),
        ..Default::default()
    };
    if let Some(san) = parsed
        .subject_alternative_name()
        .map_err(|e| VerifyError::NotSpiffe(e.to_string()))?
    {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => names.uri_sans.push((*u).to_owned()),
                GeneralName::DNSName(d) => names.dns_sans.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    Ok(names)
}

fn webpki_client_verifier(
    roots: Arc<RootCertStore>,
) -> Result<Arc<dyn ClientCertVerifier>, VerifyError> {
    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, crate::provider())
        .build()
        .map_err(|e| VerifyError::Config(e.to_string()))
}

/// Verifies a presented chain (leaf first) against the trust bundle at time `now` and returns
/// the peer's identity. Rejections are logged with their reason.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    bundle_pem: &str,
    trust_domain: &str,
    now: UnixTime,
) -> Result<PeerIdentity, VerifyError> {
    let result = (|| {
        let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::NoCertificate)?;
        let verifier = webpki_client_verifier(root_store(bundle_pem)?)?;
        verifier
            .verify_client_cert(leaf, intermediates, now)
            .map_err(|e| map_chain_error(&e))?;
        identity_of(leaf, trust_domain)
    })();
    if let Err(e) = &result {
        tracing::warn!(reason = e.reason(), error = %e, "peer certificate rejected");
    }
    result
}

/// Checks a certificate the CA returned for our CSR: the chain verifies against `bundle_pem`,
/// it names exactly the identity `requested` and carries our public key (`public_key_spki`, a
/// DER SubjectPublicKeyInfo).
pub fn verify_issued(
    chain_pem: &str,
    bundle_pem: &str,
    requested: &SpiffeId,
    public_key_spki: &[u8],
    now: UnixTime,
) -> Result<PeerIdentity, VerifyError> {
    let chain = crate::pem_certs(chain_pem);
    let peer = verify_chain(&chain, bundle_pem, &requested.trust_domain, now)?;
    if &peer.spiffe != requested {
        return Err(VerifyError::IdentityMismatch {
            requested: requested.to_string(),
            issued: peer.spiffe.to_string(),
        });
    }
    let leaf = chain.first().ok_or(VerifyError::NoCertificate)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| VerifyError::BadChain(e.to_string()))?;
    if parsed.public_key().raw != public_key_spki {
        return Err(VerifyError::KeyMismatch);
    }
    Ok(peer)
}

/// The identity of the peer of an established TLS session (`peer_certificates()`).
pub fn peer_identity(
    certs: Option<&[CertificateDer<'_>]>,
    trust_domain: &str,
) -> Result<PeerIdentity, VerifyError> {
    let leaf = certs
        .and_then(<[_]>::first)
        .ok_or(VerifyError::NoCertificate)?;
    identity_of(leaf, trust_domain)
}

fn check_allowed(id: &PeerIdentity, allowed: &[SpiffeId]) -> Result<(), VerifyError> {
    if allowed.is_empty() || allowed.contains(&id.spiffe) {
        return Ok(());
    }
    Err(VerifyError::UnexpectedIdentity {
        expected: allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" or "),
        found: id.spiffe.to_string(),
    })
}

fn to_rustls(e: VerifyError) -> rustls::Error {
    tracing::warn!(reason = e.reason(), error = %e, "TLS peer rejected");
    match e {
        VerifyError::UnknownRoot => {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        }
        VerifyError::Expired => rustls::Error::InvalidCertificate(CertificateError::Expired),
        VerifyError::NotYetValid => {
            rustls::Error::InvalidCertificate(CertificateError::NotValidYet)
        }
        other => rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            Arc::new(other),
        ))),
    }
}

/// A rustls server-certificate verifier for mesh peers: the chain must lead to a mesh root
/// (webpki's trust-anchor check, server-auth usage) and the leaf must carry a SPIFFE ID of the
/// trust domain (one of `expected`, when given). The TLS server name is ignored.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    trust_domain: String,
    expected: Vec<SpiffeId>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// A verifier over `bundle_pem` accepting `expected` (any identity of the trust domain when
    /// empty).
    pub fn new(
        bundle_pem: &str,
        trust_domain: &str,
        expected: Vec<SpiffeId>,
    ) -> Result<Self, VerifyError> {
        Ok(Self {
            roots: root_store(bundle_pem)?,
            trust_domain: trust_domain.to_owned(),
            expected,
            algs: crate::provider().signature_verification_algorithms,
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
        )
        .map_err(|e| to_rustls(map_chain_error(&e)))?;
        let id = identity_of(end_entity, &self.trust_domain).map_err(to_rustls)?;
        check_allowed(&id, &self.expected).map_err(to_rustls)?;
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

/// A rustls client-certificate verifier for mesh peers: rustls' `WebPkiClientVerifier` over the
/// bundle (a client certificate is mandatory), then the SPIFFE checks of
/// [`SpiffeServerVerifier`].
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
    allowed: Vec<SpiffeId>,
}

impl SpiffeClientVerifier {
    /// A verifier over `bundle_pem` accepting `allowed` (any identity of the trust domain when
    /// empty).
    pub fn new(
        bundle_pem: &str,
        trust_domain: &str,
        allowed: Vec<SpiffeId>,
    ) -> Result<Self, VerifyError> {
        Ok(Self {
            inner: webpki_client_verifier(root_store(bundle_pem)?)?,
            trust_domain: trust_domain.to_owned(),
            allowed,
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| to_rustls(map_chain_error(&e)))?;
        let id = identity_of(end_entity, &self.trust_domain).map_err(to_rustls)?;
        check_allowed(&id, &self.allowed).map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Parses a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub(crate) fn key_der(key_pem: &str) -> Result<PrivateKeyDer<'static>, VerifyError> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| VerifyError::Config(format!("private key: {e}")))
}

/// A TLS 1.3 server config for mesh mTLS: presents `chain_pem`/`key_pem` and requires a client
/// certificate chained to the bundle carrying a SPIFFE ID of `trust_domain` (one of `allowed`
/// when non-empty).
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    bundle_pem: &str,
    trust_domain: &str,
    allowed: Vec<SpiffeId>,
) -> Result<rustls::ServerConfig, VerifyError> {
    let verifier = SpiffeClientVerifier::new(bundle_pem, trust_domain, allowed)?;
    rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| VerifyError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(crate::pem_certs(chain_pem), key_der(key_pem)?)
        .map_err(|e| VerifyError::Config(e.to_string()))
}

/// A TLS 1.3 client config for mesh mTLS: presents `chain_pem`/`key_pem` and verifies the
/// server's SPIFFE ID (one of `expected` when non-empty).
pub fn client_config(
    chain_pem: &str,
    key_pem: &str,
    bundle_pem: &str,
    trust_domain: &str,
    expected: Vec<SpiffeId>,
) -> Result<rustls::ClientConfig, VerifyError> {
    let verifier = SpiffeServerVerifier::new(bundle_pem, trust_domain, expected)?;
    rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| VerifyError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(crate::pem_certs(chain_pem), key_der(key_pem)?)
        .map_err(|e| VerifyError::Config(e.to_string()))
}

/// A TLS 1.3 server config for a mesh server whose certificate comes from `resolver` (e.g.
/// [`crate::service::CaService::serving_resolver`]) and that requires a client certificate
/// chained to the bundle carrying a SPIFFE ID of `trust_domain` (the xDS listener). ALPN `h2`.
pub fn mtls_server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    bundle_pem: &str,
    trust_domain: &str,
) -> Result<rustls::ServerConfig, VerifyError> {
    let verifier = SpiffeClientVerifier::new(bundle_pem, trust_domain, Vec::new())?;
    let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| VerifyError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
