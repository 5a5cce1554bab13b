//! Request paths and query strings, parsed into what the handlers need.

use hyper::Method;

/// Query parameters (`form_urlencoded`), looked up by name.
#[derive(Debug, Default, Clone)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        let pairs = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Self { pairs }
    }

    /// The last value of a parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter (`true`/`1` or `false`/`0`); `None` if absent.
    pub fn flag(&self, key: &str) -> Option<bool> {
        self.get(key).map(|v| matches!(v, "true" | "1" | "True"))
    }

    /// `dryRun=All`.
    pub fn dry_run(&self) -> bool {
        self.pairs.iter().any(|(k, v)| k == "dryRun" && v == "All")
    }
}

/// A path under `/api/v1` or `/apis/{group}/{version}` that addresses a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResourcePath {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// What a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Version,
    Health,
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/apis/{group}`.
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`.
    GroupVersion(String, String),
    Resource(ResourcePath),
    Unknown,
}

/// Parses a request path.
pub(crate) fn route(path: &str) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz", ..] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["api", v] => Route::GroupVersion(String::new(), v.to_string()),
        ["api", v, rest @ ..] => resource_route("", v, rest),
        ["apis"] => Route::Groups,
        ["apis", g] => Route::Group(g.to_string()),
        ["apis", g, v] => Route::GroupVersion(g.to_string(), v.to_string()),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Route::Unknown,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some(ns.to_string()), [&[*plural][..], tail].concat())
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [p] => (p, None, None),
        [p, n] => (p, Some(n.to_string()), None),
        [p, n, s] => (p, Some(n.to_string()), Some(s.to_string())),
        _ => return Route::Unknown,
    };
    Route::Resource(ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        plural: plural.to_string(),
        namespace,
        name,
        subresource,
    })
}

/// The Kubernetes verb of a resource request, or `None` for an unsupported method.
pub(crate) fn verb(method: &Method, path: &ResourcePath, watch: bool) -> Option<&'static str> {
    let named = path.name.is_some();
    Some(match (method.as_str(), named) {
        // POST to a subresource of a named object (serviceaccounts/x/token) creates it.
        ("POST", true) if path.subresource.is_some() => "create",
        ("GET", true) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(g: &str, v: &str, p: &str, ns: Option<&str>, n: Option<&str>, s: Option<&str>) -> Route {
        Route::Resource(ResourcePath {
            group: g.into(),
            version: v.into(),
            plural: p.into(),
            namespace: ns.map(Into::into),
            name: n.map(Into::into),
            subresource: s.map(Into::into),
        })
    }

    #[test]
    fn paths() {
        assert_eq!(
            route("/api/v1/pods"),
            rp("", "v1", "pods", None, None, None)
        );
        assert_eq!(
            route("/api/v1/namespaces"),
            rp("", "v1", "namespaces", None, None, None)
        );
        assert_eq!(
            route("/api/v1/namespaces/a"),
            rp("", "v1", "namespaces", None, Some("a"), None)
        );
        assert_eq!(
            route("/api/v1/namespaces/a/status"),
            rp("", "v1", "namespaces", None, Some("a"), Some("status"))
        );
        assert_eq!(
            route("/api/v1/namespaces/a/pods"),
            rp("", "v1", "pods", Some("a"), None, None)
        );
        assert_eq!(
            route("/apis/multicluster.x-k8s.io/v1beta1/namespaces/a/serviceexports/x/status"),
            rp(
                "multicluster.x-k8s.io",
                "v1beta1",
                "serviceexports",
                Some("a"),
                Some("x"),
                Some("status")
            )
        );
        assert_eq!(route("/apis/g"), Route::Group("g".into()));
        assert_eq!(
            route("/apis/g/v1"),
            Route::GroupVersion("g".into(), "v1".into())
        );
        assert_eq!(route("/api/v1/a/b/c/d"), Route::Unknown);
    }

    #[test]
    fn query_flags_accept_true_and_one() {
        let q = Query::parse(Some("&watch=1&allowWatchBookmarks=true&x=false"));
        assert_eq!(q.flag("watch"), Some(true));
        assert_eq!(q.flag("allowWatchBookmarks"), Some(true));
        assert_eq!(q.flag("x"), Some(false));
        assert_eq!(q.flag("y"), None);
    }
}
