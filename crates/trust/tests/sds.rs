//! SDS over a Unix socket with a real tonic client, fed by a real agent talking to a real CA:
//! `default` and `ROOTCA` arrive, the proxy ACKs, and after a forced rotation a new version
//! arrives on the open stream.

mod common;

use std::sync::Arc;
use std::time::Duration;

use causeway_trust::ca::RootCa;
use causeway_trust::sds::{SdsServer, SECRET_TYPE};
use common::*;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

fn inline(spec: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>) -> String {
    match spec.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("not inline bytes: {other:?}"),
    }
}

/// (chain, key) of `default` and the bundle of `ROOTCA` in a response.
fn secrets(r: &DiscoveryResponse) -> (String, String, String) {
    let mut out = (String::new(), String::new(), String::new());
    for any in &r.resources {
        assert_eq!(any.type_url, SECRET_TYPE);
        let s = Secret::decode(any.value.as_slice()).expect("secret");
        match (s.name.as_str(), s.r#type) {
            ("default", Some(secret::Type::TlsCertificate(t))) => {
                out.0 = inline(&t.certificate_chain);
                out.1 = inline(&t.private_key);
            }
            ("ROOTCA", Some(secret::Type::ValidationContext(v))) => {
                out.2 = inline(&v.trusted_ca);
            }
            (name, other) => panic!("unexpected secret {name}: {other:?}"),
        }
    }
    out
}

async fn next(stream: &mut tonic::Streaming<DiscoveryResponse>, what: &str) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 10 s"))
        .unwrap_or_else(|| panic!("{what}: stream closed"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[tokio::test]
async fn sds_serves_default_and_rootca_and_pushes_rotations() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let (addr, _stop, _ca) = start_ca(ca_service(&root)).await;
    let agent = agent(addr, &root, "tok-alpha-client", "client");
    let run = tokio::spawn(Arc::clone(&agent).run());
    let first = wait_cert(&agent, 1).await;

    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("sds.sock");
    let (stop_sds, sds_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = SdsServer::new(agent.certificates());
    let p = path.clone();
    let sds = tokio::spawn(async move {
        server
            .serve(&p, async move {
                let _ = sds_stopped.await;
            })
            .await
    });
    // Bounded wait for the socket.
    for _ in 0..100 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "only the agent's user may fetch the key");

    let socket = path.clone();
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect over the Unix socket");
    let mut client = SecretDiscoveryServiceClient::new(channel);

    // FetchSecrets (unary).
    let fetched = client
        .fetch_secrets(DiscoveryRequest {
            resource_names: vec!["ROOTCA".into()],
            type_url: SECRET_TYPE.into(),
            ..Default::default()
        })
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(fetched.version_info, "1");
    assert_eq!(secrets(&fetched).2, first.bundle_pem);

    // StreamSecrets: first request, response, ACK.
    let (req_tx, req_rx) = mpsc::channel(4);
    req_tx
        .send(DiscoveryRequest {
            resource_names: vec!["default".into(), "ROOTCA".into()],
            type_url: SECRET_TYPE.into(),
            ..Default::default()
        })
        .await
        .expect("send");
    let mut stream = client
        .stream_secrets(ReceiverStream::new(req_rx))
        .await
        .expect("stream")
        .into_inner();
    let r1 = next(&mut stream, "first response").await;
    assert_eq!(r1.version_info, "1");
    let (chain, key, bundle) = secrets(&r1);
    assert_eq!(chain, first.chain_pem);
    assert_eq!(key, first.key_pem);
    assert!(
        key.contains("PRIVATE KEY"),
        "the key goes to the local proxy only"
    );
    assert_eq!(bundle, root.cert_pem());
    req_tx
        .send(DiscoveryRequest {
            resource_names: vec!["default".into(), "ROOTCA".into()],
            type_url: SECRET_TYPE.into(),
            version_info: r1.version_info.clone(),
            response_nonce: r1.nonce.clone(),
            ..Default::default()
        })
        .await
        .expect("ack");
    // The ACK is not answered.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err(),
        "no response to an ACK"
    );

    // Rotation: a new version on the open stream.
    agent.force_rotate();
    let r2 = next(&mut stream, "pushed rotation").await;
    assert_eq!(r2.version_info, "2");
    assert_ne!(r2.nonce, r1.nonce);
    let (chain2, key2, _) = secrets(&r2);
    assert_ne!(chain2, chain);
    assert_ne!(key2, key);
    assert_ne!(leaf_serial(&chain2), leaf_serial(&chain));
    assert_eq!(chain2, agent.current().expect("current").chain_pem);

    drop(req_tx);
    let _ = stop_sds.send(());
    let served = tokio::time::timeout(Duration::from_secs(5), sds)
        .await
        .expect("SDS server stops")
        .expect("join");
    assert!(served.is_ok(), "{served:?}");
    assert!(!path.exists(), "socket removed on shutdown");
    run.abort();
}
