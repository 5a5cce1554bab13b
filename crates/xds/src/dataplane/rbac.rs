//! RBAC: the HTTP filter (`envoy.extensions.filters.http.rbac.v3.RBAC`) and the network filter
//! (`envoy.extensions.filters.network.rbac.v3.RBAC`) → [`RbacConfig`] (`convert.rs`), and
//! their evaluation with Envoy's semantics ([`RbacConfig::decide`], [`authorize`]).
//!
//! What the control plane emits (`build::rbac`) converts: ALLOW and DENY rules whose policies
//! use `any`, `and_rules`, `or_rules`, `not_rule`, `destination_port` and `url_path`
//! permissions and `any`, `and_ids`, `or_ids`, `not_id`, `authenticated` and
//! `envoy.rbac.principals.mtls_authenticated` principals, with exact and prefix string
//! matchers. Everything else is refused naming the field.

mod convert;

use std::collections::BTreeMap;
use std::fmt;

use super::tls::{SanKind, StringMatch};

pub(super) use convert::{http_filter, network_filter};

/// The type URL of the RBAC HTTP filter's typed config.
pub const HTTP_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// The type URL of the RBAC network filter's typed config.
pub const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

/// One RBAC filter (HTTP or network): what it lets through.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub struct RbacConfig {
    /// The filter's name (informational: `envoy.filters.http.rbac`, `envoy.filters.network.rbac`).
    pub name: String,
    /// `rules_stat_prefix` of an HTTP filter, `stat_prefix` of a network one (`causeway_deny_`):
    /// what tells the filters apart in logs and metrics.
    pub stat_prefix: String,
    pub action: RbacAction,
    /// By name; tried in name order (Envoy's), so the policy reported is the first that matches.
    pub policies: BTreeMap<String, PolicyConfig>,
}

/// What a filter does with a call some policy matches.
#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq)]
pub enum RbacAction {
    /// Let through only calls some policy matches.
    Allow,
    /// Refuse calls some policy matches.
    Deny,
}

/// A policy matches a call when one of its permissions and one of its principals match (both
/// lists are never empty: Envoy rejects such a policy).
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

/// What is being done: the destination and, on HTTP, the request.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub enum Permission {
    Any,
    /// All of these (never empty).
    And(Vec<Permission>),
    /// One of these (never empty).
    Or(Vec<Permission>),
    Not(Box<Permission>),
    /// The port the connection was made to.
    DestinationPort(u16),
    /// The HTTP `:path` without query and fragment; never matches a TCP connection.
    UrlPath(StringMatch),
}

/// Who is calling: the caller's verified certificate.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Anyone, with or without a certificate.
    Any,
    /// All of these (never empty).
    And(Vec<Principal>),
    /// One of these (never empty).
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// Envoy's `authenticated.principal_name`: matched against each URI SAN, then each DNS SAN,
    /// then the subject.
    Authenticated(StringMatch),
    /// The `envoy.rbac.principals.mtls_authenticated` extension: a SAN of this kind matches.
    /// An exact DNS matcher follows DNS rules, as Envoy's SAN matcher does (ASCII case
    /// ignored; a certificate's `*.` or `x*.` left-most label stands for one label).
    MtlsSan {
        kind: SanKind,
        matcher: StringMatch,
    },
}

/// The caller's certificate, verified by the TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peer {
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// The subject as RFC 2253 text (`O=causeway.local`), what Envoy matches principals on.
    pub subject: String,
}

/// What the filters see of one connection or request.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// None: the caller presented no certificate (or the connection is not TLS).
    pub peer: Option<&'a Peer>,
    /// The local port the connection was made to.
    pub destination_port: u16,
    /// The HTTP `:path` as received (query and fragment included); None on a TCP connection.
    pub path: Option<&'a str>,
}

/// One filter's answer, with the policy that decided it (None: no policy matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'c> {
    Allow { policy: Option<&'c str> },
    Deny { policy: Option<&'c str> },
}

/// A call some filter refused: which filter, and why (for the log and a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied<'c> {
    /// The refusing filter's index in the list given to [`authorize`].
    pub filter: usize,
    pub name: &'c str,
    pub stat_prefix: &'c str,
    pub action: RbacAction,
    /// The DENY policy that matched; None when an ALLOW filter matched no policy.
    pub policy: Option<&'c str>,
}

impl fmt::Display for Denied<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused by RBAC filter {} ({}): ",
            self.name, self.stat_prefix
        )?;
        match self.policy {
            Some(p) => write!(f, "{:?} policy {p} matched", self.action),
            None => write!(f, "no {:?} policy matched", self.action),
        }
    }
}

impl std::error::Error for Denied<'_> {}

/// Runs `filters` in order: the first that refuses the call decides.
pub fn authorize<'c>(filters: &'c [RbacConfig], call: &Call<'_>) -> Result<(), Denied<'c>> {
    for (i, f) in filters.iter().enumerate() {
        if let Decision::Deny { policy } = f.decide(call) {
            return Err(Denied {
                filter: i,
                name: &f.name,
                stat_prefix: &f.stat_prefix,
                action: f.action,
                policy,
            });
        }
    }
    Ok(())
}

impl RbacConfig {
    /// ALLOW: allowed iff some policy matches; DENY: refused iff some policy matches.
    pub fn decide(&self, call: &Call<'_>) -> Decision<'_> {
        let matched = self
            .policies
            .iter()
            .find(|(_, p)| p.matches(call))
            .map(|(name, _)| name.as_str());
        match (self.action, matched) {
            (RbacAction::Allow, Some(_)) | (RbacAction::Deny, None) => {
                Decision::Allow { policy: matched }
            }
            (RbacAction::Allow, None) | (RbacAction::Deny, Some(_)) => {
                Decision::Deny { policy: matched }
            }
        }
    }
}

impl PolicyConfig {
    pub fn matches(&self, call: &Call<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(call))
            && self.principals.iter().any(|p| p.matches(call.peer))
    }
}

impl Permission {
    pub fn matches(&self, call: &Call<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|p| p.matches(call)),
            Permission::Or(any) => any.iter().any(|p| p.matches(call)),
            Permission::Not(p) => !p.matches(call),
            Permission::DestinationPort(port) => *port == call.destination_port,
            Permission::UrlPath(m) => call.path.is_some_and(|p| m.matches(url_path(p))),
        }
    }
}

/// Envoy's `url_path`: the `:path` up to its first `?` or `#`.
fn url_path(path: &str) -> &str {
    path.find(['?', '#']).map_or(path, |end| &path[..end])
}

impl Principal {
    pub fn matches(&self, peer: Option<&Peer>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(all) => all.iter().all(|p| p.matches(peer)),
            Principal::Or(any) => any.iter().any(|p| p.matches(peer)),
            Principal::Not(p) => !p.matches(peer),
            // Without a certificate there is nothing to match (Envoy would try the empty
            // subject, which a non-empty exact or prefix matcher never matches).
            Principal::Authenticated(m) => peer.is_some_and(|c| {
                c.uri_sans.iter().any(|s| m.matches(s))
                    || c.dns_sans.iter().any(|s| m.matches(s))
                    || m.matches(&c.subject)
            }),
            Principal::MtlsSan { kind, matcher } => peer.is_some_and(|c| match kind {
                SanKind::Uri => c.uri_sans.iter().any(|s| matcher.matches(s)),
                SanKind::Dns => c.dns_sans.iter().any(|s| dns_san_matches(matcher, s)),
            }),
        }
    }
}

/// Envoy's SAN matcher on a DNS SAN: an exact matcher compares as DNS names
/// ([`dns_name_match`]), any other as strings.
fn dns_san_matches(m: &StringMatch, san: &str) -> bool {
    match m {
        StringMatch::Exact(name) => dns_name_match(name, san),
        StringMatch::Prefix(_) => m.matches(san),
    }
}

/// Envoy's `dnsNameMatch(name, pattern)`, `pattern` being the certificate's SAN: equal but for
/// ASCII case, or the pattern's left-most label holds one `*` (and is no A-label), the rest of
/// both names is equal, and the `*` stands for the name's left-most label.
pub fn dns_name_match(name: &str, pattern: &str) -> bool {
    if name.eq_ignore_ascii_case(pattern) {
        return true;
    }
    let (Some((p_label, p_rest)), Some((n_label, n_rest))) =
        (pattern.split_once('.'), name.split_once('.'))
    else {
        return false;
    };
    let a_label = p_label
        .get(..4)
        .is_some_and(|s| s.eq_ignore_ascii_case("xn--"));
    p_label.contains('*')
        && !p_rest.contains('*')
        && !a_label
        && n_rest.eq_ignore_ascii_case(p_rest)
        && label_wildcard_match(n_label, p_label)
}

/// Envoy's `labelWildcardMatch`: `*` alone matches any label; otherwise one `*` with the text
/// around it at the label's ends (ASCII case ignored).
fn label_wildcard_match(label: &str, pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if pattern.matches('*').count() != 1 {
        return false;
    }
    let Some((head, tail)) = pattern.split_once('*') else {
        return false;
    };
    let starts = label
        .get(..head.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(head));
    let ends = label
        .len()
        .checked_sub(tail.len())
        .and_then(|at| label.get(at..))
        .is_some_and(|s| s.eq_ignore_ascii_case(tail));
    pattern.len() <= label.len() + 1 && starts && ends
}

#[cfg(test)]
mod tests {
    use prost::Name;

    use super::*;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
    use envoy_types::pb::envoy::extensions::rbac::principals::mtls_authenticated::v3 as mtls;

    #[test]
    fn type_urls_are_the_messages_own() {
        assert_eq!(HTTP_RBAC, http_rbac::Rbac::type_url());
        assert_eq!(NETWORK_RBAC, net_rbac::Rbac::type_url());
        assert_eq!(convert::MTLS_AUTHENTICATED, mtls::Config::type_url());
    }

    #[test]
    fn url_path_drops_query_and_fragment() {
        assert_eq!(url_path("/a?b#c"), "/a");
        assert_eq!(url_path("/a#b?c"), "/a");
        assert_eq!(url_path("/a"), "/a");
        assert_eq!(url_path("?x"), "");
    }

    #[test]
    fn dns_names_match_as_envoy_matches_them() {
        assert!(dns_name_match("alpha.cluster.td", "alpha.cluster.td"));
        assert!(dns_name_match("Alpha.Cluster.td", "alpha.cluster.TD"));
        assert!(dns_name_match("alpha.cluster.td", "*.cluster.td"));
        assert!(dns_name_match("alpha.cluster.td", "al*.cluster.td"));
        assert!(dns_name_match("alpha.cluster.td", "*ha.cluster.td"));
        assert!(dns_name_match("alpha.cluster.td", "a*a.cluster.td"));
        assert!(
            !dns_name_match("a.b.cluster.td", "*.cluster.td"),
            "one label"
        );
        assert!(!dns_name_match("alpha.cluster.td", "*.*.td"));
        assert!(!dns_name_match("alpha.cluster.td", "b*.cluster.td"));
        assert!(!dns_name_match("xn--a.cluster.td", "xn--*.cluster.td"));
        assert!(!dns_name_match("td", "*"));
        assert!(!dns_name_match("ab.td", "a**b.td"));
        // The name is not a pattern: a `*` in it is a plain character.
        assert!(!dns_name_match("*.cluster.td", "alpha.cluster.td"));
    }
}
