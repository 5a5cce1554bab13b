//! The RBAC filters' typed configs → [`RbacConfig`]: every field named, what the proxy does not
//! evaluate refused with its path (e.g. `rules.policies["demo/p[0]"].principals[0].source_ip`).

// Deprecated fields are destructured too: set, they are refused like any other.
#![allow(deprecated)]

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use envoy_types::pb::envoy::extensions::rbac::principals::mtls_authenticated::v3 as mtls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::super::check::{unsupported, At};
use super::super::tls::{san_match, string_match, SanMatch, StringMatch};
use super::super::ConfigError;
use super::{Permission, PolicyConfig, Principal, RbacAction, RbacConfig};

pub(super) const MTLS_AUTHENTICATED: &str =
    "type.googleapis.com/envoy.extensions.rbac.principals.mtls_authenticated.v3.Config";

const PERMISSIONS: &str =
    "any, and_rules, or_rules, not_rule, destination_port and url_path are supported";
const PRINCIPALS: &str = "any, and_ids, or_ids, not_id, authenticated and custom \
                          (envoy.rbac.principals.mtls_authenticated) are supported";

fn decode<M: Message + Default>(at: &At<'_>, any: &Any) -> Result<M, ConfigError> {
    M::decode(any.value.as_slice()).map_err(|e| at.error(format!("undecodable: {e}")))
}

/// An RBAC HTTP filter named `name` whose typed config is `any` (`at` is its position in
/// `http_filters`).
pub(in crate::dataplane) fn http_filter(
    at: &At<'_>,
    name: &str,
    any: &Any,
) -> Result<RbacConfig, ConfigError> {
    let at = at.field("typed_config");
    let r: http_rbac::Rbac = decode(&at, any)?;
    #[rustfmt::skip]
    let http_rbac::Rbac {
        rules, rules_stat_prefix, matcher, shadow_rules, shadow_matcher,
        // Statistics only (and shadow rules are refused).
        shadow_rules_stat_prefix: _, track_per_rule_stats: _,
    } = &r;
    refuse_matchers(&at, matcher, shadow_rules, shadow_matcher)?;
    let (action, policies) = rules_config(&at, rules)?;
    Ok(RbacConfig {
        name: name.to_owned(),
        stat_prefix: rules_stat_prefix.clone(),
        action,
        policies,
    })
}

/// An RBAC network filter named `name` whose typed config is `any` (`at` is its position in
/// `filters`).
pub(in crate::dataplane) fn network_filter(
    at: &At<'_>,
    name: &str,
    any: &Any,
) -> Result<RbacConfig, ConfigError> {
    use net_rbac::rbac::EnforcementType as E;
    let at = at.field("typed_config");
    let r: net_rbac::Rbac = decode(&at, any)?;
    #[rustfmt::skip]
    let net_rbac::Rbac {
        rules, stat_prefix, enforcement_type, matcher, shadow_rules, shadow_matcher, delay_deny,
        // Statistics only (and shadow rules are refused).
        shadow_rules_stat_prefix: _,
    } = &r;
    unsupported!(at, delay_deny);
    refuse_matchers(&at, matcher, shadow_rules, shadow_matcher)?;
    match E::try_from(*enforcement_type) {
        Ok(E::OneTimeOnFirstByte) => {}
        Ok(E::Continuous) => {
            return Err(at.field("enforcement_type").error(
                "CONTINUOUS is not supported: the Causeway proxy decides once per connection",
            ))
        }
        Err(_) => {
            return Err(at
                .field("enforcement_type")
                .error(format!("unknown value {enforcement_type}")))
        }
    }
    if stat_prefix.is_empty() {
        return Err(at.field("stat_prefix").error("missing (Envoy requires it)"));
    }
    let (action, policies) = rules_config(&at, rules)?;
    Ok(RbacConfig {
        name: name.to_owned(),
        stat_prefix: stat_prefix.clone(),
        action,
        policies,
    })
}

/// Shadow rules and the matcher API, which the proxy does not evaluate.
fn refuse_matchers<M, S>(
    at: &At<'_>,
    matcher: &Option<M>,
    shadow_rules: &Option<S>,
    shadow_matcher: &Option<M>,
) -> Result<(), ConfigError> {
    if matcher.is_some() {
        return Err(at
            .field("matcher")
            .error("the matcher API is not supported by the Causeway proxy (use rules)"));
    }
    let shadow = "shadow rules are not supported by the Causeway proxy (leave it unset)";
    if shadow_rules.is_some() {
        return Err(at.field("shadow_rules").error(shadow));
    }
    if shadow_matcher.is_some() {
        return Err(at.field("shadow_matcher").error(shadow));
    }
    Ok(())
}

/// `rules` below `at` (the typed config): the action and the policies.
fn rules_config(
    at: &At<'_>,
    rules: &Option<rbac::Rbac>,
) -> Result<(RbacAction, BTreeMap<String, PolicyConfig>), ConfigError> {
    use rbac::rbac::Action as A;
    let at = at.field("rules");
    let Some(rules) = rules else {
        return Err(
            at.error("missing: without rules the filter enforces nothing (leave the filter out)")
        );
    };
    let rbac::Rbac {
        action,
        policies,
        audit_logging_options,
    } = rules;
    unsupported!(at, audit_logging_options);
    let action = match A::try_from(*action) {
        Ok(A::Allow) => RbacAction::Allow,
        Ok(A::Deny) => RbacAction::Deny,
        Ok(A::Log) => {
            return Err(at
                .field("action")
                .error("LOG is not supported by the Causeway proxy (ALLOW or DENY)"))
        }
        Err(_) => return Err(at.field("action").error(format!("unknown value {action}"))),
    };
    // In name order, so that the same policy is named on every run (the map is unordered).
    let mut sorted: Vec<(&String, &rbac::Policy)> = policies.iter().collect();
    sorted.sort_unstable_by_key(|(name, _)| *name);
    let mut out = BTreeMap::new();
    for (name, p) in sorted {
        let policy = policy(&at.field(&format!("policies[{name:?}]")), p)?;
        out.insert(name.clone(), policy);
    }
    Ok((action, out))
}

fn policy(at: &At<'_>, p: &rbac::Policy) -> Result<PolicyConfig, ConfigError> {
    #[rustfmt::skip]
    let rbac::Policy { permissions, principals, condition, checked_condition, cel_config } = p;
    if condition.is_some() || checked_condition.is_some() || cel_config.is_some() {
        let field = match (condition, checked_condition) {
            (Some(_), _) => "condition",
            (_, Some(_)) => "checked_condition",
            _ => "cel_config",
        };
        return Err(at
            .field(field)
            .error("CEL conditions are not supported by the Causeway proxy"));
    }
    if permissions.is_empty() {
        return Err(at.field("permissions").error(
            "empty: Envoy rejects a policy without permissions (`any: true` matches everything)",
        ));
    }
    if principals.is_empty() {
        return Err(at.field("principals").error(
            "empty: Envoy rejects a policy without principals (`any: true` matches everyone)",
        ));
    }
    Ok(PolicyConfig {
        permissions: list(at, "permissions", permissions, permission)?,
        principals: list(at, "principals", principals, principal)?,
    })
}

/// Converts each element of the list field `name` below `at`.
fn list<T, U>(
    at: &At<'_>,
    name: &str,
    items: &[T],
    convert: fn(&At<'_>, &T) -> Result<U, ConfigError>,
) -> Result<Vec<U>, ConfigError> {
    items
        .iter()
        .enumerate()
        .map(|(i, x)| convert(&at.item(name, i), x))
        .collect()
}

/// The elements of a non-empty set (`and_rules`, `or_ids`, …) at `at`, its list being `name`.
fn set<T, U>(
    at: &At<'_>,
    name: &str,
    items: &[T],
    convert: fn(&At<'_>, &T) -> Result<U, ConfigError>,
) -> Result<Vec<U>, ConfigError> {
    if items.is_empty() {
        return Err(at.field(name).error("empty (Envoy rejects an empty set)"));
    }
    list(at, name, items, convert)
}

fn permission(at: &At<'_>, p: &rbac::Permission) -> Result<Permission, ConfigError> {
    use rbac::permission::Rule as R;
    let rbac::Permission { rule } = p;
    let refused = |field: &str| {
        Err(at.field(field).error(format!(
            "not supported by the Causeway proxy ({PERMISSIONS})"
        )))
    };
    match rule {
        Some(R::Any(true)) => Ok(Permission::Any),
        Some(R::Any(false)) => Err(at.field("any").error("false (Envoy only accepts true)")),
        Some(R::AndRules(s)) => Ok(Permission::And(set(
            &at.field("and_rules"),
            "rules",
            &s.rules,
            permission,
        )?)),
        Some(R::OrRules(s)) => Ok(Permission::Or(set(
            &at.field("or_rules"),
            "rules",
            &s.rules,
            permission,
        )?)),
        Some(R::NotRule(p)) => Ok(Permission::Not(Box::new(permission(
            &at.field("not_rule"),
            p,
        )?))),
        Some(R::DestinationPort(port)) => u16::try_from(*port)
            .map(Permission::DestinationPort)
            .map_err(|_| {
                at.field("destination_port")
                    .error(format!("{port} is not a port"))
            }),
        Some(R::UrlPath(m)) => Ok(Permission::UrlPath(url_path(&at.field("url_path"), m)?)),
        Some(R::Header(_)) => refused("header"),
        Some(R::DestinationIp(_)) => refused("destination_ip"),
        Some(R::DestinationPortRange(_)) => refused("destination_port_range"),
        Some(R::Metadata(_)) => refused("metadata"),
        Some(R::RequestedServerName(_)) => refused("requested_server_name"),
        Some(R::Matcher(_)) => refused("matcher"),
        Some(R::UriTemplate(_)) => refused("uri_template"),
        Some(R::SourcedMetadata(_)) => refused("sourced_metadata"),
        None => Err(at.error(format!("no rule ({PERMISSIONS})"))),
    }
}

fn url_path(at: &At<'_>, m: &matcher::PathMatcher) -> Result<StringMatch, ConfigError> {
    let matcher::PathMatcher { rule } = m;
    match rule {
        Some(matcher::path_matcher::Rule::Path(s)) => string_match(&at.field("path"), s),
        None => Err(at.field("path").error("missing")),
    }
}

fn principal(at: &At<'_>, p: &rbac::Principal) -> Result<Principal, ConfigError> {
    use rbac::principal::Identifier as I;
    let rbac::Principal { identifier } = p;
    let refused = |field: &str| {
        Err(at.field(field).error(format!(
            "not supported by the Causeway proxy ({PRINCIPALS})"
        )))
    };
    match identifier {
        Some(I::Any(true)) => Ok(Principal::Any),
        Some(I::Any(false)) => Err(at.field("any").error("false (Envoy only accepts true)")),
        Some(I::AndIds(s)) => Ok(Principal::And(set(
            &at.field("and_ids"),
            "ids",
            &s.ids,
            principal,
        )?)),
        Some(I::OrIds(s)) => Ok(Principal::Or(set(
            &at.field("or_ids"),
            "ids",
            &s.ids,
            principal,
        )?)),
        Some(I::NotId(p)) => Ok(Principal::Not(Box::new(principal(&at.field("not_id"), p)?))),
        Some(I::Authenticated(a)) => authenticated(&at.field("authenticated"), a),
        Some(I::Custom(ext)) => mtls_authenticated(&at.field("custom"), ext),
        Some(I::SourceIp(_)) => refused("source_ip"),
        Some(I::DirectRemoteIp(_)) => refused("direct_remote_ip"),
        Some(I::RemoteIp(_)) => refused("remote_ip"),
        Some(I::Header(_)) => refused("header"),
        Some(I::UrlPath(_)) => refused("url_path"),
        Some(I::Metadata(_)) => refused("metadata"),
        Some(I::FilterState(_)) => refused("filter_state"),
        Some(I::SourcedMetadata(_)) => refused("sourced_metadata"),
        None => Err(at.error(format!("no identifier ({PRINCIPALS})"))),
    }
}

fn authenticated(
    at: &At<'_>,
    a: &rbac::principal::Authenticated,
) -> Result<Principal, ConfigError> {
    let rbac::principal::Authenticated { principal_name } = a;
    let at = at.field("principal_name");
    match principal_name {
        Some(m) => Ok(Principal::Authenticated(string_match(&at, m)?)),
        None => Err(at.error(
            "unset, which Envoy matches on any TLS connection, with or without a certificate: \
             not supported by the Causeway proxy (name the principal)",
        )),
    }
}

/// The `envoy.rbac.principals.mtls_authenticated` extension (selected by its type URL, as
/// Envoy does; the name is informational) with a SAN matcher.
fn mtls_authenticated(
    at: &At<'_>,
    ext: &core::TypedExtensionConfig,
) -> Result<Principal, ConfigError> {
    let core::TypedExtensionConfig {
        name: _,
        typed_config,
    } = ext;
    let at = at.field("typed_config");
    let any = match typed_config {
        Some(a) if a.type_url == MTLS_AUTHENTICATED => a,
        Some(a) => {
            return Err(at.error(format!(
                "{} is not supported (the Causeway proxy honours {MTLS_AUTHENTICATED})",
                a.type_url
            )))
        }
        None => return Err(at.error("missing")),
    };
    let mtls::Config {
        san_matcher,
        any_validated_client_certificate,
    } = decode(&at, any)?;
    if any_validated_client_certificate {
        return Err(at
            .field("any_validated_client_certificate")
            .error("not supported by the Causeway proxy (match the caller with san_matcher)"));
    }
    let at = at.field("san_matcher");
    let Some(m) = san_matcher else {
        return Err(at.error("missing"));
    };
    let SanMatch { kind, matcher } = san_match(&at, &m)?;
    Ok(Principal::MtlsSan { kind, matcher })
}
