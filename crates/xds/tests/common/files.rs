//! The example mesh with extra files written over it (policies, services), for the tests of
//! what they change in the emitted configuration.

use std::path::Path;

use causeway_discovery::MeshIndex;
use causeway_registry::MeshDirectory;

/// In gamma: a TCP port on the ledger (5432, besides its HTTP port 8080), a DENY policy for
/// every workload and ALLOW policies for the greeter and the ledger, with principals, namespaces,
/// caller clusters, ports and paths: network RBAC on the ledger's TCP port, HTTP RBAC on the
/// HTTP ports.
pub const POLICIES: &[(&str, &str)] = &[
    (
        "clusters/gamma/ledger-db.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: ledger-db, namespace: demo}
spec:
  selector: {app: ledger}
  ports: [{name: tcp-db, port: 5432, targetPort: 5432, appProtocol: tcp}]
",
    ),
    (
        "clusters/gamma/policies.yaml",
        "apiVersion: causeway.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-strangers, namespace: demo}
spec:
  action: DENY
  rules:
  - from: [{namespaces: [strangers]}]
---
apiVersion: causeway.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: greeter-callers, namespace: demo}
spec:
  selector: {app: greeter}
  rules:
  - from: [{principals: [spiffe://causeway.local/ns/demo/sa/client], clusters: [alpha]}]
    to: [{paths: [/api/*, /hello]}]
---
apiVersion: causeway.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ledger-access, namespace: demo}
spec:
  selector: {app: ledger}
  rules:
  - from: [{clusters: [gamma]}, {principals: [spiffe://causeway.local/ns/demo/sa/greeter]}]
    to: [{ports: [5432]}, {ports: [8080], paths: [/ledger/*]}]
---
apiVersion: causeway.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ledger-admin, namespace: demo}
spec:
  selector: {app: ledger}
  action: DENY
  rules:
  - to: [{ports: [8080], paths: [/admin*]}]
",
    ),
];

/// The example mesh with `extra` files (path relative to the mesh directory, text) over it.
pub fn example_with(extra: &[(&str, &str)]) -> MeshIndex {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/three-clusters");
    let scratch = tempfile::tempdir().expect("tmp");
    let tmp = scratch.path().join("mesh");
    copy_tree(&src, &tmp);
    for (file, text) in extra {
        let path = tmp.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }
    let dir = MeshDirectory::open(&tmp);
    assert!(dir.errors().is_empty(), "{:?}", dir.errors());
    super::index_of(&dir)
}

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read").flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}
