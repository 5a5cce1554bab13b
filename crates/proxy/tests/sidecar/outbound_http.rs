//! The app's HTTP through an outbound listener to plaintext backends: routing by authority and
//! path (Envoy's virtual host and route matching), local replies when nothing can answer, and
//! what the connection manager does to headers.

use bytes::Bytes;
use http_body_util::Full;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_authority_then_path_and_404_without_a_route() {
    let exact_b = Backend::ok("exact").await;
    let api = Backend::ok("api").await;
    let rest = Backend::ok("rest").await;
    let other = Backend::ok("other").await;
    let addr = free_addr();
    let m = manager(vec![
        vhost(
            &["web.mesh"],
            vec![
                route(exact("/exact"), "exact"),
                route(prefix("/api/"), "api"),
                route(prefix("/"), "rest"),
            ],
        ),
        vhost(&["other.mesh"], vec![route(prefix("/"), "other")]),
    ]);
    let _proxy = Proxy::start(snapshot(
        1,
        vec![http_listener("outbound", addr, m, None)],
        vec![
            cluster("exact", &[exact_b.addr]),
            cluster("api", &[api.addr]),
            cluster("rest", &[rest.addr]),
            cluster("other", &[other.addr]),
        ],
    ))
    .await;

    let answer = |host: &'static str, path: &'static str| async move {
        let a = send(addr, get(host, path)).await;
        (a.status.as_u16(), a.body)
    };
    // Envoy: an exact `path` must equal `:path` once the query string is removed; `prefix`
    // matches the start of `:path`; both case-sensitive; the first matching route wins.
    assert_eq!(answer("web.mesh", "/exact").await, (200, "exact".into()));
    assert_eq!(
        answer("web.mesh", "/exact?verbose=1").await,
        (200, "exact".into())
    );
    assert_eq!(
        exact_b.last().uri,
        "/exact?verbose=1",
        "the query goes upstream"
    );
    assert_eq!(answer("web.mesh", "/exact/sub").await, (200, "rest".into()));
    assert_eq!(
        answer("web.mesh", "/api/v1/items").await,
        (200, "api".into())
    );
    assert_eq!(answer("web.mesh", "/apix").await, (200, "rest".into()));
    assert_eq!(answer("web.mesh", "/API/v1").await, (200, "rest".into()));
    // Virtual hosts are chosen on the authority, ignoring its case.
    assert_eq!(answer("other.mesh", "/api/v1").await, (200, "other".into()));
    assert_eq!(answer("OTHER.Mesh", "/").await, (200, "other".into()));
    assert_eq!(
        other.last().headers["host"],
        "OTHER.Mesh",
        "Host is passed on as sent"
    );

    // No virtual host for the authority: 404 from the proxy, nothing reaches a backend.
    let before = exact_b.hits() + api.hits() + rest.hits() + other.hits();
    let (status, _) = answer("unknown.mesh", "/").await;
    assert_eq!(status, 404);
    let after = exact_b.hits() + api.hits() + rest.hits() + other.hits();
    assert_eq!(
        after, before,
        "a request without a route reaches no backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_no_route_matches_is_a_404() {
    let api = Backend::ok("api").await;
    let addr = free_addr();
    let m = manager(vec![vhost(&["*"], vec![route(prefix("/api/"), "api")])]);
    let _proxy = Proxy::start(snapshot(
        1,
        vec![http_listener("outbound", addr, m, None)],
        vec![cluster("api", &[api.addr])],
    ))
    .await;
    assert_eq!(send(addr, get("any.mesh", "/api/x")).await.status, 200);
    assert_eq!(send(addr, get("any.mesh", "/other")).await.status, 404);
    assert_eq!(api.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_a_healthy_endpoint_answers_503_no_healthy_upstream() {
    let backend = Backend::ok("never").await;
    let addr = free_addr();
    let m = manager(vec![vhost(
        &["*"],
        vec![
            route(prefix("/unhealthy"), "unhealthy"),
            route(prefix("/empty"), "empty"),
        ],
    )]);
    let _proxy = Proxy::start(snapshot(
        1,
        vec![http_listener("outbound", addr, m, None)],
        vec![
            // EDS says the only endpoint is unhealthy: it must not be tried although it listens.
            cluster_by_priority("unhealthy", vec![(0, vec![ep(backend.addr, 1, false)])]),
            cluster_by_priority("empty", Vec::new()),
        ],
    ))
    .await;
    for path in ["/unhealthy", "/empty"] {
        let a = send(addr, get("svc.mesh", path)).await;
        assert_eq!(a.status, 503, "{path}");
        assert_eq!(a.body, "no healthy upstream", "{path}");
    }
    assert_eq!(backend.hits(), 0);
}

fn is_uuid_v4(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    lens == [8, 4, 4, 4, 12]
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b', 'A', 'B'])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways_and_x_request_id_is_added_or_kept() {
    let backend = Backend::ok("app").await;
    let addr = free_addr();
    let m = manager(vec![vhost(&["*"], vec![route(prefix("/"), "app")])]);
    let _proxy = Proxy::start(snapshot(
        1,
        vec![http_listener("outbound", addr, m, None)],
        vec![cluster("app", &[backend.addr])],
    ))
    .await;

    // Envoy's connection manager removes `connection`, `keep-alive`, `proxy-connection`,
    // `upgrade` (when the request is not an upgrade) and `te` other than `trailers` from
    // requests, and `connection`, `keep-alive`, `proxy-connection` from responses.
    let req = http::Request::builder()
        .uri("/hop")
        .header("host", "app.mesh")
        .header("connection", "keep-alive")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("upgrade", "foo/1")
        .header("te", "gzip")
        .header("x-app", "kept")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let a = send(addr, req).await;
    assert_eq!(a.status, 200);
    let seen = backend.last().headers;
    for h in ["keep-alive", "proxy-connection", "upgrade", "te"] {
        assert!(seen.get(h).is_none(), "{h} reached the app: {seen:?}");
    }
    assert!(
        seen.get_all("connection").iter().all(|v| v != "keep-alive"),
        "the caller's Connection header is not forwarded: {seen:?}"
    );
    assert_eq!(seen["x-app"], "kept");
    assert_eq!(seen["host"], "app.mesh");
    for h in ["keep-alive", "proxy-connection"] {
        assert!(
            a.headers.get(h).is_none(),
            "{h} reached the caller: {:?}",
            a.headers
        );
    }
    assert_eq!(a.headers["x-backend"], "app", "other response headers pass");

    // `te: trailers` is the one TE value Envoy keeps.
    let req = http::Request::builder()
        .uri("/te")
        .header("host", "app.mesh")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(addr, req).await;
    assert_eq!(backend.last().headers["te"], "trailers");

    // Without x-request-id Envoy generates a UUID (version 4), a new one per request.
    let first = backend.last().headers["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    send(addr, get("app.mesh", "/again")).await;
    let second = backend.last().headers["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(is_uuid_v4(&first), "{first}");
    assert!(is_uuid_v4(&second), "{second}");
    assert_ne!(first, second);

    // From an internal caller (not an edge request) an x-request-id is kept as it is.
    let req = http::Request::builder()
        .uri("/traced")
        .header("host", "app.mesh")
        .header("x-request-id", "my-request-id-1")
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(addr, req).await;
    let seen = backend.last().headers;
    assert_eq!(
        seen.get_all("x-request-id").iter().collect::<Vec<_>>(),
        ["my-request-id-1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_may_speak_h2c_to_its_sidecar() {
    let backend = Backend::ok("app").await;
    let addr = free_addr();
    let m = manager(vec![vhost(&["app.mesh"], vec![route(prefix("/"), "app")])]);
    let _proxy = Proxy::start(snapshot(
        1,
        vec![http_listener("outbound", addr, m, None)],
        vec![cluster("app", &[backend.addr])],
    ))
    .await;
    let mut h2 = H2::over(connect_when_listening(addr).await.expect("connect"))
        .await
        .expect("h2c");
    // Two requests on one connection, routed on `:authority`.
    for path in ["/one", "/two"] {
        let a = h2.send(get("app.mesh", path)).await.expect("answer");
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "app"));
        let seen = backend.last();
        assert_eq!(seen.uri, path, "origin form towards an HTTP/1.1 upstream");
        assert_eq!(seen.headers["host"], "app.mesh", ":authority becomes Host");
    }
}
