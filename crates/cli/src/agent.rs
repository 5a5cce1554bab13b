//! `causeway agent`: holds a workload's key, obtains and rotates its certificate from the mesh
//! CA, and serves it to the workload's Envoy over SDS on a Unix socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use causeway_model::{ClusterId, SpiffeId};
use causeway_trust::agent::{Agent, AgentConfig, TokenSource};
use causeway_trust::sds::SdsServer;

/// Flags of `causeway agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The CA service (the control plane's `--ca-addr`).
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub ca: SocketAddr,
    /// Mesh root certificate(s) to verify the CA with.
    #[arg(long)]
    pub ca_root: PathBuf,
    /// File with this workload's bootstrap credential (a mesh-directory token or a projected
    /// ServiceAccount token); re-read for every certificate request, so it may be rotated.
    #[arg(long)]
    pub token_file: PathBuf,
    /// The cluster this workload runs in, sent to the CA with each request (required for
    /// Kubernetes clusters, whose tokens are checked against that cluster only).
    #[arg(long, value_parser = parse_cluster)]
    pub cluster: Option<ClusterId>,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "causeway.local")]
    pub trust_domain: String,
    /// Workload namespace.
    #[arg(long)]
    pub namespace: String,
    /// Workload service account.
    #[arg(long)]
    pub service_account: String,
    /// Where to serve SDS.
    #[arg(long)]
    pub sds_socket: PathBuf,
    /// Certificate lifetime in seconds (renewed at half of it).
    #[arg(long, default_value_t = 24 * 3600)]
    pub ttl_seconds: u64,
}

fn parse_cluster(s: &str) -> Result<ClusterId, String> {
    ClusterId::new(s).map_err(|e| format!("not a cluster id: {e}"))
}

/// Runs until stopped.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    causeway_trust::install_crypto_provider();
    let bundle = std::fs::read_to_string(&args.ca_root)
        .with_context(|| format!("--ca-root {}", args.ca_root.display()))?;
    let token = TokenSource::File(args.token_file.clone());
    // Fail fast on a wrong path; the file is read again for every request.
    token.read().await.context("--token-file")?;
    let identity = SpiffeId::new(
        args.trust_domain.clone(),
        args.namespace.clone(),
        args.service_account.clone(),
    );
    let agent = Agent::new(AgentConfig {
        ca_addr: args.ca,
        ca_bundle_pem: bundle,
        trust_domain: args.trust_domain.clone(),
        token,
        cluster: args.cluster.clone(),
        identity: identity.clone(),
        ttl: Duration::from_secs(args.ttl_seconds),
    });
    let cluster = args.cluster.as_ref().map_or("", |c| c.as_str());
    tracing::info!(%identity, %cluster, ca = %args.ca, sds = %args.sds_socket.display(), "agent starting");
    let runner = tokio::spawn(std::sync::Arc::clone(&agent).run());
    let sds = SdsServer::new(agent.certificates());
    sds.serve(&args.sds_socket, crate::shutdown_signal())
        .await?;
    runner.abort();
    let _ = std::fs::remove_file(&args.sds_socket);
    Ok(ExitCode::SUCCESS)
}
