//! `causeway control-plane`: watches the mesh directory, keeps the mesh index, serves the debug
//! API (and, with the xDS crate, the proxies).

mod debug_api;
mod metrics;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// Flags of `causeway control-plane`.
#[derive(clap::Args)]
pub struct Args {
    /// The mesh directory (mesh.yaml and clusters/<id>/*.yaml).
    #[arg(long, env = "CAUSEWAY_MESH_DIR")]
    pub mesh_dir: PathBuf,
    /// Address of the debug API and /metrics.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub debug_addr: SocketAddr,
    /// How long to wait after a file change for the rest of a burst (milliseconds).
    #[arg(long, default_value_t = 50)]
    pub settle_ms: u64,
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let root = args
        .mesh_dir
        .canonicalize()
        .with_context(|| format!("mesh directory {}", args.mesh_dir.display()))?;
    let metrics = Arc::new(metrics::Metrics::new());
    let state = state::start(
        root.clone(),
        Duration::from_millis(args.settle_ms),
        Arc::clone(&metrics),
    )
    .await
    .context("starting the mesh directory watch")?;
    let listener = tokio::net::TcpListener::bind(args.debug_addr)
        .await
        .with_context(|| format!("binding the debug API on {}", args.debug_addr))?;
    let local = listener.local_addr()?;
    tracing::info!(mesh_dir = %root.display(), debug_api = %local, "control plane running");
    let app = debug_api::router(state, metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("debug API server")?;
    tracing::info!("control plane stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
