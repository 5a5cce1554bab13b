//! Timeouts (route and per try) and outlier detection with priority failover.

use std::time::{Duration, Instant};

use causeway_xds::dataplane::http::RetryOn;
use causeway_xds::dataplane::OutlierDetectionConfig;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_answers_504_upstream_request_timeout() {
    let silent = Backend::start("silent", |_| Reply::Hang).await;
    let addr = free_addr();
    let mut r = route(prefix("/"), "silent");
    r.action.timeout = Some(Duration::from_millis(300));
    let m = manager(vec![vhost(&["*"], vec![r])]);
    let _proxy = Proxy::start(snapshot(
        1,
        vec![http_listener("outbound", addr, m, None)],
        vec![cluster("silent", &[silent.addr])],
    ))
    .await;
    let started = Instant::now();
    let a = send(addr, get("svc.mesh", "/slow")).await;
    let took = started.elapsed();
    assert_eq!(a.status, 504);
    assert_eq!(a.body, "upstream request timeout");
    assert!(
        took >= Duration::from_millis(300),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert_eq!(silent.hits(), 1, "the request did reach the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_triggers_a_retry() {
    // The first attempt never gets an answer; the second is answered at once.
    let slow_once = Backend::start("slow-once", |n| {
        if n == 0 {
            Reply::Hang
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let addr = free_addr();
    let mut policy = retry(&[RetryOn::GatewayError], 1);
    policy.per_try_timeout = Some(Duration::from_millis(200));
    let mut r = route(prefix("/"), "slow-once");
    r.action.retry = Some(policy);
    r.action.timeout = Some(Duration::from_secs(5));
    let m = manager(vec![vhost(&["*"], vec![r])]);
    let _proxy = Proxy::start(snapshot(
        1,
        vec![http_listener("outbound", addr, m, None)],
        vec![cluster("slow-once", &[slow_once.addr])],
    ))
    .await;
    let started = Instant::now();
    let a = send(addr, get("svc.mesh", "/")).await;
    let took = started.elapsed();
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "slow-once"));
    assert_eq!(slow_once.hits(), 2);
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(
        took < Duration::from_secs(3),
        "well before the route timeout: {took:?}"
    );

    // Without retries left, a per-try timeout is the caller's 504.
    let silent = Backend::start("silent", |_| Reply::Hang).await;
    let addr = free_addr();
    let mut policy = retry(&[RetryOn::GatewayError], 1);
    policy.per_try_timeout = Some(Duration::from_millis(150));
    let mut r = route(prefix("/"), "silent");
    r.action.retry = Some(policy);
    let m = manager(vec![vhost(&["*"], vec![r])]);
    let _proxy = Proxy::start(snapshot(
        1,
        vec![http_listener("outbound", addr, m, None)],
        vec![cluster("silent", &[silent.addr])],
    ))
    .await;
    let a = send(addr, get("svc.mesh", "/")).await;
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (504, "upstream request timeout")
    );
    assert_eq!(silent.hits(), 2, "the attempt and its retry both timed out");
}

async fn ask(conn: &mut H1) -> (u16, String) {
    let a = conn.send(get("svc.mesh", "/")).await.expect("answer");
    (a.status.as_u16(), a.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_gateway_failures_eject_an_endpoint_to_the_next_priority_until_the_ejection_time_passes(
) {
    // x (priority 0) answers 502 twice, then 200; y (priority 1) always 200.
    let x = Backend::start("x", |n| Reply::Status(if n < 2 { 502 } else { 200 })).await;
    let y = Backend::ok("y").await;
    let addr = free_addr();
    let mut c = cluster_by_priority(
        "svc",
        vec![
            (0, vec![ep(x.addr, 1, true)]),
            (1, vec![ep(y.addr, 1, true)]),
        ],
    );
    let base = Duration::from_secs(1);
    let interval = Duration::from_millis(100);
    c.outlier_detection = Some(OutlierDetectionConfig {
        consecutive_5xx: 5,
        enforcing_consecutive_5xx_percent: 100,
        consecutive_gateway_failure: 2,
        enforcing_consecutive_gateway_failure_percent: 100,
        interval,
        base_ejection_time: base,
        max_ejection_percent: 100,
    });
    let m = manager(vec![vhost(&["*"], vec![route(prefix("/"), "svc")])]);
    let _proxy = Proxy::start(snapshot(
        1,
        vec![http_listener("outbound", addr, m, None)],
        vec![c],
    ))
    .await;

    let mut conn = H1::connect(addr).await.expect("connect");
    // Priority 0 takes everything while it is healthy: both failures are x's, passed on.
    assert_eq!(ask(&mut conn).await, (502, "x".to_owned()));
    assert_eq!(ask(&mut conn).await, (502, "x".to_owned()));
    let ejected = Instant::now();
    // Ejected: priority 1 takes the traffic until base_ejection_time has passed (Envoy brings
    // the host back at the first detection interval after it).
    let deadline = ejected + base + interval + Duration::from_secs(3);
    let mut from_y = 0;
    let back = loop {
        let (status, body) = ask(&mut conn).await;
        assert_eq!(status, 200);
        if body == "x" {
            break ejected.elapsed();
        }
        assert_eq!(body, "y");
        from_y += 1;
        assert!(Instant::now() < deadline, "x never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(from_y >= 5, "y served while x was out ({from_y} requests)");
    assert!(
        back >= base - Duration::from_millis(100),
        "x came back after {back:?}, before base_ejection_time ({base:?})"
    );
    assert!(back < base + interval + Duration::from_secs(2), "{back:?}");
    // Back for good: x, priority 0, takes everything again.
    for _ in 0..3 {
        assert_eq!(ask(&mut conn).await, (200, "x".to_owned()));
    }
    assert_eq!(x.hits(), 2 + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_also_bounds_a_response_body_that_stalls() {
    // Envoy's route timeout spans until the upstream response is complete, body included:
    // once the headers went out it can no longer answer 504, so it resets the stream.
    let stall = Backend::start("stall", |_| Reply::Stall(200)).await;
    let addr = free_addr();
    let timeout = Duration::from_millis(500);
    let mut r = route(prefix("/"), "stall");
    r.action.timeout = Some(timeout);
    let m = manager(vec![vhost(&["*"], vec![r])]);
    let _proxy = Proxy::start(snapshot(
        1,
        vec![http_listener("outbound", addr, m, None)],
        vec![cluster("stall", &[stall.addr])],
    ))
    .await;
    let mut c = H1::connect(addr).await.expect("connect");
    let started = Instant::now();
    let response = c.head(get("svc.mesh", "/")).await.expect("headers");
    assert_eq!(response.status(), 200);
    let body = bounded(http_body_util::BodyExt::collect(response.into_body()))
        .await
        .expect("the proxy cut the stalled response within the route timeout");
    let took = started.elapsed();
    assert!(body.is_err(), "a stalled body must be reset, not completed");
    assert!(took >= timeout - Duration::from_millis(50), "{took:?}");
    assert!(took < timeout + Duration::from_secs(2), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_idle_timeout_answers_408_and_resets_a_stalled_body() {
    // Envoy's stream_idle_timeout: a stream with no activity for that long ends — 408 `stream
    // timeout` before a response started, a reset once it has. No route timeout here.
    let hang = Backend::start("hang", |_| Reply::Hang).await;
    let stall = Backend::start("stall", |_| Reply::Stall(200)).await;
    let addr = free_addr();
    let idle = Duration::from_millis(500);
    let mut to_hang = route(prefix("/hang"), "hang");
    to_hang.action.timeout = None;
    let mut to_stall = route(prefix("/"), "stall");
    to_stall.action.timeout = None;
    let mut m = manager(vec![vhost(&["*"], vec![to_hang, to_stall])]);
    m.stream_idle_timeout = Some(idle);
    let _proxy = Proxy::start(snapshot(
        1,
        vec![http_listener("outbound", addr, m, None)],
        vec![
            cluster("hang", &[hang.addr]),
            cluster("stall", &[stall.addr]),
        ],
    ))
    .await;
    let started = Instant::now();
    let answer = send(addr, get("svc.mesh", "/hang")).await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.body, "stream timeout");
    assert!(started.elapsed() >= idle - Duration::from_millis(50));

    let mut c = H1::connect(addr).await.expect("connect");
    let started = Instant::now();
    let response = c.head(get("svc.mesh", "/")).await.expect("headers");
    assert_eq!(response.status(), 200);
    let body = bounded(http_body_util::BodyExt::collect(response.into_body()))
        .await
        .expect("the proxy cut the stalled response after the stream idle timeout");
    assert!(body.is_err(), "a stalled body must be reset, not completed");
    let took = started.elapsed();
    assert!(took >= idle - Duration::from_millis(50), "{took:?}");
    assert!(took < idle + Duration::from_secs(2), "{took:?}");
}
