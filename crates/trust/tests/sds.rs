//! SDS over a Unix socket with a real gRPC client: the certificate and trust bundle arrive, and
//! a rotation is pushed on the open stream.

use std::sync::Arc;
use std::time::Duration;

use causeway_trust::agent::Certified;
use causeway_trust::sds::SdsServer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

fn cert(generation: u64) -> Arc<Certified> {
    Arc::new(Certified {
        chain_pem: format!(
            "-----BEGIN CERTIFICATE-----\ngen{generation}\n-----END CERTIFICATE-----\n"
        ),
        key_pem: "-----BEGIN PRIVATE KEY-----\nk\n-----END PRIVATE KEY-----\n".into(),
        bundle_pem: "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n".into(),
        not_before: 0,
        not_after: 1,
        generation,
    })
}

#[tokio::test]
async fn secrets_arrive_and_rotation_is_pushed() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("sds.sock");
    let (tx, rx) = watch::channel(Some(cert(1)));
    let server = SdsServer::new(rx);
    let p = path.clone();
    tokio::spawn(async move { server.serve(&p, std::future::pending()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connect");
    let mut client = SecretDiscoveryServiceClient::new(channel);
    let (req_tx, req_rx) = mpsc::channel(4);
    req_tx
        .send(DiscoveryRequest {
            resource_names: vec!["default".into(), "ROOTCA".into()],
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
            ..Default::default()
        })
        .await
        .expect("send");
    let mut stream = client
        .stream_secrets(ReceiverStream::new(req_rx))
        .await
        .expect("stream")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("ok");
    let secrets: Vec<Secret> = first
        .resources
        .iter()
        .map(|a| Secret::decode(&*a.value).expect("secret"))
        .collect();
    assert_eq!(
        secrets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["ROOTCA", "default"]
    );
    assert!(matches!(
        secrets[0].r#type,
        Some(secret::Type::ValidationContext(_))
    ));
    assert!(matches!(
        secrets[1].r#type,
        Some(secret::Type::TlsCertificate(_))
    ));
    assert_eq!(first.version_info, "1");
    tx.send_replace(Some(cert(2)));
    let second = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("pushed")
        .expect("open")
        .expect("ok");
    assert_eq!(second.version_info, "2");
    let s = Secret::decode(&*second.resources[1].value).expect("secret");
    match s.r#type {
        Some(secret::Type::TlsCertificate(t)) => {
            let chain = t
                .certificate_chain
                .and_then(|d| d.specifier)
                .expect("chain");
            assert!(
                format!("{chain:?}").contains("103, 101, 110, 50"),
                "gen2 bytes"
            );
        }
        other => panic!("{other:?}"),
    }
}
