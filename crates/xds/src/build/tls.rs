//! Mesh mTLS: the SDS secrets every sidecar uses, TLS 1.3 only, and the peer SAN checks
//! (exact SPIFFE IDs upstream, the trust domain downstream).

use std::collections::BTreeSet;

use causeway_model::SpiffeId;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;

use super::envoy::string_match;

/// Name of the bootstrap's static cluster that reaches `causeway agent`'s SDS socket.
pub const SDS_CLUSTER: &str = "sds-grpc";
/// SDS secret with the workload certificate and key.
pub const SECRET_CERT: &str = "default";
/// SDS secret with the trust bundle.
pub const SECRET_ROOT: &str = "ROOTCA";

fn sds_secret(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(core::ConfigSource {
            resource_api_version: core::ApiVersion::V3 as i32,
            config_source_specifier: Some(
                core::config_source::ConfigSourceSpecifier::ApiConfigSource(
                    core::ApiConfigSource {
                        api_type: core::api_config_source::ApiType::Grpc as i32,
                        transport_api_version: core::ApiVersion::V3 as i32,
                        grpc_services: vec![core::GrpcService {
                            target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                                core::grpc_service::EnvoyGrpc {
                                    cluster_name: SDS_CLUSTER.to_owned(),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }],
                        set_node_on_first_message_only: true,
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
    }
}

/// A URI SAN matched exactly, whatever characters it holds.
fn uri_san_exact(uri: &str) -> tls::SubjectAltNameMatcher {
    tls::SubjectAltNameMatcher {
        san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(uri.to_owned())),
            ignore_case: false,
        }),
        oid: String::new(),
    }
}

/// A URI SAN matched exactly, or by prefix when `pattern` ends in `*`.
pub(super) fn uri_san(pattern: &str) -> tls::SubjectAltNameMatcher {
    tls::SubjectAltNameMatcher {
        san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(string_match(pattern)),
        oid: String::new(),
    }
}

/// The TLS context every mesh connection uses: the workload certificate and the trust bundle
/// from SDS, TLS 1.3 only, and the peer's SPIFFE ID checked against `sans`.
pub(super) fn common_tls(
    sans: Vec<tls::SubjectAltNameMatcher>,
    alpn: &[&str],
) -> tls::CommonTlsContext {
    tls::CommonTlsContext {
        tls_params: Some(tls::TlsParameters {
            tls_minimum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
            tls_maximum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![sds_secret(SECRET_CERT)],
        validation_context_type: Some(
            tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                tls::common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(tls::CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds_secret(SECRET_ROOT)),
                    ..Default::default()
                },
            ),
        ),
        alpn_protocols: alpn.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

/// A URI SAN that no certificate of the mesh carries: the CA issues only
/// `spiffe://<td>/ns/<namespace>/sa/<account>`. Stands for "accept nobody" on a port with no
/// endpoint (an empty SAN list would accept every certificate the trust bundle validates).
fn no_peer_san(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/causeway/no-endpoint-with-a-known-identity")
}

/// Expected SANs of a service port's (or a route's) endpoints: exactly the SPIFFE IDs of the endpoints the view
/// includes, each an exact match (never a prefix, so an identity is never widened). Views leave
/// out endpoints without a known identity, so there is nothing to widen for; a port with no
/// endpoint gets a SAN no certificate carries.
pub(super) fn expected_sans(
    identities: &BTreeSet<SpiffeId>,
    trust_domain: &str,
) -> Vec<tls::SubjectAltNameMatcher> {
    if identities.is_empty() {
        return vec![uri_san_exact(&no_peer_san(trust_domain))];
    }
    identities
        .iter()
        .map(|id| uri_san_exact(&id.to_string()))
        .collect()
}
