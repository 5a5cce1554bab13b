//! `causeway proxy`: writes an Envoy bootstrap that points at the control plane (ADS) and at
//! the local agent (SDS), then runs Envoy as a supervised child.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use causeway_xds::node::keys;
use serde_json::{json, Value};

/// Flags of `causeway proxy`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// `sidecar` (beside one workload) or `gateway` (a cluster's east-west gateway).
    #[arg(long, default_value = "sidecar")]
    pub role: String,
    /// Cluster the proxy runs in.
    #[arg(long)]
    pub cluster: String,
    /// Namespace of the workload (sidecars).
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Workload name (a WorkloadEntry), or the gateway's name.
    #[arg(long)]
    pub workload: String,
    /// The control plane's xDS address.
    #[arg(long, default_value = "127.0.0.1:15011")]
    pub xds: SocketAddr,
    /// Use delta xDS instead of state-of-the-world.
    #[arg(long)]
    pub delta: bool,
    /// Unix socket of `causeway agent`'s SDS server (sidecars: certificates and trust bundle).
    #[arg(long)]
    pub sds_socket: Option<PathBuf>,
    /// Envoy admin address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Where the local application listens (sidecars).
    #[arg(long)]
    pub app_address: Option<IpAddr>,
    /// Address block for outbound listeners, one address per service (sidecars).
    #[arg(long)]
    pub outbound_cidr: Option<String>,
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
}

/// The Envoy bootstrap for `args`.
pub fn bootstrap(args: &Args) -> anyhow::Result<Value> {
    let sidecar = match args.role.as_str() {
        "sidecar" => true,
        "gateway" => false,
        other => anyhow::bail!("--role {other:?}: expected sidecar or gateway"),
    };
    let mut metadata = json!({
        keys::CLUSTER: args.cluster,
        keys::NAMESPACE: args.namespace,
        keys::WORKLOAD: args.workload,
        keys::ROLE: args.role,
    });
    if let Some(net) = &args.network {
        metadata[keys::NETWORK] = json!(net);
    }
    let mut clusters = vec![json!({
        "name": "xds-grpc",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {
                    "connection_keepalive": { "interval": "30s", "timeout": "10s" }
                } }
            }
        },
        "load_assignment": {
            "cluster_name": "xds-grpc",
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                "address": args.xds.ip().to_string(), "port_value": args.xds.port()
            } } } }] }]
        }
    })];
    if sidecar {
        let sds = args.sds_socket.as_ref().context(
            "--sds-socket is required for a sidecar (the agent serves its certificates)",
        )?;
        let cidr = args
            .outbound_cidr
            .as_ref()
            .context("--outbound-cidr is required for a sidecar")?;
        metadata[keys::OUTBOUND_CIDR] = json!(cidr);
        if let Some(app) = args.app_address {
            metadata[keys::APP_ADDRESS] = json!(app.to_string());
        }
        clusters.push(json!({
            "name": causeway_xds::build::SDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": { "http2_protocol_options": {} }
                }
            },
            "load_assignment": {
                "cluster_name": causeway_xds::build::SDS_CLUSTER,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "pipe": {
                    "path": sds.display().to_string()
                } } } }] }]
            }
        }));
    }
    let api_type = if args.delta { "DELTA_GRPC" } else { "GRPC" };
    Ok(json!({
        "node": {
            "id": format!("{}~{}~{}~{}", args.role, args.cluster, args.namespace, args.workload),
            "cluster": args.cluster,
            "metadata": metadata,
        },
        "admin": { "address": { "socket_address": {
            "address": args.admin.ip().to_string(), "port_value": args.admin.port()
        } } },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds-grpc" } }],
                "set_node_on_first_message_only": true
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": { "clusters": clusters },
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": 50000
                }
            }]
        }
    }))
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

/// Runs the command: writes the bootstrap and execs Envoy.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let boot = bootstrap(&args)?;
    if args.print_bootstrap {
        println!("{}", serde_json::to_string_pretty(&boot)?);
        return Ok(ExitCode::SUCCESS);
    }
    let envoy = envoy_binary(args.envoy.as_deref())?;
    std::fs::create_dir_all(&args.run_dir)
        .with_context(|| format!("creating {}", args.run_dir.display()))?;
    let path = args
        .run_dir
        .join(format!("envoy-{}-{}.json", args.cluster, args.workload));
    std::fs::write(&path, serde_json::to_vec_pretty(&boot)?)
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(envoy = %envoy.display(), bootstrap = %path.display(), cluster = %args.cluster, workload = %args.workload, "starting Envoy");
    // Replace this process with Envoy: whoever supervises `causeway proxy` supervises Envoy
    // itself, and stopping one can never orphan the other.
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&envoy)
        .arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--drain-time-s",
            "1",
            "-l",
            &args.log_level,
        ])
        .args([
            "--service-cluster",
            &args.cluster,
            "--service-node",
            &args.workload,
        ])
        .exec();
    Err(anyhow::Error::new(err).context(format!("starting {}", envoy.display())))
}
