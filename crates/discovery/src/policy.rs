//! Authorization evaluated in views: which policies apply to a proxy's workload, and what they
//! decide for a caller. The data plane enforces the same rules (Envoy RBAC, built by the xDS
//! crate from [`inbound_policies`]); [`authorize`] is the reference semantics, used by tests
//! and by operators' "why was this denied" queries. A property test in the xDS crate
//! (`tests/rbac/`) evaluates the emitted RBAC with a model of Envoy and checks that it agrees
//! with [`authorize`] on generated policies and requests.

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
    /// The request's `:path` on an HTTP port (its query and fragment are ignored, as Envoy's
    /// `url_path` does); `None` for a connection to a TCP port, where no path can be checked.
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

/// The path part of a `:path`: without its query and fragment.
fn url_path(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// Whether a target matches. Paths cannot be checked on a TCP port, so they fail closed: a DENY
/// rule's paths are ignored there (it applies to the whole port), and an ALLOW rule's paths
/// never match.
fn target_matches(t: &PolicyTarget, action: PolicyAction, req: &AuthzRequest<'_>) -> bool {
    let paths = t.paths.is_empty()
        || match req.path {
            Some(path) => t
                .paths
                .iter()
                .any(|pat| matches_pattern(pat, url_path(path))),
            None => action == PolicyAction::Deny,
        };
    (t.ports.is_empty() || t.ports.contains(&req.port)) && paths
}

fn rule_matches(rule: &PolicyRule, action: PolicyAction, req: &AuthzRequest<'_>) -> bool {
    (rule.from.is_empty() && req.principal.is_some()
        || rule.from.iter().any(|s| source_matches(s, req)))
        && (rule.to.is_empty() || rule.to.iter().any(|t| target_matches(t, action, req)))
}

/// Istio's semantics: a caller without a mesh certificate is refused (inbound listeners
/// require one); any matching DENY denies; with no ALLOW policy everything authenticated is
/// allowed; otherwise a request must match some ALLOW rule. On a TCP port (`path: None`), path
/// conditions fail closed: a DENY rule with paths denies the whole port, an ALLOW rule's
/// targets with paths allow nothing.
pub fn authorize(policies: &[AuthorizationPolicy], req: &AuthzRequest<'_>) -> AuthzDecision {
    let name = |p: &AuthorizationPolicy| format!("{}/{}", p.namespace, p.name);
    if req.principal.is_none() {
        return AuthzDecision {
            allowed: false,
            policy: None,
            reason: "not authenticated: inbound listeners require a mesh certificate".to_owned(),
        };
    }
    for p in policies.iter().filter(|p| p.action == PolicyAction::Deny) {
        if p.rules.iter().any(|r| rule_matches(r, p.action, req)) {
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
        if p.rules.iter().any(|r| rule_matches(r, p.action, req)) {
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
    fn paths_fail_closed_on_tcp_ports() {
        let client = SpiffeId::new("td", "demo", "client");
        let admin = PolicyTarget {
            ports: vec![],
            paths: vec!["/admin*".into()],
        };
        let deny = policy(PolicyAction::Deny, PolicySource::default(), admin.clone());
        let allow = policy(PolicyAction::Allow, PolicySource::default(), admin);
        let tcp = AuthzRequest {
            principal: Some(&client),
            cluster: None,
            port: 5432,
            path: None,
        };
        let http = AuthzRequest {
            port: 8080,
            path: Some("/"),
            ..tcp
        };
        let d = authorize(std::slice::from_ref(&deny), &tcp);
        assert!(
            !d.allowed,
            "a DENY rule with paths denies the whole TCP port"
        );
        assert_eq!(d.policy.as_deref(), Some("demo/deny"));
        assert!(authorize(std::slice::from_ref(&deny), &http).allowed);
        assert!(!authorize(std::slice::from_ref(&allow), &tcp).allowed);
        assert!(
            authorize(
                &[allow],
                &AuthzRequest {
                    path: Some("/admin/x"),
                    ..http
                }
            )
            .allowed,
            "on an HTTP port the ALLOW rule's paths are checked"
        );
    }

    #[test]
    fn paths_match_without_query_or_fragment() {
        let client = SpiffeId::new("td", "demo", "client");
        let deny = policy(
            PolicyAction::Deny,
            PolicySource::default(),
            PolicyTarget {
                ports: vec![],
                paths: vec!["/admin".into()],
            },
        );
        let req = |path| AuthzRequest {
            principal: Some(&client),
            cluster: None,
            port: 8080,
            path: Some(path),
        };
        for path in ["/admin", "/admin?x=1", "/admin#top", "/admin?a#b"] {
            assert!(
                !authorize(std::slice::from_ref(&deny), &req(path)).allowed,
                "{path}"
            );
        }
        for path in ["/admins", "/x?/admin", "/"] {
            assert!(
                authorize(std::slice::from_ref(&deny), &req(path)).allowed,
                "{path}"
            );
        }
    }

    #[test]
    fn unauthenticated_callers_are_refused_even_without_policies() {
        let d = authorize(
            &[],
            &AuthzRequest {
                principal: None,
                cluster: None,
                port: 8080,
                path: Some("/"),
            },
        );
        assert!(!d.allowed);
        assert!(d.reason.contains("not authenticated"), "{}", d.reason);
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
