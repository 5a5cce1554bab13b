//! The east-west gateway's ClientHello parser (`proxy::gateway::client_hello::parse`) on any
//! bytes. Besides "no panic": `NeedMore` asks for more than the input and at most the limit; a
//! hello's `len` is within the input, its server name is a DNS name and its ALPN names are not
//! empty; the result found in a prefix (an error or a hello) is the result of the whole input;
//! and a hello in one record parses the same when its bytes come in other records.
#![no_main]

use causeway_proxy::gateway::client_hello::{parse, ClientHelloError, Parsed, MAX_CLIENT_HELLO};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let full = parse(data);
    match &full {
        Ok(Parsed::NeedMore { at_least }) => {
            assert!(
                data.len() < *at_least && *at_least <= MAX_CLIENT_HELLO,
                "{at_least}"
            );
        }
        Ok(Parsed::Done(hello)) => {
            assert!(hello.len <= data.len());
            if let Some(name) = &hello.server_name {
                assert!(is_dns_name(name), "{name:?}");
            }
            assert!(hello.alpn.iter().all(|p| !p.is_empty()));
            assert_eq!(show(&parse(&data[..hello.len])), show(&full));
        }
        Err(e) => {
            assert!(!e.to_string().is_empty() && !e.reason().is_empty());
        }
    }
    for cut in [data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
        match parse(&data[..cut]) {
            Ok(Parsed::NeedMore { .. }) => {}
            prefix => assert_eq!(show(&prefix), show(&full), "prefix of {cut} bytes"),
        }
    }
    if let Some((version, payload)) = single_record(data) {
        let single = parse(&data[..5 + payload.len()]);
        for size in [1 + data.len() % 61, payload.len().div_ceil(2), 7] {
            let records = reframe(version, payload, size);
            match (&single, parse(&records)) {
                (Ok(Parsed::Done(a)), Ok(Parsed::Done(b))) => {
                    assert_eq!((&a.server_name, &a.alpn), (&b.server_name, &b.alpn));
                    assert_eq!(b.len, records.len());
                }
                (_, Err(ClientHelloError::TooLarge)) if records.len() > MAX_CLIENT_HELLO => {}
                (a, b) => assert_eq!(show(a), show(&b), "in records of {size} bytes"),
            }
        }
    }
});

fn show(r: &Result<Parsed, ClientHelloError>) -> String {
    format!("{r:?}")
}

/// The record version and payload when `data` starts with one handshake record that holds
/// exactly one handshake message (of any content) and fits the limit.
fn single_record(data: &[u8]) -> Option<(u8, &[u8])> {
    let [22, 3, version, hi, lo, ..] = *data else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let payload = data.get(5..5 + len)?;
    let [1, a, b, c, ..] = *payload else {
        return None;
    };
    let message = 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
    (len >= 1 && len <= 1 << 14 && message == len && 5 + len <= MAX_CLIENT_HELLO)
        .then_some((version, payload))
}

/// `payload` in handshake records of `size` bytes.
fn reframe(version: u8, payload: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5 * payload.len().div_ceil(size));
    for chunk in payload.chunks(size) {
        out.extend_from_slice(&[22, 3, version]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// An independent check of the parser's promise: ASCII lowercase letters, digits, `-`, `_`,
/// labels of 1 to 63 bytes not starting or ending with `-`, at most 253 bytes.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}
