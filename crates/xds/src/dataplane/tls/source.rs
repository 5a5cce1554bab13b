//! Where certificates and trust bundles come from: SDS secrets of the local agent (what the
//! control plane emits) or PEM files (static bootstraps). Inline PEM is refused, so key
//! material never sits in configuration the proxy dumps or logs; error messages never quote
//! it.

// Deprecated fields are destructured too: set, they are refused like any other.
#![allow(deprecated)]

use std::path::PathBuf;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;

use super::super::check::{unsupported, At};
use super::super::ConfigError;
use super::CertificateSource;
use crate::build::{SDS_CLUSTER, SECRET_CERT, SECRET_ROOT};

/// A certificate and key from files (`at` is the `tls_certificates` entry's position).
pub(super) fn tls_certificate(
    at: &At<'_>,
    c: &tls::TlsCertificate,
) -> Result<CertificateSource, ConfigError> {
    #[rustfmt::skip]
    let tls::TlsCertificate {
        certificate_chain, private_key,
        pkcs12, watched_directory, private_key_provider, password, ocsp_staple,
        signed_certificate_timestamp, tls_params,
    } = c;
    unsupported!(
        at,
        pkcs12,
        watched_directory,
        private_key_provider,
        password,
        ocsp_staple,
        signed_certificate_timestamp,
        tls_params,
    );
    Ok(CertificateSource::Files {
        chain_path: file(&at.field("certificate_chain"), certificate_chain.as_ref())?,
        key_path: file(&at.field("private_key"), private_key.as_ref())?,
    })
}

/// A data source that names a file (`at` is its position).
pub(super) fn file(at: &At<'_>, d: Option<&core::DataSource>) -> Result<PathBuf, ConfigError> {
    use core::data_source::Specifier as S;
    let Some(core::DataSource {
        watched_directory,
        specifier,
    }) = d
    else {
        return Err(at.error("missing (a filename)"));
    };
    unsupported!(at, watched_directory);
    const INLINE: &str = "inline PEM is not supported by the Causeway proxy (use filename)";
    match specifier {
        Some(S::Filename(f)) if !f.is_empty() => Ok(PathBuf::from(f)),
        Some(S::Filename(_)) => Err(at.field("filename").error("empty")),
        Some(S::InlineBytes(_)) => Err(at.field("inline_bytes").error(INLINE)),
        Some(S::InlineString(_)) => Err(at.field("inline_string").error(INLINE)),
        Some(S::EnvironmentVariable(_)) => Err(at
            .field("environment_variable")
            .error("not supported by the Causeway proxy (use filename)")),
        None => Err(at.error("missing (a filename)")),
    }
}

/// An SDS secret reference (`at` is its position) that must be `want` from the agent: the
/// proxy's SDS client follows exactly `default` and `ROOTCA` on the agent's socket, the
/// bootstrap's `sds-grpc` cluster. Returns the secret's name.
pub(super) fn sds_secret(
    at: &At<'_>,
    s: &tls::SdsSecretConfig,
    want: &str,
) -> Result<String, ConfigError> {
    let tls::SdsSecretConfig { name, sds_config } = s;
    if name != want {
        return Err(at.field("name").error(format!(
            "{name:?}: the Causeway proxy uses secret {want:?} here (the agent serves \
             {SECRET_CERT:?}, the workload certificate, and {SECRET_ROOT:?}, the trust bundle)"
        )));
    }
    let Some(source) = sds_config else {
        return Err(at.field("sds_config").error(
            "missing: static secrets are not supported (the secret comes from the agent over \
             SDS)",
        ));
    };
    agent_source(&at.field("sds_config"), source)?;
    Ok(name.clone())
}

/// The config source of a secret (`at` is its position): gRPC to the agent's SDS cluster, as
/// the control plane emits it. Not ADS: the control plane serves no secrets.
fn agent_source(at: &At<'_>, s: &core::ConfigSource) -> Result<(), ConfigError> {
    use core::config_source::ConfigSourceSpecifier as S;
    let core::ConfigSource {
        authorities,
        initial_fetch_timeout,
        resource_api_version,
        config_source_specifier,
    } = s;
    unsupported!(at, authorities, initial_fetch_timeout);
    api_version(&at.field("resource_api_version"), *resource_api_version)?;
    let elsewhere = |field: &str| {
        Err(at.field(field).error(format!(
            "not supported: secrets come from the agent (api_config_source, gRPC to cluster \
             {SDS_CLUSTER})"
        )))
    };
    match config_source_specifier {
        Some(S::ApiConfigSource(api)) => api_source(&at.field("api_config_source"), api),
        Some(S::Ads(_)) => elsewhere("ads"),
        Some(S::Path(_)) => elsewhere("path"),
        Some(S::PathConfigSource(_)) => elsewhere("path_config_source"),
        Some(S::Self_(_)) => elsewhere("self"),
        None => Err(at.error(format!(
            "no source: secrets come from the agent (api_config_source, gRPC to cluster \
             {SDS_CLUSTER})"
        ))),
    }
}

fn api_source(at: &At<'_>, a: &core::ApiConfigSource) -> Result<(), ConfigError> {
    use core::api_config_source::ApiType;
    #[rustfmt::skip]
    let core::ApiConfigSource {
        api_type, transport_api_version, grpc_services,
        // The proxy's SDS client sends its node on the first request of a stream only anyway.
        set_node_on_first_message_only: _,
        cluster_names, refresh_delay, request_timeout, rate_limit_settings, config_validators,
    } = a;
    unsupported!(
        at,
        cluster_names,
        refresh_delay,
        request_timeout,
        rate_limit_settings,
        config_validators,
    );
    if *api_type != ApiType::Grpc as i32 {
        let kind = ApiType::try_from(*api_type).map_or_else(
            |_| format!("unknown value {api_type}"),
            |t| t.as_str_name().to_owned(),
        );
        return Err(at.field("api_type").error(format!(
            "{kind} is not supported: the Causeway proxy follows secrets over GRPC \
             (state-of-the-world StreamSecrets)"
        )));
    }
    api_version(&at.field("transport_api_version"), *transport_api_version)?;
    let [service] = grpc_services.as_slice() else {
        return Err(at.field("grpc_services").error(format!(
            "{} services; the Causeway proxy needs exactly one (envoy_grpc to {SDS_CLUSTER})",
            grpc_services.len()
        )));
    };
    grpc_service(&at.item("grpc_services", 0), service)
}

fn grpc_service(at: &At<'_>, g: &core::GrpcService) -> Result<(), ConfigError> {
    use core::grpc_service::TargetSpecifier as T;
    #[rustfmt::skip]
    let core::GrpcService { target_specifier, timeout, initial_metadata, retry_policy } = g;
    unsupported!(at, timeout, initial_metadata, retry_policy);
    let envoy = match target_specifier {
        Some(T::EnvoyGrpc(e)) => e,
        Some(T::GoogleGrpc(_)) => {
            return Err(at
                .field("google_grpc")
                .error(format!("not supported (envoy_grpc to {SDS_CLUSTER})")))
        }
        None => return Err(at.field("envoy_grpc").error("missing")),
    };
    let at = at.field("envoy_grpc");
    #[rustfmt::skip]
    let core::grpc_service::EnvoyGrpc {
        cluster_name, authority, retry_policy, max_receive_message_length, skip_envoy_headers,
    } = envoy;
    unsupported!(
        at,
        authority,
        retry_policy,
        max_receive_message_length,
        skip_envoy_headers,
    );
    if cluster_name != SDS_CLUSTER {
        return Err(at.field("cluster_name").error(format!(
            "{cluster_name:?}: the Causeway proxy takes secrets from the agent \
             (cluster {SDS_CLUSTER})"
        )));
    }
    Ok(())
}

/// xDS v3 (or unset, which means v3): v2 is gone.
fn api_version(at: &At<'_>, v: i32) -> Result<(), ConfigError> {
    use core::ApiVersion as V;
    match V::try_from(v) {
        Ok(V::V3 | V::Auto) => Ok(()),
        Ok(other) => Err(at.error(format!("{} is not supported (V3)", other.as_str_name()))),
        Err(_) => Err(at.error(format!("unknown value {v}"))),
    }
}
