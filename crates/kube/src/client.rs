//! Clients for member clusters: one injectable factory turns a cluster's kubeconfig into a
//! kube-rs client (Istio's secret-controller pattern), so tests and embedders can supply their
//! own while the control plane reads kubeconfig files.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use causeway_model::ClusterId;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::KubeError;

/// A kubeconfig as read from disk, with the context to use.
#[derive(Clone, PartialEq, Eq)]
pub struct KubeconfigFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Context (the file's current context when `None`).
    pub context: Option<String>,
    /// The file's contents: credentials, never logged.
    pub contents: String,
    /// The files it names (CA, client certificate and key, token file) with their contents
    /// (`None`: unreadable), so their rotation counts as a change too.
    pub referenced: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl std::fmt::Debug for KubeconfigFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeconfigFile")
            .field("path", &self.path)
            .field("context", &self.context)
            .field("contents", &"[elided]")
            .field(
                "referenced",
                &self.referenced.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KubeconfigFile {
    /// Reads `path`.
    pub fn read(
        cluster: &ClusterId,
        path: &Path,
        context: Option<String>,
    ) -> Result<Self, KubeError> {
        let contents =
            std::fs::read_to_string(path).map_err(|source| KubeError::ReadKubeconfig {
                cluster: cluster.clone(),
                path: path.to_path_buf(),
                source,
            })?;
        let referenced = referenced_files(path, &contents)
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).ok();
                (p, bytes)
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            context,
            contents,
            referenced,
        })
    }
}

/// A kubeconfig parse error without the file's content: YAML errors may quote the offending
/// value, which can be a token or a key.
fn parse_error(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => format!("not valid kubeconfig YAML ({})", &text[i + 1..]),
        None => "not valid kubeconfig YAML".to_owned(),
    }
}

/// The files a kubeconfig names, resolved against its own directory (as kubectl does).
fn referenced_files(path: &Path, contents: &str) -> Vec<PathBuf> {
    let Ok(parsed) = Kubeconfig::from_yaml(contents) else {
        return Vec::new();
    };
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let mut files: Vec<String> = Vec::new();
    for c in parsed.clusters.iter().filter_map(|c| c.cluster.as_ref()) {
        files.extend(c.certificate_authority.clone());
    }
    for u in parsed
        .auth_infos
        .iter()
        .filter_map(|a| a.auth_info.as_ref())
    {
        files.extend(u.client_certificate.clone());
        files.extend(u.client_key.clone());
        files.extend(u.token_file.clone());
    }
    files.sort();
    files.dedup();
    files.into_iter().map(|f| base.join(f)).collect()
}

/// Checks, without contacting it, that a kubeconfig names an API server for its context
/// (`causeway check`).
pub fn validate(cluster: &ClusterId, kubeconfig: &KubeconfigFile) -> Result<(), KubeError> {
    let invalid = |reason: String| KubeError::InvalidKubeconfig {
        cluster: cluster.clone(),
        path: kubeconfig.path.clone(),
        reason,
    };
    let parsed =
        Kubeconfig::from_yaml(&kubeconfig.contents).map_err(|e| invalid(parse_error(&e)))?;
    let context_name = kubeconfig
        .context
        .clone()
        .or_else(|| parsed.current_context.clone())
        .ok_or_else(|| invalid("no context given and no current-context set".into()))?;
    let context = parsed
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| invalid(format!("has no context {context_name:?}")))?;
    let server = parsed
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone());
    if server.is_none() {
        return Err(invalid(format!(
            "context {context_name:?} names cluster {:?}, which has no server address",
            context.cluster
        )));
    }
    Ok(())
}

/// The future a [`ClientFactory`] returns.
pub type ClientFuture<'a> =
    Pin<Box<dyn Future<Output = Result<kube::Client, KubeError>> + Send + 'a>>;

/// Makes the client for one cluster from its kubeconfig.
pub trait ClientFactory: Send + Sync {
    /// A client for `cluster`; called again whenever its kubeconfig changes.
    fn client<'a>(
        &'a self,
        cluster: &'a ClusterId,
        kubeconfig: &'a KubeconfigFile,
    ) -> ClientFuture<'a>;
}

/// The default factory: kube-rs's own kubeconfig handling (TLS with rustls on aws-lc-rs,
/// bearer tokens, client certificates, exec plugins), with bounded connect and write times.
#[derive(Debug, Clone)]
pub struct KubeconfigClientFactory {
    /// Time allowed to open a connection to the API server.
    pub connect_timeout: Duration,
    /// Longest silence on a connection before the request fails.
    pub read_timeout: Duration,
}

impl Default for KubeconfigClientFactory {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(320),
        }
    }
}

/// A kube-rs client configuration from a kubeconfig file.
pub async fn client_config(
    cluster: &ClusterId,
    kubeconfig: &KubeconfigFile,
) -> Result<kube::Config, KubeError> {
    let invalid = |reason: String| KubeError::InvalidKubeconfig {
        cluster: cluster.clone(),
        path: kubeconfig.path.clone(),
        reason,
    };
    let parsed =
        Kubeconfig::from_yaml(&kubeconfig.contents).map_err(|e| invalid(parse_error(&e)))?;
    let options = KubeConfigOptions {
        context: kubeconfig.context.clone(),
        ..KubeConfigOptions::default()
    };
    kube::Config::from_custom_kubeconfig(parsed, &options)
        .await
        .map_err(|e| invalid(e.to_string()))
}

impl ClientFactory for KubeconfigClientFactory {
    fn client<'a>(
        &'a self,
        cluster: &'a ClusterId,
        kubeconfig: &'a KubeconfigFile,
    ) -> ClientFuture<'a> {
        Box::pin(async move {
            let mut config = client_config(cluster, kubeconfig).await?;
            config.connect_timeout = Some(self.connect_timeout);
            config.write_timeout = Some(Duration::from_secs(30));
            // No request may hang forever (kube leaves reads unbounded): a LIST that stalls
            // fails and is retried. Longer than a watch's server-side timeout (290 s), which
            // ends watches before this can.
            config.read_timeout = Some(self.read_timeout);
            kube::Client::try_from(config).map_err(|e| KubeError::InvalidKubeconfig {
                cluster: cluster.clone(),
                path: kubeconfig.path.clone(),
                reason: e.to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_never_quote_the_file() {
        let secret = "s3cr3t-token-value";
        let file = KubeconfigFile {
            path: "/k".into(),
            context: None,
            contents: format!(
                "apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user: {secret}\n"
            ),
            referenced: Vec::new(),
        };
        let cluster = ClusterId::new("east").expect("id");
        let e = validate(&cluster, &file).expect_err("not a kubeconfig");
        let text = e.to_string();
        assert!(!text.contains(secret), "{text}");
        assert!(
            text.contains("cluster east") && text.contains("/k"),
            "{text}"
        );
    }
}
