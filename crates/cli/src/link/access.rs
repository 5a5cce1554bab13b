//! Checking a cluster before it is linked: its API server answers `/version`, a
//! SelfSubjectAccessReview allows every permission of [`REQUIRED_ACCESS`] (the message for the
//! missing ones says how to grant them), and which optional APIs it serves.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use causeway_kube::apis::{self, ServedApis};
use causeway_kube::client::client_config;
use causeway_kube::rbac::{
    AccessRequirement, CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_ROLE, REQUIRED_ACCESS,
};
use causeway_kube::{KubeError, KubeconfigFile};
use causeway_model::ClusterId;
use k8s_openapi::api::authorization::v1::{SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

/// The manifest that grants [`REQUIRED_ACCESS`].
const CLUSTERROLE_MANIFEST: &str = "deploy/kubernetes/clusterrole.yaml";

/// What the check found out about a reachable cluster with sufficient credentials.
pub(super) struct ClusterReport {
    /// The API server URL from the kubeconfig.
    pub(super) url: String,
    /// Its `gitVersion`.
    pub(super) version: String,
    /// Which optional APIs it serves.
    pub(super) served: ServedApis,
}

/// Connects with `kubeconfig`, asks `/version`, reviews every required permission and
/// discovers the optional APIs. Fails when the server does not answer, when a review cannot be
/// made, or when any permission is denied (naming each).
pub(super) async fn check_cluster(
    cluster: &ClusterId,
    kubeconfig: &KubeconfigFile,
    limit: Duration,
) -> anyhow::Result<ClusterReport> {
    let mut config = client_config(cluster, kubeconfig)
        .await
        .map_err(kube_error)?;
    config.connect_timeout = Some(limit);
    config.read_timeout = Some(limit);
    config.write_timeout = Some(limit);
    let url = config.cluster_url.to_string();
    let url = url.trim_end_matches('/').to_owned();
    let client = kube::Client::try_from(config).with_context(|| {
        format!(
            "cluster {cluster}: cannot build a client from {}",
            kubeconfig.path.display()
        )
    })?;
    let info = match tokio::time::timeout(limit, client.apiserver_version()).await {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => {
            return Err(api_error(e).context(format!(
                "cluster {cluster}: the API server at {url} did not answer GET /version; mesh.yaml was not changed"
            )))
        }
        Err(_) => bail!(
            "cluster {cluster}: the API server at {url} did not answer GET /version within {} s; mesh.yaml was not changed",
            limit.as_secs()
        ),
    };
    let denied = check_access(cluster, &client, &url, limit).await?;
    if !denied.is_empty() {
        bail!("{}", missing_access_message(cluster, &denied));
    }
    let served = apis::discover(cluster, &client, limit)
        .await
        .map_err(kube_error)
        .with_context(|| {
            format!("cluster {cluster}: cannot list the API groups it serves; mesh.yaml was not changed")
        })?;
    Ok(ClusterReport {
        url,
        version: info.git_version,
        served,
    })
}

/// One permission the API server said no to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Denied {
    /// The requirement.
    requirement: AccessRequirement,
    /// The authorizer's reason or evaluation error, when it gave one.
    reason: Option<String>,
}

/// The SelfSubjectAccessReview asking about `requirement` in every namespace.
fn access_review(requirement: &AccessRequirement) -> SelfSubjectAccessReview {
    SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(requirement.resource_attributes()),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    }
}

/// Reviews every requirement (concurrently); returns the denied ones in
/// [`REQUIRED_ACCESS`] order.
async fn check_access(
    cluster: &ClusterId,
    client: &kube::Client,
    url: &str,
    limit: Duration,
) -> anyhow::Result<Vec<Denied>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, requirement) in REQUIRED_ACCESS.iter().copied().enumerate() {
        let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
        tasks.spawn(async move {
            let review = access_review(&requirement);
            let answer =
                tokio::time::timeout(limit, api.create(&PostParams::default(), &review)).await;
            (index, requirement, answer)
        });
    }
    let mut answers = Vec::with_capacity(REQUIRED_ACCESS.len());
    while let Some(joined) = tasks.join_next().await {
        answers.push(joined.context("an access review task failed")?);
    }
    answers.sort_by_key(|(index, _, _)| *index);
    let mut denied = Vec::new();
    let mut failed: Vec<(AccessRequirement, anyhow::Error)> = Vec::new();
    for (_, requirement, answer) in answers {
        match answer {
            Ok(Ok(review)) => {
                let status = review.status.unwrap_or_default();
                if !status.allowed {
                    let reason = [status.reason, status.evaluation_error]
                        .into_iter()
                        .flatten()
                        .filter(|r| !r.is_empty())
                        .collect::<Vec<_>>()
                        .join("; ");
                    denied.push(Denied {
                        requirement,
                        reason: (!reason.is_empty()).then_some(reason),
                    });
                }
            }
            Ok(Err(e)) => failed.push((requirement, review_failure(e))),
            Err(_) => failed.push((
                requirement,
                anyhow!("no answer within {} s", limit.as_secs()),
            )),
        }
    }
    if let Some((requirement, first)) = failed.into_iter().next() {
        return Err(first.context(format!(
            "cluster {cluster}: cannot check the credentials' permissions at {url} with a SelfSubjectAccessReview (asking about `{}`); mesh.yaml was not changed",
            short(&requirement)
        )));
    }
    Ok(denied)
}

/// A failed review request, with a hint for the usual causes.
fn review_failure(e: kube::Error) -> anyhow::Error {
    let hint = match &e {
        kube::Error::Api(status) if status.code == 401 => {
            Some("the API server does not accept the kubeconfig's credentials")
        }
        kube::Error::Api(status) if status.code == 403 => Some(
            "the credentials may not create selfsubjectaccessreviews.authorization.k8s.io (every authenticated user may, through system:basic-user, unless that was changed)",
        ),
        _ => None,
    };
    let e = api_error(e);
    match hint {
        Some(hint) => e.context(hint),
        None => e,
    }
}

/// A kube-rs error; an API server's `Status` as its message and code (kube-rs's own rendering
/// repeats the whole `Status` structure).
fn api_error(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(status) => anyhow!(
            "{} (HTTP {}{})",
            status.message,
            status.code,
            if status.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", status.reason)
            }
        ),
        other => anyhow!("{}", error_chain(&other)),
    }
}

/// A Kubernetes registry error on one line (its message already names cluster and action).
pub(super) fn kube_error(e: KubeError) -> anyhow::Error {
    match e {
        KubeError::Api {
            cluster,
            action,
            source,
        } => api_error(source).context(format!("cluster {cluster}: {action}")),
        other => anyhow!("{}", error_chain(&other)),
    }
}

/// An error and its sources on one line, without the repetitions of errors whose message
/// already ends with their source's (`client error (Connect): client error (Connect)`).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut source = e.source();
    while let Some(s) = source {
        let message = s.to_string();
        if !last.ends_with(&message) {
            out.push_str(": ");
            out.push_str(&message);
        }
        last = message;
        source = s.source();
    }
    out
}

/// `verb resource.group[/subresource]`, without the purpose.
fn short(requirement: &AccessRequirement) -> String {
    let full = requirement.to_string();
    match full.split_once(" (") {
        Some((head, _)) => head.to_owned(),
        None => full,
    }
}

/// Every denied permission, one a line, and how to grant them.
fn missing_access_message(cluster: &ClusterId, denied: &[Denied]) -> String {
    let mut message = format!(
        "cluster {cluster}: the kubeconfig's credentials lack {} of the {} permissions the control plane needs (cluster-wide):",
        denied.len(),
        REQUIRED_ACCESS.len()
    );
    for d in denied {
        message.push_str("\n  missing: ");
        message.push_str(&d.requirement.to_string());
        if let Some(reason) = &d.reason {
            message.push_str(&format!(" [{reason}]"));
        }
    }
    message.push_str(&format!(
        "\n{CLUSTERROLE_MANIFEST} grants exactly these: `kubectl apply -f {CLUSTERROLE_MANIFEST}` creates ClusterRole {CONTROL_PLANE_ROLE} bound to ServiceAccount {CONTROL_PLANE_NAMESPACE}/{CONTROL_PLANE_ROLE}; use a token of that ServiceAccount in the kubeconfig. mesh.yaml was not changed."
    ));
    message
}

/// Reports which optional APIs the cluster serves; one it lacks is a warning.
pub(super) fn print_served_apis(cluster: &ClusterId, served: &ServedApis) {
    match &served.mcs_version {
        Some(v) => println!("cluster {cluster}: serves the MCS API {}/{v}", apis::MCS_GROUP),
        None => eprintln!(
            "warning: cluster {cluster} serves no MCS API ({}: neither v1beta1 nor v1alpha1): its ServiceExports cannot be read, so none of its services is exported unless the mesh uses `discovery: sameness`, and no ServiceImports are written to it; install the MCS CRDs (sigs.k8s.io/mcs-api) to fix this",
            apis::MCS_GROUP
        ),
    }
    for (served, resource, kind) in [
        (
            served.authorization_policies,
            "authorizationpolicies",
            "AuthorizationPolicy",
        ),
        (served.traffic_policies, "trafficpolicies", "TrafficPolicy"),
    ] {
        if served {
            println!(
                "cluster {cluster}: serves {resource}.{}",
                apis::CAUSEWAY_GROUP
            );
        } else {
            eprintln!(
                "warning: cluster {cluster} does not serve {resource}.{}: no {kind} is read from it until `causeway crds | kubectl apply -f -` installs the CRD",
                apis::CAUSEWAY_GROUP
            );
        }
    }
    if let Some(v) = &served.about_version {
        println!(
            "cluster {cluster}: serves the About API {}/{v} (its ClusterProperty cluster.clusterset.k8s.io must name {cluster})",
            apis::ABOUT_GROUP
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_permissions_are_each_named_with_the_manifest() {
        let denied: Vec<Denied> = REQUIRED_ACCESS
            .iter()
            .filter(|r| {
                r.resource == "pods" && r.verb == "watch"
                    || r.subresource.is_some() && r.verb == "patch"
            })
            .map(|r| Denied {
                requirement: *r,
                reason: None,
            })
            .collect();
        assert_eq!(denied.len(), 3);
        let message = missing_access_message(&ClusterId::new("c").expect("id"), &denied);
        assert!(message.contains("lack 3 of the"), "{message}");
        for line in [
            "missing: watch pods (",
            "missing: patch serviceexports.multicluster.x-k8s.io/status (",
            "missing: patch serviceimports.multicluster.x-k8s.io/status (",
        ] {
            assert!(message.contains(line), "{line:?} in {message}");
        }
        assert!(message.contains(CLUSTERROLE_MANIFEST), "{message}");
        assert_eq!(short(&denied[0].requirement), "watch pods");
    }

    #[test]
    fn error_chains_are_not_repeated() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let root = E("tcp connect error: refused", None);
        let mid = E("client error (Connect)", Some(Box::new(root)));
        let top = E("ServiceError: client error (Connect)", Some(Box::new(mid)));
        assert_eq!(
            error_chain(&top),
            "ServiceError: client error (Connect): tcp connect error: refused"
        );
    }

    #[test]
    fn an_access_review_asks_about_every_namespace() {
        let review = access_review(&REQUIRED_ACCESS[0]);
        let attrs = review
            .spec
            .resource_attributes
            .expect("resource attributes");
        assert_eq!(attrs.namespace, None);
        assert_eq!(attrs.verb.as_deref(), Some(REQUIRED_ACCESS[0].verb));
        assert!(review.spec.non_resource_attributes.is_none());
    }
}
