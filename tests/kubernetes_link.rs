//! `causeway link` against a fake Kubernetes API server (the real REST API over HTTPS):
//! credentials with every required permission get an entry that loads, and a second link
//! updates it in place; a missing permission is named and nothing is written; an unreachable,
//! hanging or credential-refusing API server is a clear error and mesh.yaml stays as it was.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use causeway_e2e::{causeway_bin, install_crypto_provider};
use causeway_kube::rbac::REQUIRED_ACCESS;
use causeway_kube_fake::{FakeApiServer, Fault, McsVersion, Permissions, Rule, ServerOptions};
use causeway_model::{ClusterId, KubernetesSource};

const MESH: &str = "\
# A mesh with one mesh-directory cluster; Kubernetes clusters are linked into it.
apiVersion: causeway.io/v1alpha1
kind: Mesh
metadata:
  name: link-test
spec:
  trustDomain: causeway.local   # keep this comment
  networks: [net-a, net-b]
---
# vm: hosts, described in clusters/vm/
apiVersion: causeway.io/v1alpha1
kind: Cluster
metadata:
  name: vm
spec:
  network: net-a
  locality: us-east/us-east-1b
  gateways:
  - address: 127.43.255.1   # the VM gateway
    port: 15443
";

struct Setup {
    rt: tokio::runtime::Runtime,
    server: FakeApiServer,
    dir: tempfile::TempDir,
}

impl Setup {
    /// A fake API server and a mesh directory holding [`MESH`].
    fn new(options: ServerOptions) -> Self {
        install_crypto_provider();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt
            .block_on(FakeApiServer::start(options))
            .expect("fake API server");
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("mesh/kubeconfigs")).expect("mkdir");
        std::fs::write(dir.path().join("mesh/mesh.yaml"), MESH).expect("mesh.yaml");
        Self { rt, server, dir }
    }

    fn mesh_dir(&self) -> PathBuf {
        self.dir.path().join("mesh")
    }

    fn mesh_yaml(&self) -> String {
        std::fs::read_to_string(self.mesh_dir().join("mesh.yaml")).expect("read mesh.yaml")
    }

    /// Writes a kubeconfig for `token` (context `context`) to `mesh/kubeconfigs/<name>.yaml`;
    /// returns its path relative to the scratch directory.
    fn kubeconfig(&self, name: &str, context: &str, token: &str) -> PathBuf {
        let rel = PathBuf::from(format!("mesh/kubeconfigs/{name}.yaml"));
        let path = self.dir.path().join(&rel);
        std::fs::write(&path, self.server.kubeconfig(context, token)).expect("kubeconfig");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        rel
    }

    /// Runs `causeway link ARGS --mesh-dir mesh` in the scratch directory.
    fn link(&self, args: &[&str]) -> Output {
        Command::new(causeway_bin())
            .current_dir(self.dir.path())
            .arg("link")
            .args(args)
            .args(["--mesh-dir", "mesh"])
            .output()
            .expect("run causeway link")
    }
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn assert_failed(out: &Output) -> String {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        !out.status.success(),
        "link should have failed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stderr
}

fn load(mesh_dir: &Path) -> causeway_model::MeshConfig {
    causeway_registry::load_mesh_file(mesh_dir)
        .unwrap_or_else(|e| panic!("mesh.yaml does not load: {e:?}"))
}

/// What `deploy/kubernetes/clusterrole.yaml` grants (`REQUIRED_ACCESS`, which a unit test keeps
/// equal to it), and nothing more.
fn exactly_the_required_access() -> Permissions {
    required_access_except("", "")
}

/// What `deploy/kubernetes/clusterrole.yaml` grants, except `verb` on `resource`.
fn required_access_except(verb: &str, resource: &str) -> Permissions {
    let rules = REQUIRED_ACCESS
        .iter()
        .filter(|r| !(r.verb == verb && r.resource == resource && r.subresource.is_none()))
        .map(|r| {
            let resource = match r.subresource {
                Some(sub) => format!("{}/{sub}", r.resource),
                None => r.resource.to_owned(),
            };
            Rule::new(&[r.verb], &[r.group], &[resource.as_str()])
        })
        .collect();
    Permissions::Rules(rules)
}

#[test]
fn full_permissions_add_an_entry_that_loads_and_a_second_link_updates_it() {
    let s = Setup::new(ServerOptions::default());
    s.server.add_token("east-cp", exactly_the_required_access());
    let kubeconfig = s.kubeconfig("east", "east-ctx", "east-cp");
    let kubeconfig = kubeconfig.to_str().expect("utf-8");
    s.server.reset_requests();

    let out = s.link(&[
        "--name",
        "east",
        "--network",
        "net-b",
        "--locality",
        "eu-west/eu-west-1a",
        "--kubeconfig",
        kubeconfig,
        "--gateway",
        "127.41.255.1:15443",
        "--stale-endpoint-ttl",
        "5m",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("API server {} answers", s.server.url())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("all {} permissions", REQUIRED_ACCESS.len())),
        "{stdout}"
    );
    assert!(stdout.contains("multicluster.x-k8s.io/v1beta1"), "{stdout}");
    assert!(stdout.contains("added Cluster east"), "{stdout}");
    assert_eq!(
        s.server.request_count("create", "selfsubjectaccessreviews"),
        REQUIRED_ACCESS.len() as u64,
        "one review per required permission"
    );

    let written = s.mesh_yaml();
    assert!(
        written.starts_with(MESH),
        "the existing documents are kept byte for byte:\n{written}"
    );
    let mesh = load(&s.mesh_dir());
    let ids: Vec<&str> = mesh.clusters.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["vm", "east"]);
    let east = mesh
        .cluster(&ClusterId::new("east").expect("id"))
        .expect("east");
    assert_eq!(east.network.as_str(), "net-b");
    assert_eq!(east.locality.to_string(), "eu-west/eu-west-1a");
    assert_eq!(east.gateways.len(), 1);
    assert_eq!(east.gateways[0].to_string(), "127.41.255.1:15443");
    assert_eq!(
        east.kubernetes,
        Some(KubernetesSource {
            // Given relative to the current directory, inside the mesh directory: stored
            // relative to it, as the control plane resolves it.
            kubeconfig: PathBuf::from("kubeconfigs/east.yaml"),
            context: None,
        })
    );
    assert_eq!(east.stale_endpoint_ttl, Some(Duration::from_secs(300)));

    // Linking again with new credentials and a context, without --locality or --gateway:
    // the entry is updated in place, locality, gateways and TTL are kept.
    s.server.add_token("east-cp-2", Permissions::All);
    let rotated = s.kubeconfig("east-2", "east-ctx", "east-cp-2");
    let rotated_abs = s.dir.path().join(rotated);
    let out = s.link(&[
        "--name",
        "east",
        "--network",
        "net-b",
        "--context",
        "east-ctx",
        "--kubeconfig",
        rotated_abs.to_str().expect("utf-8"),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("updated Cluster east"), "{stdout}");
    let updated = s.mesh_yaml();
    assert!(updated.starts_with(MESH), "{updated}");
    assert_eq!(updated.matches("kind: Cluster").count(), 2, "{updated}");
    let mesh = load(&s.mesh_dir());
    let east = mesh
        .cluster(&ClusterId::new("east").expect("id"))
        .expect("east");
    assert_eq!(
        east.kubernetes,
        Some(KubernetesSource {
            kubeconfig: rotated_abs,
            context: Some("east-ctx".into()),
        }),
        "an absolute path is stored as given"
    );
    assert_eq!(east.locality.to_string(), "eu-west/eu-west-1a");
    assert_eq!(east.gateways.len(), 1);
    assert_eq!(east.stale_endpoint_ttl, Some(Duration::from_secs(300)));
}

#[test]
fn a_missing_permission_is_named_and_nothing_is_written() {
    let s = Setup::new(ServerOptions::default());
    s.server
        .add_token("no-watch-pods", required_access_except("watch", "pods"));
    let kubeconfig = s.kubeconfig("east", "east", "no-watch-pods");
    let out = s.link(&[
        "--name",
        "east",
        "--network",
        "net-a",
        "--locality",
        "us-east/us-east-1a",
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
    ]);
    let stderr = assert_failed(&out);
    assert!(stderr.contains("lack 1 of the"), "{stderr}");
    assert!(stderr.contains("missing: watch pods ("), "{stderr}");
    assert_eq!(
        stderr.matches("missing:").count(),
        1,
        "only watch pods is missing: {stderr}"
    );
    assert!(
        stderr.contains("deploy/kubernetes/clusterrole.yaml"),
        "{stderr}"
    );
    assert_eq!(s.mesh_yaml(), MESH);

    // A token that may only ask: every other requirement is listed.
    s.server.add_token(
        "only-reviews",
        Permissions::Rules(vec![Rule::new(
            &["create"],
            &["authorization.k8s.io"],
            &["selfsubjectaccessreviews"],
        )]),
    );
    let kubeconfig = s.kubeconfig("only-reviews", "east", "only-reviews");
    let out = s.link(&[
        "--name",
        "east",
        "--network",
        "net-a",
        "--locality",
        "us-east/us-east-1a",
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
    ]);
    let stderr = assert_failed(&out);
    assert_eq!(
        stderr.matches("missing:").count(),
        REQUIRED_ACCESS.len() - 1,
        "{stderr}"
    );
    assert!(
        !stderr.contains("missing: create selfsubjectaccessreviews"),
        "{stderr}"
    );
    assert_eq!(s.mesh_yaml(), MESH);

    // A token that may not even ask: said so, nothing written.
    s.server.add_token("nothing", Permissions::none());
    let kubeconfig = s.kubeconfig("nothing", "east", "nothing");
    let out = s.link(&[
        "--name",
        "east",
        "--network",
        "net-a",
        "--locality",
        "us-east/us-east-1a",
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
    ]);
    let stderr = assert_failed(&out);
    assert!(
        stderr.contains("may not create selfsubjectaccessreviews.authorization.k8s.io"),
        "{stderr}"
    );
    assert!(stderr.contains("(HTTP 403 Forbidden)"), "{stderr}");
    assert_eq!(s.mesh_yaml(), MESH);
}

#[test]
fn an_unreachable_or_hanging_server_is_a_clear_error_and_nothing_is_written() {
    let s = Setup::new(ServerOptions::default());
    s.server.add_token("cp", Permissions::All);
    let kubeconfig = s.kubeconfig("east", "east", "cp");
    let kubeconfig = kubeconfig.to_str().expect("utf-8");
    let args = [
        "--name",
        "east",
        "--network",
        "net-a",
        "--locality",
        "us-east/us-east-1a",
        "--kubeconfig",
        kubeconfig,
        "--timeout-seconds",
        "1",
    ];

    // Accepts connections, never answers: bounded by --timeout-seconds.
    s.server.set_fault(Fault::Hang);
    let started = Instant::now();
    let stderr = assert_failed(&s.link(&args));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains(&format!(
            "the API server at {} did not answer GET /version",
            s.server.url()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("mesh.yaml was not changed"), "{stderr}");
    assert_eq!(s.mesh_yaml(), MESH);
    s.server.set_fault(Fault::None);

    // Nothing listening any more: connection refused.
    s.rt.block_on(s.server.stop());
    let stderr = assert_failed(&s.link(&args));
    assert!(
        stderr.contains(&format!(
            "the API server at {} did not answer GET /version",
            s.server.url()
        )),
        "{stderr}"
    );
    assert_eq!(s.mesh_yaml(), MESH);
}

#[test]
fn unknown_credentials_and_a_missing_locality_are_refused_before_writing() {
    let s = Setup::new(ServerOptions {
        mcs_versions: vec![McsVersion::V1alpha1],
        ..ServerOptions::default()
    });
    let kubeconfig = s.kubeconfig("east", "east", "never-registered");
    let kubeconfig = kubeconfig.to_str().expect("utf-8");
    let stderr = assert_failed(&s.link(&[
        "--name",
        "east",
        "--network",
        "net-a",
        "--locality",
        "us-east/us-east-1a",
        "--kubeconfig",
        kubeconfig,
    ]));
    assert!(
        stderr.contains("does not accept the kubeconfig's credentials"),
        "{stderr}"
    );
    assert_eq!(s.mesh_yaml(), MESH);

    // A new entry needs a locality; nothing is asked of the API server without one.
    s.server.add_token("cp", Permissions::All);
    let kubeconfig = s.kubeconfig("east", "east", "cp");
    s.server.reset_requests();
    let stderr = assert_failed(&s.link(&[
        "--name",
        "east",
        "--network",
        "net-a",
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
    ]));
    assert!(stderr.contains("--locality"), "{stderr}");
    assert_eq!(s.server.requests().values().sum::<u64>(), 0);
    assert_eq!(s.mesh_yaml(), MESH);

    // With v1alpha1 only, that version is reported.
    let out = s.link(&[
        "--name",
        "east",
        "--network",
        "net-a",
        "--locality",
        "us-east/us-east-1a",
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("multicluster.x-k8s.io/v1alpha1"),
        "{stdout}"
    );
}
