//! `causeway proxy --data-plane causeway`: Causeway's own data plane in this process. The
//! certificates come from the same agent over SDS as Envoy's do (one model for both data planes,
//! and the private key stays with the agent's process boundary as for Envoy), the
//! configuration over ADS (delta with `--delta`, state of the world otherwise, as for Envoy)
//! from the same control plane, and the workers serve it.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use causeway_proxy::admin::{self, AdminState};
use causeway_proxy::config::{SharedSnapshot, Snapshot};
use causeway_proxy::credentials::MeshCredentials;
use causeway_proxy::metrics::Metrics;
use causeway_proxy::worker::{WorkerLimits, Workers};
use causeway_xds::bootstrap::{BootstrapConfig, CONTROL_PLANE_SNI};
use causeway_xds::client::ads::{self, AdsClientConfig, AdsStatus};
use causeway_xds::client::sds::{self, Credentials};
use tokio::sync::watch;

use super::Args;

/// Runs the data plane until SIGINT/SIGTERM.
pub async fn run(args: &Args, config: BootstrapConfig) -> anyhow::Result<ExitCode> {
    let node = causeway_xds::bootstrap::node(&config)?;
    let credentials = sds::watch(config.sds_socket.clone(), node.clone());
    let tls = xds_tls(credentials.clone(), config.trust_domain.clone());
    let (snapshots_tx, snapshots) = watch::channel::<SharedSnapshot>(Arc::new(Snapshot::default()));
    let status = Arc::new(AdsStatus::default());
    tokio::spawn(ads::run(
        AdsClientConfig {
            xds: config.xds,
            server_name: CONTROL_PLANE_SNI.to_owned(),
            node,
            connect_timeout: Duration::from_secs(2),
            delta: config.delta,
        },
        tls,
        snapshots_tx,
        Arc::clone(&status),
    ));
    let metrics = Arc::new(Metrics::default());
    let workers = Workers::start(
        args.concurrency,
        WorkerLimits::default(),
        MeshCredentials::sds(credentials),
        snapshots.clone(),
        causeway_proxy::listener::handler(Arc::clone(&metrics)),
    )
    .context("starting the workers")?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("binding the admin address {}", config.admin))?;
    tracing::info!(
        cluster = %config.cluster,
        role = ?config.role,
        workload = %config.workload,
        admin = %config.admin,
        xds = %config.xds,
        concurrency = args.concurrency,
        "Causeway data plane started"
    );
    let router = admin::router(AdminState {
        snapshots,
        ads: status,
        metrics,
        endpoints: workers.endpoints(),
    });
    let served = axum::serve(admin_listener, router)
        .with_graceful_shutdown(crate::shutdown_signal())
        .await;
    workers.stop();
    served.context("admin server")?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the data plane on a static bootstrap (`--config FILE`) until SIGINT/SIGTERM: its
/// listeners and clusters, certificates from the files it names, no control plane, no agent.
pub async fn run_static(args: &Args, file: &Path) -> anyhow::Result<ExitCode> {
    let boot = causeway_xds::dataplane::read_static_bootstrap(file)?;
    let mut snapshot = boot.snapshot;
    snapshot.generation = 1;
    let (_snapshots_tx, snapshots) = watch::channel::<SharedSnapshot>(Arc::new(snapshot));
    let metrics = Arc::new(Metrics::default());
    let workers = Workers::start(
        args.concurrency,
        WorkerLimits::default(),
        MeshCredentials::files_only(),
        snapshots.clone(),
        causeway_proxy::listener::handler(Arc::clone(&metrics)),
    )
    .context("starting the workers")?;
    tracing::info!(
        bootstrap = %file.display(),
        node = %boot.node.id,
        admin = ?boot.admin,
        concurrency = args.concurrency,
        "Causeway data plane started on a static bootstrap"
    );
    let state = AdminState {
        snapshots,
        ads: Arc::new(AdsStatus::default()),
        metrics,
        endpoints: workers.endpoints(),
    };
    let served = match boot.admin {
        Some(address) => {
            let admin_listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding the admin address {address}"))?;
            axum::serve(admin_listener, admin::router(state))
                .with_graceful_shutdown(crate::shutdown_signal())
                .await
                .context("admin server")
        }
        None => {
            crate::shutdown_signal().await;
            Ok(())
        }
    };
    workers.stop();
    served?;
    Ok(ExitCode::SUCCESS)
}

/// The xDS client's TLS, rebuilt whenever the agent rotates the certificate.
fn xds_tls(
    mut credentials: watch::Receiver<Option<Arc<Credentials>>>,
    trust_domain: Option<String>,
) -> watch::Receiver<Option<Arc<rustls::ClientConfig>>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let current = credentials.borrow_and_update().clone();
            if let Some(c) = current {
                match sds::xds_client_tls(&c, trust_domain.as_deref()) {
                    Ok(cfg) => {
                        tx.send_replace(Some(Arc::new(cfg)));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the agent's certificate cannot be used for xDS")
                    }
                }
            }
            if credentials.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}
