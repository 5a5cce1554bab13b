//! Builders for meshes in tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use causeway_discovery::{view, MeshIndex, ProxyContext, ProxyView, ViewPort};
use causeway_model::*;

pub struct MeshBuilder {
    pub config: MeshConfig,
    pub objects: BTreeMap<ClusterId, ClusterObjects>,
}

pub fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).expect("cluster id")
}

pub fn mesh() -> MeshBuilder {
    MeshBuilder {
        config: MeshConfig {
            mesh: MeshSpec {
                name: "test".into(),
                trust_domain: "td.local".into(),
                discovery: DiscoveryMode::Exported,
                cluster_local: vec![ClusterLocalRule {
                    namespace: "kube-system".into(),
                    name: None,
                }],
                networks: None,
                source: ObjectSource::default(),
            },
            clusters: Vec::new(),
            traffic_policies: Vec::new(),
        },
        objects: BTreeMap::new(),
    }
}

impl MeshBuilder {
    pub fn sameness(mut self) -> Self {
        self.config.mesh.discovery = DiscoveryMode::Sameness;
        self
    }

    pub fn cluster(mut self, id: &str, network: &str, locality: &str, gateways: &[&str]) -> Self {
        let gateways = gateways
            .iter()
            .map(|g| {
                let sa: std::net::SocketAddr = g.parse().expect("gateway addr");
                Gateway {
                    address: sa.ip(),
                    port: sa.port(),
                }
            })
            .collect();
        self.config.clusters.push(ClusterSpec {
            id: cid(id),
            network: NetworkId::new(network).expect("network"),
            locality: locality.parse().expect("locality"),
            gateways,
            gateway_identity: None,
            kubernetes: None,
            stale_endpoint_ttl: None,
            source: ObjectSource::default(),
        });
        self.objects.insert(cid(id), ClusterObjects::default());
        self
    }

    fn objs(&mut self, cluster: &str) -> &mut ClusterObjects {
        self.objects.entry(cid(cluster)).or_default()
    }

    /// A Service selecting `app=<name>` with the given ports (named p<port>, targetPort port+8000).
    pub fn service(mut self, cluster: &str, ns: &str, name: &str, ports: &[u16]) -> Self {
        let key = ServiceKey::new(ns, name);
        let svc = Service {
            key: key.clone(),
            ports: ports
                .iter()
                .map(|p| ServicePort {
                    name: Some(format!("p{p}")),
                    port: *p,
                    target_port: TargetPort::Number(p + 8000),
                    protocol: "TCP".into(),
                    app_protocol: Some("http".into()),
                })
                .collect(),
            selector: Some(BTreeMap::from([("app".to_owned(), name.to_owned())])),
            headless: false,
            cluster_local: false,
            source: ObjectSource::default(),
        };
        self.objs(cluster).services.insert(key, svc);
        self
    }

    pub fn with_service(
        mut self,
        cluster: &str,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Service),
    ) -> Self {
        let key = ServiceKey::new(ns, name);
        if let Some(s) = self.objs(cluster).services.get_mut(&key) {
            f(s);
        }
        self
    }

    pub fn workload(self, cluster: &str, ns: &str, name: &str, address: &str, app: &str) -> Self {
        self.workload_full(
            cluster,
            ns,
            name,
            address,
            app,
            Health::Healthy,
            1,
            None,
            None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn workload_full(
        mut self,
        cluster: &str,
        ns: &str,
        name: &str,
        address: &str,
        app: &str,
        health: Health,
        weight: u32,
        locality: Option<&str>,
        network: Option<&str>,
    ) -> Self {
        let we = WorkloadEntry {
            namespace: ns.into(),
            name: name.into(),
            address: address.parse().expect("ip"),
            ports: BTreeMap::new(),
            labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
            service_account: app.into(),
            locality: locality.map(|l| l.parse().expect("locality")),
            network: network.map(|n| NetworkId::new(n).expect("network")),
            weight,
            health,
            credential_file: None,
            demo: Default::default(),
            source: ObjectSource::default(),
        };
        self.objs(cluster)
            .workload_entries
            .insert((ns.into(), name.into()), we);
        self
    }

    /// An EndpointSlice `slice` of Service `service` (port `p<port>` on `port + 8000`, as
    /// [`Self::service`]'s target ports): per endpoint (address, pod name, Pod service account);
    /// `annotation` is the slice's `causeway.io/service-account`.
    #[allow(clippy::too_many_arguments)]
    pub fn slice(
        mut self,
        cluster: &str,
        ns: &str,
        service: &str,
        slice: &str,
        port: u16,
        annotation: Option<&str>,
        endpoints: &[(&str, &str, Option<&str>)],
    ) -> Self {
        let es = EndpointSlice {
            namespace: ns.into(),
            name: slice.into(),
            service_name: service.into(),
            ports: vec![SlicePort {
                name: Some(format!("p{port}")),
                port: port + 8000,
            }],
            endpoints: endpoints
                .iter()
                .map(|(address, pod, sa)| SliceEndpoint {
                    target_name: Some((*pod).to_owned()),
                    service_account: sa.map(str::to_owned),
                    ..SliceEndpoint::ready(vec![address.parse().expect("ip")])
                })
                .collect(),
            service_account: annotation.map(str::to_owned),
            source: ObjectSource {
                file: format!("clusters/{cluster}/{slice}.yaml").into(),
                document: 0,
                line: 3,
            },
        };
        self.objs(cluster)
            .endpoint_slices
            .insert((ns.into(), slice.into()), es);
        self
    }

    pub fn export(
        mut self,
        cluster: &str,
        ns: &str,
        name: &str,
        to: Option<&[&str]>,
        created: Option<i64>,
    ) -> Self {
        let key = ServiceKey::new(ns, name);
        let export = ServiceExport {
            key: key.clone(),
            export_to: to.map(|t| t.iter().map(|c| cid(c)).collect::<BTreeSet<_>>()),
            created,
            source: ObjectSource {
                file: format!("clusters/{cluster}/export.yaml").into(),
                document: 0,
                line: 1,
            },
        };
        self.objs(cluster).exports.insert(key, export);
        self
    }

    pub fn index(&self) -> MeshIndex {
        MeshIndex::build(Arc::new(self.config.clone()), self.objects.iter())
    }
}

pub fn ctx(index: &MeshIndex, cluster: &str, ns: &str, workload: &str) -> ProxyContext {
    ProxyContext::resolve(
        index,
        ProxyIdentity {
            cluster: cid(cluster),
            namespace: ns.into(),
            workload: workload.into(),
            role: ProxyRole::Sidecar,
        },
    )
    .expect("proxy context")
}

pub fn view_of(index: &MeshIndex, cluster: &str) -> ProxyView {
    view::view(index, &ctx(index, cluster, "default", "client"))
}

pub fn port<'a>(v: &'a ProxyView, ns: &str, name: &str, port: u16) -> Option<&'a ViewPort> {
    v.services
        .iter()
        .find(|s| s.key == ServiceKey::new(ns, name))?
        .ports
        .iter()
        .find(|p| p.port.port == port)
}
