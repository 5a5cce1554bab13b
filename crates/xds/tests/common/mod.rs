//! The scripted-client harness shared by the ADS tests: the example mesh served by a real
//! ADS server over gRPC with mTLS (a test mesh root, an intermediate per cluster, client
//! certificates for any identity), and the means to change it.
#![allow(dead_code)]

pub mod files;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use causeway_discovery::MeshIndex;
use causeway_model::{ClusterId, SpiffeId};
use causeway_registry::MeshDirectory;
use causeway_trust::ca::{ClusterCa, ClusterCaFiles, RootCa};
use causeway_trust::credential::CredentialStore;
use causeway_trust::issue::{parse_csr, WorkloadKey};
use causeway_trust::service::{control_plane_identity, CaService, CONTROL_PLANE_SERVER_NAME};
use causeway_trust::verify::mtls_server_config;
use causeway_xds::node::keys;
use causeway_xds::server::{serve_tls_with_limits, XdsLimits};
use causeway_xds::{AdsServer, MeshState, ProxyRegistry, ServerConfig, XdsTls};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ECHO: &str = "outbound|80||echo.demo.svc.cluster.local";
pub const GREETER: &str = "outbound|80||greeter.demo.svc.cluster.local";

pub fn example() -> MeshDirectory {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/three-clusters");
    let d = MeshDirectory::open(dir);
    assert!(d.errors().is_empty(), "{:?}", d.errors());
    d
}

pub fn index_of(dir: &MeshDirectory) -> MeshIndex {
    let objects: Vec<(ClusterId, _)> = dir
        .clusters()
        .iter()
        .map(|(n, s)| {
            (
                ClusterId::new(n).expect("id"),
                s.objects.clone().expect("loaded"),
            )
        })
        .collect();
    MeshIndex::build(
        Arc::clone(dir.mesh().expect("mesh")),
        objects.iter().map(|(i, o)| (i, &**o)),
    )
}

/// What the control plane builds for the sidecar of `cluster`/demo/`workload` in `index` (its
/// app on 127.1.100.10, outbound block 127.200.0.0/16).
pub fn sidecar_of(
    index: &MeshIndex,
    cluster: &str,
    workload: &str,
) -> causeway_xds::resources::Resources {
    sidecar_on(index, cluster, workload, Default::default())
}

/// [`sidecar_of`] for a proxy running `data_plane`.
pub fn sidecar_on(
    index: &MeshIndex,
    cluster: &str,
    workload: &str,
    data_plane: causeway_xds::node::DataPlane,
) -> causeway_xds::resources::Resources {
    use causeway_model::{ProxyIdentity, ProxyRole};
    use causeway_xds::node::{OutboundBlock, ProxyNode};
    let ctx = causeway_discovery::ProxyContext::resolve(
        index,
        ProxyIdentity {
            cluster: ClusterId::new(cluster).expect("id"),
            namespace: "demo".into(),
            workload: workload.into(),
            role: ProxyRole::Sidecar,
        },
    )
    .expect("context");
    let node = ProxyNode {
        id: workload.into(),
        identity: ctx.identity.clone(),
        app_address: Some("127.1.100.10".parse().expect("ip")),
        outbound: Some(OutboundBlock::parse("127.200.0.0/16").expect("block")),
        network: None,
        data_plane,
    };
    causeway_xds::build::sidecar_resources(index, &node, &ctx)
}

/// What the control plane builds for an east-west gateway of `cluster` in `index`.
pub fn gateway_of(index: &MeshIndex, cluster: &str) -> causeway_xds::resources::Resources {
    use causeway_model::{ProxyIdentity, ProxyRole};
    let ctx = causeway_discovery::ProxyContext::resolve(
        index,
        ProxyIdentity {
            cluster: ClusterId::new(cluster).expect("id"),
            namespace: "causeway-system".into(),
            workload: "eastwest-0".into(),
            role: ProxyRole::Gateway,
        },
    )
    .expect("context");
    causeway_xds::build::gateway_resources(index, &ctx)
}

/// Every resource of type `t` in `r`, decoded.
pub fn decoded<M: prost::Message + Default>(
    r: &causeway_xds::resources::Resources,
    t: causeway_xds::resources::TypeUrl,
) -> Vec<M> {
    r.of(t)
        .map(|m| {
            m.values()
                .map(|res| M::decode(&*res.body.value).expect("decode"))
                .collect()
        })
        .unwrap_or_default()
}

pub fn node(workload: &str) -> Node {
    node_in("alpha", "demo", workload)
}

/// A sidecar node claiming `cluster`/`namespace`/`workload`.
pub fn node_in(cluster: &str, namespace: &str, workload: &str) -> Node {
    let md = [
        (keys::CLUSTER, cluster),
        (keys::NAMESPACE, namespace),
        (keys::WORKLOAD, workload),
        (keys::OUTBOUND_CIDR, "127.101.0.0/16"),
    ];
    Node {
        id: format!("sidecar~{cluster}~{namespace}~{workload}"),
        metadata: Some(Struct {
            fields: md
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        Value {
                            kind: Some(Kind::StringValue((*v).to_owned())),
                        },
                    )
                })
                .collect(),
        }),
        ..Node::default()
    }
}

pub const TD: &str = "causeway.local";

/// How long a well-behaved client waits for a connection or an answer (an Envoy's default
/// `initial_fetch_timeout` is 15 s).
pub const SERVED_WITHIN: Duration = Duration::from_secs(10);

/// A SotW stream on `client` whose first request (CDS) claims `node` (none if `None`): its
/// sender, and its first response or the refusal, within [`SERVED_WITHIN`].
pub async fn first_cds(
    client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    node: impl Into<Option<Node>>,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    Result<(DiscoveryResponse, tonic::Streaming<DiscoveryResponse>), tonic::Status>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: node.into(),
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .expect("send");
    let opened = async {
        let mut stream = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = stream
            .next()
            .await
            .unwrap_or_else(|| Err(tonic::Status::cancelled("the stream ended unanswered")))?;
        Ok((first, stream))
    };
    let opened = tokio::time::timeout(SERVED_WITHIN, opened)
        .await
        .expect("answered in time");
    (tx, opened)
}

/// A test mesh PKI: a root and one intermediate per example cluster.
pub struct Pki {
    pub bundle_pem: String,
    pub cas: BTreeMap<String, ClusterCa>,
    files: Vec<(ClusterId, ClusterCaFiles)>,
}

impl Pki {
    pub fn new() -> Self {
        let year = Duration::from_secs(365 * 24 * 3600);
        let root = RootCa::generate(TD, year).expect("root");
        let files: Vec<(ClusterId, ClusterCaFiles)> = ["alpha", "beta", "gamma"]
            .iter()
            .map(|c| {
                let id = ClusterId::new(*c).expect("id");
                let files = root
                    .issue_intermediate(&id, TD, year)
                    .expect("intermediate");
                (id, files)
            })
            .collect();
        let cas = files
            .iter()
            .map(|(id, f)| {
                let ca = ClusterCa::from_files(f, id.clone(), TD).expect("cluster CA");
                (id.to_string(), ca)
            })
            .collect();
        Self {
            bundle_pem: root.bundle_pem().to_owned(),
            cas,
            files,
        }
    }

    /// A certificate chain and key for `namespace`/`sa`, issued by `cluster`'s intermediate.
    pub fn leaf(&self, cluster: &str, namespace: &str, sa: &str) -> (String, String) {
        let key = WorkloadKey::generate().expect("key");
        let csr = key.csr_pem(&SpiffeId::new(TD, namespace, sa)).expect("csr");
        let issued = self.cas[cluster]
            .sign(&parse_csr(&csr).expect("parse"), Duration::from_secs(3600))
            .expect("sign");
        (issued.chain_pem, key.private_key_pem())
    }

    /// A leaf for `namespace`/`sa` signed directly with `signer`'s intermediate key, bypassing
    /// the CA and its checks (what a holder of that key could mint): the CA's profile (one
    /// SPIFFE ID, server and client usage), but `cluster_san` as its cluster DNS SAN and
    /// `validity` as its lifetime. Chain (leaf, intermediate) and key, as PEM.
    pub fn crafted_leaf(
        &self,
        signer: &str,
        cluster_san: &str,
        (namespace, sa): (&str, &str),
        validity: std::ops::Range<time::OffsetDateTime>,
    ) -> (String, String) {
        let files = &self
            .files
            .iter()
            .find(|(id, _)| id.as_str() == signer)
            .expect("an intermediate of that cluster")
            .1;
        let ca_key = rcgen::KeyPair::from_pem(&files.ca_key_pem).expect("intermediate key");
        let issuer = rcgen::Issuer::from_ca_cert_pem(&files.ca_cert_pem, ca_key).expect("issuer");
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![
            rcgen::SanType::URI(
                SpiffeId::new(TD, namespace, sa)
                    .to_string()
                    .try_into()
                    .expect("uri"),
            ),
            rcgen::SanType::DnsName(cluster_san.to_owned().try_into().expect("dns")),
        ];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = validity.start;
        params.not_after = validity.end;
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &issuer).expect("sign leaf");
        (
            format!("{}{}", leaf.pem(), files.ca_cert_pem),
            key.serialize_pem(),
        )
    }

    /// A leaf of `cluster` for `namespace`/`sa` that expired an hour ago (valid for an hour
    /// before that), otherwise like one the CA issues.
    pub fn expired_leaf(&self, cluster: &str, namespace: &str, sa: &str) -> (String, String) {
        let now = time::OffsetDateTime::now_utc();
        let san = ClusterId::new(cluster).expect("id").certificate_san(TD);
        self.crafted_leaf(
            cluster,
            &san,
            (namespace, sa),
            now - time::Duration::hours(2)..now - time::Duration::hours(1),
        )
    }

    /// A leaf valid now for `namespace`/`sa`, signed with `signer`'s intermediate key but
    /// naming `claimed`'s cluster SAN (`<claimed>.cluster.<td>`): a forgery the intermediate's
    /// name constraints forbid (unless `claimed` is `signer`).
    pub fn forged_leaf(
        &self,
        signer: &str,
        claimed: &str,
        namespace: &str,
        sa: &str,
    ) -> (String, String) {
        let now = time::OffsetDateTime::now_utc();
        let san = ClusterId::new(claimed).expect("id").certificate_san(TD);
        self.crafted_leaf(
            signer,
            &san,
            (namespace, sa),
            now - time::Duration::minutes(5)..now + time::Duration::hours(1),
        )
    }

    /// The ADS server's TLS: the control plane's identity, mesh client certificates required.
    pub fn server_tls(&self) -> XdsTls {
        let service = Arc::new(CaService::new(
            TD,
            self.files
                .iter()
                .map(|(id, f)| ClusterCa::from_files(f, id.clone(), TD).expect("cluster CA"))
                .collect(),
            Arc::new(CredentialStore::new()),
            Duration::from_secs(3600),
        ));
        let resolver = service
            .serving_resolver(control_plane_identity(TD), CONTROL_PLANE_SERVER_NAME)
            .expect("serving certificate");
        let config = mtls_server_config(resolver, &self.bundle_pem, TD).expect("tls");
        XdsTls {
            config: Arc::new(config),
            trust_domain: TD.into(),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// A TLS connector presenting `chain`/`key` and checking the control plane's SPIFFE ID (ALPN h2).
fn mtls_connector(bundle: &str, (chain, key): &(String, String)) -> tokio_rustls::TlsConnector {
    let mut config = causeway_trust::verify::client_config(
        chain,
        key,
        bundle,
        TD,
        vec![control_plane_identity(TD)],
    )
    .expect("client tls");
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A bare mTLS connection to `addr` with `chain`/`key` (no HTTP/2 on top): what a client that
/// completes the handshake and then writes whatever it likes holds.
pub async fn mtls_stream(
    addr: std::net::SocketAddr,
    bundle: &str,
    leaf: &(String, String),
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(CONTROL_PLANE_SERVER_NAME)
        .map_err(std::io::Error::other)?;
    mtls_connector(bundle, leaf).connect(name, tcp).await
}

/// A gRPC channel to `addr` over mTLS with `chain`/`key`, checking the control plane's SPIFFE ID.
pub async fn mtls_channel(
    addr: std::net::SocketAddr,
    bundle: &str,
    leaf: &(String, String),
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let connector = mtls_connector(bundle, leaf);
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from(CONTROL_PLANE_SERVER_NAME)
                    .map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
}

pub struct Harness {
    pub addr: std::net::SocketAddr,
    pub pki: Arc<Pki>,
    pub state: watch::Sender<Arc<MeshState>>,
    pub registry: Arc<ProxyRegistry>,
    pub index: MeshIndex,
    pub gamma: causeway_model::ClusterObjects,
    pub version: u64,
    /// The state the server serves from (after its build of each published state).
    pub served: watch::Receiver<Arc<MeshState>>,
}

impl Harness {
    pub async fn start(coalesce: Duration) -> Self {
        Self::start_with(coalesce, XdsLimits::default(), Duration::from_secs(5)).await
    }

    /// A harness whose listener has `limits` and `handshake_timeout`.
    pub async fn start_with(
        coalesce: Duration,
        limits: XdsLimits,
        handshake_timeout: Duration,
    ) -> Self {
        let index = index_of(&example());
        let (state, rx) = watch::channel(Arc::new(MeshState {
            version: 1,
            index: Some(Arc::new(index.clone())),
        }));
        let registry = Arc::new(ProxyRegistry::new(true));
        let server = AdsServer::new(rx, Arc::clone(&registry), ServerConfig { coalesce });
        let served = server.served();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pki = Arc::new(Pki::new());
        let mut tls = pki.server_tls();
        tls.handshake_timeout = handshake_timeout;
        tokio::spawn(serve_tls_with_limits(
            server,
            listener,
            tls,
            limits,
            std::future::pending(),
        ));
        let gamma = (*example().clusters()["gamma"]
            .objects
            .clone()
            .expect("gamma"))
        .clone();
        Self {
            addr,
            pki,
            state,
            registry,
            index,
            gamma,
            version: 1,
            served,
        }
    }

    /// Adds an echo replica in gamma (an endpoint change of one service only: the gateway's
    /// weight in alpha's view grows by one) and publishes.
    pub fn add_gamma_echo(&mut self, n: u8) {
        self.add_gamma_replica("echo-gamma-1", n);
    }

    /// Adds a greeter replica in gamma (only greeter's endpoints change) and publishes.
    pub fn add_gamma_greeter(&mut self, n: u8) {
        self.add_gamma_replica("greeter-gamma-1", n);
    }

    fn add_gamma_replica(&mut self, template: &str, n: u8) {
        let objects = &mut self.gamma;
        let mut we = objects.workload_entries[&("demo".to_owned(), template.to_owned())].clone();
        we.name = format!("{template}-extra-{n}");
        let last = if template.starts_with("echo") {
            100
        } else {
            150
        };
        we.address = format!("127.3.0.{}", last + n).parse().expect("ip");
        objects
            .workload_entries
            .insert(("demo".into(), we.name.clone()), we);
        self.index
            .set_cluster(&ClusterId::new("gamma").expect("id"), objects)
            .expect("set");
        self.publish();
    }

    /// Waits until the server serves the last published state (nodes are checked against it).
    pub async fn wait_served(&mut self) {
        let version = self.version;
        tokio::time::timeout(
            SERVED_WITHIN,
            self.served.wait_for(|s| s.version >= version),
        )
        .await
        .expect("the published state served in time")
        .expect("server running");
    }

    pub fn publish(&mut self) {
        self.version += 1;
        let _ = self.state.send(Arc::new(MeshState {
            version: self.version,
            index: Some(Arc::new(self.index.clone())),
        }));
    }

    /// A good proxy on a connection of its own, beta/demo/echo-beta-1, with its stream open and
    /// its clusters received: the proxy that must keep being served while others are refused.
    pub async fn beta_proxy(
        &self,
    ) -> (
        mpsc::Sender<DiscoveryRequest>,
        tonic::Streaming<DiscoveryResponse>,
    ) {
        let mut client =
            tokio::time::timeout(SERVED_WITHIN, self.client_as("beta", "demo", "echo"))
                .await
                .expect("connected in time");
        let (tx, opened) = first_cds(&mut client, node_in("beta", "demo", "echo-beta-1")).await;
        let (first, stream) = opened.expect("beta's proxy is served");
        assert_eq!(first.type_url, CDS);
        assert!(!first.resources.is_empty());
        (tx, stream)
    }

    /// A proxy of alpha (demo/client) on a new connection gets its clusters.
    pub async fn assert_served(&self) {
        let mut client = tokio::time::timeout(SERVED_WITHIN, self.client())
            .await
            .expect("connected in time");
        let (_tx, opened) = first_cds(&mut client, node("client")).await;
        let (first, _stream) = opened.expect("alpha's proxy is served");
        assert_eq!(first.type_url, CDS);
        assert!(!first.resources.is_empty());
    }

    /// Waits (at most [`SERVED_WITHIN`]) until exactly the proxies of `clusters` are connected
    /// (streams that ended are gone), in the registry's order.
    pub async fn wait_connected(&self, clusters: &[&str]) {
        let deadline = std::time::Instant::now() + SERVED_WITHIN;
        loop {
            let proxies = self.registry.proxies();
            if proxies
                .iter()
                .map(|p| p.cluster.as_str())
                .eq(clusters.iter().copied())
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "expected the proxies of {clusters:?} only: {proxies:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (at most [`SERVED_WITHIN`]) until a rejection for which `matches` holds is listed,
    /// and returns it (the listener records a failed handshake after answering it).
    pub async fn wait_rejection(
        &self,
        matches: impl Fn(&causeway_xds::status::Rejection) -> bool,
    ) -> causeway_xds::status::Rejection {
        let deadline = std::time::Instant::now() + SERVED_WITHIN;
        loop {
            let listed = self.registry.rejections();
            if let Some(r) = listed.iter().find(|r| matches(r)) {
                return r.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no such rejection listed: {listed:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A client presenting alpha/demo/client's certificate (what [`node`] claims for "client").
    pub async fn client(&self) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
        self.client_as("alpha", "demo", "client").await
    }

    /// A client presenting a certificate for `namespace`/`sa` issued by `cluster`'s intermediate.
    pub async fn client_as(
        &self,
        cluster: &str,
        namespace: &str,
        sa: &str,
    ) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
        let leaf = self.pki.leaf(cluster, namespace, sa);
        let channel = mtls_channel(self.addr, &self.pki.bundle_pem, &leaf)
            .await
            .expect("connect");
        AggregatedDiscoveryServiceClient::new(channel)
    }
}
