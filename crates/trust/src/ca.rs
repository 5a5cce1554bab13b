//! The CA hierarchy: one mesh root, one intermediate CA per cluster, in Istio's `cacerts` layout.
//!
//! The root signs intermediates only and can stay offline ([`init_root`] and
//! [`issue_intermediate`] back `causeway ca init` and `causeway ca issue-intermediate`). A
//! [`ClusterCa`] runs with its cluster's intermediate, chain and root bundle alone, and signs
//! workload CSRs ([`crate::issue`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use causeway_model::{ClusterId, SpiffeId};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, GeneralSubtree, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, NameConstraints,
};
use time::OffsetDateTime;

use crate::issue::{self, CsrRequest, IssueError, LeafProfile};

pub use crate::issue::IssuedCert;

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
    /// Intermediate, any further intermediates, then the root.
    pub const CERT_CHAIN: &str = "cert-chain.pem";
}

/// Layout of a control plane's CA directory (`--ca-dir`). The root and the clusters live in
/// separate name spaces, so no cluster id can address the root's directory:
///
/// ```text
/// <ca-dir>/root/root-cert.pem, root-key.pem            the mesh root (key absent when offline)
/// <ca-dir>/clusters/<cluster>/ca-cert.pem, ca-key.pem,  each cluster's intermediate (cacerts)
///                             cert-chain.pem, root-cert.pem
/// ```
///
/// Directories of the earlier layout, `<ca-dir>/<cluster>/`, are still read in place (with a
/// warning) when `clusters/<cluster>/` holds no intermediate; `<ca-dir>/root/` is never taken
/// for a cluster's. New intermediates are always written in the current layout.
pub mod layout {
    /// The root's directory under the CA directory.
    pub const ROOT_DIR: &str = "root";
    /// The directory holding one directory per cluster under the CA directory.
    pub const CLUSTERS_DIR: &str = "clusters";
}

/// `<ca_dir>/root/`: the mesh root's directory.
pub fn root_dir(ca_dir: &Path) -> PathBuf {
    ca_dir.join(layout::ROOT_DIR)
}

/// `<ca_dir>/clusters/<cluster>/`: where a cluster's intermediate is written.
pub fn cluster_dir(ca_dir: &Path, cluster: &ClusterId) -> PathBuf {
    ca_dir.join(layout::CLUSTERS_DIR).join(cluster.as_str())
}

/// The directory holding `cluster`'s intermediate, if any: `clusters/<cluster>/`, or else an
/// intermediate of the earlier layout in `<ca_dir>/<cluster>/` (never the root's directory).
pub fn find_cluster_dir(ca_dir: &Path, cluster: &ClusterId) -> Option<PathBuf> {
    let current = cluster_dir(ca_dir, cluster);
    if current.join(files::CA_CERT).exists() {
        return Some(current);
    }
    if cluster.as_str() == layout::ROOT_DIR {
        return None;
    }
    let legacy = ca_dir.join(cluster.as_str());
    if legacy.join(files::CA_CERT).exists() {
        tracing::warn!(cluster = %cluster, dir = %legacy.display(), moved_to = %current.display(), "reading the cluster's intermediate from the earlier CA directory layout; move the directory to clusters/<cluster>/");
        return Some(legacy);
    }
    None
}

/// Default lifetime of a mesh root.
pub const DEFAULT_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a cluster intermediate.
pub const DEFAULT_INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);

/// Why a CA operation failed. Messages name the file, directory or cluster concerned.
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
    /// CA files exist but are not a usable CA (wrong key, not a CA, expired, broken chain).
    #[error("{path}: not a usable CA: {reason}")]
    Invalid {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A directory already holds a CA; refusing to overwrite it.
    #[error("{0} already holds a CA; refusing to overwrite it")]
    Exists(PathBuf),
    /// Signing a certificate failed.
    #[error("cluster {cluster}: {source}")]
    Issue {
        /// The cluster whose intermediate was signing.
        cluster: ClusterId,
        /// The cause.
        #[source]
        source: IssueError,
    },
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

fn invalid(path: &Path, reason: impl Into<String>) -> CaError {
    CaError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_file(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

/// 16 random hex digits for temporary names (`path` names the failure).
fn random_suffix(path: &Path) -> Result<String, CaError> {
    let mut suffix = [0u8; 8];
    crate::random_bytes(&mut suffix)
        .map_err(|_| invalid(path, "the system random number generator failed"))?;
    Ok(suffix.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `contents` to `dir/name` without ever replacing an existing file: the data goes to a
/// temporary file (mode 0600 for keys, 0644 otherwise) that is then hard-linked into place,
/// which fails atomically if the name exists. Concurrent writers cannot interleave.
fn write_new(dir: &Path, name: &str, contents: &str, private: bool) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", random_suffix(&target)?));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(contents.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        match std::fs::hard_link(&tmp, &target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(CaError::Exists(dir.to_path_buf()))
            }
            Err(e) => Err(io(&target)(e)),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Facts read from a CA certificate.
struct CaCertInfo {
    is_ca: bool,
    spki: Vec<u8>,
    not_after: OffsetDateTime,
    self_signed: bool,
}

fn ca_cert_info(der: &[u8], path: &Path) -> Result<CaCertInfo, CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| invalid(path, format!("unparseable certificate: {e}")))?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    Ok(CaCertInfo {
        is_ca,
        spki: cert.public_key().raw.to_vec(),
        not_after: cert.validity().not_after.to_datetime(),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
    })
}

/// Reads a CA certificate and its key from PEM, checking that the certificate is a CA, that it
/// has not expired and that the key belongs to it.
fn load_ca_pair(
    cert_pem: &str,
    key_pem: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(KeyPair, CaCertInfo), CaError> {
    let certs = crate::pem_certs(cert_pem);
    let first = certs
        .first()
        .ok_or_else(|| invalid(cert_path, "no PEM certificate in the file"))?;
    let info = ca_cert_info(first.as_ref(), cert_path)?;
    if !info.is_ca {
        return Err(invalid(
            cert_path,
            "the certificate is not a CA (basicConstraints CA:TRUE missing)",
        ));
    }
    if info.not_after <= OffsetDateTime::now_utc() {
        return Err(invalid(
            cert_path,
            format!("the CA certificate expired at {}", info.not_after),
        ));
    }
    let key = KeyPair::from_pem(key_pem).map_err(|e| invalid(key_path, e.to_string()))?;
    if rcgen::PublicKeyData::subject_public_key_info(&key) != info.spki {
        return Err(invalid(
            key_path,
            format!("the key does not belong to {}", cert_path.display()),
        ));
    }
    Ok((key, info))
}

fn ca_params(
    dn: DistinguishedName,
    path_len: u8,
    validity: Duration,
    limit: Option<OffsetDateTime>,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + validity;
    if let Some(limit) = limit {
        params.not_after = params.not_after.min(limit);
    }
    let (serial, _) = issue::random_serial().map_err(|e| CaError::Invalid {
        path: PathBuf::from("<serial number>"),
        reason: e.to_string(),
    })?;
    params.serial_number = Some(serial);
    Ok(params)
}

/// Settings of `causeway ca init DIR`.
#[derive(Debug, Clone)]
pub struct RootInitConfig {
    /// Directory to create the root in (`root-cert.pem`, `root-key.pem` mode 0600).
    pub dir: PathBuf,
    /// SPIFFE trust domain the mesh uses (recorded in the root's subject).
    pub trust_domain: String,
    /// Root lifetime.
    pub validity: Duration,
}

impl RootInitConfig {
    /// Settings with the default lifetime ([`DEFAULT_ROOT_VALIDITY`]).
    pub fn new(dir: impl Into<PathBuf>, trust_domain: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            trust_domain: trust_domain.into(),
            validity: DEFAULT_ROOT_VALIDITY,
        }
    }
}

/// `causeway ca init DIR`: generates a mesh root and writes it to `config.dir`, refusing to
/// overwrite an existing root.
pub fn init_root(config: &RootInitConfig) -> Result<RootCa, CaError> {
    let root = RootCa::generate(&config.trust_domain, config.validity)?;
    root.write(&config.dir)?;
    tracing::info!(dir = %config.dir.display(), trust_domain = %config.trust_domain, "mesh root written");
    Ok(root)
}

/// Settings of `causeway ca issue-intermediate --cluster C`.
#[derive(Debug, Clone)]
pub struct IntermediateConfig {
    /// Directory holding the root (`root-cert.pem`, `root-key.pem`), e.g. from [`init_root`].
    pub root_dir: PathBuf,
    /// Output directory: the cluster's `cacerts` (`ca-cert.pem`, `ca-key.pem`,
    /// `cert-chain.pem`, `root-cert.pem`).
    pub out_dir: PathBuf,
    /// The cluster.
    pub cluster: ClusterId,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Intermediate lifetime (capped at the root's expiry).
    pub validity: Duration,
}

impl IntermediateConfig {
    /// Settings with the default lifetime ([`DEFAULT_INTERMEDIATE_VALIDITY`]).
    pub fn new(
        root_dir: impl Into<PathBuf>,
        out_dir: impl Into<PathBuf>,
        cluster: ClusterId,
        trust_domain: impl Into<String>,
    ) -> Self {
        Self {
            root_dir: root_dir.into(),
            out_dir: out_dir.into(),
            cluster,
            trust_domain: trust_domain.into(),
            validity: DEFAULT_INTERMEDIATE_VALIDITY,
        }
    }
}

/// `causeway ca issue-intermediate`: loads the root from `config.root_dir`, issues the
/// cluster's intermediate and writes its `cacerts` directory, refusing to overwrite one.
pub fn issue_intermediate(config: &IntermediateConfig) -> Result<ClusterCaFiles, CaError> {
    let root = RootCa::load(&config.root_dir)?;
    let files = root.issue_intermediate(&config.cluster, &config.trust_domain, config.validity)?;
    files.write(&config.out_dir)?;
    tracing::info!(cluster = %config.cluster, dir = %config.out_dir.display(), "cluster intermediate written");
    Ok(files)
}

/// The mesh root: the one trust anchor of every cluster. Holds its key; keep it offline.
pub struct RootCa {
    cert_pem: String,
    bundle_pem: String,
    key: KeyPair,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl RootCa {
    /// Generates a self-signed root for `trust_domain`, valid for `validity`.
    pub fn generate(trust_domain: &str, validity: Duration) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(cert_err("generating the root key"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(
            DnType::CommonName,
            format!("Causeway mesh root ({trust_domain})"),
        );
        let params = ca_params(dn, 1, validity, None)?;
        let not_after = params.not_after;
        let cert = params
            .self_signed(&key)
            .map_err(cert_err("signing the root"))?;
        let cert_pem = cert.pem();
        Ok(Self {
            bundle_pem: cert_pem.clone(),
            cert_pem,
            key,
            not_after,
        })
    }

    /// Loads `root-cert.pem` and `root-key.pem` from `dir`. `root-cert.pem` may hold several
    /// roots (rotation): the one matching the key signs; all of them go into trust bundles.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(files::ROOT_CERT);
        let key_path = dir.join(files::ROOT_KEY);
        let bundle_pem = read_file(&cert_path)?;
        let key_pem = read_file(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, e.to_string()))?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        for der in crate::pem_certs(&bundle_pem) {
            let info = ca_cert_info(der.as_ref(), &cert_path)?;
            if info.spki != spki {
                continue;
            }
            if !info.is_ca || !info.self_signed {
                return Err(invalid(&cert_path, "the root is not a self-signed CA"));
            }
            if info.not_after <= OffsetDateTime::now_utc() {
                return Err(invalid(
                    &cert_path,
                    format!("the root expired at {}", info.not_after),
                ));
            }
            return Ok(Self {
                cert_pem: pem_encode_cert(der.as_ref()),
                bundle_pem,
                key,
                not_after: info.not_after,
            });
        }
        Err(invalid(
            &key_path,
            format!("no certificate in {} matches this key", cert_path.display()),
        ))
    }

    /// Writes the root into `dir` (`ca init`): the key with mode 0600 in a 0700 directory.
    /// Refuses to overwrite an existing root ([`CaError::Exists`]).
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        create_private_dir(dir)?;
        if dir.join(files::ROOT_KEY).exists() || dir.join(files::ROOT_CERT).exists() {
            return Err(CaError::Exists(dir.to_path_buf()));
        }
        // Key first, certificate last: a present certificate implies a complete root.
        write_new(dir, files::ROOT_KEY, &self.key.serialize_pem(), true)?;
        write_new(dir, files::ROOT_CERT, &self.bundle_pem, false)
    }

    /// The root certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Every trusted root (this one, plus others during a rotation), PEM.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// Whether this root (its key) signed the first certificate of `cert_pem`.
    fn signed(&self, cert_pem: &str) -> bool {
        let (Some(root_der), Some(der)) = (
            crate::pem_certs(&self.cert_pem).first().cloned(),
            crate::pem_certs(cert_pem).first().cloned(),
        ) else {
            return false;
        };
        let (Ok((_, root)), Ok((_, cert))) = (
            x509_parser::parse_x509_certificate(root_der.as_ref()),
            x509_parser::parse_x509_certificate(der.as_ref()),
        ) else {
            return false;
        };
        cert.verify_signature(Some(root.public_key())).is_ok()
    }

    /// Issues the intermediate CA of `cluster`, valid for `validity` (capped at the root's
    /// expiry). Path length 0: it signs workloads only. Name constraints (critical) limit the
    /// DNS names of everything it signs to the cluster's SAN ([`cluster_name_constraints`]), so
    /// it cannot mint another cluster's `<cluster>.cluster.<trust-domain>`.
    pub fn issue_intermediate(
        &self,
        cluster: &ClusterId,
        trust_domain: &str,
        validity: Duration,
    ) -> Result<ClusterCaFiles, CaError> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(cert_err("reading the root certificate"))?;
        let key = KeyPair::generate().map_err(cert_err(format!(
            "generating the intermediate key of cluster {cluster}"
        )))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::OrganizationalUnitName, cluster.as_str());
        dn.push(
            DnType::CommonName,
            format!("Causeway intermediate CA, cluster {cluster}"),
        );
        let mut params = ca_params(dn, 0, validity, Some(self.not_after))?;
        params.use_authority_key_identifier_extension = true;
        params.name_constraints = Some(cluster_name_constraints(cluster, trust_domain));
        let cert = params.signed_by(&key, &issuer).map_err(cert_err(format!(
            "signing the intermediate of cluster {cluster}"
        )))?;
        let ca_cert_pem = cert.pem();
        Ok(ClusterCaFiles {
            cert_chain_pem: format!("{ca_cert_pem}{}", self.cert_pem),
            ca_cert_pem,
            ca_key_pem: key.serialize_pem(),
            root_cert_pem: self.bundle_pem.clone(),
        })
    }
}

/// PEM-encodes a DER certificate verbatim (64-column base64).
fn pem_encode_cert(der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(TABLE[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A cluster's CA material in Istio's `cacerts` layout.
#[derive(Clone)]
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

impl std::fmt::Debug for ClusterCaFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCaFiles").finish_non_exhaustive()
    }
}

impl ClusterCaFiles {
    /// Writes the four files into `dir` (`ca issue-intermediate`), the key with mode 0600 in a
    /// 0700 directory. Refuses to overwrite ([`CaError::Exists`]).
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        create_private_dir(dir)?;
        if dir.join(files::CA_KEY).exists() || dir.join(files::CA_CERT).exists() {
            return Err(CaError::Exists(dir.to_path_buf()));
        }
        write_new(dir, files::CA_KEY, &self.ca_key_pem, true)?;
        write_new(dir, files::CERT_CHAIN, &self.cert_chain_pem, false)?;
        write_new(dir, files::ROOT_CERT, &self.root_cert_pem, false)?;
        // Last: its presence means the directory is complete.
        write_new(dir, files::CA_CERT, &self.ca_cert_pem, false)
    }
}

/// DNS SAN naming the cluster of a workload certificate: `<cluster>.cluster.<trust-domain>`.
/// Only that cluster's intermediate puts it in a certificate, so policies can rely on it.
pub fn cluster_san(cluster: &ClusterId, trust_domain: &str) -> String {
    cluster.certificate_san(trust_domain)
}

/// DNS names of the mesh's own servers, which every cluster's intermediate certifies (whichever
/// cluster serves them) and its name constraints therefore permit besides the cluster's SAN.
/// None has the form `<cluster>.cluster.<trust-domain>`, so none passes a caller-cluster check.
pub const SERVER_DNS_NAMES: [&str; 2] = [
    crate::service::CA_SERVER_NAME,
    crate::service::CONTROL_PLANE_SERVER_NAME,
];

/// The name constraints of `cluster`'s intermediate: DNS names only within the cluster's SAN
/// ([`cluster_san`]: that name and names below it) or [`SERVER_DNS_NAMES`]. Chain verifiers
/// (webpki in [`crate::verify`], BoringSSL in Envoy) then refuse any certificate it signs with
/// another cluster's SAN, even if the intermediate's key is stolen.
///
/// URI SANs (SPIFFE IDs) are not constrained: an ID names no cluster, so no URI subtree could
/// tell clusters apart; rcgen cannot write URI subtrees; and webpki refuses every certificate
/// below a URI constraint (it does not implement them), so even a trust-domain-wide one would
/// break verification.
pub fn cluster_name_constraints(cluster: &ClusterId, trust_domain: &str) -> NameConstraints {
    let mut permitted = vec![GeneralSubtree::DnsName(cluster_san(cluster, trust_domain))];
    permitted.extend(
        SERVER_DNS_NAMES
            .iter()
            .map(|n| GeneralSubtree::DnsName((*n).to_owned())),
    );
    NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: Vec::new(),
    }
}

/// Whether `dns` is a name [`cluster_name_constraints`] permit for the cluster SAN `san`.
fn permitted_dns(dns: &str, san: &str) -> bool {
    dns_within(dns, san) || SERVER_DNS_NAMES.iter().any(|n| dns.eq_ignore_ascii_case(n))
}

/// Whether `dns` lies within the DNS subtree `base` (RFC 5280: the name itself or below it).
fn dns_within(dns: &str, base: &str) -> bool {
    let (dns, base) = (dns.as_bytes(), base.trim_start_matches('.').as_bytes());
    match dns.len().checked_sub(base.len()) {
        Some(0) => dns.eq_ignore_ascii_case(base),
        Some(prefix) if prefix >= 2 => {
            dns[prefix - 1] == b'.' && dns[prefix..].eq_ignore_ascii_case(base)
        }
        _ => false,
    }
}

/// Whether a certificate's name constraints confine DNS names to `san`'s subtree (and
/// [`SERVER_DNS_NAMES`]): it permits DNS subtrees, and each lies within `san` or is one of
/// those names.
fn confines_dns_to(der: &[u8], san: &str) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(ext)) = cert.name_constraints() else {
        return false;
    };
    let Some(permitted) = &ext.value.permitted_subtrees else {
        return false;
    };
    let dns: Vec<&str> = permitted
        .iter()
        .filter_map(|t| match t.base {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d),
            _ => None,
        })
        .collect();
    dns.iter().any(|d| dns_within(d, san)) && dns.iter().all(|d| permitted_dns(d, san))
}

/// Whether some CA of `chain_pem` (any certificate that every leaf's path passes through)
/// confines DNS names to `cluster`'s SAN: then no leaf of the chain can carry another cluster's
/// SAN and verify.
pub fn chain_is_cluster_constrained(
    chain_pem: &str,
    cluster: &ClusterId,
    trust_domain: &str,
) -> bool {
    let san = cluster_san(cluster, trust_domain);
    crate::pem_certs(chain_pem)
        .iter()
        .any(|der| confines_dns_to(der.as_ref(), &san))
}

/// A cluster's issuing CA: its intermediate (and key), the chain up to the root, and the trust
/// bundle. Needs nothing from the root but its certificate.
pub struct ClusterCa {
    cluster: ClusterId,
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// Intermediate(s) appended to every leaf: `cert-chain.pem` without self-signed roots.
    chain_pem: String,
    trust_bundle_pem: String,
    not_after: OffsetDateTime,
    /// Whether the chain confines DNS names to the cluster's SAN
    /// ([`chain_is_cluster_constrained`]).
    name_constrained: bool,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster", &self.cluster)
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .field("name_constrained", &self.name_constrained)
            .finish_non_exhaustive()
    }
}

struct CaSource {
    ca_cert_pem: String,
    ca_key_pem: String,
    cert_chain_pem: Option<String>,
    root_cert_pem: String,
}

impl ClusterCa {
    /// Loads a `cacerts` directory (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, and
    /// `cert-chain.pem` if present) and checks it: the key matches, the certificate is an
    /// unexpired CA, and a test leaf it signs verifies against the root bundle (so an
    /// intermediate constrained to another cluster is refused). An intermediate without the
    /// cluster's name constraints ([`cluster_name_constraints`], missing in intermediates
    /// issued before they existed) loads with a warning: its key could mint other clusters'
    /// SANs; [`ensure_ca_dir`] replaces it when it holds the root.
    pub fn load(dir: &Path, cluster: ClusterId, trust_domain: &str) -> Result<Self, CaError> {
        let chain_path = dir.join(files::CERT_CHAIN);
        let chain = match std::fs::read_to_string(&chain_path) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&chain_path)(e)),
        };
        let ca = Self::build(
            CaSource {
                ca_cert_pem: read_file(&dir.join(files::CA_CERT))?,
                ca_key_pem: read_file(&dir.join(files::CA_KEY))?,
                cert_chain_pem: chain,
                root_cert_pem: read_file(&dir.join(files::ROOT_CERT))?,
            },
            dir,
            cluster,
            trust_domain,
        )?;
        tracing::info!(cluster = %ca.cluster, dir = %dir.display(), not_after = %ca.not_after, "cluster intermediate loaded");
        Ok(ca)
    }

    /// Builds from in-memory material (same checks as [`ClusterCa::load`]).
    pub fn from_files(
        files: &ClusterCaFiles,
        cluster: ClusterId,
        trust_domain: &str,
    ) -> Result<Self, CaError> {
        Self::build(
            CaSource {
                ca_cert_pem: files.ca_cert_pem.clone(),
                ca_key_pem: files.ca_key_pem.clone(),
                cert_chain_pem: Some(files.cert_chain_pem.clone()),
                root_cert_pem: files.root_cert_pem.clone(),
            },
            Path::new("<in memory>"),
            cluster,
            trust_domain,
        )
    }

    fn build(
        src: CaSource,
        dir: &Path,
        cluster: ClusterId,
        trust_domain: &str,
    ) -> Result<Self, CaError> {
        let cert_path = dir.join(files::CA_CERT);
        let (key, info) = load_ca_pair(
            &src.ca_cert_pem,
            &src.ca_key_pem,
            &cert_path,
            &dir.join(files::CA_KEY),
        )?;
        let issuer = Issuer::from_ca_cert_pem(&src.ca_cert_pem, key)
            .map_err(cert_err(format!("reading {}", cert_path.display())))?;
        // The leaf chain: cert-chain.pem (or ca-cert.pem) minus self-signed roots, which peers
        // take from their trust bundle.
        let chain_source = src.cert_chain_pem.as_deref().unwrap_or(&src.ca_cert_pem);
        let mut chain_pem = String::new();
        for der in crate::pem_certs(chain_source) {
            if !ca_cert_info(der.as_ref(), &dir.join(files::CERT_CHAIN))?.self_signed {
                chain_pem.push_str(&pem_encode_cert(der.as_ref()));
            }
        }
        if chain_pem.is_empty() {
            return Err(invalid(
                &dir.join(files::CERT_CHAIN),
                "holds no intermediate certificate",
            ));
        }
        let name_constrained = chain_is_cluster_constrained(&chain_pem, &cluster, trust_domain);
        let ca = Self {
            cluster,
            trust_domain: trust_domain.to_owned(),
            issuer,
            chain_pem,
            trust_bundle_pem: src.root_cert_pem,
            not_after: info.not_after,
            name_constrained,
        };
        ca.self_check(dir)?;
        if !name_constrained {
            tracing::warn!(cluster = %ca.cluster, dir = %dir.display(), permitted = %cluster_san(&ca.cluster, trust_domain), "the cluster's intermediate has no DNS name constraints: its key can mint certificates with other clusters' SANs; re-issue it (`causeway ca issue-intermediate`, or restart the control plane where it holds the root key)");
        }
        Ok(ca)
    }

    /// Signs a throwaway leaf and verifies it against the bundle: catches a chain that does not
    /// lead to the roots before any workload gets a useless certificate.
    fn self_check(&self, dir: &Path) -> Result<(), CaError> {
        let key = KeyPair::generate().map_err(cert_err("generating a self-check key"))?;
        let probe = SpiffeId::new(
            self.trust_domain.clone(),
            "causeway-system",
            "ca-self-check",
        );
        let issued = self.sign_key(&key, &probe, Duration::from_secs(60), &[])?;
        crate::verify::verify_chain(
            &crate::pem_certs(&issued.chain_pem),
            &self.trust_bundle_pem,
            &self.trust_domain,
            rustls_pki_types::UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| {
            invalid(
                dir,
                format!(
                    "cluster {}: certificates from this intermediate do not verify against {}: {e}",
                    self.cluster,
                    files::ROOT_CERT
                ),
            )
        })
    }

    /// The cluster.
    pub fn cluster(&self) -> &ClusterId {
        &self.cluster
    }

    /// The trust domain it issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The roots to trust (PEM).
    pub fn trust_bundle_pem(&self) -> &str {
        &self.trust_bundle_pem
    }

    /// The intermediate chain appended to leaves (PEM).
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// Expiry of the intermediate (Unix seconds): no leaf outlives it.
    pub fn not_after(&self) -> i64 {
        self.not_after.unix_timestamp()
    }

    /// Whether the intermediate's name constraints confine DNS names to the cluster's SAN.
    pub fn is_name_constrained(&self) -> bool {
        self.name_constrained
    }

    /// Replaces the trust bundle (root rotation: old and new roots during the overlap).
    pub fn set_trust_bundle(&mut self, bundle_pem: String) -> Result<(), CaError> {
        if crate::pem_certs(&bundle_pem).is_empty() {
            return Err(invalid(
                Path::new(files::ROOT_CERT),
                format!(
                    "cluster {}: new trust bundle has no certificate",
                    self.cluster
                ),
            ));
        }
        self.trust_bundle_pem = bundle_pem;
        Ok(())
    }

    /// Signs a checked CSR for the identity it asks for, valid for `ttl` (clamped to
    /// [`issue::MIN_WORKLOAD_TTL`]..[`issue::MAX_WORKLOAD_TTL`] and to the intermediate's
    /// expiry). Callers authorize the identity first (see [`crate::service::CaService`]); this
    /// only refuses identities of another trust domain.
    pub fn sign(&self, csr: &CsrRequest, ttl: Duration) -> Result<IssuedCert, CaError> {
        if csr.identity.trust_domain != self.trust_domain {
            return Err(CaError::Issue {
                cluster: self.cluster.clone(),
                source: IssueError::WrongTrustDomain {
                    requested: csr.identity.to_string(),
                    expected: self.trust_domain.clone(),
                },
            });
        }
        self.sign_key(&csr.public_key, &csr.identity, ttl, &[])
    }

    /// Issues a certificate for `identity` to `public_key`, with the cluster DNS SAN plus
    /// `extra_dns` (the CA service's own serving certificate uses this).
    pub(crate) fn sign_key(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        identity: &SpiffeId,
        ttl: Duration,
        extra_dns: &[&str],
    ) -> Result<IssuedCert, CaError> {
        let san = cluster_san(&self.cluster, &self.trust_domain);
        if self.name_constrained {
            if let Some(outside) = extra_dns.iter().find(|d| !permitted_dns(d, &san)) {
                return Err(CaError::Issue {
                    cluster: self.cluster.clone(),
                    source: IssueError::Signing {
                        identity: identity.to_string(),
                        reason: format!(
                            "DNS SAN {outside:?} is outside the intermediate's name constraints ({san})"
                        ),
                    },
                });
            }
        }
        let mut dns_names = vec![san];
        dns_names.extend(extra_dns.iter().map(|s| (*s).to_owned()));
        let profile = LeafProfile {
            identity: identity.clone(),
            dns_names,
            ttl,
            not_after_limit: Some(self.not_after),
        };
        let leaf = issue::sign_leaf(&self.issuer, public_key, &profile).map_err(|source| {
            CaError::Issue {
                cluster: self.cluster.clone(),
                source,
            }
        })?;
        Ok(IssuedCert {
            chain_pem: format!("{}{}", leaf.pem, self.chain_pem),
            trust_bundle_pem: self.trust_bundle_pem.clone(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            serial_hex: leaf.serial_hex,
        })
    }
}

/// Makes sure a control plane's CA directory exists: generates a root (first start) and an
/// intermediate for each cluster that lacks one. Layout: see [`layout`] (`<dir>/root/` and
/// `<dir>/clusters/<cluster>/`). Operators who bring their own CA fill these directories first;
/// several control planes may share the directory and start at once.
///
/// An intermediate this root signed without the cluster's name constraints (issued before they
/// existed) is replaced by a constrained one; see [`reissue_unconstrained`].
pub fn ensure_ca_dir(
    dir: &Path,
    trust_domain: &str,
    clusters: &[ClusterId],
) -> Result<(), CaError> {
    let root_dir = root_dir(dir);
    let root = if root_dir.join(files::ROOT_CERT).exists() {
        RootCa::load(&root_dir)?
    } else {
        tracing::info!(dir = %root_dir.display(), "generating the mesh root CA (first start)");
        let root = RootCa::generate(trust_domain, DEFAULT_ROOT_VALIDITY)?;
        match root.write(&root_dir) {
            Ok(()) => root,
            // Another control plane sharing the directory got there first: use its root.
            Err(CaError::Exists(_)) => {
                wait_for(&root_dir.join(files::ROOT_CERT));
                RootCa::load(&root_dir)?
            }
            Err(e) => return Err(e),
        }
    };
    for cluster in clusters {
        if let Some(existing) = find_cluster_dir(dir, cluster) {
            reissue_unconstrained(dir, &existing, &root, cluster, trust_domain)?;
            continue;
        }
        let cdir = cluster_dir(dir, cluster);
        tracing::info!(cluster = %cluster, "issuing the cluster's intermediate CA");
        match root
            .issue_intermediate(cluster, trust_domain, DEFAULT_INTERMEDIATE_VALIDITY)?
            .write(&cdir)
        {
            Ok(()) => {}
            Err(CaError::Exists(_)) => wait_for(&cdir.join(files::CA_CERT)),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The certificates of a cluster directory that every leaf's chain carries: `ca-cert.pem` and
/// `cert-chain.pem` (when present).
fn read_ca_chain(cdir: &Path) -> Result<String, CaError> {
    let mut pem = read_file(&cdir.join(files::CA_CERT))?;
    let chain_path = cdir.join(files::CERT_CHAIN);
    match std::fs::read_to_string(&chain_path) {
        Ok(chain) => pem.push_str(&chain),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&chain_path)(e)),
    }
    Ok(pem)
}

/// Held while one control plane re-issues a cluster's intermediate:
/// `clusters/.<cluster>.reissue.lock`, created exclusively, removed on drop.
struct ReissueLock(PathBuf);

impl ReissueLock {
    /// `None` when another holder has it (or a crashed one left it behind).
    fn acquire(clusters_dir: &Path, cluster: &ClusterId) -> Result<Option<Self>, CaError> {
        let path = clusters_dir.join(format!(".{cluster}.reissue.lock"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => Ok(Some(Self(path))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                tracing::warn!(cluster = %cluster, lock = %path.display(), "another control plane is re-issuing the cluster's intermediate (remove the lock file if none is)");
                Ok(None)
            }
            Err(e) => Err(io(&path)(e)),
        }
    }
}

impl Drop for ReissueLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Replaces `cluster`'s intermediate in `existing` (either layout) with a name-constrained one
/// ([`cluster_name_constraints`]) when it lacks the constraints and `root` signed it; an
/// operator's own chain is left alone (with [`ClusterCa::load`]'s warning).
///
/// The new intermediate is written aside, then swapped in: the old directory moves to
/// `clusters/.<cluster>.retired-<unix time>-<random>/` and loses its key, so it signs nothing
/// more, while the leaves it signed keep verifying until they expire (they carry the old
/// intermediate and chain to the same root). The old intermediate itself stays valid until its
/// own expiry: only a root rotation retires it sooner.
fn reissue_unconstrained(
    ca_dir: &Path,
    existing: &Path,
    root: &RootCa,
    cluster: &ClusterId,
    trust_domain: &str,
) -> Result<(), CaError> {
    let chain = read_ca_chain(existing)?;
    if chain_is_cluster_constrained(&chain, cluster, trust_domain) {
        return Ok(());
    }
    if !root.signed(&chain) {
        tracing::warn!(cluster = %cluster, dir = %existing.display(), "the cluster's intermediate has no name constraints and was not issued by this root; not re-issuing it");
        return Ok(());
    }
    let clusters_dir = ca_dir.join(layout::CLUSTERS_DIR);
    create_private_dir(&clusters_dir)?;
    let Some(_lock) = ReissueLock::acquire(&clusters_dir, cluster)? else {
        return Ok(());
    };
    // Under the lock: another control plane may have finished a re-issue meanwhile.
    let Some(existing) = find_cluster_dir(ca_dir, cluster) else {
        return Ok(());
    };
    if chain_is_cluster_constrained(&read_ca_chain(&existing)?, cluster, trust_domain) {
        return Ok(());
    }
    let issued = root.issue_intermediate(cluster, trust_domain, DEFAULT_INTERMEDIATE_VALIDITY)?;
    let suffix = random_suffix(&clusters_dir)?;
    let staging = clusters_dir.join(format!(".{cluster}.new-{suffix}"));
    if let Err(e) = issued.write(&staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let retired = clusters_dir.join(format!(".{cluster}.retired-{}-{suffix}", crate::now_unix()));
    if let Err(e) = std::fs::rename(&existing, &retired) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(io(&existing)(e));
    }
    let current = cluster_dir(ca_dir, cluster);
    if let Err(e) = std::fs::rename(&staging, &current) {
        let _ = std::fs::remove_dir_all(&staging);
        if current.join(files::CA_CERT).exists() {
            // A control plane without the lock issued one into the gap: it is constrained.
            tracing::info!(cluster = %cluster, dir = %current.display(), "another control plane wrote the cluster's new intermediate; using it");
        } else {
            let _ = std::fs::rename(&retired, &existing);
            return Err(io(&current)(e));
        }
    }
    if let Err(e) = std::fs::remove_file(retired.join(files::CA_KEY)) {
        tracing::warn!(cluster = %cluster, key = %retired.join(files::CA_KEY).display(), error = %e, "could not delete the retired intermediate's key; delete it by hand");
    }
    tracing::warn!(cluster = %cluster, dir = %current.display(), retired = %retired.display(), "re-issued the cluster's intermediate with name constraints (DNS names within {}); leaves of the old one stay valid until they expire", cluster_san(cluster, trust_domain));
    Ok(())
}

/// Waits (at most 2 s) for a concurrent writer to finish a CA directory.
fn wait_for(path: &Path) {
    for _ in 0..40 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const TD: &str = "mesh.test";

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn init_and_issue_intermediate_write_cacerts_with_private_keys() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root_dir = tmp.path().join("root");
        let root = init_root(&RootInitConfig::new(&root_dir, TD)).expect("init");
        assert_eq!(mode(&root_dir.join(files::ROOT_KEY)), 0o600);
        assert_eq!(mode(&root_dir), 0o700);
        assert!(matches!(
            init_root(&RootInitConfig::new(&root_dir, TD)),
            Err(CaError::Exists(_))
        ));
        let loaded = RootCa::load(&root_dir).expect("load");
        assert_eq!(loaded.cert_pem(), root.cert_pem());

        let east = ClusterId::new("east").expect("id");
        let out = tmp.path().join("east");
        issue_intermediate(&IntermediateConfig::new(&root_dir, &out, east.clone(), TD))
            .expect("issue");
        assert_eq!(mode(&out.join(files::CA_KEY)), 0o600);
        for f in [files::CA_CERT, files::CERT_CHAIN, files::ROOT_CERT] {
            assert!(out.join(f).exists(), "{f}");
        }
        assert!(
            !out.join(files::ROOT_KEY).exists(),
            "the root key stays in the root dir"
        );
        let ca = ClusterCa::load(&out, east.clone(), TD).expect("cluster CA");
        assert_eq!(ca.trust_bundle_pem(), root.cert_pem());
        assert_eq!(
            crate::pem_certs(ca.chain_pem()).len(),
            1,
            "root not in the leaf chain"
        );
        assert!(matches!(
            issue_intermediate(&IntermediateConfig::new(&root_dir, &out, east, TD)),
            Err(CaError::Exists(_))
        ));
    }

    #[test]
    fn mismatched_or_foreign_cacerts_are_refused_with_the_file_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let c = ClusterId::new("west").expect("id");
        let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).expect("root");
        let other_root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).expect("root");
        let a = root
            .issue_intermediate(&c, TD, DEFAULT_INTERMEDIATE_VALIDITY)
            .expect("a");
        let b = root
            .issue_intermediate(&c, TD, DEFAULT_INTERMEDIATE_VALIDITY)
            .expect("b");
        // Key of another intermediate.
        let mut wrong_key = a.clone();
        wrong_key.ca_key_pem = b.ca_key_pem.clone();
        let dir = tmp.path().join("wrong-key");
        wrong_key.write(&dir).expect("write");
        let e = ClusterCa::load(&dir, c.clone(), TD).expect_err("wrong key");
        assert!(e.to_string().contains("ca-key.pem"), "{e}");
        assert!(e.to_string().contains("does not belong"), "{e}");
        // Root bundle that is not the intermediate's root.
        let mut foreign = a.clone();
        foreign.root_cert_pem = other_root.cert_pem().to_owned();
        let e = ClusterCa::from_files(&foreign, c.clone(), TD).expect_err("foreign root");
        assert!(e.to_string().contains("do not verify"), "{e}");
        // A workload leaf (with its own key) posing as an intermediate.
        let ca = ClusterCa::from_files(&a, c.clone(), TD).expect("ca");
        let leaf_key = KeyPair::generate().expect("key");
        let leaf = ca
            .sign_key(
                &leaf_key,
                &SpiffeId::new(TD, "x", "y"),
                Duration::from_secs(600),
                &[],
            )
            .expect("leaf");
        let not_ca = ClusterCaFiles {
            ca_cert_pem: leaf.chain_pem.clone(),
            ca_key_pem: leaf_key.serialize_pem(),
            cert_chain_pem: leaf.chain_pem,
            root_cert_pem: root.cert_pem().to_owned(),
        };
        let e = ClusterCa::from_files(&not_ca, c.clone(), TD).expect_err("leaf is no CA");
        assert!(e.to_string().contains("not a CA"), "{e}");
        // The root certificate with an intermediate's key.
        let root_with_wrong_key = ClusterCaFiles {
            ca_cert_pem: root.cert_pem().to_owned(),
            ca_key_pem: b.ca_key_pem,
            cert_chain_pem: root.cert_pem().to_owned(),
            root_cert_pem: root.cert_pem().to_owned(),
        };
        assert!(matches!(
            ClusterCa::from_files(&root_with_wrong_key, c, TD),
            Err(CaError::Invalid { .. })
        ));
    }

    #[test]
    fn ensure_ca_dir_creates_once_and_keeps_existing_material() {
        let tmp = tempfile::tempdir().expect("tmp");
        let clusters = [
            ClusterId::new("a").expect("id"),
            ClusterId::new("b").expect("id"),
        ];
        ensure_ca_dir(tmp.path(), TD, &clusters).expect("first");
        let read = || {
            std::fs::read_to_string(tmp.path().join("clusters/a").join(files::CA_CERT))
                .expect("a cert")
        };
        let before = read();
        ensure_ca_dir(tmp.path(), TD, &clusters).expect("second");
        assert_eq!(before, read());
        for c in &clusters {
            ClusterCa::load(&cluster_dir(tmp.path(), c), c.clone(), TD).expect("loads");
        }
    }

    #[test]
    fn root_dir_with_two_roots_signs_with_the_one_matching_its_key() {
        let tmp = tempfile::tempdir().expect("tmp");
        let old = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).expect("old");
        let new = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).expect("new");
        std::fs::write(
            tmp.path().join(files::ROOT_CERT),
            format!("{}{}", old.cert_pem(), new.cert_pem()),
        )
        .expect("bundle");
        std::fs::write(tmp.path().join(files::ROOT_KEY), new.key.serialize_pem()).expect("key");
        let loaded = RootCa::load(tmp.path()).expect("load");
        assert_eq!(loaded.cert_pem(), new.cert_pem());
        let c = ClusterId::new("c").expect("id");
        let files = loaded
            .issue_intermediate(&c, TD, DEFAULT_INTERMEDIATE_VALIDITY)
            .expect("intermediate");
        assert_eq!(
            crate::pem_certs(&files.root_cert_pem).len(),
            2,
            "both roots go to the cluster's bundle"
        );
        ClusterCa::from_files(&files, c, TD).expect("verifies against the two-root bundle");
    }

    #[test]
    fn constrained_intermediates_certify_the_mesh_server_names_but_nothing_else_extra() {
        let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).expect("root");
        let c = ClusterId::new("east").expect("id");
        let files = root
            .issue_intermediate(&c, TD, DEFAULT_INTERMEDIATE_VALIDITY)
            .expect("intermediate");
        let ca = ClusterCa::from_files(&files, c, TD).expect("ca");
        assert!(ca.is_name_constrained());
        let key = KeyPair::generate().expect("key");
        let id = SpiffeId::new(TD, "causeway-system", "causeway-ca");
        for name in SERVER_DNS_NAMES {
            let issued = ca
                .sign_key(&key, &id, Duration::from_secs(600), &[name])
                .expect("server name");
            crate::verify::verify_chain(
                &crate::pem_certs(&issued.chain_pem),
                ca.trust_bundle_pem(),
                TD,
                rustls_pki_types::UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for name in ["west.cluster.mesh.test", "example.com", "x.causeway-ca"] {
            let e = ca
                .sign_key(&key, &id, Duration::from_secs(600), &[name])
                .expect_err(name);
            assert!(e.to_string().contains("name constraints"), "{e}");
        }
    }

    #[test]
    fn dns_subtree_matching_follows_label_boundaries() {
        assert!(dns_within("a.cluster.td", "a.cluster.td"));
        assert!(dns_within("A.Cluster.TD", "a.cluster.td"));
        assert!(dns_within("x.a.cluster.td", "a.cluster.td"));
        assert!(dns_within("x.a.cluster.td", ".a.cluster.td"));
        assert!(!dns_within("ba.cluster.td", "a.cluster.td"));
        assert!(!dns_within("cluster.td", "a.cluster.td"));
        assert!(!dns_within(".a.cluster.td", "a.cluster.td"));
        assert!(!dns_within("éa.cluster.td", "a.cluster.td"));
    }

    #[test]
    fn pem_encoding_round_trips() {
        let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).expect("root");
        let der = crate::pem_certs(root.cert_pem()).remove(0);
        assert_eq!(
            pem_encode_cert(der.as_ref()),
            root.cert_pem().replace("\r\n", "\n")
        );
    }
}
