//! Mesh mTLS on the proxy's two sides: rustls client configurations per upstream cluster and
//! server configurations per inbound filter chain, built from the validated TLS contexts and
//! the current credentials, cached per worker until the snapshot or the certificate changes.
//!
//! ALPN: towards an HTTP upstream the proxy offers `h2` before the protocols the control plane
//! configured (Istio's `istio-peer-exchange`, `istio`), and an inbound HTTP chain prefers `h2`
//! when it is configured. An Envoy server picks by its own list (the Istio names first), so
//! Causeway speaks HTTP/1.1 to Envoy peers and HTTP/2 to Causeway peers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use causeway_trust::verify::{certificate_names, CertificateNames};
use causeway_xds::client::sds::{mesh_client_tls, mesh_server_tls, Credentials, SdsClientError};
use causeway_xds::dataplane::tls::{DownstreamTlsConfig, SanKind, SanMatch, UpstreamTlsConfig};
use rustls::pki_types::CertificateDer;

use crate::credentials::{CredentialsError, MeshCredentials};

#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("building the TLS configuration: {0}")]
    Build(String),
}

impl From<SdsClientError> for TlsError {
    fn from(e: SdsClientError) -> Self {
        TlsError::Build(e.to_string())
    }
}

/// What a cached configuration was built from: a new snapshot or certificate rebuilds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Built {
    generation: u64,
    credentials: String,
}

type ClientKey = (String, bool);

/// One worker's TLS configurations (no lock: the worker owns it).
#[derive(Default)]
pub struct TlsCache {
    clients: RefCell<HashMap<ClientKey, (Built, Arc<rustls::ClientConfig>)>>,
    servers: RefCell<HashMap<String, (Built, Arc<rustls::ServerConfig>)>>,
}

impl TlsCache {
    /// The client configuration for `cluster`'s upstream TLS; `http` offers `h2` first.
    pub fn client(
        &self,
        credentials: &MeshCredentials,
        generation: u64,
        cluster: &str,
        cfg: &UpstreamTlsConfig,
        http: bool,
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let built = Built {
            generation,
            credentials: credentials.version(),
        };
        let key = (cluster.to_owned(), http);
        if let Some((b, c)) = self.clients.borrow().get(&key) {
            if *b == built {
                return Ok(Arc::clone(c));
            }
        }
        let creds = credentials.resolve(&cfg.client_certificate, &cfg.trusted_ca)?;
        let config = Arc::new(client_config(&creds, cfg, http)?);
        self.clients
            .borrow_mut()
            .insert(key, (built, Arc::clone(&config)));
        Ok(config)
    }

    /// The server configuration of an inbound chain (`key`: listener and chain name).
    pub fn server(
        &self,
        credentials: &MeshCredentials,
        generation: u64,
        key: &str,
        cfg: &DownstreamTlsConfig,
        http: bool,
    ) -> Result<(Arc<rustls::ServerConfig>, Arc<Credentials>), TlsError> {
        let built = Built {
            generation,
            credentials: credentials.version(),
        };
        let creds = credentials.resolve(&cfg.server_certificate, &cfg.trusted_ca)?;
        if let Some((b, c)) = self.servers.borrow().get(key) {
            if *b == built {
                return Ok((Arc::clone(c), creds));
            }
        }
        let config = Arc::new(server_config(&creds, cfg, http)?);
        self.servers
            .borrow_mut()
            .insert(key.to_owned(), (built, Arc::clone(&config)));
        Ok((config, creds))
    }
}

fn client_config(
    creds: &Credentials,
    cfg: &UpstreamTlsConfig,
    http: bool,
) -> Result<rustls::ClientConfig, TlsError> {
    // The conversion guarantees exact URI SANs (SPIFFE IDs): nothing wider is ever accepted.
    let expected: Vec<String> = cfg
        .expected_sans
        .iter()
        .map(|m| match &m.matcher {
            causeway_xds::dataplane::tls::StringMatch::Exact(s) => Ok(s.clone()),
            other => Err(TlsError::Build(format!(
                "upstream SAN matcher {other:?} is not an exact SPIFFE ID"
            ))),
        })
        .collect::<Result<_, _>>()?;
    let mut config = mesh_client_tls(creds, &expected)?;
    config.alpn_protocols = alpn(http, &cfg.alpn);
    Ok(config)
}

fn server_config(
    creds: &Credentials,
    cfg: &DownstreamTlsConfig,
    http: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    if !cfg.require_client_certificate {
        return Err(TlsError::Build(
            "inbound mesh TLS without a required client certificate is not supported".into(),
        ));
    }
    let mut config = mesh_server_tls(creds)?;
    config.alpn_protocols = alpn(http && cfg.alpn.iter().any(|p| p == "h2"), &cfg.alpn);
    Ok(config)
}

/// `configured`, with `h2` moved to the front when `h2_first`.
fn alpn(h2_first: bool, configured: &[String]) -> Vec<Vec<u8>> {
    let mut alpn: Vec<Vec<u8>> = Vec::new();
    if h2_first {
        alpn.push(b"h2".to_vec());
    }
    for p in configured {
        if !alpn.iter().any(|a| a == p.as_bytes()) {
            alpn.push(p.as_bytes().to_vec());
        }
    }
    alpn
}

/// The verified caller of an inbound connection.
#[derive(Debug, Clone)]
pub struct Caller {
    pub names: CertificateNames,
    /// The leaf, DER (XFCC's `Hash`, `Cert`).
    pub leaf: CertificateDer<'static>,
    /// The whole chain, leaf first (XFCC's `Chain`).
    pub chain: Vec<CertificateDer<'static>>,
}

/// The caller of a server connection after its handshake, checked against the chain's accepted
/// SANs (the roots and the trust domain were checked by the verifier during the handshake).
pub fn caller_of(conn: &rustls::ServerConnection, accepted: &[SanMatch]) -> Result<Caller, String> {
    let chain: Vec<CertificateDer<'static>> = conn
        .peer_certificates()
        .ok_or("the caller presented no certificate")?
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    let leaf = chain
        .first()
        .ok_or("the caller presented no certificate")?
        .clone();
    let names = certificate_names(&leaf).map_err(|e| e.to_string())?;
    let ok = accepted.is_empty()
        || accepted.iter().any(|m| {
            let list = match m.kind {
                SanKind::Uri => &names.uri_sans,
                SanKind::Dns => &names.dns_sans,
            };
            list.iter().any(|v| m.matcher.matches(v))
        });
    if !ok {
        return Err(format!(
            "the caller's certificate ({:?}) matches none of the accepted SANs",
            names.uri_sans
        ));
    }
    Ok(Caller { names, leaf, chain })
}
