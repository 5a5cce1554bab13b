//! Workload certificates: the key pair and CSR a workload makes, the identity a CSR asks for,
//! and the leaf certificate a cluster CA signs for it.
//!
//! The split is deliberate: [`WorkloadKey`] lives only in the workload's agent; the CA sees the
//! CSR (public key plus requested SPIFFE ID, signed by the private key as proof of possession)
//! and answers with an [`IssuedCert`], which has no room for a key.

use std::fmt;
use std::time::Duration;

use causeway_model::SpiffeId;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use time::OffsetDateTime;

/// Lifetime of a workload certificate when nobody asks for another.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest workload certificate the CA issues, whatever is asked: revocation is by expiry only.
pub const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest workload certificate the CA issues (below this, renewal at half-life thrashes).
pub const MIN_WORKLOAD_TTL: Duration = Duration::from_secs(2);
/// How far `not_before` is backdated, so peers with slightly slow clocks accept new leaves.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);
/// Largest CSR accepted (PEM bytes); a P-256 CSR is well under 1 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why a key, CSR or certificate could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The CSR is not PEM/DER, is too large, or its signature does not verify.
    #[error("invalid CSR: {0}")]
    BadCsr(String),
    /// The CSR does not ask for exactly one SPIFFE ID.
    #[error("the CSR does not ask for one SPIFFE identity: {0}")]
    NotSpiffe(String),
    /// The CSR asks for an identity of another trust domain than the CA's.
    #[error("{requested} is outside trust domain {expected}")]
    WrongTrustDomain {
        /// The identity asked for.
        requested: String,
        /// The CA's trust domain.
        expected: String,
    },
    /// Key generation failed (system random number generator or crypto library).
    #[error("cannot generate the workload key pair: {0}")]
    KeyGeneration(String),
    /// Building or signing the certificate failed.
    #[error("cannot sign a certificate for {identity}: {reason}")]
    Signing {
        /// The identity being certified.
        identity: String,
        /// The cause.
        reason: String,
    },
}

/// A workload's private key. Generated in the agent's memory; the only copy that ever leaves
/// the process is the one handed to the local proxy over SDS. `Debug` never prints it.
pub struct WorkloadKey(KeyPair);

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkloadKey([private key elided])")
    }
}

impl WorkloadKey {
    /// A fresh ECDSA P-256 key pair.
    pub fn generate() -> Result<Self, IssueError> {
        KeyPair::generate()
            .map(Self)
            .map_err(|e| IssueError::KeyGeneration(e.to_string()))
    }

    /// A PKCS#10 CSR (PEM) asking for `identity` as the only URI SAN, signed by this key.
    pub fn csr_pem(&self, identity: &SpiffeId) -> Result<String, IssueError> {
        let uri = identity.to_string();
        let signing = |reason: String| IssueError::Signing {
            identity: uri.clone(),
            reason,
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            uri.clone()
                .try_into()
                .map_err(|e: rcgen::Error| signing(e.to_string()))?,
        )];
        params
            .serialize_request(&self.0)
            .and_then(|csr| csr.pem())
            .map_err(|e| signing(e.to_string()))
    }

    /// The public key as a DER SubjectPublicKeyInfo (to check a certificate carries this key).
    pub fn public_key_der(&self) -> Vec<u8> {
        self.0.subject_public_key_info()
    }

    /// The private key (PKCS#8 PEM), for the local proxy only.
    pub fn private_key_pem(&self) -> String {
        self.0.serialize_pem()
    }
}

/// What a (signature-checked) CSR asks for.
#[derive(Debug, Clone)]
pub struct CsrRequest {
    /// The one SPIFFE ID in the CSR's URI SANs.
    pub identity: SpiffeId,
    /// The requester's public key (the only thing from the CSR that ends up in a certificate).
    pub public_key: rcgen::PublicKey,
}

/// Parses a PEM CSR, verifies its self-signature (proof that the requester holds the key) and
/// extracts the identity it asks for: exactly one URI SAN, which must be a SPIFFE ID. Other
/// SAN types are ignored; they never reach a certificate.
pub fn parse_csr(csr_pem: &str) -> Result<CsrRequest, IssueError> {
    if csr_pem.len() > MAX_CSR_BYTES {
        return Err(IssueError::BadCsr(format!(
            "{} bytes, more than the {MAX_CSR_BYTES} accepted",
            csr_pem.len()
        )));
    }
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| IssueError::BadCsr(format!("not a PEM certificate request: {e}")))?;
    parse_csr_der(&der)
}

/// [`parse_csr`] for a DER-encoded CSR.
pub fn parse_csr_der(
    der: &rustls_pki_types::CertificateSigningRequestDer<'_>,
) -> Result<CsrRequest, IssueError> {
    let csr = CertificateSigningRequestParams::from_der(der)
        .map_err(|e| IssueError::BadCsr(e.to_string()))?;
    let uris: Vec<&str> = csr
        .params
        .subject_alt_names
        .iter()
        .filter_map(|s| match s {
            SanType::URI(u) => Some(u.as_str()),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [one] => *one,
        [] => return Err(IssueError::NotSpiffe("no URI SAN".into())),
        many => {
            return Err(IssueError::NotSpiffe(format!(
                "{} URI SANs ({}); exactly one is allowed",
                many.len(),
                many.join(", ")
            )))
        }
    };
    let identity = SpiffeId::parse(uri).map_err(|e| IssueError::NotSpiffe(e.to_string()))?;
    Ok(CsrRequest {
        identity,
        public_key: csr.public_key,
    })
}

/// A certificate issued to a workload: the chain only, never a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// Leaf, then the intermediate(s) up to but excluding the root (PEM, concatenated).
    pub chain_pem: String,
    /// Roots the workload must trust (PEM, concatenated; several during a root rotation).
    pub trust_bundle_pem: String,
    /// Start of validity (Unix seconds; backdated by [`CLOCK_SKEW_ALLOWANCE`]).
    pub not_before: i64,
    /// Expiry (Unix seconds).
    pub not_after: i64,
    /// The leaf's serial number (hex), for logs and audits.
    pub serial_hex: String,
}

/// What goes into a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafProfile {
    /// The SPIFFE ID: the only URI SAN.
    pub identity: SpiffeId,
    /// DNS SANs (the cluster name SAN; the CA service's host names).
    pub dns_names: Vec<String>,
    /// Requested lifetime.
    pub ttl: Duration,
    /// The leaf never outlives this (the issuing intermediate's expiry).
    pub not_after_limit: Option<OffsetDateTime>,
}

/// A random positive 16-byte serial number, so rotated certificates never share one.
pub(crate) fn random_serial() -> Result<(SerialNumber, String), IssueError> {
    let mut bytes = [0u8; 16];
    crate::random_bytes(&mut bytes).map_err(|_| IssueError::Signing {
        identity: "serial number".into(),
        reason: "the system random number generator failed".into(),
    })?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // positive, and no leading zero byte to strip
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok((SerialNumber::from_slice(&bytes), hex))
}

/// A freshly signed leaf (before the chain is attached).
pub(crate) struct SignedLeaf {
    pub(crate) pem: String,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) serial_hex: String,
}

/// Signs a leaf for `public_key` with `issuer`: only `profile`'s names, server and client
/// usage, not a CA.
pub(crate) fn sign_leaf(
    issuer: &Issuer<'_, KeyPair>,
    public_key: &impl PublicKeyData,
    profile: &LeafProfile,
) -> Result<SignedLeaf, IssueError> {
    let uri = profile.identity.to_string();
    let signing = |reason: String| IssueError::Signing {
        identity: uri.clone(),
        reason,
    };
    let mut params = CertificateParams::default();
    let mut sans = vec![SanType::URI(
        uri.clone()
            .try_into()
            .map_err(|e: rcgen::Error| signing(e.to_string()))?,
    )];
    for dns in &profile.dns_names {
        sans.push(SanType::DnsName(dns.clone().try_into().map_err(
            |e: rcgen::Error| signing(format!("DNS SAN {dns:?}: {e}")),
        )?));
    }
    params.subject_alt_names = sans;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::OrganizationName,
        profile.identity.trust_domain.as_str(),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let ttl = profile.ttl.clamp(MIN_WORKLOAD_TTL, MAX_WORKLOAD_TTL);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW_ALLOWANCE;
    params.not_after = now + ttl;
    if let Some(limit) = profile.not_after_limit {
        if limit <= now {
            return Err(signing("the issuing CA certificate has expired".into()));
        }
        params.not_after = params.not_after.min(limit);
    }
    let (serial, serial_hex) = random_serial()?;
    params.serial_number = Some(serial);
    params.use_authority_key_identifier_extension = true;
    let leaf = params
        .signed_by(public_key, issuer)
        .map_err(|e| signing(e.to_string()))?;
    Ok(SignedLeaf {
        pem: leaf.pem(),
        not_before: params.not_before.unix_timestamp(),
        not_after: params.not_after.unix_timestamp(),
        serial_hex,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_round_trip_names_the_identity() {
        let key = WorkloadKey::generate().expect("key");
        let id = SpiffeId::new("mesh.test", "shop", "cart");
        let csr = key.csr_pem(&id).expect("csr");
        let parsed = parse_csr(&csr).expect("parsed");
        assert_eq!(parsed.identity, id);
        assert_eq!(
            PublicKeyData::subject_public_key_info(&parsed.public_key),
            key.public_key_der()
        );
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn csrs_without_one_spiffe_id_are_refused() {
        let key = KeyPair::generate().expect("key");
        let csr = |sans: Vec<SanType>| {
            let mut p = CertificateParams::default();
            p.subject_alt_names = sans;
            p.serialize_request(&key).expect("csr").pem().expect("pem")
        };
        let none = csr(vec![SanType::DnsName("a.example".try_into().expect("dns"))]);
        assert!(matches!(parse_csr(&none), Err(IssueError::NotSpiffe(_))));
        let http = csr(vec![SanType::URI(
            "https://example.org/x".try_into().expect("uri"),
        )]);
        assert!(matches!(parse_csr(&http), Err(IssueError::NotSpiffe(_))));
        let two = csr(vec![
            SanType::URI("spiffe://t/ns/a/sa/b".try_into().expect("uri")),
            SanType::URI("spiffe://t/ns/a/sa/c".try_into().expect("uri")),
        ]);
        assert!(matches!(parse_csr(&two), Err(IssueError::NotSpiffe(_))));
        assert!(matches!(parse_csr("junk"), Err(IssueError::BadCsr(_))));
        let huge = "A".repeat(MAX_CSR_BYTES + 1);
        assert!(matches!(parse_csr(&huge), Err(IssueError::BadCsr(_))));
    }

    #[test]
    fn tampered_csr_signature_is_refused() {
        let key = WorkloadKey::generate().expect("key");
        let csr = key.csr_pem(&SpiffeId::new("t", "ns1", "sa1")).expect("csr");
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
            .expect("der");
        let mut bytes = der.as_ref().to_vec();
        let pos = bytes
            .windows(3)
            .position(|w| w == b"sa1")
            .expect("identity bytes");
        assert!(parse_csr_der(&bytes.clone().into()).is_ok(), "untouched");
        // Ask for another identity without re-signing: the signature no longer matches.
        bytes[pos + 2] = b'2';
        assert!(matches!(
            parse_csr_der(&bytes.into()),
            Err(IssueError::BadCsr(_))
        ));
    }

    #[test]
    fn serials_are_random_and_positive() {
        let (_, a) = random_serial().expect("serial");
        let (_, b) = random_serial().expect("serial");
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(u8::from_str_radix(&a[..2], 16).expect("hex") < 0x80);
    }
}
