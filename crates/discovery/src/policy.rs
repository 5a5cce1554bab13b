//! Authorization evaluated in views: which policies apply to a proxy's workload, and what they
//! decide for a caller. The data plane enforces the same rules (Envoy RBAC, built by the xDS
//! crate from [`inbound_policies`]); [`authorize`] is the reference semantics, used by tests
//! and by operators' "why was this denied" queries.

use causeway_model::{
    AuthorizationPolicy, ClusterId, PolicyAction, PolicyRule, PolicySource, PolicyTarget, SpiffeId,
};
use serde::Serialize;

use crate::{MeshIndex, ProxyContext};

/// One request as authorization sees it.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    /// The caller's verified identity (`None`: not authenticated).
    pub principal: Option<&'a SpiffeId>,
    /// The cluster the caller's certificate was issued for.
    pub cluster: Option<&'a ClusterId>,
    /// Destination port on the workload.
    pub port: u16,
    /// HTTP path, for HTTP ports.
    pub path: Option<&'a str>,
}

/// The outcome, with the policy that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzDecision {
    /// Allowed or not.
    pub allowed: bool,
    /// `namespace/name` of the deciding policy, if one decided.
    pub policy: Option<String>,
    /// Why.
    pub reason: String,
}

/// Policies of the proxy's cluster that apply to its workload.
pub fn inbound_policies(index: &MeshIndex, ctx: &ProxyContext) -> Vec<AuthorizationPolicy> {
    let Some(cluster) = index.cluster(&ctx.identity.cluster) else {
        return Vec::new();
    };
    let labels = cluster
        .workloads
        .get(&(
            ctx.identity.namespace.clone(),
            ctx.identity.workload.clone(),
        ))
        .map(|w| w.labels.clone())
        .unwrap_or_default();
    cluster
        .policies
        .iter()
        .filter(|p| p.applies_to(&ctx.identity.namespace, &labels))
        .cloned()
        .collect()
}

/// Whether `value` matches `pattern`: exact, or a prefix when the pattern ends in `*`.
pub fn matches_pattern(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

fn source_matches(src: &PolicySource, req: &AuthzRequest<'_>) -> bool {
    let Some(principal) = req.principal else {
        return false;
    };
    let uri = principal.to_string();
    (src.principals.is_empty() || src.principals.iter().any(|p| matches_pattern(p, &uri)))
        && (src.namespaces.is_empty() || src.namespaces.contains(&principal.namespace))
        && (src.clusters.is_empty() || req.cluster.is_some_and(|c| src.clusters.contains(c)))
}

fn target_matches(t: &PolicyTarget, req: &AuthzRequest<'_>) -> bool {
    (t.ports.is_empty() || t.ports.contains(&req.port))
        && (t.paths.is_empty()
            || req
                .path
                .is_some_and(|p| t.paths.iter().any(|pat| matches_pattern(pat, p))))
}

fn rule_matches(rule: &PolicyRule, req: &AuthzRequest<'_>) -> bool {
    (rule.from.is_empty() && req.principal.is_some()
        || rule.from.iter().any(|s| source_matches(s, req)))
        && (rule.to.is_empty() || rule.to.iter().any(|t| target_matches(t, req)))
}

/// Istio's semantics: any matching DENY denies; with no ALLOW policy everything authenticated
/// is allowed; otherwise a request must match some ALLOW rule.
pub fn authorize(policies: &[AuthorizationPolicy], req: &AuthzRequest<'_>) -> AuthzDecision {
    let name = |p: &AuthorizationPolicy| format!("{}/{}", p.namespace, p.name);
    for p in policies.iter().filter(|p| p.action == PolicyAction::Deny) {
        if p.rules.iter().any(|r| rule_matches(r, req)) {
            return AuthzDecision {
                allowed: false,
                policy: Some(name(p)),
                reason: format!("denied by DENY policy {}", name(p)),
            };
        }
    }
    let allows: Vec<&AuthorizationPolicy> = policies
        .iter()
        .filter(|p| p.action == PolicyAction::Allow)
        .collect();
    if allows.is_empty() {
        return AuthzDecision {
            allowed: true,
            policy: None,
            reason: "no ALLOW policy applies to this workload".to_owned(),
        };
    }
    for p in allows {
        if p.rules.iter().any(|r| rule_matches(r, req)) {
            return AuthzDecision {
                allowed: true,
                policy: Some(name(p)),
                reason: format!("allowed by ALLOW policy {}", name(p)),
            };
        }
    }
    AuthzDecision {
        allowed: false,
        policy: None,
        reason: "ALLOW policies apply to this workload and none matches".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_model::ObjectSource;

    fn policy(action: PolicyAction, from: PolicySource, to: PolicyTarget) -> AuthorizationPolicy {
        AuthorizationPolicy {
            namespace: "demo".into(),
            name: format!("{action:?}").to_lowercase(),
            selector: None,
            action,
            rules: vec![PolicyRule {
                from: vec![from],
                to: vec![to],
            }],
            source: ObjectSource::default(),
        }
    }

    fn cid(s: &str) -> ClusterId {
        ClusterId::new(s).expect("id")
    }

    #[test]
    fn allow_by_principal_cluster_port_and_path() {
        let client = SpiffeId::new("td", "demo", "client");
        let other = SpiffeId::new("td", "demo", "other");
        let allow = policy(
            PolicyAction::Allow,
            PolicySource {
                principals: vec!["spiffe://td/ns/demo/sa/client".into()],
                namespaces: vec![],
                clusters: vec![cid("alpha")],
            },
            PolicyTarget {
                ports: vec![8080],
                paths: vec!["/api/*".into()],
            },
        );
        let policies = vec![allow];
        let alpha = cid("alpha");
        let beta = cid("beta");
        let ok = AuthzRequest {
            principal: Some(&client),
            cluster: Some(&alpha),
            port: 8080,
            path: Some("/api/x"),
        };
        assert!(authorize(&policies, &ok).allowed);
        assert!(
            !authorize(
                &policies,
                &AuthzRequest {
                    principal: Some(&other),
                    ..ok
                }
            )
            .allowed
        );
        assert!(
            !authorize(
                &policies,
                &AuthzRequest {
                    cluster: Some(&beta),
                    ..ok
                }
            )
            .allowed
        );
        assert!(!authorize(&policies, &AuthzRequest { port: 9090, ..ok }).allowed);
        assert!(
            !authorize(
                &policies,
                &AuthzRequest {
                    path: Some("/admin"),
                    ..ok
                }
            )
            .allowed
        );
        assert!(
            !authorize(
                &policies,
                &AuthzRequest {
                    principal: None,
                    ..ok
                }
            )
            .allowed
        );
        assert!(authorize(&[], &ok).allowed, "no policy: allowed");
    }

    #[test]
    fn deny_wins_and_namespace_prefix_match() {
        let client = SpiffeId::new("td", "shop", "client");
        let deny = policy(
            PolicyAction::Deny,
            PolicySource {
                principals: vec!["spiffe://td/ns/shop/*".into()],
                ..PolicySource::default()
            },
            PolicyTarget::default(),
        );
        let allow = policy(
            PolicyAction::Allow,
            PolicySource {
                namespaces: vec!["shop".into()],
                ..PolicySource::default()
            },
            PolicyTarget::default(),
        );
        let req = AuthzRequest {
            principal: Some(&client),
            cluster: None,
            port: 80,
            path: None,
        };
        assert!(authorize(std::slice::from_ref(&allow), &req).allowed);
        let d = authorize(&[allow, deny], &req);
        assert!(!d.allowed);
        assert_eq!(d.policy.as_deref(), Some("demo/deny"));
    }
}
