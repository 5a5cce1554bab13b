//! A partitionable mesh (issue 12): three clusters in three network namespaces, the same pod IP
//! (10.244.0.2) for echo in b and in c, only gateways reachable between them over veth pairs. A
//! `FailOver` policy sends a's calls to b first, c second. [`PartitionMesh::cut`] takes b's veth
//! down: b's gateway and everything behind it vanish from a's network, packets dropped without
//! an answer. Used by `tests/partition.rs` and by `bench/failover`'s partition rounds. Needs
//! root and iproute2 (CI runs as root and installs them).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::netns::{curl_in, start_in, Namespaces};
use crate::{envoy_bin, wait_for, Process};

const MESH: &str = "apiVersion: causeway.io/v1alpha1
kind: Mesh
metadata: {name: partition}
spec: {trustDomain: causeway.local}
---
apiVersion: causeway.io/v1alpha1
kind: Cluster
metadata: {name: a}
spec: {network: net-a, locality: r1/z1, gateways: [{address: 172.30.1.1, port: 15443}],
  gatewayIdentity: {serviceAccount: eastwest-gateway, credential: {tokenFile: tokens/gw-a.token}}}
---
apiVersion: causeway.io/v1alpha1
kind: Cluster
metadata: {name: b}
spec: {network: net-b, locality: r2/z1, gateways: [{address: 172.30.1.2, port: 15443}],
  gatewayIdentity: {serviceAccount: eastwest-gateway, credential: {tokenFile: tokens/gw-b.token}}}
---
apiVersion: causeway.io/v1alpha1
kind: Cluster
metadata: {name: c}
spec: {network: net-c, locality: r3/z1, gateways: [{address: 172.30.2.2, port: 15443}],
  gatewayIdentity: {serviceAccount: eastwest-gateway, credential: {tokenFile: tokens/gw-c.token}}}
";

fn policy(extra: &str) -> String {
    format!(
        "apiVersion: causeway.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: echo, namespace: demo}}\nspec:\n  service: echo\n  callers: {{clusters: [a]}}\n  mode: FailOver\n  clusters:\n  - {{name: b}}\n  - {{name: c}}\n{extra}"
    )
}

fn workload(name: &str, app: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  address: {ip}\n  labels: {{app: {app}}}\n  serviceAccount: {app}\n  ports: {{http: 8080}}\n  credential: {{tokenFile: tokens/{name}.token}}\n"
    )
}

const ECHO_SERVICE: &str = "---\napiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo}\nspec:\n  selector: {app: echo}\n  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]\n---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: echo, namespace: demo}\n";

fn write_mesh(mesh: &Path, policy_extra: &str) {
    for d in [
        "clusters/a",
        "clusters/b",
        "clusters/c",
        "tokens",
        "policies",
    ] {
        std::fs::create_dir_all(mesh.join(d)).expect("mkdir");
    }
    // a's gateway is declared (every network needs one) but not run: nothing calls into a.
    for t in ["client", "echo-b", "echo-c", "gw-a", "gw-b", "gw-c"] {
        std::fs::write(
            mesh.join(format!("tokens/{t}.token")),
            format!("token-of-{t}-{}\n", std::process::id()),
        )
        .expect("token");
    }
    std::fs::write(mesh.join("mesh.yaml"), MESH).expect("mesh");
    std::fs::write(mesh.join("policies/echo.yaml"), policy(policy_extra)).expect("policy");
    let files = [
        ("a", workload("client", "client", "10.244.0.3")),
        (
            "b",
            format!("{ECHO_SERVICE}{}", workload("echo-b", "echo", "10.244.0.2")),
        ),
        (
            "c",
            format!("{ECHO_SERVICE}{}", workload("echo-c", "echo", "10.244.0.2")),
        ),
    ];
    for (cluster, text) in files {
        std::fs::write(
            mesh.join(format!("clusters/{cluster}/workloads.yaml")),
            text,
        )
        .expect("workloads");
    }
    let check = crate::run(&["check", mesh.to_str().expect("utf-8")]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// Where the processes of one run find things.
struct Run<'a> {
    dir: &'a Path,
    mesh: &'a Path,
    data_plane: &'a str,
    envoy: String,
}

impl Run<'_> {
    fn path(&self, s: &str) -> String {
        self.dir.join(s).display().to_string()
    }

    /// An agent and its proxy in `ns`: a sidecar (`role` None) or a gateway.
    #[allow(clippy::too_many_arguments)]
    fn proxy(
        &self,
        ns: &str,
        cluster: &str,
        name: &str,
        (namespace, sa, token): (&str, &str, &str),
        (xds, ca): (&str, &str),
        admin: &str,
        sidecar: Option<(&str, &str)>,
    ) -> Vec<Process> {
        let sock = self.path(&format!("{cluster}-{name}.sock"));
        let token = self.mesh.join(token).display().to_string();
        let root = self.path("ca/root/root-cert.pem");
        let log = |s: &str| self.dir.join(format!("{cluster}-{name}-{s}.log"));
        let agent = start_in(
            ns,
            &[
                "agent",
                "--ca",
                ca,
                "--ca-root",
                &root,
                "--token-file",
                &token,
                "--namespace",
                namespace,
                "--service-account",
                sa,
                "--sds-socket",
                &sock,
                "--cluster",
                cluster,
            ],
            &log("agent"),
        );
        let run_dir = self.path("envoy");
        let mut args = vec![
            "proxy",
            "--cluster",
            cluster,
            "--namespace",
            namespace,
            "--workload",
            name,
            "--xds",
            xds,
            "--sds-socket",
            &sock,
            "--admin",
            admin,
            "--run-dir",
            &run_dir,
            "--envoy",
            &self.envoy,
            "--data-plane",
            self.data_plane,
        ];
        match sidecar {
            Some((cidr, app)) => args.extend(["--outbound-cidr", cidr, "--app-address", app]),
            None => args.extend(["--role", "gateway"]),
        }
        vec![agent, start_in(ns, &args, &log("proxy"))]
    }

    /// Cluster `cluster` in `ns`: its gateway, echo's sidecar and the echo app; xDS and CA
    /// through a's end of the veth, `veth_a`.
    fn member(&self, ns: &str, cluster: &str, veth_a: &str) -> Vec<Process> {
        let (xds, ca) = (format!("{veth_a}:15011"), format!("{veth_a}:15012"));
        let gw_token = format!("tokens/gw-{cluster}.token");
        let mut procs = self.proxy(
            ns,
            cluster,
            "gw",
            ("causeway-system", "eastwest-gateway", &gw_token),
            (&xds, &ca),
            "127.0.0.1:15100",
            None,
        );
        let echo = format!("echo-{cluster}");
        let echo_token = format!("tokens/{echo}.token");
        procs.extend(self.proxy(
            ns,
            cluster,
            &echo,
            ("demo", "echo", &echo_token),
            (&xds, &ca),
            "127.0.0.1:15101",
            Some(("127.200.0.0/16", "127.0.0.1")),
        ));
        procs.push(start_in(
            ns,
            &[
                "echo",
                "--listen",
                "127.0.0.1:8080",
                "--cluster",
                cluster,
                "--workload",
                &echo,
            ],
            &self.dir.join(format!("{cluster}-app.log")),
        ));
        procs
    }
}

/// The running partition mesh; everything stops and the namespaces go on drop.
pub struct PartitionMesh {
    /// Declared first: fields drop in order, so processes stop before their namespaces go.
    _procs: Vec<Process>,
    ns: Namespaces,
    /// The caller's namespace (cluster a): load must run inside it ([`crate::netns::enter`]).
    pub caller_ns: String,
    b_ns: String,
    /// The client sidecar's outbound listener for demo/echo, inside `caller_ns`.
    pub echo: SocketAddr,
    _dir: tempfile::TempDir,
}

impl PartitionMesh {
    /// Creates the namespaces and veths, writes and checks the mesh (the policy with
    /// `policy_extra` appended to its spec), starts every process on `data_plane` and waits until
    /// all five proxies are in sync. `tag` keeps namespace names apart between runs.
    pub fn start(data_plane: &str, policy_extra: &str, tag: &str) -> Self {
        let pid = std::process::id();
        let [a, b, c] = ["a", "b", "c"].map(|n| format!("cwp{n}{pid}{tag}"));
        let ns = Namespaces::create(&[&a, &b, &c]);
        ns.veth((&a, "pab0", "172.30.1.1/30"), (&b, "pba0", "172.30.1.2/30"));
        ns.veth((&a, "pac0", "172.30.2.1/30"), (&c, "pca0", "172.30.2.2/30"));
        ns.loopback_address(&a, "10.244.0.3/32");
        ns.loopback_address(&b, "10.244.0.2/32");
        ns.loopback_address(&c, "10.244.0.2/32");

        let dir = tempfile::tempdir().expect("tmp");
        let mesh = dir.path().join("mesh");
        write_mesh(&mesh, policy_extra);
        let run = Run {
            dir: dir.path(),
            mesh: &mesh,
            data_plane,
            envoy: envoy_bin().display().to_string(),
        };
        let mut procs = vec![control_plane(&a, &mesh, dir.path())];
        for (n, cluster, veth_a) in [(&b, "b", "172.30.1.1"), (&c, "c", "172.30.2.1")] {
            procs.extend(run.member(n, cluster, veth_a));
        }
        procs.extend(run.proxy(
            &a,
            "a",
            "client",
            ("demo", "client", "tokens/client.token"),
            ("127.0.0.1:15011", "127.0.0.1:15012"),
            "127.0.0.1:15102",
            Some(("127.201.0.0/16", "127.0.0.2")),
        ));
        let synced = wait_for(Duration::from_secs(60), || {
            let v: serde_json::Value =
                serde_json::from_str(&curl_in(&a, "http://127.0.0.1:15010/debug/proxies")?).ok()?;
            let p = v["proxies"].as_array()?;
            (p.len() == 5 && p.iter().all(|x| x["inSync"] == true)).then_some(())
        });
        assert!(synced.is_some(), "proxies across namespaces did not sync");
        let echo = echo_listener(&a);
        Self {
            _procs: procs,
            ns,
            caller_ns: a,
            b_ns: b,
            echo,
            _dir: dir,
        }
    }

    /// Waits until `cluster` has answered every call for a second in a row (health checks
    /// settled), at most a minute.
    pub fn wait_steady(&self, cluster: &str) {
        let start = Instant::now();
        let mut steady: Option<Instant> = None;
        while steady.is_none_or(|t| t.elapsed() < Duration::from_secs(1)) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{cluster} never answered steadily"
            );
            let body = curl_in(&self.caller_ns, &format!("http://{}/", self.echo));
            let answered = body
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v["cluster"] == cluster);
            steady = if answered {
                steady.or(Some(Instant::now()))
            } else {
                None
            };
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The partition: b's veth goes down.
    pub fn cut(&self) {
        self.ns.link(&self.b_ns, "pba0", false);
    }

    /// What the control plane's view of a's client says against each gateway of demo/echo:
    /// the cluster of the gateway, and why it is marked unhealthy (its probes), if it is.
    pub fn gateway_health(&self) -> Vec<(String, Option<String>)> {
        let url = "http://127.0.0.1:15010/debug/view?cluster=a&namespace=demo&workload=client&service=demo/echo";
        let Some(view) = curl_in(&self.caller_ns, url)
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        else {
            return Vec::new();
        };
        let endpoints = view["services"][0]["ports"][0]["endpoints"].as_array();
        endpoints
            .into_iter()
            .flatten()
            .filter(|e| e["kind"] == "gateway")
            .map(|e| {
                let cluster = e["cluster"].as_str().unwrap_or_default().to_owned();
                (cluster, e["unhealthy"].as_str().map(str::to_owned))
            })
            .collect()
    }
}

/// The control plane, in a's namespace: debug API on its loopback, xDS and CA on every address
/// (the members reach it over their veths).
fn control_plane(ns: &str, mesh: &Path, dir: &Path) -> Process {
    let mesh_s = mesh.display().to_string();
    let ca_dir = dir.join("ca").display().to_string();
    let p = start_in(
        ns,
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
        &dir.join("control-plane.log"),
    );
    let up = wait_for(Duration::from_secs(20), || {
        curl_in(ns, "http://127.0.0.1:15010/healthz")
    });
    assert!(up.is_some(), "control plane in {ns} never came up");
    p
}

/// The client sidecar's outbound listener for demo/echo, from its admin `/listeners`.
fn echo_listener(ns: &str) -> SocketAddr {
    let listeners = curl_in(ns, "http://127.0.0.1:15102/listeners").expect("listeners");
    listeners
        .lines()
        .find_map(|l| {
            l.split("::")
                .next()?
                .strip_prefix("outbound|")?
                .strip_suffix("|demo/echo")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no echo listener: {listeners}"))
        .parse()
        .expect("address")
}
