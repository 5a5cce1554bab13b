//! How the peer is verified: the validation context (the trust bundle and the SAN checks) in
//! the forms the control plane and static bootstraps use, SAN matchers and string matchers.

// Deprecated fields are destructured too: set, they are refused like any other.
#![allow(deprecated)]

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;

use super::super::check::{unsupported, At};
use super::super::ConfigError;
use super::{source, SanKind, SanMatch, Side, StringMatch, TrustedCaSource};
use crate::build::SECRET_ROOT;

/// The peer checks of a context.
pub(super) struct Checks {
    pub(super) trusted_ca: TrustedCaSource,
    pub(super) sans: Vec<SanMatch>,
}

/// The validation context of a common TLS context (`at` is the common context's position).
/// Always required: the proxy verifies every peer. Upstream, the SAN list must not be empty
/// (Envoy would accept any certificate the roots validate).
pub(super) fn validation(
    at: &At<'_>,
    v: &Option<tls::common_tls_context::ValidationContextType>,
    side: Side,
) -> Result<Checks, ConfigError> {
    use tls::common_tls_context::ValidationContextType as V;
    let (checks, sans_at) = match v {
        Some(V::CombinedValidationContext(c)) => {
            let at = at.field("combined_validation_context");
            combined(&at, c, side)?
        }
        Some(V::ValidationContext(v)) => {
            let at = at.field("validation_context");
            let (ca, sans) = validation_context(&at, v, side)?;
            let Some(path) = ca else {
                return Err(at.field("trusted_ca").error("missing"));
            };
            let checks = Checks {
                trusted_ca: TrustedCaSource::File { path },
                sans,
            };
            (checks, at.field("match_typed_subject_alt_names"))
        }
        Some(V::ValidationContextSdsSecretConfig(s)) => {
            let at = at.field("validation_context_sds_secret_config");
            let name = source::sds_secret(&at, s, SECRET_ROOT)?;
            let checks = Checks {
                trusted_ca: TrustedCaSource::Sds { name },
                sans: Vec::new(),
            };
            (checks, at)
        }
        Some(V::ValidationContextCertificateProvider(_)) => {
            return Err(at
                .field("validation_context_certificate_provider")
                .error("not supported by the Causeway proxy"))
        }
        Some(V::ValidationContextCertificateProviderInstance(_)) => {
            return Err(at
                .field("validation_context_certificate_provider_instance")
                .error("not supported by the Causeway proxy"))
        }
        None => {
            return Err(at.error(
                "no validation context: the Causeway proxy always verifies the peer \
                 (combined_validation_context or validation_context)",
            ))
        }
    };
    if side == Side::Upstream && checks.sans.is_empty() {
        return Err(sans_at.error(
            "no SAN to check the server against: it would accept any certificate the roots \
             validate (list the expected SPIFFE IDs)",
        ));
    }
    Ok(checks)
}

/// The control plane's form: SANs inline, the trust bundle over SDS. Returns the checks and
/// where the SAN list is.
fn combined<'a>(
    at: &At<'a>,
    c: &tls::common_tls_context::CombinedCertificateValidationContext,
    side: Side,
) -> Result<(Checks, At<'a>), ConfigError> {
    #[rustfmt::skip]
    let tls::common_tls_context::CombinedCertificateValidationContext {
        default_validation_context, validation_context_sds_secret_config,
        validation_context_certificate_provider, validation_context_certificate_provider_instance,
    } = c;
    unsupported!(
        at,
        validation_context_certificate_provider,
        validation_context_certificate_provider_instance,
    );
    let Some(sds) = validation_context_sds_secret_config else {
        return Err(at
            .field("validation_context_sds_secret_config")
            .error("missing (the trust bundle)"));
    };
    let name = source::sds_secret(
        &at.field("validation_context_sds_secret_config"),
        sds,
        SECRET_ROOT,
    )?;
    let default_at = at.field("default_validation_context");
    let sans = match default_validation_context {
        Some(v) => {
            let (ca, sans) = validation_context(&default_at, v, side)?;
            if ca.is_some() {
                return Err(default_at.field("trusted_ca").error(
                    "set together with validation_context_sds_secret_config (the trust \
                     bundle comes from one place)",
                ));
            }
            sans
        }
        None => Vec::new(),
    };
    let checks = Checks {
        trusted_ca: TrustedCaSource::Sds { name },
        sans,
    };
    Ok((checks, default_at.field("match_typed_subject_alt_names")))
}

/// A validation context (`at` is its position): the trust bundle's file if given, and the SAN
/// checks. Everything else the proxy does not do is refused (pinning, CRLs, SCTs, accepting
/// expired or untrusted chains, custom validators, depth limits).
fn validation_context(
    at: &At<'_>,
    v: &tls::CertificateValidationContext,
    side: Side,
) -> Result<(Option<std::path::PathBuf>, Vec<SanMatch>), ConfigError> {
    #[rustfmt::skip]
    let tls::CertificateValidationContext {
        trusted_ca, match_typed_subject_alt_names,
        ca_certificate_provider_instance, system_root_certs, watched_directory,
        verify_certificate_spki, verify_certificate_hash, match_subject_alt_names,
        require_signed_certificate_timestamp, crl, allow_expired_certificate,
        trust_chain_verification, custom_validator_config, only_verify_leaf_cert_crl,
        max_verify_depth, suppress_client_ca_list,
    } = v;
    unsupported!(
        at,
        ca_certificate_provider_instance,
        system_root_certs,
        watched_directory,
        verify_certificate_spki,
        verify_certificate_hash,
        match_subject_alt_names,
        require_signed_certificate_timestamp,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
        suppress_client_ca_list,
    );
    let ca = trusted_ca
        .as_ref()
        .map(|d| source::file(&at.field("trusted_ca"), Some(d)))
        .transpose()?;
    let sans = match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| san_matcher(&at.item("match_typed_subject_alt_names", i), m, side))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((ca, sans))
}

/// One SAN check (`at` is its position): URI or DNS. Upstream only exact URIs (SPIFFE IDs):
/// the control plane never widens the identity it expects of a server.
pub(super) fn san_matcher(
    at: &At<'_>,
    m: &tls::SubjectAltNameMatcher,
    side: Side,
) -> Result<SanMatch, ConfigError> {
    use tls::subject_alt_name_matcher::SanType as T;
    let tls::SubjectAltNameMatcher {
        san_type,
        matcher,
        oid,
    } = m;
    unsupported!(at, oid);
    let kind = match T::try_from(*san_type) {
        Ok(T::Uri) => SanKind::Uri,
        Ok(T::Dns) => SanKind::Dns,
        Ok(other) => {
            return Err(at.field("san_type").error(format!(
                "{} is not supported (URI or DNS)",
                other.as_str_name()
            )))
        }
        Err(_) => {
            return Err(at
                .field("san_type")
                .error(format!("unknown value {san_type}")))
        }
    };
    let at_matcher = at.field("matcher");
    let Some(m) = matcher else {
        return Err(at_matcher.error("missing"));
    };
    let matcher = string_match(&at_matcher, m)?;
    if side == Side::Upstream {
        if kind != SanKind::Uri {
            return Err(at
                .field("san_type")
                .error("upstream certificates are checked against URI SANs (SPIFFE IDs) only"));
        }
        if let StringMatch::Prefix(_) = matcher {
            return Err(at_matcher.field("prefix").error(
                "upstream certificates are checked against exact SPIFFE IDs only (a prefix \
                 would widen the identity)",
            ));
        }
    }
    Ok(SanMatch { kind, matcher })
}

/// A string matcher (`at` is its position): exact or prefix, case-sensitive, not empty.
pub(in crate::dataplane) fn string_match(
    at: &At<'_>,
    m: &matcher::StringMatcher,
) -> Result<StringMatch, ConfigError> {
    use matcher::string_matcher::MatchPattern as P;
    let matcher::StringMatcher {
        match_pattern,
        ignore_case,
    } = m;
    unsupported!(at, ignore_case);
    let refused = |field: &str| {
        Err(at
            .field(field)
            .error("not supported by the Causeway proxy (exact or prefix)"))
    };
    match match_pattern {
        Some(P::Exact(s)) if !s.is_empty() => Ok(StringMatch::Exact(s.clone())),
        Some(P::Prefix(s)) if !s.is_empty() => Ok(StringMatch::Prefix(s.clone())),
        Some(P::Exact(_)) => Err(at.field("exact").error("empty")),
        Some(P::Prefix(_)) => Err(at.field("prefix").error("empty: it would match any name")),
        Some(P::Suffix(_)) => refused("suffix"),
        Some(P::SafeRegex(_)) => refused("safe_regex"),
        Some(P::Contains(_)) => refused("contains"),
        Some(P::Custom(_)) => refused("custom"),
        None => Err(at.error("no pattern (exact or prefix)")),
    }
}
