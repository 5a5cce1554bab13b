//! Errors of the Kubernetes registry, written for operators: each names the cluster and what
//! was being done.

use std::path::PathBuf;

use causeway_model::ClusterId;

/// Why a member cluster could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig file could not be read.
    #[error("cluster {cluster}: cannot read kubeconfig {path}: {source}")]
    ReadKubeconfig {
        /// The cluster.
        cluster: ClusterId,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kubeconfig does not describe a usable API server and credentials.
    #[error("cluster {cluster}: kubeconfig {path} is not usable: {reason}")]
    InvalidKubeconfig {
        /// The cluster.
        cluster: ClusterId,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A request to the API server failed.
    #[error("cluster {cluster}: {action}: {source}")]
    Api {
        /// The cluster.
        cluster: ClusterId,
        /// What was being done (`listing API groups`, `applying ServiceImport ns/name`...).
        action: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// A request to the API server did not answer in time.
    #[error("cluster {cluster}: {action}: no answer from the API server within {seconds} s")]
    Timeout {
        /// The cluster.
        cluster: ClusterId,
        /// What was being done.
        action: String,
        /// The limit.
        seconds: u64,
    },
    /// The cluster's About API names another cluster.
    #[error("cluster {cluster}: its ClusterProperty cluster.clusterset.k8s.io is {found:?}, not {:?}; none of its data is used until mesh.yaml or the property is corrected", .cluster.as_str())]
    ClusterIdMismatch {
        /// The id in mesh.yaml.
        cluster: ClusterId,
        /// The id the cluster declares.
        found: String,
    },
}

impl KubeError {
    /// An API error with what was being done.
    pub fn api(cluster: &ClusterId, action: impl Into<String>, source: kube::Error) -> Self {
        Self::Api {
            cluster: cluster.clone(),
            action: action.into(),
            source,
        }
    }
}

/// Runs `request` with a time limit, naming the action when it runs out.
pub(crate) async fn bounded<T>(
    cluster: &ClusterId,
    action: &str,
    limit: std::time::Duration,
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, KubeError> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(KubeError::api(cluster, action, e)),
        Err(_) => Err(KubeError::Timeout {
            cluster: cluster.clone(),
            action: action.to_owned(),
            seconds: limit.as_secs(),
        }),
    }
}
