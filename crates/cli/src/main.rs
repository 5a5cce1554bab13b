//! `causeway`: the one binary of the mesh. Subcommands run the control plane and operator
//! tools; `anyhow` is used only here, at the edge.

mod agent;
mod ca;
mod check;
mod control_plane;
mod crds;
mod demo;
mod echo;
mod http_client;
mod link;
mod proxy;
mod proxy_config;
mod proxy_status;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The global allocator: the system's unless a feature picks another (see crates/cli/Cargo.toml).
#[cfg(all(feature = "mimalloc", feature = "jemalloc"))]
compile_error!("features `mimalloc` and `jemalloc` each select the global allocator: enable one");
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "causeway",
    version,
    about = "Causeway: a multi-cluster service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane over a mesh directory: watch it, index every cluster, serve views.
    ControlPlane(control_plane::Args),
    /// Validate a mesh directory without starting anything (exit 1 when it has errors).
    Check {
        /// The mesh directory (mesh.yaml and clusters/<id>/*.yaml).
        dir: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Print the CustomResourceDefinitions of Causeway's kinds (`causeway crds | kubectl apply -f -`).
    Crds,
    /// Add a Kubernetes cluster to mesh.yaml (or update it) after checking its API server and credentials.
    Link(link::Args),
    /// Run a multi-cluster mesh on this machine from a mesh directory (`--tour`: scripted walk-through).
    Demo(demo::Args),
    /// Mesh CA operations (root kept offline, per-cluster intermediates).
    Ca {
        #[command(subcommand)]
        command: ca::Command,
    },
    /// Hold a workload's key, obtain and rotate its certificate, serve it to Envoy over SDS.
    Agent(agent::Args),
    /// Run Envoy as a sidecar or east-west gateway, configured by the control plane.
    Proxy(proxy::Args),
    /// The sample application: answers HTTP with its cluster, workload and caller identity.
    Echo(echo::Args),
    /// List the proxies connected to the control plane: sent, acknowledged and rejected config.
    ProxyStatus {
        /// Debug API of the control plane.
        #[arg(
            long,
            env = "CAUSEWAY_CONTROL_PLANE",
            default_value = "127.0.0.1:15010"
        )]
        control_plane: SocketAddr,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Show what a proxy is configured with, as the running control plane computes it (or, with
    /// `dump`, as a Causeway proxy serves it).
    ProxyConfig {
        #[command(subcommand)]
        what: proxy_config::What,
        /// Debug API of the control plane.
        #[arg(
            long,
            global = true,
            env = "CAUSEWAY_CONTROL_PLANE",
            default_value = "127.0.0.1:15010"
        )]
        control_plane: SocketAddr,
    },
}

/// How operator commands print.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable table or list.
    Text,
    /// JSON, for scripts.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.command {
        Command::ControlPlane(_) | Command::Proxy(_) | Command::Echo(_) | Command::Agent(_) => {
            "info"
        }
        // kube-rs logs each failed request; `link` reports them itself.
        Command::Link(_) => "warn,kube_client=off",
        _ => "warn",
    };
    telemetry::init_logging(level);
    let result = match cli.command {
        Command::Check { dir, output } => check::run(&dir, output),
        Command::Crds => crds::run(),
        Command::Link(args) => runtime().and_then(|rt| rt.block_on(link::run(args))),
        Command::ControlPlane(args) => runtime().and_then(|rt| {
            rt.block_on(control_plane::run(args))
                .map(|()| ExitCode::SUCCESS)
        }),
        Command::Proxy(args) => runtime().and_then(|rt| rt.block_on(proxy::run(args))),
        Command::Ca { command } => ca::run(command),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo::run(args))),
        Command::Agent(args) => runtime().and_then(|rt| rt.block_on(agent::run(args))),
        Command::Echo(args) => runtime().and_then(|rt| rt.block_on(echo::run(args))),
        Command::ProxyStatus {
            control_plane,
            output,
        } => runtime().and_then(|rt| rt.block_on(proxy_status::run(control_plane, output))),
        Command::ProxyConfig {
            what,
            control_plane,
        } => runtime().and_then(|rt| rt.block_on(proxy_config::run(what, control_plane))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("causeway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
