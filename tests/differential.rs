//! Differential end-to-end: one control plane, the example mesh (three clusters, two
//! networks), every hop run by Envoy or by Causeway's own data plane — all-Envoy, all-Causeway,
//! and mixed meshes (Envoy sidecars through Causeway gateways, Causeway sidecars through Envoy
//! gateways, a Causeway client calling Envoy servers and the reverse). The same requests must
//! give what all-Envoy gives: the answering cluster and workload, the caller identity the
//! server saw, the authorization decisions, the refusal of an unexported service behind a
//! crafted SNI, and the failover when the local endpoint stops.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use causeway_e2e::mesh_client::{mesh_cert, tls_through};
use causeway_e2e::*;

const CLIENT: &str = "alpha-client-sidecar";
const GAMMA_GATEWAY: &str = "127.3.255.1:15443";

/// greeter (gamma) accepts only the client, and only from cluster alpha.
const POLICY: &str = "apiVersion: causeway.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: greeter-callers, namespace: demo}
spec:
  selector: {app: greeter}
  action: ALLOW
  rules:
  - from:
    - principals: [spiffe://causeway.local/ns/demo/sa/client]
      clusters: [alpha]
";

/// What a mesh did with the same requests.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    /// client -> echo, ten calls: who answered (cluster/workload), deduplicated.
    local: Vec<String>,
    /// client -> greeter (the other network): who answered and the caller it saw.
    cross_network: (String, String),
    /// beta's echo -> greeter: the status (the policy refuses it).
    denied: String,
    /// A mesh certificate of the client straight at gamma's gateway: greeter's SNI answers
    /// (by whom), the unexported ledger's SNI does not.
    crafted_sni: (String, bool),
    /// client -> echo once alpha's echo sidecar is gone: who answers.
    failover: String,
}

fn answered(v: &serde_json::Value) -> String {
    format!(
        "{}/{}",
        v["cluster"].as_str().unwrap_or("?"),
        v["workload"].as_str().unwrap_or("?")
    )
}

/// The body of an HTTP answer (after the head).
fn body_of(raw: &str) -> serde_json::Value {
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// Which proxies of the plan run Causeway's data plane (their admin's config dump says so).
fn causeway_proxies(mesh: &MeshRun) -> Vec<String> {
    let mut out = Vec::new();
    for p in mesh.plan["processes"].as_array().into_iter().flatten() {
        if p["kind"] != "gateway" && p["kind"] != "sidecar" {
            continue;
        }
        let name = p["name"].as_str().unwrap_or_default();
        let dump = get_json(mesh.admin(name), "/config_dump");
        if dump["dataPlane"] == "causeway" {
            out.push(name.to_owned());
        }
    }
    out
}

/// Runs the mesh with `demo_args`, `causeway` naming proxies switched to Causeway's data plane
/// and `envoy` proxies switched back to Envoy, and observes it.
fn observe(
    port_base: u16,
    demo_args: &[&str],
    causeway: &[&str],
    envoy: &[&str],
) -> (Vec<String>, Observed) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh_dir = dir.path().join("mesh");
    copy_dir(&workspace().join("examples/three-clusters"), &mesh_dir);
    std::fs::write(mesh_dir.join("clusters/gamma/policy.yaml"), POLICY).expect("policy");
    let mut mesh = MeshRun::launch_edited(dir, mesh_dir, port_base, &[], demo_args, |plan| {
        for p in causeway {
            set_data_plane(plan, p, "causeway");
        }
        for p in envoy {
            set_data_plane(plan, p, "envoy");
        }
    });
    mesh.warm_up();
    let on_causeway = causeway_proxies(&mesh);
    let echo = mesh.outbound(CLIENT, "demo/echo").expect("echo listener");
    let mut local: Vec<String> = (0..10)
        .map(|_| call(echo).map(|v| answered(&v)).unwrap_or_else(|e| e))
        .collect();
    local.sort();
    local.dedup();

    let greeter = mesh
        .outbound(CLIENT, "demo/greeter")
        .expect("greeter listener");
    let g = call(greeter).expect("greeter answers the client");
    let cross_network = (answered(&g), g["caller"].as_str().unwrap_or("-").to_owned());

    let from_echo = mesh
        .outbound("beta-echo-beta-1-sidecar", "demo/greeter")
        .expect("listener");
    let denied = match call(from_echo) {
        Ok(v) => format!("200 from {}", answered(&v)),
        Err(e) => e.split(':').next().unwrap_or_default().to_owned(),
    };

    causeway_trust::install_crypto_provider();
    let cert = mesh_cert(&mesh, "alpha", "client");
    let gw: SocketAddr = GAMMA_GATEWAY.parse().expect("addr");
    let via_gateway = tls_through(gw, "outbound_.80_._.greeter.demo.svc.cluster.local", &cert)
        .map(|raw| answered(&body_of(&raw)))
        .unwrap_or_else(|e| format!("refused: {e}"));
    let ledger = tls_through(gw, "outbound_.80_._.ledger.demo.svc.cluster.local", &cert);
    let crafted_sni = (via_gateway, ledger.is_err());

    mesh.stop("alpha-echo-alpha-1-sidecar");
    let started = Instant::now();
    let failover = wait_for(Duration::from_secs(20), || {
        call(echo)
            .ok()
            .map(|v| answered(&v))
            .filter(|a| !a.starts_with("alpha/"))
    })
    .unwrap_or_else(|| "no failover".to_owned());
    eprintln!("failover after {:?}", started.elapsed());
    let observed = Observed {
        local,
        cross_network,
        denied,
        crafted_sni,
        failover,
    };
    (on_causeway, observed)
}

fn expected() -> Observed {
    Observed {
        local: vec!["alpha/echo-alpha-1".into()],
        cross_network: (
            "gamma/greeter-gamma-1".into(),
            "spiffe://causeway.local/ns/demo/sa/client".into(),
        ),
        denied: "403".into(),
        crafted_sni: ("gamma/greeter-gamma-1".into(), true),
        failover: "beta/echo-beta-1".into(),
    }
}

const SIDECARS: usize = 8;
const GATEWAYS: usize = 3;

#[test]
fn every_mix_of_data_planes_behaves_like_envoy() {
    let _guard = mesh_lock();
    let (none, envoy) = observe(18000, &["--data-plane", "envoy"], &[], &[]);
    assert_eq!(none, Vec::<String>::new(), "the reference runs Envoy only");
    assert_eq!(envoy, expected(), "the reference (all Envoy)");
    // (name, demo flags, proxies switched to Causeway, to Envoy, how many run Causeway)
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str], usize);
    let cases: [Case; 5] = [
        (
            "all Causeway",
            &["--data-plane", "causeway"],
            &[],
            &[],
            SIDECARS + GATEWAYS,
        ),
        (
            "Envoy sidecars, Causeway gateways",
            &["--data-plane", "envoy", "--gateway-data-plane", "causeway"],
            &[],
            &[],
            GATEWAYS,
        ),
        (
            "Causeway sidecars, Envoy gateways",
            &["--data-plane", "causeway", "--gateway-data-plane", "envoy"],
            &[],
            &[],
            SIDECARS,
        ),
        (
            "Causeway client, Envoy servers and gateways",
            &["--data-plane", "envoy"],
            &[CLIENT],
            &[],
            1,
        ),
        (
            "Envoy client, Causeway servers and gateways",
            &["--data-plane", "causeway"],
            &[],
            &[CLIENT],
            SIDECARS + GATEWAYS - 1,
        ),
    ];
    for (i, (name, args, causeway, envoy_procs, expect)) in cases.into_iter().enumerate() {
        // Below the ephemeral port range (32768-60999), so no client socket can take a port first.
        let (on_causeway, got) = observe(18300 + 300 * i as u16, args, causeway, envoy_procs);
        assert_eq!(on_causeway.len(), expect, "{name}: {on_causeway:?}");
        assert_eq!(
            on_causeway.contains(&CLIENT.to_owned()),
            !causeway.is_empty() || (envoy_procs.is_empty() && expect > GATEWAYS),
            "{name}: {on_causeway:?}"
        );
        assert_eq!(got, envoy, "{name} differs from all-Envoy");
    }
}
