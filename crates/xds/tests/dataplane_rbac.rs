//! RBAC on the data plane's side of the boundary: the network and HTTP RBAC filters the control
//! plane emits (the example mesh with `common::files::POLICIES`) convert and decide as the
//! policies say; what the proxy does not evaluate is refused naming the field's path.
//! `tests/rbac/` holds the conversion and `authorize` to the reference semantics on generated
//! policies; `rbac_semantics.rs` pins Envoy's rules on hand-written configurations.

mod common;

use causeway_model::ClusterId;
use causeway_xds::dataplane::rbac::{
    authorize, Call, Denied, Peer, Permission, Principal, RbacAction, RbacConfig,
};
use causeway_xds::dataplane::tls::{SanKind, StringMatch};
use causeway_xds::dataplane::{listener_config, ChainAction, ConfigError};
use causeway_xds::resources::{Resources, TypeUrl};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, Listener};
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::extensions::rbac::principals::mtls_authenticated::v3 as mtls;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use prost::Message;

const TD: &str = "causeway.local";
const LEDGER_TCP: &str = "inbound|127.3.0.13:5432";
const LEDGER_HTTP: &str = "inbound|127.3.0.13:8080";
const NO_STRANGERS: &str = "demo/no-strangers[0]";
const LEDGER_ACCESS: &str = "demo/ledger-access[0]";

fn ledger() -> Resources {
    let index = common::files::example_with(common::files::POLICIES);
    common::sidecar_of(&index, "gamma", "ledger-gamma-1")
}

fn listener(r: &Resources, name: &str) -> Listener {
    common::decoded::<Listener>(r, TypeUrl::Listener)
        .into_iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}

fn id(ns: &str, sa: &str) -> String {
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
}

/// A mesh certificate: the SPIFFE ID, the caller cluster's DNS SAN, the trust domain as `O`.
fn peer(ns: &str, sa: &str, cluster: &str) -> Peer {
    Peer {
        uri_sans: vec![id(ns, sa)],
        dns_sans: vec![ClusterId::new(cluster).expect("id").certificate_san(TD)],
        subject: format!("O={TD}"),
    }
}

fn tcp_rbac(l: &Listener) -> Vec<RbacConfig> {
    let cfg = listener_config(l).expect("accepted");
    let ChainAction::TcpProxy(p) = &cfg.filter_chains[0].action else {
        panic!("a TCP proxy: {cfg:?}")
    };
    assert!(p.connect_after_tls_handshake, "ON_DOWNSTREAM_TLS_HANDSHAKE");
    p.rbac.clone()
}

fn http_rbac(l: &Listener) -> Vec<RbacConfig> {
    let cfg = listener_config(l).expect("accepted");
    let ChainAction::Http(m) = &cfg.filter_chains[0].action else {
        panic!("an HTTP connection manager: {cfg:?}")
    };
    m.rbac.clone()
}

#[test]
fn the_ledgers_tcp_port_gets_network_rbac_deny_then_allow() {
    let filters = tcp_rbac(&listener(&ledger(), LEDGER_TCP));
    let summary: Vec<(&str, &str, RbacAction)> = filters
        .iter()
        .map(|f| (f.name.as_str(), f.stat_prefix.as_str(), f.action))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "envoy.filters.network.rbac",
                "causeway_deny_",
                RbacAction::Deny
            ),
            (
                "envoy.filters.network.rbac",
                "causeway_allow_",
                RbacAction::Allow
            ),
        ]
    );
    let access = &filters[1].policies[LEDGER_ACCESS];
    // The HTTP target (port 8080 with paths) cannot match a TCP connection: it is left out.
    assert_eq!(access.permissions, vec![Permission::DestinationPort(5432)]);
    assert_eq!(
        access.principals,
        vec![
            Principal::MtlsSan {
                kind: SanKind::Dns,
                matcher: StringMatch::Exact(format!("gamma.cluster.{TD}")),
            },
            Principal::Authenticated(StringMatch::Exact(id("demo", "greeter"))),
        ]
    );
}

#[test]
fn the_converted_network_rbac_decides_as_the_policies_say() {
    let filters = tcp_rbac(&listener(&ledger(), LEDGER_TCP));
    let on = |peer: Option<&Peer>| {
        authorize(
            &filters,
            &Call {
                peer,
                destination_port: 5432,
                path: None,
            },
        )
    };
    // From gamma (any workload), or the greeter from anywhere.
    assert_eq!(on(Some(&peer("demo", "echo", "gamma"))), Ok(()));
    assert_eq!(on(Some(&peer("demo", "greeter", "alpha"))), Ok(()));
    let refused = on(Some(&peer("demo", "client", "alpha"))).expect_err("not allowed");
    assert_eq!(
        refused,
        Denied {
            filter: 1,
            name: "envoy.filters.network.rbac",
            stat_prefix: "causeway_allow_",
            action: RbacAction::Allow,
            policy: None,
        }
    );
    assert!(
        refused.to_string().contains("no Allow policy matched"),
        "{refused}"
    );
    // The DENY filter runs first and names its policy.
    let stranger = on(Some(&peer("strangers", "x", "gamma"))).expect_err("denied");
    assert_eq!((stranger.filter, stranger.policy), (0, Some(NO_STRANGERS)));
    assert!(stranger.to_string().contains(NO_STRANGERS), "{stranger}");
    assert_eq!(on(None).map_err(|d| d.filter), Err(1), "no certificate");
}

#[test]
fn the_converted_http_rbac_checks_paths_without_query() {
    let filters = http_rbac(&listener(&ledger(), LEDGER_HTTP));
    let greeter = peer("demo", "greeter", "gamma");
    let on = |path: &'static str| {
        authorize(
            &filters,
            &Call {
                peer: Some(&greeter),
                destination_port: 8080,
                path: Some(path),
            },
        )
        .map_err(|d| (d.filter, d.policy))
    };
    assert_eq!(on("/ledger/entries?page=2"), Ok(()));
    assert_eq!(on("/admin/x"), Err((0, Some("demo/ledger-admin[0]"))));
    assert_eq!(on("/ledger"), Err((1, None)), "the prefix is /ledger/");
}

// ---------------------------------------------------------------------------------------------
// Refusals, each naming the field's path.

fn refused(l: &Listener) -> ConfigError {
    let e = listener_config(l).expect_err("refused");
    assert!(e.resource.starts_with("Listener inbound|"), "{e}");
    e
}

/// Re-encodes the typed config of `f` after `change`.
fn edit<M: Message + Default>(f: &mut Filter, change: impl FnOnce(&mut M)) {
    let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
        panic!("typed config")
    };
    edit_any(any, change);
}

fn edit_any<M: Message + Default>(any: &mut Any, change: impl FnOnce(&mut M)) {
    let mut m = M::decode(&*any.value).expect("decode");
    change(&mut m);
    any.value = m.encode_to_vec();
}

/// The ledger's TCP listener with network RBAC filter `i` changed.
fn network(i: usize, change: impl FnOnce(&mut net_rbac::Rbac)) -> Listener {
    let mut l = listener(&ledger(), LEDGER_TCP);
    edit(&mut l.filter_chains[0].filters[i], change);
    l
}

fn policy<'a>(rules: &'a mut Option<rbac::Rbac>, name: &str) -> &'a mut rbac::Policy {
    let rules = rules.as_mut().expect("rules");
    rules.policies.get_mut(name).expect("policy")
}

fn at_policy(filter: usize, name: &str) -> String {
    format!("filter_chains[0].filters[{filter}].typed_config.rules.policies[{name:?}]")
}

#[test]
fn unsupported_principals_and_permissions_are_refused_naming_the_field() {
    let deny = at_policy(0, NO_STRANGERS);
    let e = refused(&network(0, |r| {
        policy(&mut r.rules, NO_STRANGERS).principals[0] = rbac::Principal {
            identifier: Some(rbac::principal::Identifier::RemoteIp(
                core::CidrRange::default(),
            )),
        };
    }));
    assert_eq!(e.field, format!("{deny}.principals[0].remote_ip"));
    assert!(e.reason.contains("not supported"), "{e}");

    let e = refused(&network(0, |r| {
        let p = policy(&mut r.rules, NO_STRANGERS);
        let Some(rbac::principal::Identifier::Authenticated(a)) = &mut p.principals[0].identifier
        else {
            panic!("authenticated: {p:?}")
        };
        let m = a.principal_name.as_mut().expect("name");
        m.ignore_case = true;
    }));
    assert_eq!(
        e.field,
        format!("{deny}.principals[0].authenticated.principal_name.ignore_case")
    );

    let e = refused(&network(0, |r| {
        let p = policy(&mut r.rules, NO_STRANGERS);
        p.principals[0] = rbac::Principal {
            identifier: Some(rbac::principal::Identifier::Authenticated(
                rbac::principal::Authenticated {
                    principal_name: Some(
                        envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                            match_pattern: Some(MatchPattern::Suffix("/sa/x".into())),
                            ignore_case: false,
                        },
                    ),
                },
            )),
        };
    }));
    assert_eq!(
        e.field,
        format!("{deny}.principals[0].authenticated.principal_name.suffix")
    );

    let e = refused(&network(0, |r| {
        let p = policy(&mut r.rules, NO_STRANGERS);
        p.permissions[0] = rbac::Permission {
            rule: Some(rbac::permission::Rule::AndRules(
                rbac::permission::Set::default(),
            )),
        };
    }));
    assert_eq!(e.field, format!("{deny}.permissions[0].and_rules.rules"));

    let e = refused(&network(1, |r| {
        let p = policy(&mut r.rules, LEDGER_ACCESS);
        p.permissions[0].rule = Some(rbac::permission::Rule::DestinationPort(70000));
    }));
    assert_eq!(
        e.field,
        format!(
            "{}.permissions[0].destination_port",
            at_policy(1, LEDGER_ACCESS)
        )
    );
    assert!(e.reason.contains("70000"), "{e}");
}

#[test]
fn a_policy_without_principals_or_permissions_is_refused() {
    let deny = at_policy(0, NO_STRANGERS);
    let e = refused(&network(0, |r| {
        policy(&mut r.rules, NO_STRANGERS).principals.clear();
    }));
    assert_eq!(e.field, format!("{deny}.principals"));
    assert!(e.reason.contains("without principals"), "{e}");
    let e = refused(&network(0, |r| {
        policy(&mut r.rules, NO_STRANGERS).permissions.clear();
    }));
    assert_eq!(e.field, format!("{deny}.permissions"));
    assert!(e.reason.contains("without permissions"), "{e}");
}

#[test]
fn the_mtls_authenticated_principal_takes_a_uri_or_dns_san_matcher_only() {
    let at = format!(
        "{}.principals[0].custom.typed_config",
        at_policy(1, LEDGER_ACCESS)
    );
    let mtls_config = |change: fn(&mut mtls::Config)| {
        refused(&network(1, |r| {
            let p = policy(&mut r.rules, LEDGER_ACCESS);
            let Some(rbac::principal::Identifier::Custom(ext)) = &mut p.principals[0].identifier
            else {
                panic!("mtls_authenticated: {p:?}")
            };
            edit_any(ext.typed_config.as_mut().expect("config"), change);
        }))
    };
    let e = mtls_config(|c| c.any_validated_client_certificate = true);
    assert_eq!(e.field, format!("{at}.any_validated_client_certificate"));
    let e = mtls_config(|c| c.san_matcher = None);
    assert_eq!(e.field, format!("{at}.san_matcher"));
    let e = mtls_config(|c| {
        if let Some(m) = &mut c.san_matcher {
            m.san_type = 1; // EMAIL
        }
    });
    assert_eq!(e.field, format!("{at}.san_matcher.san_type"));
    assert!(e.reason.contains("EMAIL"), "{e}");

    let e = refused(&network(1, |r| {
        let p = policy(&mut r.rules, LEDGER_ACCESS);
        if let Some(rbac::principal::Identifier::Custom(ext)) = &mut p.principals[0].identifier {
            ext.typed_config = Some(Any {
                type_url: "type.googleapis.com/example.Principal".into(),
                value: Vec::new(),
            });
        }
    }));
    assert_eq!(e.field, at);
    assert!(e.reason.contains("example.Principal"), "{e}");
}

#[test]
fn filter_fields_the_proxy_does_not_honour_are_refused() {
    let at = "filter_chains[0].filters[0].typed_config";
    type Change = fn(&mut net_rbac::Rbac);
    let cases: [(Change, &str); 9] = [
        (|r| r.shadow_rules = r.rules.clone(), "shadow_rules"),
        (|r| r.matcher = Some(Default::default()), "matcher"),
        (|r| r.delay_deny = Some(Duration::default()), "delay_deny"),
        (|r| r.enforcement_type = 1, "enforcement_type"),
        (|r| r.stat_prefix.clear(), "stat_prefix"),
        (|r| r.rules = None, "rules"),
        (
            |r| r.rules.as_mut().expect("rules").action = 2,
            "rules.action",
        ),
        (
            |r| r.rules.as_mut().expect("rules").audit_logging_options = Some(Default::default()),
            "rules.audit_logging_options",
        ),
        (
            |r| policy(&mut r.rules, NO_STRANGERS).condition = Some(Default::default()),
            "rules.policies[\"demo/no-strangers[0]\"].condition",
        ),
    ];
    for (change, field) in cases {
        let e = refused(&network(0, change));
        assert_eq!(e.field, format!("{at}.{field}"), "{e}");
    }
}

#[test]
fn only_network_rbac_may_come_before_the_tcp_proxy() {
    let l = listener(&ledger(), LEDGER_TCP);
    // The TCP proxy first.
    let mut swapped = l.clone();
    swapped.filter_chains[0].filters.swap(0, 2);
    let e = refused(&swapped);
    assert_eq!(e.field, "filter_chains[0].filters[0].typed_config");
    assert!(e.reason.contains("TcpProxy"), "{e}");
    // RBAC last.
    let mut no_proxy = l.clone();
    no_proxy.filter_chains[0].filters.pop();
    let e = refused(&no_proxy);
    assert_eq!(e.field, "filter_chains[0].filters[1]");
    // Network RBAC in front of the HTTP connection manager.
    let mut http = listener(&ledger(), LEDGER_HTTP);
    let rbac = l.filter_chains[0].filters[0].clone();
    http.filter_chains[0].filters.insert(0, rbac);
    let e = refused(&http);
    assert_eq!(e.field, "filter_chains[0].filters[0]");
    assert!(e.reason.contains("HTTP connection manager"), "{e}");
}

#[test]
fn the_tcp_proxy_connects_at_once_or_after_the_handshake_and_buffers_nothing() {
    let proxy = |change: fn(&mut tcp::TcpProxy)| {
        let mut l = listener(&ledger(), LEDGER_TCP);
        edit(&mut l.filter_chains[0].filters[2], change);
        listener_config(&l)
    };
    let e = proxy(|p| p.upstream_connect_mode = 1).expect_err("ON_DOWNSTREAM_DATA");
    assert_eq!(e.field, "filter_chains[0].filters[2].upstream_connect_mode");
    let e = proxy(|p| p.max_early_data_bytes = Some(UInt32Value { value: 16 }))
        .expect_err("early data");
    assert_eq!(e.field, "filter_chains[0].filters[2].max_early_data_bytes");
    let e = proxy(|p| p.max_early_data_bytes = None).expect_err("required by Envoy");
    assert_eq!(e.field, "filter_chains[0].filters[2].max_early_data_bytes");
    let cfg = proxy(|p| {
        p.upstream_connect_mode = 0;
        p.max_early_data_bytes = None;
    })
    .expect("IMMEDIATE");
    let ChainAction::TcpProxy(p) = &cfg.filter_chains[0].action else {
        panic!("{cfg:?}")
    };
    assert!(!p.connect_after_tls_handshake);
}

#[test]
fn http_rbac_refusals_name_the_filters_position() {
    let mut l = listener(&ledger(), LEDGER_HTTP);
    edit::<hcm::HttpConnectionManager>(&mut l.filter_chains[0].filters[0], |m| {
        let Some(hcm::http_filter::ConfigType::TypedConfig(any)) =
            &mut m.http_filters[1].config_type
        else {
            panic!("typed config")
        };
        edit_any::<HttpRbac>(any, |r| {
            r.track_per_rule_stats = true; // statistics only: accepted
            policy(&mut r.rules, LEDGER_ACCESS).permissions[0].rule =
                Some(rbac::permission::Rule::Header(HeaderMatcher {
                    name: ":method".into(),
                    ..Default::default()
                }));
        });
    });
    let e = refused(&l);
    assert_eq!(
        e.field,
        format!(
            "filter_chains[0].filters[0].typed_config.http_filters[1].typed_config.rules\
             .policies[{LEDGER_ACCESS:?}].permissions[0].header"
        )
    );
    assert!(e.reason.contains("url_path"), "says what is supported: {e}");
}
