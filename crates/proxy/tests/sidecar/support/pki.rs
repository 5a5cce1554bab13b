//! A mesh root and workload certificates as PEM files; mTLS clients.

use super::*;

/// A mesh root (self-signed) and the directory its PEM files and its leaves' live in.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    pub root_pem: String,
    pub root_path: PathBuf,
}

/// A workload's certificate (one URI SAN, its SPIFFE ID), as files and as DER.
pub struct Identity {
    pub spiffe: String,
    pub chain_path: PathBuf,
    pub key_path: PathBuf,
    pub leaf: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = KeyPair::generate().expect("root key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, TD);
        dn.push(DnType::CommonName, "test mesh root");
        params.distinguished_name = dn;
        let root = params.self_signed(&key).expect("root");
        let root_pem = root.pem();
        let root_path = dir.path().join("root.pem");
        std::fs::write(&root_path, &root_pem).expect("write root");
        Pki {
            dir,
            issuer: Issuer::new(params, key),
            root_pem,
            root_path,
        }
    }

    /// A leaf for `spiffe://<TD>/ns/<ns>/sa/<sa>` signed by the root, written as
    /// `<ns>.<sa>.pem` / `.key`.
    pub fn identity(&self, ns: &str, sa: &str) -> Identity {
        let spiffe = format!("spiffe://{TD}/ns/{ns}/sa/{sa}");
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(spiffe.clone().try_into().expect("uri"))];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, TD);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let chain_path = self.dir.path().join(format!("{ns}.{sa}.pem"));
        let key_path = self.dir.path().join(format!("{ns}.{sa}.key"));
        std::fs::write(&chain_path, leaf.pem()).expect("write chain");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Identity {
            spiffe,
            chain_path,
            key_path,
            leaf: leaf.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    pub fn trusted_ca(&self) -> TrustedCaSource {
        TrustedCaSource::File {
            path: self.root_path.clone(),
        }
    }

    /// Upstream mTLS as the control plane emits it for an HTTP port: the cluster's SNI, the
    /// workload certificate, exactly `expected` as the server's SPIFFE ID, Istio's ALPN.
    pub fn upstream_tls(&self, me: &Identity, sni: &str, expected: &str) -> UpstreamTlsConfig {
        UpstreamTlsConfig {
            sni: sni.to_owned(),
            client_certificate: me.certificate(),
            trusted_ca: self.trusted_ca(),
            expected_sans: vec![SanMatch {
                kind: SanKind::Uri,
                matcher: StringMatch::Exact(expected.to_owned()),
            }],
            alpn: vec!["istio-peer-exchange".into(), "istio".into()],
            min_version: TlsVersion::Tls13,
            max_version: TlsVersion::Tls13,
        }
    }

    /// Inbound mTLS as the control plane emits it: a client certificate of the trust domain
    /// required; for HTTP Istio's ALPN list with `h2` and `http/1.1`.
    pub fn downstream_tls(&self, me: &Identity, http: bool) -> DownstreamTlsConfig {
        DownstreamTlsConfig {
            server_certificate: me.certificate(),
            trusted_ca: self.trusted_ca(),
            require_client_certificate: true,
            accepted_sans: vec![SanMatch {
                kind: SanKind::Uri,
                matcher: StringMatch::Prefix(format!("spiffe://{TD}/")),
            }],
            alpn: if http {
                ["istio-peer-exchange", "istio", "h2", "http/1.1"]
                    .map(String::from)
                    .to_vec()
            } else {
                Vec::new()
            },
            min_version: TlsVersion::Tls13,
            max_version: TlsVersion::Tls13,
        }
    }

    /// A TLS 1.3 client trusting this root (any SPIFFE ID of the trust domain), presenting
    /// `me` when given, offering `alpn`.
    pub fn client(&self, me: Option<&Identity>, alpn: &[&str]) -> tokio_rustls::TlsConnector {
        let verifier = SpiffeServerVerifier::new(&self.root_pem, TD, Vec::new()).expect("verifier");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match me {
            Some(id) => builder
                .with_client_auth_cert(
                    vec![id.leaf.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
                )
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Identity {
    pub fn certificate(&self) -> CertificateSource {
        CertificateSource::Files {
            chain_path: self.chain_path.clone(),
            key_path: self.key_path.clone(),
        }
    }

    /// Lowercase hex SHA-256 of the leaf's DER (XFCC's `Hash`).
    pub fn sha256_hex(&self) -> String {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.leaf.as_ref());
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Connects in TLS with `connector` to `addr`.
pub async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_when_listening(addr).await?;
    let name = ServerName::try_from("sidecar.mesh").map_err(std::io::Error::other)?;
    bounded(connector.connect(name, tcp)).await?
}
