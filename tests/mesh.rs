//! A whole mesh with real Envoy sidecars and gateways (the example's three clusters on two
//! networks): cross-network calls with mTLS, split horizon as Envoy itself reports it,
//! authorization by identity and cluster, path rules failing closed on a TCP port, NACK
//! handling, and an unexported service that stays unreachable through a gateway even with a
//! valid mesh certificate.

use std::net::SocketAddr;
use std::time::Duration;

use causeway_e2e::mesh_client::{mesh_cert, tls_through};
use causeway_e2e::*;

const CLIENT: &str = "alpha-client-sidecar";
const CLIENT_ID: &str = "spiffe://causeway.local/ns/demo/sa/client";

#[test]
fn tour_passes_on_causeway_the_default() {
    tour_passes(22000, &[]);
}

#[test]
fn tour_passes_on_envoy() {
    tour_passes(22300, &["--data-plane", "envoy"]);
}

fn tour_passes(port_base: u16, extra: &[&str]) {
    let _guard = mesh_lock();
    let dir = tempfile::tempdir().expect("tmp");
    let envoy = envoy_bin();
    let port = port_base.to_string();
    let mesh_dir = workspace().join("examples/three-clusters");
    let mut args = vec![
        "demo",
        "--tour",
        "--mesh-dir",
        mesh_dir.to_str().expect("utf-8"),
        "--run-dir",
        dir.path().to_str().expect("utf-8"),
        "--port-base",
        &port,
        "--envoy",
        envoy.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("tour passed"), "{text}");
    assert!(
        text.contains(
            "answered by gamma/greeter-gamma-1, caller spiffe://causeway.local/ns/demo/sa/client"
        ),
        "{text}"
    );
    let on_causeway = std::fs::read_dir(dir.path().join("logs"))
        .expect("logs")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|log| log.contains("Causeway data plane started"))
        .count();
    // The example's eight sidecars and three gateways.
    let expected = if extra.is_empty() { 11 } else { 0 };
    assert_eq!(on_causeway, expected, "proxies on Causeway's data plane");
}

fn hosts(admin: SocketAddr, cluster: &str) -> Vec<(String, u64, u64)> {
    let v = get_json(admin, "/clusters?format=json");
    let mut out = Vec::new();
    for c in v["cluster_statuses"].as_array().into_iter().flatten() {
        if c["name"] != cluster {
            continue;
        }
        for h in c["host_statuses"].as_array().into_iter().flatten() {
            let sa = &h["address"]["socket_address"];
            out.push((
                format!(
                    "{}:{}",
                    sa["address"].as_str().unwrap_or(""),
                    sa["port_value"]
                ),
                h["weight"].as_u64().unwrap_or(0),
                h["priority"].as_u64().unwrap_or(0),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn cross_network_call_and_split_horizon_in_envoy() {
    let _guard = mesh_lock();
    let mesh = MeshRun::start("three-clusters", 23000, |_| {}, &[]);
    // greeter exists only in gamma (net-b): alpha's sidecar -> gamma's gateway -> gamma's sidecar.
    let greeter = mesh
        .outbound(CLIENT, "demo/greeter")
        .expect("client has a greeter listener");
    let answer = call(greeter).expect("greeter answers");
    assert_eq!(answer["cluster"], "gamma");
    assert_eq!(
        answer["caller"], CLIENT_ID,
        "the server saw the client's SPIFFE ID"
    );

    // Envoy's own view of echo: local and same-network endpoints by address, the other network
    // only through its gateway, with weight and priority.
    let admin = mesh.admin(CLIENT);
    let echo = hosts(admin, "outbound|80||echo.demo.svc.cluster.local");
    assert_eq!(
        echo,
        vec![
            ("127.1.0.11:8080".to_owned(), 1, 0),
            ("127.2.0.11:8080".to_owned(), 1, 1),
            ("127.3.255.1:15443".to_owned(), 1, 2),
        ],
        "split horizon as Envoy sees it"
    );
    let dump = get_json(admin, "/config_dump?resource=dynamic_active_clusters").to_string();
    assert!(
        dump.contains("outbound_.80_._.echo.demo.svc.cluster.local"),
        "Istio SNI on the upstream TLS"
    );
    assert!(
        dump.contains("spiffe://causeway.local/ns/demo/sa/echo"),
        "SAN check on the server identity"
    );
    assert!(
        !dump.contains("127.3.0.11"),
        "no pod IP of the other network is ever sent"
    );

    // The gateway only ever saw TLS: it has no TLS context and inspected TLS ClientHellos.
    let gw_admin = mesh.admin("gamma-gateway-0");
    let gw_dump = get_json(gw_admin, "/config_dump?resource=dynamic_listeners").to_string();
    assert!(
        !gw_dump.contains("DownstreamTlsContext"),
        "the gateway never terminates TLS"
    );
    let tls_found = wait_for(Duration::from_secs(15), || {
        let (_, stats) = http_get(gw_admin, "/stats?filter=tls_inspector.tls_found").ok()?;
        stats
            .lines()
            .filter_map(|l| l.rsplit(": ").next()?.parse::<u64>().ok())
            .find(|n| *n > 0)
    });
    assert!(tls_found.is_some(), "the gateway saw TLS");
}

const POLICY: &str = "apiVersion: causeway.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: greeter-callers, namespace: demo}
spec:
  selector: {app: greeter}
  action: ALLOW
  rules:
  - from:
    - principals: [spiffe://causeway.local/ns/demo/sa/client]
      clusters: [CLUSTER]
";

#[test]
fn authorization_by_identity_and_cluster_on_envoy() {
    authorization_by_identity_and_cluster("envoy", 24000);
}

#[test]
fn authorization_by_identity_and_cluster_on_causeway() {
    authorization_by_identity_and_cluster("causeway", 24300);
}

fn authorization_by_identity_and_cluster(data_plane: &str, port_base: u16) {
    let _guard = mesh_lock();
    let mesh = MeshRun::start_on(
        data_plane,
        "three-clusters",
        port_base,
        |dir| {
            std::fs::write(
                dir.join("clusters/gamma/policy.yaml"),
                POLICY.replace("CLUSTER", "alpha"),
            )
            .expect("write")
        },
        &[],
    );
    let from_client = mesh.outbound(CLIENT, "demo/greeter").expect("listener");
    assert_eq!(
        call(from_client).expect("client is allowed")["caller"],
        CLIENT_ID
    );
    // Another identity (echo, in beta) is refused with 403.
    let from_echo = mesh
        .outbound("beta-echo-beta-1-sidecar", "demo/greeter")
        .expect("listener");
    let denied = call(from_echo).expect_err("echo is not allowed");
    assert!(denied.starts_with("403"), "{denied}");
    // The policy now requires the caller's cluster to be beta: the client (alpha) is refused.
    std::fs::write(
        mesh.mesh_dir.join("clusters/gamma/policy.yaml"),
        POLICY.replace("CLUSTER", "beta"),
    )
    .expect("write");
    let refused = wait_for(Duration::from_secs(10), || {
        call(from_client).err().filter(|e| e.starts_with("403"))
    });
    assert!(refused.is_some(), "the cluster condition is enforced");
    if data_plane == "causeway" {
        proxy_config_dump_shows_what_the_proxy_serves(&mesh);
    }
}

/// `causeway proxy-config dump` reads a Causeway proxy's own configuration from its admin API.
fn proxy_config_dump_shows_what_the_proxy_serves(mesh: &MeshRun) {
    let admin = mesh.admin(CLIENT).to_string();
    let out = run(&["proxy-config", "dump", "--admin", &admin]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("xDS connected"), "{text}");
    for expected in [
        "|demo/greeter",
        "http -> outbound|80||greeter.demo.svc.cluster.local",
        "outbound_.80_._.echo.demo.svc.cluster.local",
        "p0 127.1.0.11:8080 w1 healthy alpha",
        "p2 127.3.255.1:15443",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
    let gateway = mesh.admin("gamma-gateway-0").to_string();
    let out = run(&["proxy-config", "dump", "--admin", &gateway]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sni outbound_.80_._.greeter.demo.svc.cluster.local tcp ->"),
        "{text}"
    );
    assert!(
        !text.contains("ledger"),
        "the gateway routes no unexported service: {text}"
    );
}

/// greeter's one port, declared TCP: its sidecar enforces network RBAC (no HTTP request).
const GREETER_HTTP_PORT: &str = "  - name: http
    port: 80
    targetPort: 8080
    appProtocol: http
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata:
  name: greeter";
const GREETER_TCP_PORT: &str = "  - name: tcp-greeter
    port: 80
    targetPort: 8080
    appProtocol: tcp
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata:
  name: greeter";

/// A policy on greeter with `action` and one rule `to: [TO]`.
fn greeter_policy(action: &str, to: &str) -> String {
    format!(
        "apiVersion: causeway.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: greeter-paths, namespace: demo}}
spec:
  selector: {{app: greeter}}
  action: {action}
  rules:
  - to: [{to}]
"
    )
}

#[test]
fn paths_cannot_be_checked_on_a_tcp_port_so_they_fail_closed_on_envoy() {
    paths_cannot_be_checked_on_a_tcp_port_so_they_fail_closed("envoy", 21000);
}

#[test]
fn paths_cannot_be_checked_on_a_tcp_port_so_they_fail_closed_on_causeway() {
    paths_cannot_be_checked_on_a_tcp_port_so_they_fail_closed("causeway", 21300);
}

fn paths_cannot_be_checked_on_a_tcp_port_so_they_fail_closed(data_plane: &str, port_base: u16) {
    let _guard = mesh_lock();
    let mesh = MeshRun::start_on(
        data_plane,
        "three-clusters",
        port_base,
        |dir| {
            let file = dir.join("clusters/gamma/workloads.yaml");
            let text = std::fs::read_to_string(&file).expect("read");
            assert!(text.contains(GREETER_HTTP_PORT), "greeter's port moved");
            std::fs::write(&file, text.replace(GREETER_HTTP_PORT, GREETER_TCP_PORT))
                .expect("write");
        },
        &[],
    );
    let policy = mesh.mesh_dir.join("clusters/gamma/policy.yaml");
    let greeter = mesh.outbound(CLIENT, "demo/greeter").expect("listener");
    // HTTP bytes through the TCP port reach the app while no policy applies.
    assert_eq!(call(greeter).expect("greeter answers")["cluster"], "gamma");
    // A call can fail while the listener changes over, before the new policy is what refuses
    // it: wait until a call fails *and* the RBAC counter has counted a refusal.
    let refused_by_rbac = |admin: SocketAddr, stat_prefix: &str, before: u64| {
        wait_for(Duration::from_secs(10), || {
            (call(greeter).is_err() && rbac_denied(admin, stat_prefix, data_plane) > before)
                .then_some(())
        })
        .is_some()
    };
    let served = |want: bool| {
        wait_for(Duration::from_secs(10), || {
            (call(greeter).is_ok() == want).then_some(())
        })
        .is_some()
    };
    // A DENY rule whose paths cannot be checked denies the whole port: the connection is closed.
    let admin = mesh.admin("gamma-greeter-gamma-1-sidecar");
    let before = rbac_denied(admin, "causeway_deny_", data_plane);
    std::fs::write(&policy, greeter_policy("DENY", "{paths: [/admin]}")).expect("write");
    assert!(
        refused_by_rbac(admin, "causeway_deny_", before),
        "DENY with paths closes the TCP port, and network RBAC is what closed it"
    );
    // ...unless the rule's ports leave this one out.
    std::fs::write(
        &policy,
        greeter_policy("DENY", "{ports: [9999], paths: [/admin]}"),
    )
    .expect("write");
    assert!(
        served(true),
        "a DENY rule for another port leaves this one alone"
    );
    // An ALLOW rule that needs paths allows nothing on a TCP port.
    let before = rbac_denied(admin, "causeway_allow_", data_plane);
    std::fs::write(&policy, greeter_policy("ALLOW", "{paths: ['/*']}")).expect("write");
    assert!(
        refused_by_rbac(admin, "causeway_allow_", before),
        "ALLOW with paths allows nothing on TCP, and network RBAC is what refused it"
    );
}

/// Refusals by RBAC so far: Envoy's counter of the filter with `stat_prefix`, or on Causeway's
/// data plane its count over every filter.
fn rbac_denied(admin: SocketAddr, stat_prefix: &str, data_plane: &str) -> u64 {
    if data_plane == "causeway" {
        return causeway_rbac_denied(admin);
    }
    let Ok((_, stats)) = http_get(admin, "/stats?filter=rbac") else {
        return 0;
    };
    stats
        .lines()
        .filter(|l| l.contains(stat_prefix) && l.contains("denied") && !l.contains("shadow"))
        .filter_map(|l| l.rsplit(": ").next()?.parse::<u64>().ok())
        .sum()
}

/// Causeway's `causeway_proxy_rbac_denied_total`, summed over listeners.
fn causeway_rbac_denied(admin: SocketAddr) -> u64 {
    let Ok((_, text)) = http_get(admin, "/stats/prometheus") else {
        return 0;
    };
    text.lines()
        .filter(|l| l.starts_with("causeway_proxy_rbac_denied_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn nacked_config_is_reported_and_traffic_keeps_flowing() {
    let _guard = mesh_lock();
    let mesh = MeshRun::start("three-clusters", 25000, |_| {}, &["--enable-test-hooks"]);
    let echo = mesh.outbound(CLIENT, "demo/echo").expect("listener");
    assert!(call(echo).is_ok());
    let (status, body) = http_post(
        mesh.debug,
        "/debug/test/poison?cluster=alpha&workload=client",
    )
    .expect("post");
    assert_eq!(status, 200, "{body}");
    let nack = wait_for(Duration::from_secs(10), || {
        let v = get_json(mesh.debug, "/debug/proxies");
        let p = v["proxies"]
            .as_array()?
            .iter()
            .find(|p| p["workload"] == "client")?
            .clone();
        let n = p["types"]["lds"]["lastNack"].clone();
        (!n.is_null()).then_some(n)
    })
    .expect("the NACK is recorded");
    assert!(
        nack["message"]
            .as_str()
            .is_some_and(|m| m.contains("causeway")),
        "{nack}"
    );
    // proxy-status shows it.
    let out = run(&["proxy-status", "--control-plane", &mesh.debug.to_string()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("NACK"), "{table}");
    assert!(table.contains("alpha client rejected lds"), "{table}");
    // Traffic keeps flowing on the last good config.
    for _ in 0..5 {
        call(echo).expect("still served");
    }
    // Undo: the proxy accepts again.
    let (status, _) = http_post(
        mesh.debug,
        "/debug/test/poison?cluster=alpha&workload=client&on=false",
    )
    .expect("post");
    assert_eq!(status, 200);
    let proxies = mesh.plan["processes"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter(|s| s["kind"] == "gateway" || s["kind"] == "sidecar")
                .count()
        })
        .unwrap_or(0);
    mesh.wait_in_sync(proxies);
}

#[test]
fn unexported_service_unreachable_even_with_crafted_sni_and_valid_cert() {
    let _guard = mesh_lock();
    let mesh = MeshRun::start("three-clusters", 26000, |_| {}, &[]);
    causeway_trust::install_crypto_provider();
    // A genuine certificate for the client identity, from the mesh CA.
    let cert = mesh_cert(&mesh, "alpha", "client");
    let gateway: SocketAddr = "127.3.255.1:15443".parse().expect("addr");
    // Exported greeter: the gateway forwards, gamma's sidecar accepts the certificate.
    let ok = tls_through(
        gateway,
        "outbound_.80_._.greeter.demo.svc.cluster.local",
        &cert,
    )
    .expect("greeter through the gateway");
    assert!(ok.contains("\"cluster\":\"gamma\""), "{ok}");
    // Unexported ledger: same certificate, crafted SNI, the gateway closes the connection.
    let refused = tls_through(
        gateway,
        "outbound_.80_._.ledger.demo.svc.cluster.local",
        &cert,
    );
    assert!(
        refused.is_err(),
        "ledger reached through the gateway: {refused:?}"
    );
}
