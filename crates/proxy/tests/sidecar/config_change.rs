//! A new snapshot on the watch channel (a higher generation) while the sidecar runs.

use std::time::Duration;

use crate::support::*;

fn outbound(
    generation: u64,
    addr: std::net::SocketAddr,
    cluster_name: &str,
    endpoints: &[std::net::SocketAddr],
) -> causeway_proxy::config::SharedSnapshot {
    let m = manager(vec![vhost(&["*"], vec![route(prefix("/"), cluster_name)])]);
    snapshot(
        generation,
        vec![http_listener("outbound", addr, m, None)],
        vec![cluster(cluster_name, endpoints)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_endpoints_take_the_next_requests_on_new_and_open_connections() {
    let one = Backend::ok("one").await;
    let two = Backend::ok("two").await;
    let addr = free_addr();
    let proxy = Proxy::start(outbound(1, addr, "svc", &[one.addr])).await;
    // The app's keep-alive connection, opened before the change.
    let mut open = H1::connect(addr).await.expect("connect");
    assert_eq!(
        open.send(get("svc.mesh", "/")).await.expect("answer").body,
        "one"
    );

    // The cluster's endpoints change (what an EDS update does); the listener stays.
    proxy
        .tx
        .send(outbound(2, addr, "svc", &[two.addr]))
        .expect("send");
    eventually(
        Duration::from_secs(5),
        "a new connection reaches two",
        || async { send(addr, get("svc.mesh", "/")).await.body == "two" },
    )
    .await;
    for _ in 0..3 {
        assert_eq!(send(addr, get("svc.mesh", "/")).await.body, "two");
    }
    // Envoy picks the endpoint of every request from the cluster as it is now, whichever
    // connection the request came on: the open connection's next request goes to two as well.
    let a = open.send(get("svc.mesh", "/")).await.expect("answer");
    assert_eq!(
        a.body, "two",
        "a request on an open connection went to a removed endpoint"
    );
    assert_eq!(one.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_route_and_a_moved_listener_take_new_connections() {
    let one = Backend::ok("one").await;
    let three = Backend::ok("three").await;
    let addr = free_addr();
    let proxy = Proxy::start(outbound(1, addr, "v1", &[one.addr])).await;
    assert_eq!(send(addr, get("svc.mesh", "/")).await.body, "one");

    // The route now names another cluster, and the old cluster is gone.
    proxy
        .tx
        .send(outbound(2, addr, "v2", &[three.addr]))
        .expect("send");
    eventually(
        Duration::from_secs(5),
        "new connections reach v2",
        || async { send(addr, get("svc.mesh", "/")).await.body == "three" },
    )
    .await;
    for _ in 0..3 {
        assert_eq!(send(addr, get("svc.mesh", "/")).await.body, "three");
    }

    // The listener moves: the new address serves, the old one stops accepting.
    let moved = free_addr();
    proxy
        .tx
        .send(outbound(3, moved, "v2", &[three.addr]))
        .expect("send");
    assert_eq!(send(moved, get("svc.mesh", "/")).await.body, "three");
    eventually(
        Duration::from_secs(5),
        "the old address stops accepting",
        || async { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    assert_eq!(one.hits(), 1);
}
