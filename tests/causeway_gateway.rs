//! Causeway's own data plane as cluster gamma's east-west gateway (`causeway proxy
//! --data-plane causeway`), checked against what the Envoy gateway does in `tests/gateway.rs`
//! and `tests/mesh.rs`: it routes on TLS SNI to gamma's endpoints without terminating TLS, only
//! for exported services, closes everything else and counts why, keeps forwarding after the
//! refusals; and in a whole mesh, Envoy sidecars reach the other network through it with mTLS
//! end to end (the server sees the caller's SPIFFE ID).

use std::net::SocketAddr;
use std::time::Duration;

use causeway_e2e::*;

const GATEWAY: &str = "127.3.255.1:15443";
const GREETER_SNI: &str = "outbound_.80_._.greeter.demo.svc.cluster.local";

/// `causeway_proxy_gateway_connections_total` for `outcome` on the gateway listener.
fn connections(admin: SocketAddr, outcome: &str) -> u64 {
    let Ok((200, text)) = http_get(admin, "/stats/prometheus") else {
        return 0;
    };
    text.lines()
        .filter(|l| l.starts_with("causeway_proxy_gateway_connections_total{"))
        .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn the_causeway_gateway_forwards_only_exported_services_by_sni() {
    let _guard = mesh_lock();
    let cp = ControlPlane::start("three-clusters", &[]);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut gw = cp.gateway_with(
        "gateway-gamma",
        "gamma",
        "eastwest",
        &admin,
        &["--data-plane", "causeway"],
    );
    cp.wait_in_sync(1, Duration::from_secs(30));
    assert!(gw[1].is_running(), "{}", gw[1].log_text());
    let greeter = Recorder::start("127.3.0.12:8080".parse().expect("addr"));
    let ledger = Recorder::start("127.3.0.13:8080".parse().expect("addr"));
    let gateway: SocketAddr = GATEWAY.parse().expect("addr");
    let admin: SocketAddr = admin.parse().expect("addr");

    // Its own view: SNI routes of gamma's exported services only, nothing terminating TLS.
    let ready = wait_for(Duration::from_secs(10), || {
        http_get(admin, "/ready").ok().filter(|(s, _)| *s == 200)
    });
    assert!(ready.is_some(), "never ready:\n{}", gw[1].log_text());
    let dump = get_json(admin, "/config_dump");
    assert_eq!(dump["dataPlane"], "causeway");
    let text = dump["config"].to_string();
    assert!(text.contains(GREETER_SNI), "{text}");
    assert!(
        text.contains("outbound_.80_._.echo.demo.svc.cluster.local"),
        "{text}"
    );
    assert!(
        !text.contains("ledger"),
        "unexported service on the gateway: {text}"
    );

    // Exported: the ClientHello reaches greeter untouched.
    let hello = client_hello(GREETER_SNI);
    let arrived = wait_for(Duration::from_secs(10), || {
        let _ = send_and_observe_close(gateway, &hello, Duration::from_millis(300));
        greeter.connections().into_iter().find(|c| !c.is_empty())
    })
    .unwrap_or_else(|| panic!("nothing reached greeter:\n{}", gw[1].log_text()));
    assert_eq!(arrived[0], 0x16, "a TLS handshake record, not plaintext");
    assert!(arrived
        .windows(GREETER_SNI.len())
        .any(|w| w == GREETER_SNI.as_bytes()));

    // Refused, each counted under its reason (Envoy counts all three as no filter chain match).
    let refusals: [(&str, Vec<u8>, &str); 3] = [
        (
            "unexported service's SNI",
            client_hello("outbound_.80_._.ledger.demo.svc.cluster.local"),
            "no_route",
        ),
        ("unknown SNI", client_hello("evil.example.com"), "no_route"),
        (
            "plaintext",
            b"GET / HTTP/1.1\r\nHost: ledger\r\n\r\n".to_vec(),
            "not_tls",
        ),
    ];
    for (what, bytes, reason) in &refusals {
        let before = connections(admin, reason);
        assert!(
            send_and_observe_close(gateway, bytes, Duration::from_secs(8)),
            "the gateway kept a connection with {what} open"
        );
        let counted = wait_for(Duration::from_secs(10), || {
            (connections(admin, reason) == before + 1).then_some(())
        });
        assert!(
            counted.is_some(),
            "{what}: {reason} went from {before} to {}",
            connections(admin, reason)
        );
    }

    // Nothing lost: greeter is reached again, ledger never was.
    let reached_before = greeter.connections().len();
    let again = wait_for(Duration::from_secs(10), || {
        let _ = send_and_observe_close(gateway, &hello, Duration::from_millis(300));
        greeter
            .connections()
            .into_iter()
            .skip(reached_before)
            .find(|c| !c.is_empty())
    });
    assert!(again.is_some(), "greeter not reached after the refusals");
    assert!(ledger.connections().is_empty(), "ledger was reached");
    assert!(gw[1].is_running(), "{}", gw[1].log_text());
}

#[test]
fn envoy_sidecars_reach_the_other_network_through_a_causeway_gateway() {
    let _guard = mesh_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh_dir = dir.path().join("mesh");
    copy_dir(&workspace().join("examples/three-clusters"), &mesh_dir);
    let mut mesh = MeshRun::launch_with(
        dir,
        mesh_dir,
        24600,
        &[],
        &[],
        &["--data-plane", "envoy", "--gateway-data-plane", "causeway"],
    );
    mesh.warm_up();
    // greeter exists only in gamma (net-b): alpha's Envoy sidecar -> gamma's Causeway gateway
    // -> gamma's Envoy sidecar, mTLS between the two sidecars.
    let greeter = mesh
        .outbound("alpha-client-sidecar", "demo/greeter")
        .expect("client has a greeter listener");
    let answer = wait_for(Duration::from_secs(20), || call(greeter).ok()).unwrap_or_else(|| {
        panic!(
            "greeter never answered through the Causeway gateway:\n{}",
            mesh.log("gamma-gateway-0")
        )
    });
    assert_eq!(answer["cluster"], "gamma");
    assert_eq!(answer["workload"], "greeter-gamma-1");
    assert_eq!(
        answer["caller"], "spiffe://causeway.local/ns/demo/sa/client",
        "the server saw the client's SPIFFE ID: TLS was not terminated at the gateway"
    );
    // Many requests, all through it (bounded).
    for i in 0..50 {
        let a = call(greeter).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(a["cluster"], "gamma");
    }
    // It was the Causeway gateway that carried them: its own admin, its own metrics (the
    // client's sidecar pools connections, so a few connections carry all the requests).
    let gw_admin = mesh.admin("gamma-gateway-0");
    let dump = get_json(gw_admin, "/config_dump");
    assert_eq!(dump["dataPlane"], "causeway", "{dump}");
    let Ok((200, stats)) = http_get(gw_admin, "/stats/prometheus") else {
        panic!("no metrics from the Causeway gateway");
    };
    let opened: u64 = stats
        .lines()
        .filter(|l| l.starts_with("causeway_proxy_gateway_connections_opened_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(opened >= 1, "{stats}");
    assert_eq!(dump["xds"]["rejected"], 0, "{dump}");
    assert_eq!(dump["xds"]["connected"], true, "{dump}");

    // The control plane goes away: the gateway says so and keeps forwarding on its last good
    // config; when it is back, the gateway reconnects and is in sync again.
    mesh.stop("control-plane");
    let down = wait_for(Duration::from_secs(10), || {
        (get_json(gw_admin, "/config_dump")["xds"]["connected"] == false).then_some(())
    });
    assert!(
        down.is_some(),
        "the gateway did not notice the control plane left"
    );
    for i in 0..20 {
        let a =
            call(greeter).unwrap_or_else(|e| panic!("request {i} without a control plane: {e}"));
        assert_eq!(a["workload"], "greeter-gamma-1");
    }
    mesh.restart("control-plane");
    let proxies = mesh.plan["processes"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter(|s| s["kind"] == "gateway" || s["kind"] == "sidecar")
                .count()
        })
        .unwrap_or(0);
    mesh.wait_in_sync(proxies);
    let dump = get_json(gw_admin, "/config_dump");
    assert_eq!(dump["xds"]["connected"], true, "{dump}");
    assert_eq!(
        call(greeter).expect("after the restart")["cluster"],
        "gamma"
    );
}
