//! The static bootstraps (`.pb`) of every path, one file per proxy that both data planes run:
//! for the mesh paths what the control plane builds for the example mesh's nodes
//! (`causeway_xds::build` over the mesh index) through `static_bootstrap_of` with certificate
//! files; for the single hops those of `hops`. The tail path's client is the exception: the
//! control plane builds a Causeway proxy's outbound clusters differently (one endpoint per
//! remote pod, peak-EWMA), so it has a second file built for `DataPlane::Causeway`
//! (`ProxySpec::causeway_config`) beside the Envoy one. Each file is read back with the
//! Causeway proxy's own reader before anything runs, so a refusal is reported up front.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use causeway_discovery::{MeshIndex, ProxyContext};
use causeway_model::{ClusterId, ProxyIdentity, ProxyRole, ServiceKey};
use causeway_registry::MeshDirectory;
use causeway_xds::bootstrap::{static_bootstrap_of, CertificateFiles, EnvoyResources};
use causeway_xds::dataplane::read_static_bootstrap;
use causeway_xds::node::{DataPlane, OutboundBlock, ProxyNode};
use causeway_xds::resources::Resources;
use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
use envoy_types::pb::envoy::config::core::v3 as core;
use prost::Message;

use crate::hops::hop;
use crate::pki::Pki;

/// A backend app: `causeway echo` on a sidecar's app address (the demo's rule: the workload's
/// `127.x.y.z` with `y + 100`), reporting `workload`, answering `delay_ms` late.
#[derive(Debug, Clone)]
pub struct Backend {
    pub listen: SocketAddr,
    pub cluster: &'static str,
    pub workload: String,
    pub delay_ms: u32,
}

/// One proxy of a path: its bootstrap, its admin address and the addresses it listens on.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub name: &'static str,
    pub config: PathBuf,
    /// The bootstrap the Causeway data plane runs instead of `config`, when the control plane
    /// builds the proxy's resources differently for it (same listeners and admin address).
    pub causeway_config: Option<PathBuf>,
    pub admin: SocketAddr,
    pub listens: Vec<SocketAddr>,
}

impl ProxySpec {
    /// The bootstrap of data plane `kind` (`causeway proxy --data-plane <kind>`).
    pub fn config_for(&self, kind: &str) -> &Path {
        match (&self.causeway_config, kind) {
            (Some(c), "causeway") => c,
            _ => &self.config,
        }
    }
}

/// A measured path: where the load enters, the proxies it crosses, which backends answer.
#[derive(Debug, Clone)]
pub struct PathSpec {
    /// Short key for `--paths` and the JSON.
    pub key: &'static str,
    pub title: &'static str,
    pub entry: SocketAddr,
    pub proxies: Vec<ProxySpec>,
    /// Indexes into the backends; each must answer before the path is measured.
    pub backends: Vec<usize>,
}

/// The example mesh's workload addresses (examples/three-clusters) and the apps behind them.
const ECHO_APP: &str = "127.1.100.11:8080";
const GREETER_APP: &str = "127.3.100.12:8080";
const CATALOG_APPS: [&str; 2] = ["127.3.100.14:8080", "127.3.100.15:8080"];
/// How late the second catalog pod answers on the tail path.
const TAIL_DELAY_MS: u32 = 20;
/// Outbound blocks of the bench's sidecars: away from the demo's 127.200+N.0.0/16.
const CLIENT_BLOCK: &str = "127.250.0.0/16";
const ECHO_BLOCK: &str = "127.251.0.0/16";
const GREETER_BLOCK: &str = "127.252.0.0/16";
const CATALOG_BLOCKS: [&str; 2] = ["127.253.0.0/16", "127.254.0.0/16"];
/// The single hops' listeners.
const HTTP_HOP: &str = "127.9.0.1:18080";
const TCP_HOP: &str = "127.9.0.1:18081";

fn backends(tag: &str) -> anyhow::Result<Vec<Backend>> {
    let backend = |listen: &str, cluster, workload: &str, delay_ms| -> anyhow::Result<Backend> {
        Ok(Backend {
            listen: listen.parse()?,
            cluster,
            workload: format!("{workload}@{tag}"),
            delay_ms,
        })
    };
    Ok(vec![
        backend(ECHO_APP, "alpha", "echo-alpha-1", 0)?,
        backend(GREETER_APP, "gamma", "greeter-gamma-1", 0)?,
        backend(CATALOG_APPS[0], "gamma", "catalog-gamma-1", 0)?,
        backend(CATALOG_APPS[1], "gamma", "catalog-gamma-2", TAIL_DELAY_MS)?,
    ])
}

/// The proxies of the mesh paths, each with its bootstrap written.
struct MeshProxies {
    client: ProxySpec,
    echo: ProxySpec,
    greeter: ProxySpec,
    gateway: ProxySpec,
    /// The client with a Causeway bootstrap built for the Causeway data plane.
    tail_client: ProxySpec,
    catalog: [ProxySpec; 2],
    echo_outbound: SocketAddr,
    greeter_outbound: SocketAddr,
    catalog_outbound: SocketAddr,
}

/// Every path the bench knows, in the order it runs them; `tag` makes the backends' answers
/// this run's own.
pub fn paths(
    mesh_dir: &Path,
    dir: &Path,
    admin_base: u16,
    tag: &str,
) -> anyhow::Result<(Vec<Backend>, Vec<PathSpec>)> {
    let backends = backends(tag)?;
    let admin = |i: u16| SocketAddr::from(([127, 0, 0, 1], admin_base + i));
    let m = mesh_proxies(mesh_dir, dir, &admin)?;
    let hop = |name, listen: &str, http, admin| {
        hop(dir, name, listen.parse()?, backends[0].listen, http, admin)
    };
    let http_hop = hop("http-hop", HTTP_HOP, true, admin(4))?;
    let tcp_hop = hop("tcp-hop", TCP_HOP, false, admin(5))?;
    let path = |key, title, entry, proxies, backends| PathSpec {
        key,
        title,
        entry,
        proxies,
        backends,
    };
    let [catalog_1, catalog_2] = m.catalog;
    let paths = vec![
        path(
            "direct",
            "direct to the app (the limit)",
            backends[0].listen,
            vec![],
            vec![0],
        ),
        path(
            "http-hop",
            "one HTTP hop",
            HTTP_HOP.parse()?,
            vec![http_hop],
            vec![0],
        ),
        path(
            "tcp-hop",
            "one TCP hop",
            TCP_HOP.parse()?,
            vec![tcp_hop],
            vec![0],
        ),
        path(
            "sidecars",
            "sidecar -> sidecar (mTLS)",
            m.echo_outbound,
            vec![m.client.clone(), m.echo],
            vec![0],
        ),
        path(
            "gateway",
            "sidecar -> gateway -> sidecar (mTLS)",
            m.greeter_outbound,
            vec![m.client, m.gateway.clone(), m.greeter],
            vec![1],
        ),
        path(
            "tail",
            "sidecar -> gateway -> 2 pods, one +20 ms (mTLS)",
            m.catalog_outbound,
            vec![m.tail_client, m.gateway, catalog_1, catalog_2],
            vec![2, 3],
        ),
    ];
    Ok((backends, paths))
}

/// A sidecar of the example mesh the bench runs: `cluster`/demo/`workload` with the app on
/// `app`, its outbound listeners in `block`, its certificate (for service account `account`)
/// in `dir/<leaf>-*.pem`, its bootstrap in `dir/<name>.pb`.
struct Sidecar {
    name: &'static str,
    cluster: &'static str,
    workload: &'static str,
    account: &'static str,
    leaf: &'static str,
    app: &'static str,
    block: &'static str,
}

const CLIENT: Sidecar = Sidecar {
    name: "client-sidecar",
    cluster: "alpha",
    workload: "client",
    account: "client",
    leaf: "client",
    app: "127.1.100.10",
    block: CLIENT_BLOCK,
};
const ECHO: Sidecar = Sidecar {
    name: "echo-sidecar",
    cluster: "alpha",
    workload: "echo-alpha-1",
    account: "echo",
    leaf: "echo",
    app: "127.1.100.11",
    block: ECHO_BLOCK,
};
const GREETER: Sidecar = Sidecar {
    name: "greeter-sidecar",
    cluster: "gamma",
    workload: "greeter-gamma-1",
    account: "greeter",
    leaf: "greeter",
    app: "127.3.100.12",
    block: GREETER_BLOCK,
};
const CATALOG: [Sidecar; 2] = [
    Sidecar {
        name: "catalog-1-sidecar",
        cluster: "gamma",
        workload: "catalog-gamma-1",
        account: "catalog",
        leaf: "catalog-1",
        app: "127.3.100.14",
        block: CATALOG_BLOCKS[0],
    },
    Sidecar {
        name: "catalog-2-sidecar",
        cluster: "gamma",
        workload: "catalog-gamma-2",
        account: "catalog",
        leaf: "catalog-2",
        app: "127.3.100.15",
        block: CATALOG_BLOCKS[1],
    },
];

/// Writes the mesh proxies' bootstraps from the example mesh's index into `dir`.
struct Writer<'a> {
    index: &'a MeshIndex,
    pki: &'a Pki,
    dir: &'a Path,
}

impl Writer<'_> {
    fn resources(&self, s: &Sidecar, data_plane: DataPlane) -> anyhow::Result<Resources> {
        sidecar_resources(
            self.index, s.cluster, s.workload, s.app, s.block, data_plane,
        )
    }

    fn leaf(&self, s: &Sidecar) -> anyhow::Result<CertificateFiles> {
        self.pki
            .write_leaf(self.dir, s.leaf, s.cluster, "demo", s.account)
    }

    /// `r` (built for `s`) as `dir/<name>.pb`.
    fn write(
        &self,
        s: &Sidecar,
        name: &'static str,
        r: &Resources,
        files: &CertificateFiles,
        admin: SocketAddr,
    ) -> anyhow::Result<ProxySpec> {
        let id = format!("sidecar~{}~demo~{}", s.cluster, s.workload);
        write_mesh_bootstrap(self.dir, name, r, files, admin, (&id, s.cluster))
    }

    /// The sidecar as the control plane builds it for Envoy (which both data planes run).
    fn sidecar(&self, s: &Sidecar, admin: SocketAddr) -> anyhow::Result<ProxySpec> {
        let r = self.resources(s, DataPlane::default())?;
        self.write(s, s.name, &r, &self.leaf(s)?, admin)
    }
}

/// The bootstraps of the mesh paths' proxies: what the control plane builds for the example
/// mesh's nodes, with certificates of the bench's own PKI.
fn mesh_proxies(
    mesh_dir: &Path,
    dir: &Path,
    admin: &dyn Fn(u16) -> SocketAddr,
) -> anyhow::Result<MeshProxies> {
    let index = example_index(mesh_dir)?;
    let pki = Pki::new(&["alpha", "gamma"])?;
    let w = Writer {
        index: &index,
        pki: &pki,
        dir,
    };
    // The client as built for each data plane; the other paths run the Envoy build on both.
    let client = w.resources(&CLIENT, DataPlane::Envoy)?;
    let causeway_client = w.resources(&CLIENT, DataPlane::Causeway)?;
    let catalog_service = ServiceKey::new("demo", "catalog");
    check_catalog_endpoints(&client, &catalog_service, 1, "Envoy")?;
    check_catalog_endpoints(&causeway_client, &catalog_service, 2, "Causeway")?;
    let client_files = w.leaf(&CLIENT)?;
    let client_spec = w.write(&CLIENT, CLIENT.name, &client, &client_files, admin(0))?;
    let causeway_name = "client-sidecar-causeway";
    let causeway_spec = w.write(
        &CLIENT,
        causeway_name,
        &causeway_client,
        &client_files,
        admin(0),
    )?;
    let gateway = write_mesh_bootstrap(
        dir,
        "gamma-gateway",
        &gateway_resources(&index, "gamma", "eastwest-0")?,
        &pki.write_leaf(
            dir,
            "gateway",
            "gamma",
            "causeway-system",
            "eastwest-gateway",
        )?,
        admin(3),
        ("gateway~gamma~causeway-system~eastwest-0", "gamma"),
    )?;
    Ok(MeshProxies {
        tail_client: ProxySpec {
            causeway_config: Some(causeway_spec.config),
            ..client_spec.clone()
        },
        client: client_spec,
        echo: w.sidecar(&ECHO, admin(1))?,
        greeter: w.sidecar(&GREETER, admin(2))?,
        gateway,
        catalog: [
            w.sidecar(&CATALOG[0], admin(6))?,
            w.sidecar(&CATALOG[1], admin(7))?,
        ],
        echo_outbound: outbound_listener(&client, "demo/echo")?,
        greeter_outbound: outbound_listener(&client, "demo/greeter")?,
        catalog_outbound: outbound_listener(&client, "demo/catalog")?,
    })
}

/// Fails unless the client's load assignment for `service` port 80 has `expected` endpoints
/// (the Envoy build: one aggregate for gamma's gateway; the Causeway build: one per pod).
fn check_catalog_endpoints(
    r: &Resources,
    service: &ServiceKey,
    expected: usize,
    data_plane: &str,
) -> anyhow::Result<()> {
    let name = causeway_xds::build::outbound_cluster_name(service, 80);
    let decoded = EnvoyResources::decode(r)?;
    let la = decoded
        .assignments
        .iter()
        .find(|la| la.cluster_name == name)
        .with_context(|| format!("the client's {data_plane} build has no assignment {name}"))?;
    let n: usize = la.endpoints.iter().map(|l| l.lb_endpoints.len()).sum();
    if n != expected {
        bail!(
            "the client's {data_plane} build has {n} endpoint(s) in {name}, not {expected} \
             (examples/three-clusters: two catalog pods behind gamma's gateway)"
        );
    }
    Ok(())
}

fn example_index(mesh_dir: &Path) -> anyhow::Result<MeshIndex> {
    let d = MeshDirectory::open(mesh_dir);
    if !d.errors().is_empty() {
        bail!("{}: {:?}", mesh_dir.display(), d.errors());
    }
    let mesh = d
        .mesh()
        .with_context(|| format!("{}: no mesh.yaml", mesh_dir.display()))?;
    let mut objects = Vec::new();
    for (name, slot) in d.clusters() {
        let objs = slot
            .objects
            .clone()
            .with_context(|| format!("cluster {name} not loaded"))?;
        objects.push((ClusterId::new(name)?, objs));
    }
    Ok(MeshIndex::build(
        Arc::clone(mesh),
        objects.iter().map(|(i, o)| (i, &**o)),
    ))
}

fn context(
    index: &MeshIndex,
    role: ProxyRole,
    cluster: &str,
    namespace: &str,
    workload: &str,
) -> anyhow::Result<ProxyContext> {
    let identity = ProxyIdentity {
        cluster: ClusterId::new(cluster)?,
        namespace: namespace.into(),
        workload: workload.into(),
        role,
    };
    ProxyContext::resolve(index, identity)
        .with_context(|| format!("{cluster}/{namespace}/{workload} in the example mesh"))
}

/// What the control plane builds for the sidecar of `cluster`/demo/`workload` running
/// `data_plane`.
fn sidecar_resources(
    index: &MeshIndex,
    cluster: &str,
    workload: &str,
    app: &str,
    block: &str,
    data_plane: DataPlane,
) -> anyhow::Result<Resources> {
    let ctx = context(index, ProxyRole::Sidecar, cluster, "demo", workload)?;
    let node = ProxyNode {
        id: workload.into(),
        identity: ctx.identity.clone(),
        app_address: Some(app.parse::<IpAddr>()?),
        outbound: Some(OutboundBlock::parse(block).map_err(anyhow::Error::msg)?),
        network: None,
        data_plane,
    };
    Ok(causeway_xds::build::sidecar_resources(index, &node, &ctx))
}

/// What the control plane builds for `cluster`'s east-west gateway.
fn gateway_resources(index: &MeshIndex, cluster: &str, name: &str) -> anyhow::Result<Resources> {
    let ctx = context(index, ProxyRole::Gateway, cluster, "causeway-system", name)?;
    Ok(causeway_xds::build::gateway_resources(index, &ctx))
}

/// The address of the outbound listener for `service` (`namespace/name`):
/// `outbound|<address>:<port>|<service>`.
fn outbound_listener(r: &Resources, service: &str) -> anyhow::Result<SocketAddr> {
    let listeners = r
        .of(causeway_xds::resources::TypeUrl::Listener)
        .context("no listeners")?;
    listeners
        .keys()
        .find_map(|name| {
            name.strip_prefix("outbound|")?
                .strip_suffix(&format!("|{service}"))?
                .parse()
                .ok()
        })
        .with_context(|| format!("no outbound listener for {service}"))
}

pub(crate) fn node(id: &str, cluster: &str) -> core::Node {
    core::Node {
        id: id.into(),
        cluster: cluster.into(),
        ..Default::default()
    }
}

fn write_mesh_bootstrap(
    dir: &Path,
    name: &'static str,
    r: &Resources,
    files: &CertificateFiles,
    admin: SocketAddr,
    (id, cluster): (&str, &str),
) -> anyhow::Result<ProxySpec> {
    let r = EnvoyResources::decode(r)?;
    let b = static_bootstrap_of(&r, node(id, cluster), admin, files)?;
    write(dir, name, &b, admin)
}

/// Writes `dir/<name>.pb` and reads it back as the Causeway proxy will.
pub(crate) fn write(
    dir: &Path,
    name: &'static str,
    b: &bootstrap::Bootstrap,
    admin: SocketAddr,
) -> anyhow::Result<ProxySpec> {
    let path = dir.join(format!("{name}.pb"));
    std::fs::write(&path, b.encode_to_vec())
        .with_context(|| format!("writing {}", path.display()))?;
    let read = read_static_bootstrap(&path)
        .with_context(|| format!("the Causeway proxy refuses {name}'s bootstrap"))?;
    Ok(ProxySpec {
        name,
        config: path,
        causeway_config: None,
        admin,
        listens: read
            .snapshot
            .listeners
            .values()
            .filter(|l| l.bind)
            .map(|l| l.address)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_path_runs_a_client_built_for_each_data_plane_over_both_catalog_pods() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mesh = causeway_bench::demo_mesh::workspace().join("examples/three-clusters");
        let (backends, paths) = paths(&mesh, dir.path(), 31700, "t").expect("paths");
        let keys: Vec<&str> = paths.iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            ["direct", "http-hop", "tcp-hop", "sidecars", "gateway", "tail"]
        );
        let tail = &paths[5];
        let workloads: Vec<(&str, u32)> = tail
            .backends
            .iter()
            .map(|&i| (backends[i].workload.as_str(), backends[i].delay_ms))
            .collect();
        assert_eq!(
            workloads,
            [
                ("catalog-gamma-1@t", 0),
                ("catalog-gamma-2@t", TAIL_DELAY_MS)
            ]
        );
        let client = &tail.proxies[0];
        assert_ne!(client.config_for("causeway"), client.config_for("envoy"));
        assert_eq!(client.config_for("envoy"), paths[4].proxies[0].config);
        // Every other proxy of every path runs one file on both data planes.
        for p in paths.iter().flat_map(|p| &p.proxies) {
            if !std::ptr::eq(p, client) {
                assert_eq!(
                    p.config_for("causeway"),
                    p.config_for("envoy"),
                    "{}",
                    p.name
                );
            }
        }
        // The Causeway client sees each pod behind gamma's gateway, with an SNI it routes.
        let read = read_static_bootstrap(client.config_for("causeway")).expect("read back");
        let service = ServiceKey::new("demo", "catalog");
        let name = causeway_xds::build::outbound_cluster_name(&service, 80);
        let la = read
            .snapshot
            .endpoints_of(&name)
            .expect("catalog endpoints");
        let pods: Vec<_> = la.localities.iter().flat_map(|l| &l.endpoints).collect();
        assert_eq!(pods.len(), 2);
        let gateway = read_static_bootstrap(&tail.proxies[1].config).expect("gateway");
        let routed: Vec<&String> = gateway
            .snapshot
            .listeners
            .values()
            .flat_map(|l| &l.filter_chains)
            .flat_map(|c| &c.matches.server_names)
            .collect();
        for pod in pods {
            assert_eq!(pod.address, "127.3.255.1:15443".parse().expect("address"));
            let sni = pod.sni.as_ref().expect("per-pod SNI");
            assert!(routed.contains(&sni), "the gateway routes no {sni}");
        }
    }
}
