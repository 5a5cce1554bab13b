//! Envoy SDS (`envoy.service.secret.v3`) over a Unix socket: the workload certificate as secret
//! `default` and the trust bundle as `ROOTCA`, pushed again whenever the agent rotates.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::util::pack_any;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::agent::Certified;

/// Secret with the workload certificate and key.
pub const SECRET_CERT: &str = "default";
/// Secret with the trust bundle.
pub const SECRET_ROOT: &str = "ROOTCA";
const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Why the SDS server failed.
#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    /// The socket could not be created.
    #[error("SDS socket {path}: {source}")]
    Socket {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("SDS server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    })
}

fn secret_for(name: &str, cert: &Certified) -> Option<Secret> {
    let kind = match name {
        SECRET_CERT => secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&cert.chain_pem),
            private_key: inline(&cert.key_pem),
            ..Default::default()
        }),
        SECRET_ROOT => secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(&cert.bundle_pem),
            ..Default::default()
        }),
        _ => return None,
    };
    Some(Secret {
        name: name.to_owned(),
        r#type: Some(kind),
    })
}

fn response(names: &BTreeSet<String>, cert: &Certified, nonce: u64) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: cert.generation.to_string(),
        resources: names
            .iter()
            .filter_map(|n| secret_for(n, cert))
            .map(pack_any)
            .collect(),
        type_url: SECRET_TYPE.to_owned(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

/// The SDS service over the agent's certificates.
#[derive(Clone)]
pub struct SdsServer {
    certs: watch::Receiver<Option<Arc<Certified>>>,
}

impl SdsServer {
    /// A server following `certs`.
    pub fn new(certs: watch::Receiver<Option<Arc<Certified>>>) -> Self {
        Self { certs }
    }

    /// Serves on a Unix socket at `path` (replacing a stale one) until `shutdown`.
    pub async fn serve(
        self,
        path: &Path,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), SdsError> {
        let _ = std::fs::remove_file(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| SdsError::Socket {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(|source| SdsError::Socket {
            path: path.to_path_buf(),
            source,
        })?;
        tonic::transport::Server::builder()
            .add_service(SecretDiscoveryServiceServer::new(self))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                shutdown,
            )
            .await?;
        Ok(())
    }
}

type SecretStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaSecretStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsServer {
    type DeltaSecretsStream = DeltaSecretStream;
    type StreamSecretsStream = SecretStream;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented("use state-of-the-world SDS"))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let mut inbound = request.into_inner();
        let mut certs = self.certs.clone();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut names: BTreeSet<String> = BTreeSet::new();
            let mut nonce = 0u64;
            let mut sent_generation = 0u64;
            loop {
                tokio::select! {
                    req = inbound.next() => {
                        let Some(Ok(req)) = req else { break };
                        if let Some(err) = &req.error_detail {
                            tracing::warn!(error = %err.message, "proxy rejected a secret");
                        }
                        let requested: BTreeSet<String> = req.resource_names.iter().cloned().collect();
                        let new_names = requested != names;
                        names = requested;
                        let current = certs.borrow_and_update().clone();
                        if let Some(cert) = current {
                            if new_names || cert.generation != sent_generation {
                                nonce += 1;
                                sent_generation = cert.generation;
                                if tx.send(Ok(response(&names, &cert, nonce))).await.is_err() { break; }
                            }
                        }
                    }
                    changed = certs.changed() => {
                        if changed.is_err() { break; }
                        let current = certs.borrow_and_update().clone();
                        if let Some(cert) = current {
                            if !names.is_empty() && cert.generation != sent_generation {
                                nonce += 1;
                                sent_generation = cert.generation;
                                tracing::info!(generation = cert.generation, "pushing rotated certificate over SDS");
                                if tx.send(Ok(response(&names, &cert, nonce))).await.is_err() { break; }
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let names: BTreeSet<String> = request.into_inner().resource_names.into_iter().collect();
        let current = self.certs.borrow().clone();
        match current {
            Some(cert) => Ok(Response::new(response(&names, &cert, 0))),
            None => Err(Status::unavailable("no certificate yet")),
        }
    }
}
