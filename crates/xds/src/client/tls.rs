//! TLS configurations from the agent's credentials: the xDS client's (checking the control
//! plane's SPIFFE ID) and the mesh mTLS of a proxy's upstreams and inbound listeners.

use std::sync::Arc;

use base64::Engine as _;
use causeway_model::SpiffeId;
use causeway_trust::verify::{
    identity_of, SpiffeClientVerifier, SpiffeServerVerifier, VerifyError,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::CertificateDer;

use crate::bootstrap::CONTROL_PLANE_PATH;

use super::sds::{Credentials, SdsClientError};

pub(super) fn tls(e: rustls::Error) -> SdsClientError {
    SdsClientError::Tls(e.to_string())
}

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The roots as a PEM bundle, the form the trust crate's verifiers take.
fn roots_pem(roots: &[CertificateDer<'_>]) -> String {
    let mut pem = String::new();
    for root in roots {
        pem.push_str("-----BEGIN CERTIFICATE-----");
        let b64 = base64::engine::general_purpose::STANDARD.encode(root.as_ref());
        for (i, c) in b64.chars().enumerate() {
            if i % 64 == 0 {
                pem.push('\n');
            }
            pem.push(c);
        }
        pem.push_str("\n-----END CERTIFICATE-----\n");
    }
    pem
}

/// A certificate's single SPIFFE ID, in whatever trust domain. `identity_of` checks a trust
/// domain; asked for none (`""`, which no SPIFFE ID has) it reports the certificate's own.
pub(super) fn spiffe_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, VerifyError> {
    match identity_of(cert, "") {
        Ok(peer) => Ok(peer.spiffe),
        Err(VerifyError::WrongTrustDomain { found, .. }) => Ok(identity_of(cert, &found)?.spiffe),
        Err(e) => Err(e),
    }
}

/// The control plane's SPIFFE ID in `trust_domain` (the Envoy bootstrap's rule).
fn control_plane_id(trust_domain: &str) -> Result<SpiffeId, SdsClientError> {
    let uri = format!("spiffe://{trust_domain}{CONTROL_PLANE_PATH}");
    SpiffeId::parse(&uri).map_err(|_| SdsClientError::BadIdentity(uri))
}

fn client_config(
    creds: &Credentials,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, SdsClientError> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(tls)
}

/// TLS for the xDS connection: TLS 1.3, ALPN `h2`, our certificate, and a server chained to the
/// roots presenting exactly `spiffe://<td>` + [`CONTROL_PLANE_PATH`]. Without `trust_domain`,
/// the proxy's own (from its certificate): one mesh, one trust domain.
pub fn xds_client_tls(
    creds: &Credentials,
    trust_domain: Option<&str>,
) -> Result<rustls::ClientConfig, SdsClientError> {
    let td = match trust_domain {
        Some(td) => td.to_owned(),
        None => creds.identity()?.trust_domain,
    };
    let expected = vec![control_plane_id(&td)?];
    let verifier: Arc<dyn ServerCertVerifier> = Arc::new(SpiffeServerVerifier::new(
        &roots_pem(&creds.roots),
        &td,
        expected,
    )?);
    let mut config = client_config(creds, verifier)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// TLS 1.3 for a mesh upstream: our certificate, and a server chained to the roots presenting one
/// of `expected_spiffe_ids` (required, all of one trust domain). No ALPN is set.
pub fn mesh_client_tls(
    creds: &Credentials,
    expected_spiffe_ids: &[String],
) -> Result<rustls::ClientConfig, SdsClientError> {
    let expected = expected_spiffe_ids
        .iter()
        .map(|s| SpiffeId::parse(s).map_err(|_| SdsClientError::BadIdentity(s.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let refuse = |why: String| Err(SdsClientError::ExpectedIdentities(why));
    let Some(td) = expected.first().map(|id| id.trust_domain.clone()) else {
        return refuse("none given; refusing to accept any mesh server".into());
    };
    if let Some(other) = expected.iter().find(|id| id.trust_domain != td) {
        return refuse(format!("{other} is not in trust domain {td}"));
    }
    let verifier = SpiffeServerVerifier::new(&roots_pem(&creds.roots), &td, expected)?;
    client_config(creds, Arc::new(verifier))
}

/// TLS 1.3 for inbound mesh mTLS: presents our certificate and requires a client certificate
/// chained to the roots with a SPIFFE ID of our own trust domain. No ALPN is set.
pub fn mesh_server_tls(creds: &Credentials) -> Result<rustls::ServerConfig, SdsClientError> {
    let td = creds.identity()?.trust_domain;
    let verifier = SpiffeClientVerifier::new(&roots_pem(&creds.roots), &td, Vec::new())?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(tls)
}
