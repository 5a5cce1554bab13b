//! Real mesh certificates for the static bootstraps: a root of the example mesh's trust domain,
//! one name-constrained intermediate per cluster, and a leaf per proxy issued the regular way
//! (a CSR signed by the cluster CA), so each leaf carries exactly one URI SAN,
//! `spiffe://causeway.local/ns/<ns>/sa/<sa>`, and chains to the root, as the mesh verifiers of
//! both data planes require.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use causeway_model::{ClusterId, SpiffeId};
use causeway_trust::ca::{ClusterCa, RootCa};
use causeway_trust::issue::{parse_csr, WorkloadKey};
use causeway_xds::bootstrap::CertificateFiles;

/// The example mesh's trust domain (examples/three-clusters/mesh.yaml).
pub const TRUST_DOMAIN: &str = "causeway.local";
const YEAR: Duration = Duration::from_secs(365 * 86_400);
/// Long enough for any run of the bench.
const LEAF_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct Pki {
    bundle_pem: String,
    cas: BTreeMap<String, ClusterCa>,
}

impl Pki {
    /// A new root and an intermediate for each of `clusters`.
    pub fn new(clusters: &[&str]) -> anyhow::Result<Self> {
        let root = RootCa::generate(TRUST_DOMAIN, YEAR).context("generating the mesh root")?;
        let mut cas = BTreeMap::new();
        for name in clusters {
            let id = ClusterId::new(*name).with_context(|| format!("cluster id {name}"))?;
            let files = root
                .issue_intermediate(&id, TRUST_DOMAIN, YEAR)
                .with_context(|| format!("intermediate of {name}"))?;
            let ca = ClusterCa::from_files(&files, id, TRUST_DOMAIN)
                .with_context(|| format!("cluster CA of {name}"))?;
            cas.insert((*name).to_owned(), ca);
        }
        Ok(Pki {
            bundle_pem: root.bundle_pem().to_owned(),
            cas,
        })
    }

    /// Issues `spiffe://<td>/ns/<namespace>/sa/<account>` from `cluster`'s CA and writes the
    /// chain, the key and the trust bundle as `dir/<name>-{chain,key,root}.pem`.
    pub fn write_leaf(
        &self,
        dir: &Path,
        name: &str,
        cluster: &str,
        namespace: &str,
        account: &str,
    ) -> anyhow::Result<CertificateFiles> {
        let ca = self
            .cas
            .get(cluster)
            .with_context(|| format!("no CA for cluster {cluster}"))?;
        let id = SpiffeId::new(TRUST_DOMAIN, namespace, account);
        let key = WorkloadKey::generate().context("workload key")?;
        let csr = parse_csr(&key.csr_pem(&id).context("CSR")?).context("parsing the CSR")?;
        let cert = ca
            .sign(&csr, LEAF_TTL)
            .with_context(|| format!("issuing {id}"))?;
        let files = CertificateFiles {
            certificate_chain: dir.join(format!("{name}-chain.pem")),
            private_key: dir.join(format!("{name}-key.pem")),
            trusted_ca: dir.join(format!("{name}-root.pem")),
        };
        for (path, text) in [
            (&files.certificate_chain, cert.chain_pem.as_str()),
            (&files.private_key, key.private_key_pem().as_str()),
            (&files.trusted_ca, self.bundle_pem.as_str()),
        ] {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(files)
    }
}
