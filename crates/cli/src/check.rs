//! `causeway check DIR`: load a mesh directory, apply mesh-wide rules, print every finding.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use causeway_discovery::{check_mesh, Diagnostic, MeshIndex, Severity};
use causeway_model::ClusterId;
use causeway_registry::{LoadError, MeshDirectory};

use crate::OutputFormat;

fn from_load_error(e: LoadError) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: Some(e.file),
        line: e.line,
        object: e.object,
        field: e.field,
        message: match e.document {
            Some(doc) => format!("{} (document {doc})", e.reason),
            None => e.reason,
        },
    }
}

/// Why a bootstrap credential file (a WorkloadEntry's or a gateway identity's) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialFileError {
    /// The mesh directory itself cannot be resolved.
    #[error("the mesh directory {dir} cannot be resolved: {source}")]
    MeshDir {
        /// The mesh directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not exist or a component of its path cannot be followed.
    #[error("{file} cannot be read: {source}")]
    Unreadable {
        /// The file, as the WorkloadEntry names it.
        file: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Through `..` or a symbolic link, the file lies outside the mesh directory.
    #[error("{file} resolves to {resolved}, outside the mesh directory {dir}; a credential file must lie inside it")]
    Outside {
        /// The file, as the WorkloadEntry names it.
        file: PathBuf,
        /// Where it resolves to (symbolic links followed).
        resolved: PathBuf,
        /// The mesh directory (resolved).
        dir: PathBuf,
    },
    /// The file is a directory, device or other non-regular file.
    #[error("{file} is not a regular file")]
    NotAFile {
        /// The file, as the WorkloadEntry names it.
        file: PathBuf,
    },
    /// The file holds no token.
    #[error("{file} is empty")]
    Empty {
        /// The file, as the WorkloadEntry names it.
        file: PathBuf,
    },
}

/// Reads a bootstrap credential (a WorkloadEntry's `spec.credential.tokenFile` or a Cluster's
/// `spec.gatewayIdentity.credential.tokenFile`, relative to `mesh_dir`) after resolving every symbolic link of its path and checking that the result
/// lies inside the (resolved) mesh directory. The registry already refuses absolute paths and
/// `..`; this catches links that point out of the directory.
pub fn read_credential_file(mesh_dir: &Path, file: &Path) -> Result<String, CredentialFileError> {
    let dir = std::fs::canonicalize(mesh_dir).map_err(|source| CredentialFileError::MeshDir {
        dir: mesh_dir.to_path_buf(),
        source,
    })?;
    let resolved = std::fs::canonicalize(dir.join(file)).map_err(|source| {
        CredentialFileError::Unreadable {
            file: file.to_path_buf(),
            source,
        }
    })?;
    if !resolved.starts_with(&dir) || resolved == dir {
        return Err(CredentialFileError::Outside {
            file: file.to_path_buf(),
            resolved,
            dir,
        });
    }
    let unreadable = |source| CredentialFileError::Unreadable {
        file: file.to_path_buf(),
        source,
    };
    if !std::fs::metadata(&resolved).map_err(unreadable)?.is_file() {
        return Err(CredentialFileError::NotAFile {
            file: file.to_path_buf(),
        });
    }
    let token = std::fs::read_to_string(&resolved).map_err(unreadable)?;
    if token.trim().is_empty() {
        return Err(CredentialFileError::Empty {
            file: file.to_path_buf(),
        });
    }
    Ok(token)
}

/// The mesh index of a loaded directory (its good states), or `None` before mesh.yaml loads.
pub fn index_of(directory: &MeshDirectory) -> Option<MeshIndex> {
    let mesh = directory.mesh()?;
    let objects: Vec<(ClusterId, Arc<causeway_model::ClusterObjects>)> = directory
        .clusters()
        .iter()
        .filter_map(|(name, slot)| Some((ClusterId::new(name).ok()?, slot.objects.clone()?)))
        .collect();
    Some(MeshIndex::build(
        Arc::clone(mesh),
        objects.iter().map(|(i, o)| (i, &**o)),
    ))
}

/// Every finding for the directory: load errors first, then mesh-wide rules.
pub fn diagnose(dir: &Path) -> anyhow::Result<Vec<Diagnostic>> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let directory = MeshDirectory::open(dir);
    let mut findings: Vec<Diagnostic> = directory
        .errors()
        .into_iter()
        .map(from_load_error)
        .collect();
    if let Some(mesh) = directory.mesh() {
        let mut objects = BTreeMap::new();
        for (name, slot) in directory.clusters() {
            if let (Ok(id), Some(objs)) = (ClusterId::new(name), &slot.objects) {
                objects.insert(id, (**objs).clone());
            }
        }
        let index = MeshIndex::build(Arc::clone(mesh), objects.iter());
        findings.extend(check_mesh(mesh, &objects, &index));
        // Credentials are files inside the directory: check they resolve inside it (symbolic
        // links followed), exist and are not empty, as the control plane does before using them.
        for (cluster, objs) in &objects {
            for we in objs.workload_entries.values() {
                let Some(file) = &we.credential_file else {
                    continue;
                };
                if let Err(e) = read_credential_file(dir, file) {
                    findings.push(Diagnostic {
                        severity: Severity::Error,
                        file: Some(we.source.file.clone()),
                        line: Some(we.source.line),
                        object: Some(format!("WorkloadEntry {}/{}", we.namespace, we.name)),
                        field: Some("spec.credential.tokenFile".into()),
                        message: format!(
                            "{e}: workload {} of cluster {cluster} cannot get certificates",
                            we.name
                        ),
                    });
                }
            }
        }
        findings.extend(gateway_credential_findings(dir, mesh));
        findings.extend(kubeconfig_findings(dir, mesh));
    }
    Ok(findings)
}

/// Gateway identities: a Cluster's `spec.gatewayIdentity.credential.tokenFile` must resolve
/// inside the mesh directory, exist and not be empty, like a WorkloadEntry's.
fn gateway_credential_findings(dir: &Path, mesh: &causeway_model::MeshConfig) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for spec in &mesh.clusters {
        let Some(file) = spec
            .gateway_identity
            .as_ref()
            .and_then(|g| g.credential_file.as_ref())
        else {
            continue;
        };
        if let Err(e) = read_credential_file(dir, file) {
            out.push(Diagnostic {
                severity: Severity::Error,
                file: Some(spec.source.file.clone()),
                line: Some(spec.source.line),
                object: Some(format!("Cluster {}", spec.id)),
                field: Some("spec.gatewayIdentity.credential.tokenFile".into()),
                message: format!(
                    "{e}: the gateways of cluster {} cannot get certificates",
                    spec.id
                ),
            });
        }
    }
    out
}

/// Kubernetes members: their kubeconfig must be readable and name an API server (checked
/// offline; the control plane reports whether it answers).
fn kubeconfig_findings(dir: &Path, mesh: &causeway_model::MeshConfig) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for spec in &mesh.clusters {
        let Some(source) = &spec.kubernetes else {
            continue;
        };
        let path = source.kubeconfig_path(dir);
        let result = causeway_kube::KubeconfigFile::read(&spec.id, &path, source.context.clone())
            .and_then(|file| causeway_kube::client::validate(&spec.id, &file));
        if let Err(e) = result {
            out.push(Diagnostic {
                severity: Severity::Error,
                file: Some(spec.source.file.clone()),
                line: Some(spec.source.line),
                object: Some(format!("Cluster {}", spec.id)),
                field: Some("spec.kubernetes.kubeconfig".into()),
                message: e.to_string(),
            });
        }
    }
    out
}

/// Runs the command: exit 0 when there is no error (warnings allowed), 1 otherwise.
pub fn run(dir: &Path, output: OutputFormat) -> anyhow::Result<ExitCode> {
    let findings = diagnose(dir)?;
    let errors = findings
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
        OutputFormat::Text => {
            for d in &findings {
                println!("{d}");
            }
            if errors == 0 {
                println!("{}: ok ({warnings} warning(s))", dir.display());
            } else {
                println!(
                    "{}: {errors} error(s), {warnings} warning(s)",
                    dir.display()
                );
            }
        }
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A scratch directory removed on drop (the binary crate has no tempfile dependency).
    pub(crate) struct Scratch(pub(crate) PathBuf);

    impl Scratch {
        pub(crate) fn new(name: &str) -> Self {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("causeway-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("mkdir");
            Self(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    /// A mesh directory (under `scratch/mesh`) whose cluster `a` has workloads `inside` (token
    /// `tokens/inside.token`) and `linked` (token `tokens/linked.token`, a symbolic link to a
    /// file outside the mesh directory), and a secret next to the directory.
    pub(crate) fn mesh_with_escaping_link(scratch: &Path) -> PathBuf {
        let mesh = scratch.join("mesh");
        write(
            &mesh,
            "mesh.yaml",
            "apiVersion: causeway.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: td}\n---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {name: a}\nspec: {network: n, locality: r/z}\n",
        );
        write(
            &mesh,
            "clusters/a/w.yaml",
            "apiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata: {name: inside, namespace: ns}\nspec: {address: 10.0.0.1, serviceAccount: in, credential: {tokenFile: tokens/inside.token}}\n---\napiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata: {name: linked, namespace: ns}\nspec: {address: 10.0.0.2, serviceAccount: out, credential: {tokenFile: tokens/linked.token}}\n",
        );
        write(&mesh, "tokens/inside.token", "inside-token\n");
        write(scratch, "secret.token", "outside-token\n");
        std::os::unix::fs::symlink(
            scratch.join("secret.token"),
            mesh.join("tokens/linked.token"),
        )
        .expect("symlink");
        mesh
    }

    #[test]
    fn check_reports_a_credential_file_linked_out_of_the_mesh_directory() {
        let scratch = Scratch::new("check-credential");
        let mesh = mesh_with_escaping_link(&scratch.0);
        let findings = diagnose(&mesh).expect("diagnose");
        let errors: Vec<&Diagnostic> = findings
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        assert_eq!(errors.len(), 1, "{findings:?}");
        let d = errors[0];
        assert_eq!(d.file.as_deref(), Some(Path::new("clusters/a/w.yaml")));
        assert_eq!(d.line, Some(6));
        assert_eq!(d.object.as_deref(), Some("WorkloadEntry ns/linked"));
        assert_eq!(d.field.as_deref(), Some("spec.credential.tokenFile"));
        assert!(
            d.message.contains("outside the mesh directory"),
            "{}",
            d.message
        );
        assert!(d.message.contains("tokens/linked.token"), "{}", d.message);
    }

    #[test]
    fn credential_files_resolve_inside_the_mesh_directory_only() {
        let scratch = Scratch::new("credential-file");
        let mesh = mesh_with_escaping_link(&scratch.0);
        assert_eq!(
            read_credential_file(&mesh, Path::new("tokens/inside.token")).expect("inside"),
            "inside-token\n"
        );
        // A link inside the directory to a file inside it is fine.
        std::os::unix::fs::symlink("inside.token", mesh.join("tokens/alias.token")).expect("ln");
        read_credential_file(&mesh, Path::new("tokens/alias.token")).expect("alias");
        // A linked directory component that leaves the mesh directory is not.
        std::os::unix::fs::symlink(&scratch.0, mesh.join("up")).expect("ln");
        for file in ["tokens/linked.token", "up/secret.token", "../secret.token"] {
            let e = read_credential_file(&mesh, Path::new(file)).expect_err(file);
            assert!(
                matches!(e, CredentialFileError::Outside { .. }),
                "{file}: {e}"
            );
        }
        let abs = scratch.0.join("secret.token");
        assert!(matches!(
            read_credential_file(&mesh, &abs),
            Err(CredentialFileError::Outside { .. })
        ));
        assert!(matches!(
            read_credential_file(&mesh, Path::new("tokens")),
            Err(CredentialFileError::NotAFile { .. })
        ));
        assert!(matches!(
            read_credential_file(&mesh, Path::new("tokens/missing.token")),
            Err(CredentialFileError::Unreadable { .. })
        ));
    }

    #[test]
    fn check_reports_unusable_gateway_credential_files() {
        let scratch = Scratch::new("check-gateway-credential");
        let mesh = scratch.0.join("mesh");
        let cluster = |name: &str, token: &str| {
            format!("---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {{name: {name}}}\nspec: {{network: n, locality: r/z, gatewayIdentity: {{serviceAccount: gw, credential: {{tokenFile: {token}}}}}}}\n")
        };
        let text = format!(
            "apiVersion: causeway.io/v1alpha1\nkind: Mesh\nmetadata: {{name: m}}\nspec: {{trustDomain: td}}\n{}{}{}{}",
            cluster("good", "tokens/good.token"),
            cluster("missing", "tokens/missing.token"),
            cluster("empty", "tokens/empty.token"),
            cluster("linked", "tokens/linked.token"),
        );
        write(&mesh, "mesh.yaml", &text);
        write(&mesh, "tokens/good.token", "gateway-token\n");
        write(&mesh, "tokens/empty.token", " \n");
        write(&scratch.0, "secret.token", "outside-token\n");
        std::os::unix::fs::symlink(
            scratch.0.join("secret.token"),
            mesh.join("tokens/linked.token"),
        )
        .expect("symlink");
        let findings = diagnose(&mesh).expect("diagnose");
        let errors: Vec<&Diagnostic> = findings
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        assert_eq!(errors.len(), 3, "{findings:?}");
        for (d, (cluster, line, reason)) in errors.iter().zip([
            ("missing", 11, "cannot be read"),
            ("empty", 16, "is empty"),
            ("linked", 21, "outside the mesh directory"),
        ]) {
            assert_eq!(d.file.as_deref(), Some(Path::new("mesh.yaml")), "{d}");
            assert_eq!(d.line, Some(line), "{d}");
            assert_eq!(d.object.as_deref(), Some(&*format!("Cluster {cluster}")));
            assert_eq!(
                d.field.as_deref(),
                Some("spec.gatewayIdentity.credential.tokenFile")
            );
            assert!(d.message.contains(reason), "{cluster}: {}", d.message);
            assert!(
                d.message
                    .contains(&format!("gateways of cluster {cluster}")),
                "{}",
                d.message
            );
        }
    }
}
