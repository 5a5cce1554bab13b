//! Trust: the CA hierarchy, issuance rules, verification failures, agents obtaining and
//! rotating certificates over the real CA service, mTLS between clusters, SDS and root rotation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_model::{ClusterId, SpiffeId};
use causeway_trust::agent::{Agent, AgentConfig, AgentStatus};
use causeway_trust::ca::{ClusterCa, RootCa};
use causeway_trust::credential::{Grant, TokenAuthenticator};
use causeway_trust::service::{CaService, SignError, SignRequest};
use causeway_trust::verify::{self, VerifyError};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::UnixTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TD: &str = "causeway.local";
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).expect("id")
}

fn cluster_ca(root: &RootCa, cluster: &str) -> ClusterCa {
    let files = root
        .issue_intermediate(&cid(cluster), TD, YEAR)
        .expect("intermediate");
    ClusterCa::from_files(&files, cid(cluster), TD).expect("ca")
}

fn csr_for(uri: &str) -> (KeyPair, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key, csr)
}

fn grant(cluster: &str, sa: &str) -> Grant {
    Grant {
        cluster: cid(cluster),
        namespace: "demo".into(),
        service_account: sa.into(),
        workload: sa.into(),
    }
}

fn now() -> UnixTime {
    UnixTime::now()
}

#[test]
fn leaf_from_cluster_a_verifies_in_cluster_b_and_names_its_cluster() {
    causeway_trust::install_crypto_provider();
    let root = RootCa::generate(TD, YEAR).expect("root");
    let alpha = cluster_ca(&root, "alpha");
    let beta = cluster_ca(&root, "beta");
    let (_key, csr) = csr_for("spiffe://causeway.local/ns/demo/sa/client");
    let id = SpiffeId::new(TD, "demo", "client");
    let issued = alpha
        .sign(&csr, &id, Duration::from_secs(3600))
        .expect("signed");
    let chain = causeway_trust::pem_certs(&issued.chain_pem);
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    // Cluster beta trusts only the root: the leaf verifies through alpha's intermediate.
    let peer =
        verify::verify_chain(&chain, beta.trust_bundle_pem(), TD, now()).expect("verifies in beta");
    assert_eq!(peer.spiffe, id);
    assert_eq!(peer.cluster, Some(cid("alpha")));
}

#[test]
fn verification_failures_are_distinct_and_named() {
    causeway_trust::install_crypto_provider();
    let root = RootCa::generate(TD, YEAR).expect("root");
    let alpha = cluster_ca(&root, "alpha");
    let (_k, csr) = csr_for("spiffe://causeway.local/ns/demo/sa/client");
    let id = SpiffeId::new(TD, "demo", "client");
    let issued = alpha
        .sign(&csr, &id, Duration::from_secs(60))
        .expect("signed");
    let chain = causeway_trust::pem_certs(&issued.chain_pem);

    // Unknown root.
    let stranger = RootCa::generate(TD, YEAR).expect("other root");
    let e = verify::verify_chain(&chain, stranger.cert_pem(), TD, now()).expect_err("unknown root");
    assert_eq!(e, VerifyError::UnknownRoot);
    assert_eq!(e.reason(), "unknown_root");
    // Expired: verified an hour after its 60 s lifetime.
    let later = UnixTime::since_unix_epoch(Duration::from_secs((issued.not_after + 3600) as u64));
    assert_eq!(
        verify::verify_chain(&chain, root.cert_pem(), TD, later),
        Err(VerifyError::Expired)
    );
    // Wrong trust domain.
    let e =
        verify::verify_chain(&chain, root.cert_pem(), "other.domain", now()).expect_err("wrong td");
    assert!(matches!(e, VerifyError::WrongTrustDomain { .. }), "{e}");
    assert!(e.to_string().contains("causeway.local"), "{e}");
    assert_eq!(
        verify::verify_chain(&[], root.cert_pem(), TD, now()),
        Err(VerifyError::NoCertificate)
    );
}

fn ca_service(root: &RootCa) -> Arc<CaService> {
    let mut auth = TokenAuthenticator::new();
    auth.add("tok-alpha-client", grant("alpha", "client"));
    auth.add("tok-beta-echo", grant("beta", "echo"));
    Arc::new(CaService::new(
        TD,
        vec![cluster_ca(root, "alpha"), cluster_ca(root, "beta")],
        Arc::new(auth),
        Duration::from_secs(24 * 3600),
    ))
}

#[test]
fn the_ca_signs_only_what_the_credential_grants() {
    causeway_trust::install_crypto_provider();
    let root = RootCa::generate(TD, YEAR).expect("root");
    let ca = ca_service(&root);
    let (_k, good) = csr_for("spiffe://causeway.local/ns/demo/sa/client");
    let issued = ca
        .sign(
            "tok-alpha-client",
            &SignRequest {
                csr_pem: good.clone(),
                ttl_seconds: None,
            },
        )
        .expect("granted identity");
    let chain = causeway_trust::pem_certs(&issued.chain_pem);
    let peer = verify::verify_chain(&chain, root.cert_pem(), TD, now()).expect("valid");
    assert_eq!(
        peer.cluster,
        Some(cid("alpha")),
        "signed by the credential's cluster"
    );
    assert!(
        issued.not_after - issued.not_before >= 24 * 3600,
        "default lifetime 24 h"
    );

    // A CSR for another identity than the credential grants.
    let (_k, other) = csr_for("spiffe://causeway.local/ns/demo/sa/admin");
    let e = ca
        .sign(
            "tok-alpha-client",
            &SignRequest {
                csr_pem: other,
                ttl_seconds: None,
            },
        )
        .expect_err("not granted");
    assert!(matches!(e, SignError::IdentityNotGranted { .. }), "{e}");
    assert!(
        e.to_string().contains("sa/admin") && e.to_string().contains("sa/client"),
        "{e}"
    );
    assert_eq!(ca.rejection_count("identity_not_granted"), 1);
    // A bad credential, and none.
    let e = ca
        .sign(
            "tok-forged",
            &SignRequest {
                csr_pem: good.clone(),
                ttl_seconds: None,
            },
        )
        .expect_err("bad credential");
    assert_eq!(e.reason(), "bad_credential");
    assert!(
        !e.to_string().contains("tok-forged"),
        "the token is never echoed"
    );
    assert_eq!(ca.rejection_count("bad_credential"), 1);
    let e = ca
        .sign(
            "",
            &SignRequest {
                csr_pem: good,
                ttl_seconds: None,
            },
        )
        .expect_err("missing");
    assert_eq!(e.reason(), "missing_credential");
    // Garbage CSR.
    let e = ca
        .sign(
            "tok-alpha-client",
            &SignRequest {
                csr_pem: "junk".into(),
                ttl_seconds: None,
            },
        )
        .expect_err("bad csr");
    assert_eq!(e.reason(), "bad_csr");
}

async fn start_ca(ca: Arc<CaService>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(ca.serve(listener, std::future::pending()));
    addr
}

fn agent(addr: SocketAddr, root: &RootCa, token: &str, sa: &str) -> Arc<Agent> {
    Agent::new(AgentConfig {
        ca_addr: addr,
        ca_bundle_pem: root.cert_pem().to_owned(),
        trust_domain: TD.into(),
        token: token.into(),
        identity: SpiffeId::new(TD, "demo", sa),
        ttl: Duration::from_secs(3600),
    })
}

async fn wait_cert(a: &Arc<Agent>, generation: u64) -> Arc<causeway_trust::agent::Certified> {
    let mut rx = a.certificates();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(c) = rx.borrow_and_update().clone() {
                if c.generation >= generation {
                    return c;
                }
            }
            if rx.changed().await.is_err() {
                panic!("agent stopped");
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no certificate generation {generation} within 10 s; status {:?}",
            a.status()
        )
    })
}

fn leaf_serial(chain_pem: &str) -> Vec<u8> {
    let der = causeway_trust::pem_certs(chain_pem).remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    cert.raw_serial().to_vec()
}

#[tokio::test]
async fn agents_in_two_clusters_talk_mtls_and_rotate() {
    causeway_trust::install_crypto_provider();
    let root = RootCa::generate(TD, YEAR).expect("root");
    let addr = start_ca(ca_service(&root)).await;
    let client = agent(addr, &root, "tok-alpha-client", "client");
    let server = agent(addr, &root, "tok-beta-echo", "echo");
    tokio::spawn(Arc::clone(&client).run());
    tokio::spawn(Arc::clone(&server).run());
    let c1 = wait_cert(&client, 1).await;
    let s1 = wait_cert(&server, 1).await;
    assert!(matches!(client.status(), AgentStatus::Ready { .. }));

    // The server (cluster beta) requires a client certificate; each side reports the other.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server_addr = listener.local_addr().expect("addr");
    let server_agent = Arc::clone(&server);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let cert = server_agent.current().expect("cert");
            let config = verify::server_config(&cert.chain_pem, &cert.key_pem, &cert.bundle_pem)
                .expect("server config");
            tokio::spawn(async move {
                let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(Arc::new(config))
                    .accept(tcp)
                    .await
                else {
                    return;
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first().cloned())
                    .expect("client cert");
                let id = verify::identity_of(&peer, TD).expect("identity");
                let mut buf = [0u8; 64];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let reply = format!(
                        "{}|{}\n",
                        id.spiffe,
                        id.cluster
                            .as_ref()
                            .map(|c| c.to_string())
                            .unwrap_or_default()
                    );
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
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from("echo").expect("name"),
                tcp,
            )
            .await
            .expect("mTLS handshake")
    };
    let mut conn1 = connect(Arc::clone(&c1)).await;
    let server_seen = conn1
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .expect("server cert");
    assert_eq!(
        verify::identity_of(&server_seen, TD)
            .expect("id")
            .spiffe
            .to_string(),
        "spiffe://causeway.local/ns/demo/sa/echo"
    );
    conn1.write_all(b"hi").await.expect("write");
    let mut buf = vec![0u8; 128];
    let n = conn1.read(&mut buf).await.expect("read");
    assert_eq!(
        String::from_utf8_lossy(&buf[..n]),
        "spiffe://causeway.local/ns/demo/sa/client|alpha\n"
    );
    assert_eq!(
        server_seen.as_ref(),
        causeway_trust::pem_certs(&s1.chain_pem)[0].as_ref()
    );

    // Forced rotation: a new certificate (new key, new serial); new connections use it and the
    // old connection keeps working.
    client.force_rotate();
    let c2 = wait_cert(&client, 2).await;
    assert_ne!(leaf_serial(&c1.chain_pem), leaf_serial(&c2.chain_pem));
    assert_ne!(c1.key_pem, c2.key_pem, "a new key on rotation");
    let mut conn2 = connect(Arc::clone(&c2)).await;
    conn2.write_all(b"again").await.expect("write");
    let n = conn2.read(&mut buf).await.expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("spiffe://causeway.local/ns/demo/sa/client")
    );
    conn1.write_all(b"still").await.expect("old connection");
    let n = conn1.read(&mut buf).await.expect("old connection reads");
    assert!(n > 0);
}

#[tokio::test]
async fn agent_keeps_its_certificate_while_the_ca_is_unreachable() {
    causeway_trust::install_crypto_provider();
    let root = RootCa::generate(TD, YEAR).expect("root");
    let ca = ca_service(&root);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(ca.serve(listener, async move {
        let _ = stop_rx.await;
    }));
    let a = agent(addr, &root, "tok-alpha-client", "client");
    tokio::spawn(Arc::clone(&a).run());
    let first = wait_cert(&a, 1).await;
    let _ = stop_tx.send(());
    let _ = served.await;
    a.force_rotate();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let AgentStatus::CaUnreachable { .. } = a.status() {
                return a.status();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("status turns CaUnreachable");
    match status {
        AgentStatus::CaUnreachable {
            not_after, error, ..
        } => {
            assert_eq!(not_after, Some(first.not_after));
            assert!(error.contains("cannot reach the CA"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        a.current().map(|c| c.generation),
        Some(1),
        "the certificate keeps serving"
    );
}

#[test]
fn no_ca_answer_carries_a_private_key() {
    causeway_trust::install_crypto_provider();
    let root = RootCa::generate(TD, YEAR).expect("root");
    let ca = ca_service(&root);
    let (_k, csr) = csr_for("spiffe://causeway.local/ns/demo/sa/client");
    let issued = ca
        .sign(
            "tok-alpha-client",
            &SignRequest {
                csr_pem: csr,
                ttl_seconds: None,
            },
        )
        .expect("signed");
    let answer = serde_json::to_value(causeway_trust::service::SignResponse {
        cert_chain_pem: issued.chain_pem,
        trust_bundle_pem: issued.trust_bundle_pem,
        not_after: issued.not_after,
        not_before: issued.not_before,
    })
    .expect("json");
    let text = answer.to_string();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let fields: Vec<&String> = answer.as_object().expect("object").keys().collect();
    assert_eq!(
        fields,
        vec![
            "cert_chain_pem",
            "not_after",
            "not_before",
            "trust_bundle_pem"
        ]
    );
}

#[test]
fn root_rotation_with_an_overlap_period() {
    causeway_trust::install_crypto_provider();
    let old_root = RootCa::generate(TD, YEAR).expect("old");
    let new_root = RootCa::generate(TD, YEAR).expect("new");
    let old_alpha = cluster_ca(&old_root, "alpha");
    let new_alpha = cluster_ca(&new_root, "alpha");
    let id = SpiffeId::new(TD, "demo", "client");
    let (_k, csr) = csr_for(&id.to_string());
    let old_leaf = causeway_trust::pem_certs(
        &old_alpha
            .sign(&csr, &id, Duration::from_secs(3600))
            .expect("old")
            .chain_pem,
    );
    let new_leaf = causeway_trust::pem_certs(
        &new_alpha
            .sign(&csr, &id, Duration::from_secs(3600))
            .expect("new")
            .chain_pem,
    );
    let overlap = format!("{}{}", old_root.cert_pem(), new_root.cert_pem());
    assert!(
        verify::verify_chain(&new_leaf, &overlap, TD, now()).is_ok(),
        "new root trusted during overlap"
    );
    assert!(
        verify::verify_chain(&old_leaf, &overlap, TD, now()).is_ok(),
        "old leaves still accepted during overlap"
    );
    assert_eq!(
        verify::verify_chain(&old_leaf, new_root.cert_pem(), TD, now()),
        Err(VerifyError::UnknownRoot),
        "old root removed"
    );
    assert!(verify::verify_chain(&new_leaf, new_root.cert_pem(), TD, now()).is_ok());
}

#[tokio::test]
async fn agent_renews_by_itself_at_half_lifetime() {
    causeway_trust::install_crypto_provider();
    let root = RootCa::generate(TD, YEAR).expect("root");
    let addr = start_ca(ca_service(&root)).await;
    let a = Agent::new(AgentConfig {
        ca_addr: addr,
        ca_bundle_pem: root.cert_pem().to_owned(),
        trust_domain: TD.into(),
        token: "tok-alpha-client".into(),
        identity: SpiffeId::new(TD, "demo", "client"),
        ttl: Duration::from_secs(2),
    });
    tokio::spawn(Arc::clone(&a).run());
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
}
