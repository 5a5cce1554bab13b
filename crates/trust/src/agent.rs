//! `causeway agent`: beside a workload's proxy, it generates the workload's key pair, obtains a
//! certificate from the CA service with the workload's bootstrap credential, checks it, renews
//! it at half its lifetime (new key each time, or at once on [`Agent::force_rotate`]), and hands
//! it to Envoy over SDS ([`crate::sds`]). The key never leaves this process except to the local
//! proxy over the SDS Unix socket.
//!
//! When the CA cannot be reached the agent retries with jittered exponential backoff and keeps
//! serving the current certificate until it expires; [`Agent::status`] says which.
//!
//! The credential comes from a [`TokenSource`]; a token file is re-read for every request, since
//! kubelet rotates projected ServiceAccount tokens in place. Each request also states the
//! cluster the workload runs in ([`AgentConfig::cluster`]), which the CA checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use causeway_model::{ClusterId, SpiffeId};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::issue::{IssueError, WorkloadKey};
use crate::service::{request_certificate, CaClientConfig, ClientError, SignRequest};
use crate::verify::VerifyError;

pub use crate::sds::SdsServer;

/// Where the agent's bootstrap credential comes from. `Debug` never shows a token.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A fixed token (read once by the caller). Surrounding whitespace is ignored.
    Static(String),
    /// A token file, re-read for every certificate request (kubelet replaces projected
    /// ServiceAccount tokens in place). Surrounding whitespace is ignored; empty is an error.
    File(PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Static(_) => f.write_str("Static([elided])"),
            TokenSource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl From<String> for TokenSource {
    fn from(token: String) -> Self {
        TokenSource::Static(token)
    }
}

impl From<&str> for TokenSource {
    fn from(token: &str) -> Self {
        TokenSource::Static(token.to_owned())
    }
}

/// Why the agent has no token to send. Messages name the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The token file holds nothing but whitespace.
    #[error("the token file {path} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

impl TokenSource {
    /// The current token, trimmed. A file is read anew on every call.
    pub async fn read(&self) -> Result<String, TokenError> {
        match self {
            TokenSource::Static(token) => Ok(token.trim().to_owned()),
            TokenSource::File(path) => {
                let text =
                    tokio::fs::read_to_string(path)
                        .await
                        .map_err(|source| TokenError::Read {
                            path: path.clone(),
                            source,
                        })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(TokenError::Empty { path: path.clone() });
                }
                Ok(token.to_owned())
            }
        }
    }
}

/// Agent settings (the `causeway agent` flags).
#[derive(Clone)]
pub struct AgentConfig {
    /// CA service address.
    pub ca_addr: SocketAddr,
    /// Roots used to verify the CA itself (bootstrap trust).
    pub ca_bundle_pem: String,
    /// Trust domain.
    pub trust_domain: String,
    /// Bootstrap credential. Never logged.
    pub token: TokenSource,
    /// The cluster this workload runs in, sent as the request's claim (`None`: not stated).
    /// The CA refuses a credential of another cluster and, for clusters with their own
    /// authenticator (Kubernetes TokenReview), asks only that cluster.
    pub cluster: Option<ClusterId>,
    /// The identity to request: the one the credential grants.
    pub identity: SpiffeId,
    /// Certificate lifetime to request (the CA caps it); renewal happens at half of it.
    pub ttl: Duration,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("ca_addr", &self.ca_addr)
            .field("trust_domain", &self.trust_domain)
            .field("token", &self.token)
            .field("cluster", &self.cluster)
            .field("identity", &self.identity)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Timing of the agent's CA calls and retries.
#[derive(Debug, Clone)]
pub struct AgentTuning {
    /// First retry delay after a failure.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Limit on connecting to the CA (TCP and TLS).
    pub connect_timeout: Duration,
    /// Limit on one signing call.
    pub request_timeout: Duration,
}

impl Default for AgentTuning {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the agent could not obtain a certificate.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No token to send.
    #[error("bootstrap credential: {0}")]
    Token(#[from] TokenError),
    /// Key or CSR generation failed.
    #[error("generating the key pair or CSR: {0}")]
    Key(#[from] IssueError),
    /// The CA call failed.
    #[error(transparent)]
    Ca(#[from] ClientError),
    /// The CA answered with a certificate we must not use.
    #[error("the CA's certificate for {identity} is unusable: {source}")]
    BadCertificate {
        /// The identity requested.
        identity: String,
        /// What is wrong with it.
        #[source]
        source: VerifyError,
    },
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
    /// Bumped on every new certificate (the SDS version).
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

/// The agent's health, for status pages and readiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum AgentStatus {
    /// No certificate yet (first request in flight).
    Starting,
    /// Serving a valid certificate; the last renewal succeeded.
    Ok {
        /// Expiry of the certificate served.
        not_after: i64,
    },
    /// The CA cannot be reached or refuses; the current certificate (if any) keeps serving.
    CaUnreachable {
        /// Since when (Unix seconds).
        since: i64,
        /// The last error.
        last_error: String,
        /// Expiry of the certificate still served, if any.
        not_after: Option<i64>,
    },
    /// The certificate expired and no new one could be had.
    Expired {
        /// When it expired (Unix seconds).
        not_after: i64,
        /// The last error.
        last_error: String,
    },
}

/// The agent: see the module documentation.
pub struct Agent {
    config: AgentConfig,
    tuning: AgentTuning,
    current: watch::Sender<Option<Arc<Certified>>>,
    status: Mutex<AgentStatus>,
    rotate: Notify,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("identity", &self.config.identity.to_string())
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// A new agent with default timing (no certificate until [`Agent::run`] obtains one).
    pub fn new(config: AgentConfig) -> Arc<Self> {
        Self::with_tuning(config, AgentTuning::default())
    }

    /// A new agent with the given timing.
    pub fn with_tuning(config: AgentConfig, tuning: AgentTuning) -> Arc<Self> {
        let (current, _) = watch::channel(None);
        Arc::new(Self {
            config,
            tuning,
            current,
            status: Mutex::new(AgentStatus::Starting),
            rotate: Notify::new(),
        })
    }

    /// The identity it requests.
    pub fn identity(&self) -> &SpiffeId {
        &self.config.identity
    }

    /// Follows the current certificate (what the SDS server serves).
    pub fn certificates(&self) -> watch::Receiver<Option<Arc<Certified>>> {
        self.current.subscribe()
    }

    /// The current certificate, if any.
    pub fn current(&self) -> Option<Arc<Certified>> {
        self.current.borrow().clone()
    }

    /// Health. A certificate that expired since the last attempt reports [`AgentStatus::Expired`].
    pub fn status(&self) -> AgentStatus {
        let stored = match self.status.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let now = crate::now_unix();
        match stored {
            AgentStatus::Ok { not_after } if not_after <= now => AgentStatus::Expired {
                not_after,
                last_error: "the certificate expired before it was renewed".into(),
            },
            AgentStatus::CaUnreachable {
                not_after: Some(not_after),
                last_error,
                ..
            } if not_after <= now => AgentStatus::Expired {
                not_after,
                last_error,
            },
            other => other,
        }
    }

    fn set_status(&self, s: AgentStatus) {
        match self.status.lock() {
            Ok(mut g) => *g = s,
            Err(p) => *p.into_inner() = s,
        }
    }

    /// Renews now instead of at half-life (the running [`Agent::run`] loop picks it up).
    pub fn force_rotate(&self) {
        self.rotate.notify_one();
    }

    /// One renewal: the current token, a new key pair, a CSR for the identity, the CA's
    /// signature, and a check of the answer (chain to the returned bundle, our identity, our
    /// key). Does not publish the result; [`Agent::run`] does.
    pub async fn renew(&self) -> Result<Certified, AgentError> {
        let token = self.config.token.read().await?;
        let key = WorkloadKey::generate()?;
        let csr_pem = key.csr_pem(&self.config.identity)?;
        let mut client = CaClientConfig::new(
            self.config.ca_addr,
            self.config.ca_bundle_pem.clone(),
            self.config.trust_domain.clone(),
        );
        client.connect_timeout = self.tuning.connect_timeout;
        client.request_timeout = self.tuning.request_timeout;
        let response = request_certificate(
            &client,
            SignRequest {
                csr_pem,
                token,
                ttl_seconds: self.config.ttl.as_secs(),
                cluster: self
                    .config
                    .cluster
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            },
        )
        .await?;
        crate::verify::verify_issued(
            &response.cert_chain_pem,
            &response.trust_bundle_pem,
            &self.config.identity,
            &key.public_key_der(),
            rustls_pki_types::UnixTime::now(),
        )
        .map_err(|source| AgentError::BadCertificate {
            identity: self.config.identity.to_string(),
            source,
        })?;
        let generation = self.current().map_or(1, |c| c.generation + 1);
        Ok(Certified {
            chain_pem: response.cert_chain_pem,
            key_pem: key.private_key_pem(),
            bundle_pem: response.trust_bundle_pem,
            not_before: response.not_before,
            not_after: response.not_after,
            generation,
        })
    }

    /// Obtains and renews certificates until the task is dropped: at half their lifetime, on
    /// [`Agent::force_rotate`], and with jittered backoff while the CA fails (the current
    /// certificate keeps serving until it expires).
    pub async fn run(self: Arc<Self>) {
        let cluster = self.config.cluster.as_ref().map_or("", |c| c.as_str());
        let span = tracing::info_span!("agent", identity = %self.config.identity, %cluster, ca = %self.config.ca_addr);
        let agent = Arc::clone(&self);
        async move { agent.run_loop().await }.instrument(span).await;
    }

    async fn run_loop(&self) {
        let mut backoff = self.tuning.backoff_initial;
        loop {
            let wait = match self.renew().await {
                Ok(cert) => {
                    // Half of the lifetime left at issuance (not_before is backdated for clock
                    // skew, which must not make short certificates renew late).
                    let now = crate::now_unix();
                    let half = ((cert.not_after - now) / 2).max(1);
                    tracing::info!(
                        not_after = cert.not_after,
                        generation = cert.generation,
                        renew_in_s = half,
                        "certificate obtained"
                    );
                    self.set_status(AgentStatus::Ok {
                        not_after: cert.not_after,
                    });
                    self.current.send_replace(Some(Arc::new(cert)));
                    backoff = self.tuning.backoff_initial;
                    Duration::from_secs(u64::try_from(half).unwrap_or(1))
                }
                Err(e) => {
                    let now = crate::now_unix();
                    let not_after = self.current().map(|c| c.not_after);
                    let status = match not_after {
                        Some(t) if t <= now => AgentStatus::Expired {
                            not_after: t,
                            last_error: e.to_string(),
                        },
                        _ => AgentStatus::CaUnreachable {
                            since: match self.status() {
                                AgentStatus::CaUnreachable { since, .. } => since,
                                _ => now,
                            },
                            last_error: e.to_string(),
                            not_after,
                        },
                    };
                    let wait = jittered(backoff);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, serving_until = ?not_after, "certificate renewal failed; the current certificate keeps serving");
                    self.set_status(status);
                    backoff = (backoff * 2).min(self.tuning.backoff_max);
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {},
                () = self.rotate.notified() => tracing::info!("rotation requested"),
            }
        }
    }
}

/// `base` plus up to a quarter of it at random, so agents restarted together spread out.
fn jittered(base: Duration) -> Duration {
    let mut b = [0u8; 2];
    if crate::random_bytes(&mut b).is_err() {
        return base;
    }
    let fraction = f64::from(u16::from_be_bytes(b)) / f64::from(u16::MAX);
    base + base.mul_f64(0.25 * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(4));
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(5),
                "{d:?}"
            );
        }
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let config = AgentConfig {
            ca_addr: "127.0.0.1:1".parse().expect("addr"),
            ca_bundle_pem: String::new(),
            trust_domain: "t".into(),
            token: "very-secret-token".into(),
            cluster: ClusterId::new("east").ok(),
            identity: SpiffeId::new("t", "a", "b"),
            ttl: Duration::from_secs(60),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("very-secret-token"), "{shown}");
        assert!(shown.contains("east"), "{shown}");
        let file = TokenSource::File("/run/token".into());
        assert!(format!("{file:?}").contains("/run/token"));
        let cert = Certified {
            chain_pem: String::new(),
            key_pem: "-----BEGIN PRIVATE KEY-----".into(),
            bundle_pem: String::new(),
            not_before: 0,
            not_after: 1,
            generation: 1,
        };
        assert!(!format!("{cert:?}").contains("PRIVATE"));
    }

    #[tokio::test]
    async fn token_files_are_read_anew_each_time_and_never_echoed() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("token");
        std::fs::write(&path, "first-token\n").expect("write");
        let source = TokenSource::File(path.clone());
        assert_eq!(source.read().await.expect("read"), "first-token");
        // Replaced the way kubelet does it: a new file renamed over the old one.
        let fresh = dir.path().join("token.new");
        std::fs::write(&fresh, "second-token").expect("write");
        std::fs::rename(&fresh, &path).expect("rename");
        assert_eq!(source.read().await.expect("read"), "second-token");
        std::fs::write(&path, " \n").expect("write");
        let e = source.read().await.expect_err("empty");
        assert!(matches!(e, TokenError::Empty { .. }), "{e}");
        std::fs::remove_file(&path).expect("rm");
        let e = source.read().await.expect_err("missing");
        assert!(
            matches!(e, TokenError::Read { .. })
                && e.to_string().contains(&path.display().to_string()),
            "{e}"
        );
        assert_eq!(
            TokenSource::from(" static\n").read().await.expect("static"),
            "static"
        );
    }

    #[test]
    fn status_turns_expired_when_the_certificate_runs_out() {
        let agent = Agent::new(AgentConfig {
            ca_addr: "127.0.0.1:1".parse().expect("addr"),
            ca_bundle_pem: String::new(),
            trust_domain: "t".into(),
            token: "x".into(),
            cluster: None,
            identity: SpiffeId::new("t", "a", "b"),
            ttl: Duration::from_secs(60),
        });
        assert_eq!(agent.status(), AgentStatus::Starting);
        agent.set_status(AgentStatus::CaUnreachable {
            since: 1,
            last_error: "down".into(),
            not_after: Some(2),
        });
        assert_eq!(
            agent.status(),
            AgentStatus::Expired {
                not_after: 2,
                last_error: "down".into()
            }
        );
        agent.set_status(AgentStatus::Ok {
            not_after: crate::now_unix() + 100,
        });
        assert!(matches!(agent.status(), AgentStatus::Ok { .. }));
    }
}
