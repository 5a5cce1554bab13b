//! Bootstrap credentials: how the CA knows who is asking before it signs anything.
//!
//! In the mesh directory each WorkloadEntry may name a token file; the token grants exactly that
//! workload's identity (namespace and service account) in its cluster. [`Authenticator`] is the
//! seam where the Kubernetes mode plugs in ServiceAccount TokenReview instead of
//! [`CredentialStore`]; [`RoutedAuthenticator`] sends a request claiming cluster C to C's own
//! authenticator (so a cluster's tokens are only ever reviewed by that cluster) and everything
//! else to the file tokens. Tokens are never logged and never appear in error messages.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use aws_lc_rs::{constant_time, digest};
use causeway_model::{ClusterId, SpiffeId};

/// What a credential entitles its holder to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Cluster the workload runs in (whose intermediate signs).
    pub cluster: ClusterId,
    /// Namespace.
    pub namespace: String,
    /// Service account: the identity.
    pub service_account: String,
    /// Workload name, for logs.
    pub workload: String,
}

impl Grant {
    /// The SPIFFE ID this grant allows.
    pub fn spiffe(&self, trust_domain: &str) -> SpiffeId {
        SpiffeId::new(
            trust_domain,
            self.namespace.clone(),
            self.service_account.clone(),
        )
    }

    fn same_identity(&self, other: &Grant) -> bool {
        self.cluster == other.cluster
            && self.namespace == other.namespace
            && self.service_account == other.service_account
    }
}

/// Why a credential was refused. Messages never contain the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential presented.
    #[error("no bootstrap credential presented")]
    Missing,
    /// The credential matches no workload.
    #[error("bootstrap credential not recognised")]
    Unknown,
    /// The credential is shared by workloads with different identities, so it proves none.
    #[error("bootstrap credential is shared by workloads with different identities; refusing it")]
    Ambiguous,
    /// The authenticator's backend (e.g. the Kubernetes API) could not be asked.
    #[error("cannot check the bootstrap credential: {0}")]
    Unavailable(String),
    /// The credential is valid, but for a workload of another cluster than the requester
    /// claims to run in (e.g. the agent's `--cluster` is wrong, or a token was carried over).
    #[error("the bootstrap credential belongs to a workload of cluster {granted}, but the request claims cluster {claimed}")]
    WrongCluster {
        /// The cluster the request claims.
        claimed: ClusterId,
        /// The cluster the credential grants.
        granted: ClusterId,
    },
}

impl AuthError {
    /// The refusal if `grant` is for another cluster than `claimed` (no claim: no refusal).
    pub fn check_cluster(grant: &Grant, claimed: Option<&ClusterId>) -> Result<(), AuthError> {
        match claimed {
            Some(claimed) if *claimed != grant.cluster => Err(AuthError::WrongCluster {
                claimed: claimed.clone(),
                granted: grant.cluster.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// The future an [`Authenticator`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Grant, AuthError>> + Send + 'a>>;

/// Authenticates a bootstrap credential and says what it grants. Asynchronous, so that
/// implementations may call out (Kubernetes TokenReview) with their own timeouts.
pub trait Authenticator: Send + Sync {
    /// The grant of `token`, if it is valid. `claimed_cluster` is the cluster the requester says
    /// it runs in (`None`: not stated); an implementation that knows better must refuse a
    /// mismatch with [`AuthError::WrongCluster`] (the CA checks it again whatever is returned).
    /// Must not log or echo `token`.
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        claimed_cluster: Option<&'a ClusterId>,
    ) -> AuthFuture<'a>;
}

/// Why a credential could not be added to a [`CredentialStore`].
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The token file could not be read.
    #[error(
        "cluster {cluster}, workload {workload}: cannot read credential file {path}: {source}"
    )]
    Read {
        /// Cluster of the workload.
        cluster: ClusterId,
        /// `namespace/name` of the workload.
        workload: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The token is empty (after trimming whitespace).
    #[error("cluster {cluster}, workload {workload}: the credential is empty")]
    Empty {
        /// Cluster of the workload.
        cluster: ClusterId,
        /// `namespace/name` of the workload.
        workload: String,
    },
    /// The same token was given to workloads with different identities; it is refused for all.
    #[error("the credential of {workload} ({identity}, cluster {cluster}) is also used by {other}; it is refused for both")]
    Shared {
        /// Cluster of the workload.
        cluster: ClusterId,
        /// `namespace/name` of the workload.
        workload: String,
        /// Its identity (`namespace/service-account`).
        identity: String,
        /// The other workload (`cluster namespace/name`).
        other: String,
    },
    /// The random number generator failed while generating a token.
    #[error("cannot generate a credential: the system random number generator failed")]
    Random,
}

/// A workload's credential as the mesh directory describes it (plain inputs, so this crate
/// does not depend on the registry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadCredential {
    /// Cluster the workload runs in.
    pub cluster: ClusterId,
    /// Namespace.
    pub namespace: String,
    /// WorkloadEntry name.
    pub name: String,
    /// Service account (the identity granted).
    pub service_account: String,
    /// Token file, relative to the mesh directory (or absolute).
    pub credential_file: PathBuf,
}

struct Entry {
    digest: [u8; 32],
    /// `None` once the token turned out to be shared by different identities.
    grant: Option<Grant>,
}

/// Static tokens (mesh directory mode). Only SHA-256 digests are kept; lookups compare every
/// entry in constant time.
#[derive(Default)]
pub struct CredentialStore {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("credentials", &self.entries.len())
            .finish()
    }
}

/// The name the control plane has used so far for [`CredentialStore`].
pub type TokenAuthenticator = CredentialStore;

fn sha256(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl CredentialStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every workload's token file (relative paths under `mesh_dir`) and builds the store.
    /// Workloads whose file cannot be read, is empty, or shares its token with another identity
    /// get no credential; each such problem is returned (and logged) so the operator can fix it.
    pub fn from_workloads(
        mesh_dir: &Path,
        workloads: &[WorkloadCredential],
    ) -> (Self, Vec<CredentialError>) {
        let mut store = Self::new();
        let mut problems = Vec::new();
        for w in workloads {
            let path = mesh_dir.join(&w.credential_file);
            let workload = format!("{}/{}", w.namespace, w.name);
            let grant = Grant {
                cluster: w.cluster.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                workload: w.name.clone(),
            };
            let result = match std::fs::read_to_string(&path) {
                Ok(token) => store.insert(&token, grant),
                Err(source) => Err(CredentialError::Read {
                    cluster: w.cluster.clone(),
                    workload: workload.clone(),
                    path,
                    source,
                }),
            };
            if let Err(e) = result {
                tracing::error!(cluster = %w.cluster, %workload, error = %e, "workload credential unusable; it cannot get certificates");
                problems.push(e);
            }
        }
        (store, problems)
    }

    /// Adds a token and what it grants. Surrounding whitespace is ignored (token files end in a
    /// newline). The same token for the same identity (replicas) is fine; for a different
    /// identity it proves nothing, so it is refused for everyone.
    pub fn insert(&mut self, token: &str, grant: Grant) -> Result<(), CredentialError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(CredentialError::Empty {
                cluster: grant.cluster,
                workload: format!("{}/{}", grant.namespace, grant.workload),
            });
        }
        let digest = sha256(token);
        if let Some(existing) = self.entries.iter_mut().find(|e| e.digest == digest) {
            return match &existing.grant {
                Some(g) if g.same_identity(&grant) => Ok(()),
                other => {
                    let other = other
                        .as_ref()
                        .map(|g| format!("{} {}/{}", g.cluster, g.namespace, g.workload))
                        .unwrap_or_else(|| "other workloads".into());
                    existing.grant = None;
                    Err(CredentialError::Shared {
                        identity: format!("{}/{}", grant.namespace, grant.service_account),
                        workload: format!("{}/{}", grant.namespace, grant.workload),
                        cluster: grant.cluster,
                        other,
                    })
                }
            };
        }
        self.entries.push(Entry {
            digest,
            grant: Some(grant),
        });
        Ok(())
    }

    /// [`CredentialStore::insert`], logging instead of returning a problem.
    pub fn add(&mut self, token: &str, grant: Grant) {
        let cluster = grant.cluster.clone();
        let workload = format!("{}/{}", grant.namespace, grant.workload);
        if let Err(e) = self.insert(token, grant) {
            tracing::error!(%cluster, %workload, error = %e, "credential not added");
        }
    }

    /// Number of distinct tokens known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The synchronous lookup behind [`Authenticator::authenticate`].
    pub fn lookup(&self, token: &str) -> Result<Grant, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let digest = sha256(token);
        let mut found: Option<&Entry> = None;
        // Visit every entry and compare in constant time, so timing does not reveal which
        // entry (or whether any) matched.
        for entry in &self.entries {
            let equal = constant_time::verify_slices_are_equal(&entry.digest, &digest).is_ok();
            if equal && found.is_none() {
                found = Some(entry);
            }
        }
        match found {
            None => Err(AuthError::Unknown),
            Some(Entry { grant: None, .. }) => Err(AuthError::Ambiguous),
            Some(Entry {
                grant: Some(grant), ..
            }) => Ok(grant.clone()),
        }
    }
}

impl Authenticator for CredentialStore {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        claimed_cluster: Option<&'a ClusterId>,
    ) -> AuthFuture<'a> {
        let result = self.lookup(token).and_then(|grant| {
            AuthError::check_cluster(&grant, claimed_cluster)?;
            Ok(grant)
        });
        Box::pin(std::future::ready(result))
    }
}

/// Routes each request by the cluster it claims: a cluster with its own authenticator (a
/// Kubernetes cluster's TokenReview) gets every request claiming it, and only those; requests
/// claiming another cluster, or none, go to the default (file tokens). So a token is only ever
/// shown to the authenticator of the cluster its holder claims, and a token of cluster A
/// presented as cluster B is reviewed by B, which does not know it.
#[derive(Clone)]
pub struct RoutedAuthenticator {
    default: Arc<dyn Authenticator>,
    clusters: BTreeMap<ClusterId, Arc<dyn Authenticator>>,
}

impl std::fmt::Debug for RoutedAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedAuthenticator")
            .field("clusters", &self.clusters.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl RoutedAuthenticator {
    /// Everything goes to `default` until clusters are added.
    pub fn new(default: Arc<dyn Authenticator>) -> Self {
        Self::from_parts(default, BTreeMap::new())
    }

    /// `default` plus one authenticator per cluster.
    pub fn from_parts(
        default: Arc<dyn Authenticator>,
        clusters: BTreeMap<ClusterId, Arc<dyn Authenticator>>,
    ) -> Self {
        Self { default, clusters }
    }

    /// Adds (or replaces) `cluster`'s own authenticator.
    pub fn with_cluster(mut self, cluster: ClusterId, auth: Arc<dyn Authenticator>) -> Self {
        self.clusters.insert(cluster, auth);
        self
    }

    /// The same per-cluster authenticators with another default (the file tokens changed).
    pub fn with_default(&self, default: Arc<dyn Authenticator>) -> Self {
        Self::from_parts(default, self.clusters.clone())
    }

    /// Clusters that have their own authenticator.
    pub fn clusters(&self) -> impl Iterator<Item = &ClusterId> {
        self.clusters.keys()
    }

    /// The authenticator a request claiming `claimed_cluster` goes to.
    pub fn route(&self, claimed_cluster: Option<&ClusterId>) -> &Arc<dyn Authenticator> {
        claimed_cluster
            .and_then(|c| self.clusters.get(c))
            .unwrap_or(&self.default)
    }
}

impl Authenticator for RoutedAuthenticator {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        claimed_cluster: Option<&'a ClusterId>,
    ) -> AuthFuture<'a> {
        self.route(claimed_cluster)
            .authenticate(token, claimed_cluster)
    }
}

/// A fresh random token (hex, 256 bits) for provisioning workloads.
pub fn generate_token() -> Result<String, CredentialError> {
    let mut bytes = [0u8; 32];
    crate::random_bytes(&mut bytes).map_err(|_| CredentialError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(cluster: &str, ns: &str, sa: &str, workload: &str) -> Grant {
        Grant {
            cluster: ClusterId::new(cluster).expect("id"),
            namespace: ns.into(),
            service_account: sa.into(),
            workload: workload.into(),
        }
    }

    #[test]
    fn tokens_grant_their_identity_only() {
        let mut store = CredentialStore::new();
        let g = grant("alpha", "demo", "client", "client");
        store.insert("secret-1\n", g.clone()).expect("insert");
        assert_eq!(store.lookup("secret-1"), Ok(g));
        assert_eq!(store.lookup("secret-2"), Err(AuthError::Unknown));
        assert_eq!(store.lookup("  "), Err(AuthError::Missing));
        assert!(!AuthError::Unknown.to_string().contains("secret"));
        assert!(!format!("{store:?}").contains("secret"));
        assert!(matches!(
            store.insert(" \n", grant("alpha", "demo", "x", "x")),
            Err(CredentialError::Empty { .. })
        ));
    }

    #[test]
    fn a_token_shared_by_two_identities_proves_neither() {
        let mut store = CredentialStore::new();
        store
            .insert("t0k3n", grant("alpha", "demo", "client", "client-1"))
            .expect("first");
        store
            .insert("t0k3n", grant("alpha", "demo", "client", "client-2"))
            .expect("replica of the same identity");
        assert_eq!(
            store.lookup("t0k3n").map(|g| g.workload),
            Ok("client-1".into())
        );
        let e = store
            .insert("t0k3n", grant("alpha", "demo", "admin", "admin"))
            .expect_err("different identity");
        assert!(e.to_string().contains("demo/admin"), "{e}");
        assert!(!e.to_string().contains("t0k3n"), "{e}");
        assert_eq!(store.lookup("t0k3n"), Err(AuthError::Ambiguous));
    }

    #[test]
    fn store_from_workload_entries_reports_unreadable_files() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("tokens")).expect("mkdir");
        std::fs::write(dir.path().join("tokens/a.token"), "tok-a\n").expect("write");
        let w = |name: &str, file: &str| WorkloadCredential {
            cluster: ClusterId::new("east").expect("id"),
            namespace: "shop".into(),
            name: name.into(),
            service_account: name.into(),
            credential_file: PathBuf::from(file),
        };
        let (store, problems) = CredentialStore::from_workloads(
            dir.path(),
            &[w("a", "tokens/a.token"), w("b", "tokens/missing.token")],
        );
        assert_eq!(store.len(), 1);
        assert_eq!(
            store.lookup("tok-a").map(|g| g.service_account),
            Ok("a".into())
        );
        assert_eq!(problems.len(), 1);
        let msg = problems[0].to_string();
        assert!(
            msg.contains("shop/b") && msg.contains("missing.token") && msg.contains("east"),
            "{msg}"
        );
    }

    fn cid(s: &str) -> ClusterId {
        ClusterId::new(s).expect("id")
    }

    #[tokio::test]
    async fn a_file_token_is_refused_when_claimed_for_another_cluster() {
        let mut store = CredentialStore::new();
        let g = grant("alpha", "demo", "client", "client");
        store.insert("tok-a", g.clone()).expect("insert");
        assert_eq!(store.authenticate("tok-a", None).await, Ok(g.clone()));
        assert_eq!(
            store.authenticate("tok-a", Some(&cid("alpha"))).await,
            Ok(g)
        );
        let e = store
            .authenticate("tok-a", Some(&cid("beta")))
            .await
            .expect_err("claimed for beta");
        assert_eq!(
            e,
            AuthError::WrongCluster {
                claimed: cid("beta"),
                granted: cid("alpha")
            }
        );
        let msg = e.to_string();
        assert!(msg.contains("alpha") && msg.contains("beta"), "{msg}");
        assert!(!msg.contains("tok-a"), "{msg}");
        // Unknown stays unknown whatever the claim.
        assert_eq!(
            store.authenticate("tok-x", Some(&cid("alpha"))).await,
            Err(AuthError::Unknown)
        );
    }

    /// A stand-in for one cluster's TokenReview: knows its own tokens (as grants of `cluster`)
    /// and records every token it is shown.
    struct Review {
        cluster: ClusterId,
        tokens: Vec<&'static str>,
        seen: std::sync::Mutex<Vec<String>>,
    }

    impl Review {
        fn new(cluster: &str, tokens: Vec<&'static str>) -> Arc<Self> {
            Arc::new(Self {
                cluster: cid(cluster),
                tokens,
                seen: std::sync::Mutex::new(Vec::new()),
            })
        }

        fn seen(&self) -> Vec<String> {
            self.seen.lock().expect("lock").clone()
        }
    }

    impl Authenticator for Review {
        fn authenticate<'a>(
            &'a self,
            token: &'a str,
            _claimed: Option<&'a ClusterId>,
        ) -> AuthFuture<'a> {
            self.seen.lock().expect("lock").push(token.to_owned());
            let result = if self.tokens.contains(&token) {
                Ok(Grant {
                    cluster: self.cluster.clone(),
                    namespace: "demo".into(),
                    service_account: token.into(),
                    workload: "pod".into(),
                })
            } else {
                Err(AuthError::Unknown)
            };
            Box::pin(std::future::ready(result))
        }
    }

    #[tokio::test]
    async fn requests_go_to_the_claimed_clusters_authenticator_only() {
        let mut files = CredentialStore::new();
        files
            .insert("file-tok", grant("gamma", "demo", "vm", "vm"))
            .expect("insert");
        let files = Arc::new(files);
        let east = Review::new("east", vec!["east-tok"]);
        let west = Review::new("west", vec!["west-tok"]);
        let router = RoutedAuthenticator::new(files.clone())
            .with_cluster(cid("east"), east.clone())
            .with_cluster(cid("west"), west.clone());
        assert_eq!(
            router.clusters().cloned().collect::<Vec<_>>(),
            vec![cid("east"), cid("west")]
        );
        let g = router
            .authenticate("east-tok", Some(&cid("east")))
            .await
            .expect("east's token, claimed for east");
        assert_eq!(g.cluster, cid("east"));
        // East's token claimed for west goes to west, which does not know it.
        assert_eq!(
            router.authenticate("east-tok", Some(&cid("west"))).await,
            Err(AuthError::Unknown)
        );
        assert_eq!(
            east.seen(),
            vec!["east-tok"],
            "east saw only its own request"
        );
        assert_eq!(
            west.seen(),
            vec!["east-tok"],
            "west was asked once, and refused"
        );
        // No claim, or a cluster without its own authenticator: the file tokens.
        assert_eq!(
            router
                .authenticate("file-tok", None)
                .await
                .map(|g| g.cluster),
            Ok(cid("gamma"))
        );
        assert_eq!(
            router
                .authenticate("file-tok", Some(&cid("gamma")))
                .await
                .map(|g| g.cluster),
            Ok(cid("gamma"))
        );
        assert_eq!(
            router.authenticate("east-tok", None).await,
            Err(AuthError::Unknown),
            "a Kubernetes token without a claim is not reviewed anywhere"
        );
        // A file token claimed for a cluster with its own authenticator is not looked up.
        assert_eq!(
            router.authenticate("file-tok", Some(&cid("east"))).await,
            Err(AuthError::Unknown)
        );
        assert_eq!(east.seen().len(), 2);
        assert_eq!(west.seen().len(), 1);
        // Swapping the file tokens keeps the per-cluster authenticators.
        let swapped = router.with_default(Arc::new(CredentialStore::new()));
        assert_eq!(
            swapped.authenticate("file-tok", None).await,
            Err(AuthError::Unknown)
        );
        assert!(swapped
            .authenticate("west-tok", Some(&cid("west")))
            .await
            .is_ok());
        let shown = format!("{router:?}");
        assert!(shown.contains("east") && !shown.contains("tok"), "{shown}");
    }

    #[test]
    fn generated_tokens_are_long_and_distinct() {
        let a = generate_token().expect("token");
        assert_eq!(a.len(), 64);
        assert_ne!(a, generate_token().expect("token"));
    }
}
