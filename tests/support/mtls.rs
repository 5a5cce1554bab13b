//! Mesh certificates made for a test (a root, cluster intermediates, issued and hand-made
//! leaves) and TLS clients that present them to a real Envoy: shared by the suites that put
//! Envoy's mTLS listeners to the test (`trust_constraints`, `inbound_refusals`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use causeway_model::{ClusterId, SpiffeId};
use causeway_trust::ca::{files, ClusterCa, ClusterCaFiles, RootCa};
use causeway_trust::issue::{parse_csr, WorkloadKey};
use causeway_trust::verify::SpiffeServerVerifier;
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// The trust domain of the test meshes.
pub const TD: &str = "mesh.test";
/// Validity of test roots and intermediates.
pub const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// A cluster id.
pub fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).expect("cluster id")
}

/// A mesh root with its key (to sign other intermediates than the CA's own).
pub struct Pki {
    /// The root.
    pub root: RootCa,
    /// Its private key.
    pub root_key: KeyPair,
}

impl Pki {
    /// A new root of [`TD`], written to `dir` (the key is read back from there).
    pub fn generate(dir: &Path) -> Self {
        let root = RootCa::generate(TD, YEAR).expect("root");
        root.write(dir).expect("write root");
        let root_key = KeyPair::from_pem(
            &std::fs::read_to_string(dir.join(files::ROOT_KEY)).expect("root key"),
        )
        .expect("parse root key");
        Self { root, root_key }
    }

    /// The trust bundle (PEM).
    pub fn bundle_pem(&self) -> &str {
        self.root.bundle_pem()
    }

    /// Cluster `id`'s (name-constrained) intermediate: its files and the CA over them.
    pub fn cluster(&self, id: &str) -> (ClusterCaFiles, ClusterCa) {
        let files = self
            .root
            .issue_intermediate(&cid(id), TD, YEAR)
            .expect("intermediate");
        let ca = ClusterCa::from_files(&files, cid(id), TD).expect("cluster CA");
        (files, ca)
    }
}

/// A client credential: the chain (leaf first) and the leaf's key, PEM.
pub struct Credential {
    /// Leaf first, then the intermediate.
    pub chain_pem: String,
    /// The leaf's key.
    pub key_pem: String,
}

/// `spiffe://<TD>/ns/shop/sa/<sa>`.
pub fn shop_id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "shop", sa)
}

/// A leaf for `shop/<sa>` issued the regular way, by the cluster CA from a CSR (1 h).
pub fn issued(ca: &ClusterCa, sa: &str) -> Credential {
    let key = WorkloadKey::generate().expect("key");
    let csr = key.csr_pem(&shop_id(sa)).expect("csr");
    let cert = ca
        .sign(&parse_csr(&csr).expect("csr"), Duration::from_secs(3600))
        .expect("sign");
    Credential {
        chain_pem: cert.chain_pem,
        key_pem: key.private_key_pem(),
    }
}

/// A leaf for `shop/frontend` signed directly with an intermediate's key, naming `dns` as its
/// cluster SAN and valid from `not_before` to `not_after`; the chain carries that intermediate,
/// as a client would send it. Otherwise shaped like an issued leaf (key and extended key
/// usages, authority key id).
pub fn signed_with(
    intermediate: &ClusterCaFiles,
    dns: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Credential {
    let key = KeyPair::from_pem(&intermediate.ca_key_pem).expect("intermediate key");
    let issuer = Issuer::from_ca_cert_pem(&intermediate.ca_cert_pem, key).expect("issuer");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(shop_id("frontend").to_string().try_into().expect("uri")),
        SanType::DnsName(dns.to_owned().try_into().expect("dns")),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    let leaf = params.signed_by(&leaf_key, &issuer).expect("sign leaf");
    Credential {
        chain_pem: format!("{}{}", leaf.pem(), intermediate.ca_cert_pem),
        key_pem: leaf_key.serialize_pem(),
    }
}

/// [`signed_with`], valid for the next hour.
pub fn forged(intermediate: &ClusterCaFiles, dns: &str) -> Credential {
    let now = OffsetDateTime::now_utc();
    signed_with(
        intermediate,
        dns,
        now - time::Duration::minutes(5),
        now + time::Duration::hours(1),
    )
}

/// Writes the files the suites' Envoy listeners read, in `dir`: `server-chain.pem`,
/// `server-key.pem` (Envoy's own certificate) and the trust bundle as `root-cert.pem`.
pub fn write_server_files(dir: &Path, server: &Credential, bundle_pem: &str) {
    std::fs::write(dir.join("server-chain.pem"), &server.chain_pem).expect("write");
    std::fs::write(dir.join("server-key.pem"), &server.key_pem).expect("write");
    std::fs::write(dir.join(files::ROOT_CERT), bundle_pem).expect("write");
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A mesh client presenting `client` (TLS 1.3) and checking Envoy's certificate against
/// `bundle_pem` (any SPIFFE ID of the trust domain).
pub fn mesh_client(client: &Credential, bundle_pem: &str) -> Arc<rustls::ClientConfig> {
    Arc::new(
        causeway_trust::verify::client_config(
            &client.chain_pem,
            &client.key_pem,
            bundle_pem,
            TD,
            Vec::new(),
        )
        .expect("client config"),
    )
}

/// A TLS 1.3 client that checks Envoy's certificate like [`mesh_client`] but has no
/// certificate of its own to present.
pub fn client_without_certificate(bundle_pem: &str) -> Arc<rustls::ClientConfig> {
    let verifier = SpiffeServerVerifier::new(bundle_pem, TD, Vec::new()).expect("verifier");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
    )
}

/// What became of a request over TLS.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 200.
    Answered,
    /// Envoy refused the client (certificate): a fatal TLS alert, by name.
    CertificateRefused(String),
    /// The handshake passed but the connection was closed without an answer (RBAC).
    Closed,
}

/// Opens a TLS connection to `addr` as `config` (SNI `server`), sends one `GET path`
/// (`Connection: close`) and reports what came of it. Bounded by 2 s to connect and 5 s reads.
pub fn get(addr: SocketAddr, config: Arc<rustls::ClientConfig>, path: &str) -> Outcome {
    let name = rustls::pki_types::ServerName::try_from("server").expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("connection");
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // TLS 1.3: the client's handshake ends before the server judges its certificate, so the
    // verdict arrives with the first read.
    let written = tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut answer = Vec::new();
    let read = written.and_then(|()| tls.read_to_end(&mut answer));
    match read {
        Ok(_) if answer.starts_with(b"HTTP/1.1 200") => Outcome::Answered,
        Ok(_) if answer.is_empty() => Outcome::Closed,
        Ok(_) => panic!("unexpected answer: {}", String::from_utf8_lossy(&answer)),
        Err(e) => match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::AlertReceived(alert)) => {
                Outcome::CertificateRefused(format!("{alert:?}"))
            }
            _ if answer.is_empty()
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                Outcome::Closed
            }
            _ => panic!("unexpected error: {e}"),
        },
    }
}

/// [`get`] `/` as a mesh client presenting `client`.
pub fn request(addr: SocketAddr, client: &Credential, bundle_pem: &str) -> Outcome {
    get(addr, mesh_client(client, bundle_pem), "/")
}

/// A TLS connection kept open for several HTTP/1.1 requests (keep-alive).
pub struct KeptConnection {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl KeptConnection {
    /// Connects to `addr` as `config` (2 s to connect, 5 s reads).
    pub fn open(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Self {
        let name = rustls::pki_types::ServerName::try_from("server").expect("name");
        let conn = rustls::ClientConnection::new(config, name).expect("connection");
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Self {
            tls: rustls::StreamOwned::new(conn, tcp),
        }
    }

    /// `GET path` on this connection; returns (status, body). The answer must carry a
    /// `Content-Length` (at most 64 KiB).
    pub fn get(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        self.tls
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: server\r\n\r\n").as_bytes())?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if raw.len() > 65_536 {
                return Err(std::io::Error::other("answer head too long"));
            }
            match self.tls.read(&mut buf)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => raw.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no content-length in {head:?}")))?;
        if length > 65_536 {
            return Err(std::io::Error::other("answer body too long"));
        }
        while raw.len() < head_end + length {
            match self.tls.read(&mut buf)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => raw.extend_from_slice(&buf[..n]),
            }
        }
        let body = String::from_utf8_lossy(&raw[head_end..head_end + length]).into_owned();
        Ok((status, body))
    }
}
