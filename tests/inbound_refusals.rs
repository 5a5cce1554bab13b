//! A real Envoy's sidecar inbound refuses callers that are not mesh workloads: plaintext, TLS
//! without a client certificate, a client certificate chained to a foreign root, and an expired
//! certificate of the mesh. The listeners are written like the ones the xDS builder emits for a
//! sidecar without authorization policies (`crates/xds/src/build/inbound.rs`): TLS 1.3 only, a
//! client certificate required, validated against the mesh root and matched on the trust
//! domain's SPIFFE prefix, then an HTTP connection manager (HTTP port) or a TCP proxy (TCP port)
//! to the app through a static cluster. Only the certificate source differs: files instead of
//! SDS. In every case the app never sees the refused request (on the TCP port Envoy's TCP proxy
//! does open a connection to the app as soon as it accepts one, before the handshake, but sends
//! nothing on it and closes it with the refused one), Envoy's admin stats count the refusal by
//! its reason, its log names the reason, and a legitimate mesh client is answered before and
//! after, also on a connection it kept open across the refusal.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use causeway_e2e::envoy::{changed, Envoy};
use causeway_e2e::mtls::{
    cid, client_without_certificate, get, issued, mesh_client, signed_with, write_server_files,
    Credential, KeptConnection, Outcome, Pki, TD,
};
use causeway_e2e::upstream::HttpApp;
use causeway_e2e::{free_port, wait_for};
use causeway_trust::ca::files;
use time::OffsetDateTime;

/// Whether an inbound port is HTTP (connection manager) or TCP (TCP proxy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http,
    Tcp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        }
    }
}

/// One inbound port of the sidecar and the app behind it.
struct Inbound {
    protocol: Protocol,
    port: u16,
    app: HttpApp,
}

impl Inbound {
    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// `listener.<addr>.<name>`.
    fn listener_stat(&self, name: &str) -> String {
        format!("listener.127.0.0.1_{}.{name}", self.port)
    }

    /// `cluster.inbound|<app port>||.<name>`.
    fn cluster_stat(&self, name: &str) -> String {
        format!("cluster.{}.{name}", self.cluster())
    }

    fn cluster(&self) -> String {
        format!("inbound|{}||", self.app.addr.port())
    }

    /// The listener and its app cluster, as the xDS builder writes them for a sidecar without
    /// policies (certificates from files in `dir` rather than SDS).
    fn config(&self, dir: &Path) -> (String, String) {
        let (port, cluster, d) = (self.port, self.cluster(), dir.display());
        let (alpn, filter) = match self.protocol {
            Protocol::Http => (
                "[istio-peer-exchange, istio, h2, http/1.1]",
                format!(
                    r#"
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_{port}
          codec_type: AUTO
          stream_idle_timeout: 300s
          request_headers_timeout: 10s
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {{ uri: true }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: "{cluster}"
            virtual_hosts:
            - name: "{cluster}"
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: "{cluster}", timeout: 15s }}"#
                ),
            ),
            Protocol::Tcp => (
                "[]",
                format!(
                    r#"
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: inbound_{port}
          cluster: "{cluster}"
          idle_timeout: 3600s
          upstream_connect_mode: ON_DOWNSTREAM_TLS_HANDSHAKE
          max_early_data_bytes: 0"#
                ),
            ),
        };
        let listener = format!(
            r#"
  - name: "inbound|127.0.0.1:{port}"
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    traffic_direction: INBOUND
    filter_chains:
    - transport_socket_connect_timeout: 10s
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {{ tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3 }}
            alpn_protocols: {alpn}
            tls_certificates:
            - certificate_chain: {{ filename: "{d}/server-chain.pem" }}
              private_key: {{ filename: "{d}/server-key.pem" }}
            validation_context:
              trusted_ca: {{ filename: "{d}/{root}" }}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{ prefix: "spiffe://{TD}/" }}
      filters:{filter}"#,
            root = files::ROOT_CERT,
        );
        let app = self.app.addr;
        let cluster = format!(
            r#"
  - name: "{cluster}"
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: "{cluster}"
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {app_port} }} }} }}"#,
            ip = app.ip(),
            app_port = app.port(),
        );
        (listener, cluster)
    }
}

/// Envoy as a sidecar of cluster beta's `shop/server` with an HTTP and a TCP inbound port.
struct Sidecar {
    _tmp: tempfile::TempDir,
    /// The mesh root (alpha's and beta's intermediates are signed by it).
    pki: Pki,
    /// Cluster alpha's intermediate, key included (to hand-make leaves).
    alpha: causeway_trust::ca::ClusterCaFiles,
    /// The legitimate caller: alpha's `shop/frontend`, issued by alpha's CA.
    legit: Credential,
    envoy: Envoy,
    /// The HTTP port, then the TCP port.
    inbound: Vec<Inbound>,
}

impl Sidecar {
    fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        let pki = Pki::generate(&dir.join("root"));
        let (alpha, alpha_ca) = pki.cluster("alpha");
        let (_, beta_ca) = pki.cluster("beta");
        write_server_files(dir, &issued(&beta_ca, "server"), pki.bundle_pem());
        let inbound: Vec<Inbound> = [Protocol::Http, Protocol::Tcp]
            .into_iter()
            .map(|protocol| Inbound {
                protocol,
                port: free_port(),
                app: HttpApp::start(),
            })
            .collect();
        let (listeners, clusters): (Vec<String>, Vec<String>) =
            inbound.iter().map(|i| i.config(dir)).unzip();
        let envoy = Envoy::start(
            dir,
            &format!(
                "\n  listeners:{}\n  clusters:{}",
                listeners.concat(),
                clusters.concat()
            ),
        );
        Self {
            pki,
            alpha,
            legit: issued(&alpha_ca, "frontend"),
            envoy,
            inbound,
            _tmp: tmp,
        }
    }
}

/// Envoy's TLS debug log lines (handshake errors and shutdowns, not the start-up banner).
fn tls_log(envoy: &Envoy) -> Vec<String> {
    envoy
        .log_text()
        .lines()
        .filter(|l| l.contains("][connection]") && l.contains("/tls/"))
        .map(str::to_owned)
        .collect()
}

/// What a refused caller saw.
#[derive(Debug)]
enum Seen {
    /// A TLS client: the outcome of its request.
    Tls(Outcome),
    /// A plaintext client: the bytes that came back before the connection closed.
    ClosedAfter(Vec<u8>),
}

/// Sends a plaintext HTTP request and reads until Envoy closes the connection (at most 5 s;
/// a connection still open then is a failure).
fn plaintext(addr: SocketAddr, path: &str) -> Seen {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: server\r\n\r\n").as_bytes())
        .expect("write");
    let mut answer = Vec::new();
    match tcp.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) => {}
        Err(e) => panic!("Envoy kept a plaintext connection open ({e}); got {answer:?}"),
    }
    Seen::ClosedAfter(answer)
}

/// One bad caller and how Envoy must tell it apart.
struct Refusal {
    /// Path of its request (the app must never see it).
    path: &'static str,
    /// Makes the attempt on `addr`.
    attempt: fn(&Sidecar, SocketAddr, &str) -> Seen,
    /// The `listener.<addr>.ssl.*` stat that counts it, the only one of them that changes.
    stat: &'static str,
    /// The TLS alert the client receives (a TLS client only).
    alert: Option<&'static str>,
    /// What Envoy's TLS error (connection debug log) says about it.
    log: &'static str,
    /// The refused certificate's twin that differs only in what is refused, answered before
    /// the refusal (so the refusal is that difference, not how the certificate was made).
    twin: Option<fn(&Sidecar) -> Credential>,
}

/// Legitimate requests on every inbound port, then `refusal` on every port, then legitimate
/// requests again: checks the refusal's client-side outcome, its stats, that the app never saw
/// it (and, on the HTTP port, no connection of the refused caller reached the app), and that
/// the legitimate client is answered before and after, also on a connection kept open across
/// the refusal.
fn refused_and_nothing_lost(refusal: Refusal) {
    let mut sidecar = Sidecar::start();
    let bundle = sidecar.pki.bundle_pem().to_owned();
    let legit = mesh_client(&sidecar.legit, &bundle);
    let caller = format!(";URI={}", causeway_e2e::mtls::shop_id("frontend"));

    let mut kept = Vec::new();
    for i in &sidecar.inbound {
        let mut conn = KeptConnection::open(i.addr(), legit.clone());
        let kind = i.protocol.name();
        let (status, body) = conn
            .get(&format!("/legit/{kind}/kept-before"))
            .unwrap_or_else(|e| panic!("{kind}: {e}\n{}", sidecar.envoy.log_text()));
        assert_eq!(status, 200, "{kind}: {body}");
        assert_eq!(
            get(i.addr(), legit.clone(), &format!("/legit/{kind}/before")),
            Outcome::Answered,
            "{kind}: {}",
            sidecar.envoy.log_text()
        );
        if let Some(twin) = refusal.twin {
            assert_eq!(
                get(
                    i.addr(),
                    mesh_client(&twin(&sidecar), &bundle),
                    &format!("/twin/{kind}")
                ),
                Outcome::Answered,
                "{kind}: the refused certificate's valid twin"
            );
        }
        kept.push(conn);
    }
    let app_connections: Vec<usize> = sidecar
        .inbound
        .iter()
        .map(|i| i.app.connections())
        .collect();
    let before = sidecar.envoy.stats();
    let stat = |i: &Inbound, s: &BTreeMap<String, u64>, name: &str| {
        s.get(name)
            .copied()
            .unwrap_or_else(|| panic!("{:?}: Envoy has no stat {name}", i.protocol))
    };

    for i in &sidecar.inbound {
        let seen = (refusal.attempt)(&sidecar, i.addr(), refusal.path);
        match (&seen, refusal.alert) {
            (Seen::Tls(Outcome::CertificateRefused(alert)), Some(expected)) => {
                assert_eq!(alert, expected, "{:?}", i.protocol)
            }
            (Seen::ClosedAfter(bytes), None) => {
                // Closed without a byte: no HTTP answer, not even a TLS alert.
                assert!(
                    bytes.is_empty(),
                    "{:?}: a plaintext caller got {:?}",
                    i.protocol,
                    String::from_utf8_lossy(bytes)
                )
            }
            _ => panic!(
                "{:?}: refused caller saw {seen:?}\n{}",
                i.protocol,
                sidecar.envoy.log_text()
            ),
        }
    }
    // Counters are bumped on Envoy's worker; wait until both refusals are counted.
    let counted = wait_for(Duration::from_secs(10), || {
        let now = sidecar.envoy.stats();
        sidecar
            .inbound
            .iter()
            .all(|i| {
                let name = i.listener_stat(&format!("ssl.{}", refusal.stat));
                now.get(&name).copied().unwrap_or(0) > before.get(&name).copied().unwrap_or(0)
            })
            .then_some(now)
    });
    let after = counted.unwrap_or_else(|| {
        panic!(
            "ssl.{} never counted the refusal; stats that changed: {:#?}\n{}",
            refusal.stat,
            changed(&before, &sidecar.envoy.stats()),
            sidecar.envoy.log_text()
        )
    });
    let diff = changed(&before, &after);
    for (i, app_before) in sidecar.inbound.iter().zip(&app_connections) {
        let delta = |name: &str| stat(i, &after, name) - stat(i, &before, name);
        // This port's stats that changed, for failure messages.
        let diff: BTreeMap<&String, &(u64, u64)> = diff
            .iter()
            .filter(|(k, _)| {
                k.starts_with(&i.listener_stat(""))
                    || k.starts_with(&i.cluster_stat(""))
                    || k.contains(&format!("inbound_{}.", i.port))
            })
            .collect();
        // The only TLS counter that moved (besides the OCSP stapling ones every handshake
        // past the ServerHello moves, refused or not) is the refusal's reason.
        let ssl_changes: Vec<&String> = diff
            .keys()
            .copied()
            .filter(|k| {
                k.starts_with(&i.listener_stat("ssl."))
                    && !k.starts_with(&i.listener_stat("ssl.ocsp_staple_"))
            })
            .collect();
        let expected = i.listener_stat(&format!("ssl.{}", refusal.stat));
        assert_eq!(ssl_changes, vec![&expected], "{:?}: {diff:#?}", i.protocol);
        assert_eq!(delta(&expected), 1, "{:?}: {diff:#?}", i.protocol);
        // The caller reached this listener, and no handshake completed.
        assert_eq!(
            delta(&i.listener_stat("downstream_cx_total")),
            1,
            "{diff:#?}"
        );
        assert_eq!(delta(&i.listener_stat("ssl.handshake")), 0, "{diff:#?}");
        // Not a byte was sent to the app.
        assert_eq!(
            delta(&i.cluster_stat("upstream_cx_tx_bytes_total")),
            0,
            "{diff:#?}"
        );
        match i.protocol {
            Protocol::Http => {
                // No request decoded, no connection to the app opened.
                assert_eq!(
                    delta(&format!("http.inbound_{}.downstream_rq_total", i.port)),
                    0,
                    "{diff:#?}"
                );
                assert_eq!(delta(&i.cluster_stat("upstream_rq_total")), 0, "{diff:#?}");
                assert_eq!(delta(&i.cluster_stat("upstream_cx_total")), 0, "{diff:#?}");
                assert_eq!(i.app.connections(), *app_before, "{diff:#?}");
            }
            // The TCP proxy connects to the app only once the caller's handshake completed
            // (`upstream_connect_mode`), so a refused caller opens nothing to the app.
            Protocol::Tcp => {
                assert_eq!(delta(&i.cluster_stat("upstream_cx_total")), 0, "{diff:#?}");
                assert_eq!(i.app.connections(), *app_before, "{diff:#?}");
            }
        }
    }
    // Envoy's log names the reason, once per refused connection.
    let reason_logged = || {
        tls_log(&sidecar.envoy)
            .iter()
            .filter(|l| l.contains("TLS_error:") && l.contains(refusal.log))
            .count()
    };
    wait_for(Duration::from_secs(10), || {
        (reason_logged() >= sidecar.inbound.len()).then_some(())
    });
    assert_eq!(
        reason_logged(),
        sidecar.inbound.len(),
        "Envoy's log does not say {:?} once per refused connection:\n{}",
        refusal.log,
        tls_log(&sidecar.envoy).join("\n")
    );

    // Nothing lost: the kept connections and new ones are answered, and Envoy runs on.
    for (i, conn) in sidecar.inbound.iter().zip(&mut kept) {
        let kind = i.protocol.name();
        assert_eq!(
            get(i.addr(), legit.clone(), &format!("/legit/{kind}/after")),
            Outcome::Answered,
            "{kind}: {}",
            sidecar.envoy.log_text()
        );
        let (status, body) = conn
            .get(&format!("/legit/{kind}/kept-after"))
            .unwrap_or_else(|e| panic!("{kind}: kept connection: {e}"));
        assert_eq!(status, 200, "{kind}: {body}");
        let mut seen: Vec<String> = i
            .app
            .requests()
            .iter()
            .map(|(line, xfcc)| {
                if i.protocol == Protocol::Http {
                    // Envoy told the app who called: the verified SPIFFE ID.
                    assert!(xfcc.ends_with(&caller), "{line}: {xfcc}");
                }
                line.clone()
            })
            .collect();
        seen.sort();
        let mut expected: Vec<String> = ["after", "before", "kept-after", "kept-before"]
            .iter()
            .map(|p| format!("GET /legit/{kind}/{p} HTTP/1.1"))
            .chain(refusal.twin.map(|_| format!("GET /twin/{kind} HTTP/1.1")))
            .collect();
        expected.sort();
        assert_eq!(
            seen, expected,
            "{kind}: the app saw only the legitimate requests"
        );
    }
    assert!(
        sidecar.envoy.is_running_and_ready(),
        "{}",
        sidecar.envoy.log_text()
    );
}

#[test]
fn plaintext_is_refused_by_the_inbound_handshake() {
    refused_and_nothing_lost(Refusal {
        path: "/refused/plaintext",
        attempt: |_, addr, path| plaintext(addr, path),
        stat: "connection_error",
        alert: None,
        log: "OPENSSL_internal:HTTP_REQUEST",
        twin: None,
    });
}

#[test]
fn a_tls_client_without_a_certificate_is_refused() {
    refused_and_nothing_lost(Refusal {
        path: "/refused/no-certificate",
        attempt: |s, addr, path| {
            Seen::Tls(get(
                addr,
                client_without_certificate(s.pki.bundle_pem()),
                path,
            ))
        },
        stat: "fail_verify_no_cert",
        alert: Some("CertificateRequired"),
        log: "OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE",
        twin: None,
    });
}

#[test]
fn a_client_certificate_from_a_foreign_root_is_refused() {
    refused_and_nothing_lost(Refusal {
        path: "/refused/foreign-root",
        attempt: |s, addr, path| {
            // Another root of the same trust domain, its own alpha intermediate, a regular
            // leaf for the same SPIFFE ID as the legitimate client's.
            let dir = tempfile::tempdir().expect("tmp");
            let foreign = Pki::generate(dir.path());
            let (_, foreign_alpha) = foreign.cluster("alpha");
            let leaf = issued(&foreign_alpha, "frontend");
            Seen::Tls(get(addr, mesh_client(&leaf, s.pki.bundle_pem()), path))
        },
        stat: "fail_verify_error",
        alert: Some("UnknownCA"),
        log: "error at depth 1: unable to get local issuer certificate",
        // The legitimate client is its twin: the same SPIFFE ID and cluster, from the mesh's
        // root.
        twin: None,
    });
}

#[test]
fn an_expired_client_certificate_of_the_mesh_is_refused() {
    refused_and_nothing_lost(Refusal {
        path: "/refused/expired",
        attempt: |s, addr, path| {
            // Issued by alpha's real intermediate for alpha's SAN, expired a day ago.
            let now = OffsetDateTime::now_utc();
            let leaf = hand_made(
                s,
                now - time::Duration::days(2),
                now - time::Duration::days(1),
            );
            Seen::Tls(get(addr, mesh_client(&leaf, s.pki.bundle_pem()), path))
        },
        stat: "fail_verify_error",
        alert: Some("CertificateExpired"),
        log: "error at depth 0: certificate has expired",
        twin: Some(|s| {
            let now = OffsetDateTime::now_utc();
            hand_made(
                s,
                now - time::Duration::minutes(5),
                now + time::Duration::hours(1),
            )
        }),
    });
}

/// `shop/frontend` of alpha, signed with alpha's intermediate key by the test, valid from
/// `not_before` to `not_after`.
fn hand_made(s: &Sidecar, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Credential {
    signed_with(
        &s.alpha,
        &cid("alpha").certificate_san(TD),
        not_before,
        not_after,
    )
}
