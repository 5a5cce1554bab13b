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
    let client = h.client_as("beta", "demo", "echo").await;
    let result = first(client, node_in("beta", "demo", "echo-beta-1")).await;
    assert_refused(&h, result, "cluster_not_loaded");
}
