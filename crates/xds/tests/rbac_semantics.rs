//! `dataplane::rbac`'s evaluation on hand-written configurations, one of Envoy's documented
//! rules per test: actions, filter order, policy order, url_path, principals without a
//! certificate, `authenticated` and the `mtls_authenticated` SAN matcher.

use std::collections::BTreeMap;

use causeway_xds::dataplane::rbac::{
    authorize, Call, Decision, Peer, Permission, PolicyConfig, Principal, RbacAction, RbacConfig,
};
use causeway_xds::dataplane::tls::{SanKind, StringMatch};

fn filter(action: RbacAction, policies: &[(&str, PolicyConfig)]) -> RbacConfig {
    RbacConfig {
        name: "envoy.filters.http.rbac".into(),
        stat_prefix: format!("{action:?}_").to_lowercase(),
        action,
        policies: policies
            .iter()
            .map(|(n, p)| ((*n).to_owned(), p.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn policy(permission: Permission, principal: Principal) -> PolicyConfig {
    PolicyConfig {
        permissions: vec![permission],
        principals: vec![principal],
    }
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

fn client() -> Peer {
    Peer {
        uri_sans: vec!["spiffe://td/ns/demo/sa/client".into()],
        dns_sans: vec!["alpha.cluster.td".into()],
        subject: "O=td".into(),
    }
}

fn http<'a>(peer: Option<&'a Peer>, path: &'a str) -> Call<'a> {
    Call {
        peer,
        destination_port: 8080,
        path: Some(path),
    }
}

#[test]
fn without_policies_allow_refuses_everything_and_deny_nothing() {
    let peer = client();
    let call = http(Some(&peer), "/");
    assert_eq!(
        filter(RbacAction::Allow, &[]).decide(&call),
        Decision::Deny { policy: None }
    );
    assert_eq!(
        filter(RbacAction::Deny, &[]).decide(&call),
        Decision::Allow { policy: None }
    );
}

#[test]
fn the_first_refusal_wins_and_names_the_first_matching_policy_by_name() {
    let anyone = policy(Permission::Any, Principal::Any);
    let deny = filter(
        RbacAction::Deny,
        &[("b", anyone.clone()), ("a", anyone.clone())],
    );
    let allow = filter(RbacAction::Allow, &[]);
    let peer = client();
    let call = http(Some(&peer), "/");
    let allow_first = [allow.clone(), deny.clone()];
    let denied = authorize(&allow_first, &call).expect_err("refused");
    assert_eq!(
        (denied.filter, denied.action, denied.policy),
        (0, RbacAction::Allow, None)
    );
    let deny_first = [deny, allow];
    let denied = authorize(&deny_first, &call).expect_err("refused");
    assert_eq!(
        (denied.filter, denied.stat_prefix, denied.policy),
        (0, "deny_", Some("a"))
    );
    assert_eq!(authorize(&[], &call), Ok(()), "no filter, no refusal");
}

#[test]
fn url_path_ignores_query_and_fragment_and_never_matches_tcp() {
    let admin = filter(
        RbacAction::Deny,
        &[(
            "admin",
            policy(Permission::UrlPath(exact("/admin")), Principal::Any),
        )],
    );
    let peer = client();
    for path in ["/admin", "/admin?x=1", "/admin#top"] {
        assert!(authorize(std::slice::from_ref(&admin), &http(Some(&peer), path)).is_err());
    }
    assert!(authorize(std::slice::from_ref(&admin), &http(Some(&peer), "/admins")).is_ok());
    let tcp = Call {
        peer: Some(&peer),
        destination_port: 8080,
        path: None,
    };
    assert!(authorize(std::slice::from_ref(&admin), &tcp).is_ok());
    // Its negation therefore matches every TCP connection.
    let not_admin = filter(
        RbacAction::Deny,
        &[(
            "not-admin",
            policy(
                Permission::Not(Box::new(Permission::UrlPath(exact("/admin")))),
                Principal::Any,
            ),
        )],
    );
    assert!(authorize(&[not_admin], &tcp).is_err());
}

#[test]
fn ports_and_sets_combine_as_written() {
    let p = Permission::And(vec![
        Permission::Or(vec![
            Permission::DestinationPort(80),
            Permission::DestinationPort(8080),
        ]),
        Permission::Not(Box::new(Permission::UrlPath(StringMatch::Prefix(
            "/private".into(),
        )))),
    ]);
    let peer = client();
    assert!(p.matches(&http(Some(&peer), "/public")));
    assert!(!p.matches(&http(Some(&peer), "/private/x")));
    let other_port = Call {
        destination_port: 9090,
        ..http(Some(&peer), "/public")
    };
    assert!(!p.matches(&other_port));
}

#[test]
fn authenticated_tries_uri_sans_dns_sans_then_the_subject() {
    let peer = client();
    let on = |m: StringMatch| Principal::Authenticated(m).matches(Some(&peer));
    assert!(on(exact("spiffe://td/ns/demo/sa/client")));
    assert!(on(exact("alpha.cluster.td")));
    assert!(on(exact("O=td")));
    assert!(on(StringMatch::Prefix("spiffe://td/ns/demo/".into())));
    assert!(!on(exact("spiffe://td/ns/demo/sa/other")));
    // Case matters for `authenticated`, DNS SANs included.
    assert!(!on(exact("ALPHA.cluster.td")));
}

#[test]
fn without_a_certificate_only_any_and_negations_match() {
    let named = Principal::Authenticated(exact("spiffe://td/ns/demo/sa/client"));
    let san = Principal::MtlsSan {
        kind: SanKind::Uri,
        matcher: StringMatch::Prefix("spiffe://".into()),
    };
    assert!(!named.matches(None));
    assert!(!san.matches(None));
    assert!(Principal::Any.matches(None));
    assert!(Principal::Not(Box::new(named.clone())).matches(None));
    assert!(!Principal::And(vec![Principal::Any, named.clone()]).matches(None));
    assert!(Principal::Or(vec![named, Principal::Any]).matches(None));
}

#[test]
fn mtls_san_looks_only_at_sans_of_its_kind_and_dns_exact_follows_dns_rules() {
    let uri = |m: StringMatch| Principal::MtlsSan {
        kind: SanKind::Uri,
        matcher: m,
    };
    let dns = |m: StringMatch| Principal::MtlsSan {
        kind: SanKind::Dns,
        matcher: m,
    };
    let peer = client();
    assert!(uri(exact("spiffe://td/ns/demo/sa/client")).matches(Some(&peer)));
    assert!(!uri(exact("alpha.cluster.td")).matches(Some(&peer)));
    assert!(!uri(exact("O=td")).matches(Some(&peer)), "not the subject");
    assert!(dns(exact("alpha.cluster.td")).matches(Some(&peer)));
    assert!(!dns(exact("spiffe://td/ns/demo/sa/client")).matches(Some(&peer)));
    // Envoy compares an exact DNS matcher as a DNS name: case aside, and a wildcard SAN in the
    // certificate covers one label.
    assert!(dns(exact("Alpha.Cluster.TD")).matches(Some(&peer)));
    let wildcard = Peer {
        dns_sans: vec!["*.cluster.td".into()],
        ..client()
    };
    assert!(dns(exact("alpha.cluster.td")).matches(Some(&wildcard)));
    assert!(!dns(exact("a.b.cluster.td")).matches(Some(&wildcard)));
    // A prefix matcher compares strings.
    assert!(!dns(StringMatch::Prefix("alpha".into())).matches(Some(&wildcard)));
    assert!(dns(StringMatch::Prefix("alpha".into())).matches(Some(&peer)));
}
