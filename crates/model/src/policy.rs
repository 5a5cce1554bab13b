use std::collections::BTreeMap;

use serde::Serialize;

use crate::{ClusterId, ObjectSource};

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PolicyAction {
    /// Allow matching requests; once any ALLOW policy applies to a workload, everything else is
    /// denied.
    Allow,
    /// Deny matching requests; DENY wins over ALLOW.
    Deny,
}

/// Who a rule matches. Lists are alternatives (OR); the fields that are set must all match
/// (AND). An empty source matches any authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicySource {
    /// Caller SPIFFE IDs: exact, or a prefix ending in `*`.
    pub principals: Vec<String>,
    /// Caller namespaces (from the SPIFFE ID).
    pub namespaces: Vec<String>,
    /// Caller clusters (from the cluster the caller's certificate was issued for).
    pub clusters: Vec<ClusterId>,
}

/// What a rule matches on the destination. Lists are alternatives; set fields must all match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTarget {
    /// Destination (workload) ports.
    pub ports: Vec<u16>,
    /// HTTP paths: exact, or a prefix ending in `*`. Only enforceable on HTTP ports.
    pub paths: Vec<String>,
}

/// One rule: matches when any `from` and any `to` entry match (an empty list matches all).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Callers.
    pub from: Vec<PolicySource>,
    /// Destinations.
    pub to: Vec<PolicyTarget>,
}

/// A `causeway.io/v1alpha1/AuthorizationPolicy`: allow or deny callers by identity and cluster
/// for the selected workloads of its cluster and namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// Namespace of the workloads it applies to.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Workload labels; `None` applies to every workload of the namespace.
    pub selector: Option<BTreeMap<String, String>>,
    /// Allow or deny.
    pub action: PolicyAction,
    /// Rules (any may match). An ALLOW policy with no rule allows nothing; a DENY policy with
    /// no rule denies nothing.
    pub rules: Vec<PolicyRule>,
    /// Declaration site.
    pub source: ObjectSource,
}

impl AuthorizationPolicy {
    /// Whether it applies to a workload of `namespace` with `labels`.
    pub fn applies_to(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace == namespace
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}
