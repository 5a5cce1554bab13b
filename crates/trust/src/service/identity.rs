//! The CA's own identity and its serving certificates (also lent to the control plane's xDS
//! server), re-issued at half their lifetime.

use std::sync::{Arc, Mutex};

use causeway_model::SpiffeId;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{read, CaService, ServiceError};

/// The SPIFFE ID the CA service presents. Reserved: no workload can obtain it.
pub fn ca_identity(trust_domain: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, "causeway-system", "causeway-ca")
}

/// The SPIFFE ID the control plane's xDS server presents (DNS name
/// [`CONTROL_PLANE_SERVER_NAME`]). Reserved like [`ca_identity`].
pub fn control_plane_identity(trust_domain: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, "causeway-system", "causeway-control-plane")
}

/// DNS name in the xDS server's certificate.
pub const CONTROL_PLANE_SERVER_NAME: &str = "causeway-control-plane";

impl CaService {
    /// A TLS certificate resolver presenting `identity` (DNS `dns`) from this CA, re-issued at
    /// half its lifetime: the control plane's other servers (xDS) use it.
    pub fn serving_resolver(
        self: &Arc<Self>,
        identity: SpiffeId,
        dns: &'static str,
    ) -> Result<Arc<dyn ResolvesServerCert>, ServiceError> {
        Ok(Arc::new(ServingCertResolver::new(
            Arc::clone(self),
            identity,
            dns,
        )?))
    }

    /// A certificate and key for one of the mesh's own servers (`identity`, DNS name `dns`),
    /// issued by the serving cluster's intermediate. The key is generated here and stays in
    /// memory.
    fn serving_cert(
        &self,
        identity: &SpiffeId,
        dns: &str,
    ) -> Result<(Arc<CertifiedKey>, i64), ServiceError> {
        let cas = read(&self.cas);
        let ca = match &self.config.serving_cluster {
            Some(c) => cas.get(c),
            None => cas.values().next(),
        }
        .ok_or(ServiceError::NoCa)?;
        let key = rcgen::KeyPair::generate().map_err(|e| ServiceError::Cert(e.to_string()))?;
        let issued = ca
            .sign_key(&key, identity, self.config.serving_ttl, &[dns])
            .map_err(|e| ServiceError::Cert(e.to_string()))?;
        let key_der = crate::verify::key_der(&key.serialize_pem())?;
        let signing_key = crate::provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| ServiceError::Cert(e.to_string()))?;
        let certified = CertifiedKey::new(crate::pem_certs(&issued.chain_pem), signing_key);
        let renew_at = issued.not_before + (issued.not_after - issued.not_before) / 2;
        tracing::info!(cluster = %ca.cluster(), %identity, not_after = issued.not_after, "serving certificate issued");
        Ok((Arc::new(certified), renew_at))
    }
}

/// Hands out a server's certificate, re-issuing it at half its lifetime.
pub(super) struct ServingCertResolver {
    service: Arc<CaService>,
    identity: SpiffeId,
    dns: &'static str,
    current: Mutex<(Arc<CertifiedKey>, i64)>,
}

impl std::fmt::Debug for ServingCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertResolver")
            .finish_non_exhaustive()
    }
}

impl ServingCertResolver {
    pub(super) fn new(
        service: Arc<CaService>,
        identity: SpiffeId,
        dns: &'static str,
    ) -> Result<Self, ServiceError> {
        let first = service.serving_cert(&identity, dns)?;
        Ok(Self {
            service,
            identity,
            dns,
            current: Mutex::new(first),
        })
    }
}

impl ResolvesServerCert for ServingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = match self.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if crate::now_unix() >= current.1 {
            match self.service.serving_cert(&self.identity, self.dns) {
                Ok(fresh) => *current = fresh,
                // Keep the old one: still valid for the second half of its life.
                Err(e) => {
                    tracing::error!(identity = %self.identity, error = %e, "cannot renew a serving certificate")
                }
            }
        }
        Some(Arc::clone(&current.0))
    }
}
