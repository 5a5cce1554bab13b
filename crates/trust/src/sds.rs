//! Envoy SDS (`envoy.service.secret.v3.SecretDiscoveryService`) over a Unix socket, as
//! istio-agent does: secret `default` is the workload's certificate chain and key (inline),
//! secret `ROOTCA` a validation context with the trust bundle. A new certificate from the agent
//! is pushed on every open stream as a new version.
//!
//! Per stream the server follows the state-of-the-world protocol: it answers the first request
//! and any change of requested names, treats a request carrying the latest nonce as an ACK (or a
//! NACK when it has `error_detail`; the rejected version is not re-sent), and ignores requests
//! carrying a stale nonce.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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
use envoy_types::pb::google::protobuf::Any;
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::agent::Certified;

/// Secret with the workload certificate and key.
pub const SECRET_CERT: &str = "default";
/// Secret with the trust bundle.
pub const SECRET_ROOT: &str = "ROOTCA";
/// Type URL of SDS resources.
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Largest request message accepted (bytes): a longer one is refused with `OUT_OF_RANGE` as
/// soon as its length prefix is read, before it is buffered. The value is tonic's default, made
/// explicit: an Envoy's first request carries its node, which lists every extension the build
/// has (about 60 KiB with Envoy 1.40), so a limit near 64 KiB would refuse a real proxy.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

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
    /// Something that is not a socket sits at the socket path; it is left alone.
    #[error("SDS socket {0}: the path exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
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

fn pack(secret: &Secret) -> Any {
    Any {
        type_url: SECRET_TYPE.to_owned(),
        value: secret.encode_to_vec(),
    }
}

fn response(names: &BTreeSet<String>, cert: &Certified, nonce: String) -> DiscoveryResponse {
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| n.as_str() != SECRET_CERT && n.as_str() != SECRET_ROOT)
        .collect();
    if !unknown.is_empty() {
        tracing::debug!(
            ?unknown,
            "SDS request names secrets this agent does not have"
        );
    }
    DiscoveryResponse {
        version_info: cert.generation.to_string(),
        resources: names
            .iter()
            .filter_map(|n| secret_for(n, cert))
            .map(|s| pack(&s))
            .collect(),
        type_url: SECRET_TYPE.to_owned(),
        nonce,
        ..Default::default()
    }
}

/// The protocol state of one StreamSecrets stream, kept apart from I/O so it can be tested.
#[derive(Debug, Default)]
struct StreamState {
    /// Secret names the proxy asked for last.
    names: BTreeSet<String>,
    /// Whether any request arrived.
    started: bool,
    /// Nonce counter; the last nonce sent is `nonce.to_string()`.
    nonce: u64,
    /// Generation last sent.
    sent: Option<u64>,
    /// Generation last acknowledged.
    acked: Option<u64>,
    /// Generation last rejected by the proxy.
    nacked: Option<u64>,
}

impl StreamState {
    /// Handles a request; returns whether a response with the current generation must be sent.
    fn on_request(&mut self, req: &DiscoveryRequest, current: Option<u64>) -> bool {
        if !req.type_url.is_empty() && req.type_url != SECRET_TYPE {
            tracing::warn!(type_url = %req.type_url, "SDS request for another resource type ignored");
            return false;
        }
        if !req.response_nonce.is_empty() && req.response_nonce != self.nonce.to_string() {
            tracing::debug!(nonce = %req.response_nonce, "stale SDS request ignored");
            return false;
        }
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let first = !self.started;
        self.started = true;
        let names_changed = names != self.names;
        self.names = names;
        if let Some(err) = &req.error_detail {
            self.nacked = self.sent;
            tracing::warn!(version = ?self.sent, code = err.code, error = %err.message, "proxy rejected the secrets (NACK)");
        } else if !req.response_nonce.is_empty() {
            self.acked = req.version_info.parse().ok();
            tracing::debug!(version = %req.version_info, "proxy accepted the secrets (ACK)");
        }
        let Some(current) = current else {
            return false;
        };
        if first || names_changed {
            return !self.names.is_empty();
        }
        // The proxy runs an older version than we have (e.g. it NACKed an earlier one and a new
        // certificate arrived meanwhile): send the new one, never the rejected one again.
        self.sent != Some(current) && self.nacked != Some(current) && !self.names.is_empty()
    }

    /// Handles a new certificate; returns whether it must be pushed.
    fn on_update(&self, current: u64) -> bool {
        self.started && !self.names.is_empty() && self.sent != Some(current)
    }

    /// Records a response about to be sent; returns its nonce.
    fn sending(&mut self, generation: u64) -> String {
        self.nonce += 1;
        self.sent = Some(generation);
        self.nonce.to_string()
    }
}

/// The SDS service over the agent's certificates.
#[derive(Clone)]
pub struct SdsServer {
    certs: watch::Receiver<Option<Arc<Certified>>>,
    socket_mode: u32,
}

impl std::fmt::Debug for SdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdsServer")
            .field("socket_mode", &format_args!("{:o}", self.socket_mode))
            .finish_non_exhaustive()
    }
}

impl SdsServer {
    /// A server following `certs` (from [`crate::agent::Agent::certificates`]). The socket is
    /// created with mode 0600: only the agent's user (and root) can fetch the key.
    pub fn new(certs: watch::Receiver<Option<Arc<Certified>>>) -> Self {
        Self {
            certs,
            socket_mode: 0o600,
        }
    }

    /// Another socket mode, e.g. 0660 when the proxy runs as another user of the same group.
    pub fn with_socket_mode(mut self, mode: u32) -> Self {
        self.socket_mode = mode;
        self
    }

    /// Serves on a Unix socket at `path` (replacing a stale socket, never another file) until
    /// `shutdown`; removes the socket afterwards.
    pub async fn serve(
        self,
        path: &Path,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), SdsError> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let socket_err = |source| SdsError::Socket {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(socket_err)?,
            Ok(_) => return Err(SdsError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(socket_err(e)),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(socket_err)?;
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(socket_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.socket_mode))
            .map_err(socket_err)?;
        tracing::info!(socket = %path.display(), "SDS server listening");
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(
                SecretDiscoveryServiceServer::new(self)
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                shutdown,
            )
            .await;
        let _ = std::fs::remove_file(path);
        result.map_err(SdsError::from)
    }
}

type SecretStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaSecretStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

/// Drives one StreamSecrets stream until the proxy or the agent goes away.
async fn drive_stream(
    mut inbound: Streaming<DiscoveryRequest>,
    mut certs: watch::Receiver<Option<Arc<Certified>>>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut state = StreamState::default();
    loop {
        let to_send = tokio::select! {
            req = inbound.next() => {
                let req = match req {
                    Some(Ok(req)) => req,
                    Some(Err(status)) => {
                        tracing::debug!(%status, "SDS stream ended with an error");
                        // Tell the client why (undecodable, too large), if it still listens.
                        let _ = tx.try_send(Err(status));
                        return;
                    }
                    None => return,
                };
                let current = certs.borrow_and_update().clone();
                if state.on_request(&req, current.as_ref().map(|c| c.generation)) {
                    current
                } else {
                    None
                }
            }
            changed = certs.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = certs.borrow_and_update().clone();
                match current {
                    Some(c) if state.on_update(c.generation) => {
                        tracing::info!(generation = c.generation, "pushing the rotated certificate over SDS");
                        Some(c)
                    }
                    _ => None,
                }
            }
        };
        if let Some(cert) = to_send {
            let nonce = state.sending(cert.generation);
            if tx
                .send(Ok(response(&state.names, &cert, nonce)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsServer {
    type DeltaSecretsStream = DeltaSecretStream;
    type StreamSecretsStream = SecretStream;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "incremental SDS is not served; use StreamSecrets",
        ))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(drive_stream(request.into_inner(), self.certs.clone(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let names: BTreeSet<String> = request.into_inner().resource_names.into_iter().collect();
        let current = self.certs.borrow().clone();
        match current {
            Some(cert) => Ok(Response::new(response(&names, &cert, String::new()))),
            None => Err(Status::unavailable(
                "the agent has no certificate yet (the CA has not answered)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    fn req(names: &[&str], version: &str, nonce: &str, nack: bool) -> DiscoveryRequest {
        DiscoveryRequest {
            resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
            type_url: SECRET_TYPE.into(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            error_detail: nack.then(|| RpcStatus {
                code: 3,
                message: "bad cert".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ack_nack_and_stale_nonces() {
        let mut s = StreamState::default();
        // Nothing to send before the agent has a certificate; sent once it has.
        assert!(!s.on_request(&req(&["default"], "", "", false), None));
        assert!(s.on_update(1));
        assert_eq!(s.sending(1), "1");
        // ACK: nothing more.
        assert!(!s.on_request(&req(&["default"], "1", "1", false), Some(1)));
        assert_eq!(s.acked, Some(1));
        // Rotation pushed.
        assert!(s.on_update(2));
        assert_eq!(s.sending(2), "2");
        // A late request answering nonce 1 is stale: ignored, even with other names.
        assert!(!s.on_request(&req(&["default", "ROOTCA"], "1", "1", false), Some(2)));
        // NACK of version 2: not re-sent.
        assert!(!s.on_request(&req(&["default"], "1", "2", true), Some(2)));
        assert_eq!(s.nacked, Some(2));
        assert!(!s.on_update(2));
        // A new certificate after a NACK is sent.
        assert!(s.on_update(3));
        assert_eq!(s.sending(3), "3");
        // New names on the latest nonce: answered at once.
        assert!(s.on_request(&req(&["default", "ROOTCA"], "3", "3", false), Some(3)));
        // Other resource types are ignored.
        let mut other = req(&["x"], "", "", false);
        other.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
        assert!(!s.on_request(&other, Some(3)));
    }

    #[test]
    fn secrets_carry_chain_key_and_bundle() {
        let cert = Certified {
            chain_pem: "CHAIN".into(),
            key_pem: "KEY".into(),
            bundle_pem: "ROOTS".into(),
            not_before: 0,
            not_after: 1,
            generation: 7,
        };
        let names: BTreeSet<String> = ["default", "ROOTCA", "other"]
            .into_iter()
            .map(String::from)
            .collect();
        let r = response(&names, &cert, "5".into());
        assert_eq!(r.version_info, "7");
        assert_eq!(r.nonce, "5");
        assert_eq!(r.resources.len(), 2, "unknown names are skipped");
        let secrets: Vec<Secret> = r
            .resources
            .iter()
            .map(|a| Secret::decode(a.value.as_slice()).expect("secret"))
            .collect();
        match &secrets[1].r#type {
            Some(secret::Type::TlsCertificate(t)) => {
                assert_eq!(t.certificate_chain, inline("CHAIN"));
                assert_eq!(t.private_key, inline("KEY"));
            }
            other => panic!("{other:?}"),
        }
        match &secrets[0].r#type {
            Some(secret::Type::ValidationContext(v)) => {
                assert_eq!(v.trusted_ca, inline("ROOTS"));
            }
            other => panic!("{other:?}"),
        }
    }
}
