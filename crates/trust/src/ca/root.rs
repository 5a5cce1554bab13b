//! The mesh root: `causeway ca init`, loading a root directory, and signing intermediates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use causeway_model::ClusterId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

use super::{
    ca_cert_info, cert_err, cluster_name_constraints, create_private_dir, files, invalid,
    pem_encode_cert, read_file, write_new, CaError, ClusterCaFiles, DEFAULT_ROOT_VALIDITY,
};
use crate::issue;

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
    pub(super) fn signed(&self, cert_pem: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{
        issue_intermediate, ClusterCa, IntermediateConfig, DEFAULT_INTERMEDIATE_VALIDITY,
    };
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
}
