//! Bearer tokens and what they may do; service-account tokens and their review.

use std::collections::{BTreeMap, HashMap};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::ids;

/// One RBAC-like rule: these verbs on these resources in these API groups. `"*"` matches
/// anything; a subresource is named `plural/sub` (`serviceexports/status`) as in RBAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Verbs: get, list, watch, create, update, patch, delete, deletecollection, or `*`.
    pub verbs: Vec<String>,
    /// API groups (`""` is the core group), or `*`.
    pub api_groups: Vec<String>,
    /// Resources (`pods`, `serviceexports/status`), `*`, or `*/status`.
    pub resources: Vec<String>,
}

impl Rule {
    /// A rule from string slices.
    pub fn new(verbs: &[&str], api_groups: &[&str], resources: &[&str]) -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            verbs: owned(verbs),
            api_groups: owned(api_groups),
            resources: owned(resources),
        }
    }

    fn allows(&self, verb: &str, group: &str, resource: &str) -> bool {
        let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        let res_ok = self.resources.iter().any(|r| {
            r == "*"
                || r == resource
                || r.strip_prefix('*')
                    .is_some_and(|sub| sub.starts_with('/') && resource.ends_with(sub))
        });
        any(&self.verbs, verb) && any(&self.api_groups, group) && res_ok
    }
}

/// What a bearer token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permissions {
    /// Everything (cluster-admin).
    All,
    /// Only what the rules allow; an empty list allows nothing but discovery.
    Rules(Vec<Rule>),
}

impl Permissions {
    /// No permissions at all (discovery still works, as for any authenticated user).
    pub fn none() -> Self {
        Permissions::Rules(Vec::new())
    }

    /// Read-only access (`get`, `list`, `watch`) to everything.
    pub fn read_only() -> Self {
        Permissions::Rules(vec![Rule::new(&["get", "list", "watch"], &["*"], &["*"])])
    }

    /// Whether `verb` on `resource` (with `/sub` for a subresource) in `group` is allowed.
    pub fn allows(&self, verb: &str, group: &str, resource: &str) -> bool {
        match self {
            Permissions::All => true,
            Permissions::Rules(rules) => rules.iter().any(|r| r.allows(verb, group, resource)),
        }
    }
}

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// The `user`/`userInfo` object of reviews.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.name, "uid": self.uid, "groups": self.groups});
        if let (false, Some(m)) = (self.extra.is_empty(), v.as_object_mut()) {
            m.insert("extra".into(), json!(self.extra));
        }
        v
    }
}

#[derive(Debug, Clone)]
struct TokenEntry {
    user: User,
    perms: Permissions,
    revoked: bool,
    /// Audiences of a service-account token; `None` for a client token (audience-agnostic).
    audiences: Option<Vec<String>>,
}

/// All tokens a server knows.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    tokens: HashMap<String, TokenEntry>,
    sa_uids: HashMap<(String, String), String>,
}

/// 401 as the real server answers it.
pub(crate) fn unauthorized() -> ApiError {
    ApiError::new(401, "Unauthorized", "Unauthorized")
}

impl Auth {
    /// Registers a client token for `user` (groups `system:authenticated`).
    pub fn add(&mut self, token: &str, user: &str, perms: Permissions) {
        let mut groups = vec!["system:authenticated".to_string()];
        if perms == Permissions::All {
            groups.insert(0, "system:masters".to_string());
        }
        let user = User {
            name: user.to_string(),
            uid: String::new(),
            groups,
            extra: BTreeMap::new(),
        };
        self.tokens.insert(
            token.to_string(),
            TokenEntry {
                user,
                perms,
                revoked: false,
                audiences: None,
            },
        );
    }

    /// Marks a token revoked: requests with it get 401, reviews say unauthenticated.
    pub fn revoke(&mut self, token: &str) {
        if let Some(t) = self.tokens.get_mut(token) {
            t.revoked = true;
        }
    }

    /// The identity and permissions of a bearer token, or 401.
    pub fn authenticate(&self, token: &str) -> Result<(User, Permissions), ApiError> {
        match self.tokens.get(token) {
            Some(t) if !t.revoked => Ok((t.user.clone(), t.perms.clone())),
            _ => Err(unauthorized()),
        }
    }

    /// Issues a JWT-shaped service-account token bound to a pod, with the given audiences.
    pub fn issue_service_account_token(
        &mut self,
        namespace: &str,
        service_account: &str,
        pod: &str,
        pod_uid: &str,
        audiences: &[&str],
        issuer: &str,
    ) -> String {
        let sa_uid = self
            .sa_uids
            .entry((namespace.to_string(), service_account.to_string()))
            .or_insert_with(ids::uuid)
            .clone();
        let username = format!("system:serviceaccount:{namespace}:{service_account}");
        let now = ids::unix_now();
        let claims = json!({
            "aud": audiences, "exp": now + 3600, "iat": now, "nbf": now, "iss": issuer,
            "jti": ids::uuid(), "sub": username,
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": pod, "uid": pod_uid},
                "serviceaccount": {"name": service_account, "uid": sa_uid},
            },
        });
        let header = json!({"alg": "RS256", "kid": "causeway-kube-fake"});
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(ids::random_bytes(64)),
        );
        let jti = claims["jti"].as_str().unwrap_or_default();
        let mut extra = BTreeMap::from([(
            "authentication.kubernetes.io/credential-id".to_string(),
            vec![format!("JTI={jti}")],
        )]);
        if !pod.is_empty() {
            extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                vec![pod.to_string()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                vec![pod_uid.to_string()],
            );
        }
        let groups = vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".to_string(),
        ];
        let user = User {
            name: username,
            uid: sa_uid,
            groups,
            extra,
        };
        let audiences = Some(audiences.iter().map(|a| a.to_string()).collect());
        self.tokens.insert(
            token.clone(),
            TokenEntry {
                user,
                perms: Permissions::none(),
                revoked: false,
                audiences,
            },
        );
        token
    }

    /// The `status` of a TokenReview for `token` with the requested audiences.
    pub fn review(&self, token: &str, requested: &[String]) -> Value {
        let fail = |msg: String| json!({"user": {}, "error": msg});
        let Some(entry) = self.tokens.get(token) else {
            return fail("[invalid bearer token, token lookup failed]".into());
        };
        if entry.revoked {
            return fail(
                "[invalid bearer token, service account token has been invalidated]".into(),
            );
        }
        let audiences: Vec<String> = match &entry.audiences {
            None => requested.to_vec(),
            Some(own) if requested.is_empty() => own.clone(),
            Some(own) => requested
                .iter()
                .filter(|a| own.contains(a))
                .cloned()
                .collect(),
        };
        if !requested.is_empty() && audiences.is_empty() {
            let own = entry.audiences.clone().unwrap_or_default();
            return fail(format!(
                "[invalid bearer token, token audiences {own:?} is invalid for the target audiences {requested:?}]"
            ));
        }
        json!({"authenticated": true, "user": entry.user.to_json(), "audiences": audiences})
    }
}

/// 403 worded as the real RBAC authoriser's denial.
pub(crate) fn forbidden(
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    ns: Option<&str>,
    name: Option<&str>,
) -> ApiError {
    let plural = resource.split('/').next().unwrap_or(resource);
    let what = match (group.is_empty(), name) {
        (true, Some(n)) => format!("{plural} \"{n}\""),
        (true, None) => plural.to_string(),
        (false, Some(n)) => format!("{plural}.{group} \"{n}\""),
        (false, None) => format!("{plural}.{group}"),
    };
    let scope = match ns {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    ApiError::new(
        403,
        "Forbidden",
        format!("{what} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"),
    )
    .with_details(group, plural, name.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_verbs_groups_and_subresources() {
        let p = Permissions::Rules(vec![
            Rule::new(&["get", "list"], &[""], &["pods"]),
            Rule::new(
                &["update"],
                &["multicluster.x-k8s.io"],
                &["serviceexports/status"],
            ),
            Rule::new(&["patch"], &["*"], &["*/status"]),
        ]);
        assert!(p.allows("get", "", "pods"));
        assert!(!p.allows("watch", "", "pods"));
        assert!(!p.allows("get", "apps", "pods"));
        assert!(p.allows("update", "multicluster.x-k8s.io", "serviceexports/status"));
        assert!(!p.allows("update", "multicluster.x-k8s.io", "serviceexports"));
        assert!(p.allows("patch", "x", "things/status"));
        assert!(Permissions::All.allows("delete", "x", "y"));
        assert!(!Permissions::none().allows("get", "", "pods"));
    }

    #[test]
    fn review_intersects_audiences() {
        let mut auth = Auth::default();
        let t = auth.issue_service_account_token(
            "ns",
            "sa",
            "pod-1",
            "uid-1",
            &["a", "b"],
            "https://x",
        );
        let ok = auth.review(&t, &["b".into(), "c".into()]);
        assert_eq!(ok["authenticated"], true);
        assert_eq!(ok["audiences"], json!(["b"]));
        assert_eq!(ok["user"]["username"], "system:serviceaccount:ns:sa");
        assert_eq!(
            ok["user"]["extra"]["authentication.kubernetes.io/pod-name"],
            json!(["pod-1"])
        );
        let wrong = auth.review(&t, &["c".into()]);
        assert!(wrong.get("authenticated").is_none());
        assert!(wrong["error"].as_str().unwrap().contains("audiences"));
        auth.revoke(&t);
        assert!(auth.review(&t, &[]).get("authenticated").is_none());
    }

    #[test]
    fn forbidden_message_is_worded_like_rbac() {
        let e = forbidden("alice", "list", "", "pods", Some("default"), None);
        assert_eq!(e.message, "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"");
        let e = forbidden(
            "bob",
            "get",
            "multicluster.x-k8s.io",
            "serviceexports",
            None,
            Some("x"),
        );
        assert!(e.message.ends_with("at the cluster scope"), "{}", e.message);
    }
}
