//! A real Envoy as cluster gamma's east-west gateway: it routes on TLS SNI to gamma's endpoints
//! without terminating TLS, and only for exported services. A crafted SNI for an unexported
//! service, an unknown SNI or no TLS at all gets the connection closed.

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

    // Unexported service with a correctly crafted SNI: closed, nothing forwarded.
    let crafted = client_hello("outbound_.80_._.ledger.demo.svc.cluster.local");
    assert!(
        send_and_observe_close(gateway, &crafted, Duration::from_secs(3)),
        "the gateway kept an unexported SNI open"
    );
    // Unknown SNI and plaintext: closed too.
    assert!(send_and_observe_close(
        gateway,
        &client_hello("evil.example.com"),
        Duration::from_secs(3)
    ));
    assert!(send_and_observe_close(
        gateway,
        b"GET / HTTP/1.1\r\nHost: ledger\r\n\r\n",
        Duration::from_secs(8)
    ));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        ledger.connections().is_empty(),
        "ledger was reached through the gateway"
    );
}
