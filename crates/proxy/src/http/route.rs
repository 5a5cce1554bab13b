//! Choosing a route for a request, by Envoy's rules: the virtual host whose domains match the
//! `:authority` (exact names first, then the longest `*.suffix`, then the longest `prefix.*`,
//! then `*`; compared without case, port included as Envoy does by default), then its first
//! route whose path matches (a prefix against the whole `:path`, an exact path against the
//! `:path` without query and fragment).

use causeway_xds::dataplane::http::{PathMatch, RouteConfig, RouteTable, VirtualHostConfig};

/// The route for a request to `authority` with `path`, if any.
pub fn route<'a>(table: &'a RouteTable, authority: &str, path: &str) -> Option<&'a RouteConfig> {
    virtual_host(table, authority)?
        .routes
        .iter()
        .find(|r| path_matches(&r.matches, path))
}

fn virtual_host<'a>(table: &'a RouteTable, authority: &str) -> Option<&'a VirtualHostConfig> {
    let host = authority.to_ascii_lowercase();
    let hosts = &table.virtual_hosts;
    if let Some(v) = hosts.iter().find(|v| v.domains.contains(&host)) {
        return Some(v);
    }
    let longest = |f: &dyn Fn(&str) -> Option<usize>| {
        hosts
            .iter()
            .filter_map(|v| v.domains.iter().filter_map(|d| f(d)).max().map(|n| (n, v)))
            .max_by_key(|(n, _)| *n)
            .map(|(_, v)| v)
    };
    let suffix = longest(&|d: &str| {
        let s = d.strip_prefix('*')?;
        (!s.is_empty() && host.len() > s.len() && host.ends_with(s)).then_some(s.len())
    });
    if suffix.is_some() {
        return suffix;
    }
    let prefix = longest(&|d: &str| {
        let p = d.strip_suffix('*')?;
        (!p.is_empty() && host.len() > p.len() && host.starts_with(p)).then_some(p.len())
    });
    if prefix.is_some() {
        return prefix;
    }
    hosts.iter().find(|v| v.domains.iter().any(|d| d == "*"))
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        PathMatch::Exact(p) => {
            let end = path.find(['?', '#']).unwrap_or(path.len());
            &path[..end] == p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_xds::dataplane::http::RouteAction;

    fn vhost(name: &str, domains: &[&str], routes: Vec<RouteConfig>) -> VirtualHostConfig {
        VirtualHostConfig {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes,
        }
    }

    fn r(name: &str, m: PathMatch) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            matches: m,
            action: RouteAction {
                clusters: causeway_xds::dataplane::ClusterSplit::One(name.into()),
                timeout: None,
                retry: None,
            },
        }
    }

    #[test]
    fn domains_exact_then_suffix_then_prefix_then_any() {
        let t = RouteTable {
            name: "t".into(),
            virtual_hosts: vec![
                vhost("any", &["*"], vec![r("any", PathMatch::Prefix("/".into()))]),
                vhost(
                    "pre",
                    &["api.*"],
                    vec![r("pre", PathMatch::Prefix("/".into()))],
                ),
                vhost(
                    "suf",
                    &["*.example.com"],
                    vec![r("suf", PathMatch::Prefix("/".into()))],
                ),
                vhost(
                    "exact",
                    &["api.example.com"],
                    vec![r("exact", PathMatch::Prefix("/".into()))],
                ),
            ],
        };
        let pick = |a| route(&t, a, "/").map(|r| r.name.as_str());
        assert_eq!(pick("API.example.com"), Some("exact"));
        assert_eq!(pick("web.example.com"), Some("suf"));
        assert_eq!(pick("api.internal"), Some("pre"));
        assert_eq!(pick("other"), Some("any"));
        assert_eq!(
            pick("api.example.com:80"),
            Some("pre"),
            "the port is part of the name"
        );
    }

    #[test]
    fn first_matching_route_wins_and_exact_ignores_the_query() {
        let t = RouteTable {
            name: "t".into(),
            virtual_hosts: vec![vhost(
                "v",
                &["*"],
                vec![
                    r("health", PathMatch::Exact("/healthz".into())),
                    r("api", PathMatch::Prefix("/api/".into())),
                    r("rest", PathMatch::Prefix("/".into())),
                ],
            )],
        };
        let pick = |p| route(&t, "h", p).map(|r| r.name.as_str());
        assert_eq!(pick("/healthz?verbose=1"), Some("health"));
        assert_eq!(pick("/healthz/x"), Some("rest"));
        assert_eq!(pick("/api/v1"), Some("api"));
        assert_eq!(pick("/API/v1"), Some("rest"), "paths are case-sensitive");
        let none = RouteTable {
            name: "t".into(),
            virtual_hosts: vec![vhost("v", &["only"], vec![])],
        };
        assert!(route(&none, "h", "/").is_none());
    }
}
