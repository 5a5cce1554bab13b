//! The HTTP connection manager (the typed config of the
//! `envoy.filters.network.http_connection_manager` network filter) → [`HttpManagerConfig`]:
//! codec, stream timeouts, the client-certificate header, the HTTP filters (RBAC, converted by
//! `dataplane::rbac`, then the router) and the inline route table (`route.rs`).

// Deprecated fields are destructured too: set, they are refused like any other.
#![allow(deprecated)]

mod route;

use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf as pb;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::check::{duration, unsupported, At};
use super::rbac::{RbacConfig, HTTP_RBAC};
use super::ConfigError;

/// The type URL of the HTTP connection manager's typed config.
pub const HTTP_CONNECTION_MANAGER: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// Envoy's `stream_idle_timeout` when the field is unset.
const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Envoy's `request_headers_timeout` when the field is unset: none.
const DEFAULT_REQUEST_HEADERS_TIMEOUT: Option<Duration> = None;

/// An HTTP connection manager: how the connections of a filter chain are served as HTTP.
#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct HttpManagerConfig {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: RouteTable,
    /// Reset a stream without activity for this long (None: never; Envoy's default is 5 min).
    pub stream_idle_timeout: Option<Duration>,
    /// Reset a stream whose request headers are not complete this long after its first byte
    /// (None: never, Envoy's default).
    pub request_headers_timeout: Option<Duration>,
    /// `x-forwarded-client-cert` towards the upstream. Any XFCC header the caller sent is always
    /// removed; None (SANITIZE, Envoy's default) sets none, Some (SANITIZE_SET) sets one
    /// describing the caller's verified certificate.
    pub forward_client_cert: Option<XfccConfig>,
    /// The RBAC HTTP filters in order (DENY before ALLOW, as the control plane emits them), run
    /// before the router: the first that refuses a request decides (`rbac::authorize`).
    pub rbac: Vec<RbacConfig>,
}

/// Which HTTP versions the downstream side speaks.
#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/2 when ALPN or the connection preface says so, HTTP/1.1 otherwise.
    Auto,
    Http1,
    Http2,
}

/// What the XFCC header set under SANITIZE_SET carries besides `By` (the proxy's own URI SAN)
/// and `Hash` (of the caller's certificate), which Envoy always includes.
#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq, Default)]
pub struct XfccConfig {
    pub subject: bool,
    /// The caller's certificate, URL-encoded PEM.
    pub cert: bool,
    /// The caller's certificate chain, URL-encoded PEM.
    pub chain: bool,
    pub dns: bool,
    /// The caller's URI SAN: its SPIFFE ID.
    pub uri: bool,
    pub issuer: bool,
}

/// An inline route configuration.
#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHostConfig>,
}

/// Routes for the requests whose `:authority` matches one of `domains`.
#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct VirtualHostConfig {
    pub name: String,
    /// Lowercase; `*` alone matches anything, `*.example.com` a suffix, `example.*` a prefix.
    pub domains: Vec<String>,
    /// Tried in order; the first match wins.
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub matches: PathMatch,
    pub action: RouteAction,
}

/// How a route matches the request path (case-sensitive, Envoy's default).
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

/// Forward to one cluster, or to one of several by weight (one pick per request, retries
/// staying with it).
#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct RouteAction {
    pub clusters: super::ClusterSplit,
    /// The whole request, retries included, must complete within this (None: no limit;
    /// Envoy's default is 15 s).
    pub timeout: Option<Duration>,
    pub retry: Option<RetryConfig>,
}

/// When and how often a request is retried.
#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retry when any of these happens (no duplicates, in the order given).
    pub retry_on: Vec<RetryOn>,
    /// Retries after the first attempt (Envoy's default is 1).
    pub num_retries: u32,
    /// Prefer hosts not tried yet (Envoy's `previous_hosts` retry host predicate).
    pub retry_other_hosts: bool,
    /// How often host selection is redone when the chosen host was already tried; 0 (the
    /// default) uses the first choice.
    pub host_selection_retry_max_attempts: u32,
    /// Each attempt must complete within this (None: only the route timeout applies).
    pub per_try_timeout: Option<Duration>,
    /// Upstream statuses that trigger a retry under [`RetryOn::RetriableStatusCodes`].
    pub retriable_status_codes: Vec<u16>,
    pub backoff: RetryBackoff,
}

/// Exponential back-off between retries (jittered), Envoy's defaults being 25 ms and 250 ms.
#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    pub base_interval: Duration,
    pub max_interval: Duration,
}

/// A retry condition of Envoy's `retry_on` (HTTP and gRPC).
#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// Any 5xx response, or no response (reset, connect failure, timeout of an attempt).
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503 or 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// No response: disconnect, reset or read timeout.
    #[serde(rename = "reset")]
    Reset,
    /// Like `reset`, but only before the request was sent upstream.
    #[serde(rename = "reset-before-request")]
    ResetBeforeRequest,
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The upstream reset the stream with REFUSED_STREAM (HTTP/2).
    #[serde(rename = "refused-stream")]
    RefusedStream,
    /// 409.
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    /// A status of [`RetryConfig::retriable_status_codes`].
    #[serde(rename = "retriable-status-codes")]
    RetriableStatusCodes,
    /// gRPC status CANCELLED in the response headers.
    #[serde(rename = "cancelled")]
    Cancelled,
    /// gRPC status DEADLINE_EXCEEDED.
    #[serde(rename = "deadline-exceeded")]
    DeadlineExceeded,
    /// gRPC status INTERNAL.
    #[serde(rename = "internal")]
    Internal,
    /// gRPC status RESOURCE_EXHAUSTED.
    #[serde(rename = "resource-exhausted")]
    ResourceExhausted,
    /// gRPC status UNAVAILABLE.
    #[serde(rename = "unavailable")]
    Unavailable,
}

impl RetryOn {
    pub const ALL: [RetryOn; 13] = [
        RetryOn::FiveXx,
        RetryOn::GatewayError,
        RetryOn::Reset,
        RetryOn::ResetBeforeRequest,
        RetryOn::ConnectFailure,
        RetryOn::RefusedStream,
        RetryOn::Retriable4xx,
        RetryOn::RetriableStatusCodes,
        RetryOn::Cancelled,
        RetryOn::DeadlineExceeded,
        RetryOn::Internal,
        RetryOn::ResourceExhausted,
        RetryOn::Unavailable,
    ];

    /// Envoy's name of the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::FiveXx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Reset => "reset",
            RetryOn::ResetBeforeRequest => "reset-before-request",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::RefusedStream => "refused-stream",
            RetryOn::Retriable4xx => "retriable-4xx",
            RetryOn::RetriableStatusCodes => "retriable-status-codes",
            RetryOn::Cancelled => "cancelled",
            RetryOn::DeadlineExceeded => "deadline-exceeded",
            RetryOn::Internal => "internal",
            RetryOn::ResourceExhausted => "resource-exhausted",
            RetryOn::Unavailable => "unavailable",
        }
    }

    /// The condition Envoy names `name`, if the proxy honours it.
    pub fn parse(name: &str) -> Option<RetryOn> {
        RetryOn::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// Converts the typed config of an HTTP connection manager network filter; errors name
/// `resource` and the field's path inside the typed config.
pub fn http_manager_config(resource: &str, any: &Any) -> Result<HttpManagerConfig, ConfigError> {
    http_manager(&At::resource(resource), any)
}

/// Converts the typed config of the `envoy.filters.network.http_connection_manager` network
/// filter at `at` (its position in the listener); fields are named below `at`.
pub(in crate::dataplane) fn http_manager(
    at: &At<'_>,
    any: &Any,
) -> Result<HttpManagerConfig, ConfigError> {
    if any.type_url != HTTP_CONNECTION_MANAGER {
        return Err(at.field("typed_config").error(format!(
            "{} is not supported here (expected {HTTP_CONNECTION_MANAGER})",
            any.type_url
        )));
    }
    manager(at, &decode(at, any)?)
}

fn decode<M: Message + Default>(at: &At<'_>, any: &Any) -> Result<M, ConfigError> {
    M::decode(any.value.as_slice())
        .map_err(|e| at.field("typed_config").error(format!("undecodable: {e}")))
}

/// A timeout: `default` when unset, none when zero (Envoy's convention).
fn timeout_or(
    at: &At<'_>,
    d: &Option<pb::Duration>,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    match d {
        None => Ok(default),
        Some(d) => Ok(Some(duration(at, d)?).filter(|d| !d.is_zero())),
    }
}

fn manager(at: &At<'_>, m: &hcm::HttpConnectionManager) -> Result<HttpManagerConfig, ConfigError> {
    #[rustfmt::skip]
    let hcm::HttpConnectionManager {
        codec_type, stat_prefix, http_filters, stream_idle_timeout, request_headers_timeout,
        forward_client_cert_details, set_current_client_cert_details, route_specifier,
        add_user_agent, tracing, common_http_protocol_options, http1_safe_max_connection_duration,
        http_protocol_options, http2_protocol_options, http3_protocol_options, server_name,
        server_header_transformation, scheme_header_transformation, max_request_headers_kb,
        stream_flush_timeout, request_timeout, drain_timeout, drain_timeout_jitter,
        delayed_close_timeout, access_log, access_log_flush_interval,
        flush_access_log_on_new_request, access_log_options, use_remote_address,
        xff_num_trusted_hops, original_ip_detection_extensions, early_header_mutation_extensions,
        internal_address_config, skip_xff_append, via, generate_request_id,
        preserve_external_request_id, always_set_request_id_in_response,
        forward_client_cert_matcher, proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6, upgrade_configs, normalize_path,
        merge_slashes, path_with_escaped_slashes_action, request_id_extension,
        local_reply_config, strip_matching_host_port, stream_error_on_invalid_http_message,
        path_normalization_options, strip_trailing_host_dot, proxy_status_config,
        typed_header_validation_config, append_x_forwarded_port, append_local_overload,
        add_proxy_protocol_connection_state, forward_proto_config, strip_port_mode,
    } = m;
    #[rustfmt::skip]
    unsupported!(
        at,
        add_user_agent, tracing, common_http_protocol_options, http1_safe_max_connection_duration,
        http_protocol_options, http2_protocol_options, http3_protocol_options, server_name,
        server_header_transformation, scheme_header_transformation, max_request_headers_kb,
        stream_flush_timeout, request_timeout, drain_timeout, drain_timeout_jitter,
        delayed_close_timeout, access_log, access_log_flush_interval,
        flush_access_log_on_new_request, access_log_options, use_remote_address,
        xff_num_trusted_hops, original_ip_detection_extensions, early_header_mutation_extensions,
        internal_address_config, skip_xff_append, via, generate_request_id,
        preserve_external_request_id, always_set_request_id_in_response,
        forward_client_cert_matcher, proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6, upgrade_configs, normalize_path,
        merge_slashes, path_with_escaped_slashes_action, request_id_extension,
        local_reply_config, strip_matching_host_port, stream_error_on_invalid_http_message,
        path_normalization_options, strip_trailing_host_dot, proxy_status_config,
        typed_header_validation_config, append_x_forwarded_port, append_local_overload,
        add_proxy_protocol_connection_state, forward_proto_config, strip_port_mode,
    );
    Ok(HttpManagerConfig {
        stat_prefix: stat_prefix.clone(),
        codec: codec(&at.field("codec_type"), *codec_type)?,
        routes: routes(at, route_specifier)?,
        stream_idle_timeout: timeout_or(
            &at.field("stream_idle_timeout"),
            stream_idle_timeout,
            Some(DEFAULT_STREAM_IDLE_TIMEOUT),
        )?,
        request_headers_timeout: timeout_or(
            &at.field("request_headers_timeout"),
            request_headers_timeout,
            DEFAULT_REQUEST_HEADERS_TIMEOUT,
        )?,
        forward_client_cert: client_cert(
            at,
            *forward_client_cert_details,
            set_current_client_cert_details,
        )?,
        rbac: filters(at, http_filters)?,
    })
}

/// The routes: inline only.
fn routes(
    at: &At<'_>,
    spec: &Option<hcm::http_connection_manager::RouteSpecifier>,
) -> Result<RouteTable, ConfigError> {
    use hcm::http_connection_manager::RouteSpecifier as Routes;
    match spec {
        Some(Routes::RouteConfig(rc)) => route::route_table(&at.field("route_config"), rc),
        Some(Routes::Rds(_)) => Err(at
            .field("rds")
            .error("RDS is not supported: the control plane sends routes inline (route_config)")),
        Some(Routes::ScopedRoutes(_)) => Err(at
            .field("scoped_routes")
            .error("not supported (use route_config)")),
        None => Err(at.field("route_config").error("missing")),
    }
}

fn codec(at: &At<'_>, value: i32) -> Result<Codec, ConfigError> {
    use hcm::http_connection_manager::CodecType as C;
    match C::try_from(value) {
        Ok(C::Auto) => Ok(Codec::Auto),
        Ok(C::Http1) => Ok(Codec::Http1),
        Ok(C::Http2) => Ok(Codec::Http2),
        Ok(C::Http3) => Err(at.error("HTTP/3 is not supported")),
        Err(_) => Err(at.error(format!("unknown value {value}"))),
    }
}

/// The XFCC mode: only the two that never pass on a header the caller wrote.
fn client_cert(
    at: &At<'_>,
    mode: i32,
    details: &Option<hcm::http_connection_manager::SetCurrentClientCertDetails>,
) -> Result<Option<XfccConfig>, ConfigError> {
    use hcm::http_connection_manager::ForwardClientCertDetails as F;
    let at_details = at.field("set_current_client_cert_details");
    match F::try_from(mode) {
        Ok(F::Sanitize) if details.is_some() => {
            Err(at_details
                .error("has no effect unless forward_client_cert_details is SANITIZE_SET"))
        }
        Ok(F::Sanitize) => Ok(None),
        Ok(F::SanitizeSet) => Ok(Some(match details {
            Some(d) => xfcc_details(&at_details, d)?,
            None => XfccConfig::default(),
        })),
        Ok(other) => Err(at.field("forward_client_cert_details").error(format!(
            "{} is not supported: it passes on a header the caller wrote (SANITIZE or \
             SANITIZE_SET)",
            other.as_str_name()
        ))),
        Err(_) => Err(at
            .field("forward_client_cert_details")
            .error(format!("unknown value {mode}"))),
    }
}

fn xfcc_details(
    at: &At<'_>,
    d: &hcm::http_connection_manager::SetCurrentClientCertDetails,
) -> Result<XfccConfig, ConfigError> {
    let hcm::http_connection_manager::SetCurrentClientCertDetails {
        subject,
        cert,
        chain,
        dns,
        uri,
        issuer,
        format,
    } = d;
    // Only the text format (the default) is supported, not JSON.
    unsupported!(at, format);
    Ok(XfccConfig {
        subject: subject.as_ref().is_some_and(|b| b.value),
        cert: *cert,
        chain: *chain,
        dns: *dns,
        uri: *uri,
        issuer: *issuer,
    })
}

enum HttpFilter {
    Rbac(RbacConfig),
    Router,
}

/// The HTTP filters: RBAC filters, then the router, which is required and last.
fn filters(at: &At<'_>, filters: &[hcm::HttpFilter]) -> Result<Vec<RbacConfig>, ConfigError> {
    let Some((last, rest)) = filters.split_last() else {
        return Err(at
            .field("http_filters")
            .error("missing: the router (envoy.filters.http.router) must be the last filter"));
    };
    let mut rbac = Vec::new();
    for (i, f) in rest.iter().enumerate() {
        let at = at.item("http_filters", i);
        match http_filter(&at, f)? {
            HttpFilter::Rbac(config) => rbac.push(config),
            HttpFilter::Router => {
                return Err(at.error("the router must be the last HTTP filter"));
            }
        }
    }
    let at_last = at.item("http_filters", rest.len());
    match http_filter(&at_last, last)? {
        HttpFilter::Router => Ok(rbac),
        HttpFilter::Rbac(_) => Err(at_last.error(format!(
            "{}: the last HTTP filter must be the router (envoy.filters.http.router)",
            last.name
        ))),
    }
}

fn http_filter(at: &At<'_>, f: &hcm::HttpFilter) -> Result<HttpFilter, ConfigError> {
    let hcm::HttpFilter {
        name,
        is_optional,
        disabled,
        config_type,
    } = f;
    unsupported!(at, is_optional, disabled);
    let any = match config_type {
        Some(hcm::http_filter::ConfigType::TypedConfig(a)) => a,
        Some(hcm::http_filter::ConfigType::ConfigDiscovery(_)) => {
            return Err(at
                .field("config_discovery")
                .error("not supported (filters are sent inline)"))
        }
        None => {
            return Err(at
                .field("typed_config")
                .error(format!("missing for {name}")))
        }
    };
    match any.type_url.as_str() {
        ROUTER => {
            router_filter(at, &decode(at, any)?)?;
            Ok(HttpFilter::Router)
        }
        HTTP_RBAC => Ok(HttpFilter::Rbac(super::rbac::http_filter(at, name, any)?)),
        other => Err(at.field("typed_config").error(format!(
            "HTTP filter {name} ({other}) is not supported (the Causeway proxy honours \
             {HTTP_RBAC} and {ROUTER})"
        ))),
    }
}

fn router_filter(at: &At<'_>, r: &router::Router) -> Result<(), ConfigError> {
    #[rustfmt::skip]
    let router::Router {
        // Statistics only.
        dynamic_stats: _, suppress_grpc_request_failure_code_stats: _,
        start_child_span, upstream_log, upstream_log_options, suppress_envoy_headers,
        strict_check_headers, respect_expected_rq_timeout, upstream_http_filters,
        reject_connect_request_early_data,
    } = r;
    unsupported!(
        at,
        start_child_span,
        upstream_log,
        upstream_log_options,
        suppress_envoy_headers,
        strict_check_headers,
        respect_expected_rq_timeout,
        upstream_http_filters,
        reject_connect_request_early_data,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Name;

    use super::*;
    use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3 as previous_hosts;

    #[test]
    fn type_urls_are_the_messages_own() {
        assert_eq!(
            HTTP_CONNECTION_MANAGER,
            hcm::HttpConnectionManager::type_url()
        );
        assert_eq!(ROUTER, router::Router::type_url());
        assert_eq!(
            route::PREVIOUS_HOSTS,
            previous_hosts::PreviousHostsPredicate::type_url()
        );
    }
}
