//! Sidecar to sidecar: proxy A's outbound listeners reach proxy B's inbound ones in mTLS
//! (certificates from PEM files), B terminates it, sets `x-forwarded-client-cert`, enforces
//! RBAC and forwards to its app in plaintext.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use causeway_xds::dataplane::http::XfccConfig;
use causeway_xds::dataplane::rbac::{Permission, PolicyConfig, Principal, RbacAction, RbacConfig};
use causeway_xds::dataplane::tls::{SanKind, StringMatch};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const SNI: &str = "outbound_.80_._.b.b.svc.cluster.local";
const TCP_SNI: &str = "outbound_.9000_._.b.b.svc.cluster.local";

/// Two sidecars and B's two apps (HTTP and TCP echo).
struct Mesh {
    pki: Pki,
    a_id: Identity,
    b_id: Identity,
    /// Another workload of the mesh (`ns/c/sa/c`).
    c_id: Identity,
    app: Backend,
    echo: Echo,
    /// Held for the sidecar to keep running.
    _a: Proxy,
    b: Proxy,
    /// A's outbound HTTP and TCP listeners (the app's side).
    a_http: SocketAddr,
    a_tcp: SocketAddr,
    /// B's inbound HTTP and TCP listeners (mTLS).
    b_http: SocketAddr,
    b_tcp: SocketAddr,
}

#[derive(Default)]
struct Options {
    /// The SPIFFE ID A's clusters expect of B (B's own when None).
    expected: Option<String>,
    http_rbac: Vec<RbacConfig>,
    tcp_rbac: Vec<RbacConfig>,
}

async fn mesh(app: Backend, options: Options) -> Mesh {
    let pki = Pki::new();
    let a_id = pki.identity("a", "a");
    let b_id = pki.identity("b", "b");
    let c_id = pki.identity("c", "c");
    let echo = Echo::start().await;
    let (a_http, a_tcp, b_http, b_tcp) = (free_addr(), free_addr(), free_addr(), free_addr());

    // B: inbound HTTP with XFCC SANITIZE_SET (URI) and RBAC, inbound TCP with network RBAC.
    let mut inbound = manager(vec![vhost(&["*"], vec![route(prefix("/"), "inbound|app")])]);
    inbound.forward_client_cert = Some(XfccConfig {
        uri: true,
        ..Default::default()
    });
    inbound.rbac = options.http_rbac;
    let mut tcp = tcp_proxy("inbound|echo", Some(Duration::from_secs(10)));
    tcp.rbac = options.tcp_rbac;
    let b = Proxy::start(snapshot(
        1,
        vec![
            http_listener(
                "inbound",
                b_http,
                inbound,
                Some(pki.downstream_tls(&b_id, true)),
            ),
            tcp_listener(
                "inbound-tcp",
                b_tcp,
                tcp,
                Some(pki.downstream_tls(&b_id, false)),
            ),
        ],
        vec![
            cluster("inbound|app", &[app.addr]),
            cluster("inbound|echo", &[echo.addr]),
        ],
    ))
    .await;

    // A: outbound HTTP and TCP to B in mTLS.
    let expected = options.expected.unwrap_or_else(|| b_id.spiffe.clone());
    let mut to_b = cluster("outbound|80||b", &[b_http]);
    to_b.upstream_tls = Some(pki.upstream_tls(&a_id, SNI, &expected));
    let mut to_b_tcp = cluster("outbound|9000||b", &[b_tcp]);
    let mut tls = pki.upstream_tls(&a_id, TCP_SNI, &expected);
    tls.alpn.clear();
    to_b_tcp.upstream_tls = Some(tls);
    let outbound = manager(vec![vhost(
        &["b.mesh"],
        vec![route(prefix("/"), "outbound|80||b")],
    )]);
    let a = Proxy::start(snapshot(
        1,
        vec![
            http_listener("outbound", a_http, outbound, None),
            tcp_listener(
                "outbound-tcp",
                a_tcp,
                tcp_proxy("outbound|9000||b", None),
                None,
            ),
        ],
        vec![to_b, to_b_tcp],
    ))
    .await;
    Mesh {
        pki,
        a_id,
        b_id,
        c_id,
        app,
        echo,
        _a: a,
        b,
        a_http,
        a_tcp,
        b_http,
        b_tcp,
    }
}

impl Mesh {
    /// B's downstream handshakes with `result`.
    fn handshakes(&self, listener: &str, result: &str) -> f64 {
        self.b.metric(
            "causeway_proxy_tls_handshakes_total",
            &[
                ("side", "downstream"),
                ("name", listener),
                ("result", result),
            ],
        )
    }

    /// An HTTP/1.1 connection straight to B's inbound listener as `who`.
    async fn direct(&self, who: Option<&Identity>) -> std::io::Result<H1> {
        let tls = tls_connect(&self.pki.client(who, &["http/1.1"]), self.b_http).await?;
        H1::over(tls).await
    }
}

fn with_forged_xfcc(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .uri(path)
        .header("host", "b.mesh")
        .header(
            "x-forwarded-client-cert",
            format!("By=spiffe://{TD}/ns/evil/sa/evil;URI=spiffe://{TD}/ns/admin/sa/admin"),
        )
        .body(Full::new(Bytes::new()))
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfcc_is_envoys_sanitize_set_value_and_a_forged_one_never_passes() {
    let m = mesh(Backend::ok("app").await, Options::default()).await;
    // Envoy's SANITIZE_SET with `uri`: By=<B's URI SAN>;Hash=<hex SHA-256 of the caller's leaf
    // DER>;URI=<the caller's URI SAN>, replacing whatever the caller sent.
    let expected = format!(
        "By={};Hash={};URI={}",
        m.b_id.spiffe,
        m.a_id.sha256_hex(),
        m.a_id.spiffe
    );

    // The app's request through A (which must not forward the forged header) and B.
    let a = send(m.a_http, with_forged_xfcc("/via-a")).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "app"));
    let seen = m.app.last();
    assert_eq!(seen.uri, "/via-a");
    assert_eq!(
        seen.headers
            .get_all("x-forwarded-client-cert")
            .iter()
            .collect::<Vec<_>>(),
        [expected.as_str()]
    );
    assert_eq!(
        seen.headers["host"], "b.mesh",
        "the authority survives both hops"
    );

    // A caller with A's certificate straight to B, forging XFCC itself: B replaces it.
    let mut direct = m.direct(Some(&m.a_id)).await.expect("mTLS to B");
    let a = direct
        .send(with_forged_xfcc("/direct"))
        .await
        .expect("answer");
    assert_eq!(a.status, 200);
    let seen = m.app.last();
    assert_eq!(seen.uri, "/direct");
    assert_eq!(
        seen.headers
            .get_all("x-forwarded-client-cert")
            .iter()
            .collect::<Vec<_>>(),
        [expected.as_str()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_speak_h2_to_each_other_and_b_serves_http1_callers_too() {
    let app = Backend::start("app", |_| Reply::After(Duration::from_millis(300), 200)).await;
    let m = mesh(app, Options::default()).await;

    // B's ALPN prefers h2: a caller offering only h2 gets it, one offering only http/1.1 too.
    let tls = tls_connect(&m.pki.client(Some(&m.a_id), &["h2"]), m.b_http)
        .await
        .expect("mTLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = H2::over(tls).await.expect("h2");
    assert_eq!(
        h2.send(get("b.mesh", "/h2")).await.expect("answer").status,
        200
    );
    let tls = tls_connect(&m.pki.client(Some(&m.a_id), &["http/1.1"]), m.b_http)
        .await
        .expect("mTLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h1 = H1::over(tls).await.expect("http/1.1");
    assert_eq!(
        h1.send(get("b.mesh", "/h1")).await.expect("answer").status,
        200
    );
    // An Envoy sidecar offers Istio's names only (and then speaks HTTP/1.1): B picks the
    // first of its own list the caller offers, as Envoy's server does.
    let tls = tls_connect(
        &m.pki
            .client(Some(&m.a_id), &["istio-peer-exchange", "istio"]),
        m.b_http,
    )
    .await
    .expect("mTLS");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"istio-peer-exchange"[..])
    );
    let mut istio = H1::over(tls).await.expect("http/1.1");
    assert_eq!(
        istio
            .send(get("b.mesh", "/istio"))
            .await
            .expect("answer")
            .status,
        200
    );

    // A to B: one request opens the connection; four concurrent ones (each held 300 ms by the
    // app) then share it, which only HTTP/2 can do: B completes no further handshake.
    assert_eq!(send(m.a_http, get("b.mesh", "/first")).await.status, 200);
    let before = m.handshakes("inbound", "ok");
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let addr = m.a_http;
            tokio::spawn(
                async move { send(addr, get("b.mesh", &format!("/concurrent/{i}"))).await },
            )
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.expect("task").status, 200);
    }
    assert_eq!(m.app.hits(), 3 + 1 + 4);
    assert_eq!(
        m.handshakes("inbound", "ok"),
        before,
        "A multiplexed the concurrent requests on its one (h2) connection to B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_expected_san_is_a_503_and_nothing_reaches_the_app() {
    let options = Options {
        expected: Some(format!("spiffe://{TD}/ns/b/sa/somebody-else")),
        ..Default::default()
    };
    let m = mesh(Backend::ok("app").await, options).await;
    let a = send(m.a_http, get("b.mesh", "/")).await;
    assert_eq!(a.status, 503);
    assert!(
        a.body
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{}",
        a.body
    );
    // TCP too: A closes the app's connection without a byte from B's side.
    let mut tcp = connect_when_listening(m.a_tcp).await.expect("connect");
    let _ = tcp.write_all(b"ping").await;
    let mut buf = Vec::new();
    let got = bounded(tcp.read_to_end(&mut buf))
        .await
        .expect("closed in time");
    assert!(got.is_err() || buf.is_empty(), "{buf:?}");
    assert_eq!(m.app.hits(), 0);
    assert!(m.echo.received().is_empty());
    assert_eq!(
        m.handshakes("inbound", "ok") + m.handshakes("inbound-tcp", "ok"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_mesh_certificate_are_refused() {
    let m = mesh(Backend::ok("app").await, Options::default()).await;
    // Proxy::start's probe (a connection closed before any handshake) counts as failed.
    eventually(Duration::from_secs(5), "the probe was counted", || async {
        m.handshakes("inbound", "failed") >= 1.0
    })
    .await;
    // No client certificate at all.
    let failed = m.handshakes("inbound", "failed");
    let refused = async {
        let mut c = m.direct(None).await?;
        c.send(get("b.mesh", "/")).await
    };
    assert!(
        refused.await.is_err(),
        "a caller without a certificate was served"
    );
    eventually(
        Duration::from_secs(5),
        "B counted the failed handshake",
        || async { m.handshakes("inbound", "failed") > failed },
    )
    .await;
    // A certificate with the right shape and trust domain from another root.
    let stranger = Pki::new().identity("a", "a");
    let refused = async {
        let mut c = m.direct(Some(&stranger)).await?;
        c.send(get("b.mesh", "/")).await
    };
    assert!(
        refused.await.is_err(),
        "a caller from another root was served"
    );
    assert_eq!(m.app.hits(), 0);
    // Control: the mesh's own certificate is served.
    let mut c = m.direct(Some(&m.c_id)).await.expect("mTLS");
    assert_eq!(
        c.send(get("b.mesh", "/")).await.expect("answer").status,
        200
    );
    assert_eq!(m.app.hits(), 1);
}

/// An ALLOW filter whose one policy lets `principal` do anything.
fn allow_only(filter: &str, principal: Principal) -> Vec<RbacConfig> {
    vec![RbacConfig {
        name: filter.into(),
        stat_prefix: "causeway_allow_".into(),
        action: RbacAction::Allow,
        policies: BTreeMap::from([(
            "ns[b]-policy[allow-a]-rule[0]".to_owned(),
            PolicyConfig {
                permissions: vec![Permission::Any],
                principals: vec![principal],
            },
        )]),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rbac_lets_the_allowed_principal_through_and_denies_others_with_403() {
    let a_spiffe = format!("spiffe://{TD}/ns/a/sa/a");
    // As the control plane emits them: the DENY filter first, then the ALLOW one.
    let deny_admin = RbacConfig {
        name: "envoy.filters.http.rbac".into(),
        stat_prefix: "causeway_deny_".into(),
        action: RbacAction::Deny,
        policies: BTreeMap::from([(
            "ns[b]-policy[no-admin]-rule[0]".to_owned(),
            PolicyConfig {
                permissions: vec![Permission::UrlPath(StringMatch::Exact("/admin".into()))],
                principals: vec![Principal::Any],
            },
        )]),
    };
    let mut http_rbac = vec![deny_admin];
    http_rbac.extend(allow_only(
        "envoy.filters.http.rbac",
        Principal::Authenticated(StringMatch::Exact(a_spiffe)),
    ));
    let options = Options {
        http_rbac,
        ..Default::default()
    };
    let m = mesh(Backend::ok("app").await, options).await;
    // A, through its sidecar and straight: allowed.
    assert_eq!(send(m.a_http, get("b.mesh", "/")).await.status, 200);
    let mut as_a = m.direct(Some(&m.a_id)).await.expect("mTLS");
    assert_eq!(
        as_a.send(get("b.mesh", "/")).await.expect("answer").status,
        200
    );
    assert_eq!(m.app.hits(), 2);
    // C, a valid mesh identity the policy does not name: Envoy's 403.
    let mut as_c = m.direct(Some(&m.c_id)).await.expect("mTLS");
    let a = as_c.send(get("b.mesh", "/")).await.expect("answer");
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (403, "RBAC: access denied")
    );
    assert_eq!(m.app.hits(), 2, "the denied request never reached the app");
    assert_eq!(
        m.b.metric(
            "causeway_proxy_rbac_denied_total",
            &[("listener", "inbound")]
        ),
        1.0
    );
    // `url_path` is the path without the query (Envoy), compared case-sensitively: the DENY
    // rule takes `/admin?x=1` from A too, not `/admin/x` or `/Admin`.
    let a = send(m.a_http, get("b.mesh", "/admin?x=1")).await;
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (403, "RBAC: access denied")
    );
    assert_eq!(m.app.hits(), 2);
    assert_eq!(send(m.a_http, get("b.mesh", "/admin/x")).await.status, 200);
    assert_eq!(send(m.a_http, get("b.mesh", "/Admin")).await.status, 200);
    assert_eq!(m.app.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_between_sidecars_and_network_rbac_closing_a_denied_caller() {
    let a_spiffe = format!("spiffe://{TD}/ns/a/sa/a");
    let options = Options {
        tcp_rbac: allow_only(
            "envoy.filters.network.rbac",
            Principal::MtlsSan {
                kind: SanKind::Uri,
                matcher: StringMatch::Exact(a_spiffe),
            },
        ),
        ..Default::default()
    };
    let m = mesh(Backend::ok("app").await, options).await;

    // The app's bytes through A (mTLS, no ALPN) and B (network RBAC allows A) to the echo.
    let mut tcp = connect_when_listening(m.a_tcp).await.expect("connect");
    tcp.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    bounded(tcp.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(&buf, b"ping");
    drop(tcp);

    // C straight to B's TCP listener: the handshake succeeds, RBAC closes the connection and
    // the bytes C sends never reach the echo server.
    let mut as_c = tls_connect(&m.pki.client(Some(&m.c_id), &[]), m.b_tcp)
        .await
        .expect("TLS");
    let _ = as_c.write_all(b"secret").await;
    let _ = as_c.flush().await;
    let mut out = Vec::new();
    let read = bounded(as_c.read_to_end(&mut out))
        .await
        .expect("closed in time");
    assert!(read.is_err() || out.is_empty(), "C got {out:?}");
    eventually(
        Duration::from_secs(5),
        "B counted the RBAC denial",
        || async {
            m.b.metric(
                "causeway_proxy_rbac_denied_total",
                &[("listener", "inbound-tcp")],
            ) == 1.0
        },
    )
    .await;
    assert!(
        !m.echo.received().windows(6).any(|w| w == b"secret"),
        "C's bytes reached the backend"
    );
    // A straight to B's TCP listener is still served.
    let mut as_a = tls_connect(&m.pki.client(Some(&m.a_id), &[]), m.b_tcp)
        .await
        .expect("TLS");
    as_a.write_all(b"pong").await.expect("write");
    let mut buf = [0u8; 4];
    bounded(as_a.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(&buf, b"pong");
}
