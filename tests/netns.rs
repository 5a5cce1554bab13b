//! Two clusters in two network namespaces with the **same pod IPs** (10.244.0.2 in both). Only
//! the gateways are reachable between the namespaces, over a veth pair; there is no route to the
//! other cluster's pods. A call from cluster a to `echo`, which runs only in cluster b, still
//! succeeds through b's east-west gateway with mTLS. The client's outbound traffic is captured
//! the way a pod's is: iptables redirects connections to its outbound block to the sidecar's
//! capture listener, which reads each one's original destination (SO_ORIGINAL_DST). Runs once
//! with every proxy on Envoy and once on Causeway's own data plane. Needs root, iproute2 and
//! iptables (CI runs as root and installs them).

use std::process::Command;
use std::time::Duration;

use causeway_e2e::netns::{curl_in, sh, start_in, Namespaces};
use causeway_e2e::*;

const MESH: &str = "apiVersion: causeway.io/v1alpha1
kind: Mesh
metadata: {name: overlap}
spec: {trustDomain: causeway.local}
---
apiVersion: causeway.io/v1alpha1
kind: Cluster
metadata: {name: a}
spec: {network: net-a, locality: r1/z1, gateways: [{address: 172.30.0.1, port: 15443}],
  gatewayIdentity: {serviceAccount: eastwest-gateway, credential: {tokenFile: tokens/gw-a.token}}}
---
apiVersion: causeway.io/v1alpha1
kind: Cluster
metadata: {name: b}
spec: {network: net-b, locality: r2/z1, gateways: [{address: 172.30.0.2, port: 15443}],
  gatewayIdentity: {serviceAccount: eastwest-gateway, credential: {tokenFile: tokens/gw-b.token}}}
";

fn workload(name: &str, app: &str, ip: &str, token: &str) -> String {
    format!(
        "---\napiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  address: {ip}\n  labels: {{app: {app}}}\n  serviceAccount: {app}\n  ports: {{http: 8080}}\n  credential: {{tokenFile: {token}}}\n"
    )
}

fn service(name: &str, exported: bool) -> String {
    let mut s = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 80, targetPort: 8080, appProtocol: http}}]\n"
    );
    if exported {
        s.push_str(&format!("---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {{name: {name}, namespace: demo}}\n"));
    }
    s
}

/// The client's outbound block, captured into its sidecar's port 15001.
const CLIENT_BLOCK: &str = "127.201.0.0/16";
const CAPTURE_PORT: &str = "15001";

#[test]
fn overlapping_pod_ips_only_gateways_between_namespaces_on_envoy() {
    overlapping_pod_ips_only_gateways_between_namespaces("envoy");
}

#[test]
fn overlapping_pod_ips_only_gateways_between_namespaces_on_causeway() {
    overlapping_pod_ips_only_gateways_between_namespaces("causeway");
}

fn overlapping_pod_ips_only_gateways_between_namespaces(data_plane: &str) {
    let _guard = mesh_lock();
    let pid = std::process::id();
    let tag = &data_plane[..1];
    let (a, b) = (format!("cwa{pid}{tag}"), format!("cwb{pid}{tag}"));
    let ns = Namespaces::create(&[&a, &b]);
    ns.veth((&a, "cwa0", "172.30.0.1/30"), (&b, "cwb0", "172.30.0.2/30"));
    // The same pod IP in both clusters; a second pod in a for the client.
    ns.loopback_address(&a, "10.244.0.2/32");
    ns.loopback_address(&a, "10.244.0.3/32");
    ns.loopback_address(&b, "10.244.0.2/32");
    sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        CLIENT_BLOCK,
        "-j",
        "REDIRECT",
        "--to-ports",
        CAPTURE_PORT,
    ]);
    let dir = tempfile::tempdir().expect("tmp");
    let mesh = dir.path().join("mesh");
    std::fs::create_dir_all(mesh.join("clusters/a")).expect("mkdir");
    std::fs::create_dir_all(mesh.join("clusters/b")).expect("mkdir");
    std::fs::create_dir_all(mesh.join("tokens")).expect("mkdir");
    for t in ["web-a", "client", "echo-b", "gw-a", "gw-b"] {
        std::fs::write(
            mesh.join(format!("tokens/{t}.token")),
            format!("token-of-{t}-{pid}\n"),
        )
        .expect("token");
    }
    std::fs::write(mesh.join("mesh.yaml"), MESH).expect("mesh");
    std::fs::write(
        mesh.join("clusters/a/workloads.yaml"),
        format!(
            "{}{}{}",
            service("web", false),
            workload("web-a", "web", "10.244.0.2", "tokens/web-a.token"),
            workload("client", "client", "10.244.0.3", "tokens/client.token")
        ),
    )
    .expect("a");
    std::fs::write(
        mesh.join("clusters/b/workloads.yaml"),
        format!(
            "{}{}",
            service("echo", true),
            workload("echo-b", "echo", "10.244.0.2", "tokens/echo-b.token")
        ),
    )
    .expect("b");
    let check = run(&["check", mesh.to_str().expect("utf-8")]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let envoy = envoy_bin();
    let envoy = envoy.to_str().expect("utf-8");
    let p = |s: &str| dir.path().join(s).display().to_string();
    let log = |s: &str| dir.path().join(format!("{s}.log"));
    let mesh_s = mesh.display().to_string();
    let ca_dir = p("ca");
    let mut procs = vec![start_in(
        &a,
        &[
            "control-plane",
            "--mesh-dir",
            &mesh_s,
            "--ca-dir",
            &ca_dir,
            "--debug-addr",
            "127.0.0.1:15010",
            "--xds-addr",
            "0.0.0.0:15011",
            "--ca-addr",
            "0.0.0.0:15012",
        ],
        &log("control-plane"),
    )];
    let up = wait_for(Duration::from_secs(20), || {
        curl_in(&a, "http://127.0.0.1:15010/healthz")
    });
    assert!(
        up.is_some(),
        "control plane in {a}: {}",
        std::fs::read_to_string(log("control-plane")).unwrap_or_default()
    );
    let root = p("ca/root/root-cert.pem");
    let run_dir = p("envoy");
    // Cluster a: gateway, web (its own pod at 10.244.0.2), client.
    let xds_a = "127.0.0.1:15011";
    let xds_b = "172.30.0.1:15011";
    let ca_a = "127.0.0.1:15012";
    let ca_b = "172.30.0.1:15012";
    let gw_sock = p("gw-a.sock");
    let gw_token = mesh.join("tokens/gw-a.token").display().to_string();
    procs.push(start_in(
        &a,
        &[
            "agent",
            "--ca",
            ca_a,
            "--ca-root",
            &root,
            "--token-file",
            &gw_token,
            "--namespace",
            "causeway-system",
            "--service-account",
            "eastwest-gateway",
            "--sds-socket",
            &gw_sock,
            "--cluster",
            "a",
        ],
        &log("gw-a-agent"),
    ));
    procs.push(start_in(
        &a,
        &[
            "proxy",
            "--role",
            "gateway",
            "--cluster",
            "a",
            "--namespace",
            "causeway-system",
            "--workload",
            "gw",
            "--sds-socket",
            &gw_sock,
            "--xds",
            xds_a,
            "--admin",
            "127.0.0.1:15100",
            "--run-dir",
            &run_dir,
            "--envoy",
            envoy,
            "--data-plane",
            data_plane,
        ],
        &log("gw-a"),
    ));
    let gw_sock = p("gw-b.sock");
    let gw_token = mesh.join("tokens/gw-b.token").display().to_string();
    procs.push(start_in(
        &b,
        &[
            "agent",
            "--ca",
            ca_b,
            "--ca-root",
            &root,
            "--token-file",
            &gw_token,
            "--namespace",
            "causeway-system",
            "--service-account",
            "eastwest-gateway",
            "--sds-socket",
            &gw_sock,
            "--cluster",
            "b",
        ],
        &log("gw-b-agent"),
    ));
    procs.push(start_in(
        &b,
        &[
            "proxy",
            "--role",
            "gateway",
            "--cluster",
            "b",
            "--namespace",
            "causeway-system",
            "--workload",
            "gw",
            "--sds-socket",
            &gw_sock,
            "--xds",
            xds_b,
            "--admin",
            "127.0.0.1:15100",
            "--run-dir",
            &run_dir,
            "--envoy",
            envoy,
            "--data-plane",
            data_plane,
        ],
        &log("gw-b"),
    ));
    let sidecar = |ns: &str,
                   cluster: &str,
                   name: &str,
                   sa: &str,
                   token: &str,
                   xds: &str,
                   ca: &str,
                   admin: &str,
                   cidr: &str,
                   app: &str,
                   extra: &[&str]| {
        let sock = p(&format!("{cluster}-{name}.sock"));
        let tok = mesh.join(token).display().to_string();
        let mut proxy = vec![
            "proxy",
            "--cluster",
            cluster,
            "--namespace",
            "demo",
            "--workload",
            name,
            "--xds",
            xds,
            "--sds-socket",
            &sock,
            "--admin",
            admin,
            "--outbound-cidr",
            cidr,
            "--app-address",
            app,
            "--run-dir",
            &run_dir,
            "--envoy",
            envoy,
            "--data-plane",
            data_plane,
        ];
        proxy.extend_from_slice(extra);
        vec![
            start_in(
                ns,
                &[
                    "agent",
                    "--ca",
                    ca,
                    "--ca-root",
                    &root,
                    "--token-file",
                    &tok,
                    "--namespace",
                    "demo",
                    "--service-account",
                    sa,
                    "--sds-socket",
                    &sock,
                ],
                &log(&format!("{cluster}-{name}-agent")),
            ),
            start_in(ns, &proxy, &log(&format!("{cluster}-{name}-sidecar"))),
        ]
    };
    procs.push(start_in(
        &a,
        &[
            "echo",
            "--listen",
            "127.0.0.1:8080",
            "--cluster",
            "a",
            "--workload",
            "web-a",
        ],
        &log("a-web-app"),
    ));
    procs.push(start_in(
        &b,
        &[
            "echo",
            "--listen",
            "127.0.0.1:8080",
            "--cluster",
            "b",
            "--workload",
            "echo-b",
        ],
        &log("b-echo-app"),
    ));
    procs.extend(sidecar(
        &a,
        "a",
        "web-a",
        "web",
        "tokens/web-a.token",
        xds_a,
        ca_a,
        "127.0.0.1:15101",
        "127.200.0.0/16",
        "127.0.0.1",
        &[],
    ));
    procs.extend(sidecar(
        &a,
        "a",
        "client",
        "client",
        "tokens/client.token",
        xds_a,
        ca_a,
        "127.0.0.1:15102",
        CLIENT_BLOCK,
        "127.0.0.2",
        &["--capture-port", CAPTURE_PORT],
    ));
    procs.extend(sidecar(
        &b,
        "b",
        "echo-b",
        "echo",
        "tokens/echo-b.token",
        xds_b,
        ca_b,
        "127.0.0.1:15101",
        "127.200.0.0/16",
        "127.0.0.1",
        &[],
    ));

    let synced = wait_for(Duration::from_secs(60), || {
        let v: serde_json::Value =
            serde_json::from_str(&curl_in(&a, "http://127.0.0.1:15010/debug/proxies")?).ok()?;
        let p = v["proxies"].as_array()?;
        (p.len() == 5 && p.iter().all(|x| x["inSync"] == true)).then_some(())
    });
    assert!(
        synced.is_some(),
        "proxies across namespaces did not sync: {:?}",
        curl_in(&a, "http://127.0.0.1:15010/debug/proxies")
    );

    // The client's outbound address for echo, from its Envoy.
    let listeners = curl_in(&a, "http://127.0.0.1:15102/listeners").expect("listeners");
    let echo_addr = listeners
        .lines()
        .find_map(|l| {
            l.split("::")
                .next()?
                .strip_prefix("outbound|")?
                .strip_suffix("|demo/echo")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no echo listener: {listeners}"));
    let answer = wait_for(Duration::from_secs(15), || {
        let body = curl_in(&a, &format!("http://{echo_addr}/"))?;
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .filter(|v| v["cluster"] == "b")
    })
    .expect("echo in b answers through the gateways");
    assert_eq!(answer["workload"], "echo-b");
    assert_eq!(
        answer["caller"],
        "spiffe://causeway.local/ns/demo/sa/client"
    );

    // The call was captured: nothing listens on echo's outbound address, the capture
    // listener on 127.0.0.1:15001 does.
    let sockets = sh(&["ip", "netns", "exec", &a, "ss", "-Hltn"]);
    assert!(
        !sockets.contains(&echo_addr),
        "{echo_addr} is bound: {sockets}"
    );
    assert!(sockets.contains("127.0.0.1:15001"), "{sockets}");
    assert!(listeners.contains("capture|127.0.0.1:15001"), "{listeners}");

    // Split horizon in a's proxy: b's pod IP never appears, only b's gateway.
    if data_plane == "envoy" {
        let clusters = curl_in(&a, "http://127.0.0.1:15102/clusters").expect("clusters");
        let echo_hosts: Vec<&str> = clusters
            .lines()
            .filter(|l| l.starts_with("outbound|80||echo.demo") && l.contains("::cx_total::"))
            .collect();
        assert!(
            echo_hosts.iter().all(|l| l.contains("172.30.0.2:15443")),
            "{echo_hosts:?}"
        );
    } else {
        let dump: serde_json::Value = serde_json::from_str(
            &curl_in(&a, "http://127.0.0.1:15102/config_dump").expect("config dump"),
        )
        .expect("json");
        let echo = &dump["config"]["assignments"]["outbound|80||echo.demo.svc.cluster.local"];
        // Every endpoint is connected to at b's gateway; b's pod (one endpoint per pod, with
        // its own SNI) is named only for operators, never an address the proxy dials.
        let endpoints: Vec<&serde_json::Value> = echo["localities"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["endpoints"].as_array().into_iter().flatten())
            .collect();
        assert!(!endpoints.is_empty(), "{echo}");
        for e in &endpoints {
            assert_eq!(e["address"], "172.30.0.2:15443", "{echo}");
            assert_eq!(e["pod"], "10.244.0.2:8080", "{echo}");
            assert!(
                e["sni"].as_str().is_some_and(|s| s.contains("_.ep-")),
                "{echo}"
            );
        }
    }
    // No direct route: 10.244.0.2 in a is a's own pod, and a has no route to any other pod
    // network — only the gateways' /30.
    let route = sh(&["ip", "-n", &a, "route", "get", "10.244.0.2"]);
    assert!(route.starts_with("local 10.244.0.2"), "{route}");
    let routes = sh(&["ip", "-n", &a, "route", "show"]);
    assert_eq!(
        routes.trim(),
        "172.30.0.0/30 dev cwa0 proto kernel scope link src 172.30.0.1",
        "{routes}"
    );
    let unreachable = Command::new("ip")
        .args(["-n", &a, "route", "get", "10.244.1.2"])
        .output()
        .expect("ip");
    assert!(
        !unreachable.status.success(),
        "a must not route to other pod addresses"
    );
    drop(procs);
}
