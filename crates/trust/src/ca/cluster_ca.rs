//! A cluster's issuing CA: loading and self-checking its `cacerts`, and signing workloads.

use std::path::Path;
use std::time::Duration;

use causeway_model::{ClusterId, SpiffeId};
use rcgen::{Issuer, KeyPair};
use time::OffsetDateTime;

use super::intermediate::permitted_dns;
use super::{
    ca_cert_info, cert_err, chain_is_cluster_constrained, cluster_san, files, invalid, io,
    pem_encode_cert, read_file, CaCertInfo, CaError, ClusterCaFiles, IssuedCert,
};
use crate::issue::{self, CsrRequest, IssueError, LeafProfile};

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
    /// cluster's name constraints ([`cluster_name_constraints`](super::cluster_name_constraints),
    /// missing in intermediates issued before they existed) loads with a warning: its key could
    /// mint other clusters' SANs; [`ensure_ca_dir`](super::ensure_ca_dir) replaces it when it
    /// holds the root.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{
        RootCa, DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_ROOT_VALIDITY, SERVER_DNS_NAMES,
    };

    const TD: &str = "mesh.test";

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
}
