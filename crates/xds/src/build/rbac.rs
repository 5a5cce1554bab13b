//! Authorization policies as Envoy RBAC: a DENY filter, then an ALLOW filter, on the inbound
//! listener (HTTP filters for HTTP ports, network filters for TCP ports). The semantics are
//! [`causeway_discovery::policy::authorize`]'s; `tests/rbac/` checks that they agree.

use std::collections::HashMap;

use causeway_model::{AuthorizationPolicy, PolicyAction, PolicyRule, PolicySource, PolicyTarget};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use envoy_types::pb::envoy::extensions::rbac::principals::mtls_authenticated::v3 as mtls_principal;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;

use super::envoy::string_match;

fn principal_any_of(mut ids: Vec<rbac::Principal>) -> rbac::Principal {
    if ids.len() == 1 {
        return ids.remove(0);
    }
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::OrIds(rbac::principal::Set {
            ids,
        })),
    }
}

fn principal_name(pattern: &str) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Authenticated(
            rbac::principal::Authenticated {
                principal_name: Some(string_match(pattern)),
            },
        )),
    }
}

fn permission_any_of(mut rules: Vec<rbac::Permission>) -> rbac::Permission {
    if rules.len() == 1 {
        return rules.remove(0);
    }
    rbac::Permission {
        rule: Some(rbac::permission::Rule::OrRules(rbac::permission::Set {
            rules,
        })),
    }
}

fn any_permission() -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::Any(true)),
    }
}

/// A caller whose certificate carries `cluster`'s DNS SAN (which only that cluster's
/// intermediate issues).
fn caller_cluster(cluster: &causeway_model::ClusterId, trust_domain: &str) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Custom(
            core::TypedExtensionConfig {
                name: "envoy.rbac.principals.mtls_authenticated".to_owned(),
                typed_config: Some(pack_any(mtls_principal::Config {
                    san_matcher: Some(tls::SubjectAltNameMatcher {
                        san_type: tls::subject_alt_name_matcher::SanType::Dns as i32,
                        matcher: Some(string_match(&cluster.certificate_san(trust_domain))),
                        oid: String::new(),
                    }),
                    any_validated_client_certificate: false,
                })),
            },
        )),
    }
}

/// One source: the fields that are set, AND'ed; each a list of alternatives.
fn source_principal(src: &PolicySource, trust_domain: &str) -> rbac::Principal {
    let mut and = Vec::new();
    if !src.principals.is_empty() {
        and.push(principal_any_of(
            src.principals.iter().map(|p| principal_name(p)).collect(),
        ));
    }
    if !src.namespaces.is_empty() {
        and.push(principal_any_of(
            src.namespaces
                .iter()
                .map(|ns| principal_name(&format!("spiffe://{trust_domain}/ns/{ns}/sa/*")))
                .collect(),
        ));
    }
    if !src.clusters.is_empty() {
        and.push(principal_any_of(
            src.clusters
                .iter()
                .map(|c| caller_cluster(c, trust_domain))
                .collect(),
        ));
    }
    if and.is_empty() {
        and.push(principal_name(&format!("spiffe://{trust_domain}/*")));
    }
    if and.len() == 1 {
        and.remove(0)
    } else {
        rbac::Principal {
            identifier: Some(rbac::principal::Identifier::AndIds(rbac::principal::Set {
                ids: and,
            })),
        }
    }
}

/// A rule's principals: one per source, or any caller of the trust domain.
fn rule_principals(rule: &PolicyRule, trust_domain: &str) -> Vec<rbac::Principal> {
    if rule.from.is_empty() {
        return vec![principal_name(&format!("spiffe://{trust_domain}/*"))];
    }
    rule.from
        .iter()
        .map(|src| source_principal(src, trust_domain))
        .collect()
}

/// One target's permission, `None` when it cannot match on this listener. Paths cannot be
/// checked on a TCP port (`url_path` needs an HTTP request), so there they fail closed: a DENY
/// target keeps only its ports (it denies the whole port), an ALLOW target with paths allows
/// nothing.
fn target_permission(
    target: &PolicyTarget,
    action: PolicyAction,
    http: bool,
) -> Option<rbac::Permission> {
    let mut and = Vec::new();
    if !target.ports.is_empty() {
        and.push(permission_any_of(
            target
                .ports
                .iter()
                .map(|p| rbac::Permission {
                    rule: Some(rbac::permission::Rule::DestinationPort(u32::from(*p))),
                })
                .collect(),
        ));
    }
    if !target.paths.is_empty() {
        if !http {
            match action {
                PolicyAction::Allow => return None,
                PolicyAction::Deny => {}
            }
        } else {
            and.push(permission_any_of(
                target
                    .paths
                    .iter()
                    .map(|p| rbac::Permission {
                        rule: Some(rbac::permission::Rule::UrlPath(matcher::PathMatcher {
                            rule: Some(matcher::path_matcher::Rule::Path(string_match(p))),
                        })),
                    })
                    .collect(),
            ));
        }
    }
    if and.is_empty() {
        and.push(any_permission());
    }
    Some(if and.len() == 1 {
        and.remove(0)
    } else {
        rbac::Permission {
            rule: Some(rbac::permission::Rule::AndRules(rbac::permission::Set {
                rules: and,
            })),
        }
    })
}

/// One Envoy RBAC policy for one rule. `None` when the rule cannot match on this listener
/// (an ALLOW rule whose every target has paths, on a TCP port).
fn rbac_policy(
    rule: &PolicyRule,
    action: PolicyAction,
    trust_domain: &str,
    http: bool,
) -> Option<rbac::Policy> {
    let principals = rule_principals(rule, trust_domain);
    let permissions: Vec<rbac::Permission> = if rule.to.is_empty() {
        vec![any_permission()]
    } else {
        rule.to
            .iter()
            .filter_map(|t| target_permission(t, action, http))
            .collect()
    };
    if permissions.is_empty() {
        return None;
    }
    Some(rbac::Policy {
        permissions,
        principals,
        ..Default::default()
    })
}

/// RBAC filters for a listener: a DENY filter (when any DENY policy applies), then an ALLOW
/// filter (when any ALLOW policy applies; with no matching rule it denies everything).
pub(super) fn rbac_filters(
    policies: &[AuthorizationPolicy],
    trust_domain: &str,
    http: bool,
) -> Vec<(String, Any)> {
    let mut out = Vec::new();
    for action in [PolicyAction::Deny, PolicyAction::Allow] {
        let applicable: Vec<&AuthorizationPolicy> =
            policies.iter().filter(|p| p.action == action).collect();
        if applicable.is_empty() {
            continue;
        }
        let mut rbac_policies = HashMap::new();
        for p in applicable {
            for (i, rule) in p.rules.iter().enumerate() {
                if let Some(rp) = rbac_policy(rule, action, trust_domain, http) {
                    rbac_policies.insert(format!("{}/{}[{i}]", p.namespace, p.name), rp);
                }
            }
        }
        let rules = rbac::Rbac {
            action: match action {
                PolicyAction::Allow => rbac::rbac::Action::Allow as i32,
                PolicyAction::Deny => rbac::rbac::Action::Deny as i32,
            },
            policies: rbac_policies,
            ..Default::default()
        };
        out.push(rbac_filter(rules, action, http));
    }
    out
}

/// The HTTP or network RBAC filter holding `rules`.
fn rbac_filter(rules: rbac::Rbac, action: PolicyAction, http: bool) -> (String, Any) {
    let stat_prefix = format!("causeway_{}_", format!("{action:?}").to_lowercase());
    if http {
        (
            "envoy.filters.http.rbac".to_owned(),
            pack_any(http_rbac::Rbac {
                rules: Some(rules),
                rules_stat_prefix: stat_prefix,
                ..Default::default()
            }),
        )
    } else {
        (
            "envoy.filters.network.rbac".to_owned(),
            pack_any(net_rbac::Rbac {
                rules: Some(rules),
                stat_prefix,
                ..Default::default()
            }),
        )
    }
}
