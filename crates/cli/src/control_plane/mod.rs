//! `causeway control-plane`: watches the mesh directory, keeps the mesh index, serves the debug
//! API (and, with the xDS crate, the proxies).

mod debug_api;
mod debug_server;
mod gateway_probe;
mod mcs;
mod metrics;
mod sources;
mod state;
mod trust;
mod view_rows;

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
    /// Address of the debug API and /metrics: a loopback address unless
    /// `--debug-addr-public` is given (the API has no authentication).
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub debug_addr: SocketAddr,
    /// Allow a non-loopback `--debug-addr` (logged as a warning): whoever reaches it reads
    /// the whole mesh. Only on a trusted network.
    #[arg(long)]
    pub debug_addr_public: bool,
    /// Address of the xDS (ADS) server proxies connect to (mTLS: proxies present their
    /// agent's mesh certificate).
    #[arg(long, default_value = "127.0.0.1:15011")]
    pub xds_addr: SocketAddr,
    /// How long to wait after a file change for the rest of a burst (milliseconds). Zero by
    /// default: a change is loaded at once, and the changes that arrive while a load runs are
    /// loaded together after it.
    #[arg(long, default_value_t = 0)]
    pub settle_ms: u64,
    /// The least time between two pushes to one proxy (milliseconds). Zero by default: a
    /// change is pushed as soon as it is built, and changes arriving during a build are built
    /// and pushed together.
    #[arg(long, default_value_t = 0)]
    pub coalesce_ms: u64,
    /// Directory of the mesh CA: `root/` (generated on first start unless you provide one, or
    /// absent when the root is kept offline) and one cacerts directory per cluster.
    #[arg(long, default_value = ".causeway/ca")]
    pub ca_dir: PathBuf,
    /// Address of the CA service workloads' agents request certificates from.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub ca_addr: SocketAddr,
    /// Lifetime of workload certificates (seconds); agents renew at half of it.
    #[arg(long, default_value_t = 24 * 3600)]
    pub cert_ttl_seconds: u64,
    /// Never write into Kubernetes member clusters (no ServiceImports, no ServiceExport status).
    #[arg(long)]
    pub read_only_clusters: bool,
    /// How often each Kubernetes member's kubeconfig is re-read and its API server probed
    /// (milliseconds).
    #[arg(long, default_value_t = 1000)]
    pub kube_poll_ms: u64,
    /// Initial lists of Kubernetes watches by WATCH with sendInitialEvents (Kubernetes 1.32+)
    /// instead of paged LIST.
    #[arg(long)]
    pub kube_streaming_lists: bool,
    /// How often the control plane probes each declared east-west gateway (milliseconds; 0
    /// turns the probes off). A gateway failing two probes in a row is marked down and proxies
    /// skip the endpoints behind it, unless nothing else is left (see docs/failure-modes.md).
    #[arg(long, default_value_t = 1000)]
    pub gateway_probe_interval_ms: u64,
    /// Enable test-only debug endpoints (e.g. making a proxy's config invalid to test NACKs).
    /// Exists only in builds with the `test-hooks` feature (`make test`).
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    pub enable_test_hooks: bool,
}

/// Whether the test-only hooks are on: never in a build without the `test-hooks` feature.
fn test_hooks_enabled(args: &Args) -> bool {
    #[cfg(feature = "test-hooks")]
    if args.enable_test_hooks {
        tracing::warn!("test hooks enabled (--enable-test-hooks): POST /debug/test/poison breaks proxies' config on request");
        return true;
    }
    let _ = args;
    false
}

/// Keeps time-based cluster gauges (how long a cluster has been stale) current between changes.
async fn refresh_cluster_metrics(state: state::StateHandle, metrics: Arc<metrics::Metrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let snapshot = state.borrow().clone();
        metrics.observe_kubernetes(&snapshot.clusters);
    }
}

/// The xDS listener's mTLS: it presents the control plane's SPIFFE ID (issued by the mesh CA,
/// renewed like the CA's own certificate) and accepts only clients with a mesh certificate.
fn xds_tls(ca: &trust::MeshCa) -> anyhow::Result<causeway_xds::XdsTls> {
    use causeway_trust::service::{control_plane_identity, CONTROL_PLANE_SERVER_NAME};
    let trust_domain = ca.service.config().trust_domain.clone();
    let resolver = ca
        .service
        .serving_resolver(
            control_plane_identity(&trust_domain),
            CONTROL_PLANE_SERVER_NAME,
        )
        .context("issuing the xDS server's certificate")?;
    let config = causeway_trust::verify::mtls_server_config(
        resolver,
        &ca.service.trust_bundle_pem(),
        &trust_domain,
    )
    .context("the xDS server's TLS configuration")?;
    Ok(causeway_xds::XdsTls {
        config: Arc::new(config),
        trust_domain,
        handshake_timeout: Duration::from_secs(10),
    })
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    debug_server::check_addr(args.debug_addr, args.debug_addr_public)?;
    let root = args
        .mesh_dir
        .canonicalize()
        .with_context(|| format!("mesh directory {}", args.mesh_dir.display()))?;
    let metrics = Arc::new(metrics::Metrics::new());
    causeway_trust::install_crypto_provider();
    let kube = state::KubeSettings {
        options: causeway_kube::KubeOptions {
            read_only: args.read_only_clusters,
            poll_interval: Duration::from_millis(args.kube_poll_ms.max(50)),
            initial_list: if args.kube_streaming_lists {
                causeway_kube::InitialList::Streaming
            } else {
                causeway_kube::InitialList::ListWatch
            },
            ..causeway_kube::KubeOptions::default()
        },
        factory: Arc::new(causeway_kube::KubeconfigClientFactory::default()),
    };
    let started = state::start(
        root.clone(),
        Duration::from_millis(args.settle_ms),
        Arc::clone(&metrics),
        kube,
    )
    .await
    .context("starting the mesh directory watch")?;
    let state = started.handle;
    tokio::spawn(refresh_cluster_metrics(state.clone(), Arc::clone(&metrics)));
    if args.gateway_probe_interval_ms > 0 {
        let interval = Duration::from_millis(args.gateway_probe_interval_ms.max(100));
        let (state, metrics) = (state.clone(), Arc::clone(&metrics));
        let down = started.gateways_down;
        tokio::spawn(async move {
            if let Err(e) = gateway_probe::run(state, down, &metrics, interval).await {
                tracing::error!(error = %e, "gateway probes stopped");
            }
        });
    }
    let ca = trust::start(
        &root,
        &args.ca_dir,
        state.clone(),
        started.reviewer,
        Duration::from_secs(args.cert_ttl_seconds),
    )
    .context("starting the mesh CA")?;
    ca.register_metrics_into(&metrics);
    let ca_listener = tokio::net::TcpListener::bind(args.ca_addr)
        .await
        .with_context(|| format!("binding the CA service on {}", args.ca_addr))?;
    let ca_task =
        tokio::spawn(Arc::clone(&ca.service).serve(ca_listener, crate::shutdown_signal()));
    let proxies = Arc::new(causeway_xds::ProxyRegistry::new(test_hooks_enabled(&args)));
    metrics.register(|registry| proxies.register_metrics(registry));
    let mesh_state = state::forward_to_xds(state.clone());
    let ads = causeway_xds::AdsServer::new(
        mesh_state,
        Arc::clone(&proxies),
        causeway_xds::ServerConfig {
            coalesce: Duration::from_millis(args.coalesce_ms),
        },
    );
    let xds_listener = tokio::net::TcpListener::bind(args.xds_addr)
        .await
        .with_context(|| format!("binding the xDS server on {}", args.xds_addr))?;
    let xds_local = xds_listener.local_addr()?;
    let xds = causeway_xds::serve_tls(ads, xds_listener, xds_tls(&ca)?, crate::shutdown_signal());
    let listener = tokio::net::TcpListener::bind(args.debug_addr)
        .await
        .with_context(|| format!("binding the debug API on {}", args.debug_addr))?;
    let local = listener.local_addr()?;
    tracing::info!(mesh_dir = %root.display(), debug_api = %local, xds = %xds_local, ca = %args.ca_addr, "control plane running");
    let app = debug_api::router(state, metrics, proxies);
    let debug = debug_server::serve(
        listener,
        app,
        debug_server::Limits::default(),
        crate::shutdown_signal(),
    );
    // Proxy streams never end on their own: after the signal, give in-flight work a moment,
    // then stop regardless so a restart is never blocked by a lingering process.
    let servers = async { tokio::join!(xds, debug) };
    let deadline = async {
        crate::shutdown_signal().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tokio::select! {
        (xds_result, debug_result) = servers => {
            xds_result.context("xDS server")?;
            debug_result.context("debug API server")?;
        }
        () = deadline => tracing::info!("closing open proxy streams"),
    }
    ca_task.abort();
    tracing::info!("control plane stopped");
    Ok(())
}
