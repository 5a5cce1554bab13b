//! An inline `RouteConfiguration` → [`RouteTable`]: virtual hosts, path matches, the cluster
//! (or weighted clusters) of each route, its timeout and its retry policy.

use std::collections::BTreeSet;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3 as previous_hosts;

use super::{
    decode, timeout_or, PathMatch, RetryBackoff, RetryConfig, RetryOn, RouteAction, RouteConfig,
    RouteTable, VirtualHostConfig,
};
use crate::dataplane::check::{duration, duration_or, u32_or, unsupported, At};
use crate::dataplane::weighted::route_weighted;
use crate::dataplane::ClusterSplit;
use crate::dataplane::ConfigError;

pub(super) const PREVIOUS_HOSTS: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

/// Envoy's route `timeout` when the field is unset.
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's `num_retries` when the field is unset.
const DEFAULT_NUM_RETRIES: u32 = 1;
/// Envoy's `per_try_timeout` when the field is unset: none, the route timeout applies.
const DEFAULT_PER_TRY_TIMEOUT: Option<Duration> = None;
/// Envoy's retry back-off without `retry_back_off`; `max_interval` defaults to 10 × base.
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_MAX_FACTOR: u32 = 10;

pub(super) fn route_table(
    at: &At<'_>,
    rc: &route::RouteConfiguration,
) -> Result<RouteTable, ConfigError> {
    #[rustfmt::skip]
    let route::RouteConfiguration {
        name, virtual_hosts,
        // Metadata is for Envoy's own filters.
        metadata: _,
        vhds, internal_only_headers, response_headers_to_add, response_headers_to_remove,
        request_headers_to_add, request_headers_to_remove, most_specific_header_mutations_wins,
        validate_clusters, max_direct_response_body_size_bytes, cluster_specifier_plugins,
        request_mirror_policies, ignore_port_in_host_matching, vhost_header,
        ignore_path_parameters_in_path_matching, typed_per_filter_config, route_specifiers,
    } = rc;
    unsupported!(
        at,
        vhds,
        internal_only_headers,
        response_headers_to_add,
        response_headers_to_remove,
        request_headers_to_add,
        request_headers_to_remove,
        most_specific_header_mutations_wins,
        validate_clusters,
        max_direct_response_body_size_bytes,
        cluster_specifier_plugins,
        request_mirror_policies,
        ignore_port_in_host_matching,
        vhost_header,
        ignore_path_parameters_in_path_matching,
        typed_per_filter_config,
        route_specifiers,
    );
    if virtual_hosts.is_empty() {
        return Err(at
            .field("virtual_hosts")
            .error("a route table needs at least one virtual host"));
    }
    let mut seen = BTreeSet::new();
    let virtual_hosts = virtual_hosts
        .iter()
        .enumerate()
        .map(|(i, vh)| virtual_host(&at.item("virtual_hosts", i), vh, &mut seen))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RouteTable {
        name: name.clone(),
        virtual_hosts,
    })
}

/// A virtual host; `seen` holds the domains of the table's earlier hosts (Envoy refuses
/// duplicates).
fn virtual_host(
    at: &At<'_>,
    vh: &route::VirtualHost,
    seen: &mut BTreeSet<String>,
) -> Result<VirtualHostConfig, ConfigError> {
    #[rustfmt::skip]
    let route::VirtualHost {
        name, domains, routes,
        // Metadata is for Envoy's own filters.
        metadata: _,
        matcher, require_tls, virtual_clusters, rate_limits, request_headers_to_add,
        request_headers_to_remove, response_headers_to_add, response_headers_to_remove, cors,
        typed_per_filter_config, include_request_attempt_count,
        include_attempt_count_in_response, retry_policy, retry_policy_typed_config,
        hedge_policy, include_is_timeout_retry_header, per_request_buffer_limit_bytes,
        request_body_buffer_limit, request_mirror_policies, route_specifiers,
    } = vh;
    #[rustfmt::skip]
    unsupported!(
        at,
        matcher, require_tls, virtual_clusters, rate_limits, request_headers_to_add,
        request_headers_to_remove, response_headers_to_add, response_headers_to_remove, cors,
        typed_per_filter_config, include_request_attempt_count,
        include_attempt_count_in_response, retry_policy, retry_policy_typed_config,
        hedge_policy, include_is_timeout_retry_header, per_request_buffer_limit_bytes,
        request_body_buffer_limit, request_mirror_policies, route_specifiers,
    );
    if domains.is_empty() {
        return Err(at.field("domains").error("a virtual host needs a domain"));
    }
    let mut names = Vec::with_capacity(domains.len());
    for (i, d) in domains.iter().enumerate() {
        let at = at.item("domains", i);
        let lower = d.to_ascii_lowercase();
        let stars = lower.matches('*').count();
        let wildcard_ok =
            stars == 0 || (stars == 1 && (lower.starts_with('*') || lower.ends_with('*')));
        if lower.is_empty() || !wildcard_ok {
            return Err(at.error(format!(
                "{d:?} is not a domain (a wildcard only at its start or end)"
            )));
        }
        if !seen.insert(lower.clone()) {
            return Err(at.error(format!("{d:?} is already a domain of this route table")));
        }
        names.push(lower);
    }
    if routes.is_empty() {
        return Err(at.field("routes").error("a virtual host needs a route"));
    }
    let routes = routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(&at.item("routes", i), r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VirtualHostConfig {
        name: name.clone(),
        domains: names,
        routes,
    })
}

fn route(at: &At<'_>, r: &route::Route) -> Result<RouteConfig, ConfigError> {
    #[rustfmt::skip]
    let route::Route {
        name, r#match, action,
        // Metadata is for Envoy's own filters; the prefix names statistics only.
        metadata: _, stat_prefix: _,
        decorator, typed_per_filter_config, request_headers_to_add, request_headers_to_remove,
        response_headers_to_add, response_headers_to_remove, tracing,
        per_request_buffer_limit_bytes, request_body_buffer_limit, route_specifiers,
    } = r;
    unsupported!(
        at,
        decorator,
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        tracing,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        route_specifiers,
    );
    let matches = match r#match {
        Some(m) => path_match(&at.field("match"), m)?,
        None => return Err(at.field("match").error("missing")),
    };
    use route::route::Action as A;
    let refused = |field: &str| Err(at.field(field).error("not supported (only route)"));
    let action = match action {
        Some(A::Route(a)) => route_action(&at.field("route"), a)?,
        Some(A::Redirect(_)) => return refused("redirect"),
        Some(A::DirectResponse(_)) => return refused("direct_response"),
        Some(A::FilterAction(_)) => return refused("filter_action"),
        Some(A::NonForwardingAction(_)) => return refused("non_forwarding_action"),
        None => return Err(at.field("route").error("missing: a route needs an action")),
    };
    Ok(RouteConfig {
        name: name.clone(),
        matches,
        action,
    })
}

fn path_match(at: &At<'_>, m: &route::RouteMatch) -> Result<PathMatch, ConfigError> {
    #[rustfmt::skip]
    let route::RouteMatch {
        path_specifier, case_sensitive,
        runtime_fraction, headers, query_parameters, cookies, grpc, tls_context,
        dynamic_metadata, filter_state,
    } = m;
    unsupported!(
        at,
        runtime_fraction,
        headers,
        query_parameters,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
    );
    if case_sensitive.as_ref().is_some_and(|b| !b.value) {
        return Err(at
            .field("case_sensitive")
            .error("case-insensitive path matching is not supported"));
    }
    use route::route_match::PathSpecifier as P;
    let refused = |field: &str| {
        Err(at
            .field(field)
            .error("not supported (only prefix and path matches)"))
    };
    match path_specifier {
        Some(P::Prefix(p)) if p.is_empty() || p.starts_with('/') => {
            Ok(PathMatch::Prefix(p.clone()))
        }
        Some(P::Path(p)) if p.starts_with('/') => Ok(PathMatch::Exact(p.clone())),
        Some(P::Prefix(p)) => Err(at
            .field("prefix")
            .error(format!("{p:?} does not start with /"))),
        Some(P::Path(p)) => Err(at
            .field("path")
            .error(format!("{p:?} does not start with /"))),
        Some(P::SafeRegex(_)) => refused("safe_regex"),
        Some(P::ConnectMatcher(_)) => refused("connect_matcher"),
        Some(P::PathSeparatedPrefix(_)) => refused("path_separated_prefix"),
        Some(P::PathMatchPolicy(_)) => refused("path_match_policy"),
        None => Err(at.error("missing a path match (prefix or path)")),
    }
}

fn route_action(at: &At<'_>, a: &route::RouteAction) -> Result<RouteAction, ConfigError> {
    #[rustfmt::skip]
    let route::RouteAction {
        cluster_specifier, timeout, retry_policy,
        cluster_not_found_response_code, metadata_match, prefix_rewrite, regex_rewrite,
        path_rewrite_policy, path_rewrite, append_x_forwarded_host, idle_timeout, flush_timeout,
        early_data_policy, retry_policy_typed_config, request_mirror_policies, priority,
        rate_limits, include_vh_rate_limits, hash_policy, cors, max_grpc_timeout,
        grpc_timeout_offset, upgrade_configs, internal_redirect_policy, internal_redirect_action,
        max_internal_redirects, hedge_policy, max_stream_duration, host_rewrite_specifier,
    } = a;
    #[rustfmt::skip]
    unsupported!(
        at,
        cluster_not_found_response_code, metadata_match, prefix_rewrite, regex_rewrite,
        path_rewrite_policy, path_rewrite, append_x_forwarded_host, idle_timeout, flush_timeout,
        early_data_policy, retry_policy_typed_config, request_mirror_policies, priority,
        rate_limits, include_vh_rate_limits, hash_policy, cors, max_grpc_timeout,
        grpc_timeout_offset, upgrade_configs, internal_redirect_policy, internal_redirect_action,
        max_internal_redirects, hedge_policy, max_stream_duration, host_rewrite_specifier,
    );
    use route::route_action::ClusterSpecifier as C;
    let refused = |field: &str| {
        Err(at
            .field(field)
            .error("not supported by the Causeway proxy (a cluster or weighted clusters)"))
    };
    let clusters = match cluster_specifier {
        Some(C::Cluster(c)) if !c.is_empty() => ClusterSplit::One(c.clone()),
        Some(C::Cluster(_)) | None => return Err(at.field("cluster").error("missing")),
        Some(C::WeightedClusters(w)) => route_weighted(&at.field("weighted_clusters"), w)?,
        Some(C::ClusterHeader(_)) => return refused("cluster_header"),
        Some(C::ClusterSpecifierPlugin(_)) => return refused("cluster_specifier_plugin"),
        Some(C::InlineClusterSpecifierPlugin(_)) => {
            return refused("inline_cluster_specifier_plugin")
        }
    };
    Ok(RouteAction {
        clusters,
        timeout: timeout_or(&at.field("timeout"), timeout, Some(DEFAULT_ROUTE_TIMEOUT))?,
        retry: retry_policy
            .as_ref()
            .map(|p| retry(&at.field("retry_policy"), p))
            .transpose()?,
    })
}

fn retry(at: &At<'_>, p: &route::RetryPolicy) -> Result<RetryConfig, ConfigError> {
    #[rustfmt::skip]
    let route::RetryPolicy {
        retry_on, num_retries, per_try_timeout, retry_host_predicate,
        host_selection_retry_max_attempts, retriable_status_codes, retry_back_off,
        per_try_idle_timeout, retry_priority, retry_options_predicates,
        rate_limited_retry_back_off, retriable_headers, retriable_request_headers,
        refresh_cluster_on_retry,
    } = p;
    unsupported!(
        at,
        per_try_idle_timeout,
        retry_priority,
        retry_options_predicates,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        refresh_cluster_on_retry,
    );
    let conditions = retry_conditions(&at.field("retry_on"), retry_on)?;
    let codes = status_codes(
        at,
        retriable_status_codes,
        conditions.contains(&RetryOn::RetriableStatusCodes),
    )?;
    for (i, predicate) in retry_host_predicate.iter().enumerate() {
        host_predicate(&at.item("retry_host_predicate", i), predicate)?;
    }
    let attempts = u32::try_from(*host_selection_retry_max_attempts).map_err(|_| {
        at.field("host_selection_retry_max_attempts").error(format!(
            "{host_selection_retry_max_attempts} is not a number of attempts"
        ))
    })?;
    Ok(RetryConfig {
        retry_on: conditions,
        num_retries: u32_or(num_retries, DEFAULT_NUM_RETRIES),
        retry_other_hosts: !retry_host_predicate.is_empty(),
        host_selection_retry_max_attempts: attempts,
        per_try_timeout: timeout_or(
            &at.field("per_try_timeout"),
            per_try_timeout,
            DEFAULT_PER_TRY_TIMEOUT,
        )?,
        retriable_status_codes: codes,
        backoff: backoff(&at.field("retry_back_off"), retry_back_off)?,
    })
}

/// `retry_on`: comma-separated condition names (blanks around them ignored, repeats dropped).
fn retry_conditions(at: &At<'_>, retry_on: &str) -> Result<Vec<RetryOn>, ConfigError> {
    let mut out = Vec::new();
    for name in retry_on.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(condition) = RetryOn::parse(name) else {
            let known: Vec<&str> = RetryOn::ALL.iter().map(|c| c.as_str()).collect();
            return Err(at.error(format!(
                "retry condition {name:?} is not supported (one of {})",
                known.join(", ")
            )));
        };
        if !out.contains(&condition) {
            out.push(condition);
        }
    }
    Ok(out)
}

/// `retriable_status_codes` of the retry policy at `at`.
fn status_codes(at: &At<'_>, codes: &[u32], wanted: bool) -> Result<Vec<u16>, ConfigError> {
    let at_codes = at.field("retriable_status_codes");
    if wanted && codes.is_empty() {
        return Err(
            at_codes.error("retriable-status-codes in retry_on needs the codes listed here")
        );
    }
    if !wanted && !codes.is_empty() {
        return Err(at_codes.error("has no effect without retriable-status-codes in retry_on"));
    }
    codes
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            u16::try_from(c)
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| {
                    at.item("retriable_status_codes", i)
                        .error(format!("{c} is not an HTTP status"))
                })
        })
        .collect()
}

/// Only `previous_hosts`: retries prefer hosts not tried yet.
fn host_predicate(
    at: &At<'_>,
    p: &route::retry_policy::RetryHostPredicate,
) -> Result<(), ConfigError> {
    use route::retry_policy::retry_host_predicate::ConfigType;
    let route::retry_policy::RetryHostPredicate { name, config_type } = p;
    let any = match config_type {
        Some(ConfigType::TypedConfig(a)) => a,
        None => {
            return Err(at
                .field("typed_config")
                .error(format!("missing for {name}")))
        }
    };
    if any.type_url != PREVIOUS_HOSTS {
        return Err(at.field("typed_config").error(format!(
            "retry host predicate {name} ({}) is not supported (the Causeway proxy honours \
             {PREVIOUS_HOSTS})",
            any.type_url
        )));
    }
    let previous_hosts::PreviousHostsPredicate {} = decode(at, any)?;
    Ok(())
}

fn backoff(
    at: &At<'_>,
    b: &Option<route::retry_policy::RetryBackOff>,
) -> Result<RetryBackoff, ConfigError> {
    let Some(route::retry_policy::RetryBackOff {
        base_interval,
        max_interval,
    }) = b
    else {
        return Ok(RetryBackoff {
            base_interval: DEFAULT_BACKOFF_BASE,
            max_interval: DEFAULT_BACKOFF_BASE.saturating_mul(BACKOFF_MAX_FACTOR),
        });
    };
    let at_base = at.field("base_interval");
    let base = match base_interval {
        Some(d) => duration(&at_base, d)?,
        None => return Err(at_base.error("missing")),
    };
    if base.is_zero() {
        return Err(at_base.error("must be positive"));
    }
    let at_max = at.field("max_interval");
    let max = duration_or(
        &at_max,
        max_interval,
        base.saturating_mul(BACKOFF_MAX_FACTOR),
    )?;
    if max < base {
        return Err(at_max.error("must not be shorter than base_interval"));
    }
    Ok(RetryBackoff {
        base_interval: base,
        max_interval: max,
    })
}
