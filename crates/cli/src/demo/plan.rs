//! The demo's plan: every process a mesh directory needs on this machine, derived from the
//! directory alone. `causeway demo --print-plan` prints it; the end-to-end suites launch it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use causeway_model::{ClusterId, DemoFaults, MeshConfig};
use causeway_registry::MeshDirectory;
use serde::Serialize;

/// What a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The control plane (and CA).
    ControlPlane,
    /// A cluster's east-west gateway.
    Gateway,
    /// A workload's certificate agent.
    Agent,
    /// A workload's sidecar.
    Sidecar,
    /// The sample application.
    App,
}

/// One process to run: `causeway <args>`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSpec {
    /// Unique name (also the log file name).
    pub name: String,
    /// Kind.
    pub kind: Kind,
    /// Cluster, for all but the control plane.
    pub cluster: Option<ClusterId>,
    /// Workload, for workload processes.
    pub workload: Option<String>,
    /// Arguments to `causeway`.
    pub args: Vec<String>,
    /// Envoy admin address, for proxies.
    pub admin: Option<SocketAddr>,
}

/// A workload as the demo runs it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DemoWorkload {
    /// Cluster.
    pub cluster: ClusterId,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its service account.
    pub service_account: String,
    /// Where its app listens.
    pub app_address: IpAddr,
    /// Its sidecar's outbound block (`a.b.0.0/16`).
    pub outbound_cidr: String,
    /// Its sidecar's admin address.
    pub admin: SocketAddr,
}

/// Everything the demo runs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Mesh directory.
    pub mesh_dir: PathBuf,
    /// Run directory (logs, CA, sockets, bootstraps).
    pub run_dir: PathBuf,
    /// Control plane debug API.
    pub debug: SocketAddr,
    /// xDS.
    pub xds: SocketAddr,
    /// CA service.
    pub ca: SocketAddr,
    /// Workloads with sidecars.
    pub workloads: Vec<DemoWorkload>,
    /// Processes, in start order.
    pub processes: Vec<ProcessSpec>,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The app address of a workload at `a`: `127.x.y.z` becomes `127.x.(y+100).z`, a distinct
/// loopback address for the application behind the sidecar (in a pod this is 127.0.0.1).
fn app_address(a: IpAddr) -> Option<IpAddr> {
    match a {
        IpAddr::V4(v4) => {
            let [o1, o2, o3, o4] = v4.octets();
            (o1 == 127 && o3 < 156).then(|| IpAddr::V4(Ipv4Addr::new(o1, o2, o3 + 100, o4)))
        }
        IpAddr::V6(_) => None,
    }
}

/// `causeway echo` flags for a WorkloadEntry's demo faults (its `causeway.io/demo-delay-ms`
/// and `causeway.io/demo-status` annotations); none when it has none, so the app keeps echo's
/// defaults.
fn fault_args(demo: &DemoFaults) -> Vec<String> {
    let mut args = Vec::new();
    if demo.delay_ms > 0 {
        args.extend(["--delay-ms".to_owned(), demo.delay_ms.to_string()]);
    }
    if let Some(status) = demo.status {
        args.extend(["--status".to_owned(), status.to_string()]);
    }
    args
}

/// A gateway's agent (its certificate from the cluster's `spec.gatewayIdentity` credential)
/// and its proxy (without the flags every proxy shares).
fn gateway_processes(
    mesh_dir: &Path,
    run_dir: &Path,
    mesh: &MeshConfig,
    cluster: &causeway_model::ClusterSpec,
    i: usize,
    ca: SocketAddr,
) -> anyhow::Result<[ProcessSpec; 2]> {
    let identity = cluster.gateway_identity.as_ref().with_context(|| {
        format!(
            "cluster {} has gateways but no spec.gatewayIdentity: gateways need a certificate to connect to the control plane",
            cluster.id
        )
    })?;
    let token = identity.credential_file.as_ref().with_context(|| {
        format!(
            "cluster {}: spec.gatewayIdentity.credential.tokenFile is needed to run its gateways here",
            cluster.id
        )
    })?;
    let name = format!("eastwest-{i}");
    let sds = run_dir
        .join("sds")
        .join(format!("{}-{name}.sock", cluster.id));
    let sds = sds.display().to_string();
    let mut agent = vec![
        "agent".to_owned(),
        "--ca".into(),
        ca.to_string(),
        "--ca-root".into(),
        run_dir.join("ca/root/root-cert.pem").display().to_string(),
        "--token-file".into(),
        mesh_dir.join(token).display().to_string(),
        "--trust-domain".into(),
        mesh.mesh.trust_domain.clone(),
        "--namespace".into(),
        identity.namespace.clone(),
        "--service-account".into(),
        identity.service_account.clone(),
        "--sds-socket".into(),
        sds.clone(),
    ];
    if cluster.kubernetes.is_none() {
        agent.extend(["--cluster".into(), cluster.id.to_string()]);
    }
    let proxy = vec![
        "proxy".to_owned(),
        "--role".into(),
        "gateway".into(),
        "--cluster".into(),
        cluster.id.to_string(),
        "--namespace".into(),
        identity.namespace.clone(),
        "--workload".into(),
        name.clone(),
        "--sds-socket".into(),
        sds,
        "--trust-domain".into(),
        mesh.mesh.trust_domain.clone(),
    ];
    let spec = |suffix: &str, kind: Kind, args: Vec<String>| ProcessSpec {
        name: format!("{}-{suffix}-{i}", cluster.id),
        kind,
        cluster: Some(cluster.id.clone()),
        workload: None,
        args,
        admin: None,
    };
    Ok([
        spec("gateway-agent", Kind::Agent, agent),
        spec("gateway", Kind::Gateway, proxy),
    ])
}

/// Which data plane runs the sidecars and which the east-west gateways.
#[derive(Debug, Clone, Copy)]
pub struct DataPlanes<'a> {
    pub sidecars: &'a str,
    pub gateways: &'a str,
}

/// Builds the plan for `mesh_dir`, ports counted from `port_base`.
pub fn build(
    mesh_dir: &Path,
    run_dir: &Path,
    port_base: u16,
    envoy: &Path,
    data_planes: DataPlanes<'_>,
) -> anyhow::Result<Plan> {
    for (flag, value) in [
        ("--data-plane", data_planes.sidecars),
        ("--gateway-data-plane", data_planes.gateways),
    ] {
        if !matches!(value, "envoy" | "causeway") {
            anyhow::bail!("{flag} {value:?}: expected envoy or causeway");
        }
    }
    let dir = MeshDirectory::open(mesh_dir);
    let errors = dir.errors();
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::bail!(
            "{} has errors (see `causeway check`):\n  {}",
            mesh_dir.display(),
            list.join("\n  ")
        );
    }
    let mesh: &MeshConfig = dir.mesh().context("mesh.yaml did not load")?;
    let debug = local(port_base + 10);
    let xds = local(port_base + 11);
    let ca = local(port_base + 12);
    let mut next_admin = port_base + 100;
    let mut processes = vec![ProcessSpec {
        name: "control-plane".into(),
        kind: Kind::ControlPlane,
        cluster: None,
        workload: None,
        args: vec![
            "control-plane".into(),
            "--mesh-dir".into(),
            mesh_dir.display().to_string(),
            "--debug-addr".into(),
            debug.to_string(),
            "--xds-addr".into(),
            xds.to_string(),
            "--ca-addr".into(),
            ca.to_string(),
            "--ca-dir".into(),
            run_dir.join("ca").display().to_string(),
        ],
        admin: None,
    }];
    let envoy = envoy.display().to_string();
    let proxy_common = |admin: SocketAddr| {
        let mut args = vec![
            "--xds".to_owned(),
            xds.to_string(),
            "--admin".into(),
            admin.to_string(),
            "--run-dir".into(),
            run_dir.join("envoy").display().to_string(),
        ];
        // Without Envoy (an all-Causeway mesh) there is no binary to name.
        if !envoy.is_empty() {
            args.extend(["--envoy".to_owned(), envoy.clone()]);
        }
        args
    };
    for cluster in &mesh.clusters {
        for i in 0..cluster.gateways.len() {
            let admin = local(next_admin);
            next_admin += 1;
            let mut pair = gateway_processes(mesh_dir, run_dir, mesh, cluster, i, ca)?;
            pair[1].args.extend(proxy_common(admin));
            pair[1]
                .args
                .extend(["--data-plane".to_owned(), data_planes.gateways.to_owned()]);
            pair[1].admin = Some(admin);
            processes.extend(pair);
        }
    }
    let trust_domain = mesh.mesh.trust_domain.clone();
    let mut workloads = Vec::new();
    for (name, slot) in dir.clusters() {
        let cluster = ClusterId::new(name)?;
        let Some(objects) = &slot.objects else {
            continue;
        };
        let network = mesh.cluster(&cluster).map(|c| c.network.to_string());
        for we in objects.workload_entries.values() {
            let Some(token) = &we.credential_file else {
                continue;
            };
            let Some(app) = app_address(we.address) else {
                tracing::warn!(workload = %we.name, address = %we.address, "not a 127.x.y.z address below 127.x.156.0; the demo skips it");
                continue;
            };
            let index = workloads.len();
            if index >= 55 {
                anyhow::bail!(
                    "the demo runs at most 55 workloads (one 127.N.0.0/16 outbound block each)"
                );
            }
            let admin = local(next_admin);
            next_admin += 1;
            let outbound_cidr = format!("127.{}.0.0/16", 200 + index);
            let id = format!("{cluster}-{}", we.name);
            let sds = run_dir.join("sds").join(format!("{id}.sock"));
            for port in we.ports.values() {
                let mut app_args = vec![
                    "echo".into(),
                    "--listen".into(),
                    SocketAddr::new(app, *port).to_string(),
                    "--cluster".into(),
                    cluster.to_string(),
                    "--workload".into(),
                    we.name.clone(),
                ];
                app_args.extend(fault_args(&we.demo));
                processes.push(ProcessSpec {
                    name: format!("{id}-app-{port}"),
                    kind: Kind::App,
                    cluster: Some(cluster.clone()),
                    workload: Some(we.name.clone()),
                    args: app_args,
                    admin: None,
                });
            }
            processes.push(ProcessSpec {
                name: format!("{id}-agent"),
                kind: Kind::Agent,
                cluster: Some(cluster.clone()),
                workload: Some(we.name.clone()),
                args: vec![
                    "agent".into(),
                    "--ca".into(),
                    ca.to_string(),
                    "--ca-root".into(),
                    run_dir.join("ca/root/root-cert.pem").display().to_string(),
                    "--token-file".into(),
                    mesh_dir.join(token).display().to_string(),
                    "--trust-domain".into(),
                    trust_domain.clone(),
                    "--namespace".into(),
                    we.namespace.clone(),
                    "--service-account".into(),
                    we.service_account.clone(),
                    "--sds-socket".into(),
                    sds.display().to_string(),
                    "--cluster".into(),
                    cluster.to_string(),
                ],
                admin: None,
            });
            let mut args = vec![
                "proxy".to_owned(),
                "--cluster".into(),
                cluster.to_string(),
                "--namespace".into(),
                we.namespace.clone(),
                "--workload".into(),
                we.name.clone(),
                "--sds-socket".into(),
                sds.display().to_string(),
                "--app-address".into(),
                app.to_string(),
                "--outbound-cidr".into(),
                outbound_cidr.clone(),
                "--trust-domain".into(),
                trust_domain.clone(),
            ];
            if let Some(n) = &network {
                args.extend(["--network".into(), n.clone()]);
            }
            args.extend(proxy_common(admin));
            args.extend(["--data-plane".to_owned(), data_planes.sidecars.to_owned()]);
            processes.push(ProcessSpec {
                name: format!("{id}-sidecar"),
                kind: Kind::Sidecar,
                cluster: Some(cluster.clone()),
                workload: Some(we.name.clone()),
                args,
                admin: Some(admin),
            });
            workloads.push(DemoWorkload {
                cluster: cluster.clone(),
                namespace: we.namespace.clone(),
                name: we.name.clone(),
                service_account: we.service_account.clone(),
                app_address: app,
                outbound_cidr,
                admin,
            });
        }
    }
    Ok(Plan {
        mesh_dir: mesh_dir.to_path_buf(),
        run_dir: run_dir.to_path_buf(),
        debug,
        xds,
        ca,
        workloads,
        processes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_faults_become_echo_flags_only_when_set() {
        assert!(fault_args(&DemoFaults::default()).is_empty());
        assert_eq!(
            fault_args(&DemoFaults {
                delay_ms: 250,
                status: Some(503)
            }),
            ["--delay-ms", "250", "--status", "503"]
        );
        assert_eq!(
            fault_args(&DemoFaults {
                delay_ms: 0,
                status: Some(200)
            }),
            ["--status", "200"]
        );
    }
}
