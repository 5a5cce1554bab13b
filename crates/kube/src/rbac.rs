//! The Kubernetes permissions the control plane needs in a member cluster, as data: the same
//! list that `deploy/kubernetes/clusterrole.yaml` grants (a unit test keeps the two equal), so
//! `causeway link` can check each one with a SelfSubjectAccessReview and name what is missing.

use std::fmt;

use k8s_openapi::api::authorization::v1::ResourceAttributes;

/// Name of the ClusterRole, its binding and the ServiceAccount in
/// `deploy/kubernetes/clusterrole.yaml`.
pub const CONTROL_PLANE_ROLE: &str = "causeway-control-plane";
/// Namespace of the control plane's ServiceAccount.
pub const CONTROL_PLANE_NAMESPACE: &str = "causeway-system";

/// One verb on one resource, cluster-wide (all namespaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccessRequirement {
    /// `get`, `list`, `watch`, `create`, `patch`, `update` or `delete`.
    pub verb: &'static str,
    /// API group; `""` is the core group.
    pub group: &'static str,
    /// Resource (plural), e.g. `endpointslices`.
    pub resource: &'static str,
    /// Subresource, e.g. `status`.
    pub subresource: Option<&'static str>,
    /// What the control plane does with it, for the operator.
    pub purpose: &'static str,
}

impl AccessRequirement {
    const fn new(
        verb: &'static str,
        group: &'static str,
        resource: &'static str,
        purpose: &'static str,
    ) -> Self {
        Self {
            verb,
            group,
            resource,
            subresource: None,
            purpose,
        }
    }

    const fn status(verb: &'static str, group: &'static str, resource: &'static str) -> Self {
        Self {
            verb,
            group,
            resource,
            subresource: Some("status"),
            purpose: STATUS,
        }
    }

    /// The attributes to ask about in a SelfSubjectAccessReview (no namespace: all of them).
    pub fn resource_attributes(&self) -> ResourceAttributes {
        ResourceAttributes {
            verb: Some(self.verb.to_owned()),
            group: Some(self.group.to_owned()),
            resource: Some(self.resource.to_owned()),
            subresource: self.subresource.map(str::to_owned),
            ..Default::default()
        }
    }
}

/// `watch endpointslices.discovery.k8s.io`, `patch serviceexports.multicluster.x-k8s.io/status`
/// (kubectl's `resource.group` notation), then the purpose.
impl fmt::Display for AccessRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        if let Some(sub) = self.subresource {
            write!(f, "/{sub}")?;
        }
        write!(f, " ({})", self.purpose)
    }
}

const SERVICES: &str = "discover the cluster's Services";
const PODS: &str = "service accounts and labels of the pods behind endpoints";
const NODES: &str = "localities of endpoints from their Nodes' topology labels";
const SLICES: &str = "endpoints of Services";
const EXPORTS: &str = "which Services are exported to the mesh (MCS)";
const STATUS: &str = "write MCS conditions and status";
const IMPORTS: &str = "write the ServiceImports of services exported elsewhere (MCS)";
const CLUSTER_ID: &str =
    "the cluster's id from ClusterProperty cluster.clusterset.k8s.io (KEP-2149)";
const POLICIES: &str = "Causeway AuthorizationPolicies";
const TRAFFIC: &str = "Causeway TrafficPolicies (mesh-wide)";
const TOKENS: &str = "verify workloads' service-account tokens when they ask for certificates";
const SELF_CHECK: &str = "check these permissions";

const CORE: &str = "";
const DISCOVERY: &str = "discovery.k8s.io";
const MCS: &str = "multicluster.x-k8s.io";

/// Every permission the control plane needs in a member cluster.
pub const REQUIRED_ACCESS: &[AccessRequirement] = &[
    AccessRequirement::new("get", CORE, "services", SERVICES),
    AccessRequirement::new("list", CORE, "services", SERVICES),
    AccessRequirement::new("watch", CORE, "services", SERVICES),
    AccessRequirement::new("get", CORE, "pods", PODS),
    AccessRequirement::new("list", CORE, "pods", PODS),
    AccessRequirement::new("watch", CORE, "pods", PODS),
    AccessRequirement::new("get", CORE, "nodes", NODES),
    AccessRequirement::new("list", CORE, "nodes", NODES),
    AccessRequirement::new("watch", CORE, "nodes", NODES),
    AccessRequirement::new("get", DISCOVERY, "endpointslices", SLICES),
    AccessRequirement::new("list", DISCOVERY, "endpointslices", SLICES),
    AccessRequirement::new("watch", DISCOVERY, "endpointslices", SLICES),
    AccessRequirement::new("get", MCS, "serviceexports", EXPORTS),
    AccessRequirement::new("list", MCS, "serviceexports", EXPORTS),
    AccessRequirement::new("watch", MCS, "serviceexports", EXPORTS),
    AccessRequirement::status("get", MCS, "serviceexports"),
    AccessRequirement::status("patch", MCS, "serviceexports"),
    AccessRequirement::status("update", MCS, "serviceexports"),
    AccessRequirement::new("get", MCS, "serviceimports", IMPORTS),
    AccessRequirement::new("list", MCS, "serviceimports", IMPORTS),
    AccessRequirement::new("watch", MCS, "serviceimports", IMPORTS),
    AccessRequirement::new("create", MCS, "serviceimports", IMPORTS),
    AccessRequirement::new("patch", MCS, "serviceimports", IMPORTS),
    AccessRequirement::new("update", MCS, "serviceimports", IMPORTS),
    AccessRequirement::new("delete", MCS, "serviceimports", IMPORTS),
    AccessRequirement::status("patch", MCS, "serviceimports"),
    AccessRequirement::status("update", MCS, "serviceimports"),
    AccessRequirement::new("get", "about.k8s.io", "clusterproperties", CLUSTER_ID),
    AccessRequirement::new("list", "about.k8s.io", "clusterproperties", CLUSTER_ID),
    AccessRequirement::new("watch", "about.k8s.io", "clusterproperties", CLUSTER_ID),
    AccessRequirement::new("get", "causeway.io", "authorizationpolicies", POLICIES),
    AccessRequirement::new("list", "causeway.io", "authorizationpolicies", POLICIES),
    AccessRequirement::new("watch", "causeway.io", "authorizationpolicies", POLICIES),
    AccessRequirement::new("get", "causeway.io", "trafficpolicies", TRAFFIC),
    AccessRequirement::new("list", "causeway.io", "trafficpolicies", TRAFFIC),
    AccessRequirement::new("watch", "causeway.io", "trafficpolicies", TRAFFIC),
    AccessRequirement::new("create", "authentication.k8s.io", "tokenreviews", TOKENS),
    AccessRequirement::new(
        "create",
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        SELF_CHECK,
    ),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use serde::Deserialize;
    use serde_json::Value;

    use super::*;

    const MANIFEST: &str = include_str!("../../../deploy/kubernetes/clusterrole.yaml");

    /// `(verb, group, resource[/subresource])`, as a ClusterRole spells it.
    type Grant = (String, String, String);

    fn required() -> BTreeSet<Grant> {
        REQUIRED_ACCESS
            .iter()
            .map(|r| {
                let resource = match r.subresource {
                    Some(sub) => format!("{}/{sub}", r.resource),
                    None => r.resource.to_owned(),
                };
                (r.verb.to_owned(), r.group.to_owned(), resource)
            })
            .collect()
    }

    fn granted(role: &ClusterRole) -> BTreeSet<Grant> {
        let mut grants = BTreeSet::new();
        for rule in role.rules.iter().flatten() {
            assert!(rule.resource_names.is_none(), "{rule:?}");
            assert!(rule.non_resource_urls.is_none(), "{rule:?}");
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        let grant = (verb.clone(), group.clone(), resource.clone());
                        assert!(!grant.0.contains('*'), "wildcard verb in {rule:?}");
                        assert!(!grant.1.contains('*'), "wildcard group in {rule:?}");
                        assert!(!grant.2.contains('*'), "wildcard resource in {rule:?}");
                        assert!(grants.insert(grant), "{verb} {resource} granted twice");
                    }
                }
            }
        }
        grants
    }

    fn manifest() -> (
        Vec<ClusterRole>,
        Vec<ClusterRoleBinding>,
        Vec<ServiceAccount>,
    ) {
        let (mut roles, mut bindings, mut accounts) = (Vec::new(), Vec::new(), Vec::new());
        for doc in yaml_serde::Deserializer::from_str(MANIFEST) {
            let value = Value::deserialize(doc).expect("YAML document");
            match value["kind"].as_str() {
                Some("ClusterRole") => roles.push(serde_json::from_value(value).expect("role")),
                Some("ClusterRoleBinding") => {
                    bindings.push(serde_json::from_value(value).expect("binding"))
                }
                Some("ServiceAccount") => {
                    accounts.push(serde_json::from_value(value).expect("account"))
                }
                Some("Namespace") => {
                    assert_eq!(value["metadata"]["name"], CONTROL_PLANE_NAMESPACE)
                }
                other => panic!("unexpected kind {other:?} in clusterrole.yaml"),
            }
        }
        (roles, bindings, accounts)
    }

    #[test]
    fn clusterrole_grants_exactly_the_required_access() {
        let (roles, _, _) = manifest();
        assert_eq!(roles.len(), 1);
        assert_eq!(roles[0].metadata.name.as_deref(), Some(CONTROL_PLANE_ROLE));
        let granted = granted(&roles[0]);
        let required = required();
        let missing: Vec<_> = required.difference(&granted).collect();
        let extra: Vec<_> = granted.difference(&required).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "clusterrole.yaml lacks {missing:?} and grants more than REQUIRED_ACCESS: {extra:?}"
        );
        assert_eq!(
            REQUIRED_ACCESS.len(),
            required.len(),
            "duplicate requirement"
        );
    }

    #[test]
    fn binding_gives_the_role_to_the_service_account() {
        let (_, bindings, accounts) = manifest();
        assert_eq!(accounts.len(), 1);
        assert_eq!(
            accounts[0].metadata.name.as_deref(),
            Some(CONTROL_PLANE_ROLE)
        );
        assert_eq!(
            accounts[0].metadata.namespace.as_deref(),
            Some(CONTROL_PLANE_NAMESPACE)
        );
        assert_eq!(bindings.len(), 1);
        let binding = &bindings[0];
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(binding.role_ref.name, CONTROL_PLANE_ROLE);
        let subjects = binding.subjects.as_deref().unwrap_or_default();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, CONTROL_PLANE_ROLE);
        assert_eq!(
            subjects[0].namespace.as_deref(),
            Some(CONTROL_PLANE_NAMESPACE)
        );
    }

    #[test]
    fn requirement_maps_to_an_access_review() {
        let status = REQUIRED_ACCESS
            .iter()
            .find(|r| r.resource == "serviceexports" && r.verb == "patch")
            .expect("patch serviceexports/status");
        let attrs = status.resource_attributes();
        assert_eq!(attrs.verb.as_deref(), Some("patch"));
        assert_eq!(attrs.group.as_deref(), Some("multicluster.x-k8s.io"));
        assert_eq!(attrs.resource.as_deref(), Some("serviceexports"));
        assert_eq!(attrs.subresource.as_deref(), Some("status"));
        assert_eq!(attrs.namespace, None);
        assert!(status
            .to_string()
            .starts_with("patch serviceexports.multicluster.x-k8s.io/status ("));
        let core = REQUIRED_ACCESS[0];
        assert_eq!(core.resource_attributes().group.as_deref(), Some(""));
        assert!(core.to_string().starts_with("get services ("), "{core}");
    }
}
