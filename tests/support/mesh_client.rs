//! A client holding a genuine mesh certificate from a running mesh's CA, talking TLS straight
//! to a gateway with a chosen SNI: how the suites check that a gateway forwards only exported
//! services, whatever a caller with a valid certificate crafts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::MeshRun;

/// A certificate, its key and the mesh's roots, PEM.
pub struct MeshCert {
    pub chain: String,
    pub key: String,
    pub bundle: String,
}

/// A certificate for `demo/<sa>` in `cluster` from `mesh`'s CA (with that workload's token).
pub fn mesh_cert(mesh: &MeshRun, cluster: &str, sa: &str) -> MeshCert {
    let ca: SocketAddr = mesh.plan["ca"].as_str().expect("ca").parse().expect("addr");
    let bundle =
        std::fs::read_to_string(mesh.dir.path().join("run/ca/root/root-cert.pem")).expect("root");
    let token = std::fs::read_to_string(mesh.mesh_dir.join(format!("tokens/{cluster}/{sa}.token")))
        .expect("token");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let agent = causeway_trust::agent::Agent::new(causeway_trust::agent::AgentConfig {
        ca_addr: ca,
        ca_bundle_pem: bundle.clone(),
        trust_domain: "causeway.local".into(),
        token: token.trim().into(),
        cluster: None,
        identity: causeway_model::SpiffeId::new("causeway.local", "demo", sa),
        ttl: Duration::from_secs(600),
    });
    let cert = rt.block_on(agent.renew()).expect("certificate");
    MeshCert {
        chain: cert.chain_pem,
        key: cert.key_pem,
        bundle,
    }
}

/// A TLS connection to `gateway` with `sni`, presenting `cert`, one HTTP/1.1 GET: the raw
/// answer, which only comes when the gateway forwarded the connection to a sidecar.
pub fn tls_through(gateway: SocketAddr, sni: &str, cert: &MeshCert) -> Result<String, String> {
    let config = causeway_trust::verify::client_config(
        &cert.chain,
        &cert.key,
        &cert.bundle,
        "causeway.local",
        vec![],
    )
    .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut sock =
        TcpStream::connect_timeout(&gateway, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tls.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}
