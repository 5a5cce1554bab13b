//! Garbage inside an established mTLS session on the xDS port: a client with a valid mesh
//! certificate that completes its handshake and then sends broken HTTP/2, or gRPC messages that
//! are not protobuf. Its connection (broken HTTP/2) or its stream (undecodable message) ends
//! with an error; nothing is registered for it, and the other proxies keep being served.

mod common;

use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::bytes::BufMut;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Status, Streaming};

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// The HTTP/2 connection preface a client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: a well-formed start of a connection.
const SETTINGS: &[u8] = &[0, 0, 0, 0x4, 0, 0, 0, 0, 0];
/// HTTP/2 frame type GOAWAY.
const GOAWAY: u8 = 0x7;
/// HTTP/2 error code PROTOCOL_ERROR.
const PROTOCOL_ERROR: u32 = 0x1;
/// HTTP/2 error code FRAME_SIZE_ERROR.
const FRAME_SIZE_ERROR: u32 = 0x6;

/// Reads until the server closes the connection (EOF, or a TLS error such as a missing
/// close_notify) and returns what it sent; panics if it stays open past [`SERVED_WITHIN`].
async fn read_until_closed(s: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(SERVED_WITHIN, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection");
    out
}

/// The error code of the first GOAWAY frame among the complete HTTP/2 frames in `bytes`.
fn goaway_code(mut bytes: &[u8]) -> Option<u32> {
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let kind = bytes[3];
        let payload = bytes.get(9..9 + len)?;
        if kind == GOAWAY && payload.len() >= 8 {
            return Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
        bytes = &bytes[9 + len..];
    }
    None
}

async fn next(stream: &mut Streaming<DiscoveryResponse>) -> Result<DiscoveryResponse, Status> {
    tokio::time::timeout(SERVED_WITHIN, stream.next())
        .await
        .expect("a message in time")
        .expect("stream open")
}

/// A SotW stream claiming "client" on `channel`'s connection gets its clusters.
async fn served_on(channel: tonic::transport::Channel) {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (_tx, opened) = first_cds(&mut client, node("client")).await;
    assert_eq!(opened.expect("served").0.type_url, CDS);
}

#[tokio::test]
async fn broken_http2_inside_an_mtls_session_closes_that_connection_and_others_are_served() {
    let h = Harness::start(Duration::from_millis(20)).await;
    let (_beta_tx, _beta_stream) = h.beta_proxy().await;
    let leaf = h.pki.leaf("alpha", "demo", "client");
    let cases: [(&str, Vec<u8>, Option<u32>); 4] = [
        // Not HTTP/2 at all after the handshake: closed without a GOAWAY.
        (
            "no preface",
            (0..512u32).map(|n| n.wrapping_mul(37) as u8).collect(),
            None,
        ),
        // A HEADERS frame on stream 0 (only connection frames may use it).
        (
            "headers on stream 0",
            [
                PREFACE,
                SETTINGS,
                &[0, 0, 8, 0x1, 0x5, 0, 0, 0, 0],
                &[0xde, 0xad, 0xbe, 0xef, 0xff, 0xfe, 0xfd, 0xfc],
            ]
            .concat(),
            Some(PROTOCOL_ERROR),
        ),
        // A SETTINGS frame whose length is not a multiple of 6 (h2 answers PROTOCOL_ERROR).
        (
            "torn settings",
            [
                PREFACE,
                SETTINGS,
                &[0, 0, 5, 0x4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5],
            ]
            .concat(),
            Some(PROTOCOL_ERROR),
        ),
        // A frame announcing 1 MiB, beyond the 16 KiB frame size the server allows.
        (
            "oversized frame",
            [
                PREFACE,
                SETTINGS,
                &[0x10, 0, 0, 0x0, 0, 0, 0, 0, 1],
                &[0x55; 64],
            ]
            .concat(),
            Some(FRAME_SIZE_ERROR),
        ),
    ];
    for (what, bytes, goaway) in cases {
        let mut tls = mtls_stream(h.addr, &h.pki.bundle_pem, &leaf)
            .await
            .unwrap_or_else(|e| panic!("{what}: handshake with a valid certificate: {e}"));
        // Beta is served while this connection is open with its handshake done.
        h.assert_served().await;
        tls.write_all(&bytes).await.expect("write");
        let sent = read_until_closed(&mut tls).await;
        assert_eq!(goaway_code(&sent), goaway, "{what}: {sent:?}");
    }
    // Nothing was connected for the garbage; beta still is, and new proxies are served.
    h.wait_connected(&["beta"]).await;
    h.assert_served().await;
}

/// A codec that sends raw bytes as gRPC messages and decodes DiscoveryResponses.
#[derive(Default)]
struct RawCodec;
struct RawEncoder;
struct ResponseDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = DiscoveryResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = DiscoveryResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DiscoveryResponse>, Status> {
        DiscoveryResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// Opens a SotW stream on `channel` whose messages are the raw bytes sent on the returned
/// sender; `first` is sent at once.
async fn raw_stream(
    channel: &tonic::transport::Channel,
    first: Vec<u8>,
) -> (
    mpsc::Sender<Vec<u8>>,
    Result<Streaming<DiscoveryResponse>, Status>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(first).await.expect("send");
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    tokio::time::timeout(SERVED_WITHIN, grpc.ready())
        .await
        .expect("ready in time")
        .expect("ready");
    let opened = tokio::time::timeout(
        SERVED_WITHIN,
        grpc.streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(SOTW_PATH),
            RawCodec,
        ),
    )
    .await
    .expect("answered in time")
    .map(tonic::Response::into_inner);
    (tx, opened)
}

/// Bytes that are no protobuf message: a tag whose varint never ends.
fn not_protobuf() -> Vec<u8> {
    vec![0xff; 16]
}

fn assert_undecodable(status: &Status) {
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(
        status
            .message()
            .contains("failed to decode Protobuf message"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_first_message_that_is_not_protobuf_refuses_the_stream_and_the_connection_serves_on() {
    let h = Harness::start(Duration::from_millis(20)).await;
    let (_beta_tx, _beta_stream) = h.beta_proxy().await;
    let leaf = h.pki.leaf("alpha", "demo", "client");
    let channel = mtls_channel(h.addr, &h.pki.bundle_pem, &leaf)
        .await
        .expect("connect");

    let (_tx, refused) = raw_stream(&channel, not_protobuf()).await;
    assert_undecodable(&refused.expect_err("an undecodable first message is refused"));
    h.wait_connected(&["beta"]).await;

    // The same connection opens a well-formed stream and gets its clusters; so does another.
    served_on(channel).await;
    h.assert_served().await;
}

#[tokio::test]
async fn a_later_message_that_is_not_protobuf_ends_the_stream_and_disconnects_the_proxy() {
    let h = Harness::start(Duration::from_millis(20)).await;
    let (_beta_tx, _beta_stream) = h.beta_proxy().await;
    let leaf = h.pki.leaf("alpha", "demo", "client");
    let channel = mtls_channel(h.addr, &h.pki.bundle_pem, &leaf)
        .await
        .expect("connect");
    let request = DiscoveryRequest {
        node: Some(node("client")),
        type_url: CDS.into(),
        ..Default::default()
    };
    let (tx, stream) = raw_stream(&channel, request.encode_to_vec()).await;
    let mut stream = stream.expect("a well-formed first request is accepted");
    assert_eq!(next(&mut stream).await.expect("CDS").type_url, CDS);
    assert_eq!(h.registry.proxies().len(), 2, "alpha's proxy connected");

    tx.send(not_protobuf()).await.expect("send");
    let status = loop {
        match tokio::time::timeout(SERVED_WITHIN, stream.next())
            .await
            .expect("an answer in time")
        {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("the stream ended without a status"),
        }
    };
    assert_undecodable(&status);
    // The stream's proxy is gone; beta's is untouched.
    h.wait_connected(&["beta"]).await;

    // The connection itself is fine: a new stream on it is served, and so is another client.
    served_on(channel).await;
    h.assert_served().await;
}
