//! Property: `discovery::policy::authorize` (the reference semantics), the RBAC the builder
//! emits as Envoy evaluates it, and the same listener as the Causeway proxy evaluates it agree
//! on every request, on HTTP and on TCP ports.
//!
//! Policies (ALLOW/DENY, selectors, sources with exact and prefix principals, namespaces and
//! caller clusters, targets with ports and paths) are generated for a workload with one HTTP
//! port and one TCP port, and so are requests (caller identity or none, the cluster its
//! certificate names or none, the port, for HTTP a path with or without query and fragment).
//! The workload's inbound listener is built, decoded, and evaluated by a model of Envoy
//! (`envoy.rs`) written from Envoy's documentation, not from the builder:
//!
//! - the downstream TLS context: a client certificate is required and its URI SAN must match one
//!   of `match_typed_subject_alt_names`;
//! - the filters in order: network RBAC filters, then `tcp_proxy`; or an HTTP connection manager
//!   with HTTP RBAC filters, then the router. A request passes when no RBAC filter refuses it;
//! - an RBAC filter with action ALLOW lets through what some policy matches, DENY refuses what
//!   some policy matches; a policy matches when one of its permissions and one of its
//!   principals match (Envoy rejects a policy with no permission or no principal);
//! - permissions: `any`, `and_rules`, `or_rules`, `not_rule`, `destination_port`, and
//!   `url_path`, which matches the `:path` with query and fragment removed and only on HTTP
//!   (in a network RBAC filter it never matches);
//! - principals: `any`, `and_ids`, `or_ids`, `not_id`, `authenticated` (the principal name
//!   against each URI SAN, then each DNS SAN, then the subject), and the
//!   `envoy.rbac.principals.mtls_authenticated` extension (its SAN matcher against the SANs of
//!   its type).
//!
//! Anything else in the emitted config fails the test: the model must cover what is emitted.
//!
//! The third party (`causeway.rs`) converts the same listener with
//! `causeway_xds::dataplane::listener_config` (which must accept it) and decides with the
//! converted chain's downstream TLS check and `dataplane::rbac::authorize`.

mod causeway;
mod envoy;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use causeway_discovery::policy::{self, AuthzRequest};
use causeway_discovery::{MeshIndex, ProxyContext};
use causeway_model::{
    AuthorizationPolicy, ClusterId, ClusterObjects, MeshConfig, ObjectSource, PolicyAction,
    PolicyRule, PolicySource, PolicyTarget, ProxyIdentity, ProxyRole, SpiffeId,
};
use causeway_registry::MeshDirectory;
use causeway_xds::build::sidecar_resources;
use causeway_xds::dataplane::rbac;
use causeway_xds::node::ProxyNode;
use causeway_xds::resources::TypeUrl;
use envoy::{filters_allow, tls_accepts, Call, Peer};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use proptest::prelude::*;
use prost::Message;

const TD: &str = "td.local";
const HTTP_PORT: u16 = 8080;
const TCP_PORT: u16 = 5432;
const SERVER_ADDRESS: &str = "10.0.0.5";

const MESH: &str = "apiVersion: causeway.io/v1alpha1
kind: Mesh
metadata: {name: rbac}
spec: {trustDomain: td.local, discovery: exported}
---
apiVersion: causeway.io/v1alpha1
kind: Cluster
metadata: {name: alpha}
spec: {network: n1, locality: r1/z1}
";

const SERVER: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec:
  selector: {app: server}
  ports: [{name: tcp-db, port: 5432, targetPort: 5432, appProtocol: tcp}]
---
apiVersion: causeway.io/v1alpha1
kind: WorkloadEntry
metadata: {name: server, namespace: demo}
spec: {address: 10.0.0.5, labels: {app: server}, serviceAccount: server}
";

/// The mesh settings and alpha's objects, loaded once; each case sets the policies.
fn base() -> &'static (Arc<MeshConfig>, ClusterObjects) {
    static BASE: OnceLock<(Arc<MeshConfig>, ClusterObjects)> = OnceLock::new();
    BASE.get_or_init(|| {
        let scratch = tempfile::tempdir().expect("tmp");
        let root = scratch.path();
        std::fs::create_dir_all(root.join("clusters/alpha")).expect("mkdir");
        std::fs::write(root.join("mesh.yaml"), MESH).expect("write");
        std::fs::write(root.join("clusters/alpha/server.yaml"), SERVER).expect("write");
        let dir = MeshDirectory::open(root);
        assert!(dir.errors().is_empty(), "{:?}", dir.errors());
        let objects = dir.clusters()["alpha"].objects.clone().expect("loaded");
        (Arc::clone(dir.mesh().expect("mesh")), (*objects).clone())
    })
}

fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).expect("cluster id")
}

// ---------------------------------------------------------------------------------------------
// Generated policies and requests.

const NAMESPACES: [&str; 3] = ["demo", "shop", "ops"];
const ACCOUNTS: [&str; 2] = ["client", "admin"];
const CLUSTERS: [&str; 3] = ["alpha", "beta", "gamma"];
const PATH_PATTERNS: [&str; 8] = [
    "/",
    "/*",
    "/api",
    "/api/*",
    "/api/x",
    "/admin",
    "/admin*",
    "/api/x?debug=1",
];
const REQUEST_PATHS: [&str; 9] = [
    "/",
    "/api",
    "/api/x",
    "/api/x?debug=1",
    "/api#top",
    "/admin",
    "/admin/users?next=/api",
    "/apix",
    "/admin#/api",
];

fn identity() -> impl Strategy<Value = SpiffeId> {
    (0..NAMESPACES.len(), 0..ACCOUNTS.len())
        .prop_map(|(n, a)| SpiffeId::new(TD, NAMESPACES[n], ACCOUNTS[a]))
}

/// An exact SPIFFE ID (sometimes of another trust domain), or a prefix of one ending in `*`
/// (any cut after `spiffe://`, as validation allows).
fn principal_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        identity().prop_map(|id| id.to_string()),
        Just("spiffe://other.local/ns/demo/sa/client".to_owned()),
        (identity(), any::<prop::sample::Index>()).prop_map(|(id, cut)| {
            let uri = id.to_string();
            let at = "spiffe://".len() + cut.index(uri.len() - "spiffe://".len() + 1);
            format!("{}*", &uri[..at])
        }),
    ]
}

fn source() -> impl Strategy<Value = PolicySource> {
    (
        prop::collection::vec(principal_pattern(), 0..3),
        prop::collection::vec(
            prop_oneof![
                (0..NAMESPACES.len()).prop_map(|n| NAMESPACES[n].to_owned()),
                Just("de*".to_owned()),
            ],
            0..3,
        ),
        prop::collection::vec((0..CLUSTERS.len()).prop_map(|c| cid(CLUSTERS[c])), 0..3),
    )
        .prop_map(|(principals, namespaces, clusters)| PolicySource {
            principals,
            namespaces,
            clusters,
        })
}

fn target() -> impl Strategy<Value = PolicyTarget> {
    (
        prop::collection::vec(
            prop_oneof![Just(HTTP_PORT), Just(TCP_PORT), Just(9999)],
            0..3,
        ),
        prop::collection::vec(
            (0..PATH_PATTERNS.len()).prop_map(|p| PATH_PATTERNS[p].to_owned()),
            0..3,
        ),
    )
        .prop_map(|(ports, paths)| PolicyTarget { ports, paths })
}

fn rule() -> impl Strategy<Value = PolicyRule> {
    (
        prop::collection::vec(source(), 0..3),
        prop::collection::vec(target(), 0..3),
    )
        .prop_map(|(from, to)| PolicyRule { from, to })
}

fn policy() -> impl Strategy<Value = AuthorizationPolicy> {
    (
        any::<bool>(),
        prop::bool::weighted(0.9),
        prop_oneof![Just(None), Just(Some("server")), Just(Some("other"))],
        prop::collection::vec(rule(), 0..3),
    )
        .prop_map(|(deny, own_namespace, app, rules)| AuthorizationPolicy {
            namespace: if own_namespace { "demo" } else { "shop" }.to_owned(),
            name: String::new(),
            selector: app.map(|a| BTreeMap::from([("app".to_owned(), a.to_owned())])),
            action: if deny {
                PolicyAction::Deny
            } else {
                PolicyAction::Allow
            },
            rules,
            source: ObjectSource::default(),
        })
}

/// One request: who calls (with which certificate), and what.
#[derive(Debug, Clone)]
struct Request {
    principal: Option<SpiffeId>,
    cluster: Option<ClusterId>,
    http: bool,
    path: &'static str,
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop::option::weighted(0.9, identity()),
        prop::option::weighted(0.8, (0..CLUSTERS.len()).prop_map(|c| cid(CLUSTERS[c]))),
        any::<bool>(),
        (0..REQUEST_PATHS.len()).prop_map(|p| REQUEST_PATHS[p]),
    )
        .prop_map(|(principal, cluster, http, path)| Request {
            principal,
            cluster,
            http,
            path,
        })
}

// ---------------------------------------------------------------------------------------------
// The property.

fn index_with(policies: &[AuthorizationPolicy]) -> MeshIndex {
    let (mesh, alpha) = base();
    let mut objects = alpha.clone();
    for (i, p) in policies.iter().enumerate() {
        let mut p = p.clone();
        p.name = format!("p{i}");
        objects
            .policies
            .insert((p.namespace.clone(), p.name.clone()), p);
    }
    let all = BTreeMap::from([(cid("alpha"), objects)]);
    MeshIndex::build(Arc::clone(mesh), all.iter())
}

fn server_listener(index: &MeshIndex, port: u16) -> (ProxyContext, Listener) {
    let identity = ProxyIdentity {
        cluster: cid("alpha"),
        namespace: "demo".into(),
        workload: "server".into(),
        role: ProxyRole::Sidecar,
    };
    let ctx = ProxyContext::resolve(index, identity.clone()).expect("context");
    let node = ProxyNode {
        id: "server".into(),
        identity,
        app_address: None,
        outbound: None,
        network: None,
        data_plane: Default::default(),
    };
    let r = sidecar_resources(index, &node, &ctx);
    let name = format!("inbound|{SERVER_ADDRESS}:{port}");
    let body = r
        .of(TypeUrl::Listener)
        .and_then(|m| m.get(&name))
        .unwrap_or_else(|| panic!("no listener {name}"));
    (ctx, Listener::decode(&*body.body.value).expect("listener"))
}

/// The caller's certificate: its SPIFFE ID, its cluster's DNS SAN, the trust domain as `O`.
fn certificate(req: &Request) -> Option<(Vec<String>, Vec<String>, String)> {
    req.principal.as_ref().map(|id| {
        (
            vec![id.to_string()],
            req.cluster.iter().map(|c| c.certificate_san(TD)).collect(),
            format!("O={TD}"),
        )
    })
}

/// What Envoy decides for `req` on the server's inbound listener.
fn envoy_allows(listener: &Listener, req: &Request, port: u16) -> bool {
    let peer = certificate(req).map(|(uri_sans, dns_sans, subject)| Peer {
        uri_sans,
        dns_sans,
        subject,
    });
    if !tls_accepts(listener, peer.as_ref()) {
        return false;
    }
    let Some(peer) = peer.as_ref() else {
        return false;
    };
    let call = Call {
        peer,
        port,
        path: req.http.then_some(req.path),
    };
    filters_allow(listener, &call)
}

/// What the Causeway proxy decides for `req` on the same listener.
fn causeway_allows(listener: &Listener, req: &Request, port: u16) -> bool {
    let peer = certificate(req).map(|(uri_sans, dns_sans, subject)| rbac::Peer {
        uri_sans,
        dns_sans,
        subject,
    });
    causeway::allows(listener, peer.as_ref(), port, req.path)
}

/// The three decisions for one request, and the reference's reason.
struct Decisions {
    reference: bool,
    envoy: bool,
    causeway: bool,
    reason: String,
}

impl Decisions {
    fn all(&self) -> (bool, bool, bool) {
        (self.reference, self.envoy, self.causeway)
    }
}

fn decide(policies: &[AuthorizationPolicy], req: &Request) -> Decisions {
    let index = index_with(policies);
    let port = if req.http { HTTP_PORT } else { TCP_PORT };
    let (ctx, listener) = server_listener(&index, port);
    let applicable = policy::inbound_policies(&index, &ctx);
    let reference = policy::authorize(
        &applicable,
        &AuthzRequest {
            principal: req.principal.as_ref(),
            cluster: req.cluster.as_ref(),
            port,
            path: req.http.then_some(req.path),
        },
    );
    Decisions {
        reference: reference.allowed,
        envoy: envoy_allows(&listener, req, port),
        causeway: causeway_allows(&listener, req, port),
        reason: reference.reason,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn authorize_envoy_and_the_causeway_proxy_agree(
        policies in prop::collection::vec(policy(), 0..4),
        req in request(),
    ) {
        let d = decide(&policies, &req);
        prop_assert_eq!(
            d.reference, d.envoy,
            "authorize says {} ({}), Envoy's RBAC says {}", d.reference, d.reason, d.envoy
        );
        prop_assert_eq!(
            d.reference, d.causeway,
            "authorize says {} ({}), the Causeway proxy says {}", d.reference, d.reason,
            d.causeway
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The cases the property found, pinned.

fn one_rule(action: PolicyAction, from: PolicySource, to: PolicyTarget) -> AuthorizationPolicy {
    AuthorizationPolicy {
        namespace: "demo".into(),
        name: String::new(),
        selector: None,
        action,
        rules: vec![PolicyRule {
            from: vec![from],
            to: vec![to],
        }],
        source: ObjectSource::default(),
    }
}

fn client(http: bool, path: &'static str) -> Request {
    Request {
        principal: Some(SpiffeId::new(TD, "demo", "client")),
        cluster: Some(cid("alpha")),
        http,
        path,
    }
}

fn paths(p: &[&str]) -> PolicyTarget {
    PolicyTarget {
        ports: Vec::new(),
        paths: p.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[test]
fn a_deny_rule_with_paths_denies_the_whole_tcp_port() {
    let deny = one_rule(
        PolicyAction::Deny,
        PolicySource::default(),
        paths(&["/admin"]),
    );
    let d = decide(std::slice::from_ref(&deny), &client(false, "/"));
    assert_eq!(d.all(), (false, false, false));
    // On an HTTP port the paths are checked.
    assert_eq!(
        decide(&[deny], &client(true, "/")).all(),
        (true, true, true)
    );
}

#[test]
fn an_allow_rule_with_paths_allows_nothing_on_a_tcp_port() {
    let allow = one_rule(PolicyAction::Allow, PolicySource::default(), paths(&["/*"]));
    let d = decide(&[allow], &client(false, "/"));
    assert_eq!(d.all(), (false, false, false));
}

#[test]
fn paths_are_matched_without_query_or_fragment() {
    let deny = one_rule(
        PolicyAction::Deny,
        PolicySource::default(),
        paths(&["/admin"]),
    );
    for path in ["/admin?x=1", "/admin#top"] {
        let d = decide(std::slice::from_ref(&deny), &client(true, path));
        assert_eq!(d.all(), (false, false, false), "{path}");
    }
    let d = decide(&[deny], &client(true, "/admins"));
    assert_eq!(d.all(), (true, true, true));
}

#[test]
fn a_caller_without_a_certificate_is_refused_even_without_policies() {
    let anonymous = Request {
        principal: None,
        ..client(true, "/")
    };
    assert_eq!(decide(&[], &anonymous).all(), (false, false, false));
}

#[test]
fn the_model_sees_the_emitted_rbac() {
    // Guards the oracles: a policy that denies the client must change both answers.
    let deny = one_rule(
        PolicyAction::Deny,
        PolicySource {
            clusters: vec![cid("alpha")],
            ..PolicySource::default()
        },
        PolicyTarget::default(),
    );
    assert_eq!(decide(&[], &client(true, "/")).all(), (true, true, true));
    let d = decide(std::slice::from_ref(&deny), &client(true, "/"));
    assert_eq!(d.all(), (false, false, false));
    assert_eq!(
        decide(&[deny], &client(false, "/")).all(),
        (false, false, false)
    );
}

#[test]
fn other_ports_are_untouched_by_port_scoped_rules() {
    let deny = one_rule(
        PolicyAction::Deny,
        PolicySource::default(),
        PolicyTarget {
            ports: vec![9999],
            paths: vec!["/admin".into()],
        },
    );
    assert_eq!(
        decide(&[deny], &client(false, "/")).all(),
        (true, true, true)
    );
}
