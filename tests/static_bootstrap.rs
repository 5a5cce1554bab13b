//! A static bootstrap written by `causeway_xds::bootstrap::static_bootstrap_of` from what the
//! control plane builds for a gateway and for sidecars is one a real Envoy accepts (`envoy
//! --mode validate`, which needs no root and loads the certificate files too) and the Causeway
//! proxy reads: the same `.pb` for both data planes, without control plane or agent.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use causeway_discovery::{MeshIndex, ProxyContext};
use causeway_e2e::mtls::{issued, write_server_files, Pki};
use causeway_e2e::{envoy_bin, workspace};
use causeway_model::{ClusterId, ProxyIdentity, ProxyRole};
use causeway_registry::MeshDirectory;
use causeway_xds::bootstrap::{static_bootstrap_of, CertificateFiles, EnvoyResources};
use causeway_xds::dataplane::read_static_bootstrap;
use causeway_xds::node::{OutboundBlock, ProxyNode};
use causeway_xds::resources::Resources;
use envoy_types::pb::envoy::config::core::v3::Node;
use prost::Message;

fn index() -> MeshIndex {
    let d = MeshDirectory::open(workspace().join("examples/three-clusters"));
    assert!(d.errors().is_empty(), "{:?}", d.errors());
    let objects: Vec<(ClusterId, _)> = d
        .clusters()
        .iter()
        .map(|(n, s)| {
            (
                ClusterId::new(n).expect("id"),
                s.objects.clone().expect("loaded"),
            )
        })
        .collect();
    MeshIndex::build(
        Arc::clone(d.mesh().expect("mesh")),
        objects.iter().map(|(i, o)| (i, &**o)),
    )
}

/// What the control plane builds for `cluster`/`namespace`/`workload` in the example mesh.
fn resources_of(index: &MeshIndex, role: ProxyRole, cluster: &str, workload: &str) -> Resources {
    let namespace = match role {
        ProxyRole::Gateway => "causeway-system",
        ProxyRole::Sidecar => "demo",
    };
    let identity = ProxyIdentity {
        cluster: ClusterId::new(cluster).expect("id"),
        namespace: namespace.into(),
        workload: workload.into(),
        role,
    };
    let ctx = ProxyContext::resolve(index, identity).expect("context");
    match role {
        ProxyRole::Gateway => causeway_xds::build::gateway_resources(index, &ctx),
        ProxyRole::Sidecar => {
            let node = ProxyNode {
                id: workload.into(),
                identity: ctx.identity.clone(),
                app_address: Some("127.1.100.10".parse().expect("ip")),
                outbound: Some(OutboundBlock::parse("127.200.0.0/16").expect("block")),
                network: None,
                data_plane: Default::default(),
            };
            causeway_xds::build::sidecar_resources(index, &node, &ctx)
        }
    }
}

/// Writes `dir/<name>.pb` for `r`, the certificate files in `dir` (a real mesh credential).
fn write_bootstrap(dir: &Path, name: &str, r: &Resources) -> std::path::PathBuf {
    let files = CertificateFiles {
        certificate_chain: dir.join("server-chain.pem"),
        private_key: dir.join("server-key.pem"),
        trusted_ca: dir.join("root-cert.pem"),
    };
    let node = Node {
        id: name.into(),
        cluster: "static".into(),
        ..Default::default()
    };
    let r = EnvoyResources::decode(r).expect("decode");
    let admin = "127.0.0.1:0".parse().expect("addr");
    let b = static_bootstrap_of(&r, node, admin, &files).expect("static bootstrap");
    let path = dir.join(format!("{name}.pb"));
    std::fs::write(&path, b.encode_to_vec()).expect("write");
    path
}

fn validate(path: &Path) -> Output {
    std::process::Command::new(envoy_bin())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(path)
        .output()
        .expect("run envoy")
}

fn credentials(dir: &Path) {
    let pki = Pki::generate(dir);
    let (_, ca) = pki.cluster("alpha");
    write_server_files(dir, &issued(&ca, "client"), pki.bundle_pem());
}

#[test]
fn envoy_and_the_causeway_proxy_accept_the_same_static_bootstraps() {
    let dir = tempfile::tempdir().expect("tempdir");
    credentials(dir.path());
    let index = index();
    let proxies = [
        ("gateway-gamma", ProxyRole::Gateway, "gamma", "eastwest-0"),
        (
            "sidecar-alpha-client",
            ProxyRole::Sidecar,
            "alpha",
            "client",
        ),
        (
            "sidecar-gamma-greeter",
            ProxyRole::Sidecar,
            "gamma",
            "greeter-gamma-1",
        ),
    ];
    for (name, role, cluster, workload) in proxies {
        let path = write_bootstrap(
            dir.path(),
            name,
            &resources_of(&index, role, cluster, workload),
        );
        let out = validate(&path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("OK"),
            "{name}: Envoy refused it: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let b = read_static_bootstrap(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!b.snapshot.listeners.is_empty(), "{name}");
    }
}

/// Validation is not a formality: Envoy loads the certificate files the bootstrap names.
#[test]
fn envoy_refuses_a_static_bootstrap_whose_certificate_file_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    credentials(dir.path());
    let r = resources_of(&index(), ProxyRole::Sidecar, "alpha", "client");
    let path = write_bootstrap(dir.path(), "sidecar", &r);
    std::fs::remove_file(dir.path().join("server-chain.pem")).expect("remove");
    let out = validate(&path);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("server-chain.pem"), "{all}");
    assert!(!all.contains("' OK"), "{all}");
}
