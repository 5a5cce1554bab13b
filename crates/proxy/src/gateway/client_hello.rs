//! A bounded TLS ClientHello parser: the east-west gateway routes on the server name (SNI)
//! without terminating TLS, so it reads just the ClientHello, keeps its bytes to forward them
//! unchanged, and never buffers more than [`MAX_CLIENT_HELLO`].
//!
//! `parse` is a pure function of a buffer's prefix: an error found in a prefix is the error of
//! every longer input, and a prefix of a valid ClientHello is never an error (`NeedMore`).

use std::borrow::Cow;
use std::io;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The most bytes of TLS records the gateway buffers for one ClientHello. Real ones are
/// 0.2–2 KiB (the largest carry a post-quantum key share, X25519MLKEM768: ~1.2–1.8 KiB, or a
/// session ticket); 16 KiB leaves room for many small records and large tickets while bounding
/// what an unauthenticated client can make the gateway hold before routing.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
/// TLS' largest record payload (RFC 8446, 5.1).
const MAX_FRAGMENT: usize = 1 << 14;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// How much `read_client_hello` asks for per read when the parser needs less.
const READ_CHUNK: usize = 4096;

/// What `parse` made of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The buffer is a prefix of a plausible ClientHello; `at_least` is the total buffer length
    /// needed before parsing again can make progress (never above [`MAX_CLIENT_HELLO`]).
    NeedMore { at_least: usize },
    /// A complete ClientHello.
    Done(ClientHello),
}

/// The parts of a ClientHello the gateway routes on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The `host_name` of the server_name extension: a DNS name, lowercased.
    pub server_name: Option<String>,
    /// The ALPN protocol names in the client's order. Bytes, not strings: RFC 7301 names are
    /// opaque, and a non-UTF-8 one must not make a valid hello fail.
    pub alpn: Vec<Vec<u8>>,
    /// Bytes of TLS records the ClientHello took, from the start of the buffer.
    pub len: usize,
}

/// Why a connection's first bytes are not a ClientHello the gateway can route.
#[derive(Debug, thiserror::Error)]
pub enum ClientHelloError {
    #[error("the client did not start a TLS handshake (plaintext or not TLS)")]
    NotTls,
    #[error("the client's first TLS handshake message is not a ClientHello (handshake type {0})")]
    NotClientHello(u8),
    #[error("the ClientHello is larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("the ClientHello's server name (SNI) \"{name}\" is not a DNS name: {reason}")]
    BadServerName {
        /// The name as sent, escaped and cut to 100 bytes.
        name: String,
        reason: &'static str,
    },
    #[error("the client closed the connection after {received} bytes, before its ClientHello was complete")]
    Closed { received: usize },
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("reading the ClientHello: {0}")]
    Io(#[source] io::Error),
}

impl ClientHelloError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotTls => "not_tls",
            Self::NotClientHello(_) => "not_client_hello",
            Self::TooLarge => "client_hello_too_large",
            Self::Malformed(_) => "malformed_client_hello",
            Self::BadServerName { .. } => "bad_server_name",
            Self::Closed { .. } => "closed_during_client_hello",
            Self::Timeout(_) => "client_hello_timeout",
            Self::Io(_) => "client_hello_io",
        }
    }
}

use ClientHelloError::Malformed;

/// Parses the ClientHello at the start of `buf`, which may span several handshake records.
pub fn parse(buf: &[u8]) -> Result<Parsed, ClientHelloError> {
    match locate(buf)? {
        Located::NeedMore(at_least) => Ok(Parsed::NeedMore { at_least }),
        Located::Complete {
            len,
            records,
            total,
        } => {
            let message = assemble(buf, records, total)?;
            let body = message
                .get(HANDSHAKE_HEADER..)
                .ok_or(Malformed("handshake header"))?;
            parse_body(body, len).map(Parsed::Done)
        }
    }
}

/// Reads from `stream` into `buf` until `buf` starts with a complete ClientHello, within
/// `timeout`. Everything read stays in `buf` (the hello and whatever followed it) so that the
/// gateway can forward it unchanged; `buf` never grows past [`MAX_CLIENT_HELLO`] through here.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<ClientHello, ClientHelloError> {
    tokio::time::timeout(timeout, read_until_parsed(stream, buf))
        .await
        .unwrap_or(Err(ClientHelloError::Timeout(timeout)))
}

async fn read_until_parsed<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<ClientHello, ClientHelloError> {
    let mut at_least = 0;
    loop {
        // Parse again only once the bytes the last attempt asked for are there: a client that
        // trickles its hello byte by byte costs one parse per record, not one per byte.
        if buf.len() >= at_least {
            match parse(buf)? {
                Parsed::Done(hello) => return Ok(hello),
                Parsed::NeedMore { at_least: n } => at_least = n,
            }
        }
        // `NeedMore` means `buf.len() < at_least <= MAX_CLIENT_HELLO`, so there is room.
        let room = MAX_CLIENT_HELLO.saturating_sub(buf.len());
        if room == 0 {
            return Err(ClientHelloError::TooLarge);
        }
        let want = room.min(READ_CHUNK.max(at_least.saturating_sub(buf.len())));
        buf.reserve(want);
        let mut limited = BufMut::limit(&mut *buf, want);
        let n = stream
            .read_buf(&mut limited)
            .await
            .map_err(ClientHelloError::Io)?;
        if n == 0 {
            return Err(ClientHelloError::Closed {
                received: buf.len(),
            });
        }
    }
}

/// Where the ClientHello's records end, or how many bytes are needed to know.
enum Located {
    NeedMore(usize),
    Complete {
        /// Bytes of records, from the start of the buffer.
        len: usize,
        /// How many records carry the hello.
        records: usize,
        /// The handshake message's length, header included.
        total: usize,
    },
}

/// The handshake message header, collected as it arrives (it may straddle records).
#[derive(Default)]
struct HandshakeHeader {
    bytes: [u8; HANDSHAKE_HEADER],
    have: usize,
    /// The message's length with its header, once all four bytes are in.
    total: Option<usize>,
}

impl HandshakeHeader {
    /// Takes the header's bytes from the start of a record's (possibly partial) payload.
    fn feed(&mut self, fragment: &[u8]) -> Result<(), ClientHelloError> {
        for &b in fragment
            .iter()
            .take(HANDSHAKE_HEADER.saturating_sub(self.have))
        {
            if self.have == 0 && b != HANDSHAKE_CLIENT_HELLO {
                return Err(ClientHelloError::NotClientHello(b));
            }
            if let Some(slot) = self.bytes.get_mut(self.have) {
                *slot = b;
            }
            self.have += 1;
        }
        if self.have == HANDSHAKE_HEADER && self.total.is_none() {
            let [_, a, b, c] = self.bytes;
            let length = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
            let total = HANDSHAKE_HEADER + length;
            // One record is the least framing the message can take.
            if RECORD_HEADER + total > MAX_CLIENT_HELLO {
                return Err(ClientHelloError::TooLarge);
            }
            self.total = Some(total);
        }
        Ok(())
    }
}

/// Walks the records at the start of `buf`, checking each field as soon as it is there.
fn locate(buf: &[u8]) -> Result<Located, ClientHelloError> {
    let mut pos = 0;
    let mut header = HandshakeHeader::default();
    // Handshake bytes the records so far announce (whether or not they have all arrived).
    let mut announced = 0;
    let mut records = 0;
    loop {
        // A record takes at least six bytes (empty handshake records are not allowed).
        if pos + RECORD_HEADER + 1 > MAX_CLIENT_HELLO {
            return Err(ClientHelloError::TooLarge);
        }
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(fragment_len) = record_header(rest, records == 0)? else {
            return Ok(Located::NeedMore(pos + RECORD_HEADER));
        };
        let start = pos + RECORD_HEADER;
        let end = start + fragment_len;
        if end > MAX_CLIENT_HELLO {
            return Err(ClientHelloError::TooLarge);
        }
        records += 1;
        announced += fragment_len;
        header.feed(buf.get(start..end.min(buf.len())).unwrap_or_default())?;
        let complete = match header.total {
            Some(total) if announced > total => {
                return Err(Malformed("bytes after the ClientHello in its last record"));
            }
            Some(total) => announced == total,
            None => false,
        };
        if buf.len() < end {
            return Ok(Located::NeedMore(end));
        }
        if let (true, Some(total)) = (complete, header.total) {
            return Ok(Located::Complete {
                len: end,
                records,
                total,
            });
        }
        pos = end;
    }
}

/// Checks the record header at the start of `rest` (as much of it as is there) and returns
/// its payload length once all five bytes are in.
fn record_header(rest: &[u8], first: bool) -> Result<Option<usize>, ClientHelloError> {
    let not_tls = |later: &'static str| {
        if first {
            ClientHelloError::NotTls
        } else {
            Malformed(later)
        }
    };
    if rest.first().is_some_and(|&t| t != CONTENT_HANDSHAKE) {
        return Err(not_tls(
            "a record other than handshake inside the ClientHello",
        ));
    }
    if rest.get(1).is_some_and(|&major| major != 3) {
        return Err(not_tls("record version"));
    }
    let Some(&[_, _, _, hi, lo]) = rest.first_chunk::<RECORD_HEADER>() else {
        return Ok(None);
    };
    match usize::from(u16::from_be_bytes([hi, lo])) {
        0 => Err(Malformed("empty handshake record")),
        len if len > MAX_FRAGMENT => Err(Malformed("record longer than 2^14 bytes")),
        len => Ok(Some(len)),
    }
}

/// The handshake message, `total` bytes, from the payloads of the first `records` records.
fn assemble(buf: &[u8], records: usize, total: usize) -> Result<Cow<'_, [u8]>, ClientHelloError> {
    const LAYOUT: ClientHelloError = Malformed("record layout");
    if records == 1 {
        let message = buf
            .get(RECORD_HEADER..RECORD_HEADER + total)
            .ok_or(LAYOUT)?;
        return Ok(Cow::Borrowed(message));
    }
    let mut message = Vec::with_capacity(total);
    let mut cursor = Cursor::new(buf);
    for _ in 0..records {
        cursor.take(3, "record header")?;
        message.extend_from_slice(cursor.vec16("record")?.rest);
    }
    if message.len() != total {
        return Err(LAYOUT);
    }
    Ok(Cow::Owned(message))
}

/// ClientHello fields (RFC 8446, 4.1.2; RFC 5246, 7.4.1.2) after the handshake header.
fn parse_body(body: &[u8], len: usize) -> Result<ClientHello, ClientHelloError> {
    let mut c = Cursor::new(body);
    let [major, _] = c.array::<2>("client_version")?;
    if major != 3 {
        return Err(Malformed("client_version"));
    }
    c.take(32, "random")?;
    if c.vec8("session_id")?.rest.len() > 32 {
        return Err(Malformed("session_id longer than 32 bytes"));
    }
    let suites = c.vec16("cipher_suites")?.rest;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Malformed("cipher_suites"));
    }
    if c.vec8("compression_methods")?.rest.is_empty() {
        return Err(Malformed("compression_methods"));
    }
    let mut hello = ClientHello {
        len,
        ..ClientHello::default()
    };
    if c.rest.is_empty() {
        return Ok(hello); // No extensions: allowed before TLS 1.3.
    }
    let mut extensions = c.vec16("extensions")?;
    if !c.rest.is_empty() {
        return Err(Malformed("bytes after the extensions"));
    }
    let mut seen = Vec::new();
    while !extensions.rest.is_empty() {
        let kind = extensions.u16("extension type")?;
        let data = extensions.vec16("extension length")?;
        seen.push(kind);
        match kind {
            EXT_SERVER_NAME => hello.server_name = Some(server_name(data)?),
            EXT_ALPN => hello.alpn = alpn(data)?,
            _ => {}
        }
    }
    // Two server_name extensions could route one way here and another at the server.
    let count = seen.len();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != count {
        return Err(Malformed("duplicate extension"));
    }
    Ok(hello)
}

/// The server_name extension (RFC 6066, 3): exactly one entry, a `host_name`, as OpenSSL does.
fn server_name(mut data: Cursor<'_>) -> Result<String, ClientHelloError> {
    const FIELD: &str = "server_name extension";
    let mut list = data.vec16(FIELD)?;
    if !data.rest.is_empty() || list.u8(FIELD)? != NAME_TYPE_HOST_NAME {
        return Err(Malformed(FIELD));
    }
    let name = list.vec16(FIELD)?.rest;
    if !list.rest.is_empty() {
        return Err(Malformed("server_name extension with more than one name"));
    }
    dns_name(name)
}

/// A host name as RFC 6066 allows it (ASCII, no trailing dot), lowercased. `_` is allowed:
/// mesh SNIs look like `outbound_.9080_._.reviews.default.svc.cluster.local`.
fn dns_name(raw: &[u8]) -> Result<String, ClientHelloError> {
    let bad = |reason| ClientHelloError::BadServerName {
        name: raw.get(..100).unwrap_or(raw).escape_ascii().to_string(),
        reason,
    };
    if raw.is_empty() {
        return Err(bad("empty"));
    }
    if raw.len() > 253 {
        return Err(bad("longer than 253 bytes"));
    }
    if !raw.is_ascii() {
        return Err(bad(
            "not ASCII (international names are sent as xn-- labels)",
        ));
    }
    for label in raw.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(bad("empty label (or a trailing dot)"));
        }
        if label.len() > 63 {
            return Err(bad("label longer than 63 bytes"));
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(
                "a character other than letters, digits, '-', '_' and '.'",
            ));
        }
        if label.starts_with(b"-") || label.ends_with(b"-") {
            return Err(bad("label starts or ends with '-'"));
        }
    }
    Ok(raw
        .iter()
        .map(|&b| char::from(b.to_ascii_lowercase()))
        .collect())
}

/// The ALPN extension (RFC 7301, 3.1): a non-empty list of non-empty names.
fn alpn(mut data: Cursor<'_>) -> Result<Vec<Vec<u8>>, ClientHelloError> {
    const FIELD: &str = "ALPN extension";
    let mut list = data.vec16(FIELD)?;
    if !data.rest.is_empty() || list.rest.is_empty() {
        return Err(Malformed(FIELD));
    }
    let mut names = Vec::new();
    while !list.rest.is_empty() {
        let name = list.vec8(FIELD)?.rest;
        if name.is_empty() {
            return Err(Malformed("empty ALPN protocol name"));
        }
        names.push(name.to_vec());
    }
    Ok(names)
}

/// Checked big-endian reads; running short is `Malformed(field)`.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Self { rest }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let (head, tail) = self.rest.split_at_checked(n).ok_or(Malformed(field))?;
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ClientHelloError> {
        let (head, tail) = self.rest.split_first_chunk::<N>().ok_or(Malformed(field))?;
        self.rest = tail;
        Ok(*head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ClientHelloError> {
        let [b] = self.array::<1>(field)?;
        Ok(b)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ClientHelloError> {
        self.array::<2>(field).map(u16::from_be_bytes)
    }

    /// A field with a one-byte length prefix.
    fn vec8(&mut self, field: &'static str) -> Result<Cursor<'a>, ClientHelloError> {
        let n = self.u8(field)?;
        self.take(usize::from(n), field).map(Cursor::new)
    }

    /// A field with a two-byte length prefix.
    fn vec16(&mut self, field: &'static str) -> Result<Cursor<'a>, ClientHelloError> {
        let n = self.u16(field)?;
        self.take(usize::from(n), field).map(Cursor::new)
    }
}
