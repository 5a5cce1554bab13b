//! Projected ServiceAccount tokens, checked with a TokenReview against the workload's own
//! cluster: how a Kubernetes workload proves its identity to the mesh CA. A token is only ever
//! sent to the API server of the cluster the workload claims, so a token of cluster A can
//! never yield an identity of cluster B.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use causeway_model::ClusterId;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// The audience agents request for their projected token, and the only one the CA accepts.
pub const CA_AUDIENCE: &str = "causeway-ca";
/// TokenReview `extra` key naming the pod a bound token belongs to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// What kube-apiserver's service-account authenticator says of a valid token issued for other
/// audiences (`token audiences [..] is invalid for the target audiences [..]`).
const AUDIENCE_MISMATCH: &str = "is invalid for the target audiences";

/// Who a reviewed token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedToken {
    /// Cluster whose API server authenticated it.
    pub cluster: ClusterId,
    /// ServiceAccount namespace.
    pub namespace: String,
    /// ServiceAccount name: the identity.
    pub service_account: String,
    /// Pod the token is bound to, when the API server says.
    pub pod: Option<String>,
}

/// Why a token was not accepted. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The cluster is not a Kubernetes member of this mesh.
    #[error("cluster {0} is not a Kubernetes member cluster of this mesh")]
    UnknownCluster(ClusterId),
    /// The cluster's API server has not been reached yet.
    #[error("cluster {0}: no working connection to its API server yet")]
    NotConnected(ClusterId),
    /// The API server said the token is not valid.
    #[error("cluster {cluster}: the API server did not authenticate the token{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    NotAuthenticated {
        /// The cluster asked.
        cluster: ClusterId,
        /// What the API server said.
        reason: Option<String>,
    },
    /// The token is valid but not for the CA's audience.
    #[error("cluster {0}: the token is not issued for audience {CA_AUDIENCE:?}")]
    WrongAudience(ClusterId),
    /// The token belongs to a user, not a ServiceAccount.
    #[error("cluster {cluster}: the token belongs to {user:?}, not to a ServiceAccount")]
    NotServiceAccount {
        /// The cluster asked.
        cluster: ClusterId,
        /// The authenticated user name.
        user: String,
    },
    /// The TokenReview could not be made (API server down, no permission...).
    #[error("cluster {cluster}: cannot review the token: {reason}")]
    Unavailable {
        /// The cluster asked.
        cluster: ClusterId,
        /// Why.
        reason: String,
    },
}

/// Reviews `token` with `client` (cluster `cluster`'s API server).
pub async fn review(
    cluster: &ClusterId,
    client: &kube::Client,
    token: &str,
    limit: Duration,
) -> Result<ReviewedToken, ReviewError> {
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            audiences: Some(vec![CA_AUDIENCE.to_owned()]),
        },
        ..TokenReview::default()
    };
    let api: Api<TokenReview> = Api::all(client.clone());
    let unavailable = |reason: String| ReviewError::Unavailable {
        cluster: cluster.clone(),
        reason,
    };
    let answer =
        match tokio::time::timeout(limit, api.create(&PostParams::default(), &request)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => {
                return Err(unavailable(format!(
                    "no answer within {} s",
                    limit.as_secs()
                )))
            }
        };
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        // An audience-aware API server (every kube-apiserver) does not authenticate a token
        // for another audience; it only says so in the error (pkg/serviceaccount/jwt.go).
        if status
            .error
            .as_deref()
            .is_some_and(|e| e.contains(AUDIENCE_MISMATCH))
        {
            return Err(ReviewError::WrongAudience(cluster.clone()));
        }
        return Err(ReviewError::NotAuthenticated {
            cluster: cluster.clone(),
            reason: status.error.filter(|e| !e.is_empty()),
        });
    }
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == CA_AUDIENCE))
    {
        return Err(ReviewError::WrongAudience(cluster.clone()));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
    else {
        return Err(ReviewError::NotServiceAccount {
            cluster: cluster.clone(),
            user: username,
        });
    };
    let pod = user
        .extra
        .as_ref()
        .and_then(|e| e.get(POD_NAME_EXTRA))
        .and_then(|v| v.first())
        .cloned();
    Ok(ReviewedToken {
        cluster: cluster.clone(),
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod,
    })
}

/// The shared, current client of one cluster (replaced when its credentials rotate).
pub(crate) type ClientSlot = Arc<RwLock<Option<kube::Client>>>;

/// Reviews tokens against the cluster they claim, with that cluster's current client.
#[derive(Clone)]
pub struct TokenReviewer {
    clients: Arc<RwLock<BTreeMap<ClusterId, ClientSlot>>>,
    limit: Option<Duration>,
    /// Reviews in flight, so unauthenticated callers cannot turn the CA into a flood of
    /// TokenReviews against members' API servers.
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Default for TokenReviewer {
    fn default() -> Self {
        Self {
            clients: Arc::default(),
            limit: None,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_REVIEWS_IN_FLIGHT)),
        }
    }
}

/// TokenReviews in flight at once, over all members.
const MAX_REVIEWS_IN_FLIGHT: usize = 32;

/// What can be checked without asking anyone: the token is a JWT whose claims name the CA's
/// audience and have not expired. Anything else is refused here and never sent to an API
/// server (a mesh-directory token sent with a Kubernetes member's name, garbage, a token for
/// another audience). The signature is the API server's to check.
fn screen(cluster: &ClusterId, token: &str) -> Result<(), ReviewError> {
    use base64::Engine as _;
    let refuse = |reason: &str| ReviewError::NotAuthenticated {
        cluster: cluster.clone(),
        reason: Some(format!(
            "{reason} (checked locally; not sent to the API server)"
        )),
    };
    let mut parts = token.split('.');
    let (Some(_), Some(claims), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse("not a JSON Web Token"));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .map_err(|_| refuse("not a JSON Web Token"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| refuse("not a JSON Web Token"))?;
    let audience_ok = match &claims["aud"] {
        serde_json::Value::String(a) => a == CA_AUDIENCE,
        serde_json::Value::Array(list) => list.iter().any(|a| a == CA_AUDIENCE),
        _ => false,
    };
    if !audience_ok {
        return Err(ReviewError::WrongAudience(cluster.clone()));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match claims["exp"].as_u64() {
        Some(exp) if exp + 60 >= now => Ok(()),
        Some(_) => Err(refuse("expired")),
        None => Err(refuse("has no expiry")),
    }
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("clusters", &self.clusters())
            .finish()
    }
}

impl TokenReviewer {
    pub(crate) fn set(&self, cluster: ClusterId, slot: ClientSlot) {
        self.clients
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cluster, slot);
    }

    pub(crate) fn remove(&self, cluster: &ClusterId) {
        self.clients
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(cluster);
    }

    /// Kubernetes member clusters.
    pub fn clusters(&self) -> Vec<ClusterId> {
        self.clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Reviews `token` with `cluster`'s API server.
    pub async fn review(
        &self,
        cluster: &ClusterId,
        token: &str,
    ) -> Result<ReviewedToken, ReviewError> {
        let slot = self
            .clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cluster)
            .cloned()
            .ok_or_else(|| ReviewError::UnknownCluster(cluster.clone()))?;
        screen(cluster, token)?;
        let client = slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| ReviewError::NotConnected(cluster.clone()))?;
        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| ReviewError::Unavailable {
                cluster: cluster.clone(),
                reason: format!(
                    "{MAX_REVIEWS_IN_FLIGHT} token reviews already in flight; try again"
                ),
            })?;
        review(
            cluster,
            &client,
            token,
            self.limit.unwrap_or(Duration::from_secs(5)),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.c2ln",
            b64(&serde_json::json!({"alg": "RS256"})),
            b64(&claims)
        )
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    #[test]
    fn only_unexpired_jwts_for_the_ca_audience_are_sent_for_review() {
        let c = ClusterId::new("east").expect("id");
        let good = jwt(serde_json::json!({"aud": ["causeway-ca"], "exp": now() + 600}));
        assert_eq!(screen(&c, &good), Ok(()));
        let single = jwt(serde_json::json!({"aud": "causeway-ca", "exp": now() + 600}));
        assert_eq!(screen(&c, &single), Ok(()));
        for (token, why) in [
            (
                "vm-echo-token-3b7f".to_owned(),
                "a mesh-directory file token",
            ),
            ("a.b.c".to_owned(), "garbage in JWT shape"),
            (
                jwt(serde_json::json!({"aud": ["causeway-ca"], "exp": now() - 3600})),
                "expired",
            ),
            (
                jwt(serde_json::json!({"aud": ["causeway-ca"]})),
                "no expiry",
            ),
        ] {
            let refused = screen(&c, &token);
            assert!(
                matches!(&refused, Err(ReviewError::NotAuthenticated { reason: Some(r), .. }) if r.contains("not sent to the API server")),
                "{why}: {refused:?}"
            );
            assert!(
                !format!("{refused:?}").contains(&token),
                "{why}: the token is never echoed"
            );
        }
        let other =
            jwt(serde_json::json!({"aud": ["https://kubernetes.default.svc"], "exp": now() + 600}));
        assert_eq!(
            screen(&c, &other),
            Err(ReviewError::WrongAudience(c.clone()))
        );
    }
}
