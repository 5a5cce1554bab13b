//! Envoy's inbound listener as its documentation describes it: the downstream TLS check, the
//! filters in order, and RBAC (policies, permissions, principals). Written from the docs, not
//! from the builder; anything it does not know panics.

use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, Listener};
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetRbac;
use envoy_types::pb::envoy::extensions::rbac::principals::mtls_authenticated::v3 as mtls;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, subject_alt_name_matcher::SanType, DownstreamTlsContext,
    SubjectAltNameMatcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{path_matcher, string_matcher, StringMatcher};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// The caller's side of the connection: its certificate, if it presented one the trust bundle
/// validates (the CA issues a URI SAN, the cluster's DNS SAN, and `O=<trust domain>`).
pub struct Peer {
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub subject: String,
}

/// What the filters see of one request.
pub struct Call<'a> {
    pub peer: &'a Peer,
    pub port: u16,
    /// The `:path` header, for a request through an HTTP connection manager.
    pub path: Option<&'a str>,
}

fn string_matches(m: &StringMatcher, value: &str) -> bool {
    let (value, fold) = if m.ignore_case {
        (value.to_lowercase(), true)
    } else {
        (value.to_owned(), false)
    };
    let norm = |s: &str| if fold { s.to_lowercase() } else { s.to_owned() };
    match m
        .match_pattern
        .as_ref()
        .expect("string matcher without a pattern")
    {
        string_matcher::MatchPattern::Exact(s) => value == norm(s),
        string_matcher::MatchPattern::Prefix(s) => value.starts_with(&norm(s)),
        string_matcher::MatchPattern::Suffix(s) => value.ends_with(&norm(s)),
        string_matcher::MatchPattern::Contains(s) => value.contains(&norm(s)),
        other => panic!("string matcher not modelled: {other:?}"),
    }
}

/// Envoy's `url_path`: the `:path` with its query and fragment removed.
fn url_path(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

fn permission_matches(p: &rbac::Permission, call: &Call<'_>) -> bool {
    use rbac::permission::Rule;
    match p.rule.as_ref().expect("permission without a rule") {
        Rule::Any(any) => {
            assert!(*any, "Envoy rejects `any: false`");
            true
        }
        Rule::AndRules(set) => {
            assert!(!set.rules.is_empty(), "Envoy rejects an empty and_rules");
            set.rules.iter().all(|r| permission_matches(r, call))
        }
        Rule::OrRules(set) => {
            assert!(!set.rules.is_empty(), "Envoy rejects an empty or_rules");
            set.rules.iter().any(|r| permission_matches(r, call))
        }
        Rule::NotRule(r) => !permission_matches(r, call),
        Rule::DestinationPort(port) => *port == u32::from(call.port),
        // Only available for HTTP: without request headers it never matches.
        Rule::UrlPath(m) => call.path.is_some_and(|path| {
            match m.rule.as_ref().expect("path matcher without a rule") {
                path_matcher::Rule::Path(s) => string_matches(s, url_path(path)),
            }
        }),
        other => panic!("permission not modelled: {other:?}"),
    }
}

fn san_matches(m: &SubjectAltNameMatcher, peer: &Peer) -> bool {
    let matcher = m.matcher.as_ref().expect("SAN matcher without a matcher");
    let sans = match SanType::try_from(m.san_type).expect("SAN type") {
        SanType::Uri => &peer.uri_sans,
        SanType::Dns => &peer.dns_sans,
        other => panic!("SAN type not modelled: {other:?}"),
    };
    sans.iter().any(|s| string_matches(matcher, s))
}

fn principal_matches(p: &rbac::Principal, peer: &Peer) -> bool {
    use rbac::principal::Identifier;
    match p
        .identifier
        .as_ref()
        .expect("principal without an identifier")
    {
        Identifier::Any(any) => {
            assert!(*any, "Envoy rejects `any: false`");
            true
        }
        Identifier::AndIds(set) => {
            assert!(!set.ids.is_empty(), "Envoy rejects an empty and_ids");
            set.ids.iter().all(|i| principal_matches(i, peer))
        }
        Identifier::OrIds(set) => {
            assert!(!set.ids.is_empty(), "Envoy rejects an empty or_ids");
            set.ids.iter().any(|i| principal_matches(i, peer))
        }
        Identifier::NotId(i) => !principal_matches(i, peer),
        // The URI SANs, then the DNS SANs, then the subject.
        Identifier::Authenticated(a) => a.principal_name.as_ref().is_none_or(|m| {
            peer.uri_sans.iter().any(|s| string_matches(m, s))
                || peer.dns_sans.iter().any(|s| string_matches(m, s))
                || string_matches(m, &peer.subject)
        }),
        Identifier::Custom(ext) => {
            assert_eq!(ext.name, "envoy.rbac.principals.mtls_authenticated");
            let any = ext.typed_config.as_ref().expect("typed config");
            let config = mtls::Config::decode(&*any.value).expect("mtls_authenticated config");
            config.any_validated_client_certificate
                || config
                    .san_matcher
                    .as_ref()
                    .is_some_and(|m| san_matches(m, peer))
        }
        other => panic!("principal not modelled: {other:?}"),
    }
}

/// Whether one RBAC filter lets the call through.
fn rbac_allows(rules: Option<&rbac::Rbac>, call: &Call<'_>) -> bool {
    let Some(rules) = rules else {
        return true;
    };
    let matched = rules.policies.values().any(|p| {
        assert!(
            !p.permissions.is_empty() && !p.principals.is_empty(),
            "Envoy rejects a policy without permissions or principals: {p:?}"
        );
        assert!(p.condition.is_none() && p.checked_condition.is_none());
        p.permissions.iter().any(|x| permission_matches(x, call))
            && p.principals.iter().any(|x| principal_matches(x, call.peer))
    });
    match rbac::rbac::Action::try_from(rules.action).expect("action") {
        rbac::rbac::Action::Allow => matched,
        rbac::rbac::Action::Deny => !matched,
        rbac::rbac::Action::Log => panic!("LOG action not modelled"),
    }
}

fn network_filter_config(f: &Filter) -> &Any {
    match f.config_type.as_ref() {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        other => panic!("filter {} config not modelled: {other:?}", f.name),
    }
}

/// Whether the inbound listener lets the call through its filters (TLS already accepted).
pub fn filters_allow(listener: &Listener, call: &Call<'_>) -> bool {
    let chain = &listener.filter_chains[0];
    for f in &chain.filters {
        let any = network_filter_config(f);
        match f.name.as_str() {
            "envoy.filters.network.rbac" => {
                let config = NetRbac::decode(&*any.value).expect("network rbac");
                assert!(config.matcher.is_none(), "matcher API not modelled");
                // A network filter sees no HTTP request.
                let conn = Call {
                    path: None,
                    ..*call
                };
                if !rbac_allows(config.rules.as_ref(), &conn) {
                    return false;
                }
            }
            "envoy.filters.network.tcp_proxy" => return true,
            "envoy.filters.network.http_connection_manager" => {
                let hcm = HttpConnectionManager::decode(&*any.value).expect("hcm");
                for hf in &hcm.http_filters {
                    let Some(http_filter::ConfigType::TypedConfig(any)) = hf.config_type.as_ref()
                    else {
                        panic!("http filter {} config not modelled", hf.name)
                    };
                    match hf.name.as_str() {
                        "envoy.filters.http.rbac" => {
                            let config = HttpRbac::decode(&*any.value).expect("rbac");
                            assert!(config.matcher.is_none(), "matcher API not modelled");
                            if !rbac_allows(config.rules.as_ref(), call) {
                                return false;
                            }
                        }
                        "envoy.filters.http.router" => return true,
                        other => panic!("http filter not modelled: {other}"),
                    }
                }
                panic!("no router in the HTTP connection manager")
            }
            other => panic!("network filter not modelled: {other}"),
        }
    }
    panic!("no terminal filter on {}", listener.name)
}

/// Whether the TLS handshake completes: a client certificate is required, and its SANs must
/// match one of the listener's SAN matchers (when it lists any).
pub fn tls_accepts(listener: &Listener, peer: Option<&Peer>) -> bool {
    let chain = &listener.filter_chains[0];
    let Some(transport_socket::ConfigType::TypedConfig(any)) = chain
        .transport_socket
        .as_ref()
        .and_then(|t| t.config_type.as_ref())
    else {
        panic!("inbound listener without TLS")
    };
    let tls = DownstreamTlsContext::decode(&*any.value).expect("downstream tls");
    let required = tls.require_client_certificate.is_some_and(|b| b.value);
    let Some(peer) = peer else {
        // Without a certificate there is no identity: the mesh never lets such a caller in.
        assert!(
            required,
            "inbound listeners must require a client certificate"
        );
        return false;
    };
    let common = tls.common_tls_context.expect("common tls context");
    let sans = match common.validation_context_type {
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) => c
            .default_validation_context
            .map(|v| v.match_typed_subject_alt_names)
            .unwrap_or_default(),
        other => panic!("validation context not modelled: {other:?}"),
    };
    sans.is_empty() || sans.iter().any(|m| san_matches(m, peer))
}
