//! Copying both ways: payloads intact, buffers that grow with the flow, half-close, resets and
//! idle timeouts, over duplex pipes, TCP and TLS.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use std::io;
use std::time::Duration;

use causeway_proxy::copy::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

const MIB: usize = 1024 * 1024;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// Writes `payload` and half-closes, while reading everything the other side sends.
async fn exchange<S: AsyncRead + AsyncWrite>(stream: S, payload: Vec<u8>) -> Vec<u8> {
    let (mut read, mut write) = tokio::io::split(stream);
    let send = async move {
        for chunk in payload.chunks(64 * 1024) {
            write.write_all(chunk).await.unwrap();
        }
        write.shutdown().await.unwrap();
    };
    let receive = async move {
        let mut got = Vec::new();
        read.read_to_end(&mut got).await.unwrap();
        got
    };
    tokio::join!(send, receive).1
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

#[test]
fn buffers_grow_only_with_bulk_flow() {
    assert_eq!(
        next_buffer_size(INITIAL_BUFFER, 100 * 1024, true),
        INITIAL_BUFFER
    );
    assert_eq!(
        next_buffer_size(INITIAL_BUFFER, LARGE_AFTER, true),
        LARGE_BUFFER
    );
    assert_eq!(
        next_buffer_size(INITIAL_BUFFER, LARGE_AFTER, false),
        INITIAL_BUFFER
    );
    assert_eq!(
        next_buffer_size(LARGE_BUFFER, JUMBO_AFTER - 1, true),
        LARGE_BUFFER
    );
    assert_eq!(
        next_buffer_size(LARGE_BUFFER, JUMBO_AFTER, true),
        JUMBO_BUFFER
    );
    assert_eq!(next_buffer_size(JUMBO_BUFFER, 1, false), JUMBO_BUFFER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_mib_each_way_through_duplex_pipes_grow_the_buffers() {
    let (client, proxy_a) = tokio::io::duplex(MIB);
    let (proxy_b, server) = tokio::io::duplex(MIB);
    let (up, down) = (random_bytes(20 * MIB, 1), random_bytes(20 * MIB, 2));
    let counters = Arc::new(Counters::default());
    let c = Arc::clone(&counters);
    let copy = tokio::spawn(async move { copy_with(proxy_a, proxy_b, None, &c).await });
    let (at_server, at_client) =
        tokio::join!(exchange(server, down.clone()), exchange(client, up.clone()));
    let t = copy.await.unwrap().unwrap();
    assert!(
        at_server == up && at_client == down,
        "payload changed on the way"
    );
    let n = u64::try_from(20 * MIB).unwrap();
    assert_eq!((t.a_to_b, t.b_to_a, t.end), (n, n, End::Closed));
    assert_eq!(counters.buffers(), (JUMBO_BUFFER, JUMBO_BUFFER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_mib_each_way_over_tcp() {
    let ((client, proxy_a), (proxy_b, server)) = tokio::join!(tcp_pair(), tcp_pair());
    let (up, down) = (random_bytes(20 * MIB, 3), random_bytes(20 * MIB, 4));
    let counters = Arc::new(Counters::default());
    let c = Arc::clone(&counters);
    let copy = tokio::spawn(async move {
        let (a, b) = (proxy_a.into_split(), proxy_b.into_split());
        copy_halves(a, b, None, &c).await
    });
    let (at_server, at_client) =
        tokio::join!(exchange(server, down.clone()), exchange(client, up.clone()));
    let t = copy.await.unwrap().unwrap();
    assert!(
        at_server == up && at_client == down,
        "payload changed on the way"
    );
    assert_eq!((t.a_to_b, t.b_to_a), (up.len() as u64, down.len() as u64));
    let (ab, ba) = counters.buffers();
    assert!(ab >= LARGE_BUFFER && ba >= LARGE_BUFFER, "{ab} {ba}");
}

/// The client half-closes after its request; the server answers after seeing the end.
async fn request_then_response<C, S>(mut client: C, mut server: S)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"request");
    server.write_all(b"response").await.unwrap();
    server.shutdown().await.unwrap();
    got.clear();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"response");
}

#[tokio::test]
async fn half_close_is_passed_on_and_the_other_way_goes_on() {
    let (client, a) = tokio::io::duplex(1024);
    let (b, server) = tokio::io::duplex(1024);
    let copy = tokio::spawn(copy_bidirectional(a, b, None));
    request_then_response(client, server).await;
    let t = copy.await.unwrap().unwrap();
    assert_eq!((t.a_to_b, t.b_to_a, t.end), (7, 8, End::Closed));

    let ((client, a), (b, server)) = tokio::join!(tcp_pair(), tcp_pair());
    let copy = tokio::spawn(copy_bidirectional(a, b, None));
    request_then_response(client, server).await;
    let t = copy.await.unwrap().unwrap();
    assert_eq!((t.a_to_b, t.b_to_a, t.end), (7, 8, End::Closed));
}

#[tokio::test]
async fn a_reset_ends_the_copy_without_an_error() {
    let ((client, a), (b, mut server)) = tokio::join!(tcp_pair(), tcp_pair());
    let copy = tokio::spawn(copy_bidirectional(a, b, None));
    let mut client = client;
    client.write_all(b"hello").await.unwrap();
    let mut got = [0; 5];
    server.read_exact(&mut got).await.unwrap();
    client.set_zero_linger().unwrap();
    drop(client); // RST, while the server stays open and quiet.
    let t = copy.await.unwrap().unwrap();
    assert_eq!((t.a_to_b, t.b_to_a, t.end), (5, 0, End::Reset));
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

/// Reads fail with `kind`; writes succeed.
struct Failing(io::ErrorKind);

impl AsyncRead for Failing {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::Error::new(self.0, "test failure")))
    }
}

impl AsyncWrite for Failing {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn other_io_errors_are_errors() {
    let (_peer, b) = tokio::io::duplex(1024);
    let e = copy_bidirectional(Failing(io::ErrorKind::PermissionDenied), b, None)
        .await
        .unwrap_err();
    assert_eq!((e.direction, e.op), (Direction::AToB, Op::Read));
    assert_eq!(
        e.to_string(),
        "copying a to b: reading failed: test failure"
    );
    let (_peer, b) = tokio::io::duplex(1024);
    let t = copy_bidirectional(Failing(io::ErrorKind::ConnectionReset), b, None).await;
    assert_eq!(t.unwrap().end, End::Reset);
}

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_counts_from_the_last_byte() {
    let (mut client, a) = tokio::io::duplex(1024);
    let (b, mut server) = tokio::io::duplex(1024);
    let start = Instant::now();
    let copy = tokio::spawn(copy_bidirectional(a, b, Some(Duration::from_secs(30))));
    tokio::time::sleep(Duration::from_secs(20)).await;
    client.write_all(b"x").await.unwrap();
    let mut got = [0; 1];
    server.read_exact(&mut got).await.unwrap();
    let t = copy.await.unwrap().unwrap();
    assert_eq!((t.a_to_b, t.end), (1, End::Idle));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(50) && took < Duration::from_secs(51),
        "{took:?}"
    );
}

/// A TLS server stream (tokio-rustls) on one side: close_notify is the half-close.
#[tokio::test]
async fn works_on_tls_streams() {
    let key = rcgen::generate_simple_self_signed(vec!["backend.example".into()]).unwrap();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![key.cert.der().clone()], der)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(key.cert.der().clone()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (client, a): (DuplexStream, DuplexStream) = tokio::io::duplex(4096);
    let (b, server) = tokio::io::duplex(4096);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let name = ServerName::try_from("backend.example").unwrap();
    let (client, a) = tokio::join!(connector.connect(name, client), acceptor.accept(a));
    let copy = tokio::spawn(copy_bidirectional(a.unwrap(), b, None));
    request_then_response(client.unwrap(), server).await;
    let t = copy.await.unwrap().unwrap();
    assert_eq!((t.a_to_b, t.b_to_a, t.end), (7, 8, End::Closed));
}
