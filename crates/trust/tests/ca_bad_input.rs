//! Bad input inside an established TLS session on the CA port: broken HTTP/2 closes that
//! connection; a request over 64 KiB is refused with `OUT_OF_RANGE` before it is buffered;
//! headers over 16 KiB are refused; a message that is not protobuf gets `INVALID_ARGUMENT`.
//! Nothing is issued for any of them, and an agent is issued certificates meanwhile and after.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_trust::ca::RootCa;
use causeway_trust::service::{
    ca_identity, SignRequest, SignResponse, CA_SERVER_NAME, MAX_REQUEST_BYTES, REASON_METADATA,
    SIGN_PATH,
};
use causeway_trust::verify::SpiffeServerVerifier;
use common::*;
use prost::bytes::BufMut;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Status;

/// How long the server may take to answer or close.
const ANSWER: Duration = Duration::from_secs(10);

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

/// A TLS client config that checks the CA's identity, as the agent's does (ALPN h2).
fn client_tls(root: &RootCa) -> tokio_rustls::TlsConnector {
    let verifier =
        SpiffeServerVerifier::new(root.cert_pem(), TD, vec![ca_identity(TD)]).expect("verifier");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(verifier))
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection to the CA, handshake done, nothing sent on it yet.
async fn tls_session(
    addr: SocketAddr,
    root: &RootCa,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(CA_SERVER_NAME).expect("name");
    tokio::time::timeout(ANSWER, client_tls(root).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("TLS handshake with the CA")
}

/// Reads until the server closes the connection (EOF, or a TLS error such as a missing
/// close_notify) and returns what it sent; panics if it stays open past `ANSWER`.
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
async fn broken_http2_inside_a_tls_session_closes_that_connection_and_agents_are_served() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let ca = ca_service(&root);
    let (addr, _stop, _task) = start_ca(Arc::clone(&ca)).await;
    let agent = agent(addr, &root, "tok-alpha-client", "client");
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
    let mut issued = 0;
    for (what, bytes, goaway) in cases {
        let mut tls = tls_session(addr, &root).await;
        // Served while this session is open, its handshake done.
        agent
            .renew()
            .await
            .unwrap_or_else(|e| panic!("{what}: agent refused while a session is open: {e}"));
        issued += 1;
        tls.write_all(&bytes).await.expect("write");
        let sent = read_until_closed(&mut tls).await;
        assert_eq!(goaway_code(&sent), goaway, "{what}: {sent:?}");
    }
    agent
        .renew()
        .await
        .expect("served after the broken sessions were closed");
    issued += 1;
    assert_eq!(ca.issued_count(&cid("alpha")), issued, "only the agent's");
    // Every handshake succeeded: the garbage really arrived inside TLS (and is not counted as
    // a handshake failure).
    assert_eq!(ca.handshake_failure_count("tls"), 0);
}

/// A codec that sends raw bytes as gRPC messages and decodes `SignResponse`s.
#[derive(Default)]
struct RawCodec;
struct RawEncoder;
struct ResponseDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = SignResponse;
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
    type Item = SignResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<SignResponse>, Status> {
        SignResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// Calls `Sign` over TLS with `body` as the message and `pad` bytes of extra metadata; the
/// CA's answer or status.
async fn sign_raw(
    addr: SocketAddr,
    root: &RootCa,
    body: Vec<u8>,
    pad: usize,
) -> Result<SignResponse, Status> {
    let connector = client_tls(root);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from(CA_SERVER_NAME)
                    .map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(body);
    if pad > 0 {
        let value = "p".repeat(pad).parse().expect("metadata value");
        request.metadata_mut().insert("x-pad", value);
    }
    tokio::time::timeout(
        ANSWER,
        grpc.unary(request, PathAndQuery::from_static(SIGN_PATH), RawCodec),
    )
    .await
    .expect("answered in time")
    .map(tonic::Response::into_inner)
}

/// A well-formed request for alpha/client whose CSR is `csr`.
fn sign_request(csr: String) -> Vec<u8> {
    SignRequest {
        csr_pem: csr,
        token: "tok-alpha-client".into(),
        ttl_seconds: 0,
        cluster: String::new(),
    }
    .encode_to_vec()
}

#[tokio::test]
async fn a_request_over_64_kib_is_refused_with_out_of_range_and_agents_are_served() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let ca = ca_service(&root);
    let (addr, _stop, _task) = start_ca(Arc::clone(&ca)).await;
    let agent = agent(addr, &root, "tok-alpha-client", "client");

    let status = sign_raw(addr, &root, sign_request("A".repeat(MAX_REQUEST_BYTES)), 0)
        .await
        .expect_err("a request over the limit is refused");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status
            .message()
            .contains("decoded message length too large")
            && status.message().contains("the limit is: 65536 bytes"),
        "{status:?}"
    );
    // Refused before `Sign` looked at it: no reason of the CA's, nothing counted.
    assert!(status.metadata().get(REASON_METADATA).is_none());
    assert_eq!(ca.rejection_count("bad_csr"), 0);

    // Just under the limit, the request reaches `Sign` (and its CSR, over 16 KiB, is refused).
    let status = sign_raw(
        addr,
        &root,
        sign_request("A".repeat(MAX_REQUEST_BYTES - 64)),
        0,
    )
    .await
    .expect_err("an oversized CSR is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get(REASON_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some("bad_csr")
    );
    assert_eq!(ca.rejection_count("bad_csr"), 1);
    assert_eq!(ca.issued_count(&cid("alpha")), 0);

    agent.renew().await.expect("an agent is served after");
    assert_eq!(ca.issued_count(&cid("alpha")), 1);
}

#[tokio::test]
async fn request_headers_over_16_kib_are_refused_and_agents_are_served() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let ca = ca_service(&root);
    let (addr, _stop, _task) = start_ca(Arc::clone(&ca)).await;
    let agent = agent(addr, &root, "tok-alpha-client", "client");
    let csr = || {
        let key = causeway_trust::issue::WorkloadKey::generate().expect("key");
        key.csr_pem(&causeway_model::SpiffeId::new(TD, "demo", "client"))
            .expect("csr")
    };

    // h2 answers the oversized header block with HTTP 431 and resets the stream; gRPC has no
    // status for that, so the client sees UNKNOWN naming the HTTP status.
    let status = sign_raw(addr, &root, sign_request(csr()), 20 * 1024)
        .await
        .expect_err("oversized headers are refused");
    assert_eq!(status.code(), tonic::Code::Unknown, "{status:?}");
    assert!(
        status
            .message()
            .contains("mapped from HTTP status code 431"),
        "{status:?}"
    );
    assert_eq!(ca.issued_count(&cid("alpha")), 0, "nothing issued");

    // The same well-formed request with small headers is signed; so is the agent's.
    sign_raw(addr, &root, sign_request(csr()), 1024)
        .await
        .expect("signed with headers under the limit");
    agent.renew().await.expect("an agent is served after");
    assert_eq!(ca.issued_count(&cid("alpha")), 2);
}

#[tokio::test]
async fn a_message_that_is_not_protobuf_is_refused_with_invalid_argument() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let ca = ca_service(&root);
    let (addr, _stop, _task) = start_ca(Arc::clone(&ca)).await;
    let agent = agent(addr, &root, "tok-alpha-client", "client");

    // A tag whose varint never ends.
    let status = sign_raw(addr, &root, vec![0xff; 16], 0)
        .await
        .expect_err("not protobuf");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("malformed message"),
        "{status:?}"
    );
    assert!(status.metadata().get(REASON_METADATA).is_none());
    assert_eq!(ca.issued_count(&cid("alpha")), 0);

    agent.renew().await.expect("an agent is served after");
    assert_eq!(ca.issued_count(&cid("alpha")), 1);
}
