//! The scripted-client harness shared by the ADS tests: the example mesh served by a real
//! ADS server over gRPC, and the means to change it.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use causeway_discovery::MeshIndex;
use causeway_model::ClusterId;
use causeway_registry::MeshDirectory;
use causeway_xds::node::keys;
use causeway_xds::{AdsServer, MeshState, ProxyRegistry, ServerConfig};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use tokio::sync::watch;

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

pub fn node(workload: &str) -> Node {
    let md = [
        (keys::CLUSTER, "alpha"),
        (keys::NAMESPACE, "demo"),
        (keys::WORKLOAD, workload),
        (keys::OUTBOUND_CIDR, "127.101.0.0/16"),
    ];
    Node {
        id: format!("sidecar~alpha~demo~{workload}"),
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

pub struct Harness {
    pub addr: std::net::SocketAddr,
    pub state: watch::Sender<Arc<MeshState>>,
    pub registry: Arc<ProxyRegistry>,
    pub index: MeshIndex,
    pub gamma: causeway_model::ClusterObjects,
    pub version: u64,
}

impl Harness {
    pub async fn start(coalesce: Duration) -> Self {
        let index = index_of(&example());
        let (state, rx) = watch::channel(Arc::new(MeshState {
            version: 1,
            index: Some(Arc::new(index.clone())),
        }));
        let registry = Arc::new(ProxyRegistry::new(true));
        let server = AdsServer::new(rx, Arc::clone(&registry), ServerConfig { coalesce });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server.into_service())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let gamma = (*example().clusters()["gamma"]
            .objects
            .clone()
            .expect("gamma"))
        .clone();
        Self {
            addr,
            state,
            registry,
            index,
            gamma,
            version: 1,
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

    pub fn publish(&mut self) {
        self.version += 1;
        let _ = self.state.send(Arc::new(MeshState {
            version: self.version,
            index: Some(Arc::new(self.index.clone())),
        }));
    }

    pub async fn client(&self) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }
}
