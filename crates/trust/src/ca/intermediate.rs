//! Cluster intermediates: `causeway ca issue-intermediate`, their `cacerts` files, and the
//! name constraints that confine each to its cluster's DNS SAN.

use std::path::{Path, PathBuf};
use std::time::Duration;

use causeway_model::ClusterId;
use rcgen::{GeneralSubtree, NameConstraints};

use super::{create_private_dir, files, write_new, CaError, RootCa, DEFAULT_INTERMEDIATE_VALIDITY};

/// Settings of `causeway ca issue-intermediate --cluster C`.
#[derive(Debug, Clone)]
pub struct IntermediateConfig {
    /// Directory holding the root (`root-cert.pem`, `root-key.pem`), e.g. from
    /// [`init_root`](super::init_root).
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
pub(super) fn permitted_dns(dns: &str, san: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
