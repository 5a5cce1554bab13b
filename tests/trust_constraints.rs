//! Cluster-scoped intermediates, as a real Envoy sees them: a leaf forged with cluster alpha's
//! intermediate key but naming beta's cluster SAN is refused in the TLS handshake by an Envoy
//! that validates client certificates against the mesh root, both where any mesh peer is
//! allowed and where only beta's callers are (RBAC on the cluster SAN, as the xDS builder emits
//! it). Legitimate leaves of alpha and beta pass; the same forgery through an unconstrained
//! intermediate (as earlier versions issued) would have passed as beta.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use causeway_e2e::envoy::Envoy;
use causeway_e2e::mtls::{cid, forged, issued, request, write_server_files, Outcome, Pki, TD};
use causeway_e2e::{free_port, wait_for};
use causeway_trust::ca::{files, ClusterCaFiles, RootCa};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

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
fn fail_verify_errors(envoy: &Envoy, port: u16) -> u64 {
    envoy.stat(&format!("listener.127.0.0.1_{port}.ssl.fail_verify_error"))
}

#[test]
fn envoy_refuses_a_leaf_forged_with_another_clusters_intermediate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let pki = Pki::generate(&dir.join("root"));
    let (alpha, beta) = (cid("alpha"), cid("beta"));
    let (alpha_files, alpha_ca) = pki.cluster("alpha");
    let (_, beta_ca) = pki.cluster("beta");
    assert!(alpha_ca.is_name_constrained() && beta_ca.is_name_constrained());
    let beta_san = beta.certificate_san(TD);

    // Envoy serves as a workload of beta.
    let server = issued(&beta_ca, "server");
    write_server_files(dir, &server, pki.bundle_pem());
    let (any_port, beta_port) = (free_port(), free_port());
    let mut envoy = Envoy::start(
        dir,
        &format!(
            "\n  listeners:{}{}",
            tls_listener("any_mesh_peer", any_port, dir, None),
            tls_listener("callers_of_beta", beta_port, dir, Some(&beta_san)),
        ),
    );
    let any: SocketAddr = ([127, 0, 0, 1], any_port).into();
    let callers_of_beta: SocketAddr = ([127, 0, 0, 1], beta_port).into();
    let bundle = pki.bundle_pem();

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
    assert_eq!(fail_verify_errors(&envoy, any_port), 0);
    assert_eq!(fail_verify_errors(&envoy, beta_port), 0);

    // Alpha's intermediate key minting beta's cluster SAN: the chain fails to verify, on both
    // listeners, before any filter runs.
    let forgery = forged(&alpha_files, &beta_san);
    for (addr, port) in [(any, any_port), (callers_of_beta, beta_port)] {
        match request(addr, &forgery, bundle) {
            Outcome::CertificateRefused(_) => {}
            other => panic!("forged leaf on {addr}: {other:?}\n{}", envoy.log_text()),
        }
        assert_eq!(
            fail_verify_errors(&envoy, port),
            1,
            "refused by chain verification"
        );
    }
    // BoringSSL names the reason: the leaf's DNS SAN is outside alpha's permitted subtree.
    let violations = wait_for(Duration::from_secs(10), || {
        let n = envoy
            .log_text()
            .matches("permitted subtree violation")
            .count();
        (n >= 2).then_some(n)
    });
    assert!(violations.is_some(), "{}", envoy.log_text());
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
    let old_alpha = unconstrained_intermediate(&pki.root, &pki.root_key, "alpha");
    assert_eq!(
        request(callers_of_beta, &forged(&old_alpha, &beta_san), bundle),
        Outcome::Answered
    );
    assert!(envoy.is_running_and_ready(), "{}", envoy.log_text());
}
