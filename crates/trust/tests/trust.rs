//! Trust: the CA hierarchy across clusters, what the CA refuses (with metrics), verification
//! failures, the gRPC CA service, agents obtaining and rotating certificates, mTLS between
//! clusters, and root rotation with an overlap period.

mod common;

use std::sync::Arc;
use std::time::Duration;

use causeway_model::SpiffeId;
use causeway_trust::agent::AgentStatus;
use causeway_trust::ca::{ClusterCa, RootCa};
use causeway_trust::issue::{parse_csr, WorkloadKey};
use causeway_trust::service::{
    request_certificate, CaClientConfig, ClientError, SignError, SignRequest, SignResponse,
};
use causeway_trust::verify::{self, VerifyError};
use common::*;
use prometheus_client::registry::Registry;
use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
use rustls::pki_types::UnixTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn csr(uri: &str) -> String {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn serial_of(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("x509");
    cert.raw_serial().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn roundtrip(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    msg: &[u8],
) -> String {
    tls.write_all(msg).await.expect("write");
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("reply in time")
        .expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn request(token: &str, csr_pem: String) -> SignRequest {
    SignRequest {
        csr_pem,
        token: token.into(),
        ttl_seconds: 0,
        cluster: String::new(),
    }
}

/// A request that claims `cluster`.
fn claiming(cluster: &str, token: &str, csr_pem: String) -> SignRequest {
    SignRequest {
        cluster: cluster.into(),
        ..request(token, csr_pem)
    }
}

fn metrics_text(ca: &causeway_trust::service::CaService) -> String {
    let mut registry = Registry::with_prefix("causeway");
    ca.register_metrics(&mut registry);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
    out
}

#[test]
fn leaf_from_cluster_a_verifies_against_the_root_in_cluster_b() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let alpha = cluster_ca(&root, "alpha");
    let beta = cluster_ca(&root, "beta");
    let key = WorkloadKey::generate().expect("key");
    let id = SpiffeId::new(TD, "demo", "client");
    let csr = parse_csr(&key.csr_pem(&id).expect("csr")).expect("parsed");
    let issued = alpha.sign(&csr, Duration::from_secs(3600)).expect("signed");
    let chain = causeway_trust::pem_certs(&issued.chain_pem);
    assert_eq!(
        chain.len(),
        2,
        "leaf and alpha's intermediate, not the root"
    );
    // Beta trusts only the root: the leaf verifies through alpha's intermediate.
    let peer = verify::verify_chain(&chain, beta.trust_bundle_pem(), TD, UnixTime::now())
        .expect("verifies in beta");
    assert_eq!(peer.spiffe, id);
    assert_eq!(peer.cluster, Some(cid("alpha")));
    // The only URI SAN is the SPIFFE ID; both TLS usages; 1 h as asked.
    let (_, cert) = x509_parser::parse_x509_certificate(chain[0].as_ref()).expect("x509");
    let sans = cert
        .subject_alternative_name()
        .expect("san")
        .expect("present");
    let uris: Vec<String> = sans
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec![id.to_string()]);
    let eku = cert.extended_key_usage().expect("eku").expect("present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(!cert.is_ca());
    assert_eq!(issued.not_after - issued.not_before, 3600 + 60);
}

#[test]
fn verification_rejections_have_distinct_variants() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let alpha_files = intermediate(&root, "alpha");
    let alpha = ClusterCa::from_files(&alpha_files, cid("alpha"), TD).expect("alpha");
    let key = WorkloadKey::generate().expect("key");
    let id = SpiffeId::new(TD, "demo", "client");
    let csr = parse_csr(&key.csr_pem(&id).expect("csr")).expect("parsed");
    let issued = alpha.sign(&csr, Duration::from_secs(60)).expect("signed");
    let chain = causeway_trust::pem_certs(&issued.chain_pem);

    // Unknown root.
    let stranger = RootCa::generate(TD, YEAR).expect("other root");
    let e = verify::verify_chain(&chain, stranger.cert_pem(), TD, UnixTime::now())
        .expect_err("unknown root");
    assert_eq!(e, VerifyError::UnknownRoot);
    assert_eq!(e.reason(), "unknown_root");
    // Expired: checked an hour after its one-minute lifetime.
    let later = UnixTime::since_unix_epoch(Duration::from_secs((issued.not_after + 3600) as u64));
    assert_eq!(
        verify::verify_chain(&chain, root.cert_pem(), TD, later),
        Err(VerifyError::Expired)
    );
    // Wrong trust domain.
    let e = verify::verify_chain(&chain, root.cert_pem(), "other.domain", UnixTime::now())
        .expect_err("wrong trust domain");
    assert!(matches!(e, VerifyError::WrongTrustDomain { .. }), "{e}");
    assert!(e.to_string().contains("causeway.local"), "{e}");
    // Not a SPIFFE ID: a certificate from the same intermediate with an https URI SAN (made
    // with the intermediate's key directly, as a compromised or foreign issuer could).
    let ca_key = KeyPair::from_pem(&alpha_files.ca_key_pem).expect("ca key");
    let issuer = Issuer::from_ca_cert_pem(&alpha_files.ca_cert_pem, ca_key).expect("issuer");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        "https://example.org/not-spiffe".try_into().expect("uri"),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let odd_key = KeyPair::generate().expect("key");
    let odd = params.signed_by(&odd_key, &issuer).expect("odd leaf");
    let odd_chain = vec![odd.der().clone(), chain[1].clone()];
    let e = verify::verify_chain(&odd_chain, root.cert_pem(), TD, UnixTime::now())
        .expect_err("not spiffe");
    assert!(matches!(e, VerifyError::NotSpiffe(_)), "{e}");
    assert_eq!(e.reason(), "not_spiffe");
    // CSR-identity mismatch: the certificate names another identity than the CSR asked for.
    let other = SpiffeId::new(TD, "demo", "admin");
    let e = verify::verify_issued(
        &issued.chain_pem,
        root.cert_pem(),
        &other,
        &key.public_key_der(),
        UnixTime::now(),
    )
    .expect_err("identity mismatch");
    assert!(matches!(e, VerifyError::IdentityMismatch { .. }), "{e}");
    assert!(e.to_string().contains("sa/admin") && e.to_string().contains("sa/client"));
    // ... or another key than ours.
    let e = verify::verify_issued(
        &issued.chain_pem,
        root.cert_pem(),
        &id,
        &WorkloadKey::generate().expect("key").public_key_der(),
        UnixTime::now(),
    )
    .expect_err("key mismatch");
    assert_eq!(e, VerifyError::KeyMismatch);
    // The genuine case passes, and no certificate at all is its own case.
    verify::verify_issued(
        &issued.chain_pem,
        root.cert_pem(),
        &id,
        &key.public_key_der(),
        UnixTime::now(),
    )
    .expect("genuine");
    assert_eq!(
        verify::verify_chain(&[], root.cert_pem(), TD, UnixTime::now()),
        Err(VerifyError::NoCertificate)
    );
    assert_eq!(
        verify::verify_chain(&chain, "", TD, UnixTime::now()),
        Err(VerifyError::EmptyBundle)
    );
}

#[tokio::test]
async fn the_ca_signs_only_what_the_credential_grants_and_counts_every_refusal() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let ca = ca_service(&root);
    let good = csr("spiffe://causeway.local/ns/demo/sa/client");
    let issued = ca
        .sign(&request("tok-alpha-client", good.clone()))
        .await
        .expect("granted identity");
    let chain = causeway_trust::pem_certs(&issued.chain_pem);
    let peer = verify::verify_chain(&chain, root.cert_pem(), TD, UnixTime::now()).expect("valid");
    assert_eq!(
        peer.cluster,
        Some(cid("alpha")),
        "signed by the credential's cluster"
    );
    assert_eq!(
        issued.not_after - issued.not_before,
        24 * 3600 + 60,
        "default lifetime 24 h (plus the 60 s clock-skew backdating)"
    );
    assert_eq!(ca.issued_count(&cid("alpha")), 1);
    ca.sign(&claiming("alpha", "tok-alpha-client", good.clone()))
        .await
        .expect("the credential's own cluster claimed");
    assert_eq!(ca.issued_count(&cid("alpha")), 2);

    type Check = fn(&SignError) -> bool;
    let cases: Vec<(&str, SignRequest, &str, Check)> = vec![
        (
            "identity the credential does not grant",
            request(
                "tok-alpha-client",
                csr("spiffe://causeway.local/ns/demo/sa/admin"),
            ),
            "identity_not_granted",
            |e| matches!(e, SignError::IdentityNotGranted { .. }),
        ),
        (
            "bad credential",
            request("tok-forged", good.clone()),
            "bad_credential",
            |e| {
                matches!(
                    e,
                    SignError::Credential(causeway_trust::credential::AuthError::Unknown)
                )
            },
        ),
        (
            "no credential",
            request("", good.clone()),
            "missing_credential",
            |e| {
                matches!(
                    e,
                    SignError::Credential(causeway_trust::credential::AuthError::Missing)
                )
            },
        ),
        (
            "other trust domain",
            request(
                "tok-alpha-client",
                csr("spiffe://evil.example/ns/demo/sa/client"),
            ),
            "wrong_trust_domain",
            |e| matches!(e, SignError::WrongTrustDomain { .. }),
        ),
        (
            "not a SPIFFE ID",
            request(
                "tok-alpha-client",
                csr("https://causeway.local/ns/demo/sa/client"),
            ),
            "not_spiffe",
            |e| matches!(e, SignError::NotSpiffe(_)),
        ),
        (
            "garbage CSR",
            request("tok-alpha-client", "junk".into()),
            "bad_csr",
            |e| matches!(e, SignError::BadCsr(_)),
        ),
        (
            "the CA's own identity",
            request(
                "tok-alpha-client",
                csr("spiffe://causeway.local/ns/causeway-system/sa/causeway-ca"),
            ),
            "reserved_identity",
            |e| matches!(e, SignError::ReservedIdentity(_)),
        ),
        (
            "credential of another cluster than claimed",
            claiming("beta", "tok-alpha-client", good.clone()),
            "wrong_cluster",
            |e| {
                matches!(
                    e,
                    SignError::Credential(
                        causeway_trust::credential::AuthError::WrongCluster { .. }
                    )
                )
            },
        ),
        (
            "claimed cluster is not a cluster id",
            claiming("Alpha_1", "tok-alpha-client", good.clone()),
            "bad_cluster_claim",
            |e| matches!(e, SignError::BadClusterClaim(_)),
        ),
        (
            "cluster without an intermediate here",
            request("tok-gamma-db", csr("spiffe://causeway.local/ns/demo/sa/db")),
            "no_cluster_ca",
            |e| matches!(e, SignError::NoClusterCa(_)),
        ),
    ];
    for (what, req, reason, check) in cases {
        let before = ca.rejection_count(reason);
        let e = ca.sign(&req).await.expect_err(what);
        assert!(check(&e), "{what}: {e:?}");
        assert_eq!(e.reason(), reason, "{what}");
        assert_eq!(ca.rejection_count(reason), before + 1, "{what}: counter");
        let text = metrics_text(&ca);
        let line = format!(
            "causeway_ca_rejections_total{{reason=\"{reason}\"}} {}",
            before + 1
        );
        assert!(text.contains(&line), "{what}: no `{line}` in\n{text}");
        assert!(!e.to_string().contains("tok-"), "{what}: token echoed: {e}");
    }
    let e = ca
        .sign(&request(
            "tok-alpha-client",
            csr("spiffe://causeway.local/ns/demo/sa/admin"),
        ))
        .await
        .expect_err("not granted");
    let msg = e.to_string();
    assert!(
        msg.contains("sa/admin") && msg.contains("sa/client") && msg.contains("alpha"),
        "operator-readable: {msg}"
    );
    let e = ca
        .sign(&claiming("beta", "tok-alpha-client", good.clone()))
        .await
        .expect_err("wrong cluster");
    let msg = e.to_string();
    assert!(
        msg.contains("cluster alpha") && msg.contains("cluster beta"),
        "names both clusters: {msg}"
    );
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        ca.issued_count(&cid("alpha")),
        2,
        "no refusal issued anything"
    );
    assert_eq!(ca.issued_count(&cid("beta")), 0);
}

#[tokio::test]
async fn grpc_refusals_carry_status_codes_and_reasons() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let ca = ca_service(&root);
    let (addr, _stop, _task) = start_ca(Arc::clone(&ca)).await;
    let client = CaClientConfig::new(addr, root.cert_pem(), TD);
    let e = request_certificate(
        &client,
        request(
            "tok-forged",
            csr("spiffe://causeway.local/ns/demo/sa/client"),
        ),
    )
    .await
    .expect_err("bad credential");
    match &e {
        ClientError::Refused { code, reason, .. } => {
            assert_eq!(*code, tonic::Code::Unauthenticated);
            assert_eq!(reason, "bad_credential");
        }
        other => panic!("{other:?}"),
    }
    let e = request_certificate(
        &client,
        request(
            "tok-alpha-client",
            csr("spiffe://causeway.local/ns/demo/sa/admin"),
        ),
    )
    .await
    .expect_err("not granted");
    assert!(
        matches!(&e, ClientError::Refused { code: tonic::Code::PermissionDenied, reason, .. } if reason == "identity_not_granted"),
        "{e:?}"
    );
    assert_eq!(ca.rejection_count("bad_credential"), 1);
    assert_eq!(ca.rejection_count("identity_not_granted"), 1);
    // A client that trusts another root refuses the CA's certificate: no request is sent.
    let stranger = RootCa::generate(TD, YEAR).expect("stranger");
    let e = request_certificate(
        &CaClientConfig::new(addr, stranger.cert_pem(), TD),
        request(
            "tok-alpha-client",
            csr("spiffe://causeway.local/ns/demo/sa/client"),
        ),
    )
    .await
    .expect_err("untrusted CA");
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
    assert_eq!(ca.issued_count(&cid("alpha")), 0);
}

#[tokio::test]
async fn no_ca_answer_carries_a_private_key() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let (addr, _stop, _task) = start_ca(ca_service(&root)).await;
    let answer = request_certificate(
        &CaClientConfig::new(addr, root.cert_pem(), TD),
        request(
            "tok-alpha-client",
            csr("spiffe://causeway.local/ns/demo/sa/client"),
        ),
    )
    .await
    .expect("issued over gRPC");
    // Exhaustive destructuring: adding any field (a key, say) to the answer breaks this test.
    let SignResponse {
        cert_chain_pem,
        trust_bundle_pem,
        not_before,
        not_after,
        serial_hex,
    } = answer.clone();
    assert!(not_after > not_before && !serial_hex.is_empty());
    for text in [&cert_chain_pem, &trust_bundle_pem] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(text.contains("BEGIN CERTIFICATE"));
    }
    // On the wire: only fields 1..=5, and no key material anywhere.
    let bytes = prost::Message::encode_to_vec(&answer);
    assert!(!String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"));
    let mut buf = bytes.as_slice();
    let mut tags = Vec::new();
    while !buf.is_empty() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut buf).expect("field key");
        tags.push(tag);
        prost::encoding::skip_field(wire_type, tag, &mut buf, Default::default()).expect("skip");
    }
    assert!(tags.iter().all(|t| (1..=5).contains(t)), "{tags:?}");
    // The request type has no field for a key either, and never prints the token.
    let SignRequest {
        csr_pem: _,
        token: _,
        ttl_seconds: _,
        cluster: _,
    } = request("tok-alpha-client", String::new());
    assert!(!format!("{:?}", request("tok-alpha-client", String::new())).contains("tok-alpha"));
}

#[tokio::test]
async fn agents_in_two_clusters_talk_mtls_and_rotate() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let (addr, _stop, _task) = start_ca(ca_service(&root)).await;
    let client = agent(addr, &root, "tok-alpha-client", "client");
    let server = agent(addr, &root, "tok-beta-echo", "echo");
    let client_task = tokio::spawn(Arc::clone(&client).run());
    let server_task = tokio::spawn(Arc::clone(&server).run());
    let c1 = wait_cert(&client, 1).await;
    let s1 = wait_cert(&server, 1).await;
    assert!(matches!(client.status(), AgentStatus::Ok { .. }));
    assert!(matches!(server.status(), AgentStatus::Ok { .. }));

    // Server in cluster beta: requires a client certificate; replies with what it saw.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server_addr = listener.local_addr().expect("addr");
    let server_agent = Arc::clone(&server);
    let accept_task = tokio::spawn(async move {
        for _ in 0..8 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Some(cert) = server_agent.current() else {
                return;
            };
            let config =
                verify::server_config(&cert.chain_pem, &cert.key_pem, &cert.bundle_pem, TD, vec![])
                    .expect("server config");
            tokio::spawn(async move {
                let accepted = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio_rustls::TlsAcceptor::from(Arc::new(config)).accept(tcp),
                )
                .await;
                let Ok(Ok(mut tls)) = accepted else {
                    return;
                };
                let certs = tls.get_ref().1.peer_certificates();
                let id = verify::peer_identity(certs, TD).expect("client identity");
                let serial = certs
                    .and_then(|c| c.first())
                    .map(|c| hex(&serial_of(c.as_ref())))
                    .unwrap_or_default();
                let mut buf = [0u8; 64];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    let cluster = id
                        .cluster
                        .as_ref()
                        .map(|c| c.to_string())
                        .unwrap_or_default();
                    let reply = format!("{}|{}|{}\n", id.spiffe, cluster, serial);
                    if tls.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let connect = |cert: Arc<causeway_trust::agent::Certified>| async move {
        let config = verify::client_config(
            &cert.chain_pem,
            &cert.key_pem,
            &cert.bundle_pem,
            TD,
            vec![SpiffeId::new(TD, "demo", "echo")],
        )
        .expect("client config");
        let tcp = tokio::net::TcpStream::connect(server_addr)
            .await
            .expect("connect");
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(
                rustls::pki_types::ServerName::try_from("echo").expect("name"),
                tcp,
            ),
        )
        .await
        .expect("handshake in time")
        .expect("mTLS handshake")
    };
    let mut conn1 = connect(Arc::clone(&c1)).await;
    let server_seen =
        verify::peer_identity(conn1.get_ref().1.peer_certificates(), TD).expect("server identity");
    assert_eq!(
        server_seen.spiffe.to_string(),
        "spiffe://causeway.local/ns/demo/sa/echo"
    );
    assert_eq!(server_seen.cluster, Some(cid("beta")));
    let c1_serial = hex(&leaf_serial(&c1.chain_pem));
    assert_eq!(
        roundtrip(&mut conn1, b"hi").await,
        format!("spiffe://causeway.local/ns/demo/sa/client|alpha|{c1_serial}\n"),
        "the server saw the client's SPIFFE ID from cluster alpha"
    );
    let seen_leaf = conn1.get_ref().1.peer_certificates().expect("certs")[0].clone();
    assert_eq!(
        seen_leaf.as_ref(),
        causeway_trust::pem_certs(&s1.chain_pem)[0].as_ref()
    );

    // Forced rotation: new key and serial; a NEW connection presents the new certificate and
    // the old connection keeps working.
    client.force_rotate();
    let c2 = wait_cert(&client, 2).await;
    assert_ne!(leaf_serial(&c1.chain_pem), leaf_serial(&c2.chain_pem));
    assert_ne!(c1.key_pem, c2.key_pem, "a new key on rotation");
    let c2_serial = hex(&leaf_serial(&c2.chain_pem));
    let mut conn2 = connect(Arc::clone(&c2)).await;
    assert_eq!(
        roundtrip(&mut conn2, b"again").await,
        format!("spiffe://causeway.local/ns/demo/sa/client|alpha|{c2_serial}\n"),
        "a new connection presents the new certificate"
    );
    assert_eq!(
        roundtrip(&mut conn1, b"still").await,
        format!("spiffe://causeway.local/ns/demo/sa/client|alpha|{c1_serial}\n"),
        "the old connection still works, on the old certificate"
    );
    client_task.abort();
    server_task.abort();
    accept_task.abort();
}

#[tokio::test]
async fn agent_keeps_its_certificate_while_the_ca_is_unreachable() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let (addr, stop, task) = start_ca(ca_service(&root)).await;
    let a = agent(addr, &root, "tok-alpha-client", "client");
    let run = tokio::spawn(Arc::clone(&a).run());
    let first = wait_cert(&a, 1).await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    a.force_rotate();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let s @ AgentStatus::CaUnreachable { .. } = a.status() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("status turns CaUnreachable");
    match status {
        AgentStatus::CaUnreachable {
            since,
            last_error,
            not_after,
        } => {
            assert_eq!(not_after, Some(first.not_after));
            assert!(since > 0);
            assert!(last_error.contains("cannot reach the CA"), "{last_error}");
            assert!(!last_error.contains("tok-alpha"), "{last_error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        a.current().map(|c| c.generation),
        Some(1),
        "the certificate keeps serving"
    );
    run.abort();
}

#[test]
fn root_rotation_with_an_overlap_period() {
    let old_root = RootCa::generate(TD, YEAR).expect("old");
    let new_root = RootCa::generate(TD, YEAR).expect("new");
    let old_alpha = cluster_ca(&old_root, "alpha");
    let new_beta = cluster_ca(&new_root, "beta");
    let id = SpiffeId::new(TD, "demo", "client");
    let leaf = |ca: &ClusterCa| {
        let key = WorkloadKey::generate().expect("key");
        let csr = parse_csr(&key.csr_pem(&id).expect("csr")).expect("csr");
        causeway_trust::pem_certs(
            &ca.sign(&csr, Duration::from_secs(3600))
                .expect("leaf")
                .chain_pem,
        )
    };
    let old_leaf = leaf(&old_alpha);
    let new_leaf = leaf(&new_beta);
    let now = UnixTime::now();
    let overlap = format!("{}{}", old_root.cert_pem(), new_root.cert_pem());
    verify::verify_chain(&new_leaf, &overlap, TD, now).expect("new-root leaf at an {old,new} peer");
    verify::verify_chain(&old_leaf, &overlap, TD, now)
        .expect("old-root leaf still accepted during the overlap");
    assert_eq!(
        verify::verify_chain(&old_leaf, new_root.cert_pem(), TD, now),
        Err(VerifyError::UnknownRoot),
        "rejected once the old root is removed"
    );
    verify::verify_chain(&new_leaf, new_root.cert_pem(), TD, now).expect("new leaf after");
    // A peer still on the old bundle alone does not accept the new root yet: why the overlap
    // must reach every peer before workloads move to the new root.
    assert_eq!(
        verify::verify_chain(&new_leaf, old_root.cert_pem(), TD, now),
        Err(VerifyError::UnknownRoot)
    );
}

#[tokio::test]
async fn agent_renews_by_itself_at_half_lifetime() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let (addr, _stop, _task) = start_ca(ca_service(&root)).await;
    let mut config = agent_config(addr, root.cert_pem(), "tok-alpha-client", "client");
    config.ttl = Duration::from_secs(2);
    let a = causeway_trust::agent::Agent::new(config);
    let run = tokio::spawn(Arc::clone(&a).run());
    let first = wait_cert(&a, 1).await;
    let started = std::time::Instant::now();
    let second = wait_cert(&a, 2).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "renewed at half of a 2 s lifetime, not later"
    );
    assert_ne!(
        leaf_serial(&first.chain_pem),
        leaf_serial(&second.chain_pem)
    );
    run.abort();
}
