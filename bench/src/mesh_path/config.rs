//! The static bootstraps (`.pb`) of every path, one file per proxy that both data planes run:
//! for the mesh paths what the control plane builds for the example mesh's nodes
//! (`causeway_xds::build` over the mesh index) through `static_bootstrap_of` with certificate
//! files; for the single hops those of `hops`. Each file is read back with the
//! Causeway proxy's own reader before anything runs, so a refusal is reported up front.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use causeway_discovery::{MeshIndex, ProxyContext};
use causeway_model::{ClusterId, ProxyIdentity, ProxyRole};
use causeway_registry::MeshDirectory;
use causeway_xds::bootstrap::{static_bootstrap_of, CertificateFiles, EnvoyResources};
use causeway_xds::dataplane::read_static_bootstrap;
use causeway_xds::node::{OutboundBlock, ProxyNode};
use causeway_xds::resources::Resources;
use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
use envoy_types::pb::envoy::config::core::v3 as core;
use prost::Message;

use crate::hops::hop;
use crate::pki::Pki;

/// A backend app: `causeway echo` on a sidecar's app address (the demo's rule: the workload's
/// `127.x.y.z` with `y + 100`), reporting `workload`.
#[derive(Debug, Clone)]
pub struct Backend {
    pub listen: SocketAddr,
    pub cluster: &'static str,
    pub workload: String,
}

/// One proxy of a path: its bootstrap, its admin address and the addresses it listens on.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub name: &'static str,
    pub config: PathBuf,
    pub admin: SocketAddr,
    pub listens: Vec<SocketAddr>,
}

/// A measured path: where the load enters, the proxies it crosses, which backend answers.
#[derive(Debug, Clone)]
pub struct PathSpec {
    /// Short key for `--paths` and the JSON.
    pub key: &'static str,
    pub title: &'static str,
    pub entry: SocketAddr,
    pub proxies: Vec<ProxySpec>,
    /// Index into the backends.
    pub backend: usize,
}

/// The example mesh's workload addresses (examples/three-clusters) and the apps behind them.
const ECHO_APP: &str = "127.1.100.11:8080";
const GREETER_APP: &str = "127.3.100.12:8080";
/// Outbound blocks of the bench's sidecars: away from the demo's 127.200+N.0.0/16.
const CLIENT_BLOCK: &str = "127.250.0.0/16";
const ECHO_BLOCK: &str = "127.251.0.0/16";
const GREETER_BLOCK: &str = "127.252.0.0/16";
/// The single hops' listeners.
const HTTP_HOP: &str = "127.9.0.1:18080";
const TCP_HOP: &str = "127.9.0.1:18081";

/// Every path the bench knows, in the order it runs them; `tag` makes the backends' answers
/// this run's own.
pub fn paths(
    mesh_dir: &Path,
    dir: &Path,
    admin_base: u16,
    tag: &str,
) -> anyhow::Result<(Vec<Backend>, Vec<PathSpec>)> {
    let backends = vec![
        Backend {
            listen: ECHO_APP.parse()?,
            cluster: "alpha",
            workload: format!("echo-alpha-1@{tag}"),
        },
        Backend {
            listen: GREETER_APP.parse()?,
            cluster: "gamma",
            workload: format!("greeter-gamma-1@{tag}"),
        },
    ];
    let admin = |i: u16| SocketAddr::from(([127, 0, 0, 1], admin_base + i));
    let index = example_index(mesh_dir)?;
    let pki = Pki::new(&["alpha", "gamma"])?;
    let client = sidecar_resources(&index, "alpha", "client", "127.1.100.10", CLIENT_BLOCK)?;
    let echo_outbound = outbound_listener(&client, "demo/echo")?;
    let greeter_outbound = outbound_listener(&client, "demo/greeter")?;
    let mesh = |name, r: &Resources, files: &CertificateFiles, admin, node: (&str, &str)| {
        write_mesh_bootstrap(dir, name, r, files, admin, node)
    };
    let client_files = pki.write_leaf(dir, "client", "alpha", "demo", "client")?;
    let client = mesh(
        "client-sidecar",
        &client,
        &client_files,
        admin(0),
        ("sidecar~alpha~demo~client", "alpha"),
    )?;
    let echo = mesh(
        "echo-sidecar",
        &sidecar_resources(&index, "alpha", "echo-alpha-1", "127.1.100.11", ECHO_BLOCK)?,
        &pki.write_leaf(dir, "echo", "alpha", "demo", "echo")?,
        admin(1),
        ("sidecar~alpha~demo~echo-alpha-1", "alpha"),
    )?;
    let greeter = mesh(
        "greeter-sidecar",
        &sidecar_resources(
            &index,
            "gamma",
            "greeter-gamma-1",
            "127.3.100.12",
            GREETER_BLOCK,
        )?,
        &pki.write_leaf(dir, "greeter", "gamma", "demo", "greeter")?,
        admin(2),
        ("sidecar~gamma~demo~greeter-gamma-1", "gamma"),
    )?;
    let gateway = mesh(
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
    let http_hop = hop(
        dir,
        "http-hop",
        HTTP_HOP.parse()?,
        backends[0].listen,
        true,
        admin(4),
    )?;
    let tcp_hop = hop(
        dir,
        "tcp-hop",
        TCP_HOP.parse()?,
        backends[0].listen,
        false,
        admin(5),
    )?;
    let paths = vec![
        PathSpec {
            key: "direct",
            title: "direct to the app (the limit)",
            entry: backends[0].listen,
            proxies: vec![],
            backend: 0,
        },
        PathSpec {
            key: "http-hop",
            title: "one HTTP hop",
            entry: HTTP_HOP.parse()?,
            proxies: vec![http_hop],
            backend: 0,
        },
        PathSpec {
            key: "tcp-hop",
            title: "one TCP hop",
            entry: TCP_HOP.parse()?,
            proxies: vec![tcp_hop],
            backend: 0,
        },
        PathSpec {
            key: "sidecars",
            title: "sidecar -> sidecar (mTLS)",
            entry: echo_outbound,
            proxies: vec![client.clone(), echo],
            backend: 0,
        },
        PathSpec {
            key: "gateway",
            title: "sidecar -> gateway -> sidecar (mTLS)",
            entry: greeter_outbound,
            proxies: vec![client, gateway, greeter],
            backend: 1,
        },
    ];
    Ok((backends, paths))
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

/// What the control plane builds for the sidecar of `cluster`/demo/`workload`.
fn sidecar_resources(
    index: &MeshIndex,
    cluster: &str,
    workload: &str,
    app: &str,
    block: &str,
) -> anyhow::Result<Resources> {
    let ctx = context(index, ProxyRole::Sidecar, cluster, "demo", workload)?;
    let node = ProxyNode {
        id: workload.into(),
        identity: ctx.identity.clone(),
        app_address: Some(app.parse::<IpAddr>()?),
        outbound: Some(OutboundBlock::parse(block).map_err(anyhow::Error::msg)?),
        network: None,
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
