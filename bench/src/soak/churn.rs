//! Mesh-directory churn: every tick rewrites `clusters/gamma/soak.yaml`, an exported service
//! `demo/soak` whose endpoints, labels and existence change, so that every tick is a real
//! change pushed to the sidecars (listeners, clusters, endpoints) and to the gateways (filter
//! chains), next to the service under load.

use std::path::{Path, PathBuf};

/// The file the churn owns inside the mesh directory.
pub fn churn_file(mesh_dir: &Path) -> PathBuf {
    mesh_dir.join("clusters/gamma/soak.yaml")
}

/// The documents of tick `step`: every fourth tick the service is gone; otherwise it has one
/// to three endpoints labelled with the tick.
pub fn documents(step: u64) -> String {
    let mut out = format!("# bench/soak churn, tick {step}\n");
    let endpoints = step % 4;
    if endpoints == 3 {
        return out;
    }
    out.push_str(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: soak\n  namespace: demo\nspec:\n  \
         selector:\n    app: soak\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n    \
         appProtocol: http\n---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\n\
         metadata:\n  name: soak\n  namespace: demo\n",
    );
    for i in 0..=endpoints {
        out.push_str(&format!(
            "---\napiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  name: soak-{i}\n  \
             namespace: demo\nspec:\n  address: 127.3.0.{}\n  labels:\n    app: soak\n    \
             tick: \"{step}\"\n  serviceAccount: soak\n  ports:\n    http: 8080\n",
            60 + i
        ));
    }
    out
}

/// Writes tick `step` atomically (a temporary file renamed over the old one), so the watcher
/// never reads half a file.
pub fn write(mesh_dir: &Path, step: u64) -> std::io::Result<()> {
    let target = churn_file(mesh_dir);
    let tmp = target.with_extension("yaml.tmp");
    std::fs::write(&tmp, documents(step))?;
    std::fs::rename(&tmp, &target)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_cycle_through_one_two_three_endpoints_and_none() {
        let count = |s: &str| s.matches("kind: WorkloadEntry").count();
        assert_eq!(count(&documents(0)), 1);
        assert_eq!(count(&documents(1)), 2);
        assert_eq!(count(&documents(2)), 3);
        assert_eq!(count(&documents(3)), 0);
        assert!(!documents(3).contains("kind: Service"));
        assert_ne!(documents(0), documents(4), "labels carry the tick");
    }
}
