//! The control plane's mesh CA: intermediates per cluster from the CA directory, and the
//! bootstrap credentials of the mesh directory's workloads, kept current as the mesh changes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use causeway_kube::{ReviewError, TokenReviewer};
use causeway_model::ClusterId;
use causeway_trust::ca::{self, ClusterCa};
use causeway_trust::credential::{
    AuthError, AuthFuture, Authenticator, Grant, RoutedAuthenticator, TokenAuthenticator,
};
use causeway_trust::service::CaService;

use super::metrics::Metrics;
use super::state::StateHandle;

/// Why the CA could not start.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// mesh.yaml never loaded, so the trust domain is unknown.
    #[error("mesh.yaml has not loaded; the CA needs its trust domain")]
    NoMesh,
    /// CA files.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
}

/// The running CA.
pub struct MeshCa {
    /// The service.
    pub service: Arc<CaService>,
}

impl MeshCa {
    /// Adds the CA's metrics to the control plane's registry.
    pub fn register_metrics_into(&self, metrics: &Metrics) {
        metrics.register(|r| self.service.register_metrics(r));
    }
}

/// Loads every cluster intermediate present; creates missing ones when the root key is here
/// (or nothing is: first start). With the root kept offline, clusters without an intermediate
/// get none and are reported.
fn load_cas(
    dir: &Path,
    trust_domain: &str,
    clusters: &[ClusterId],
) -> Result<Vec<ClusterCa>, TrustError> {
    let root_key = ca::root_dir(dir).join(ca::files::ROOT_KEY);
    let any_cluster = clusters
        .iter()
        .any(|c| ca::find_cluster_dir(dir, c).is_some());
    if root_key.exists() || !any_cluster {
        ca::ensure_ca_dir(dir, trust_domain, clusters)?;
    }
    let mut cas = Vec::new();
    for c in clusters {
        match ca::find_cluster_dir(dir, c) {
            Some(cdir) => cas.push(ClusterCa::load(&cdir, c.clone(), trust_domain)?),
            None => {
                tracing::error!(cluster = %c, dir = %ca::cluster_dir(dir, c).display(), "no intermediate CA for this cluster and the root is offline: run `causeway ca issue-intermediate --ca-dir`")
            }
        }
    }
    Ok(cas)
}

/// Credentials of every WorkloadEntry, and every cluster's gateway identity, that names a token
/// file.
fn authenticator(mesh_dir: &Path, index: &causeway_discovery::MeshIndex) -> TokenAuthenticator {
    let mut auth = TokenAuthenticator::new();
    for (cluster, ci) in index.clusters() {
        for ((namespace, name), placement) in &ci.workloads {
            let Some(file) = &placement.credential_file else {
                continue;
            };
            match crate::check::read_credential_file(mesh_dir, file) {
                Ok(token) => auth.add(
                    &token,
                    Grant {
                        cluster: cluster.clone(),
                        namespace: namespace.clone(),
                        service_account: placement.service_account.clone(),
                        workload: name.clone(),
                    },
                ),
                Err(e) => {
                    tracing::error!(cluster = %cluster, workload = %format!("{namespace}/{name}"), field = "spec.credential.tokenFile", error = %e, "credential file refused; the workload cannot get certificates")
                }
            }
        }
    }
    for spec in &index.mesh().clusters {
        let Some(gi) = &spec.gateway_identity else {
            continue;
        };
        let Some(file) = &gi.credential_file else {
            continue;
        };
        match crate::check::read_credential_file(mesh_dir, file) {
            Ok(token) => auth.add(
                &token,
                Grant {
                    cluster: spec.id.clone(),
                    namespace: gi.namespace.clone(),
                    service_account: gi.service_account.clone(),
                    workload: format!("gateways of cluster {}", spec.id),
                },
            ),
            Err(e) => {
                tracing::error!(cluster = %spec.id, field = "spec.gatewayIdentity.credential.tokenFile", error = %e, "gateway credential file refused; the cluster's gateways cannot get certificates")
            }
        }
    }
    auth
}

/// Everything the authenticator is built from: who has a credential file, which file, and
/// when it last changed. Snapshots that leave this alone (an EndpointSlice scaled in a
/// Kubernetes member, say) do not re-read every token file.
#[derive(PartialEq)]
struct CredentialInputs {
    /// (who, service account, file, modified) of every file credential.
    files: Vec<(
        String,
        String,
        std::path::PathBuf,
        Option<std::time::SystemTime>,
    )>,
    /// Members whose tokens go to TokenReview.
    kubernetes: Vec<ClusterId>,
}

fn credential_inputs(mesh_dir: &Path, index: &causeway_discovery::MeshIndex) -> CredentialInputs {
    let modified = |file: &Path| {
        std::fs::metadata(mesh_dir.join(file))
            .and_then(|m| m.modified())
            .ok()
    };
    let mut inputs = Vec::new();
    for (cluster, ci) in index.clusters() {
        for ((namespace, name), placement) in &ci.workloads {
            if let Some(file) = &placement.credential_file {
                let who = format!("{cluster} {namespace}/{name}");
                inputs.push((
                    who,
                    placement.service_account.clone(),
                    file.clone(),
                    modified(file),
                ));
            }
        }
    }
    for spec in &index.mesh().clusters {
        if let Some((gi, file)) = spec
            .gateway_identity
            .as_ref()
            .and_then(|gi| Some((gi, gi.credential_file.as_ref()?)))
        {
            let who = format!("{} gateways {}", spec.id, gi.namespace);
            inputs.push((
                who,
                gi.service_account.clone(),
                file.clone(),
                modified(file),
            ));
        }
    }
    CredentialInputs {
        files: inputs,
        kubernetes: index
            .mesh()
            .clusters
            .iter()
            .filter(|c| c.kubernetes.is_some())
            .map(|c| c.id.clone())
            .collect(),
    }
}

/// Projected ServiceAccount tokens of one Kubernetes member, checked with TokenReview against
/// that member's API server only, and bound to a pod that runs in that cluster with that
/// service account (so a token the API server accepts for other reasons grants nothing).
struct KubernetesTokens {
    cluster: ClusterId,
    reviewer: TokenReviewer,
    state: StateHandle,
}

impl KubernetesTokens {
    /// Whether the cluster's current state has pod `pod` of `namespace` running as
    /// `service_account`.
    fn pod_runs_as(&self, namespace: &str, pod: &str, service_account: &str) -> bool {
        let snapshot = self.state.borrow().clone();
        snapshot
            .index
            .as_ref()
            .and_then(|i| i.cluster(&self.cluster).cloned())
            .and_then(|c| {
                c.workloads
                    .get(&(namespace.to_owned(), pod.to_owned()))
                    .map(|w| w.service_account == service_account)
            })
            .unwrap_or(false)
    }
}

impl Authenticator for KubernetesTokens {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        _claimed_cluster: Option<&'a ClusterId>,
    ) -> AuthFuture<'a> {
        Box::pin(async move {
            let refuse = |reason: String| {
                tracing::warn!(cluster = %self.cluster, %reason, "ServiceAccount token refused");
                AuthError::Unknown
            };
            let reviewed = match self.reviewer.review(&self.cluster, token).await {
                Ok(reviewed) => reviewed,
                Err(e @ (ReviewError::Unavailable { .. } | ReviewError::NotConnected(_))) => {
                    tracing::warn!(cluster = %self.cluster, error = %e, "cannot review a ServiceAccount token");
                    return Err(AuthError::Unavailable(format!(
                        "cluster {}: its API server cannot review tokens now",
                        self.cluster
                    )));
                }
                Err(e) => return Err(refuse(format!("by TokenReview: {e}"))),
            };
            let Some(pod) = reviewed.pod.clone() else {
                return Err(refuse(format!(
                    "not bound to a pod (system:serviceaccount:{}:{}); use a projected token",
                    reviewed.namespace, reviewed.service_account
                )));
            };
            if !self.pod_runs_as(&reviewed.namespace, &pod, &reviewed.service_account) {
                return Err(refuse(format!(
                    "pod {}/{pod} with service account {} is not running in cluster {}",
                    reviewed.namespace, reviewed.service_account, self.cluster
                )));
            }
            Ok(Grant {
                cluster: reviewed.cluster,
                namespace: reviewed.namespace,
                service_account: reviewed.service_account,
                workload: pod,
            })
        })
    }
}

/// File tokens for mesh-directory workloads; TokenReview for each Kubernetes member's.
fn routed(
    mesh_dir: &Path,
    index: &causeway_discovery::MeshIndex,
    reviewer: &TokenReviewer,
    state: &StateHandle,
) -> RoutedAuthenticator {
    let mut router = RoutedAuthenticator::new(Arc::new(authenticator(mesh_dir, index)));
    for spec in &index.mesh().clusters {
        if spec.kubernetes.is_some() {
            router = router.with_cluster(
                spec.id.clone(),
                Arc::new(KubernetesTokens {
                    cluster: spec.id.clone(),
                    reviewer: reviewer.clone(),
                    state: state.clone(),
                }),
            );
        }
    }
    router
}

/// Starts the CA over the first snapshot and keeps its clusters and credentials current.
pub fn start(
    mesh_dir: &Path,
    ca_dir: &Path,
    mut snapshots: StateHandle,
    reviewer: TokenReviewer,
    ttl: Duration,
) -> Result<MeshCa, TrustError> {
    let first = snapshots.borrow_and_update().clone();
    let index = first.index.clone().ok_or(TrustError::NoMesh)?;
    let trust_domain = index.mesh().mesh.trust_domain.clone();
    let clusters: Vec<ClusterId> = index.mesh().clusters.iter().map(|c| c.id.clone()).collect();
    let cas = load_cas(ca_dir, &trust_domain, &clusters)?;
    let auth = routed(mesh_dir, &index, &reviewer, &snapshots);
    tracing::info!(clusters = cas.len(), kubernetes = auth.clusters().count(), dir = %ca_dir.display(), "mesh CA ready");
    let service = Arc::new(CaService::new(&trust_domain, cas, Arc::new(auth), ttl));
    let svc = Arc::clone(&service);
    let mesh_dir = mesh_dir.to_path_buf();
    let ca_dir = ca_dir.to_path_buf();
    tokio::spawn(async move {
        let mut known = clusters;
        let mut inputs = credential_inputs(&mesh_dir, &index);
        while snapshots.changed().await.is_ok() {
            let snap = snapshots.borrow_and_update().clone();
            let Some(index) = snap.index.clone() else {
                continue;
            };
            let now: Vec<ClusterId> = index.mesh().clusters.iter().map(|c| c.id.clone()).collect();
            if now != known {
                match load_cas(&ca_dir, &trust_domain, &now) {
                    Ok(cas) => svc.set_cluster_cas(cas),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot update the cluster intermediates")
                    }
                }
                known = now;
            }
            let now_inputs = credential_inputs(&mesh_dir, &index);
            if now_inputs != inputs {
                svc.set_authenticator(Arc::new(routed(&mesh_dir, &index, &reviewer, &snapshots)));
                inputs = now_inputs;
            }
        }
    });
    Ok(MeshCa { service })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::tests::{mesh_with_escaping_link, Scratch};

    #[test]
    fn a_credential_file_linked_out_of_the_mesh_directory_grants_nothing() {
        let scratch = Scratch::new("authenticator");
        let mesh = mesh_with_escaping_link(&scratch.0);
        let directory = causeway_registry::MeshDirectory::open(&mesh);
        assert!(directory.errors().is_empty(), "{:?}", directory.errors());
        let index = crate::check::index_of(&directory).expect("index");
        let auth = authenticator(&mesh, &index);
        let grant = auth.lookup("inside-token").expect("the file inside counts");
        assert_eq!(grant.workload, "inside");
        assert!(
            auth.lookup("outside-token").is_err(),
            "the token behind the escaping link must not be accepted"
        );
        assert_eq!(auth.len(), 1);
    }
}
