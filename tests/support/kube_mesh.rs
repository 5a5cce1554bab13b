//! A mesh whose members include Kubernetes clusters served by fake API servers: the objects a
//! real cluster would hold (Nodes, Pods, Services, EndpointSlices, ServiceExports), and for
//! every pod the processes a real pod would run (app, certificate agent with a projected
//! ServiceAccount token, Envoy sidecar).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use causeway_kube_fake::{FakeApiServer, ServerOptions};
use serde_json::{json, Value};

/// One fake Kubernetes cluster.
pub struct FakeCluster {
    /// Cluster id in mesh.yaml.
    pub id: String,
    /// Its API server.
    pub server: FakeApiServer,
    /// The control plane's token.
    pub token: String,
    /// The kubeconfig file the mesh names.
    pub kubeconfig: PathBuf,
}

impl FakeCluster {
    /// Starts a fake API server for `id`, with a control-plane token, and writes its kubeconfig
    /// to `dir/<id>.kubeconfig`.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        id: &str,
        dir: &Path,
        options: ServerOptions,
    ) -> Self {
        let server = rt
            .block_on(FakeApiServer::start(options))
            .expect("fake API server");
        let token = format!("{id}-control-plane-1");
        server.add_token(&token, causeway_kube_fake::Permissions::All);
        let kubeconfig = dir.join(format!("{id}.kubeconfig"));
        std::fs::write(&kubeconfig, server.kubeconfig(id, &token)).expect("kubeconfig");
        Self {
            id: id.to_owned(),
            server,
            token,
            kubeconfig,
        }
    }

    /// Creates an object given as JSON (apiVersion and kind included).
    pub fn create(&self, obj: Value) -> Value {
        self.server
            .create_json(obj.clone())
            .unwrap_or_else(|e| panic!("cluster {}: create {obj}: {e}", self.id))
    }

    /// Creates or replaces an object given as JSON.
    pub fn apply(&self, obj: Value) -> Value {
        self.server
            .apply_json(obj.clone())
            .unwrap_or_else(|e| panic!("cluster {}: apply {obj}: {e}", self.id))
    }
}

/// A pod of a fake cluster.
#[derive(Debug, Clone)]
pub struct FakePod {
    /// Cluster id.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// `app` label.
    pub app: String,
    /// ServiceAccount.
    pub service_account: String,
    /// Pod IP (127.x.y.z with y < 156).
    pub ip: Ipv4Addr,
    /// Node it runs on.
    pub node: String,
    /// The container port named `http`.
    pub port: u16,
}

impl FakePod {
    /// The Pod object, Running and Ready.
    pub fn object(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": {"app": self.app}},
            "spec": {
                "serviceAccountName": self.service_account,
                "nodeName": self.node,
                "containers": [{"name": "app", "image": "causeway-echo", "ports": [{"name": "http", "containerPort": self.port}]}],
            },
            "status": {"phase": "Running", "podIP": self.ip.to_string(), "conditions": [{"type": "Ready", "status": "True"}]},
        })
    }

    /// Its endpoint in an EndpointSlice.
    pub fn endpoint(&self, ready: bool) -> Value {
        json!({
            "addresses": [self.ip.to_string()],
            "conditions": {"ready": ready, "serving": ready, "terminating": false},
            "nodeName": self.node,
            "targetRef": {"kind": "Pod", "name": self.name, "namespace": self.namespace},
        })
    }

    /// Where its app listens behind the sidecar (the demo's mapping: 127.x.y.z → 127.x.(y+100).z).
    pub fn app_address(&self) -> Ipv4Addr {
        let [a, b, c, d] = self.ip.octets();
        Ipv4Addr::new(a, b, c + 100, d)
    }
}

/// A Node with topology labels.
pub fn node(name: &str, region: &str, zone: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/region": region, "topology.kubernetes.io/zone": zone}},
    })
}

/// A Service with HTTP ports `(name, port, targetPort, appProtocol)`.
pub fn service(namespace: &str, name: &str, ports: &[(&str, u16, u16, &str)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, t, a)| json!({"name": n, "port": p, "targetPort": t, "protocol": "TCP", "appProtocol": a}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": ports},
    })
}

/// An EndpointSlice of `service` with `endpoints` on port `http`/`port`.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    slice: &str,
    port: u16,
    endpoints: Vec<Value>,
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": slice, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// A ServiceExport in `api_version` created at `created` (RFC 3339).
pub fn service_export(api_version: &str, namespace: &str, name: &str, created: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": "ServiceExport",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
    })
}

/// The processes of one pod (app, agent with a projected token, sidecar), in the plan's JSON
/// form for [`crate::MeshRun::launch`]. `index` picks its admin port and outbound block.
pub fn pod_processes(
    pod: &FakePod,
    token_file: &Path,
    network: &str,
    plan_run_dir: &Path,
    port_base: u16,
    index: u16,
) -> Vec<Value> {
    let id = format!("{}-{}", pod.cluster, pod.name);
    let xds = SocketAddr::from(([127, 0, 0, 1], port_base + 11));
    let ca = SocketAddr::from(([127, 0, 0, 1], port_base + 12));
    let admin = SocketAddr::from(([127, 0, 0, 1], port_base + 300 + index));
    let sds = plan_run_dir.join("sds").join(format!("{id}.sock"));
    let app = SocketAddr::new(pod.app_address().into(), pod.port);
    let envoy = crate::envoy_bin();
    let s = |p: &Path| p.display().to_string();
    vec![
        json!({"name": format!("{id}-app"), "kind": "app", "args": [
            "echo", "--listen", app.to_string(), "--cluster", pod.cluster, "--workload", pod.name]}),
        json!({"name": format!("{id}-agent"), "kind": "agent", "args": [
            "agent", "--ca", ca.to_string(), "--ca-root", s(&plan_run_dir.join("ca/root/root-cert.pem")),
            "--token-file", s(token_file), "--trust-domain", "causeway.local",
            "--namespace", pod.namespace, "--service-account", pod.service_account,
            "--sds-socket", s(&sds), "--cluster", pod.cluster]}),
        json!({"name": format!("{id}-sidecar"), "kind": "sidecar", "admin": admin.to_string(), "args": [
            "proxy", "--cluster", pod.cluster, "--namespace", pod.namespace, "--workload", pod.name,
            "--sds-socket", s(&sds), "--app-address", pod.app_address().to_string(),
            "--outbound-cidr", format!("127.{}.0.0/16", 230 + index), "--network", network,
            "--xds", xds.to_string(), "--admin", admin.to_string(),
            "--run-dir", s(&plan_run_dir.join("envoy")), "--envoy", s(&envoy)]}),
    ]
}

/// `/debug/clusters` as a map by cluster id.
pub fn clusters(debug: SocketAddr) -> BTreeMap<String, Value> {
    crate::get_json(debug, "/debug/clusters")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["id"].as_str()?.to_owned(), c.clone())))
        .collect()
}

/// The `direct`/`gateway`/`remote` endpoint addresses a proxy's view has for a service.
pub fn view_addresses(
    debug: SocketAddr,
    cluster: &str,
    workload: &str,
    service: &str,
) -> Vec<String> {
    let v = crate::get_json(
        debug,
        &format!(
            "/debug/view?cluster={cluster}&namespace=demo&workload={workload}&service={service}"
        ),
    );
    let mut out: Vec<String> = Vec::new();
    collect_addresses(&v, &mut out);
    out.sort();
    out
}

fn collect_addresses(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let (Some(Value::String(kind)), Some(Value::String(addr))) =
                (map.get("kind"), map.get("address"))
            {
                if kind != "hidden" {
                    out.push(addr.clone());
                }
            }
            for child in map.values() {
                collect_addresses(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_addresses(i, out)),
        _ => {}
    }
}
