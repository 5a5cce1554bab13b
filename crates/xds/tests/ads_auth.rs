//! xDS is authenticated: only mTLS connections with a mesh certificate get a stream, and a
//! node must claim exactly the cluster, namespace and workload its certificate proves. Every
//! refusal is counted by reason and listed with its message.

mod common;

use std::sync::Arc;
use std::time::Duration;

use causeway_model::ClusterId;
use common::*;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio_stream::StreamExt;

/// Opens a SotW stream claiming `node` and returns its first response or the refusal.
async fn first(
    mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    node: Node,
) -> Result<DiscoveryResponse, tonic::Status> {
    let request = DiscoveryRequest {
        node: Some(node),
        type_url: CDS.into(),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(request).await.expect("send");
    let mut stream = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an answer within 5 s");
    drop(tx);
    next.expect("stream open")
}

/// The `causeway_xds_rejected_nodes_total` line of `reason`.
fn metric_line(h: &Harness, reason: &str) -> String {
    let mut registry = prometheus_client::registry::Registry::with_prefix("causeway");
    h.registry.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    let prefix = format!("causeway_xds_rejected_nodes_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} line in:\n{text}"))
        .to_owned()
}

fn assert_refused(h: &Harness, result: Result<DiscoveryResponse, tonic::Status>, reason: &str) {
    let status = result.expect_err("the stream must be refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let last = h.registry.rejections().pop().expect("a rejection listed");
    assert_eq!(last.reason, reason, "{last:?}");
    assert_eq!(last.message, status.message());
    assert_eq!(metric_line(h, reason).split(' ').nth(1), Some("1"));
    assert!(h.registry.proxies().is_empty(), "nothing connected");
}

#[tokio::test]
async fn the_own_certificate_is_accepted() {
    let h = Harness::start(Duration::from_millis(50)).await;
    let response = first(h.client().await, node("client"))
        .await
        .expect("accepted");
    assert_eq!(response.type_url, CDS);
    assert!(h.registry.rejections().is_empty());
}

#[tokio::test]
async fn a_plaintext_connection_is_refused() {
    let h = Harness::start(Duration::from_millis(50)).await;
    let refused =
        match AggregatedDiscoveryServiceClient::connect(format!("http://{}", h.addr)).await {
            Err(_) => true,
            Ok(client) => first(client, node("client")).await.is_err(),
        };
    assert!(refused, "a plaintext xDS client got a stream");
    assert!(h.registry.proxies().is_empty());
    let listed = h.registry.rejections();
    assert!(
        listed.iter().any(|r| r.reason == "tls"),
        "the failed handshake is listed: {listed:?}"
    );
    assert_eq!(metric_line(&h, "tls").split(' ').nth(1), Some("1"));
}

#[tokio::test]
async fn a_certificate_from_a_foreign_root_is_refused() {
    let h = Harness::start(Duration::from_millis(50)).await;
    let foreign = Pki::new();
    let leaf = foreign.leaf("alpha", "demo", "client");
    let connected = match mtls_channel(h.addr, &h.pki.bundle_pem, &leaf).await {
        Err(_) => false,
        Ok(channel) => first(
            AggregatedDiscoveryServiceClient::new(channel),
            node("client"),
        )
        .await
        .is_ok(),
    };
    assert!(!connected, "a certificate of another root got a stream");
    assert!(h.registry.proxies().is_empty());
}

#[tokio::test]
async fn workload_a_certificate_claiming_workload_b_is_refused() {
    let h = Harness::start(Duration::from_millis(50)).await;
    // alpha/demo/client's certificate, node claims echo-alpha-1 (service account echo).
    let result = first(h.client().await, node("echo-alpha-1")).await;
    assert_refused(&h, result, "identity_mismatch");
    let last = h.registry.rejections().pop().expect("listed");
    assert!(
        last.message
            .contains("runs as spiffe://causeway.local/ns/demo/sa/echo")
            && last
                .message
                .contains("spiffe://causeway.local/ns/demo/sa/client"),
        "{}",
        last.message
    );
}

#[tokio::test]
async fn another_clusters_certificate_claiming_this_cluster_is_refused() {
    let h = Harness::start(Duration::from_millis(50)).await;
    // The right SPIFFE ID, but issued by beta's intermediate (cluster SAN of beta).
    let client = h.client_as("beta", "demo", "client").await;
    let result = first(client, node("client")).await;
    assert_refused(&h, result, "cluster_mismatch");
}

#[tokio::test]
async fn a_proxy_of_an_unknown_cluster_is_refused() {
    let h = Harness::start(Duration::from_millis(50)).await;
    let result = first(h.client().await, node_in("delta", "demo", "client")).await;
    assert_refused(&h, result, "unknown_cluster");
}

#[tokio::test]
async fn a_proxy_of_a_cluster_that_has_not_loaded_is_refused() {
    let mut h = Harness::start(Duration::from_millis(50)).await;
    // beta is a member but has not synced (a Kubernetes member still listing): not in the index.
    let objects: Vec<(ClusterId, causeway_model::ClusterObjects)> = example()
        .clusters()
        .iter()
        .filter(|(n, _)| n.as_str() != "beta")
        .map(|(n, s)| {
            (
                ClusterId::new(n).expect("id"),
                (*s.objects.clone().expect("loaded")).clone(),
            )
        })
        .collect();
    h.index = causeway_discovery::MeshIndex::build(
        Arc::clone(h.index.mesh()),
        objects.iter().map(|(c, o)| (c, o)),
    );
    h.publish();
    h.wait_served().await;
    let client = h.client_as("beta", "demo", "echo").await;
    let result = first(client, node_in("beta", "demo", "echo-beta-1")).await;
    assert_refused(&h, result, "cluster_not_loaded");
}

/// A proxy presenting `leaf` (claiming alpha/demo/client) cannot get a stream: the handshake
/// fails, or the stream on it does.
async fn refused_at_the_handshake(h: &Harness, leaf: &(String, String)) {
    let connected = match mtls_channel(h.addr, &h.pki.bundle_pem, leaf).await {
        Err(_) => false,
        Ok(channel) => first(
            AggregatedDiscoveryServiceClient::new(channel),
            node("client"),
        )
        .await
        .is_ok(),
    };
    assert!(!connected, "the certificate got a stream");
}

/// A TLS refusal naming `what` (the verifier's reason) is listed and counted; only the good
/// proxy (of beta) is connected, and another good proxy is served after the refusal.
async fn assert_tls_refusal_and_others_served(h: &Harness, what: &str) {
    let listed = h
        .wait_rejection(|r| r.reason == "tls" && r.message.contains(what))
        .await;
    assert!(
        listed.message.starts_with(
            "TLS handshake failed (xDS requires mTLS with a mesh certificate): invalid peer certificate: "
        ),
        "{listed:?}"
    );
    // At least once: the client may retry its handshake before giving up.
    let counted: u64 = metric_line(h, "tls")
        .split(' ')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(counted >= 1, "{counted}");
    h.wait_connected(&["beta"]).await;
    h.assert_served().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused_at_the_handshake_while_others_are_served() {
    let h = Harness::start(Duration::from_millis(50)).await;
    let (_beta_tx, _beta_stream) = h.beta_proxy().await;
    // The crafting is sound: the same leaf, valid now, is served.
    let now = time::OffsetDateTime::now_utc();
    let alpha_san = ClusterId::new("alpha").expect("id").certificate_san(TD);
    let fresh = h.pki.crafted_leaf(
        "alpha",
        &alpha_san,
        ("demo", "client"),
        now - time::Duration::minutes(5)..now + time::Duration::hours(1),
    );
    let channel = mtls_channel(h.addr, &h.pki.bundle_pem, &fresh)
        .await
        .expect("connect");
    first(
        AggregatedDiscoveryServiceClient::new(channel),
        node("client"),
    )
    .await
    .expect("a crafted leaf valid now is served");
    h.wait_connected(&["beta"]).await;

    refused_at_the_handshake(&h, &h.pki.expired_leaf("alpha", "demo", "client")).await;
    assert_tls_refusal_and_others_served(&h, "Expired").await;
}

#[tokio::test]
async fn a_leaf_forged_with_another_clusters_san_is_refused_at_the_handshake_while_others_are_served(
) {
    let h = Harness::start(Duration::from_millis(50)).await;
    let (_beta_tx, _beta_stream) = h.beta_proxy().await;
    // The forging is sound: alpha's key minting alpha's own SAN is served as alpha's.
    let own = h.pki.forged_leaf("alpha", "alpha", "demo", "client");
    let channel = mtls_channel(h.addr, &h.pki.bundle_pem, &own)
        .await
        .expect("connect");
    first(
        AggregatedDiscoveryServiceClient::new(channel),
        node("client"),
    )
    .await
    .expect("alpha's key minting alpha's SAN is served");
    h.wait_connected(&["beta"]).await;

    // Alpha's key minting beta's SAN, claiming beta's echo: refused before any stream, so the
    // node's claim is never read.
    let forged = h.pki.forged_leaf("alpha", "beta", "demo", "echo");
    let connected = match mtls_channel(h.addr, &h.pki.bundle_pem, &forged).await {
        Err(_) => false,
        Ok(channel) => first(
            AggregatedDiscoveryServiceClient::new(channel),
            node_in("beta", "demo", "echo-beta-1"),
        )
        .await
        .is_ok(),
    };
    assert!(!connected, "a forged cluster SAN got a stream");
    assert_tls_refusal_and_others_served(&h, "outside its issuing intermediate's name constraints")
        .await;
    // The forged leaf claiming alpha (its signer's cluster) fares no better.
    refused_at_the_handshake(&h, &h.pki.forged_leaf("alpha", "beta", "demo", "client")).await;
    h.wait_connected(&["beta"]).await;
    assert!(h.registry.rejections().iter().all(|r| r.reason == "tls"));
}

/// `node("client")` with `key` set to `value`, or removed when `value` is `None`.
fn client_node_with(key: &str, value: Option<&str>) -> Node {
    let mut n = node("client");
    let fields = &mut n.metadata.as_mut().expect("metadata").fields;
    match value {
        Some(v) => {
            fields.insert(
                key.to_owned(),
                envoy_types::pb::google::protobuf::Value {
                    kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                        v.to_owned(),
                    )),
                },
            );
        }
        None => {
            fields.remove(key);
        }
    }
    n
}

#[tokio::test]
async fn bad_node_metadata_on_a_live_stream_is_refused_as_bad_node_while_others_are_served() {
    use causeway_xds::node::keys;
    let h = Harness::start(Duration::from_millis(50)).await;
    let (_beta_tx, _beta_stream) = h.beta_proxy().await;
    // One connection with alpha/demo/client's valid certificate for every bad node: each
    // refusal ends its stream only.
    let channel = mtls_channel(
        h.addr,
        &h.pki.bundle_pem,
        &h.pki.leaf("alpha", "demo", "client"),
    )
    .await
    .expect("connect");
    let cases: [(Option<Node>, &str); 5] = [
        (
            Some(client_node_with(keys::CLUSTER, Some("Alpha!"))),
            "metadata CAUSEWAY_CLUSTER=\"Alpha!\"",
        ),
        (
            Some(client_node_with(keys::WORKLOAD, None)),
            "metadata CAUSEWAY_WORKLOAD is missing",
        ),
        (
            Some(client_node_with(
                keys::OUTBOUND_CIDR,
                Some("127.101.0.1/16"),
            )),
            "metadata CAUSEWAY_OUTBOUND_CIDR=\"127.101.0.1/16\"",
        ),
        (
            Some(client_node_with(keys::ROLE, Some("router"))),
            "metadata CAUSEWAY_ROLE=\"router\": must be sidecar or gateway",
        ),
        (None, "the first request carries no node"),
    ];
    for (i, (bad, expected)) in cases.into_iter().enumerate() {
        let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
        let (_tx, opened) = first_cds(&mut client, bad).await;
        let status = opened.expect_err("a bad node is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
        let last = h.registry.rejections().pop().expect("listed");
        assert_eq!(last.reason, "bad_node", "{last:?}");
        assert_eq!(last.message, status.message());
        let count = (i + 1).to_string();
        assert_eq!(
            metric_line(&h, "bad_node").split(' ').nth(1),
            Some(count.as_str())
        );
        assert_eq!(h.registry.proxies().len(), 1, "only beta's proxy connected");
    }
    // A node without metadata at all is refused the same way.
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
    let bare = Node {
        id: "sidecar~bare".into(),
        ..Node::default()
    };
    let (_tx, opened) = first_cds(&mut client, bare).await;
    let status = opened.expect_err("no metadata");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(metric_line(&h, "bad_node").split(' ').nth(1), Some("6"));

    // The same connection, with a good node, is served; so is another proxy, and beta's stream
    // still stands.
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (_tx, opened) = first_cds(&mut client, node("client")).await;
    assert_eq!(opened.expect("a good node is served").0.type_url, CDS);
    h.assert_served().await;
    assert!(h.registry.proxies().iter().any(|p| p.cluster == "beta"));
    assert!(h
        .registry
        .rejections()
        .iter()
        .all(|r| r.reason == "bad_node"));
}
