//! The data plane's SDS client against the real agent SDS server (fed by a real agent and CA)
//! and against a scripted SDS server: credentials, rotation, reconnection, ACK/NACK, and the
//! rustls configurations built from them in real handshakes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use causeway_model::{ClusterId, SpiffeId};
use causeway_trust::agent::{Agent, AgentConfig, AgentTuning};
use causeway_trust::ca::{ClusterCa, RootCa};
use causeway_trust::credential::{CredentialStore, Grant};
use causeway_trust::issue::{parse_csr, WorkloadKey};
use causeway_trust::pem_certs;
use causeway_trust::sds::{SdsServer, SECRET_TYPE};
use causeway_trust::service::{control_plane_identity, CaService, CONTROL_PLANE_SERVER_NAME};
use causeway_trust::verify::{mtls_server_config, peer_identity, server_config};
use causeway_xds::bootstrap::CONTROL_PLANE_SNI;
use causeway_xds::client::sds::{
    mesh_client_tls, mesh_server_tls, watch, xds_client_tls, Credentials, SdsClient,
    SdsClientError, SdsTuning,
};
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource, Node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::sync::{mpsc, oneshot, watch as channel};
use tokio_stream::wrappers::ReceiverStream;

const TD: &str = "causeway.local";
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
const WITHIN: Duration = Duration::from_secs(10);

type Creds = channel::Receiver<Option<Arc<Credentials>>>;

fn node() -> Node {
    Node {
        id: "sidecar~10.0.0.1~client.demo~demo.svc.cluster.local".into(),
        cluster: "client".into(),
        ..Default::default()
    }
}

/// Fast reconnection, so the tests stay short.
fn fast() -> SdsTuning {
    SdsTuning {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        response_timeout: Duration::from_millis(500),
        ..SdsTuning::default()
    }
}

/// A mesh root, alpha's intermediate, a CA service on 127.0.0.1 and a running agent for
/// `demo/client`.
struct Mesh {
    root: RootCa,
    alpha: ClusterCa,
    ca: Arc<CaService>,
    agent: Arc<Agent>,
    _ca_stop: oneshot::Sender<()>,
}

impl Mesh {
    async fn start() -> Self {
        let root = RootCa::generate(TD, YEAR).expect("root");
        let alpha_id = ClusterId::new("alpha").expect("id");
        let files = root
            .issue_intermediate(&alpha_id, TD, YEAR)
            .expect("intermediate");
        let cluster_ca = || ClusterCa::from_files(&files, alpha_id.clone(), TD).expect("CA");
        let mut store = CredentialStore::new();
        let grant = Grant {
            cluster: alpha_id.clone(),
            namespace: "demo".into(),
            service_account: "client".into(),
            workload: "client".into(),
        };
        store.insert("tok-client", grant).expect("token");
        let ca = Arc::new(CaService::new(
            TD,
            vec![cluster_ca()],
            Arc::new(store),
            Duration::from_secs(3600),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let ca_addr: SocketAddr = listener.local_addr().expect("addr");
        let (ca_stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(Arc::clone(&ca).serve(listener, async move {
            let _ = stopped.await;
        }));
        let agent = Agent::with_tuning(
            AgentConfig {
                ca_addr,
                ca_bundle_pem: root.bundle_pem().to_owned(),
                trust_domain: TD.into(),
                token: "tok-client".into(),
                cluster: None,
                identity: SpiffeId::new(TD, "demo", "client"),
                ttl: Duration::from_secs(3600),
            },
            AgentTuning {
                backoff_initial: Duration::from_millis(100),
                backoff_max: Duration::from_millis(500),
                connect_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(5),
            },
        );
        tokio::spawn(Arc::clone(&agent).run());
        Self {
            alpha: cluster_ca(),
            root,
            ca,
            agent,
            _ca_stop: ca_stop,
        }
    }

    fn bundle(&self) -> &str {
        self.root.bundle_pem()
    }

    /// A chain and key for `demo/<sa>` from alpha's intermediate.
    fn leaf(&self, sa: &str) -> (String, String) {
        let key = WorkloadKey::generate().expect("key");
        let csr = key.csr_pem(&SpiffeId::new(TD, "demo", sa)).expect("csr");
        let issued = self
            .alpha
            .sign(&parse_csr(&csr).expect("csr"), Duration::from_secs(3600))
            .expect("sign");
        (issued.chain_pem, key.private_key_pem())
    }

    /// The agent's SDS server on `path` until the returned sender fires or drops.
    async fn serve_sds(&self, path: &Path) -> oneshot::Sender<()> {
        let (stop, stopped) = oneshot::channel::<()>();
        let server = SdsServer::new(self.agent.certificates());
        let p = path.to_path_buf();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            server.serve(&p, shutdown).await.expect("SDS server");
        });
        stop
    }
}

/// Waits (bounded) for published credentials satisfying `cond`.
async fn wait_for(
    rx: &mut Creds,
    what: &str,
    cond: impl Fn(&Credentials) -> bool,
) -> Arc<Credentials> {
    let found = tokio::time::timeout(WITHIN, async {
        loop {
            if let Some(c) = rx.borrow_and_update().clone() {
                if cond(&c) {
                    return c;
                }
            }
            rx.changed().await.expect("the SDS client runs");
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{what}: not within {WITHIN:?}; last {:?}", rx.borrow()))
}

fn key_der(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key")
}

#[tokio::test]
async fn publishes_the_agents_certificate_and_roots() {
    let mesh = Mesh::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("sds.sock");
    let _sds = mesh.serve_sds(&path).await;
    let mut rx = watch(path, node());
    let creds = wait_for(&mut rx, "first credentials", |_| true).await;

    let served = mesh.agent.current().expect("the agent has a certificate");
    assert_eq!(creds.version, served.generation.to_string());
    assert_eq!(creds.chain, pem_certs(&served.chain_pem));
    assert_eq!(creds.key, key_der(&served.key_pem));
    assert_eq!(creds.roots, pem_certs(&served.bundle_pem));
    assert_eq!(creds.roots, pem_certs(mesh.bundle()));
    assert_eq!(
        creds.identity().expect("identity"),
        SpiffeId::new(TD, "demo", "client")
    );
    let shown = format!("{creds:?}");
    assert!(shown.contains("[elided]"), "{shown}");
    let key_b64 = served.key_pem.lines().nth(1).expect("a base64 line");
    assert!(
        !shown.contains(key_b64) && !shown.contains("PRIVATE"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_forced_rotation_publishes_new_credentials() {
    let mesh = Mesh::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("sds.sock");
    let _sds = mesh.serve_sds(&path).await;
    let mut rx = watch(path, node());
    let first = wait_for(&mut rx, "first credentials", |_| true).await;

    mesh.agent.force_rotate();
    let second = wait_for(&mut rx, "rotated credentials", |c| {
        c.version != first.version
    })
    .await;
    let served = mesh.agent.current().expect("certificate");
    assert_eq!(second.version, served.generation.to_string());
    assert_eq!(second.version, "2");
    assert_ne!(second.chain, first.chain);
    assert_ne!(second.key, first.key, "a new key with each certificate");
    assert_eq!(second.chain, pem_certs(&served.chain_pem));
    assert_eq!(second.key, key_der(&served.key_pem));
}

#[tokio::test]
async fn a_client_started_before_the_agent_gets_credentials_once_it_appears() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("sds.sock");
    // No socket yet: the client retries.
    let mut rx = SdsClient::new(path.clone(), node())
        .with_tuning(fast())
        .start();
    let mesh = Mesh::start().await;
    assert!(rx.borrow().is_none(), "nothing to publish without an agent");
    // A socket that accepts and hangs up: the client keeps retrying through failures.
    let broken = tokio::net::UnixListener::bind(&path).expect("bind");
    for attempt in 1..=2 {
        let (conn, _) = tokio::time::timeout(WITHIN, broken.accept())
            .await
            .unwrap_or_else(|_| panic!("connection attempt {attempt} within {WITHIN:?}"))
            .expect("accept");
        drop(conn);
    }
    drop(broken);
    assert!(rx.borrow().is_none());
    // The agent appears (its server replaces the stale socket).
    let _sds = mesh.serve_sds(&path).await;
    let creds = wait_for(&mut rx, "credentials once the agent is up", |_| true).await;
    let served = mesh.agent.current().expect("certificate");
    assert_eq!(creds.chain, pem_certs(&served.chain_pem));
}

/// A TLS handshake over an in-memory pipe; `Err` with the client's (or else the server's)
/// error. On success, the server's view of the client's SPIFFE ID and the ALPN protocol.
async fn handshake(
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
) -> Result<(SpiffeId, Option<Vec<u8>>), String> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let name = ServerName::try_from(CONTROL_PLANE_SNI).expect("name");
    let both = async { tokio::join!(connector.connect(name, c), acceptor.accept(s)) };
    let (client, server) = tokio::time::timeout(WITHIN, both)
        .await
        .expect("the handshake ends in time");
    let client = client.map_err(|e| format!("client: {e}"))?;
    let server = server.map_err(|e| format!("server: {e}"))?;
    let (_, conn) = server.get_ref();
    assert_eq!(
        client.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let id = peer_identity(conn.peer_certificates(), TD).map_err(|e| e.to_string())?;
    Ok((id.spiffe, conn.alpn_protocol().map(<[u8]>::to_vec)))
}

/// Credentials for `demo/client` from the real agent over SDS.
async fn agent_credentials(mesh: &Mesh, dir: &Path) -> (Arc<Credentials>, oneshot::Sender<()>) {
    let path = dir.join("sds.sock");
    let stop = mesh.serve_sds(&path).await;
    let mut rx = watch(path, node());
    (wait_for(&mut rx, "credentials", |_| true).await, stop)
}

#[tokio::test]
async fn xds_client_tls_accepts_only_the_control_plane() {
    let mesh = Mesh::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (creds, _sds) = agent_credentials(&mesh, dir.path()).await;
    let control_plane = || {
        let resolver = mesh
            .ca
            .serving_resolver(control_plane_identity(TD), CONTROL_PLANE_SERVER_NAME)
            .expect("serving certificate");
        mtls_server_config(resolver, mesh.bundle(), TD).expect("server tls")
    };
    let client = |td: Option<&str>| xds_client_tls(&creds, td).expect("client tls");

    for td in [Some(TD), None] {
        let (peer, alpn) = handshake(client(td), control_plane())
            .await
            .unwrap_or_else(|e| panic!("trust domain {td:?}: {e}"));
        assert_eq!(peer, SpiffeId::new(TD, "demo", "client"), "our certificate");
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    }
    let err = handshake(client(Some("other.domain")), control_plane())
        .await
        .expect_err("the control plane of another trust domain");
    assert!(err.starts_with("client: invalid peer certificate"), "{err}");

    // A workload's certificate under the same root is not the control plane.
    let (chain, key) = mesh.leaf("echo");
    for td in [Some(TD), None] {
        let workload = server_config(&chain, &key, mesh.bundle(), TD, Vec::new()).expect("tls");
        let err = handshake(client(td), workload)
            .await
            .expect_err("a workload posing as the control plane");
        assert!(
            err.starts_with("client: invalid peer certificate"),
            "{td:?}: {err}"
        );
    }

    // The control plane's identity under another root is not trusted.
    let other_root = RootCa::generate(TD, YEAR).expect("root");
    let id = ClusterId::new("alpha").expect("id");
    let files = other_root
        .issue_intermediate(&id, TD, YEAR)
        .expect("intermediate");
    let other_ca = Arc::new(CaService::new(
        TD,
        vec![ClusterCa::from_files(&files, id, TD).expect("CA")],
        Arc::new(CredentialStore::new()),
        Duration::from_secs(3600),
    ));
    let resolver = other_ca
        .serving_resolver(control_plane_identity(TD), CONTROL_PLANE_SERVER_NAME)
        .expect("serving certificate");
    for td in [Some(TD), None] {
        let impostor =
            mtls_server_config(Arc::clone(&resolver), other_root.bundle_pem(), TD).expect("tls");
        let err = handshake(client(td), impostor)
            .await
            .expect_err("a foreign root");
        assert!(
            err.starts_with("client: invalid peer certificate"),
            "{td:?}: {err}"
        );
    }
}

#[tokio::test]
async fn mesh_tls_checks_both_peers() {
    let mesh = Mesh::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (client_creds, _sds) = agent_credentials(&mesh, dir.path()).await;
    let (chain, key) = mesh.leaf("echo");
    let echo = Credentials::from_pem(&chain, &key, mesh.bundle(), "static").expect("creds");
    let echo_id = format!("spiffe://{TD}/ns/demo/sa/echo");

    let client = mesh_client_tls(&client_creds, std::slice::from_ref(&echo_id)).expect("tls");
    let server = mesh_server_tls(&echo).expect("tls");
    let (peer, alpn) = handshake(client, server).await.expect("mesh mTLS");
    assert_eq!(peer, SpiffeId::new(TD, "demo", "client"));
    assert_eq!(alpn, None);

    let greeter = [format!("spiffe://{TD}/ns/demo/sa/greeter")];
    let client = mesh_client_tls(&client_creds, &greeter).expect("tls");
    let err = handshake(client, mesh_server_tls(&echo).expect("tls"))
        .await
        .expect_err("echo is not greeter");
    assert!(err.starts_with("client: invalid peer certificate"), "{err}");

    // The server requires a client certificate.
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls 1.3")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(
        causeway_trust::verify::SpiffeServerVerifier::new(mesh.bundle(), TD, Vec::new())
            .expect("verifier"),
    ))
    .with_no_client_auth();
    let err = handshake(anonymous, mesh_server_tls(&echo).expect("tls"))
        .await
        .expect_err("no client certificate");
    assert!(err.starts_with("server:") || err.contains("alert"), "{err}");

    assert!(matches!(
        mesh_client_tls(&client_creds, &[]),
        Err(SdsClientError::ExpectedIdentities(_))
    ));
    assert!(matches!(
        mesh_client_tls(&client_creds, &["echo".to_owned()]),
        Err(SdsClientError::BadIdentity(_))
    ));
}

// ---- A scripted SDS server: the test sends each response and reads each request. ----

type Responses = mpsc::Sender<Result<DiscoveryResponse, tonic::Status>>;
type Stream = (Responses, mpsc::UnboundedReceiver<DiscoveryRequest>);

struct Scripted {
    streams: mpsc::UnboundedSender<Stream>,
}

#[tonic::async_trait]
impl SecretDiscoveryService for Scripted {
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, tonic::Status>>;
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, tonic::Status>>;

    async fn stream_secrets(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamSecretsStream>, tonic::Status> {
        let (resp_tx, resp_rx) = mpsc::channel(8);
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                if req_tx.send(req).is_err() {
                    break;
                }
            }
        });
        let _ = self.streams.send((resp_tx, req_rx));
        Ok(tonic::Response::new(ReceiverStream::new(resp_rx)))
    }

    async fn delta_secrets(
        &self,
        _request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaSecretsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted"))
    }

    async fn fetch_secrets(
        &self,
        _request: tonic::Request<DiscoveryRequest>,
    ) -> Result<tonic::Response<DiscoveryResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted"))
    }
}

fn serve_scripted(path: PathBuf) -> mpsc::UnboundedReceiver<Stream> {
    let (streams, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::UnixListener::bind(path).expect("bind");
    let incoming = futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SecretDiscoveryServiceServer::new(Scripted { streams }))
            .serve_with_incoming(incoming),
    );
    rx
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(WITHIN, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WITHIN:?}"))
        .unwrap_or_else(|| panic!("{what}: channel closed"))
}

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineString(pem.to_owned())),
        ..Default::default()
    })
}

fn cert_secret(chain: &str, key: &str) -> Secret {
    Secret {
        name: "default".into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain),
            private_key: (!key.is_empty()).then(|| inline(key)).flatten(),
            ..Default::default()
        })),
    }
}

fn root_secret(bundle: &str) -> Secret {
    Secret {
        name: "ROOTCA".into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(bundle),
                ..Default::default()
            },
        )),
    }
}

fn response(version: &str, secrets: &[Secret]) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        nonce: format!("n{version}"),
        type_url: SECRET_TYPE.into(),
        resources: secrets
            .iter()
            .map(|s| Any {
                type_url: SECRET_TYPE.into(),
                value: s.encode_to_vec(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Sends `version` and returns the client's answer to it.
async fn exchange(stream: &mut Stream, version: &str, secrets: &[Secret]) -> DiscoveryRequest {
    stream
        .0
        .send(Ok(response(version, secrets)))
        .await
        .expect("send");
    let req = next(&mut stream.1, &format!("answer to version {version}")).await;
    assert_eq!(req.response_nonce, format!("n{version}"));
    assert!(
        req.node.is_none(),
        "the node goes on the first request only"
    );
    req
}

fn assert_first_request(req: &DiscoveryRequest) {
    assert_eq!(
        req.node.as_ref().map(|n| n.id.as_str()),
        Some(node().id.as_str())
    );
    assert_eq!(req.resource_names, ["default", "ROOTCA"]);
    assert_eq!(req.type_url, SECRET_TYPE);
    assert!(req.version_info.is_empty() && req.response_nonce.is_empty());
}

#[tokio::test]
async fn acks_nacks_and_reconnects() {
    let mesh = Mesh::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("sds.sock");
    let mut streams = serve_scripted(path.clone());
    let mut rx = SdsClient::new(path, node()).with_tuning(fast()).start();

    // An agent that never answers: the client gives up on that stream and opens another.
    let mut silent = next(&mut streams, "first stream").await;
    assert_first_request(&next(&mut silent.1, "first request").await);
    let mut stream = next(&mut streams, "stream after a silent one").await;
    drop(silent);
    assert_first_request(&next(&mut stream.1, "first request").await);

    // Nothing is published before both secrets arrived; each response is ACKed.
    let (chain, key) = mesh.leaf("client");
    let ack = exchange(&mut stream, "1", &[cert_secret(&chain, &key)]).await;
    assert_eq!(ack.version_info, "1");
    assert!(ack.error_detail.is_none());
    assert!(rx.borrow().is_none(), "no roots yet");
    let ack = exchange(&mut stream, "2", &[root_secret(mesh.bundle())]).await;
    assert!(ack.error_detail.is_none());
    let good = wait_for(&mut rx, "credentials", |c| c.version == "2").await;
    assert_eq!(good.chain, pem_certs(&chain));

    // Unusable responses are NACKed naming the secret and field; the last good version stays.
    let (_, other_key) = mesh.leaf("client");
    let bad = [
        (
            vec![cert_secret(&chain, "")],
            "secret default: tls_certificate.private_key is missing",
        ),
        (
            vec![cert_secret(&chain, &other_key)],
            "secret default: tls_certificate.private_key is invalid",
        ),
        (
            vec![cert_secret("junk", &key)],
            "secret default: tls_certificate.certificate_chain is invalid",
        ),
        (
            vec![cert_secret(&chain, &key), root_secret("junk")],
            "secret ROOTCA: validation_context.trusted_ca is invalid",
        ),
        (
            vec![Secret {
                name: "default".into(),
                r#type: None,
            }],
            "secret default: tls_certificate is missing",
        ),
    ];
    for (version, (secrets, expected)) in (3..).zip(&bad) {
        let version = version.to_string();
        let nack = exchange(&mut stream, &version, secrets).await;
        let detail = nack
            .error_detail
            .unwrap_or_else(|| panic!("NACK of {version}"));
        assert!(detail.message.starts_with(expected), "{}", detail.message);
        assert!(!detail.message.contains("PRIVATE"), "{}", detail.message);
        assert_eq!(
            nack.version_info, "2",
            "the NACK names the last accepted version"
        );
        assert!(
            !rx.has_changed().expect("running"),
            "nothing published for {version}"
        );
    }
    assert_eq!(
        rx.borrow().as_ref().map(|c| c.version.clone()).as_deref(),
        Some("2")
    );

    // The agent ends the stream: the client reconnects, keeps its credentials meanwhile, and
    // takes the next version.
    drop(stream);
    let mut stream = next(&mut streams, "stream after the agent closed one").await;
    assert_first_request(&next(&mut stream.1, "first request").await);
    assert!(rx.borrow().is_some());
    let (chain2, key2) = mesh.leaf("client");
    let ack = exchange(
        &mut stream,
        "9",
        &[cert_secret(&chain2, &key2), root_secret(mesh.bundle())],
    )
    .await;
    assert!(ack.error_detail.is_none());
    let rotated = wait_for(&mut rx, "credentials after reconnecting", |c| {
        c.version == "9"
    })
    .await;
    assert_eq!(rotated.chain, pem_certs(&chain2));
    assert_eq!(rotated.key, key_der(&key2));
}
