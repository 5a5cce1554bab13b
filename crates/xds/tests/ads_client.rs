//! The Causeway proxy's ADS client (delta and state of the world) against the real ADS server:
//! a gateway's full config arrives converted, a change arrives as a new snapshot, EDS follows
//! the clusters, and a response the proxy cannot honour is NACKed with the reason while the
//! last good config stays.

mod common;

use std::sync::Arc;
use std::time::Duration;

use causeway_trust::service::{control_plane_identity, CONTROL_PLANE_SERVER_NAME};
use causeway_xds::client::ads::{run, AdsClientConfig, AdsStatus};
use causeway_xds::client::{DeltaState, SotwState};
use causeway_xds::dataplane::{ChainAction, Snapshot};
use common::*;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use tokio::sync::watch;

const GATEWAY: &str = "gateway|127.3.255.1:15443";

/// What `causeway proxy --role gateway --data-plane causeway` sends for gamma's gateway.
fn gateway_node() -> Node {
    causeway_xds::bootstrap::node(&causeway_xds::bootstrap::BootstrapConfig {
        role: causeway_model::ProxyRole::Gateway,
        cluster: "gamma".into(),
        namespace: "causeway-system".into(),
        workload: "eastwest-0".into(),
        xds: "127.0.0.1:1".parse().expect("addr"),
        delta: true,
        sds_socket: "/unused".into(),
        admin: "127.0.0.1:1".parse().expect("addr"),
        app_address: None,
        outbound_cidr: None,
        capture_port: None,
        network: None,
        trust_domain: Some(TD.into()),
    })
    .expect("node")
}

async fn wait_for(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    what: &str,
    ok: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let deadline = tokio::time::Instant::now() + SERVED_WITHIN;
    loop {
        let current = rx.borrow_and_update().clone();
        if ok(&current) {
            return current;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("{what}: not within {SERVED_WITHIN:?}; last snapshot {current:#?}");
        }
    }
}

fn greeter_endpoints(s: &Snapshot) -> usize {
    s.assignments
        .iter()
        .filter(|(n, _)| n.contains("greeter"))
        .map(|(_, la)| {
            la.localities
                .iter()
                .map(|l| l.endpoints.len())
                .sum::<usize>()
        })
        .sum()
}

#[tokio::test]
async fn a_gateway_gets_its_sni_routes_and_endpoints_and_follows_changes_over_delta() {
    gateway_follows_changes(true).await;
}

#[tokio::test]
async fn a_gateway_gets_its_sni_routes_and_endpoints_and_follows_changes_over_sotw() {
    gateway_follows_changes(false).await;
}

async fn gateway_follows_changes(delta: bool) {
    let mut h = Harness::start(Duration::from_millis(20)).await;
    let (chain, key) = h.pki.leaf("gamma", "causeway-system", "eastwest-gateway");
    let mut tls = causeway_trust::verify::client_config(
        &chain,
        &key,
        &h.pki.bundle_pem,
        TD,
        vec![control_plane_identity(TD)],
    )
    .expect("tls");
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let (_tls_tx, tls_rx) = watch::channel(Some(Arc::new(tls)));
    let (out, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    let status = Arc::new(AdsStatus::default());
    let client = tokio::spawn(run(
        AdsClientConfig {
            xds: h.addr,
            server_name: CONTROL_PLANE_SERVER_NAME.into(),
            node: gateway_node(),
            connect_timeout: Duration::from_secs(2),
            delta,
        },
        tls_rx,
        out,
        Arc::clone(&status),
    ));

    let s = wait_for(
        &mut rx,
        "the gateway's listener, clusters and endpoints",
        |s| {
            s.listeners.contains_key(GATEWAY)
                && !s.clusters.is_empty()
                && s.clusters.keys().all(|c| s.endpoints_of(c).is_some())
        },
    )
    .await;
    let l = &s.listeners[GATEWAY];
    assert!(l.inspect_tls);
    for c in &l.filter_chains {
        let ChainAction::TcpProxy(p) = &c.action else {
            panic!("a gateway chain is a TCP proxy: {c:?}")
        };
        assert!(
            s.clusters.contains_key(p.clusters.pick(0)),
            "{} routes to a known cluster",
            c.name
        );
    }
    assert_eq!(greeter_endpoints(&s), 1);
    assert!(status.connected.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(
        status.rejected.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // The server sees the gateway in sync.
    let deadline = tokio::time::Instant::now() + SERVED_WITHIN;
    while !h.registry.proxies().iter().any(|p| p.in_sync()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            h.registry.proxies()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    h.add_gamma_greeter(1);
    let s = wait_for(&mut rx, "the second greeter endpoint", |s| {
        greeter_endpoints(s) == 2
    })
    .await;
    assert!(s.listeners.contains_key(GATEWAY), "the rest stays");
    client.abort();
}

fn listener_response(listener: Listener, nonce: &str) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: LDS.into(),
        nonce: nonce.into(),
        resources: vec![Resource {
            name: listener.name.clone(),
            version: nonce.into(),
            resource: Some(pack_any(listener)),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn gateway_listener() -> Listener {
    let index = index_of(&example());
    let ctx = causeway_discovery::ProxyContext::resolve(
        &index,
        causeway_model::ProxyIdentity {
            cluster: causeway_model::ClusterId::new("gamma").expect("id"),
            namespace: "causeway-system".into(),
            workload: "eastwest-0".into(),
            role: causeway_model::ProxyRole::Gateway,
        },
    )
    .expect("ctx");
    let r = causeway_xds::build::gateway_resources(&index, &ctx);
    let res = &r
        .of(causeway_xds::resources::TypeUrl::Listener)
        .expect("lds")[GATEWAY];
    prost::Message::decode(&*res.body.value).expect("listener")
}

#[test]
fn a_response_it_cannot_honour_is_nacked_with_the_reason_and_changes_nothing() {
    let mut state = DeltaState::default();
    let good = state.on_response(&listener_response(gateway_listener(), "n1"));
    assert!(good.refused.is_empty() && good.answer.error_detail.is_none());
    assert_eq!(good.answer.response_nonce, "n1");
    let before = good.snapshot.expect("a snapshot");

    let mut bad = gateway_listener();
    bad.freebind = Some(BoolValue { value: true });
    let reply = state.on_response(&listener_response(bad, "n2"));
    let detail = reply.answer.error_detail.expect("a NACK");
    assert_eq!(reply.answer.response_nonce, "n2");
    assert!(
        detail.message.contains(GATEWAY) && detail.message.contains("freebind"),
        "{}",
        detail.message
    );
    assert!(reply.snapshot.is_none());
    assert_eq!(state.snapshot(), before, "the last good config stays");

    // Removing it is honoured.
    let removal = DeltaDiscoveryResponse {
        type_url: LDS.into(),
        nonce: "n3".into(),
        removed_resources: vec![GATEWAY.into()],
        ..Default::default()
    };
    let reply = state.on_response(&removal);
    assert!(reply.snapshot.expect("snapshot").listeners.is_empty());
}

fn sotw_listeners(listeners: Vec<Listener>, version: &str) -> DiscoveryResponse {
    DiscoveryResponse {
        type_url: LDS.into(),
        version_info: version.into(),
        nonce: format!("nonce-{version}"),
        resources: listeners.into_iter().map(pack_any).collect(),
        ..Default::default()
    }
}

#[test]
fn over_sotw_a_refused_response_is_nacked_with_the_last_good_version_and_changes_nothing() {
    let mut state = SotwState::default();
    let good = state.on_response(&sotw_listeners(vec![gateway_listener()], "v1"));
    assert!(good.refused.is_empty() && good.answer.error_detail.is_none());
    assert_eq!(
        (
            good.answer.version_info.as_str(),
            good.answer.response_nonce.as_str()
        ),
        ("v1", "nonce-v1"),
        "an ACK carries the version and nonce it accepts"
    );
    let before = good.snapshot.expect("a snapshot");

    let mut bad = gateway_listener();
    bad.freebind = Some(BoolValue { value: true });
    let reply = state.on_response(&sotw_listeners(vec![bad], "v2"));
    let detail = reply.answer.error_detail.expect("a NACK");
    assert_eq!(
        (
            reply.answer.version_info.as_str(),
            reply.answer.response_nonce.as_str()
        ),
        ("v1", "nonce-v2"),
        "a NACK carries the last accepted version and the refused nonce"
    );
    assert!(detail.message.contains("freebind"), "{}", detail.message);
    assert!(reply.snapshot.is_none());
    assert_eq!(state.snapshot(), before, "the last good config stays");

    // A state-of-the-world listener response is the whole set: an empty one removes it.
    let reply = state.on_response(&sotw_listeners(Vec::new(), "v3"));
    assert!(reply.snapshot.expect("snapshot").listeners.is_empty());
}
