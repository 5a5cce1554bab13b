//! Kubernetes clusters as mesh members, end to end with real Envoy sidecars and gateways: two
//! Kubernetes clusters (fake API servers speaking the real REST API over HTTPS) on two
//! networks plus one mesh-directory cluster.
//!
//! One mesh run walks through: a cross-network call answered by the right cluster with the
//! caller's identity; certificates issued through TokenReview and a foreign cluster's token
//! refused; MCS write-back (ServiceImports with the union of ports, Conflict on the newer
//! export); an EndpointSlice scaled and seen within 1 s; the kubeconfig rotated (old token
//! revoked) under a bounded load with no failed request; the API server stopped (endpoints
//! stay, the cluster is stale, traffic flows) and a pod deleted meanwhile gone after reconnect.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_e2e::kube_mesh::*;
use causeway_e2e::*;
use causeway_kube_fake::{McsVersion, ServerOptions};
use serde_json::Value;

const PORT_BASE: u16 = 31000;
const CLIENT_ID: &str = "spiffe://causeway.local/ns/demo/sa/client";

/// One `Cluster` document: its gateway on `127.<net>.255.1`, the gateway identity's token in
/// `tokens/<name>-gateway.token`, and a kubeconfig for Kubernetes members.
fn cluster_doc(
    name: &str,
    network: &str,
    locality: &str,
    net: u8,
    kubeconfig: Option<&Path>,
) -> String {
    let kubernetes = kubeconfig
        .map(|k| format!("  kubernetes: {{kubeconfig: {}}}\n", k.display()))
        .unwrap_or_default();
    format!(
        "apiVersion: causeway.io/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec:
  network: {network}
  locality: {locality}
  gateways: [{{address: 127.{net}.255.1, port: 15443}}]
  gatewayIdentity: {{serviceAccount: eastwest-gateway, credential: {{tokenFile: tokens/{name}-gateway.token}}}}
{kubernetes}"
    )
}

fn mesh_yaml(east: &Path, west: &Path) -> String {
    [
        "apiVersion: causeway.io/v1alpha1
kind: Mesh
metadata: {name: kube}
spec: {trustDomain: causeway.local, networks: [net-a, net-b]}
"
        .to_owned(),
        cluster_doc("east", "net-a", "us-east/us-east-1a", 41, Some(east)),
        cluster_doc("west", "net-b", "eu-west/eu-west-1a", 42, Some(west)),
        cluster_doc("vm", "net-a", "us-east/us-east-1b", 43, None),
    ]
    .join("---\n")
}

const VM_CLUSTER: &str = "apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: echo, namespace: demo, creationTimestamp: \"2026-11-03T00:00:00Z\"}
---
apiVersion: causeway.io/v1alpha1
kind: WorkloadEntry
metadata: {name: echo-vm-1, namespace: demo}
spec:
  address: 127.43.0.11
  labels: {app: echo}
  serviceAccount: echo
  ports: {http: 8080}
  credential: {tokenFile: tokens/echo-vm-1.token}
";

fn pod(cluster: &str, name: &str, app: &str, ip: [u8; 4], node: &str) -> FakePod {
    FakePod {
        cluster: cluster.into(),
        namespace: "demo".into(),
        name: name.into(),
        app: app.into(),
        service_account: app.into(),
        ip: Ipv4Addr::from(ip),
        node: node.into(),
        port: 8080,
    }
}

struct World {
    rt: tokio::runtime::Runtime,
    east: FakeCluster,
    west: FakeCluster,
    pods: Vec<FakePod>,
    mesh: MeshRun,
}

fn populate(east: &FakeCluster, west: &FakeCluster, pods: &[FakePod]) {
    east.create(node("east-node-a", "us-east", "us-east-1a"));
    west.create(node("west-node-a", "eu-west", "eu-west-1a"));
    for p in pods {
        let c = if p.cluster == "east" { east } else { west };
        c.create(p.object());
    }
    let by = |c: &str, app: &str| -> Vec<Value> {
        pods.iter()
            .filter(|p| p.cluster == c && p.app == app)
            .map(|p| p.endpoint(true))
            .collect()
    };
    east.create(service("demo", "echo", &[("http", 80, 8080, "http")]));
    east.create(endpoint_slice(
        "demo",
        "echo",
        "echo-east-a",
        8080,
        by("east", "echo"),
    ));
    east.create(service("demo", "inventory", &[("http", 80, 8080, "http")]));
    let beta = "multicluster.x-k8s.io/v1beta1";
    east.create(service_export(beta, "demo", "echo", "2026-11-01T00:00:00Z"));
    east.create(service_export(
        beta,
        "demo",
        "inventory",
        "2026-11-01T00:00:00Z",
    ));
    // west serves only the older MCS version, and declares echo with one more port.
    west.create(service("demo", "greeter", &[("http", 80, 8080, "http")]));
    west.create(endpoint_slice(
        "demo",
        "greeter",
        "greeter-west-a",
        8080,
        by("west", "greeter"),
    ));
    west.create(service(
        "demo",
        "echo",
        &[("http", 80, 8080, "http"), ("metrics", 9090, 9090, "http")],
    ));
    west.create(endpoint_slice(
        "demo",
        "echo",
        "echo-west-a",
        8080,
        by("west", "echo"),
    ));
    west.create(service("demo", "inventory", &[("http", 80, 8080, "grpc")]));
    let alpha = "multicluster.x-k8s.io/v1alpha1";
    west.create(service_export(
        alpha,
        "demo",
        "greeter",
        "2026-11-02T00:00:00Z",
    ));
    west.create(service_export(
        alpha,
        "demo",
        "echo",
        "2026-11-02T00:00:00Z",
    ));
    west.create(service_export(
        alpha,
        "demo",
        "inventory",
        "2026-11-02T00:00:00Z",
    ));
}

fn start_world() -> World {
    causeway_e2e::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let east = FakeCluster::start(
        &rt,
        "east",
        dir.path(),
        ServerOptions {
            mcs_versions: vec![McsVersion::V1beta1],
            ..ServerOptions::default()
        },
    );
    let west = FakeCluster::start(
        &rt,
        "west",
        dir.path(),
        ServerOptions {
            mcs_versions: vec![McsVersion::V1alpha1],
            ..ServerOptions::default()
        },
    );
    let pods = vec![
        pod(
            "east",
            "client-0",
            "client",
            [127, 41, 0, 10],
            "east-node-a",
        ),
        pod(
            "east",
            "echo-east-0",
            "echo",
            [127, 41, 0, 11],
            "east-node-a",
        ),
        pod(
            "west",
            "greeter-west-0",
            "greeter",
            [127, 42, 0, 11],
            "west-node-a",
        ),
        pod(
            "west",
            "echo-west-0",
            "echo",
            [127, 42, 0, 12],
            "west-node-a",
        ),
    ];
    populate(&east, &west, &pods);
    let mesh_dir = dir.path().join("mesh");
    std::fs::create_dir_all(mesh_dir.join("clusters/vm")).expect("mesh dir");
    std::fs::create_dir_all(mesh_dir.join("tokens")).expect("tokens dir");
    for cluster in ["east", "west", "vm"] {
        std::fs::write(
            mesh_dir.join(format!("tokens/{cluster}-gateway.token")),
            format!("{cluster}-gateway-token-9c41"),
        )
        .expect("gateway token");
    }
    std::fs::write(
        mesh_dir.join("mesh.yaml"),
        mesh_yaml(&east.kubeconfig, &west.kubeconfig),
    )
    .expect("mesh.yaml");
    std::fs::write(mesh_dir.join("clusters/vm/workloads.yaml"), VM_CLUSTER).expect("vm");
    std::fs::write(
        mesh_dir.join("tokens/echo-vm-1.token"),
        "vm-echo-token-3b7f",
    )
    .expect("token");
    let run_dir = dir.path().join("run");
    let mut extra = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let c = if p.cluster == "east" { &east } else { &west };
        let token = c.server.issue_service_account_token(
            &p.namespace,
            &p.service_account,
            &p.name,
            &["causeway-ca"],
        );
        let token_file = dir.path().join(format!("{}-{}.token", p.cluster, p.name));
        std::fs::write(&token_file, token).expect("token file");
        let network = if p.cluster == "east" {
            "net-a"
        } else {
            "net-b"
        };
        extra.extend(pod_processes(
            p,
            &token_file,
            network,
            &run_dir,
            PORT_BASE,
            i as u16,
        ));
    }
    let mesh = MeshRun::launch(dir, mesh_dir, PORT_BASE, &["--kube-poll-ms", "200"], &extra);
    World {
        rt,
        east,
        west,
        pods,
        mesh,
    }
}

fn metric(debug: SocketAddr, line_prefix: &str) -> f64 {
    let (_, text) = http_get(debug, "/metrics").expect("metrics");
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn greeter_from_client(w: &World) -> SocketAddr {
    w.mesh
        .outbound("east-client-0-sidecar", "demo/greeter")
        .expect("client sidecar has a listener for demo/greeter")
}

fn cross_network_call_with_identity(w: &World) {
    let greeter = greeter_from_client(w);
    let answer = wait_for(Duration::from_secs(30), || call(greeter).ok())
        .unwrap_or_else(|| panic!("greeter never answered:\n{}", w.mesh.log("control-plane")));
    assert_eq!(answer["cluster"], "west", "{answer}");
    assert_eq!(answer["workload"], "greeter-west-0", "{answer}");
    assert_eq!(answer["caller"], CLIENT_ID, "{answer}");
}

fn certificates_through_token_review(w: &World) {
    let debug = w.mesh.debug;
    for cluster in ["east", "west"] {
        let issued = metric(
            debug,
            &format!("causeway_ca_issued_total{{cluster=\"{cluster}\"}}"),
        );
        assert!(
            issued >= 2.0,
            "cluster {cluster}: {issued} certificates issued through TokenReview"
        );
    }
    // A token of west presented by an agent claiming east: reviewed by east only, refused.
    let before = metric(
        debug,
        "causeway_ca_rejections_total{reason=\"bad_credential\"}",
    );
    let token = w.west.server.issue_service_account_token(
        "demo",
        "greeter",
        "greeter-west-0",
        &["causeway-ca"],
    );
    let token_file = w.mesh.dir.path().join("foreign.token");
    std::fs::write(&token_file, token).expect("token");
    let run_dir = w.mesh.dir.path().join("run");
    let log = w.mesh.dir.path().join("foreign-agent.log");
    let agent = Process::start(
        &[
            "agent",
            "--ca",
            &format!("127.0.0.1:{}", PORT_BASE + 12),
            "--ca-root",
            run_dir
                .join("ca/root/root-cert.pem")
                .to_str()
                .expect("utf-8"),
            "--token-file",
            token_file.to_str().expect("utf-8"),
            "--trust-domain",
            "causeway.local",
            "--namespace",
            "demo",
            "--service-account",
            "greeter",
            "--sds-socket",
            w.mesh
                .dir
                .path()
                .join("foreign.sock")
                .to_str()
                .expect("utf-8"),
            "--cluster",
            "east",
        ],
        &log,
    );
    let refused = wait_for(Duration::from_secs(15), || {
        (metric(
            debug,
            "causeway_ca_rejections_total{reason=\"bad_credential\"}",
        ) > before)
            .then_some(())
    });
    drop(agent);
    assert!(
        refused.is_some(),
        "a west token claimed for east was not refused:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let log = w.mesh.log("control-plane");
    assert!(
        log.contains("ServiceAccount token refused") && log.contains("by TokenReview"),
        "the refusal names TokenReview"
    );
    // A token east's API server does accept, for a pod that does not run there: refused too.
    let ghost =
        w.east
            .server
            .issue_service_account_token("demo", "client", "ghost-0", &["causeway-ca"]);
    std::fs::write(&token_file, ghost).expect("token");
    let before = metric(
        debug,
        "causeway_ca_rejections_total{reason=\"bad_credential\"}",
    );
    let agent = Process::start(
        &[
            "agent",
            "--ca",
            &format!("127.0.0.1:{}", PORT_BASE + 12),
            "--ca-root",
            run_dir
                .join("ca/root/root-cert.pem")
                .to_str()
                .expect("utf-8"),
            "--token-file",
            token_file.to_str().expect("utf-8"),
            "--trust-domain",
            "causeway.local",
            "--namespace",
            "demo",
            "--service-account",
            "client",
            "--sds-socket",
            w.mesh
                .dir
                .path()
                .join("ghost.sock")
                .to_str()
                .expect("utf-8"),
            "--cluster",
            "east",
        ],
        &w.mesh.dir.path().join("ghost-agent.log"),
    );
    let refused = wait_for(Duration::from_secs(15), || {
        (metric(
            debug,
            "causeway_ca_rejections_total{reason=\"bad_credential\"}",
        ) > before)
            .then_some(())
    });
    drop(agent);
    assert!(
        refused.is_some(),
        "a token of a pod that does not run in east was not refused"
    );
    assert!(
        w.mesh.log("control-plane").contains(
            "pod demo/ghost-0 with service account client is not running in cluster east"
        ),
        "the refusal says why"
    );
}

fn ports_of(import: &Value) -> Vec<u64> {
    let mut ports: Vec<u64> = import["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    ports.sort_unstable();
    ports
}

fn mcs_write_back(w: &World) {
    let import = wait_for(Duration::from_secs(10), || {
        let i = w.east.server.get_json(
            "multicluster.x-k8s.io/v1beta1",
            "ServiceImport",
            Some("demo"),
            "echo",
        )?;
        (ports_of(&i) == [80, 9090]).then_some(i)
    })
    .unwrap_or_else(|| {
        panic!(
            "east has no ServiceImport demo/echo with ports 80 and 9090: {:?}",
            w.east.server.get_json(
                "multicluster.x-k8s.io/v1beta1",
                "ServiceImport",
                Some("demo"),
                "echo"
            )
        )
    });
    assert_eq!(import["spec"]["type"], "ClusterSetIP");
    assert_eq!(
        import["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "causeway"
    );
    let mut clusters: Vec<String> = import["status"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["cluster"].as_str().map(str::to_owned))
        .collect();
    clusters.sort();
    assert_eq!(clusters, ["east", "vm", "west"], "{import}");
    let greeter = wait_for(Duration::from_secs(10), || {
        w.west.server.get_json(
            "multicluster.x-k8s.io/v1alpha1",
            "ServiceImport",
            Some("demo"),
            "greeter",
        )
    });
    assert!(
        greeter.is_some(),
        "west (MCS v1alpha1) got its ServiceImport in v1alpha1"
    );
    let conflict = wait_for(Duration::from_secs(10), || {
        let e = w.west.server.get_json(
            "multicluster.x-k8s.io/v1alpha1",
            "ServiceExport",
            Some("demo"),
            "inventory",
        )?;
        let c = e["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Conflict")?
            .clone();
        (c["status"] == "True").then_some(c)
    })
    .expect("west's newer, conflicting export of demo/inventory has Conflict=True");
    assert_eq!(conflict["reason"], "PortConflict", "{conflict}");
    let valid = w
        .east
        .server
        .get_json(
            "multicluster.x-k8s.io/v1beta1",
            "ServiceExport",
            Some("demo"),
            "echo",
        )
        .expect("export");
    assert!(
        valid["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Valid" && c["status"] == "True"),
        "{valid}"
    );
}

fn slice_scaled_within_a_second(w: &World) {
    let extra = pod(
        "east",
        "echo-east-1",
        "echo",
        [127, 41, 0, 12],
        "east-node-a",
    );
    w.east.create(extra.object());
    let mut endpoints: Vec<Value> = w
        .pods
        .iter()
        .filter(|p| p.cluster == "east" && p.app == "echo")
        .map(|p| p.endpoint(true))
        .collect();
    endpoints.push(extra.endpoint(true));
    let started = Instant::now();
    w.east.apply(endpoint_slice(
        "demo",
        "echo",
        "echo-east-a",
        8080,
        endpoints,
    ));
    let seen = wait_for(Duration::from_secs(5), || {
        view_addresses(w.mesh.debug, "east", "client-0", "demo/echo")
            .contains(&"127.41.0.12".to_owned())
            .then(|| started.elapsed())
    })
    .expect("the scaled EndpointSlice reached the view");
    assert!(
        seen <= Duration::from_secs(1),
        "EndpointSlice change took {seen:?} to reach the view"
    );
    println!("EndpointSlice change visible in the view after {seen:?}");
}

fn rotation_under_load(w: &World) {
    let greeter = greeter_from_client(w);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match call(greeter) {
                    Ok(v) if v["cluster"] == "west" => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    for cluster in [&w.east, &w.west] {
        let new_token = format!("{}-control-plane-2", cluster.id);
        cluster
            .server
            .add_token(&new_token, causeway_kube_fake::Permissions::All);
        let tmp = cluster.kubeconfig.with_extension("new");
        std::fs::write(&tmp, cluster.server.kubeconfig(&cluster.id, &new_token))
            .expect("kubeconfig");
        std::fs::rename(&tmp, &cluster.kubeconfig).expect("rotate kubeconfig");
    }
    for id in ["east", "west"] {
        let rotated = wait_for(Duration::from_secs(15), || {
            let c = clusters(w.mesh.debug).remove(id)?;
            (c["kubernetes"]["credentialsGeneration"] == 1).then_some(c)
        });
        assert!(
            rotated.is_some(),
            "cluster {id}: new credentials never took over: {:?}",
            clusters(w.mesh.debug).get(id)
        );
    }
    w.east.server.revoke_token(&w.east.token);
    w.west.server.revoke_token(&w.west.token);
    // The revoked tokens are gone for good: later changes still arrive, through the new ones.
    w.east.apply(endpoint_slice(
        "demo",
        "echo",
        "echo-east-a",
        8080,
        w.pods
            .iter()
            .filter(|p| p.cluster == "east" && p.app == "echo")
            .map(|p| p.endpoint(true))
            .collect(),
    ));
    let removed = wait_for(Duration::from_secs(5), || {
        (!view_addresses(w.mesh.debug, "east", "client-0", "demo/echo")
            .contains(&"127.41.0.12".to_owned()))
        .then_some(())
    });
    // Keep the load on a while longer with only the new credentials in use.
    let target = ok.load(Ordering::Relaxed) + 200;
    wait_for(Duration::from_secs(10), || {
        (ok.load(Ordering::Relaxed) >= target).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    assert!(
        removed.is_some(),
        "a change after the old token was revoked did not arrive"
    );
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("rotation under load: {ok} requests answered, {failed} failed");
    assert!(ok > 200, "too little load to tell: {ok} requests");
    assert_eq!(failed, 0, "requests failed during credential rotation");
    let c = clusters(w.mesh.debug);
    assert_eq!(
        c["east"]["kubernetes"]["state"], "synced",
        "{:?}",
        c["east"]
    );
}

fn api_server_stopped_then_back(w: &World) {
    w.rt.block_on(w.west.server.stop());
    let stale = wait_for(Duration::from_secs(10), || {
        let c = clusters(w.mesh.debug).remove("west")?;
        (c["kubernetes"]["state"] == "stale").then_some(c)
    })
    .expect("west marked stale when its API server stopped");
    assert!(stale["kubernetes"]["staleSince"].is_string(), "{stale}");
    assert!(
        stale["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("stale")),
        "{stale}"
    );
    let before = view_addresses(w.mesh.debug, "east", "client-0", "demo/echo");
    assert!(
        before.contains(&"127.42.0.12".to_owned()),
        "west's echo endpoint kept while stale: {before:?}"
    );
    let greeter = greeter_from_client(w);
    for i in 0..20 {
        let answer = call(greeter)
            .unwrap_or_else(|e| panic!("call {i} while west's API server is down: {e}"));
        assert_eq!(answer["cluster"], "west");
    }
    let stale_seconds = wait_for(Duration::from_secs(5), || {
        let s = metric(
            w.mesh.debug,
            "causeway_cluster_stale_seconds{cluster=\"west\"}",
        );
        (s > 0.0).then_some(s)
    });
    assert!(
        stale_seconds.is_some(),
        "causeway_cluster_stale_seconds{{cluster=\"west\"}} stays 0"
    );
    let debug = w.mesh.debug.to_string();
    let out = run(&[
        "proxy-config",
        "endpoints",
        "--control-plane",
        &debug,
        "--cluster",
        "east",
        "--namespace",
        "demo",
        "--workload",
        "client-0",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cluster west is stale for"),
        "proxy-config shows the stale cluster:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(" west ") && l.contains("stale for") && l.contains("demo/echo")),
        "and each of its endpoints says so (REGISTRY column):\n{text}"
    );
    // While it is down, a pod goes away (and the endpoint controller updates the slice).
    w.west
        .server
        .delete("v1", "Pod", Some("demo"), "echo-west-0")
        .expect("delete pod");
    w.west.apply(endpoint_slice(
        "demo",
        "echo",
        "echo-west-a",
        8080,
        Vec::new(),
    ));
    w.rt.block_on(w.west.server.start_again())
        .expect("restart API server");
    let current = wait_for(Duration::from_secs(20), || {
        let c = clusters(w.mesh.debug).remove("west")?;
        let gone = !view_addresses(w.mesh.debug, "east", "client-0", "demo/echo")
            .contains(&"127.42.0.12".to_owned());
        (c["kubernetes"]["state"] == "synced" && gone).then_some(())
    });
    assert!(
        current.is_some(),
        "after reconnecting, west is current and the deleted pod gone: {:?}",
        clusters(w.mesh.debug).get("west")
    );
    let answer = call(greeter).expect("greeter after reconnect");
    assert_eq!(answer["cluster"], "west");
}

#[test]
fn kubernetes_members_end_to_end() {
    let _guard = mesh_lock();
    let w = start_world();
    let c = clusters(w.mesh.debug);
    for id in ["east", "west"] {
        assert_eq!(c[id]["source"], "kubernetes", "{:?}", c[id]);
        assert_eq!(c[id]["kubernetes"]["state"], "synced", "{:?}", c[id]);
    }
    assert_eq!(c["west"]["kubernetes"]["apis"]["mcsVersion"], "v1alpha1");
    assert_eq!(c["east"]["kubernetes"]["apis"]["mcsVersion"], "v1beta1");
    cross_network_call_with_identity(&w);
    certificates_through_token_review(&w);
    mcs_write_back(&w);
    slice_scaled_within_a_second(&w);
    rotation_under_load(&w);
    api_server_stopped_then_back(&w);
}
