//! Property: a resource's version changes whenever its content does.
//!
//! Versions hash what the builders were given, not the encoded resource (protobuf maps encode in
//! hash-map order), so an input the builder uses but does not hash would leave a changed
//! resource at its old version, and a proxy that has the old one would never get the new one.
//! The oracle here is the content itself: each resource is decoded and printed in a canonical
//! form (maps sorted, nested `Any`s that hold maps decoded the same way). A generated mesh is
//! built, one field of it is changed (an endpoint's address, port, weight, locality, health or
//! identity, a service port's number, protocol or target, the gateway, the network, the trust
//! domain, a policy's action, principal, namespace, cluster, path or port), and it is built
//! again: every resource present in both builds whose canonical content differs must have a
//! different version. Equal inputs must give equal versions and equal canonical content (which
//! checks the oracle itself).

mod canonical;
mod mesh;

use mesh::*;
use proptest::prelude::*;

/// One change of one field.
#[derive(Debug, Clone)]
enum Mutation {
    TrustDomain,
    Network,
    GatewayAddress,
    GatewayPort,
    EchoPort,
    EchoProtocol,
    EchoTarget,
    ClientPort,
    ClientProtocol,
    Address(usize),
    Cluster(usize),
    Weight(usize),
    Locality(usize),
    Account(usize),
    Health(usize),
    Action(usize),
    Principal(usize),
    Namespace(usize),
    CallerCluster(usize),
    Path(usize),
    Port(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    use Mutation::*;
    let n = || 0usize..5;
    prop_oneof![
        Just(TrustDomain),
        Just(Network),
        Just(GatewayAddress),
        Just(GatewayPort),
        Just(EchoPort),
        Just(EchoProtocol),
        Just(EchoTarget),
        Just(ClientPort),
        Just(ClientProtocol),
        n().prop_map(Address),
        n().prop_map(Cluster),
        n().prop_map(Weight),
        n().prop_map(Locality),
        n().prop_map(Account),
        n().prop_map(Health),
        n().prop_map(Action),
        n().prop_map(Principal),
        n().prop_map(Namespace),
        n().prop_map(CallerCluster),
        n().prop_map(Path),
        n().prop_map(Port),
    ]
}

fn next(i: usize, n: usize) -> usize {
    (i + 1) % n
}

fn toggle<T: Clone>(o: &mut Option<T>, some: T, f: impl Fn(&T) -> Option<T>) {
    *o = match o {
        None => Some(some),
        Some(v) => f(v),
    };
}

/// Applies `m`; `false` when it names an endpoint or rule the input does not have.
fn apply(i: &mut Input, m: &Mutation) -> bool {
    use Mutation::*;
    let len = i.endpoints.len();
    let rules = i.rules.len();
    let e = |k: usize| (k < len).then_some(k);
    let r = |k: usize| (k < rules).then_some(k);
    match *m {
        TrustDomain => i.trust_domain = next(i.trust_domain, 2),
        Network => i.beta_same_network = !i.beta_same_network,
        GatewayAddress => i.gateway.0 += 10,
        GatewayPort => i.gateway.1 += 1,
        EchoPort => i.echo_port += 1,
        EchoProtocol => i.echo_http = !i.echo_http,
        EchoTarget => i.echo_target += 1,
        ClientPort => i.client_port += 1,
        ClientProtocol => i.client_http = !i.client_http,
        Address(k) => match e(k) {
            Some(k) => i.endpoints[k].octet = i.endpoints[k].octet.wrapping_add(1).max(1),
            None => return false,
        },
        Cluster(k) => match e(k) {
            Some(k) => i.endpoints[k].beta = !i.endpoints[k].beta,
            None => return false,
        },
        Weight(k) => match e(k) {
            Some(k) => i.endpoints[k].weight += 1,
            None => return false,
        },
        Locality(k) => match e(k) {
            Some(k) => i.endpoints[k].locality = next(i.endpoints[k].locality, LOCALITIES.len()),
            None => return false,
        },
        Account(k) => match e(k) {
            Some(k) => i.endpoints[k].account = next(i.endpoints[k].account, NAMES.len()),
            None => return false,
        },
        Health(k) => match e(k) {
            Some(k) => i.endpoints[k].healthy = !i.endpoints[k].healthy,
            None => return false,
        },
        Action(k) => match r(k) {
            Some(k) => i.rules[k].deny = !i.rules[k].deny,
            None => return false,
        },
        Principal(k) => match r(k) {
            Some(k) => toggle(&mut i.rules[k].principal, 0, |p| {
                (*p + 1 < NAMES.len()).then_some(p + 1)
            }),
            None => return false,
        },
        Namespace(k) => match r(k) {
            Some(k) => toggle(&mut i.rules[k].namespace, 0, |p| {
                (*p + 1 < NAMES.len()).then_some(p + 1)
            }),
            None => return false,
        },
        CallerCluster(k) => match r(k) {
            Some(k) => toggle(&mut i.rules[k].cluster, false, |b| (!*b).then_some(true)),
            None => return false,
        },
        Path(k) => match r(k) {
            Some(k) => toggle(&mut i.rules[k].path, 0, |p| {
                (*p + 1 < NAMES.len()).then_some(p + 1)
            }),
            None => return false,
        },
        Port(k) => match r(k) {
            Some(k) => toggle(&mut i.rules[k].port, 8080, |p| (*p == 8080).then_some(9090)),
            None => return false,
        },
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_change_of_content_changes_the_version(base in input(), m in mutation()) {
        let before = build(&base);
        // Equal inputs: equal versions and equal canonical content (the oracle is sound).
        prop_assert_eq!(&before, &build(&base));
        let mut changed = base.clone();
        prop_assume!(apply(&mut changed, &m));
        let after = build(&changed);
        for (key, (v1, c1)) in &before {
            let Some((v2, c2)) = after.get(key) else { continue };
            if c1 != c2 {
                prop_assert_ne!(v1, v2, "{:?} {} changed content under {:?} but kept its version", key.0, key.1, m);
            }
        }
    }
}

/// The property has teeth: on a fixed mesh, each kind of change does change some resource's
/// content (otherwise the property above would hold vacuously for it).
#[test]
fn every_mutation_changes_some_content() {
    let base = Input {
        trust_domain: 0,
        beta_same_network: false,
        gateway: (1, 15443),
        echo_port: 80,
        echo_http: true,
        echo_target: 8000,
        client_port: 8080,
        client_http: true,
        endpoints: vec![
            Endpoint {
                beta: false,
                octet: 1,
                weight: 1,
                locality: 0,
                account: 0,
                healthy: true,
            },
            Endpoint {
                beta: true,
                octet: 2,
                weight: 1,
                locality: 1,
                account: 1,
                healthy: true,
            },
        ],
        rules: vec![Rule {
            deny: false,
            principal: Some(0),
            namespace: Some(0),
            cluster: Some(false),
            path: Some(0),
            port: Some(8080),
        }],
    };
    let before = build(&base);
    use Mutation::*;
    for m in [
        TrustDomain,
        Network,
        GatewayAddress,
        GatewayPort,
        EchoPort,
        EchoProtocol,
        EchoTarget,
        ClientPort,
        ClientProtocol,
        Address(0),
        Address(1),
        Cluster(0),
        Weight(0),
        Weight(1),
        Locality(0),
        Account(0),
        Health(0),
        Action(0),
        Principal(0),
        Namespace(0),
        CallerCluster(0),
        Path(0),
        Port(0),
    ] {
        let mut changed = base.clone();
        assert!(apply(&mut changed, &m));
        let after = build(&changed);
        let differs = before
            .iter()
            .any(|(k, (_, c))| after.get(k).is_some_and(|(_, c2)| c2 != c))
            || before.keys().ne(after.keys());
        assert!(differs, "{m:?} changed nothing");
    }
}
