//! The gateway's ClientHello parser on real rustls ClientHellos (classical and post-quantum,
//! fragmented, trickled), malformed inputs, and properties over arbitrary bytes.

use std::sync::Arc;

use proptest::prelude::*;
use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tokio::io::AsyncWriteExt;

use std::time::Duration;

use bytes::BytesMut;
use causeway_proxy::gateway::client_hello::*;
use tokio::io::AsyncReadExt;

const MESH_SNI: &str = "outbound_.9080_._.reviews.default.svc.cluster.local";

/// A real ClientHello from rustls, offering X25519MLKEM768 (and X25519) with `pq`.
fn rustls_hello(name: &str, alpn: &[&str], pq: bool, fragment: Option<usize>) -> Vec<u8> {
    let kx_groups = match pq {
        true => vec![kx_group::X25519MLKEM768, kx_group::X25519],
        false => vec![kx_group::X25519, kx_group::SECP256R1],
    };
    let provider = CryptoProvider {
        kx_groups,
        ..default_provider()
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.max_fragment_size = fragment;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// One post-quantum hello for the property tests (key generation is not free).
fn pq_hello() -> &'static [u8] {
    static HELLO: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    HELLO.get_or_init(|| rustls_hello(MESH_SNI, &["h2"], true, None))
}

/// The handshake bytes of `records`, wrapped again in records of `size` bytes.
fn refragment(records: &[u8], size: usize) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut rest = records;
    while !rest.is_empty() {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        payload.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    let mut out = Vec::new();
    for chunk in payload.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn with_len16(bytes: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn sni_extension(name: &[u8]) -> Vec<u8> {
    let mut entry = vec![0]; // host_name
    entry.extend(with_len16(name));
    with_len16(&entry)
}

/// A minimal single-record ClientHello with these extensions.
fn handmade(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([0; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    let mut exts = Vec::new();
    for (kind, data) in extensions {
        exts.extend(kind.to_be_bytes());
        exts.extend(with_len16(data));
    }
    body.extend(with_len16(&exts));
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut message = vec![1, len[1], len[2], len[3]]; // ClientHello
    message.extend(body);
    let mut record = vec![22, 3, 1];
    record.extend(with_len16(&message));
    record
}

fn done(buf: &[u8]) -> ClientHello {
    match parse(buf) {
        Ok(Parsed::Done(hello)) => hello,
        other => panic!("expected a ClientHello, got {other:?}"),
    }
}

fn error(buf: &[u8]) -> ClientHelloError {
    parse(buf).expect_err("expected an error")
}

#[test]
fn reads_sni_and_alpn_from_rustls() {
    let bytes = rustls_hello("Reviews.Default.svc", &["h2", "http/1.1"], false, None);
    let hello = done(&bytes);
    assert_eq!(hello.server_name.as_deref(), Some("reviews.default.svc"));
    assert_eq!(hello.alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(hello.len, bytes.len());
    let trailing = [&bytes[..], b"\x17\x03\x03"].concat();
    assert_eq!(done(&trailing), hello, "bytes after the hello are not read");
    let mesh = done(&rustls_hello(MESH_SNI, &[], false, None));
    assert_eq!(mesh.server_name.as_deref(), Some(MESH_SNI));
    assert!(mesh.alpn.is_empty());
}

#[test]
fn post_quantum_hellos_are_over_a_kib_and_parse() {
    let classical = rustls_hello(MESH_SNI, &["istio"], false, None);
    let pq = rustls_hello(MESH_SNI, &["istio"], true, None);
    assert!(pq.len() > 1024, "{} bytes", pq.len());
    assert!(pq.len() > classical.len() + 1000);
    let hello = done(&pq);
    assert_eq!(hello.server_name.as_deref(), Some(MESH_SNI));
    assert_eq!(hello.alpn, [b"istio".to_vec()]);
}

#[test]
fn a_hello_in_many_records_gives_the_same_result() {
    let single = rustls_hello(MESH_SNI, &["h2"], true, None);
    let expected = done(&single);
    let by_rustls = rustls_hello(MESH_SNI, &["h2"], true, Some(64));
    let mut inputs = vec![by_rustls];
    inputs.extend([1, 2, 3, 4, 5, 7, 100, 1000].map(|n| refragment(&single, n)));
    for input in inputs {
        let hello = done(&input);
        assert_eq!(hello.len, input.len());
        assert_eq!(
            ClientHello {
                len: single.len(),
                ..hello
            },
            expected
        );
    }
}

#[test]
fn every_prefix_needs_more_with_a_consistent_lower_bound() {
    let single = rustls_hello(MESH_SNI, &["h2"], true, None);
    for bytes in [single.clone(), refragment(&single, 3)] {
        for k in 0..bytes.len() {
            match parse(&bytes[..k]) {
                Ok(Parsed::NeedMore { at_least }) => {
                    assert!(k < at_least && at_least <= bytes.len(), "{k}: {at_least}")
                }
                other => panic!("prefix of {k} bytes: {other:?}"),
            }
        }
    }
}

#[test]
fn without_sni_when_connecting_to_an_address() {
    let hello = done(&rustls_hello("10.0.0.7", &["h2"], false, None));
    assert_eq!(hello.server_name, None);
    assert_eq!(hello.alpn, [b"h2".to_vec()]);
}

#[test]
fn plaintext_and_other_messages_are_refused_early() {
    let e = error(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(e, ClientHelloError::NotTls), "{e:?}");
    assert!(e.to_string().contains("plaintext or not TLS"), "{e}");
    assert!(matches!(error(b"G"), ClientHelloError::NotTls));
    assert!(matches!(error(b"\x16\x04"), ClientHelloError::NotTls));
    let server_hello = [22, 3, 3, 0, 40, 2];
    assert!(matches!(
        error(&server_hello),
        ClientHelloError::NotClientHello(2)
    ));
    // A 64 KiB handshake length is refused from its first record header.
    assert!(matches!(
        error(&[22, 3, 1, 0, 9, 1, 1, 0, 0]),
        ClientHelloError::TooLarge
    ));
    assert!(matches!(
        error(&[22, 3, 1, 0x40, 1]),
        ClientHelloError::Malformed(_)
    ));
}

#[test]
fn malformed_hellos_name_the_problem() {
    let sni = sni_extension(b"a.example");
    let two_names = with_len16(&[[0, 0, 1, b'a'], [0, 0, 1, b'b']].concat());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            handmade(&[(0, sni.clone()), (0, sni.clone())]),
            "duplicate extension",
        ),
        (handmade(&[(0, two_names)]), "more than one name"),
        (handmade(&[(0, vec![])]), "server_name extension"),
        (
            handmade(&[(16, with_len16(&[0]))]),
            "empty ALPN protocol name",
        ),
        (handmade(&[(16, with_len16(&[]))]), "ALPN extension"),
        (handmade(&[(16, vec![0, 5, 2, b'h'])]), "ALPN extension"),
    ];
    for (bytes, field) in cases {
        let e = error(&bytes);
        assert!(e.to_string().contains(field), "{e} (expected {field})");
    }
    // A record length one past the message: the extra byte sits in the last record.
    let mut extra = handmade(&[]);
    extra.push(0);
    extra[4] += 1;
    assert!(error(&extra)
        .to_string()
        .contains("bytes after the ClientHello"));
    // An alert record in the middle of a fragmented hello.
    let mut split = refragment(&handmade(&[]), 10);
    split[15] = 21;
    assert!(error(&split).to_string().contains("other than handshake"));
    let mut empty = refragment(&handmade(&[]), 10);
    empty.splice(0..0, [22, 3, 1, 0, 0]);
    assert!(error(&empty).to_string().contains("empty handshake record"));
}

#[test]
fn server_names_must_be_dns_names() {
    let long_label = format!("{}.example", "a".repeat(64));
    let long_name = ["abcdefghi"; 26].join(".");
    for name in [
        "-a.example",
        "a-.example",
        "a..example",
        "a.example.",
        "a b",
        "ä.example",
    ]
    .iter()
    .map(|s| s.as_bytes())
    .chain([long_label.as_bytes(), long_name.as_bytes(), b"a\x00b"])
    {
        let e = error(&handmade(&[(0, sni_extension(name))]));
        assert!(matches!(e, ClientHelloError::BadServerName { .. }), "{e:?}");
        assert!(e.to_string().contains("is not a DNS name"), "{e}");
    }
    let ok = [
        "a".repeat(63),
        ["abcdefghi"; 25].join("."),
        "xn--bcher-kva.example".into(),
    ];
    for name in ok {
        let hello = done(&handmade(&[(0, sni_extension(name.as_bytes()))]));
        assert_eq!(hello.server_name, Some(name));
    }
}

#[test]
fn error_messages_and_reasons() {
    let e = ClientHelloError::BadServerName {
        name: b"a\x00b".escape_ascii().to_string(),
        reason: "x",
    };
    assert_eq!(
        e.to_string(),
        "the ClientHello's server name (SNI) \"a\\x00b\" is not a DNS name: x"
    );
    assert_eq!(e.reason(), "bad_server_name");
    assert_eq!(
        ClientHelloError::TooLarge.to_string(),
        "the ClientHello is larger than 16384 bytes"
    );
}

#[tokio::test]
async fn read_client_hello_from_a_trickling_stream() {
    let hello = refragment(&rustls_hello(MESH_SNI, &["h2"], true, None), 100);
    let (mut client, mut server) = tokio::io::duplex(64);
    let sent = [hello.clone(), b"early data".to_vec()].concat();
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(7) {
            client.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
        client
    });
    let mut buf = BytesMut::new();
    let parsed = read_client_hello(&mut server, &mut buf, Duration::from_secs(5)).await;
    let parsed = parsed.unwrap();
    assert_eq!(parsed.server_name.as_deref(), Some(MESH_SNI));
    assert_eq!(parsed.len, hello.len());
    assert_eq!(&buf[..hello.len()], &hello[..]);
    drop(writer.await.unwrap());
    server.read_buf(&mut buf).await.unwrap();
    assert_eq!(
        &buf[hello.len()..],
        &b"early data"[..buf.len() - hello.len()]
    );
}

#[tokio::test]
async fn read_client_hello_stops_at_eof_and_at_the_limit() {
    let hello = rustls_hello(MESH_SNI, &[], false, None);
    let mut truncated = &hello[..hello.len() - 1];
    let mut buf = BytesMut::new();
    let e = read_client_hello(&mut truncated, &mut buf, Duration::from_secs(5)).await;
    assert!(matches!(e, Err(ClientHelloError::Closed { received }) if received == hello.len() - 1));
    // Endless one-byte records of a hello that claims 16000 bytes.
    let mut endless = [22, 3, 1, 0, 4, 1, 0, 0x3e, 0x80].to_vec();
    endless.extend([22, 3, 1, 0, 1, 0].repeat(4000));
    let mut buf = BytesMut::new();
    let e = read_client_hello(&mut &endless[..], &mut buf, Duration::from_secs(5)).await;
    assert!(matches!(e, Err(ClientHelloError::TooLarge)), "{e:?}");
    assert!(buf.len() <= MAX_CLIENT_HELLO, "{}", buf.len());
}

#[tokio::test(start_paused = true)]
async fn read_client_hello_times_out() {
    let hello = rustls_hello(MESH_SNI, &[], false, None);
    let (mut client, mut server) = tokio::io::duplex(4096);
    client.write_all(&hello[..100]).await.unwrap();
    let mut buf = BytesMut::new();
    let e = read_client_hello(&mut server, &mut buf, Duration::from_secs(10)).await;
    assert!(matches!(e, Err(ClientHelloError::Timeout(_))), "{e:?}");
    assert_eq!(
        e.unwrap_err().to_string(),
        "no complete ClientHello within 10s"
    );
    assert_eq!(buf.len(), 100);
}

/// Writes the fuzz target's seeds (real rustls hellos):
/// `cargo test -p causeway-proxy write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/seeds/client_hello"]
fn write_fuzz_seeds() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/client_hello");
    std::fs::create_dir_all(&dir).unwrap();
    let seeds = [
        (
            "mesh-sni-pq-h2",
            rustls_hello(MESH_SNI, &["h2"], true, None),
        ),
        (
            "mesh-sni-classical",
            rustls_hello(MESH_SNI, &[], false, None),
        ),
        (
            "dns-sni-h2-http11",
            rustls_hello("Reviews.Default.svc", &["h2", "http/1.1"], false, None),
        ),
        ("ip-no-sni", rustls_hello("10.0.0.7", &["h2"], false, None)),
        (
            "rustls-64-byte-records",
            rustls_hello(MESH_SNI, &["h2"], true, Some(64)),
        ),
        (
            "7-byte-records",
            refragment(&rustls_hello(MESH_SNI, &["istio"], false, None), 7),
        ),
        ("1-byte-records", refragment(pq_hello(), 1)),
        (
            "over-the-limit",
            [
                &[22, 3, 1, 0, 4, 1, 0, 0x3e, 0x80][..],
                &[22, 3, 1, 0, 1, 0].repeat(2900),
            ]
            .concat(),
        ),
        (
            "plaintext-http",
            b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n".to_vec(),
        ),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
    }
}

/// What must hold for any input: the bounds of `NeedMore`, `len` within the input, and a
/// result that depends only on a prefix (an error or a hello found in a prefix stays).
fn check_invariants(input: &[u8], cut: usize) {
    let full = parse(input);
    match &full {
        Ok(Parsed::NeedMore { at_least }) => {
            assert!(input.len() < *at_least && *at_least <= MAX_CLIENT_HELLO)
        }
        Ok(Parsed::Done(hello)) => {
            assert!(hello.len <= input.len());
            assert_eq!(done(&input[..hello.len]), *hello);
        }
        Err(_) => {}
    }
    let prefix = parse(&input[..cut.min(input.len())]);
    match prefix {
        Ok(Parsed::NeedMore { .. }) => {}
        other => assert_eq!(format!("{other:?}"), format!("{full:?}")),
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..600) {
        check_invariants(&input, cut);
        let mut framed = vec![22, 3, 1];
        framed.extend(with_len16(&input));
        check_invariants(&framed, cut);
    }

    #[test]
    fn mutated_hellos_keep_the_invariants(pos in 0usize..2000, byte: u8, size in 1usize..300, cut in 0usize..2100) {
        let mut bytes = refragment(pq_hello(), size);
        let len = bytes.len();
        bytes[pos % len] = byte;
        check_invariants(&bytes, cut);
    }

    #[test]
    fn prefixes_of_fragmented_hellos_need_more(size in 1usize..2000, cut: usize) {
        let hello = refragment(pq_hello(), size);
        let k = cut % hello.len();
        let needs_more = matches!(parse(&hello[..k]), Ok(Parsed::NeedMore { .. }));
        prop_assert!(needs_more);
        let name = done(&hello).server_name;
        prop_assert_eq!(name.as_deref(), Some(MESH_SNI));
    }
}
