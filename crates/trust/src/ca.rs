//! The CA hierarchy: mesh root, per-cluster intermediates, and signing of workload CSRs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use causeway_model::{ClusterId, SpiffeId};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Istio `cacerts` file names: the layout an operator provides to plug in their own CA.
pub mod files {
    /// The mesh root certificate(s): several during a root rotation.
    pub const ROOT_CERT: &str = "root-cert.pem";
    /// The root's key (only in the offline root directory).
    pub const ROOT_KEY: &str = "root-key.pem";
    /// The cluster's intermediate certificate.
    pub const CA_CERT: &str = "ca-cert.pem";
    /// The intermediate's key.
    pub const CA_KEY: &str = "ca-key.pem";
    /// Intermediate then root: appended to every leaf.
    pub const CERT_CHAIN: &str = "cert-chain.pem";
}

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("{what}: {source}")]
    Cert {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// The CSR is malformed or its signature is invalid.
    #[error("invalid CSR: {0}")]
    BadCsr(String),
    /// A directory already holds a CA; refusing to overwrite it.
    #[error("{0} already holds a CA; refusing to overwrite it")]
    Exists(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CaError {
    let what = what.into();
    move |source| CaError::Cert { what, source }
}

/// A random 16-byte serial number, so rotated certificates never share one.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    if provider.secure_random.fill(&mut bytes).is_err() {
        // The system RNG failing is unrecoverable for a CA; fall back to time-derived bytes so
        // serials still differ, and say so.
        tracing::error!("system random number generator failed; using a time-derived serial");
        let nanos = OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .to_be_bytes();
        bytes.copy_from_slice(&nanos);
    }
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))
}

fn read_file(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// The mesh root: the one trust anchor of every cluster.
pub struct RootCa {
    cert_pem: String,
    key: KeyPair,
}

impl RootCa {
    /// Generates a root for `trust_domain`, valid for `validity`.
    pub fn generate(trust_domain: &str, validity: Duration) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(cert_err("generating the root key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(
            DnType::CommonName,
            format!("Causeway mesh root ({trust_domain})"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + validity;
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(cert_err("signing the root"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Loads `root-cert.pem` and `root-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_pem = read_file(&dir.join(files::ROOT_CERT))?;
        let key_pem = read_file(&dir.join(files::ROOT_KEY))?;
        let key = KeyPair::from_pem(&key_pem).map_err(cert_err(format!(
            "reading {}",
            dir.join(files::ROOT_KEY).display()
        )))?;
        Ok(Self { cert_pem, key })
    }

    /// Writes the root into `dir` (`ca init`): the key with mode 0600. Refuses to overwrite.
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        if dir.join(files::ROOT_KEY).exists() {
            return Err(CaError::Exists(dir.to_path_buf()));
        }
        write_file(&dir.join(files::ROOT_CERT), &self.cert_pem, false)?;
        write_file(&dir.join(files::ROOT_KEY), &self.key.serialize_pem(), true)
    }

    /// The root certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues the intermediate CA of `cluster`, valid for `validity`.
    pub fn issue_intermediate(
        &self,
        cluster: &ClusterId,
        trust_domain: &str,
        validity: Duration,
    ) -> Result<ClusterCaFiles, CaError> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(cert_err("reading the root certificate"))?;
        let key = KeyPair::generate().map_err(cert_err("generating the intermediate key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::OrganizationalUnitName, cluster.as_str());
        dn.push(
            DnType::CommonName,
            format!("Causeway intermediate CA, cluster {cluster}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + validity;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer).map_err(cert_err(format!(
            "signing the intermediate of cluster {cluster}"
        )))?;
        let ca_cert_pem = cert.pem();
        Ok(ClusterCaFiles {
            cert_chain_pem: format!("{ca_cert_pem}{}", self.cert_pem),
            ca_cert_pem,
            ca_key_pem: key.serialize_pem(),
            root_cert_pem: self.cert_pem.clone(),
        })
    }
}

/// A cluster's CA material in Istio's `cacerts` layout.
pub struct ClusterCaFiles {
    /// Intermediate certificate.
    pub ca_cert_pem: String,
    /// Intermediate key.
    pub ca_key_pem: String,
    /// Intermediate then root.
    pub cert_chain_pem: String,
    /// Trusted root(s).
    pub root_cert_pem: String,
}

impl ClusterCaFiles {
    /// Writes the four files into `dir` (`ca issue-intermediate`), the key with mode 0600.
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        if dir.join(files::CA_KEY).exists() {
            return Err(CaError::Exists(dir.to_path_buf()));
        }
        write_file(&dir.join(files::CA_CERT), &self.ca_cert_pem, false)?;
        write_file(&dir.join(files::CA_KEY), &self.ca_key_pem, true)?;
        write_file(&dir.join(files::CERT_CHAIN), &self.cert_chain_pem, false)?;
        write_file(&dir.join(files::ROOT_CERT), &self.root_cert_pem, false)
    }
}

/// A certificate issued to a workload: the chain only, never a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// Leaf, intermediate (PEM, concatenated).
    pub chain_pem: String,
    /// Roots the workload must trust (PEM, concatenated).
    pub trust_bundle_pem: String,
    /// Expiry (Unix seconds).
    pub not_after: i64,
    /// Issue time (Unix seconds).
    pub not_before: i64,
}

/// What a certificate is issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafIdentity {
    /// The SPIFFE ID (the only URI SAN).
    pub spiffe: SpiffeId,
    /// The cluster it was issued for (a DNS SAN `<cluster>.cluster.<trust-domain>`).
    pub cluster: ClusterId,
}

/// DNS SAN naming the cluster of a workload certificate.
pub fn cluster_san(cluster: &ClusterId, trust_domain: &str) -> String {
    format!("{cluster}.cluster.{trust_domain}")
}

/// A cluster's issuing CA: its intermediate plus the trust bundle.
pub struct ClusterCa {
    cluster: ClusterId,
    trust_domain: String,
    ca_cert_pem: String,
    key: KeyPair,
    trust_bundle_pem: String,
}

impl ClusterCa {
    /// Loads a cacerts directory.
    pub fn load(dir: &Path, cluster: ClusterId, trust_domain: &str) -> Result<Self, CaError> {
        let ca_key = read_file(&dir.join(files::CA_KEY))?;
        Ok(Self {
            ca_cert_pem: read_file(&dir.join(files::CA_CERT))?,
            key: KeyPair::from_pem(&ca_key).map_err(cert_err(format!(
                "reading {}",
                dir.join(files::CA_KEY).display()
            )))?,
            trust_bundle_pem: read_file(&dir.join(files::ROOT_CERT))?,
            cluster,
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// Builds from in-memory material.
    pub fn from_files(
        files: &ClusterCaFiles,
        cluster: ClusterId,
        trust_domain: &str,
    ) -> Result<Self, CaError> {
        Ok(Self {
            ca_cert_pem: files.ca_cert_pem.clone(),
            key: KeyPair::from_pem(&files.ca_key_pem)
                .map_err(cert_err("reading the intermediate key"))?,
            trust_bundle_pem: files.root_cert_pem.clone(),
            cluster,
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// The cluster.
    pub fn cluster(&self) -> &ClusterId {
        &self.cluster
    }

    /// The roots to trust.
    pub fn trust_bundle_pem(&self) -> &str {
        &self.trust_bundle_pem
    }

    /// Replaces the trust bundle (root rotation: old and new roots during the overlap).
    pub fn set_trust_bundle(&mut self, bundle_pem: String) {
        self.trust_bundle_pem = bundle_pem;
    }

    /// Signs `csr_pem` for `spiffe`, valid for `ttl`. Whatever names the CSR asks for are
    /// ignored: only the CSR's public key is used, and the certificate carries exactly the
    /// identity the caller was authenticated for.
    pub fn sign(
        &self,
        csr_pem: &str,
        spiffe: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        self.sign_key(&csr.public_key, spiffe, ttl, &[])
    }

    /// Issues a serving certificate for the CA service itself (extra DNS names).
    pub fn sign_key(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        spiffe: &SpiffeId,
        ttl: Duration,
        extra_dns: &[&str],
    ) -> Result<IssuedCert, CaError> {
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert_pem, &self.key)
            .map_err(cert_err("reading the intermediate"))?;
        let uri = spiffe.to_string();
        let mut params = CertificateParams::default();
        let mut sans = vec![SanType::URI(
            uri.clone()
                .try_into()
                .map_err(cert_err(format!("SAN {uri}")))?,
        )];
        let cluster_dns = cluster_san(&self.cluster, &self.trust_domain);
        for dns in std::iter::once(cluster_dns.as_str()).chain(extra_dns.iter().copied()) {
            sans.push(SanType::DnsName(
                dns.try_into().map_err(cert_err(format!("SAN {dns}")))?,
            ));
        }
        params.subject_alt_names = sans;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, self.trust_domain.as_str());
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
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + ttl;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(public_key, &issuer)
            .map_err(cert_err(format!("signing a certificate for {uri}")))?;
        Ok(IssuedCert {
            chain_pem: format!("{}{}", leaf.pem(), self.ca_cert_pem),
            trust_bundle_pem: self.trust_bundle_pem.clone(),
            not_after: params.not_after.unix_timestamp(),
            not_before: params.not_before.unix_timestamp(),
        })
    }
}

/// Makes sure a control plane's CA directory exists: generates a root (first start) and an
/// intermediate for each cluster that lacks one. Layout: `<dir>/root/` (root cert and key) and
/// `<dir>/<cluster>/` (cacerts). Operators who bring their own CA fill these directories first.
pub fn ensure_ca_dir(
    dir: &Path,
    trust_domain: &str,
    clusters: &[ClusterId],
) -> Result<(), CaError> {
    let root_dir = dir.join("root");
    let root = if root_dir.join(files::ROOT_CERT).exists() {
        RootCa::load(&root_dir)?
    } else {
        tracing::info!(dir = %root_dir.display(), "generating the mesh root CA (first start)");
        let root = RootCa::generate(trust_domain, Duration::from_secs(10 * 365 * 24 * 3600))?;
        match root.write(&root_dir) {
            Ok(()) => root,
            // Another control plane sharing the directory got there first: use its root.
            Err(CaError::Exists(_)) => RootCa::load(&root_dir)?,
            Err(e) => return Err(e),
        }
    };
    for cluster in clusters {
        let cdir = dir.join(cluster.as_str());
        if cdir.join(files::CA_CERT).exists() {
            continue;
        }
        tracing::info!(cluster = %cluster, "issuing the cluster's intermediate CA");
        root.issue_intermediate(
            cluster,
            trust_domain,
            Duration::from_secs(2 * 365 * 24 * 3600),
        )?
        .write(&cdir)?;
    }
    Ok(())
}
