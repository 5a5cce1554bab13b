//! What the connection manager does to headers: RBAC's view of a request, hop-by-hop headers
//! removed both ways, `x-forwarded-client-cert` sanitized and set (Envoy's SANITIZE_SET
//! format), `x-forwarded-proto` and `x-request-id`, and the request's form for an HTTP/1.1 or
//! an HTTP/2 upstream.

use std::fmt::Write as _;

use base64::Engine as _;
use causeway_xds::dataplane::http::{HttpManagerConfig, XfccConfig};
use causeway_xds::dataplane::rbac::{self, Call, Peer};
use http::header::{
    HeaderName, HeaderValue, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{Request, Response, Uri, Version};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::Connection;
use crate::tls::Caller;

// Header names as `HeaderName` constants: a `&str` name is parsed and validated again on every
// lookup, and these run on every request.
const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Connection-specific headers, never forwarded (RFC 9110 §7.6.1; HTTP/2 forbids them).
const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
];

/// Runs the chain's RBAC filters on a request with `path`.
pub fn authorize<'a>(
    manager: &'a HttpManagerConfig,
    conn: &Connection,
    path: &str,
) -> Result<(), rbac::Denied<'a>> {
    if manager.rbac.is_empty() {
        return Ok(());
    }
    let peer = conn.caller.as_ref().map(peer_of);
    let call = Call {
        peer: peer.as_ref(),
        destination_port: conn.destination_port,
        path: Some(path),
    };
    rbac::authorize(&manager.rbac, &call)
}

/// RBAC's view of a verified caller.
pub fn peer_of(caller: &Caller) -> Peer {
    Peer {
        uri_sans: caller.names.uri_sans.clone(),
        dns_sans: caller.names.dns_sans.clone(),
        subject: caller.names.subject.clone(),
    }
}

fn remove_hop_by_hop(headers: &mut http::HeaderMap) {
    // Headers named by `Connection` are connection-specific too.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
    if headers.get(TE).is_some_and(|v| v != "trailers") {
        headers.remove(TE);
    }
}

/// The request as it goes upstream (before its HTTP version is chosen).
pub fn prepare_request<B>(req: &mut Request<B>, manager: &HttpManagerConfig, conn: &Connection) {
    let headers = req.headers_mut();
    remove_hop_by_hop(headers);
    // SANITIZE(_SET): a caller's own XFCC header is never trusted.
    headers.remove(XFCC);
    if let (Some(cfg), Some(caller)) = (manager.forward_client_cert, conn.caller.as_ref()) {
        // The caller and the configuration are the connection's: one value for all its
        // requests (a certificate digest and its encoding are not per-request work).
        let value = conn.xfcc.get_or_init(|| {
            HeaderValue::from_str(&xfcc(cfg, caller, conn.own_uri.as_deref())).ok()
        });
        if let Some(v) = value {
            headers.insert(XFCC, v.clone());
        }
    }
    let proto = if conn.caller.is_some() {
        "https"
    } else {
        "http"
    };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if !headers.contains_key(X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID, request_id());
    }
}

/// The response as it goes downstream.
pub fn prepare_response<B>(response: &mut Response<B>) {
    remove_hop_by_hop(response.headers_mut());
}

/// The request's authority: `:authority` (HTTP/2, absolute URIs) or `Host`.
pub fn authority<B>(req: &Request<B>) -> String {
    if let Some(a) = req.uri().authority() {
        return a.as_str().to_owned();
    }
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Origin form and a `Host` header, for an HTTP/1.1 connection.
pub fn for_http1<B>(req: &mut Request<B>) {
    let authority = authority(req);
    if !req.headers().contains_key(HOST) {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            req.headers_mut().insert(HOST, v);
        }
    }
    if let Some(pq) = req.uri().path_and_query().cloned() {
        if let Ok(uri) = Uri::builder().path_and_query(pq).build() {
            *req.uri_mut() = uri;
        }
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Absolute form (`:scheme`, `:authority`) without `Host`, for an HTTP/2 connection.
pub fn for_http2<B>(req: &mut Request<B>) {
    let authority = authority(req);
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq)
        .build()
    {
        *req.uri_mut() = uri;
    }
    req.headers_mut().remove(HOST);
    *req.version_mut() = Version::HTTP_2;
}

/// A random UUID (version 4) in Envoy's `x-request-id` form, written straight into the
/// header's bytes (one per request without one).
fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [0u8; 36];
    let mut at = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[at] = b'-';
            at += 1;
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Characters Envoy's XFCC encoding leaves alone in URL-encoded PEM.
const PEM_SAFE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// Envoy's SANITIZE_SET value: `By`, `Hash`, then what `cfg` asks for, in Envoy's order.
pub fn xfcc(cfg: XfccConfig, caller: &Caller, own_uri: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(by) = own_uri {
        parts.push(format!("By={}", quoted(by)));
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, caller.leaf.as_ref());
    let hash: String = digest.as_ref().iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    });
    parts.push(format!("Hash={hash}"));
    if cfg.cert {
        parts.push(format!("Cert=\"{}\"", url_pem(caller.leaf.as_ref())));
    }
    if cfg.chain {
        let chain: String = caller.chain.iter().map(|c| url_pem(c.as_ref())).collect();
        parts.push(format!("Chain=\"{chain}\""));
    }
    if cfg.subject {
        parts.push(format!(
            "Subject=\"{}\"",
            caller.names.subject.replace('"', "\\\"")
        ));
    }
    if cfg.uri {
        parts.push(format!(
            "URI={}",
            quoted(caller.names.uri_sans.first().map_or("", String::as_str))
        ));
    }
    if cfg.dns {
        for d in &caller.names.dns_sans {
            parts.push(format!("DNS={}", quoted(d)));
        }
    }
    parts.join(";")
}

/// A value quoted when it holds XFCC's separators.
fn quoted(v: &str) -> String {
    if v.contains([',', ';', '=', '"']) {
        format!("\"{}\"", v.replace('"', "\\\""))
    } else {
        v.to_owned()
    }
}

fn url_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    utf8_percent_encode(&pem, PEM_SAFE).to_string()
}
