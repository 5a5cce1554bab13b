//! The registry of served resources: built-in types, optional API groups, CRD-defined types.

use std::collections::BTreeMap;

use k8s_openapi::api::{core, discovery};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use crate::options::ServerOptions;

/// One served resource: what discovery advertises and how paths and objects are shaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSpec {
    /// API group (`""` for the core group).
    pub group: String,
    /// Version served (`v1`, `v1beta1`, ...).
    pub version: String,
    /// Kind (`Pod`, `ServiceExport`, ...).
    pub kind: String,
    /// Plural resource name used in paths (`pods`, `serviceexports`).
    pub plural: String,
    /// Namespaced (true) or cluster-scoped (false).
    pub namespaced: bool,
    /// Has a `/status` subresource: status is written only there.
    pub status_subresource: bool,
}

impl ResourceSpec {
    /// A namespaced resource without a status subresource.
    pub fn new(group: &str, version: &str, kind: &str, plural: &str) -> Self {
        Self {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            namespaced: true,
            status_subresource: false,
        }
    }

    /// Makes the resource cluster-scoped.
    pub fn cluster_scoped(mut self) -> Self {
        self.namespaced = false;
        self
    }

    /// Gives the resource a `/status` subresource.
    pub fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }
}

/// `group/version`, or just `version` for the core group.
pub(crate) fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// Splits an `apiVersion` into group and version.
pub(crate) fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// Re-serialises a JSON object through its k8s-openapi type, so stored built-in objects have
/// exactly the shape the real server emits (unknown fields dropped, `apiVersion`/`kind` set).
pub(crate) type Normalizer = fn(Value) -> Result<Value, serde_json::Error>;

fn normalize_via<K>(v: Value) -> Result<Value, serde_json::Error>
where
    K: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: K = serde_json::from_value(v)?;
    serde_json::to_value(&typed)
}

/// Key of a resource inside the server: group and plural (shared by all served versions, as
/// one CRD's versions share storage).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GroupResource {
    pub group: String,
    pub plural: String,
}

impl GroupResource {
    pub fn new(group: &str, plural: &str) -> Self {
        Self {
            group: group.to_string(),
            plural: plural.to_string(),
        }
    }

    /// `plural` or `plural.group`, as the real server names resources in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// A served resource with all its versions.
#[derive(Debug, Clone)]
pub(crate) struct ResourceType {
    pub group: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// Served versions in the order they were added; objects are stored under the first.
    pub versions: Vec<String>,
    pub normalize: Option<Normalizer>,
    /// Name of the CRD that defined it, if it came from a CRD.
    pub crd: Option<String>,
}

impl ResourceType {
    pub fn from_spec(spec: &ResourceSpec) -> Self {
        Self {
            group: spec.group.clone(),
            plural: spec.plural.clone(),
            kind: spec.kind.clone(),
            namespaced: spec.namespaced,
            status_subresource: spec.status_subresource,
            versions: vec![spec.version.clone()],
            normalize: None,
            crd: None,
        }
    }

    pub fn storage_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    pub fn gr(&self) -> GroupResource {
        GroupResource::new(&self.group, &self.plural)
    }
}

/// Review-style resources: create-only, never stored, answered by the auth module.
pub(crate) const REVIEW_RESOURCES: &[(&str, &str, &str, &str)] = &[
    ("authentication.k8s.io", "v1", "TokenReview", "tokenreviews"),
    (
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
    ),
    (
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
    ),
];

fn typed<K>(namespaced: bool, status: bool) -> ResourceType
where
    K: k8s_openapi::Resource + serde::de::DeserializeOwned + serde::Serialize,
{
    ResourceType {
        group: K::GROUP.to_string(),
        plural: K::URL_PATH_SEGMENT.to_string(),
        kind: K::KIND.to_string(),
        namespaced,
        status_subresource: status,
        versions: vec![K::VERSION.to_string()],
        normalize: Some(normalize_via::<K>),
        crd: None,
    }
}

/// The resources every server serves, plus those the options switch on.
pub(crate) fn initial_resources(opts: &ServerOptions) -> BTreeMap<GroupResource, ResourceType> {
    let mut types = vec![
        typed::<core::v1::Pod>(true, true),
        typed::<core::v1::Service>(true, true),
        typed::<core::v1::Node>(false, true),
        typed::<core::v1::Namespace>(false, true),
        typed::<core::v1::ServiceAccount>(true, false),
        typed::<core::v1::ConfigMap>(true, false),
        typed::<core::v1::Secret>(true, false),
        typed::<discovery::v1::EndpointSlice>(true, false),
        typed::<CustomResourceDefinition>(false, true),
    ];
    let mut map: BTreeMap<GroupResource, ResourceType> = BTreeMap::new();
    for t in types.drain(..) {
        map.insert(t.gr(), t);
    }
    for spec in optional_specs(opts) {
        add_spec(&mut map, &spec);
    }
    map
}

fn optional_specs(opts: &ServerOptions) -> Vec<ResourceSpec> {
    let mut specs = Vec::new();
    for v in &opts.mcs_versions {
        let g = "multicluster.x-k8s.io";
        specs.push(
            ResourceSpec::new(g, v.as_str(), "ServiceExport", "serviceexports").with_status(),
        );
        specs.push(
            ResourceSpec::new(g, v.as_str(), "ServiceImport", "serviceimports").with_status(),
        );
    }
    if opts.about_api {
        specs.push(
            ResourceSpec::new(
                "about.k8s.io",
                "v1alpha1",
                "ClusterProperty",
                "clusterproperties",
            )
            .cluster_scoped(),
        );
    }
    if opts.causeway_crds {
        specs.push(ResourceSpec::new(
            "causeway.io",
            "v1alpha1",
            "AuthorizationPolicy",
            "authorizationpolicies",
        ));
    }
    if opts.traffic_policy_crd {
        specs.push(ResourceSpec::new(
            "causeway.io",
            "v1alpha1",
            "TrafficPolicy",
            "trafficpolicies",
        ));
    }
    specs
}

/// Serves `spec`: a new resource, or one more version of a resource already served.
pub(crate) fn add_spec(map: &mut BTreeMap<GroupResource, ResourceType>, spec: &ResourceSpec) {
    let gr = GroupResource::new(&spec.group, &spec.plural);
    match map.get_mut(&gr) {
        Some(t) => {
            if !t.serves(&spec.version) {
                t.versions.push(spec.version.clone());
            }
            t.status_subresource |= spec.status_subresource;
        }
        None => {
            map.insert(gr, ResourceType::from_spec(spec));
        }
    }
}

/// Orders versions as Kubernetes does for the preferred version: GA > beta > alpha, then by
/// number; anything else sorts last.
pub(crate) fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(0))
    } else {
        (0, 0)
    };
    (stage, major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_is_preferred_over_alpha_and_ga_over_beta() {
        let mut vs = vec!["v1alpha1", "v1", "v1beta1", "v2beta1"];
        vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(vs, ["v1", "v2beta1", "v1beta1", "v1alpha1"]);
    }

    #[test]
    fn both_mcs_versions_share_one_resource() {
        let opts = ServerOptions {
            mcs_versions: vec![crate::McsVersion::V1alpha1, crate::McsVersion::V1beta1],
            ..ServerOptions::default()
        };
        let map = initial_resources(&opts);
        let t = &map[&GroupResource::new("multicluster.x-k8s.io", "serviceexports")];
        assert_eq!(t.versions, ["v1alpha1", "v1beta1"]);
        assert!(t.status_subresource);
    }
}
