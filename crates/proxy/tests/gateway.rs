//! The gateway over real sockets: TLS clients with a server name go through it to TLS servers
//! that answer with their own name (TLS end to end, never terminated at the gateway); unknown
//! names and plaintext are closed without reaching anyone; weights spread connections; a new
//! snapshot re-routes new connections while open ones carry on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_proxy::config::{SharedSnapshot, Snapshot};
use causeway_proxy::credentials::MeshCredentials;
use causeway_proxy::gateway;
use causeway_proxy::worker::{WorkerLimits, Workers};
use causeway_xds::dataplane::{
    ChainAction, ChainMatch, ClusterConfig, EndpointConfig, EndpointSource, FilterChainConfig,
    LbPolicy, ListenerConfig, LoadAssignmentConfig, LocalityEndpoints, TcpProxyConfig,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Pki {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).expect("root").der().clone();
        Pki {
            issuer: Issuer::new(params, key),
            root,
        }
    }

    fn server_config(&self, name: &str) -> rustls::ServerConfig {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("leaf");
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config")
    }

    fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.clone()).expect("root");
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

/// A TLS server for `name` that answers every connection with `name` and closes.
async fn named_server(pki: &Pki, name: &str) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config(name)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let name = name.to_owned();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let name = name.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(conn).await {
                    let mut buf = [0u8; 5];
                    if tls.read_exact(&mut buf).await.is_ok() {
                        let _ = tls
                            .write_all(
                                format!("{name}:{}", String::from_utf8_lossy(&buf)).as_bytes(),
                            )
                            .await;
                        let _ = tls.shutdown().await;
                    }
                }
            });
        }
    });
    addr
}

fn chain(sni: &str, cluster: &str) -> FilterChainConfig {
    FilterChainConfig {
        name: sni.into(),
        matches: ChainMatch {
            server_names: vec![sni.into()],
            ..Default::default()
        },
        tls: None,
        handshake_timeout: None,
        action: ChainAction::TcpProxy(TcpProxyConfig {
            stat_prefix: sni.into(),
            clusters: causeway_xds::dataplane::ClusterSplit::One(cluster.into()),
            idle_timeout: Some(Duration::from_secs(5)),
            connect_after_tls_handshake: false,
            rbac: Vec::new(),
        }),
    }
}

fn cluster(name: &str, endpoints: &[(SocketAddr, u32)]) -> ClusterConfig {
    ClusterConfig {
        name: name.into(),
        upstream_tls: None,
        endpoints: EndpointSource::Static(LoadAssignmentConfig {
            cluster_name: name.into(),
            localities: vec![LocalityEndpoints {
                region: String::new(),
                zone: String::new(),
                sub_zone: String::new(),
                priority: 0,
                weight: None,
                endpoints: endpoints
                    .iter()
                    .map(|(address, weight)| EndpointConfig {
                        address: *address,
                        weight: *weight,
                        healthy: true,
                        cluster: None,
                        sni: None,
                        pod: None,
                        workload: None,
                        active_health_check: false,
                        through_gateway: false,
                    })
                    .collect(),
            }],
        }),
        connect_timeout: Duration::from_secs(1),
        lb_policy: LbPolicy::RoundRobin,
        outlier_detection: None,
        health_check: None,
        max_retries: causeway_xds::dataplane::DEFAULT_MAX_RETRIES,
        healthy_panic_threshold_percent: 0.0,
        service: None,
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn snapshot(
    generation: u64,
    gateway: SocketAddr,
    routes: &[(&str, &str)],
    clusters: Vec<ClusterConfig>,
) -> SharedSnapshot {
    let listener = ListenerConfig {
        name: "gateway".into(),
        address: gateway,
        bind: true,
        use_original_dst: false,
        inspect_tls: true,
        inspect_timeout: Duration::from_millis(500),
        filter_chains: routes.iter().map(|(s, c)| chain(s, c)).collect(),
        default_chain: None,
    };
    Arc::new(Snapshot {
        generation,
        listeners: BTreeMap::from([("gateway".to_owned(), listener)]),
        clusters: clusters.into_iter().map(|c| (c.name.clone(), c)).collect(),
        assignments: BTreeMap::new(),
    })
}

/// Connects through the gateway with `sni`, says hello, returns what the server answered.
async fn call(pki: &Pki, gateway: SocketAddr, sni: &str) -> std::io::Result<String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config()));
    let tcp = connect_when_listening(gateway).await?;
    let name = ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    let mut tls = tokio::time::timeout(Duration::from_secs(3), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))??;
    tls.write_all(b"hello").await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(3), tls.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    Ok(out)
}

/// The workers bind asynchronously: retry connection refusals for a bounded time.
async fn connect_when_listening(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passes_through_by_sni_and_unknown_names_and_plaintext_are_closed() {
    let pki = Pki::new();
    let a = named_server(&pki, "a.example").await;
    let b = named_server(&pki, "b.example").await;
    let gw = free_addr();
    let (tx, rx) = watch::channel(snapshot(
        1,
        gw,
        &[("a.example", "A"), ("b.example", "B")],
        vec![cluster("A", &[(a, 1)]), cluster("B", &[(b, 1)])],
    ));
    let workers = Workers::start(
        2,
        WorkerLimits::default(),
        MeshCredentials::files_only(),
        rx,
        gateway::handler(Default::default()),
    )
    .expect("workers");

    assert_eq!(
        call(&pki, gw, "a.example").await.expect("a"),
        "a.example:hello"
    );
    assert_eq!(
        call(&pki, gw, "b.example").await.expect("b"),
        "b.example:hello"
    );
    // A name no chain routes: closed before any upstream is chosen.
    assert!(call(&pki, gw, "c.example").await.is_err());
    // Plaintext: closed without an answer.
    let mut plain = connect_when_listening(gw).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(3), plain.read_to_end(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "plaintext gets nothing back");
    // A silent client is closed at the inspection timeout.
    let mut silent = connect_when_listening(gw).await.expect("connect");
    let closed = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut [0u8; 1])).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    // Still serving after all that.
    assert_eq!(
        call(&pki, gw, "a.example").await.expect("a"),
        "a.example:hello"
    );

    // Re-route a.example to B: new connections follow, nothing restarts.
    tx.send(snapshot(
        2,
        gw,
        &[("a.example", "B")],
        vec![cluster("B", &[(b, 1)])],
    ))
    .expect("send");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // b.example's certificate does not match a.example: the client refuses the handshake,
        // which proves the connection reached B (TLS end to end, the gateway never answers).
        if call(&pki, gw, "a.example").await.is_err() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never re-routed");
    }
    workers.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_endpoints_by_weight() {
    let pki = Pki::new();
    let one = named_server(&pki, "a.example").await;
    // Both endpoints answer as a.example; the second counts the connections it gets.
    let (tally_addr, tally) = tally_server(&pki).await;
    let gw = free_addr();
    let (_tx, rx) = watch::channel(snapshot(
        1,
        gw,
        &[("a.example", "A")],
        vec![cluster("A", &[(one, 3), (tally_addr, 1)])],
    ));
    let workers = Workers::start(
        1,
        WorkerLimits::default(),
        MeshCredentials::files_only(),
        rx,
        gateway::handler(Default::default()),
    )
    .expect("workers");
    for _ in 0..40 {
        assert_eq!(
            call(&pki, gw, "a.example").await.expect("call"),
            "a.example:hello"
        );
    }
    // One worker, smooth weighted round robin: exactly a quarter.
    assert_eq!(
        tally.load(std::sync::atomic::Ordering::Relaxed),
        10,
        "weight 1 of 4 over 40 connections"
    );
    workers.stop();
}

/// A TLS server for a.example that counts its connections.
async fn tally_server(pki: &Pki) -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config("a.example")));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(conn).await {
                    let mut buf = [0u8; 5];
                    if tls.read_exact(&mut buf).await.is_ok() {
                        let _ = tls.write_all(b"a.example:hello").await;
                        let _ = tls.shutdown().await;
                    }
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_limit_new_connections_are_closed_and_others_go_on() {
    let pki = Pki::new();
    let a = named_server(&pki, "a.example").await;
    let gw = free_addr();
    let (_tx, rx) = watch::channel(snapshot(
        1,
        gw,
        &[("a.example", "A")],
        vec![cluster("A", &[(a, 1)])],
    ));
    let limits = WorkerLimits { max_connections: 2 };
    let workers = Workers::start(
        1,
        limits,
        MeshCredentials::files_only(),
        rx,
        gateway::handler(Default::default()),
    )
    .expect("workers");
    let overloaded = workers.overloaded();
    // Two silent connections hold the limit (each until the 500 ms inspection timeout).
    let _one = connect_when_listening(gw).await.expect("connect");
    let _two = connect_when_listening(gw).await.expect("connect");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut third = TcpStream::connect(gw).await.expect("connect");
        let got = tokio::time::timeout(Duration::from_millis(200), third.read(&mut [0u8; 1])).await;
        if matches!(got, Ok(Ok(0)) | Ok(Err(_)))
            && overloaded.load(std::sync::atomic::Ordering::Relaxed) >= 1
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the third connection was never refused"
        );
    }
    // Once the silent ones time out, callers are served again.
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(answer) = call(&pki, gw, "a.example").await {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("served after the idle connections closed");
    assert_eq!(served, "a.example:hello");
    workers.stop();
}
