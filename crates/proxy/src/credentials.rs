//! Where the mesh certificates come from: the agent's SDS secrets (`default`, `ROOTCA`) for a
//! proxy under a control plane, PEM files for a static bootstrap. Read when a TLS configuration
//! is built (once per snapshot and rotation), never on the request path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use causeway_xds::client::sds::Credentials;
use causeway_xds::dataplane::tls::{CertificateSource, TrustedCaSource};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

/// The chain, key and roots files of one TLS context.
type FileSet = (PathBuf, PathBuf, PathBuf);

#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialsError {
    #[error("the agent has not delivered the workload certificate (SDS `default`, `ROOTCA`) yet")]
    NotYet,
    #[error("this proxy has no SDS connection, but the configuration names SDS secret {0}")]
    NoSds(String),
    #[error("reading {path}: {error}")]
    File { path: PathBuf, error: String },
}

/// The certificate sources of one proxy; cheap to clone into every worker.
#[derive(Clone)]
pub struct MeshCredentials {
    sds: Option<watch::Receiver<Option<Arc<Credentials>>>>,
    /// File-based credentials by (chain, key, roots) paths, read once.
    files: Arc<Mutex<HashMap<FileSet, Arc<Credentials>>>>,
}

impl MeshCredentials {
    /// Certificates from the agent over SDS.
    pub fn sds(rx: watch::Receiver<Option<Arc<Credentials>>>) -> Self {
        MeshCredentials {
            sds: Some(rx),
            files: Arc::default(),
        }
    }

    /// No agent: only file sources (static bootstraps) or no TLS at all (a plain gateway).
    pub fn files_only() -> Self {
        MeshCredentials {
            sds: None,
            files: Arc::default(),
        }
    }

    /// The credentials a TLS context names: the agent's current ones, or those files.
    pub fn resolve(
        &self,
        certificate: &CertificateSource,
        roots: &TrustedCaSource,
    ) -> Result<Arc<Credentials>, CredentialsError> {
        match (certificate, roots) {
            (
                CertificateSource::Files {
                    chain_path,
                    key_path,
                },
                TrustedCaSource::File { path },
            ) => self.read_files(chain_path, key_path, path),
            (CertificateSource::Sds { name }, _) | (_, TrustedCaSource::Sds { name }) => {
                let Some(sds) = &self.sds else {
                    return Err(CredentialsError::NoSds(name.clone()));
                };
                sds.borrow().clone().ok_or(CredentialsError::NotYet)
            }
        }
    }

    /// The SDS version of the current credentials (part of TLS cache keys), `files` otherwise.
    pub fn version(&self) -> String {
        match &self.sds {
            Some(rx) => rx
                .borrow()
                .as_ref()
                .map(|c| c.version.clone())
                .unwrap_or_default(),
            None => "files".to_owned(),
        }
    }

    fn read_files(
        &self,
        chain: &Path,
        key: &Path,
        roots: &Path,
    ) -> Result<Arc<Credentials>, CredentialsError> {
        let id = (chain.to_owned(), key.to_owned(), roots.to_owned());
        if let Some(c) = self.cached(&id) {
            return Ok(c);
        }
        let err = |path: &Path, error: String| CredentialsError::File {
            path: path.to_owned(),
            error,
        };
        let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
            let list = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(path, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(path, e.to_string()))?;
            if list.is_empty() {
                return Err(err(path, "no PEM certificate in it".into()));
            }
            Ok(list)
        };
        let credentials = Arc::new(Credentials {
            chain: certs(chain)?,
            key: PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, e.to_string()))?,
            roots: certs(roots)?,
            version: "files".to_owned(),
        });
        if let Ok(mut files) = self.files.lock() {
            files.insert(id, Arc::clone(&credentials));
        }
        Ok(credentials)
    }

    fn cached(&self, id: &FileSet) -> Option<Arc<Credentials>> {
        self.files.lock().ok()?.get(id).cloned()
    }
}
