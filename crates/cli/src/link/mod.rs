//! `causeway link`: adds a Kubernetes cluster to the mesh, or updates its entry, in
//! `mesh.yaml` (the step `linkerd multicluster link` or `istioctl create-remote-secret` is in
//! other meshes).
//!
//! Nothing is written until the cluster has been checked with the kubeconfig the control plane
//! will use: its API server answers `/version`, and a SelfSubjectAccessReview for every
//! permission of [`causeway_kube::rbac::REQUIRED_ACCESS`] is allowed. `mesh.yaml` is then edited
//! as a stream of `---` documents: only the `Cluster` document of that cluster is
//! (re-)serialised, every other document keeps its text and comments. The result is loaded with
//! the registry's own loader before it atomically replaces the file, so a failed link never
//! breaks `mesh.yaml`.

mod access;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use causeway_kube::rbac::REQUIRED_ACCESS;
use causeway_kube::KubeconfigFile;
use causeway_model::{ClusterId, Locality, NetworkId};
use causeway_registry::{upsert_cluster, write_mesh_file, ClusterEntry, EditAction};

use access::{check_cluster, kube_error, print_served_apis};

/// Flags of `causeway link`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Cluster id (a DNS label): `metadata.name` of its `Cluster` entry in mesh.yaml.
    #[arg(long, value_parser = parse_cluster)]
    pub name: ClusterId,
    /// Network of the cluster's endpoints.
    #[arg(long, value_parser = parse_network)]
    pub network: NetworkId,
    /// Default locality of its endpoints, REGION/ZONE[/SUBZONE]. Required for a new entry;
    /// kept from the existing entry when omitted.
    #[arg(long)]
    pub locality: Option<Locality>,
    /// Kubeconfig with the control plane's credentials for the cluster. An absolute path is
    /// stored as given; a relative one (to the current directory) is stored relative to the
    /// mesh directory when it lies inside it, else absolute.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Kubeconfig context to use (default: the file's current context).
    #[arg(long)]
    pub context: Option<String>,
    /// East-west gateway of the cluster, ADDR:PORT; repeatable. When given, replaces the
    /// entry's gateways; when omitted, an existing entry keeps its own.
    #[arg(long = "gateway", value_name = "ADDR:PORT")]
    pub gateways: Vec<SocketAddr>,
    /// Withdraw the cluster's endpoints once its API server has been unreachable this long
    /// (e.g. 5m); when omitted, an existing entry keeps its own setting.
    #[arg(long, value_parser = parse_ttl)]
    pub stale_endpoint_ttl: Option<String>,
    /// The mesh directory (its mesh.yaml must exist).
    #[arg(long, env = "CAUSEWAY_MESH_DIR")]
    pub mesh_dir: PathBuf,
    /// Time limit for each request to the API server, in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout_seconds: u64,
}

fn parse_cluster(s: &str) -> Result<ClusterId, String> {
    ClusterId::new(s).map_err(|e| format!("not a cluster id: {e}"))
}

fn parse_network(s: &str) -> Result<NetworkId, String> {
    NetworkId::new(s).map_err(|e| format!("not a network id: {e}"))
}

fn parse_ttl(s: &str) -> Result<String, String> {
    humantime::parse_duration(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("not a duration such as 30s, 5m or 1h: {e}"))
}

/// Checks the cluster, then adds or updates its entry in `mesh.yaml`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    causeway_trust::install_crypto_provider();
    let cluster = &args.name;
    let mesh_file = args.mesh_dir.join("mesh.yaml");
    let original = std::fs::read_to_string(&mesh_file).with_context(|| {
        format!(
            "cannot read {} (causeway link adds clusters to an existing mesh directory)",
            mesh_file.display()
        )
    })?;
    let cwd = std::env::current_dir().context("cannot determine the current directory")?;
    let entry = ClusterEntry {
        name: cluster.clone(),
        network: args.network.clone(),
        locality: args.locality.clone(),
        gateways: args.gateways.clone(),
        kubeconfig: stored_kubeconfig_path(&args.kubeconfig, &cwd, &args.mesh_dir),
        context: args.context.clone().filter(|c| !c.is_empty()),
        stale_endpoint_ttl: args.stale_endpoint_ttl.clone(),
    };
    // Edit first (no network needed), so a missing --locality fails before anything else.
    // The error names the cluster; the file is named here.
    let edited =
        upsert_cluster(&original, &entry).with_context(|| mesh_file.display().to_string())?;

    let read_path = cwd.join(&args.kubeconfig);
    let kubeconfig =
        KubeconfigFile::read(cluster, &read_path, entry.context.clone()).map_err(kube_error)?;
    warn_if_readable_by_others(&read_path);
    let limit = Duration::from_secs(args.timeout_seconds.max(1));
    let report = check_cluster(cluster, &kubeconfig, limit).await?;
    println!(
        "cluster {cluster}: API server {} answers (Kubernetes {})",
        report.url, report.version
    );
    println!(
        "cluster {cluster}: the credentials have all {} permissions the control plane needs",
        REQUIRED_ACCESS.len()
    );
    print_served_apis(cluster, &report.served);

    write_mesh_file(&args.mesh_dir, &original, &edited.text, &entry)?;
    let verb = match edited.action {
        EditAction::Added => "added",
        EditAction::Updated => "updated",
    };
    println!("{verb} Cluster {cluster} in {}:", mesh_file.display());
    print!("{}", edited.document);
    if edited.dropped_comments {
        eprintln!("note: comments inside the previous Cluster {cluster} document were not kept");
    }
    let ignored = args.mesh_dir.join("clusters").join(cluster.as_str());
    if ignored.is_dir() {
        eprintln!(
            "warning: {} is ignored now that cluster {cluster} is read from its API server",
            ignored.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How `mesh.yaml` refers to the kubeconfig: absolute paths as given; a path relative to the
/// current directory relative to the mesh directory when it lies inside it (the directory stays
/// movable), else absolute. The control plane resolves relative paths against the mesh
/// directory. Symlinks are not resolved, so a rotated kubeconfig behind a link is still found.
fn stored_kubeconfig_path(given: &Path, cwd: &Path, mesh_dir: &Path) -> PathBuf {
    if given.is_absolute() {
        return given.to_path_buf();
    }
    let absolute = cwd.join(given);
    let mesh_dir = cwd.join(mesh_dir);
    let clean = |p: &Path| -> PathBuf {
        p.components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    };
    let (absolute, mesh_dir) = (clean(&absolute), clean(&mesh_dir));
    match absolute.strip_prefix(&mesh_dir) {
        Ok(inside) if !inside.as_os_str().is_empty() && !has_parent_dir(inside) => {
            inside.to_path_buf()
        }
        _ => absolute,
    }
}

fn has_parent_dir(p: &Path) -> bool {
    p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// A kubeconfig holds credentials: say so when others may read it.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: {} holds credentials but has mode {:o}; consider chmod 600",
                path.display(),
                mode & 0o777
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_paths_are_stored_so_the_control_plane_finds_the_same_file() {
        let cwd = Path::new("/home/op");
        let stored = |given: &str, mesh: &str| {
            stored_kubeconfig_path(Path::new(given), cwd, Path::new(mesh))
        };
        assert_eq!(
            stored("/etc/kc.yaml", "mesh"),
            PathBuf::from("/etc/kc.yaml")
        );
        assert_eq!(stored("kc.yaml", "mesh"), PathBuf::from("/home/op/kc.yaml"));
        assert_eq!(
            stored("mesh/kubeconfigs/a.yaml", "mesh"),
            PathBuf::from("kubeconfigs/a.yaml")
        );
        assert_eq!(stored("./mesh/a.yaml", "./mesh/"), PathBuf::from("a.yaml"));
        assert_eq!(
            stored("mesh/../kc.yaml", "mesh"),
            PathBuf::from("/home/op/mesh/../kc.yaml")
        );
        assert_eq!(
            stored("a.yaml", "/srv/mesh"),
            PathBuf::from("/home/op/a.yaml")
        );
        assert_eq!(
            stored("/srv/mesh/a.yaml", "/srv/mesh"),
            PathBuf::from("/srv/mesh/a.yaml")
        );
    }
}
