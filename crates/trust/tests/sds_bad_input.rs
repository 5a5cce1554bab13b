//! Bad input on the agent's SDS socket (plaintext gRPC over a Unix socket): broken HTTP/2
//! closes that connection; a message that is not protobuf, or one over
//! [`MAX_REQUEST_BYTES`], ends its call without a secret. The agent keeps running, an open
//! stream keeps receiving rotations, and other SDS clients get their certificate afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use causeway_trust::agent::Agent;
use causeway_trust::ca::RootCa;
use causeway_trust::sds::{SdsServer, MAX_REQUEST_BYTES, SECRET_TYPE};
use common::*;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::bytes::BufMut;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// How long the server may take to answer or close.
const ANSWER: Duration = Duration::from_secs(10);

const FETCH_PATH: &str = "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets";
const STREAM_PATH: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";

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

/// A running agent (issued by a real CA) and its SDS server on a socket in a temporary
/// directory.
struct Sds {
    agent: Arc<Agent>,
    path: PathBuf,
    server: tokio::task::JoinHandle<Result<(), causeway_trust::sds::SdsError>>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
    _ca: tokio::sync::oneshot::Sender<()>,
    _run: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn start() -> Sds {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let (addr, ca, _task) = start_ca(ca_service(&root)).await;
    let agent = agent(addr, &root, "tok-alpha-client", "client");
    let run = AbortOnDrop(tokio::spawn(Arc::clone(&agent).run()));
    wait_cert(&agent, 1).await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("sds.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = SdsServer::new(agent.certificates());
    let p = path.clone();
    let server = tokio::spawn(async move {
        server
            .serve(&p, async move {
                let _ = stopped.await;
            })
            .await
    });
    // Bounded wait for the socket.
    for _ in 0..250 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(path.exists(), "the SDS socket appears");
    Sds {
        agent,
        path,
        server,
        _dir: dir,
        _stop: stop,
        _ca: ca,
        _run: run,
    }
}

async fn channel(path: &Path) -> Channel {
    let socket = path.to_path_buf();
    tonic::transport::Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect over the Unix socket")
}

fn wanted() -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: vec!["default".into(), "ROOTCA".into()],
        type_url: SECRET_TYPE.into(),
        ..Default::default()
    }
}

async fn next(stream: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(ANSWER, stream.next())
        .await
        .expect("a response in time")
        .expect("stream open")
        .expect("a response")
}

/// A well-behaved proxy's StreamSecrets: its sender, its stream and the first response.
async fn proxy_stream(
    path: &Path,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    Streaming<DiscoveryResponse>,
    DiscoveryResponse,
) {
    let mut client = SecretDiscoveryServiceClient::new(channel(path).await);
    let (tx, rx) = mpsc::channel(4);
    tx.send(wanted()).await.expect("send");
    let mut stream = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let first = next(&mut stream).await;
    assert_eq!(first.type_url, SECRET_TYPE);
    assert_eq!(first.resources.len(), 2, "default and ROOTCA");
    (tx, stream, first)
}

/// Another SDS client, on a new connection, fetches the agent's current certificate.
async fn another_client_is_served(sds: &Sds) {
    let mut client = SecretDiscoveryServiceClient::new(channel(&sds.path).await);
    let fetched = tokio::time::timeout(ANSWER, client.fetch_secrets(wanted()))
        .await
        .expect("answered in time")
        .expect("fetched")
        .into_inner();
    let current = sds.agent.current().expect("a certificate");
    assert_eq!(fetched.version_info, current.generation.to_string());
    assert_eq!(fetched.resources.len(), 2);
    assert!(!sds.server.is_finished(), "the SDS server still runs");
}

/// The open stream receives the next rotation: the agent and its stream survived.
async fn rotation_arrives(
    sds: &Sds,
    tx: &mpsc::Sender<DiscoveryRequest>,
    stream: &mut Streaming<DiscoveryResponse>,
    last: &DiscoveryResponse,
) {
    tx.send(DiscoveryRequest {
        version_info: last.version_info.clone(),
        response_nonce: last.nonce.clone(),
        ..wanted()
    })
    .await
    .expect("ack");
    sds.agent.force_rotate();
    let pushed = next(stream).await;
    assert_ne!(pushed.version_info, last.version_info, "a new version");
}

/// Reads until the server closes the connection and returns what it sent; panics if it stays
/// open past `ANSWER`.
async fn read_until_closed(s: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(ANSWER, async {
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

#[tokio::test]
async fn broken_http2_on_the_sds_socket_closes_that_connection_and_others_are_served() {
    let sds = start().await;
    let (tx, mut stream, first) = proxy_stream(&sds.path).await;
    let cases: [(&str, Vec<u8>, Option<u32>); 4] = [
        // Not HTTP/2 at all: closed without a GOAWAY.
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
        let mut raw = UnixStream::connect(&sds.path).await.expect("connect");
        raw.write_all(&bytes).await.expect("write");
        let sent = read_until_closed(&mut raw).await;
        assert_eq!(goaway_code(&sent), goaway, "{what}: {sent:?}");
    }
    another_client_is_served(&sds).await;
    rotation_arrives(&sds, &tx, &mut stream, &first).await;
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

async fn grpc(path: &Path) -> tonic::client::Grpc<Channel> {
    let mut grpc = tonic::client::Grpc::new(channel(path).await);
    tokio::time::timeout(ANSWER, grpc.ready())
        .await
        .expect("ready in time")
        .expect("ready");
    grpc
}

/// FetchSecrets with `body` as its message.
async fn fetch_raw(path: &Path, body: Vec<u8>) -> Result<DiscoveryResponse, Status> {
    let mut grpc = grpc(path).await;
    tokio::time::timeout(
        ANSWER,
        grpc.unary(
            tonic::Request::new(body),
            PathAndQuery::from_static(FETCH_PATH),
            RawCodec,
        ),
    )
    .await
    .expect("answered in time")
    .map(tonic::Response::into_inner)
}

/// StreamSecrets whose first message is `body`: how it ends, having sent no secret (`None`:
/// closed without an error status).
async fn stream_raw_ends(path: &Path, body: Vec<u8>) -> Option<Status> {
    let mut grpc = grpc(path).await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(body).await.expect("send");
    let opened = tokio::time::timeout(
        ANSWER,
        grpc.streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(STREAM_PATH),
            RawCodec,
        ),
    )
    .await
    .expect("answered in time");
    let mut stream = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => return Some(status),
    };
    let end = tokio::time::timeout(ANSWER, stream.next())
        .await
        .expect("the stream ends in time");
    match end {
        Some(Ok(r)) => panic!("a response to a bad message: {r:?}"),
        Some(Err(status)) => Some(status),
        None => None,
    }
}

#[tokio::test]
async fn a_message_that_is_not_protobuf_gets_no_secret_and_others_are_served() {
    let sds = start().await;
    let (tx, mut stream, first) = proxy_stream(&sds.path).await;
    // A tag whose varint never ends.
    let garbage = vec![0xff; 16];

    let status = fetch_raw(&sds.path, garbage.clone())
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(
        status
            .message()
            .contains("failed to decode Protobuf message"),
        "{status:?}"
    );
    // The stream ends with the decode error, no secret sent.
    let status = stream_raw_ends(&sds.path, garbage)
        .await
        .expect("the stream ends with the error");
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");

    another_client_is_served(&sds).await;
    rotation_arrives(&sds, &tx, &mut stream, &first).await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_gets_out_of_range_and_others_are_served() {
    let sds = start().await;
    let (tx, mut stream, first) = proxy_stream(&sds.path).await;
    let request = |bytes: usize| {
        DiscoveryRequest {
            resource_names: vec!["default".into(), "x".repeat(bytes)],
            ..wanted()
        }
        .encode_to_vec()
    };

    let status = fetch_raw(&sds.path, request(MAX_REQUEST_BYTES))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status
            .message()
            .contains("decoded message length too large")
            && status
                .message()
                .contains(&format!("the limit is: {MAX_REQUEST_BYTES} bytes")),
        "{status:?}"
    );
    let status = stream_raw_ends(&sds.path, request(MAX_REQUEST_BYTES))
        .await
        .expect("the stream ends with the error");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    // A large request well under the limit (an Envoy's first request, its node listing every
    // extension, is about 60 KiB) is answered.
    let fetched = fetch_raw(&sds.path, request(1024 * 1024))
        .await
        .expect("a 1 MiB request is answered");
    assert_eq!(
        fetched.resources.len(),
        1,
        "default (the long name is unknown)"
    );

    another_client_is_served(&sds).await;
    rotation_arrives(&sds, &tx, &mut stream, &first).await;
}
