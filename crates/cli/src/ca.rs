//! `causeway ca ...`: operator commands for keeping the mesh root offline.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use causeway_model::ClusterId;
use causeway_trust::ca::RootCa;

/// CA commands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a mesh root CA in DIR (root-cert.pem, root-key.pem with mode 0600).
    Init {
        /// Directory for the root.
        dir: PathBuf,
        /// SPIFFE trust domain.
        #[arg(long, default_value = "causeway.local")]
        trust_domain: String,
        /// Root lifetime in days.
        #[arg(long, default_value_t = 3650)]
        days: u64,
    },
    /// Issue a cluster's intermediate CA from an (offline) root, in Istio's cacerts layout,
    /// name-constrained to the cluster's DNS SAN (`<cluster>.cluster.<trust-domain>`).
    IssueIntermediate {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// Directory holding the root (from `ca init`).
        #[arg(long)]
        root: PathBuf,
        /// Output directory (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem).
        #[arg(long, required_unless_present = "ca_dir", conflicts_with = "ca_dir")]
        out: Option<PathBuf>,
        /// A control plane's CA directory: writes into its `clusters/<cluster>/` (instead of
        /// `--out`).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// SPIFFE trust domain.
        #[arg(long, default_value = "causeway.local")]
        trust_domain: String,
        /// Intermediate lifetime in days.
        #[arg(long, default_value_t = 730)]
        days: u64,
    },
}

/// Runs a CA command.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Init {
            dir,
            trust_domain,
            days,
        } => {
            let root = RootCa::generate(&trust_domain, Duration::from_secs(days * 86_400))?;
            root.write(&dir)?;
            println!(
                "mesh root for {trust_domain} written to {} (keep root-key.pem offline)",
                dir.display()
            );
        }
        Command::IssueIntermediate {
            cluster,
            root,
            out,
            ca_dir,
            trust_domain,
            days,
        } => {
            let cluster =
                ClusterId::new(&cluster).with_context(|| format!("--cluster {cluster:?}"))?;
            let out = match (out, ca_dir) {
                (Some(out), _) => out,
                (None, Some(ca_dir)) => causeway_trust::ca::cluster_dir(&ca_dir, &cluster),
                (None, None) => anyhow::bail!("give --out DIR or --ca-dir DIR"),
            };
            let root = RootCa::load(&root)?;
            root.issue_intermediate(&cluster, &trust_domain, Duration::from_secs(days * 86_400))?
                .write(&out)?;
            println!(
                "intermediate CA of cluster {cluster} written to {} (DNS names constrained to {})",
                out.display(),
                cluster.certificate_san(&trust_domain)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
