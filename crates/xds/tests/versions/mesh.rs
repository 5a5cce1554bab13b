//! Generated meshes: two clusters (alpha with the client sidecar, beta with a gateway), echo
//! endpoints in either, policies on the client; and what the builders make of them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use causeway_discovery::{MeshIndex, ProxyContext};
use causeway_model::*;
use causeway_xds::build::{gateway_resources, sidecar_resources};
use causeway_xds::node::{OutboundBlock, ProxyNode};
use causeway_xds::resources::TypeUrl;
use proptest::prelude::*;

use crate::canonical::contents;

/// One echo endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// In beta rather than alpha.
    pub beta: bool,
    pub octet: u8,
    pub weight: u32,
    pub locality: usize,
    pub account: usize,
    pub healthy: bool,
}

/// One policy rule on the client (alpha/demo/client).
#[derive(Debug, Clone)]
pub struct Rule {
    pub deny: bool,
    pub principal: Option<usize>,
    pub namespace: Option<usize>,
    pub cluster: Option<bool>,
    pub path: Option<usize>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct Input {
    pub trust_domain: usize,
    /// beta on alpha's network (direct) rather than its own (through its gateway).
    pub beta_same_network: bool,
    pub gateway: (u8, u16),
    pub echo_port: u16,
    pub echo_http: bool,
    pub echo_target: u16,
    pub client_port: u16,
    pub client_http: bool,
    pub endpoints: Vec<Endpoint>,
    pub rules: Vec<Rule>,
}

pub const LOCALITIES: [&str; 4] = ["r1/z1", "r1/z2", "r2/z1", "r1/z1/s1"];
pub const NAMES: [&str; 3] = ["a", "b", "c"];

pub fn endpoint() -> impl Strategy<Value = Endpoint> {
    (
        any::<bool>(),
        1u8..250,
        1u32..5,
        0..LOCALITIES.len(),
        0..NAMES.len(),
        proptest::bool::weighted(0.8),
    )
        .prop_map(
            |(beta, octet, weight, locality, account, healthy)| Endpoint {
                beta,
                octet,
                weight,
                locality,
                account,
                healthy,
            },
        )
}

pub fn rule() -> impl Strategy<Value = Rule> {
    let idx = || proptest::option::of(0..NAMES.len());
    (
        any::<bool>(),
        idx(),
        idx(),
        proptest::option::of(any::<bool>()),
        idx(),
        proptest::option::of(prop_oneof![Just(8080u16), Just(9090)]),
    )
        .prop_map(|(deny, principal, namespace, cluster, path, port)| Rule {
            deny,
            principal,
            namespace,
            cluster,
            path,
            port,
        })
}

pub fn input() -> impl Strategy<Value = Input> {
    (
        (
            0usize..2,
            any::<bool>(),
            (1u8..4, prop_oneof![Just(15443u16), Just(15444)]),
        ),
        (
            prop_oneof![Just(80u16), Just(81)],
            any::<bool>(),
            8000u16..8003,
        ),
        (prop_oneof![Just(8080u16), Just(9090)], any::<bool>()),
        proptest::collection::vec(endpoint(), 1..5),
        proptest::collection::vec(rule(), 0..3),
    )
        .prop_map(
            |(
                (trust_domain, beta_same_network, gateway),
                (echo_port, echo_http, echo_target),
                (client_port, client_http),
                endpoints,
                rules,
            )| Input {
                trust_domain,
                beta_same_network,
                gateway,
                echo_port,
                echo_http,
                echo_target,
                client_port,
                client_http,
                endpoints,
                rules,
            },
        )
}

pub fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).expect("cluster id")
}

pub fn service(name: &str, port: u16, target: u16, http: bool) -> Service {
    Service {
        key: ServiceKey::new("demo", name),
        ports: vec![ServicePort {
            name: Some(if http { "http".into() } else { "tcp".into() }),
            port,
            target_port: TargetPort::Number(target),
            protocol: "TCP".into(),
            app_protocol: Some(if http { "http".into() } else { "tcp".into() }),
        }],
        selector: Some(BTreeMap::from([("app".to_owned(), name.to_owned())])),
        headless: false,
        cluster_local: false,
        source: ObjectSource::default(),
    }
}

pub fn workload(name: &str, app: &str, address: IpAddr, account: &str) -> WorkloadEntry {
    WorkloadEntry {
        namespace: "demo".into(),
        name: name.into(),
        address,
        ports: BTreeMap::new(),
        labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        service_account: account.into(),
        locality: None,
        network: None,
        weight: 1,
        health: Health::Healthy,
        credential_file: None,
        demo: Default::default(),
        source: ObjectSource::default(),
    }
}

pub fn policy(rules: &[Rule], deny: bool, trust_domain: &str) -> Option<AuthorizationPolicy> {
    let rules: Vec<PolicyRule> = rules
        .iter()
        .filter(|r| r.deny == deny)
        .map(|r| PolicyRule {
            from: vec![PolicySource {
                principals: r
                    .principal
                    .map(|i| format!("spiffe://{trust_domain}/ns/demo/sa/{}", NAMES[i]))
                    .into_iter()
                    .collect(),
                namespaces: r
                    .namespace
                    .map(|i| NAMES[i].to_owned())
                    .into_iter()
                    .collect(),
                clusters: r
                    .cluster
                    .map(|b| cid(if b { "beta" } else { "alpha" }))
                    .into_iter()
                    .collect(),
            }],
            to: vec![PolicyTarget {
                ports: r.port.into_iter().collect(),
                paths: r
                    .path
                    .map(|i| format!("/{}", NAMES[i]))
                    .into_iter()
                    .collect(),
            }],
        })
        .collect();
    (!rules.is_empty()).then(|| AuthorizationPolicy {
        namespace: "demo".into(),
        name: if deny { "deny".into() } else { "allow".into() },
        selector: Some(BTreeMap::from([("app".to_owned(), "client".to_owned())])),
        action: if deny {
            PolicyAction::Deny
        } else {
            PolicyAction::Allow
        },
        rules,
        source: ObjectSource::default(),
    })
}

pub fn index(i: &Input) -> MeshIndex {
    let trust_domain = ["td.local", "other.local"][i.trust_domain];
    let spec = |id: &str, network: &str, gateways: Vec<Gateway>| ClusterSpec {
        id: cid(id),
        network: NetworkId::new(network).expect("network"),
        locality: "r1/z1".parse().expect("locality"),
        gateways,
        gateway_identity: None,
        kubernetes: None,
        stale_endpoint_ttl: None,
        source: ObjectSource::default(),
    };
    let gateway = Gateway {
        address: IpAddr::from([192, 0, 2, i.gateway.0]),
        port: i.gateway.1,
    };
    let config = MeshConfig {
        mesh: MeshSpec {
            name: "test".into(),
            trust_domain: trust_domain.into(),
            discovery: DiscoveryMode::Sameness,
            cluster_local: Vec::new(),
            networks: None,
            source: ObjectSource::default(),
        },
        clusters: vec![
            spec("alpha", "n1", Vec::new()),
            spec(
                "beta",
                if i.beta_same_network { "n1" } else { "n2" },
                vec![gateway],
            ),
        ],
        traffic_policies: Vec::new(),
    };
    let mut alpha = ClusterObjects::default();
    let mut beta = ClusterObjects::default();
    for objects in [&mut alpha, &mut beta] {
        let echo = service("echo", i.echo_port, i.echo_target, i.echo_http);
        objects.services.insert(echo.key.clone(), echo);
    }
    let client = service("client", i.client_port, i.client_port, i.client_http);
    alpha.services.insert(client.key.clone(), client);
    let c = workload("client", "client", IpAddr::from([10, 1, 0, 1]), "client");
    alpha
        .workload_entries
        .insert(("demo".into(), "client".into()), c);
    for (n, e) in i.endpoints.iter().enumerate() {
        let name = format!("echo-{n}");
        let mut we = workload(
            &name,
            "echo",
            IpAddr::from([10, 2, n as u8, e.octet]),
            NAMES[e.account],
        );
        we.weight = e.weight;
        we.locality = Some(LOCALITIES[e.locality].parse().expect("locality"));
        we.health = if e.healthy {
            Health::Healthy
        } else {
            Health::Unhealthy
        };
        let objects = if e.beta { &mut beta } else { &mut alpha };
        objects.workload_entries.insert(("demo".into(), name), we);
    }
    for deny in [false, true] {
        if let Some(p) = policy(&i.rules, deny, trust_domain) {
            alpha
                .policies
                .insert((p.namespace.clone(), p.name.clone()), p);
        }
    }
    let objects = BTreeMap::from([(cid("alpha"), alpha), (cid("beta"), beta)]);
    MeshIndex::build(Arc::new(config), objects.iter())
}

pub fn identity(cluster: &str, workload: &str, role: ProxyRole) -> ProxyIdentity {
    ProxyIdentity {
        cluster: cid(cluster),
        namespace: "demo".into(),
        workload: workload.into(),
        role,
    }
}

/// Everything built from one input: the client sidecar's resources and beta's gateway's.
pub fn build(i: &Input) -> BTreeMap<(TypeUrl, String), (String, String)> {
    let index = index(i);
    let client = identity("alpha", "client", ProxyRole::Sidecar);
    let ctx = ProxyContext::resolve(&index, client.clone()).expect("client context");
    let node = ProxyNode {
        id: "client".into(),
        identity: client,
        app_address: None,
        outbound: OutboundBlock::parse("127.200.0.0/16").ok(),
        network: None,
        data_plane: Default::default(),
    };
    let mut out = contents(&sidecar_resources(&index, &node, &ctx));
    let gw = identity("beta", "gateway", ProxyRole::Gateway);
    if let Ok(ctx) = ProxyContext::resolve(&index, gw) {
        for ((t, name), v) in contents(&gateway_resources(&index, &ctx)) {
            out.insert((t, format!("gateway/{name}")), v);
        }
    }
    out
}
