//! A real Envoy as cluster gamma's east-west gateway: it routes on TLS SNI to gamma's endpoints
//! without terminating TLS, and only for exported services. A crafted SNI for an unexported
//! service, an unknown SNI or no TLS at all gets the connection closed, counted by Envoy as a
//! connection no filter chain matches, and the exported service is still reached afterwards.

use std::net::SocketAddr;
use std::time::Duration;

use causeway_e2e::*;

const GATEWAY: &str = "127.3.255.1:15443";

#[test]
fn gateway_forwards_only_exported_services_by_sni() {
    let cp = ControlPlane::start("three-clusters", &[]);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut gw = cp.gateway("gateway-gamma", "gamma", "eastwest", &admin);
    cp.wait_in_sync(1, Duration::from_secs(30));
    assert!(gw[1].is_running(), "{}", gw[1].log_text());
    // Stand-ins for gamma's workloads: greeter (exported) and ledger (not exported).
    let greeter = Recorder::start("127.3.0.12:8080".parse().expect("addr"));
    let ledger = Recorder::start("127.3.0.13:8080".parse().expect("addr"));
    let gateway: SocketAddr = GATEWAY.parse().expect("addr");
    let admin: SocketAddr = admin.parse().expect("addr");

    // Envoy's own view: one filter chain per exported service port of gamma, nothing else.
    let dump = get_json(admin, "/config_dump?resource=dynamic_listeners");
    let text = dump.to_string();
    assert!(
        text.contains("outbound_.80_._.greeter.demo.svc.cluster.local"),
        "{text}"
    );
    assert!(
        text.contains("outbound_.80_._.echo.demo.svc.cluster.local"),
        "{text}"
    );
    assert!(
        !text.contains("ledger"),
        "unexported service configured on the gateway: {text}"
    );
    assert!(
        !text.contains("transport_socket"),
        "the gateway must not terminate TLS"
    );

    // Exported: the ClientHello reaches greeter untouched (passthrough, still TLS).
    let sni = "outbound_.80_._.greeter.demo.svc.cluster.local";
    let hello = client_hello(sni);
    let arrived = wait_for(Duration::from_secs(10), || {
        let _ = send_and_observe_close(gateway, &hello, Duration::from_millis(300));
        greeter.connections().into_iter().find(|c| !c.is_empty())
    })
    .unwrap_or_else(|| {
        panic!(
            "nothing reached greeter through the gateway:\n{}",
            gw[1].log_text()
        )
    });
    assert_eq!(arrived[0], 0x16, "a TLS handshake record, not plaintext");
    assert!(
        arrived.windows(sni.len()).any(|w| w == sni.as_bytes()),
        "the original ClientHello"
    );

    // Refused: the crafted SNI of an unexported service, an unknown SNI, plaintext. Each is
    // closed, and counted as a connection no filter chain matches (one more each).
    let listener = format!("listener.{}", GATEWAY.replace(':', "_"));
    let no_match = format!("{listener}.no_filter_chain_match");
    let refused_before = envoy::stat(admin, &no_match);
    let refusals: [(&str, Vec<u8>); 3] = [
        (
            "unexported service's SNI",
            client_hello("outbound_.80_._.ledger.demo.svc.cluster.local"),
        ),
        ("unknown SNI", client_hello("evil.example.com")),
        (
            "plaintext",
            b"GET / HTTP/1.1\r\nHost: ledger\r\n\r\n".to_vec(),
        ),
    ];
    for (n, (what, bytes)) in (1..).zip(&refusals) {
        assert!(
            send_and_observe_close(gateway, bytes, Duration::from_secs(8)),
            "the gateway kept a connection with {what} open"
        );
        let counted = wait_for(Duration::from_secs(10), || {
            (envoy::stat(admin, &no_match) >= refused_before + n).then_some(())
        });
        let now = envoy::stat(admin, &no_match);
        let listener_stats: Vec<(String, u64)> = envoy::stats(admin)
            .into_iter()
            .filter(|(k, _)| k.starts_with(&listener))
            .collect();
        assert!(
            counted.is_some() && now == refused_before + n,
            "{what}: {no_match} was {refused_before} before the refusals, {now} after {n} of \
             them; {listener_stats:#?}"
        );
    }

    // Nothing lost: the exported service is still reached through the gateway, and the refused
    // connections reached nobody (Envoy closed each of them without picking a route).
    let reached_before = greeter.connections().len();
    let again = wait_for(Duration::from_secs(10), || {
        let _ = send_and_observe_close(gateway, &hello, Duration::from_millis(300));
        greeter
            .connections()
            .into_iter()
            .skip(reached_before)
            .find(|c| !c.is_empty())
    })
    .unwrap_or_else(|| {
        panic!(
            "greeter was not reached through the gateway after the refusals:\n{}",
            gw[1].log_text()
        )
    });
    assert!(
        again.windows(sni.len()).any(|w| w == sni.as_bytes()),
        "the original ClientHello"
    );
    assert!(
        ledger.connections().is_empty(),
        "ledger was reached through the gateway"
    );
    assert!(gw[1].is_running(), "{}", gw[1].log_text());
}
