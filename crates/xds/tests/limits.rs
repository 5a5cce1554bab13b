//! The xDS listener's limits: streams per connection, connections in total and in a TLS
//! handshake, the request size, and delta subscriptions. Whatever one client does (open too
//! many streams, stall its handshake, send garbage or plaintext), the others keep being served.

mod common;

use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Streaming;

use causeway_xds::server::{XdsLimits, MAX_REQUEST_BYTES};

type Client = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

/// How long a client waits for an answer (an Envoy's default `initial_fetch_timeout` is 15 s).
const ANSWER: Duration = Duration::from_secs(10);

/// A SotW stream claiming "client": its sender, and its responses or the refusal.
async fn open(
    client: &mut Client,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    Result<Streaming<DiscoveryResponse>, tonic::Status>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(node("client")),
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .expect("send");
    let opened = tokio::time::timeout(
        ANSWER,
        client.stream_aggregated_resources(ReceiverStream::new(rx)),
    )
    .await
    .expect("the stream is answered in time")
    .map(tonic::Response::into_inner);
    (tx, opened)
}

async fn next(
    stream: &mut Streaming<DiscoveryResponse>,
) -> Result<DiscoveryResponse, tonic::Status> {
    tokio::time::timeout(ANSWER, stream.next())
        .await
        .expect("a message in time")
        .expect("stream open")
}

/// A real client on its own connection gets its clusters.
async fn served(h: &Harness) {
    let mut client = tokio::time::timeout(ANSWER, h.client())
        .await
        .expect("connected in time");
    let (_tx, stream) = open(&mut client).await;
    let first = next(&mut stream.expect("accepted")).await.expect("CDS");
    assert_eq!(first.type_url, CDS);
    assert!(!first.resources.is_empty());
}

/// Reads until the server closes the connection; panics if it stays open past `ANSWER`.
async fn closed_by_server(mut tcp: TcpStream) {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(ANSWER, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes the connection");
}

#[tokio::test]
async fn streams_beyond_the_per_connection_limit_are_refused_and_the_first_keeps_working() {
    let limits = XdsLimits {
        max_streams_per_connection: 3,
        ..XdsLimits::default()
    };
    let mut h =
        Harness::start_with(Duration::from_millis(20), limits, Duration::from_secs(5)).await;
    let mut client = h.client().await;
    let mut open_streams = Vec::new();
    for _ in 0..3 {
        let (tx, stream) = open(&mut client).await;
        let mut stream = stream.expect("within the limit");
        assert_eq!(next(&mut stream).await.expect("CDS").type_url, CDS);
        open_streams.push((tx, stream));
    }
    for _ in 0..2 {
        let (_tx, refused) = open(&mut client).await;
        let status = refused.expect_err("beyond the limit");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("too many ADS streams"),
            "{status:?}"
        );
    }
    let last = h.registry.rejections().pop().expect("listed");
    assert_eq!(last.reason, "overloaded");

    // The first stream keeps working: it ACKs, subscribes to an endpoint, and gets a change.
    let (tx, stream) = &mut open_streams[0];
    tx.send(DiscoveryRequest {
        type_url: EDS.into(),
        resource_names: vec![ECHO.into()],
        ..Default::default()
    })
    .await
    .expect("send");
    let eds = next(stream).await.expect("EDS");
    assert_eq!(eds.type_url, EDS);
    tx.send(DiscoveryRequest {
        type_url: EDS.into(),
        resource_names: vec![ECHO.into()],
        version_info: eds.version_info.clone(),
        response_nonce: eds.nonce.clone(),
        ..Default::default()
    })
    .await
    .expect("ack");
    h.add_gamma_echo(1);
    let update = next(stream).await.expect("EDS update");
    assert_eq!(update.type_url, EDS);
    assert_ne!(update.version_info, eds.version_info);

    // Another connection is not limited by this one's streams.
    served(&h).await;
}

#[tokio::test]
async fn stalled_handshakes_garbage_and_plaintext_do_not_keep_a_proxy_from_its_config() {
    // Few crypto slots and a long handshake timeout: the stalled connections stay open for the
    // whole test, and a real client must still be served at once.
    let limits = XdsLimits {
        max_concurrent_handshakes: 2,
        ..XdsLimits::default()
    };
    let h = Harness::start_with(Duration::from_millis(20), limits, Duration::from_secs(60)).await;
    let mut held = Vec::new();
    // Silent connections.
    for _ in 0..40 {
        held.push(TcpStream::connect(h.addr).await.expect("connect"));
    }
    // Slowloris: the first bytes of a ClientHello record, then nothing.
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(h.addr).await.expect("connect");
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .expect("write");
        held.push(tcp);
    }
    // Garbage and plaintext HTTP/2: refused and closed.
    let mut refused = Vec::new();
    for i in 0..5u8 {
        let mut tcp = TcpStream::connect(h.addr).await.expect("connect");
        let garbage: Vec<u8> = (0..512u32)
            .map(|n| (n.wrapping_mul(31) as u8) ^ i)
            .collect();
        tcp.write_all(&garbage).await.expect("write");
        refused.push(tcp);
    }
    for _ in 0..5 {
        let mut tcp = TcpStream::connect(h.addr).await.expect("connect");
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .expect("write");
        refused.push(tcp);
    }

    served(&h).await;

    for tcp in refused {
        closed_by_server(tcp).await;
    }
    let tls = h
        .registry
        .rejections()
        .iter()
        .filter(|r| r.reason == "tls")
        .count();
    assert!(
        tls >= 10,
        "garbage and plaintext refused: {:?}",
        h.registry.rejections()
    );
    // Still served with the stalled ones open.
    served(&h).await;
    drop(held);
}

#[tokio::test]
async fn connections_beyond_the_pending_handshake_bound_are_closed_at_once() {
    let limits = XdsLimits {
        max_pending_handshakes: 3,
        ..XdsLimits::default()
    };
    let h = Harness::start_with(Duration::from_millis(20), limits, Duration::from_secs(60)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(h.addr).await.expect("connect"));
    }
    let extra = TcpStream::connect(h.addr).await.expect("connect");
    closed_by_server(extra).await;
    let last = h.registry.rejections().pop().expect("listed");
    assert_eq!(last.reason, "overloaded", "{last:?}");
    assert!(last.message.contains("TLS handshake"), "{last:?}");
    drop(held);
}

#[tokio::test]
async fn connections_beyond_the_total_are_closed_at_once_and_the_open_ones_keep_working() {
    let limits = XdsLimits {
        max_connections: 2,
        ..XdsLimits::default()
    };
    let h = Harness::start_with(Duration::from_millis(20), limits, Duration::from_secs(5)).await;
    let mut first = h.client().await;
    let (_tx1, s1) = open(&mut first).await;
    next(&mut s1.expect("accepted")).await.expect("CDS");
    let mut second = h.client().await;
    let (_tx2, s2) = open(&mut second).await;
    next(&mut s2.expect("accepted")).await.expect("CDS");

    let extra = TcpStream::connect(h.addr).await.expect("connect");
    closed_by_server(extra).await;
    let last = h.registry.rejections().pop().expect("listed");
    assert_eq!(last.reason, "overloaded", "{last:?}");
    assert!(last.message.contains("connections open"), "{last:?}");

    // An open connection still opens streams.
    let (_tx3, s3) = open(&mut first).await;
    next(&mut s3.expect("accepted")).await.expect("CDS");
}

/// A request with `bytes` of resource names.
fn big_request(bytes: usize) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node("client")),
        type_url: EDS.into(),
        resource_names: vec!["x".repeat(bytes)],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_first_request_over_the_size_limit_is_refused_with_out_of_range() {
    let h = Harness::start(Duration::from_millis(20)).await;
    let mut client = h.client().await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(big_request(MAX_REQUEST_BYTES + 1))
        .await
        .expect("send");
    let status = tokio::time::timeout(
        ANSWER,
        client.stream_aggregated_resources(ReceiverStream::new(rx)),
    )
    .await
    .expect("answered in time")
    .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    assert!(h.registry.proxies().is_empty());
    // The server keeps serving.
    served(&h).await;
}

#[tokio::test]
async fn a_later_request_over_the_size_limit_ends_the_stream_with_out_of_range() {
    let h = Harness::start(Duration::from_millis(20)).await;
    let mut client = h.client().await;
    let (tx, stream) = open(&mut client).await;
    let mut stream = stream.expect("accepted");
    next(&mut stream).await.expect("CDS");
    tx.send(big_request(MAX_REQUEST_BYTES + 1))
        .await
        .expect("send");
    let status = loop {
        match tokio::time::timeout(ANSWER, stream.next())
            .await
            .expect("an answer in time")
        {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("the stream ended without a status"),
        }
    };
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    // A request just under the limit is fine.
    let (_tx, stream) = open(&mut client).await;
    let mut stream = stream.expect("accepted");
    next(&mut stream).await.expect("CDS");
    drop(tx);
}

#[tokio::test]
async fn delta_subscriptions_are_bounded() {
    let h = Harness::start(Duration::from_millis(20)).await;
    let mut client = h.client().await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: Some(node("client")),
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .expect("send");
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("accepted")
        .into_inner();
    let first = tokio::time::timeout(ANSWER, stream.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("CDS");
    assert_eq!(first.type_url, CDS);
    // Each request stays under the message limit; together they pass the subscription bound.
    let chunk = MAX_REQUEST_BYTES / 4;
    let status = 'outer: {
        for i in 0..8 {
            let name = format!("{i}-{}", "y".repeat(chunk));
            let sent = tx
                .send(DeltaDiscoveryRequest {
                    type_url: EDS.into(),
                    resource_names_subscribe: vec![name],
                    ..Default::default()
                })
                .await;
            if sent.is_err() {
                break; // the server already ended the stream
            }
        }
        loop {
            match tokio::time::timeout(ANSWER, stream.next())
                .await
                .expect("an answer in time")
            {
                Some(Ok(_)) => continue,
                Some(Err(status)) => break 'outer status,
                None => panic!("the stream ended without a status"),
            }
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("subscribed"), "{status:?}");
    served(&h).await;
}
