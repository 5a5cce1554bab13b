//! Retries with Envoy's router semantics: which conditions retry, how many times, which host
//! the retry goes to (`previous_hosts`), and that a buffered body is sent again unchanged.

use bytes::Bytes;
use causeway_xds::dataplane::http::{RetryConfig, RetryOn};
use causeway_xds::dataplane::ClusterConfig;
use http_body_util::Full;

use crate::support::*;

/// A proxy with one outbound HTTP listener routing `/<cluster>` to each of `clusters` with its
/// retry policy.
async fn proxy_with(
    routes: Vec<(&str, Option<RetryConfig>)>,
    clusters: Vec<ClusterConfig>,
) -> (Proxy, std::net::SocketAddr) {
    let addr = free_addr();
    let routes = routes
        .into_iter()
        .map(|(c, retry)| {
            let mut r = route(prefix(&format!("/{c}")), c);
            r.action.retry = retry;
            r
        })
        .collect();
    let m = manager(vec![vhost(&["*"], routes)]);
    let proxy = Proxy::start(snapshot(
        1,
        vec![http_listener("outbound", addr, m, None)],
        clusters,
    ))
    .await;
    (proxy, addr)
}

fn retries(proxy: &Proxy, cluster: &str) -> f64 {
    proxy.metric("causeway_proxy_http_retries_total", &[("cluster", cluster)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_under_gateway_error_and_the_caller_gets_the_200() {
    let flaky = Backend::start("flaky", |n| Reply::Status(if n == 0 { 503 } else { 200 })).await;
    let (proxy, addr) = proxy_with(
        vec![("flaky", Some(retry(&[RetryOn::GatewayError], 1)))],
        vec![cluster("flaky", &[flaky.addr])],
    )
    .await;
    let a = send(addr, get("svc.mesh", "/flaky")).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "flaky"));
    assert_eq!(flaky.hits(), 2, "the first attempt and one retry");
    assert_eq!(retries(&proxy, "flaky"), 1.0);
    // One request answered (retries are not requests), counted by cluster and status class,
    // and timed; a second one on the same connection's cached handles counts too.
    let requests = |code| {
        proxy.metric(
            "causeway_proxy_http_requests_total",
            &[("cluster", "flaky"), ("code", code)],
        )
    };
    assert_eq!((requests("2xx"), requests("5xx")), (1.0, 0.0));
    let mut c = H1::connect(addr).await.expect("connect");
    for _ in 0..2 {
        let a = c.send(get("svc.mesh", "/flaky")).await.expect("answer");
        assert_eq!(a.status.as_u16(), 200);
    }
    assert_eq!(requests("2xx"), 3.0);
    let timed = proxy.metric(
        "causeway_proxy_http_request_duration_seconds_count",
        &[("cluster", "flaky")],
    );
    assert_eq!(timed, 3.0, "every request is in the latency histogram");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_num_retries_and_the_last_answer_is_passed_on() {
    let down = Backend::start("down", |_| Reply::Status(503)).await;
    let (proxy, addr) = proxy_with(
        vec![("down", Some(retry(&[RetryOn::FiveXx], 2)))],
        vec![cluster("down", &[down.addr])],
    )
    .await;
    let a = send(addr, get("svc.mesh", "/down")).await;
    // The upstream's own 503 (its body), not a local reply.
    assert_eq!((a.status.as_u16(), a.body.as_str()), (503, "down"));
    assert_eq!(down.hits(), 3, "one attempt and num_retries (2) retries");
    assert_eq!(retries(&proxy, "down"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_not_retried_when_retry_on_does_not_cover_it() {
    let flaky = Backend::start("flaky", |n| Reply::Status(if n == 0 { 503 } else { 200 })).await;
    let conflict = Backend::start("conflict", |n| {
        Reply::Status(if n == 0 { 409 } else { 200 })
    })
    .await;
    // connect-failure, refused-stream and retriable-4xx (409 only) do not cover a 503 answer;
    // retriable-4xx does cover the 409.
    let none_for_503 = retry(
        &[
            RetryOn::ConnectFailure,
            RetryOn::RefusedStream,
            RetryOn::Retriable4xx,
        ],
        3,
    );
    let (proxy, addr) = proxy_with(
        vec![
            ("flaky", Some(none_for_503.clone())),
            ("conflict", Some(none_for_503)),
        ],
        vec![
            cluster("flaky", &[flaky.addr]),
            cluster("conflict", &[conflict.addr]),
        ],
    )
    .await;
    let a = send(addr, get("svc.mesh", "/flaky")).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (503, "flaky"));
    assert_eq!(flaky.hits(), 1, "no retry");
    assert_eq!(retries(&proxy, "flaky"), 0.0);
    // Control: the same policy does retry what it names.
    let a = send(addr, get("svc.mesh", "/conflict")).await;
    assert_eq!(a.status, 200);
    assert_eq!(conflict.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retry_other_hosts_the_retry_goes_to_the_other_endpoint() {
    let x = Backend::start("x", |_| Reply::Status(503)).await;
    let y = Backend::ok("y").await;
    // Weights 3:1 make the balancer pick x twice in a row on its own; the `previous_hosts`
    // predicate (as Istio emits it, with 5 host selection attempts) must move the retry to y.
    let weighted = |name: &str| {
        cluster_by_priority(
            name,
            vec![(0, vec![ep(x.addr, 3, true), ep(y.addr, 1, true)])],
        )
    };
    let mut other_hosts = retry(&[RetryOn::GatewayError], 1);
    other_hosts.retry_other_hosts = true;
    other_hosts.host_selection_retry_max_attempts = 5;
    let (_proxy, addr) = proxy_with(
        vec![
            ("other", Some(other_hosts)),
            ("same", Some(retry(&[RetryOn::GatewayError], 1))),
        ],
        vec![weighted("other"), weighted("same")],
    )
    .await;
    let a = send(addr, get("svc.mesh", "/other")).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "y"));
    assert_eq!((x.hits(), y.hits()), (1, 1), "first x, then the retry on y");

    // Control: without the predicate the same balancer sends the retry to x again.
    let a = send(addr, get("svc.mesh", "/same")).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (503, "x"));
    assert_eq!((x.hits(), y.hits()), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_is_replayed_identically_on_the_retry() {
    let flaky = Backend::start("flaky", |n| Reply::Status(if n == 0 { 503 } else { 200 })).await;
    let (_proxy, addr) = proxy_with(
        vec![("flaky", Some(retry(&[RetryOn::FiveXx], 1)))],
        vec![cluster("flaky", &[flaky.addr])],
    )
    .await;
    let body: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let req = http::Request::builder()
        .method("POST")
        .uri("/flaky/upload")
        .header("host", "svc.mesh")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    let a = send(addr, req).await;
    assert_eq!(a.status, 200);
    let seen = flaky.seen();
    assert_eq!(seen.len(), 2);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.method, "POST", "attempt {i}");
        assert_eq!(s.uri, "/flaky/upload", "attempt {i}");
        assert_eq!(s.headers["content-type"], "application/octet-stream");
        assert_eq!(s.body.len(), body.len(), "attempt {i}");
        assert!(s.body == body, "attempt {i} got other bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_is_retried_on_the_healthy_endpoint_under_connect_failure() {
    let healthy = Backend::ok("healthy").await;
    // Nothing listens there: connecting is refused.
    let closed = free_addr();
    let pair = |name: &str| cluster(name, &[closed, healthy.addr]);
    let (proxy, addr) = proxy_with(
        vec![
            ("retried", Some(retry(&[RetryOn::ConnectFailure], 1))),
            ("plain", None),
        ],
        vec![pair("retried"), pair("plain")],
    )
    .await;
    let a = send(addr, get("svc.mesh", "/retried")).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "healthy"));
    assert_eq!(retries(&proxy, "retried"), 1.0, "the first attempt failed");
    assert_eq!(healthy.hits(), 1);
    // Control: the same first pick without a retry policy is Envoy's local 503.
    let a = send(addr, get("svc.mesh", "/plain")).await;
    assert_eq!(a.status, 503);
    assert!(
        a.body
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{}",
        a.body
    );
    assert_eq!(healthy.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_headers_is_envoys_503_and_is_retried_under_reset() {
    let cut_once = Backend::start("cut-once", |n| {
        if n == 0 {
            Reply::Close
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let cut = Backend::start("cut", |_| Reply::Close).await;
    let (proxy, addr) = proxy_with(
        vec![
            ("cut-once", Some(retry(&[RetryOn::Reset], 1))),
            ("cut", None),
        ],
        vec![
            cluster("cut-once", &[cut_once.addr]),
            cluster("cut", &[cut.addr]),
        ],
    )
    .await;
    let a = send(addr, get("svc.mesh", "/cut-once")).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "cut-once"));
    assert_eq!(cut_once.hits(), 2);
    assert_eq!(retries(&proxy, "cut-once"), 1.0);
    // Without a retry policy: Envoy's local reply for a disconnect before response headers.
    let a = send(addr, get("svc.mesh", "/cut")).await;
    assert_eq!(a.status, 503);
    assert!(
        a.body
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{}",
        a.body
    );
    assert!(a.body.contains("connection termination"), "{}", a.body);
    assert_eq!(
        cut.hits(),
        1,
        "a request that reached the upstream is not resent on its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_larger_than_the_retry_buffer_is_streamed_whole_and_not_retried() {
    let flaky = Backend::start("flaky", |n| Reply::Status(if n == 0 { 503 } else { 200 })).await;
    let (proxy, addr) = proxy_with(
        vec![("flaky", Some(retry(&[RetryOn::FiveXx], 1)))],
        vec![cluster("flaky", &[flaky.addr])],
    )
    .await;
    // 3 MiB: beyond Envoy's default 1 MiB buffer limit, so Envoy abandons the retry and
    // streams the request (`retry_or_shadow_abandoned`).
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
    let req = http::Request::builder()
        .method("PUT")
        .uri("/flaky/big")
        .header("host", "svc.mesh")
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    let a = send(addr, req).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (503, "flaky"));
    let seen = flaky.seen();
    assert_eq!(seen.len(), 1, "not retried");
    assert_eq!(seen[0].body.len(), body.len());
    assert!(seen[0].body == body, "the streamed body arrived changed");
    assert_eq!(retries(&proxy, "flaky"), 0.0);
}
