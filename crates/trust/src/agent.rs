//! `causeway agent`: beside a workload's proxy, it generates the workload's key pair, obtains a
//! certificate from the CA with the workload's bootstrap credential, renews it at half its
//! lifetime (new key each time), and hands it to Envoy over SDS. The key never leaves this
//! process except to the local proxy over a Unix socket.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use causeway_model::SpiffeId;
use rcgen::{CertificateParams, KeyPair, SanType};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::service::{request_certificate, ClientError, SignRequest};

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// CA service address.
    pub ca_addr: SocketAddr,
    /// Roots used to verify the CA itself (bootstrap trust).
    pub ca_bundle_pem: String,
    /// Trust domain.
    pub trust_domain: String,
    /// Bootstrap credential.
    pub token: String,
    /// The identity to request.
    pub identity: SpiffeId,
    /// Certificate lifetime to request.
    pub ttl: Duration,
}

/// Why the agent could not obtain a certificate.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Key or CSR generation failed.
    #[error("generating the key pair or CSR: {0}")]
    Key(String),
    /// The CA call failed.
    #[error(transparent)]
    Ca(#[from] ClientError),
}

/// The workload's current certificate and key.
#[derive(Clone, PartialEq, Eq)]
pub struct Certified {
    /// Leaf then intermediate.
    pub chain_pem: String,
    /// The workload's private key (PEM). Only ever handed to the local proxy.
    pub key_pem: String,
    /// Roots to trust.
    pub bundle_pem: String,
    /// Start of validity (Unix seconds).
    pub not_before: i64,
    /// Expiry (Unix seconds).
    pub not_after: i64,
    /// Bumped on every new certificate (SDS version).
    pub generation: u64,
}

impl std::fmt::Debug for Certified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Certified")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The agent's health, for status pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum AgentStatus {
    /// No certificate yet.
    Starting,
    /// Serving a valid certificate.
    Ready {
        /// Expiry.
        not_after: i64,
    },
    /// The CA cannot be reached or refuses; the current certificate (if any) keeps serving.
    CaUnreachable {
        /// Since (Unix seconds).
        since: i64,
        /// The last error.
        error: String,
        /// Expiry of the certificate still served.
        not_after: Option<i64>,
    },
    /// The certificate expired and no new one could be had.
    Expired {
        /// When it expired.
        not_after: i64,
        /// The last error.
        error: String,
    },
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The agent.
pub struct Agent {
    config: AgentConfig,
    current: watch::Sender<Option<Arc<Certified>>>,
    status: Mutex<AgentStatus>,
    rotate: Notify,
}

impl Agent {
    /// A new agent (no certificate until [`Agent::run`] obtains one).
    pub fn new(config: AgentConfig) -> Arc<Self> {
        let (current, _) = watch::channel(None);
        Arc::new(Self {
            config,
            current,
            status: Mutex::new(AgentStatus::Starting),
            rotate: Notify::new(),
        })
    }

    /// The identity it requests.
    pub fn identity(&self) -> &SpiffeId {
        &self.config.identity
    }

    /// Follows the current certificate.
    pub fn certificates(&self) -> watch::Receiver<Option<Arc<Certified>>> {
        self.current.subscribe()
    }

    /// The current certificate, if any.
    pub fn current(&self) -> Option<Arc<Certified>> {
        self.current.borrow().clone()
    }

    /// Health.
    pub fn status(&self) -> AgentStatus {
        match self.status.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_status(&self, s: AgentStatus) {
        match self.status.lock() {
            Ok(mut g) => *g = s,
            Err(p) => *p.into_inner() = s,
        }
    }

    /// Renews now instead of at half-life.
    pub fn force_rotate(&self) {
        self.rotate.notify_one();
    }

    /// One renewal: a new key pair, a CSR for the identity, the CA's signature.
    pub async fn renew(&self) -> Result<Certified, AgentError> {
        let key = KeyPair::generate().map_err(|e| AgentError::Key(e.to_string()))?;
        let mut params = CertificateParams::default();
        let uri = self.config.identity.to_string();
        params.subject_alt_names = vec![SanType::URI(
            uri.try_into()
                .map_err(|e: rcgen::Error| AgentError::Key(e.to_string()))?,
        )];
        let csr = params
            .serialize_request(&key)
            .map_err(|e| AgentError::Key(e.to_string()))?;
        let csr_pem = csr.pem().map_err(|e| AgentError::Key(e.to_string()))?;
        let response = request_certificate(
            self.config.ca_addr,
            &self.config.ca_bundle_pem,
            &self.config.trust_domain,
            &self.config.token,
            &SignRequest {
                csr_pem,
                ttl_seconds: Some(self.config.ttl.as_secs()),
            },
            Duration::from_secs(10),
        )
        .await?;
        let generation = self.current().map_or(1, |c| c.generation + 1);
        Ok(Certified {
            chain_pem: response.cert_chain_pem,
            key_pem: key.serialize_pem(),
            bundle_pem: response.trust_bundle_pem,
            not_before: response.not_before,
            not_after: response.not_after,
            generation,
        })
    }

    /// Obtains and renews certificates forever: at half their lifetime, on
    /// [`Agent::force_rotate`], and with backoff (1 s doubling to 30 s) while the CA fails —
    /// the current certificate keeps serving until it expires.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let span = tracing::info_span!("renew", identity = %self.config.identity);
            let result = {
                let _guard = span.enter();
                self.renew().await
            };
            let wait = match result {
                Ok(cert) => {
                    tracing::info!(identity = %self.config.identity, not_after = cert.not_after, generation = cert.generation, "certificate obtained");
                    // Half of the lifetime left at issuance (the CA backdates not_before for clock
                    // skew, which must not make short certificates renew late).
                    let issued_at = now_unix();
                    let renew_at = issued_at + ((cert.not_after - issued_at) / 2).max(1);
                    self.set_status(AgentStatus::Ready {
                        not_after: cert.not_after,
                    });
                    self.current.send_replace(Some(Arc::new(cert)));
                    backoff = Duration::from_secs(1);
                    Duration::from_secs((renew_at - now_unix()).max(1) as u64)
                }
                Err(e) => {
                    let current = self.current();
                    let now = now_unix();
                    let status = match &current {
                        Some(c) if c.not_after <= now => AgentStatus::Expired {
                            not_after: c.not_after,
                            error: e.to_string(),
                        },
                        _ => AgentStatus::CaUnreachable {
                            since: match self.status() {
                                AgentStatus::CaUnreachable { since, .. } => since,
                                _ => now,
                            },
                            error: e.to_string(),
                            not_after: current.as_ref().map(|c| c.not_after),
                        },
                    };
                    tracing::warn!(identity = %self.config.identity, error = %e, retry_in_s = backoff.as_secs(), "certificate renewal failed; the current certificate keeps serving");
                    self.set_status(status);
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {},
                () = self.rotate.notified() => {
                    tracing::info!(identity = %self.config.identity, "rotation requested");
                },
            }
        }
    }
}
