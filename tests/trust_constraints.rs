//! Cluster-scoped intermediates, as a real Envoy sees them: a leaf forged with cluster alpha's
//! intermediate key but naming beta's cluster SAN is refused in the TLS handshake by an Envoy
//! that validates client certificates against the mesh root, both where any mesh peer is
//! allowed and where only beta's callers are (RBAC on the cluster SAN, as the xDS builder emits
//! it). Legitimate leaves of alpha and beta pass; the same forgery through an unconstrained
//! intermediate (as earlier versions issued) would have passed as beta.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use causeway_e2e::*;
use causeway_model::{ClusterId, SpiffeId};
use causeway_trust::ca::{files, ClusterCa, ClusterCaFiles, RootCa};
use causeway_trust::issue::{parse_csr, WorkloadKey};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

const TD: &str = "mesh.test";
const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).expect("cluster id")
}

/// A client credential: the chain (leaf first) and the leaf's key, PEM.
struct Credential {
    chain_pem: String,
    key_pem: String,
}

/// A leaf issued the regular way, by the cluster CA from a CSR.
fn issued(ca: &ClusterCa, sa: &str) -> Credential {
    let key = WorkloadKey::generate().expect("key");
    let csr = key.csr_pem(&SpiffeId::new(TD, "shop", sa)).expect("csr");
    let cert = ca
        .sign(&parse_csr(&csr).expect("csr"), Duration::from_secs(3600))
        .expect("sign");
    Credential {
        chain_pem: cert.chain_pem,
        key_pem: key.private_key_pem(),
    }
}

/// A leaf signed directly with an intermediate's key, naming `dns` as its cluster SAN; the
/// chain carries that intermediate, as the forger would send it.
fn forged(intermediate: &ClusterCaFiles, dns: &str) -> Credential {
    let key = KeyPair::from_pem(&intermediate.ca_key_pem).expect("intermediate key");
    let issuer = Issuer::from_ca_cert_pem(&intermediate.ca_cert_pem, key).expect("issuer");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(
            SpiffeId::new(TD, "shop", "frontend")
                .to_string()
                .try_into()
                .expect("uri"),
        ),
        SanType::DnsName(dns.to_owned().try_into().expect("dns")),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::hours(1);
    params.use_authority_key_identifier_extension = true;
    let leaf = params.signed_by(&leaf_key, &issuer).expect("sign leaf");
    Credential {
        chain_pem: format!("{}{}", leaf.pem(), intermediate.ca_cert_pem),
        key_pem: leaf_key.serialize_pem(),
    }
}

/// An intermediate without name constraints, signed by the root (earlier versions').
fn unconstrained_intermediate(root: &RootCa, root_key: &KeyPair, cluster: &str) -> ClusterCaFiles {
    let issuer = Issuer::from_ca_cert_pem(root.cert_pem(), root_key).expect("root issuer");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, TD);
    dn.push(DnType::CommonName, format!("old intermediate of {cluster}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(30);
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).expect("sign");
    ClusterCaFiles {
        cert_chain_pem: format!("{}{}", cert.pem(), root.cert_pem()),
        ca_cert_pem: cert.pem(),
        ca_key_pem: key.serialize_pem(),
        root_cert_pem: root.bundle_pem().to_owned(),
    }
}

/// What became of a request over mTLS.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Envoy answered 200.
    Answered,
    /// Envoy refused the client certificate: a fatal TLS alert.
    CertificateRefused(String),
    /// The handshake passed but the connection was closed without an answer (RBAC).
    Closed,
}

fn request(addr: SocketAddr, client: &Credential, bundle_pem: &str) -> Outcome {
    let config = causeway_trust::verify::client_config(
        &client.chain_pem,
        &client.key_pem,
        bundle_pem,
        TD,
        Vec::new(),
    )
    .expect("client config");
    let name = rustls::pki_types::ServerName::try_from("server").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("connection");
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // TLS 1.3: the client's handshake ends before the server judges its certificate, so the
    // verdict arrives with the first read.
    let written = tls.write_all(b"GET / HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n");
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

fn tls_listener(name: &str, port: u16, dir: &Path, rbac_cluster_san: Option<&str>) -> String {
    let rbac = rbac_cluster_san.map_or_else(String::new, |san| {
        format!(
            r#"
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: {name}_rbac
          rules:
            action: ALLOW
            policies:
              callers-of-the-cluster:
                permissions: [{{ any: true }}]
                principals:
                - custom:
                    name: envoy.rbac.principals.mtls_authenticated
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.rbac.principals.mtls_authenticated.v3.Config
                      san_matcher:
                        san_type: DNS
                        matcher: {{ exact: "{san}" }}"#
        )
    });
    let d = dir.display();
    format!(
        r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: "{d}/server-chain.pem" }}
              private_key: {{ filename: "{d}/server-key.pem" }}
            validation_context:
              trusted_ca: {{ filename: "{d}/{root}" }}
      filters:{rbac}
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}"#,
        root = files::ROOT_CERT,
    )
}

/// `listener.<addr>.ssl.fail_verify_error` of Envoy's listener on `port`.
fn fail_verify_errors(admin: SocketAddr, port: u16) -> u64 {
    let stat = format!("listener.127.0.0.1_{port}.ssl.fail_verify_error");
    let (status, body) = http_get(admin, &format!("/stats?filter=^{stat}$")).expect("stats");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{stat}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {stat} in {body:?}"))
}

#[test]
fn envoy_refuses_a_leaf_forged_with_another_clusters_intermediate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let root = RootCa::generate(TD, YEAR).expect("root");
    root.write(&dir.join("root")).expect("write root");
    let root_key = KeyPair::from_pem(
        &std::fs::read_to_string(dir.join("root").join(files::ROOT_KEY)).expect("root key"),
    )
    .expect("parse root key");
    let (alpha, beta) = (cid("alpha"), cid("beta"));
    let alpha_files = root.issue_intermediate(&alpha, TD, YEAR).expect("alpha");
    let alpha_ca = ClusterCa::from_files(&alpha_files, alpha.clone(), TD).expect("alpha CA");
    let beta_ca = ClusterCa::from_files(
        &root.issue_intermediate(&beta, TD, YEAR).expect("beta"),
        beta.clone(),
        TD,
    )
    .expect("beta CA");
    assert!(alpha_ca.is_name_constrained() && beta_ca.is_name_constrained());
    let beta_san = beta.certificate_san(TD);

    // Envoy serves as a workload of beta.
    let server = issued(&beta_ca, "server");
    std::fs::write(dir.join("server-chain.pem"), &server.chain_pem).expect("write");
    std::fs::write(dir.join("server-key.pem"), &server.key_pem).expect("write");
    std::fs::write(dir.join(files::ROOT_CERT), root.bundle_pem()).expect("write");
    let (admin_port, any_port, beta_port) = (free_port(), free_port(), free_port());
    let config = format!(
        "admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}\nstatic_resources:\n  listeners:{}{}\n",
        tls_listener("any_mesh_peer", any_port, dir, None),
        tls_listener("callers_of_beta", beta_port, dir, Some(&beta_san)),
    );
    std::fs::write(dir.join("envoy.yaml"), &config).expect("write config");
    let envoy = envoy_bin();
    let mut proc = Process::start_program(
        envoy.to_str().expect("utf-8"),
        &[
            "-c",
            dir.join("envoy.yaml").to_str().expect("utf-8"),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "info",
            // Certificate verification errors are logged at debug.
            "--component-log-level",
            "connection:debug",
        ],
        &dir.join("envoy.log"),
    );
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let ready = wait_for(Duration::from_secs(30), || {
        assert!(proc.is_running(), "Envoy exited:\n{}", proc.log_text());
        matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
    assert!(ready.is_some(), "Envoy not ready:\n{}", proc.log_text());
    let any: SocketAddr = ([127, 0, 0, 1], any_port).into();
    let callers_of_beta: SocketAddr = ([127, 0, 0, 1], beta_port).into();
    let bundle = root.bundle_pem();

    // Legitimate leaves: alpha's passes where any mesh peer may call; beta's also where only
    // beta's callers may; alpha's is kept out there by RBAC, after a valid handshake.
    let alpha_leaf = issued(&alpha_ca, "frontend");
    let beta_leaf = issued(&beta_ca, "frontend");
    assert_eq!(request(any, &alpha_leaf, bundle), Outcome::Answered);
    assert_eq!(
        request(callers_of_beta, &beta_leaf, bundle),
        Outcome::Answered
    );
    assert_eq!(
        request(callers_of_beta, &alpha_leaf, bundle),
        Outcome::Closed
    );
    assert_eq!(fail_verify_errors(admin, any_port), 0);
    assert_eq!(fail_verify_errors(admin, beta_port), 0);

    // Alpha's intermediate key minting beta's cluster SAN: the chain fails to verify, on both
    // listeners, before any filter runs.
    let forgery = forged(&alpha_files, &beta_san);
    for (addr, port) in [(any, any_port), (callers_of_beta, beta_port)] {
        match request(addr, &forgery, bundle) {
            Outcome::CertificateRefused(_) => {}
            other => panic!("forged leaf on {addr}: {other:?}\n{}", proc.log_text()),
        }
        assert_eq!(
            fail_verify_errors(admin, port),
            1,
            "refused by chain verification"
        );
    }
    // BoringSSL names the reason: the leaf's DNS SAN is outside alpha's permitted subtree.
    let violations = wait_for(Duration::from_secs(10), || {
        let n = proc
            .log_text()
            .matches("permitted subtree violation")
            .count();
        (n >= 2).then_some(n)
    });
    assert!(violations.is_some(), "{}", proc.log_text());
    // The same forgery made with alpha's own SAN is fine: the refusal is the name constraint.
    assert_eq!(
        request(
            any,
            &forged(&alpha_files, &alpha.certificate_san(TD)),
            bundle
        ),
        Outcome::Answered
    );

    // What the constraints prevent: through an unconstrained intermediate of the same root the
    // forgery would pass beta's caller-cluster check.
    let old_alpha = unconstrained_intermediate(&root, &root_key, "alpha");
    assert_eq!(
        request(callers_of_beta, &forged(&old_alpha, &beta_san), bundle),
        Outcome::Answered
    );
    assert!(proc.is_running(), "{}", proc.log_text());
}
