//! Mesh certificates for the simulated proxies: the CA directory the control plane serves
//! from is created here first, so each proxy gets a leaf from its cluster's intermediate, as
//! its agent would.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use causeway_model::{ClusterId, SpiffeId};
use causeway_trust::ca::{self, ClusterCa};
use causeway_trust::issue::{parse_csr, WorkloadKey};
use causeway_xds::client::sds::Credentials;

use super::mesh::TRUST_DOMAIN;

/// Every cluster's intermediate.
pub struct Pki {
    cas: Vec<ClusterCa>,
}

impl Pki {
    /// Creates the CA directory (a root and one intermediate per cluster) and loads it.
    pub fn create(dir: &Path, clusters: &[ClusterId]) -> anyhow::Result<Self> {
        ca::ensure_ca_dir(dir, TRUST_DOMAIN, clusters)?;
        let cas = clusters
            .iter()
            .map(|c| {
                let cdir = ca::find_cluster_dir(dir, c).context("no intermediate written")?;
                Ok(ClusterCa::load(&cdir, c.clone(), TRUST_DOMAIN)?)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { cas })
    }

    /// The xDS client TLS of `namespace`/`account` in cluster number `cluster`.
    pub fn client_tls(
        &self,
        cluster: usize,
        namespace: &str,
        account: &str,
    ) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let ca = &self.cas[cluster];
        let key = WorkloadKey::generate()?;
        let csr = key.csr_pem(&SpiffeId::new(TRUST_DOMAIN, namespace, account))?;
        let issued = ca.sign(&parse_csr(&csr)?, Duration::from_secs(6 * 3600))?;
        let creds = Credentials::from_pem(
            &issued.chain_pem,
            &key.private_key_pem(),
            ca.trust_bundle_pem(),
            "bench",
        )?;
        Ok(Arc::new(causeway_xds::client::sds::xds_client_tls(
            &creds,
            Some(TRUST_DOMAIN),
        )?))
    }
}
