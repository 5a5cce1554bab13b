//! `causeway check DIR`: load a mesh directory, apply mesh-wide rules, print every finding.

use std::collections::BTreeMap;
use std::path::Path;
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
        // Credentials are files next to the directory: check they exist and are not empty.
        for (cluster, objs) in &objects {
            for we in objs.workload_entries.values() {
                let Some(file) = &we.credential_file else {
                    continue;
                };
                let problem = match std::fs::read_to_string(dir.join(file)) {
                    Ok(t) if t.trim().is_empty() => Some("is empty".to_owned()),
                    Ok(_) => None,
                    Err(e) => Some(format!("cannot be read: {e}")),
                };
                if let Some(problem) = problem {
                    findings.push(Diagnostic {
                        severity: Severity::Error,
                        file: Some(we.source.file.clone()),
                        line: Some(we.source.line),
                        object: Some(format!("WorkloadEntry {}/{}", we.namespace, we.name)),
                        field: Some("spec.credential.tokenFile".into()),
                        message: format!("{} {problem}: workload {} of cluster {cluster} cannot get certificates", file.display(), we.name),
                    });
                }
            }
        }
        findings.extend(kubeconfig_findings(dir, mesh));
    }
    Ok(findings)
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
