//! `envoy.transport_sockets.tls` → [`UpstreamTlsConfig`] (a cluster's mTLS) and
//! [`DownstreamTlsConfig`] (an inbound filter chain's mTLS).
//!
//! What the control plane emits (`build::tls`) converts without loss: the workload certificate
//! and the trust bundle from the agent over SDS (secrets `default` and `ROOTCA` on cluster
//! `sds-grpc`), TLS 1.3 only, exact SPIFFE IDs upstream and the trust domain's prefix
//! downstream. Static bootstraps may instead name PEM files (`tls_certificates` with
//! `filename`, `validation_context.trusted_ca.filename`). Anything else is refused naming the
//! field: the Causeway proxy is mesh mTLS only (rustls, TLS 1.3, always a certificate and
//! always a verified peer).
//!
//! By concern: this module (the transport socket, both contexts, TLS parameters, ALPN, SNI),
//! `source` (where certificates and the trust bundle come from: SDS or files) and `validation`
//! (validation contexts, SAN matchers, string matchers).

// Deprecated fields are destructured too: set, they are refused like any other.
#![allow(deprecated)]

mod source;
mod validation;

use std::path::PathBuf;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use prost::Message;

use super::check::{unsupported, At};
use super::ConfigError;
use crate::build::SECRET_CERT;

pub(super) use validation::string_match;

/// The only transport socket the proxy honours.
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const UPSTREAM_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const DOWNSTREAM_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// A cluster's mTLS towards its endpoints.
#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct UpstreamTlsConfig {
    /// Server name sent in the ClientHello: Istio's `outbound_.<port>_._.<fqdn>` for mesh
    /// services, what east-west gateways route on. Never empty; lowercase.
    pub sni: String,
    /// The certificate presented to the server.
    pub client_certificate: CertificateSource,
    /// The roots the server's chain must lead to.
    pub trusted_ca: TrustedCaSource,
    /// The server's certificate must carry a SAN matching one of these: never empty, each an
    /// exact URI (a SPIFFE ID), so an upstream identity is never widened.
    pub expected_sans: Vec<SanMatch>,
    /// ALPN offered, in order (empty: none).
    pub alpn: Vec<String>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

/// An inbound filter chain's mTLS towards callers.
#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct DownstreamTlsConfig {
    /// The certificate presented to callers.
    pub server_certificate: CertificateSource,
    /// The roots a caller's chain must lead to.
    pub trusted_ca: TrustedCaSource,
    /// True: a caller without a certificate is refused. False (Envoy's default): a certificate
    /// is requested and verified when given, but not required.
    pub require_client_certificate: bool,
    /// A caller's certificate must carry a SAN matching one of these; empty: any certificate
    /// the roots validate (Envoy's rule).
    pub accepted_sans: Vec<SanMatch>,
    /// ALPN accepted, in order of preference (empty: none).
    pub alpn: Vec<String>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

/// Where a certificate and its private key come from.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub enum CertificateSource {
    /// The agent's SDS secret of this name (always `default`, the workload certificate).
    Sds { name: String },
    /// PEM files read from disk (static bootstraps): the chain, leaf first, and its key.
    Files {
        chain_path: PathBuf,
        key_path: PathBuf,
    },
}

/// Where the trust bundle comes from.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub enum TrustedCaSource {
    /// The agent's SDS secret of this name (always `ROOTCA`, the mesh trust bundle).
    Sds { name: String },
    /// A PEM bundle read from disk (static bootstraps).
    File { path: PathBuf },
}

/// One subject-alternative-name check on the peer's certificate.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub struct SanMatch {
    pub kind: SanKind,
    pub matcher: StringMatch,
}

#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    /// A URI SAN (SPIFFE IDs).
    Uri,
    /// A DNS SAN.
    Dns,
}

/// How a SAN is compared: case-sensitively, against a non-empty pattern (what the control plane
/// emits; suffix, substring, regex and custom matchers are refused).
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
        }
    }
}

/// A SAN matcher outside a TLS context (`at` is its position), with the rules of a downstream
/// context: URI or DNS, exact or prefix (the RBAC `mtls_authenticated` principal).
pub(super) fn san_match(
    at: &At<'_>,
    m: &tls::SubjectAltNameMatcher,
) -> Result<SanMatch, ConfigError> {
    validation::san_matcher(at, m, Side::Downstream)
}

/// A TLS protocol version the proxy speaks. rustls is configured for TLS 1.3 only, so that is
/// the only one accepted; a new variant comes with support for it.
#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls13,
}

/// Which end of the connection a context is for: Envoy's defaults differ, and upstream SAN
/// checks are stricter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Upstream,
    Downstream,
}

/// [`upstream_tls`] for the transport socket at `field` of `resource` (`Cluster <name>`,
/// `transport_socket`): the entry point from outside the conversion (tools, tests).
pub fn upstream_tls_at(
    resource: &str,
    field: &str,
    ts: &core::TransportSocket,
) -> Result<UpstreamTlsConfig, ConfigError> {
    upstream_tls(&At::resource(resource).field(field), ts)
}

/// [`downstream_tls`] for the transport socket at `field` of `resource` (`Listener <name>`,
/// `filter_chains[0].transport_socket`).
pub fn downstream_tls_at(
    resource: &str,
    field: &str,
    ts: &core::TransportSocket,
) -> Result<DownstreamTlsConfig, ConfigError> {
    downstream_tls(&At::resource(resource).field(field), ts)
}

/// A cluster's `transport_socket` (`at` is its position) as upstream mTLS.
pub(super) fn upstream_tls(
    at: &At<'_>,
    ts: &core::TransportSocket,
) -> Result<UpstreamTlsConfig, ConfigError> {
    let u: tls::UpstreamTlsContext = tls_context(at, ts, UPSTREAM_CONTEXT)?;
    let at = at.field("typed_config");
    #[rustfmt::skip]
    let tls::UpstreamTlsContext {
        common_tls_context, sni,
        auto_host_sni, auto_sni_san_validation, allow_renegotiation, max_session_keys,
        enforce_rsa_key_usage,
    } = &u;
    unsupported!(
        at,
        auto_host_sni,
        auto_sni_san_validation,
        allow_renegotiation,
        max_session_keys,
        enforce_rsa_key_usage,
    );
    let sni = server_name(&at.field("sni"), sni)?;
    let common = common_context(&at, common_tls_context, Side::Upstream)?;
    Ok(UpstreamTlsConfig {
        sni,
        client_certificate: common.certificate,
        trusted_ca: common.trusted_ca,
        expected_sans: common.sans,
        alpn: common.alpn,
        min_version: common.min_version,
        max_version: common.max_version,
    })
}

/// An inbound filter chain's `transport_socket` (`at` is its position) as downstream mTLS.
pub(super) fn downstream_tls(
    at: &At<'_>,
    ts: &core::TransportSocket,
) -> Result<DownstreamTlsConfig, ConfigError> {
    use tls::downstream_tls_context::SessionTicketKeysType as Tickets;
    let d: tls::DownstreamTlsContext = tls_context(at, ts, DOWNSTREAM_CONTEXT)?;
    let at = at.field("typed_config");
    #[rustfmt::skip]
    let tls::DownstreamTlsContext {
        common_tls_context, require_client_certificate, session_ticket_keys_type,
        require_sni, disable_stateful_session_resumption, session_timeout, ocsp_staple_policy,
        full_scan_certs_on_sni_mismatch, prefer_client_ciphers,
    } = &d;
    unsupported!(
        at,
        require_sni,
        disable_stateful_session_resumption,
        session_timeout,
        ocsp_staple_policy,
        full_scan_certs_on_sni_mismatch,
        prefer_client_ciphers,
    );
    match session_ticket_keys_type {
        // The proxy issues no stateless session tickets (rustls without a ticketer), so
        // stateless resumption is off whatever this says; resumption only saves round trips.
        None | Some(Tickets::DisableStatelessSessionResumption(_)) => {}
        Some(Tickets::SessionTicketKeys(_)) => {
            return Err(at
                .field("session_ticket_keys")
                .error("session ticket keys are not supported by the Causeway proxy"))
        }
        Some(Tickets::SessionTicketKeysSdsSecretConfig(_)) => {
            return Err(at
                .field("session_ticket_keys_sds_secret_config")
                .error("session ticket keys are not supported by the Causeway proxy"))
        }
    }
    let common = common_context(&at, common_tls_context, Side::Downstream)?;
    Ok(DownstreamTlsConfig {
        server_certificate: common.certificate,
        trusted_ca: common.trusted_ca,
        require_client_certificate: require_client_certificate.as_ref().is_some_and(|b| b.value),
        accepted_sans: common.sans,
        alpn: common.alpn,
        min_version: common.min_version,
        max_version: common.max_version,
    })
}

/// The TLS context a transport socket carries, decoded: the TLS socket with `want` inside.
fn tls_context<M: Message + Default>(
    at: &At<'_>,
    ts: &core::TransportSocket,
    want: &str,
) -> Result<M, ConfigError> {
    let core::TransportSocket { name, config_type } = ts;
    if name != TLS_SOCKET {
        return Err(at.field("name").error(format!(
            "{name:?} is not supported (the Causeway proxy honours {TLS_SOCKET})"
        )));
    }
    let at = at.field("typed_config");
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) = config_type else {
        return Err(at.error("missing"));
    };
    if any.type_url != want {
        return Err(at.error(format!(
            "{} is not supported here (the Causeway proxy honours {want})",
            any.type_url
        )));
    }
    M::decode(any.value.as_slice()).map_err(|e| at.error(format!("undecodable: {e}")))
}

/// What both contexts share, validated.
struct Common {
    certificate: CertificateSource,
    trusted_ca: TrustedCaSource,
    sans: Vec<SanMatch>,
    alpn: Vec<String>,
    min_version: TlsVersion,
    max_version: TlsVersion,
}

/// `common_tls_context` below `at` (the TLS context's position).
fn common_context(
    at: &At<'_>,
    c: &Option<tls::CommonTlsContext>,
    side: Side,
) -> Result<Common, ConfigError> {
    let at = at.field("common_tls_context");
    let Some(c) = c else {
        return Err(at.error("missing: the Causeway proxy needs a certificate and a trust bundle"));
    };
    #[rustfmt::skip]
    let tls::CommonTlsContext {
        tls_params, tls_certificates, tls_certificate_sds_secret_configs, alpn_protocols,
        validation_context_type,
        tls_certificate_provider_instance, custom_tls_certificate_selector,
        tls_certificate_certificate_provider, tls_certificate_certificate_provider_instance,
        custom_handshaker, key_log,
    } = c;
    unsupported!(
        at,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        custom_handshaker,
        key_log,
    );
    let certificate = match (
        tls_certificates.as_slice(),
        tls_certificate_sds_secret_configs.as_slice(),
    ) {
        ([one], []) => source::tls_certificate(&at.item("tls_certificates", 0), one)?,
        ([], [one]) => CertificateSource::Sds {
            name: source::sds_secret(
                &at.item("tls_certificate_sds_secret_configs", 0),
                one,
                SECRET_CERT,
            )?,
        },
        ([], []) => {
            return Err(at.field("tls_certificate_sds_secret_configs").error(
                "missing: the Causeway proxy always presents a certificate \
                 (tls_certificate_sds_secret_configs or tls_certificates)",
            ))
        }
        ([_, ..], [_, ..]) => {
            return Err(at
                .field("tls_certificates")
                .error("set together with tls_certificate_sds_secret_configs (give one)"))
        }
        (files, sds) => {
            let field = if files.is_empty() {
                "tls_certificate_sds_secret_configs"
            } else {
                "tls_certificates"
            };
            return Err(at.field(field).error(format!(
                "{} certificates; the Causeway proxy presents exactly one",
                files.len() + sds.len()
            )));
        }
    };
    let checks = validation::validation(&at, validation_context_type, side)?;
    let (min_version, max_version) = versions(&at.field("tls_params"), tls_params, side)?;
    Ok(Common {
        certificate,
        trusted_ca: checks.trusted_ca,
        sans: checks.sans,
        alpn: alpn(&at, alpn_protocols)?,
        min_version,
        max_version,
    })
}

/// `tls_params` (`at` is its position): the protocol versions, TLS 1.3 only.
fn versions(
    at: &At<'_>,
    p: &Option<tls::TlsParameters>,
    side: Side,
) -> Result<(TlsVersion, TlsVersion), ConfigError> {
    let unset = tls::TlsParameters::default();
    #[rustfmt::skip]
    let tls::TlsParameters {
        tls_minimum_protocol_version, tls_maximum_protocol_version,
        // Envoy applies cipher suites to TLS 1.0-1.2 only; with TLS 1.3 only they change
        // nothing (TLS 1.3 suites are rustls's own, all AEAD).
        cipher_suites: _,
        ecdh_curves, signature_algorithms, compliance_policies,
    } = p.as_ref().unwrap_or(&unset);
    unsupported!(at, ecdh_curves, signature_algorithms, compliance_policies);
    // Envoy's defaults: minimum TLS 1.2; maximum TLS 1.2 for clients, TLS 1.3 for servers.
    let min = version(
        &at.field("tls_minimum_protocol_version"),
        *tls_minimum_protocol_version,
        None,
    )?;
    let max_default = match side {
        Side::Upstream => None,
        Side::Downstream => Some(TlsVersion::Tls13),
    };
    let max = version(
        &at.field("tls_maximum_protocol_version"),
        *tls_maximum_protocol_version,
        max_default,
    )?;
    Ok((min, max))
}

/// One protocol version; `auto` is what Envoy's default for the field is, when the proxy
/// speaks it.
fn version(at: &At<'_>, v: i32, auto: Option<TlsVersion>) -> Result<TlsVersion, ConfigError> {
    use tls::tls_parameters::TlsProtocol as P;
    match P::try_from(v) {
        Ok(P::TlSv13) => Ok(TlsVersion::Tls13),
        Ok(P::TlsAuto) => auto.ok_or_else(|| {
            at.error(
                "unset, which is Envoy's TLSv1_2; the Causeway proxy speaks TLSv1_3 only \
                 (set TLSv1_3)",
            )
        }),
        Ok(other) => Err(at.error(format!(
            "{} is not supported: the Causeway proxy speaks TLSv1_3 only",
            other.as_str_name()
        ))),
        Err(_) => Err(at.error(format!("unknown value {v}"))),
    }
}

/// `alpn_protocols` below `at` (the common context's position): non-empty names of at most 255
/// bytes (the TLS limit).
fn alpn(at: &At<'_>, protocols: &[String]) -> Result<Vec<String>, ConfigError> {
    for (i, p) in protocols.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            return Err(at.item("alpn_protocols", i).error(format!(
                "{p:?} is not an ALPN protocol name (1 to 255 bytes)"
            )));
        }
    }
    Ok(protocols.to_vec())
}

/// The SNI of an upstream context (`at` is its position): a DNS name, underscores allowed
/// (Istio's `outbound_.80_._.<fqdn>`), no wildcard. Always needed: the proxy's TLS client sends
/// a name, and east-west gateways route on it.
fn server_name(at: &At<'_>, sni: &str) -> Result<String, ConfigError> {
    if sni.is_empty() {
        return Err(at.error("missing: the Causeway proxy always sends a server name"));
    }
    let valid = sni.len() <= 253
        && sni.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(at.error(format!("{sni:?} is not a server name")));
    }
    Ok(sni.to_ascii_lowercase())
}
