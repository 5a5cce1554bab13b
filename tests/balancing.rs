//! Balancing across the real pods behind a remote east-west gateway (issue 11), with real
//! traffic through a whole mesh on Causeway's data plane: the client sidecar gets one endpoint
//! per remote pod (each at the gateway's address with its own SNI), spreads requests over
//! them, avoids a slow pod, ejects a failing one alone (retrying its requests elsewhere), and
//! an Envoy sidecar in the same mesh keeps working through the same gateway on the aggregate
//! endpoint.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use causeway_e2e::*;

const CLIENT: &str = "alpha-client-sidecar";

/// One keep-alive HTTP/1.1 connection to a sidecar's outbound listener.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        KeepAlive {
            reader: BufReader::new(stream),
        }
    }

    /// GET `/` on the connection: (status, body).
    fn get(&mut self) -> (u16, String) {
        let req = "GET / HTTP/1.1\r\nhost: pods\r\n\r\n";
        self.reader
            .get_mut()
            .write_all(req.as_bytes())
            .expect("write request");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).expect("header");
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().expect("content-length");
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Who answered `n` requests on one connection (workload → count), and the errors.
fn spread(addr: SocketAddr, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut conn = KeepAlive::open(addr);
    let mut by = BTreeMap::new();
    let mut errors = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..n {
        assert!(Instant::now() < deadline, "{n} requests took over 120 s");
        let (status, body) = conn.get();
        if status != 200 {
            errors.push(format!("{status}: {body}"));
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&body).expect("echo json");
        let who = v["workload"].as_str().unwrap_or("?").to_owned();
        *by.entry(who).or_default() += 1;
    }
    eprintln!("{n} requests to {addr}: {by:?}, {} error(s)", errors.len());
    (by, errors)
}

/// A WorkloadEntry of the `pods` service (or another) with its token, as YAML.
fn workload(name: &str, service: &str, address: &str, cluster: &str, mesh: &Path) -> String {
    let token = format!("tokens/{cluster}/{name}.token");
    std::fs::create_dir_all(mesh.join("tokens").join(cluster)).expect("tokens dir");
    std::fs::write(mesh.join(&token), format!("{name}-token-for-the-test\n")).expect("token");
    format!(
        "---\napiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  name: {name}\n  \
         namespace: demo\nspec:\n  address: {address}\n  labels:\n    app: {service}\n  \
         serviceAccount: {service}\n  ports:\n    http: 8080\n  credential:\n    tokenFile: {token}\n"
    )
}

/// An exported HTTP service of the demo namespace, as YAML.
fn service(name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  \
         selector:\n    app: {name}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n    \
         appProtocol: http\n---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\n\
         metadata:\n  name: {name}\n  namespace: demo\n"
    )
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open");
    f.write_all(text.as_bytes()).expect("append");
}

/// Three `pods` replicas in gamma (another network: behind gamma's gateway for alpha).
fn add_pods(mesh: &Path) {
    let mut yaml = service("pods");
    for n in 1..=3 {
        let name = format!("pods-gamma-{n}");
        yaml += &workload(&name, "pods", &format!("127.3.0.{}", 20 + n), "gamma", mesh);
    }
    append(&mesh.join("clusters/gamma/workloads.yaml"), &yaml);
}

/// The client sidecar's endpoints of `cluster` from `causeway proxy-config endpoints -o json`.
fn endpoints(mesh: &MeshRun, cluster: &str) -> Vec<serde_json::Value> {
    let admin = mesh.admin(CLIENT).to_string();
    let out = run(&[
        "proxy-config",
        "endpoints",
        "--admin",
        &admin,
        "--cluster",
        cluster,
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "proxy-config endpoints: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["clusters"]
        .as_array()
        .and_then(|c| c.first())
        .and_then(|c| c["endpoints"].as_array())
        .cloned()
        .unwrap_or_default()
}

const PODS: &str = "outbound|80||pods.demo.svc.cluster.local";

#[test]
fn pods_behind_one_gateway_share_the_load_a_slow_one_is_avoided_a_failing_one_ejected() {
    let _guard = mesh_lock();
    let mut mesh = MeshRun::start_on("causeway", "three-clusters", 19000, add_pods, &[]);
    let pods = mesh.outbound(CLIENT, "demo/pods").expect("pods listener");

    // One endpoint per pod, all at gamma's gateway, each with its own SNI.
    let eps = endpoints(&mesh, PODS);
    assert_eq!(eps.len(), 3, "{eps:#?}");
    assert!(
        eps.iter().all(|e| e["address"] == "127.3.255.1:15443"),
        "{eps:#?}"
    );
    let snis: std::collections::BTreeSet<_> = eps.iter().map(|e| e["sni"].to_string()).collect();
    assert_eq!(snis.len(), 3, "{eps:#?}");

    // Equal pods, one keep-alive connection: every pod answers at least 20 % of 300.
    let (by, errors) = spread(pods, 300);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(by.len(), 3, "{by:?}");
    assert!(by.values().all(|n| *n >= 60), "{by:?}");

    // One pod answers 503: it alone is ejected, the others serve, retries hide it.
    mesh.restart_with("gamma-pods-gamma-3-app-8080", &["--status", "503"]);
    let (by, errors) = spread(pods, 300);
    assert!(
        errors.is_empty(),
        "the client saw errors: {errors:?} {by:?}"
    );
    assert!(
        by.get("pods-gamma-1") > Some(&50) && by.get("pods-gamma-2") > Some(&50),
        "{by:?}"
    );
    let eps = endpoints(&mesh, PODS);
    let pod = |w: &str| {
        eps.iter()
            .find(|e| e["workload"] == w)
            .cloned()
            .unwrap_or_else(|| panic!("no endpoint {w}: {eps:#?}"))
    };
    assert_eq!(pod("pods-gamma-1")["ejected"], false, "{eps:#?}");
    assert_eq!(pod("pods-gamma-2")["ejected"], false, "{eps:#?}");
    let failing = pod("pods-gamma-3");
    assert_eq!(failing["ejected"], true, "{failing:#}");
    assert!(failing["failures"].as_u64() >= Some(2), "{failing:#}");
    // While ejected it gets no attempt at all; the other two carry everything.
    let attempts = |eps: &[serde_json::Value]| {
        eps.iter()
            .find(|e| e["workload"] == "pods-gamma-3")
            .and_then(|e| e["requests"].as_u64())
            .expect("pod 3's attempts")
    };
    let before = attempts(&eps);
    let (more, errors) = spread(pods, 100);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(more.values().sum::<usize>(), 100, "{more:?}");
    let after = endpoints(&mesh, PODS);
    assert_eq!(
        attempts(&after),
        before,
        "an ejected pod was tried: {after:#?}"
    );
    // And where an operator's Prometheus looks.
    let (_, metrics) = http_get(mesh.admin(CLIENT), "/stats/prometheus").expect("metrics");
    let line = format!("causeway_proxy_outlier_ejections_total{{cluster=\"{PODS}\"}} ");
    let ejections: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line}in\n{metrics}"));
    assert!(ejections >= 1, "{ejections}");
    assert!(
        metrics.contains(&format!(
            "causeway_proxy_endpoints_ejected{{cluster=\"{PODS}\"}} 1"
        )),
        "{metrics}"
    );

    // The same pod comes back 50 ms slower than the others: once its ejection has ended and
    // after a warm-up it gets under 10 % of the requests.
    mesh.restart_with("gamma-pods-gamma-3-app-8080", &["--delay-ms", "50"]);
    let back = wait_for(Duration::from_secs(20), || {
        let eps = endpoints(&mesh, PODS);
        eps.iter()
            .any(|e| e["workload"] == "pods-gamma-3" && e["ejected"] == false)
            .then_some(())
    });
    assert!(
        back.is_some(),
        "pod 3 stayed ejected: {:#?}",
        endpoints(&mesh, PODS)
    );
    let (warm, errors) = spread(pods, 100);
    assert!(errors.is_empty(), "warm-up: {errors:?} {warm:?}");
    let (by, errors) = spread(pods, 300);
    assert!(errors.is_empty(), "{errors:?}");
    let slow = by.get("pods-gamma-3").copied().unwrap_or(0);
    assert!(slow < 30, "the slow pod answered {slow} of 300: {by:?}");
    // Not ejected, not gone: its latency estimate is what keeps it out.
    let slow_ewma = endpoints(&mesh, PODS)
        .into_iter()
        .find(|e| e["workload"] == "pods-gamma-3")
        .and_then(|e| e["ewmaMs"].as_f64())
        .expect("the slow pod's estimate");
    assert!(slow_ewma > 20.0, "estimate {slow_ewma} ms");
}

#[test]
fn an_envoy_sidecar_in_the_same_mesh_keeps_the_aggregate_path_through_the_gateway() {
    let _guard = mesh_lock();
    let dir = tempfile::tempdir().expect("tmp");
    let mesh_dir = dir.path().join("mesh");
    copy_dir(&workspace().join("examples/three-clusters"), &mesh_dir);
    add_pods(&mesh_dir);
    let envoy_side = "alpha-echo-alpha-1-sidecar";
    let mesh = MeshRun::launch_edited(
        dir,
        mesh_dir,
        19400,
        &[],
        &["--data-plane", "causeway"],
        |plan| set_data_plane(plan, envoy_side, "envoy"),
    );
    mesh.warm_up();
    // The Envoy sidecar reaches the pods through gamma's gateway (service SNI, aggregate).
    let via_envoy = mesh
        .outbound(envoy_side, "demo/pods")
        .expect("envoy listener");
    let (by, errors) = spread(via_envoy, 60);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(by.values().sum::<usize>(), 60, "{by:?}");
    assert!(by.keys().all(|w| w.starts_with("pods-gamma-")), "{by:?}");
    // And the Causeway client beside it spreads over the pods on the same gateway.
    let via_causeway = mesh.outbound(CLIENT, "demo/pods").expect("pods listener");
    let (by, errors) = spread(via_causeway, 150);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(by.len(), 3, "{by:?}");
}

/// A fourth cluster, delta, on its own network in gamma's locality: for alpha's client both are
/// remote at the same priority.
fn add_delta_with_twins(mesh: &Path) {
    let yaml = std::fs::read_to_string(mesh.join("mesh.yaml")).expect("mesh.yaml");
    let yaml = yaml.replace(
        "networks: [net-a, net-b]",
        "networks: [net-a, net-b, net-c]",
    );
    std::fs::write(mesh.join("mesh.yaml"), yaml).expect("mesh.yaml");
    std::fs::create_dir_all(mesh.join("tokens/delta")).expect("tokens");
    std::fs::write(
        mesh.join("tokens/delta/eastwest-gateway.token"),
        "delta-gateway-token-for-the-test\n",
    )
    .expect("token");
    append(
        &mesh.join("mesh.yaml"),
        "---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: delta\nspec:\n  \
         network: net-c\n  locality: eu-west/eu-west-1a\n  gateways:\n  - address: 127.4.255.1\n    \
         port: 15443\n  gatewayIdentity:\n    serviceAccount: eastwest-gateway\n    credential:\n      \
         tokenFile: tokens/delta/eastwest-gateway.token\n",
    );
    append(
        &mesh.join("clusters/gamma/workloads.yaml"),
        &(service("twin") + &workload("twin-gamma-1", "twin", "127.3.0.31", "gamma", mesh)),
    );
    std::fs::create_dir_all(mesh.join("clusters/delta")).expect("delta dir");
    std::fs::write(
        mesh.join("clusters/delta/workloads.yaml"),
        service("twin").trim_start_matches("---\n").to_owned()
            + &workload("twin-delta-1", "twin", "127.4.0.31", "delta", mesh),
    )
    .expect("delta workloads");
}

#[test]
fn of_two_remote_clusters_at_one_priority_the_slower_gets_under_a_third() {
    let _guard = mesh_lock();
    let mut mesh = MeshRun::start_on(
        "causeway",
        "three-clusters",
        19800,
        add_delta_with_twins,
        &[],
    );
    let twin = mesh.outbound(CLIENT, "demo/twin").expect("twin listener");
    let eps = endpoints(&mesh, "outbound|80||twin.demo.svc.cluster.local");
    assert_eq!(eps.len(), 2, "{eps:#?}");
    assert_eq!(eps[0]["priority"], eps[1]["priority"], "{eps:#?}");
    // Both answer while equal.
    let (by, errors) = spread(twin, 100);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(by.len(), 2, "{by:?}");
    mesh.restart_with("delta-twin-delta-1-app-8080", &["--delay-ms", "20"]);
    let (_, errors) = spread(twin, 100);
    assert!(errors.is_empty(), "warm-up: {errors:?}");
    let (by, errors) = spread(twin, 300);
    assert!(errors.is_empty(), "{errors:?}");
    let slow = by.get("twin-delta-1").copied().unwrap_or(0);
    assert!(
        slow < 100,
        "the slower cluster answered {slow} of 300: {by:?}"
    );
    assert!(by.get("twin-gamma-1").copied().unwrap_or(0) > 200, "{by:?}");
}
