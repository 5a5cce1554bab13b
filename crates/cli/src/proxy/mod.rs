//! `causeway proxy`: with `--data-plane envoy`, writes an Envoy bootstrap that points at the
//! control plane (ADS over mTLS, with the certificate the local agent serves) and at the agent
//! (SDS), then execs Envoy; with `--data-plane causeway`, runs Causeway's own data plane in this
//! process on the same node identity, agent and control plane ([`native`]).

mod native;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use causeway_model::ProxyRole;
use causeway_xds::bootstrap::BootstrapConfig;

/// Flags of `causeway proxy`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// `sidecar` (beside one workload) or `gateway` (a cluster's east-west gateway).
    #[arg(long, default_value = "sidecar")]
    pub role: String,
    /// Cluster the proxy runs in (required unless `--config` gives a static bootstrap).
    #[arg(long, required_unless_present = "config")]
    pub cluster: Option<String>,
    /// Namespace of the workload (sidecars).
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Workload name (a WorkloadEntry), or the gateway's name (required unless `--config`).
    #[arg(long, required_unless_present = "config")]
    pub workload: Option<String>,
    /// A static Envoy bootstrap in binary protobuf (`.pb`): the proxy runs its
    /// `static_resources` with TLS certificates from files, without control plane or agent.
    /// Envoy reads the very same file (`--data-plane envoy` passes it to `envoy -c`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The control plane's xDS address.
    #[arg(long, default_value = "127.0.0.1:15011")]
    pub xds: SocketAddr,
    /// Use delta xDS instead of state-of-the-world.
    #[arg(long)]
    pub delta: bool,
    /// Unix socket of `causeway agent`'s SDS server: the proxy's certificate (also used to
    /// connect to the control plane over mTLS) and the trust bundle. Required.
    #[arg(long)]
    pub sds_socket: Option<PathBuf>,
    /// Trust domain of the mesh: the control plane must present exactly its SPIFFE ID in it
    /// (without it, its SPIFFE path in any trust domain under the mesh root is accepted).
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Envoy admin address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Where the local application listens (sidecars).
    #[arg(long)]
    pub app_address: Option<IpAddr>,
    /// Address block for outbound listeners, one address per service (sidecars).
    #[arg(long)]
    pub outbound_cidr: Option<String>,
    /// Sidecars in a network namespace: the loopback port where iptables redirects the app's
    /// connections to the outbound block (`-j REDIRECT --to-ports PORT`); the proxy then reads
    /// each connection's original destination (SO_ORIGINAL_DST) instead of binding every
    /// outbound listener.
    #[arg(long)]
    pub capture_port: Option<u16>,
    /// Network the proxy is on (checked by the control plane).
    #[arg(long)]
    pub network: Option<String>,
    /// Envoy binary (default: $CAUSEWAY_ENVOY, then `envoy` on PATH).
    #[arg(long, env = "CAUSEWAY_ENVOY")]
    pub envoy: Option<PathBuf>,
    /// Directory for the bootstrap file.
    #[arg(long, default_value = ".")]
    pub run_dir: PathBuf,
    /// Envoy log level.
    #[arg(long, default_value = "warning")]
    pub log_level: String,
    /// Print the bootstrap and exit.
    #[arg(long)]
    pub print_bootstrap: bool,
    /// `envoy` (exec Envoy) or `causeway` (Causeway's own data plane, in this process).
    #[arg(long, default_value = "envoy")]
    pub data_plane: String,
    /// Worker threads, for either data plane (Envoy's `--concurrency`).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
}

/// What the node is and where it connects, for either data plane.
fn bootstrap_config(args: &Args) -> anyhow::Result<BootstrapConfig> {
    let role = match args.role.as_str() {
        "sidecar" => ProxyRole::Sidecar,
        "gateway" => ProxyRole::Gateway,
        other => anyhow::bail!("--role {other:?}: expected sidecar or gateway"),
    };
    let cluster = args.cluster.clone().context("--cluster is required")?;
    let workload = args.workload.clone().context("--workload is required")?;
    let sds_socket = args.sds_socket.clone().context(
        "--sds-socket is required: the agent serves the proxy's certificates, including the one it connects to the control plane with",
    )?;
    let config = BootstrapConfig {
        role,
        cluster,
        namespace: args.namespace.clone(),
        workload,
        xds: args.xds,
        delta: args.delta,
        sds_socket,
        admin: args.admin,
        app_address: args.app_address,
        outbound_cidr: args.outbound_cidr.clone(),
        capture_port: args.capture_port,
        network: args.network.clone(),
        trust_domain: args.trust_domain.clone(),
    };
    Ok(config)
}

/// Finds the Envoy binary.
pub fn envoy_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let venv = Path::new(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(venv) {
        for e in entries.flatten() {
            let candidate = e.path().join("site-packages/envoy/_bin/envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    anyhow::bail!("no Envoy binary: pass --envoy, set CAUSEWAY_ENVOY, or run scripts/ensure-envoy")
}

/// Runs the command: the Causeway data plane, or writes the bootstrap and execs Envoy.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match (args.data_plane.as_str(), &args.config) {
        ("envoy", Some(file)) => return exec_envoy(&args, file),
        ("envoy", None) => {}
        ("causeway", Some(file)) => return native::run_static(&args, file).await,
        ("causeway", None) => return native::run(&args, bootstrap_config(&args)?).await,
        (other, _) => anyhow::bail!("--data-plane {other:?}: expected envoy or causeway"),
    }
    let config = bootstrap_config(&args)?;
    let boot = causeway_xds::bootstrap::bootstrap(&config)?;
    if args.print_bootstrap {
        println!("{}", serde_json::to_string_pretty(&boot)?);
        return Ok(ExitCode::SUCCESS);
    }
    let envoy = envoy_binary(args.envoy.as_deref())?;
    std::fs::create_dir_all(&args.run_dir)
        .with_context(|| format!("creating {}", args.run_dir.display()))?;
    let path = args
        .run_dir
        .join(format!("envoy-{}-{}.json", config.cluster, config.workload));
    std::fs::write(&path, serde_json::to_vec_pretty(&boot)?)
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(envoy = %envoy.display(), bootstrap = %path.display(), cluster = %config.cluster, workload = %config.workload, "starting Envoy");
    let err = envoy_command(&envoy, &path, &args)
        .args([
            "--service-cluster",
            &config.cluster,
            "--service-node",
            &config.workload,
        ])
        .exec();
    Err(anyhow::Error::new(err).context(format!("starting {}", envoy.display())))
}

use std::os::unix::process::CommandExt;

/// Envoy on bootstrap `path` with the flags both modes share.
fn envoy_command(envoy: &Path, path: &Path, args: &Args) -> std::process::Command {
    let mut cmd = std::process::Command::new(envoy);
    cmd.arg("-c").arg(path).args([
        "--concurrency",
        &args.concurrency.to_string(),
        "--disable-hot-restart",
        "--drain-time-s",
        "1",
        "-l",
        &args.log_level,
    ]);
    cmd
}

/// Replaces this process with Envoy on the static bootstrap `file` (whoever supervises
/// `causeway proxy` supervises Envoy itself, and stopping one can never orphan the other).
fn exec_envoy(args: &Args, file: &Path) -> anyhow::Result<ExitCode> {
    let envoy = envoy_binary(args.envoy.as_deref())?;
    tracing::info!(envoy = %envoy.display(), bootstrap = %file.display(), "starting Envoy on a static bootstrap");
    let err = envoy_command(&envoy, file, args).exec();
    Err(anyhow::Error::new(err).context(format!("starting {}", envoy.display())))
}
