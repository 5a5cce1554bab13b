//! The proxy's configuration snapshot (validated listeners, clusters and endpoints from
//! `causeway_xds::dataplane`) and the lookups the request path makes on it.

use std::sync::Arc;

pub use causeway_xds::dataplane::Snapshot;
use causeway_xds::dataplane::{FilterChainConfig, ListenerConfig};

pub type SharedSnapshot = Arc<Snapshot>;

/// The filter chain for a connection with this SNI (lowercase) on `listener`, by Envoy's
/// rules: an exact server name first, then the longest matching `*.` wildcard, then a chain
/// without server names; the default chain when nothing matches.
pub fn chain_for_sni<'a>(
    listener: &'a ListenerConfig,
    sni: Option<&str>,
) -> Option<&'a FilterChainConfig> {
    let chains = &listener.filter_chains;
    if let Some(sni) = sni {
        if let Some(c) = chains
            .iter()
            .find(|c| c.matches.server_names.iter().any(|n| n == sni))
        {
            return Some(c);
        }
        let wildcard = chains
            .iter()
            .filter_map(|c| {
                c.matches
                    .server_names
                    .iter()
                    .filter_map(|n| n.strip_prefix('*'))
                    .filter(|suffix| sni.len() > suffix.len() && sni.ends_with(suffix))
                    .map(str::len)
                    .max()
                    .map(|len| (len, c))
            })
            .max_by_key(|(len, _)| *len);
        if let Some((_, c)) = wildcard {
            return Some(c);
        }
    }
    chains
        .iter()
        .find(|c| c.matches.server_names.is_empty())
        .or(listener.default_chain.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_xds::dataplane::{ChainAction, ChainMatch, TcpProxyConfig};
    use std::time::Duration;

    fn chain(name: &str, names: &[&str]) -> FilterChainConfig {
        FilterChainConfig {
            name: name.into(),
            matches: ChainMatch {
                server_names: names.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            tls: None,
            handshake_timeout: None,
            action: ChainAction::TcpProxy(TcpProxyConfig {
                stat_prefix: name.into(),
                clusters: causeway_xds::dataplane::ClusterSplit::One(name.into()),
                idle_timeout: None,
                connect_after_tls_handshake: false,
                rbac: Vec::new(),
            }),
        }
    }

    fn listener(chains: Vec<FilterChainConfig>) -> ListenerConfig {
        ListenerConfig {
            name: "l".into(),
            address: "127.0.0.1:1".parse().expect("addr"),
            bind: true,
            use_original_dst: false,
            inspect_tls: true,
            inspect_timeout: Duration::from_secs(1),
            filter_chains: chains,
            default_chain: None,
        }
    }

    #[test]
    fn exact_names_win_over_wildcards_and_the_longest_wildcard_wins() {
        let l = listener(vec![
            chain("wide", &["*.example.com"]),
            chain("narrow", &["*.b.example.com"]),
            chain("exact", &["a.b.example.com"]),
        ]);
        let pick = |sni| chain_for_sni(&l, Some(sni)).map(|c| c.name.as_str());
        assert_eq!(pick("a.b.example.com"), Some("exact"));
        assert_eq!(pick("c.b.example.com"), Some("narrow"));
        assert_eq!(pick("c.example.com"), Some("wide"));
        assert_eq!(
            pick("example.com"),
            None,
            "a wildcard needs a label before it"
        );
        assert_eq!(pick("evil.com"), None);
        assert_eq!(
            chain_for_sni(&l, None),
            None,
            "no SNI, no catch-all: closed"
        );
    }

    #[test]
    fn a_chain_without_names_catches_the_rest() {
        let l = listener(vec![chain("exact", &["a.example"]), chain("rest", &[])]);
        assert_eq!(
            chain_for_sni(&l, Some("b.example")).map(|c| c.name.as_str()),
            Some("rest")
        );
        assert_eq!(
            chain_for_sni(&l, None).map(|c| c.name.as_str()),
            Some("rest")
        );
    }
}
