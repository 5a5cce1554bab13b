//! Editing `mesh.yaml` in place, for `causeway link`: one member's `Cluster` document is added
//! or replaced while every other document of the `---` stream keeps its text and comments, and
//! the file is replaced only once the result loads with this crate's own loader.
//!
//! [`stream`] splits the stream and keeps comments around the replaced document; [`write`]
//! validates and replaces the file.

mod stream;
mod write;

use std::net::SocketAddr;
use std::path::PathBuf;

use causeway_model::{ClusterId, ClusterSpec, Locality, NetworkId};
use yaml_serde::{Mapping, Value};

use crate::LoadError;
use stream::{append_document, replace_document, split_stream, Chunk};

pub use write::write_mesh_file;

/// `apiVersion` of Causeway's own kinds.
const CAUSEWAY_API: &str = "causeway.io/v1alpha1";

/// Why `mesh.yaml` was not edited or not replaced. Messages name the cluster, and the file once
/// one is involved; [`upsert_cluster`] edits text, so its caller names the file.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// A new entry needs a locality.
    #[error("Cluster {cluster}: --locality REGION/ZONE is required for a new cluster entry")]
    LocalityRequired { cluster: ClusterId },
    /// `spec.kubernetes.kubeconfig` must be text.
    #[error(
        "Cluster {cluster}: kubeconfig path {} is not UTF-8 and cannot be written to mesh.yaml",
        .path.display()
    )]
    KubeconfigNotUtf8 { cluster: ClusterId, path: PathBuf },
    /// The stream already holds more than one document for the cluster.
    #[error(
        "Cluster {cluster}: mesh.yaml declares Cluster {cluster} more than once; fix that first"
    )]
    DuplicateCluster { cluster: ClusterId },
    /// The new `Cluster` document could not be serialised.
    #[error("Cluster {cluster}: cannot serialise the Cluster document")]
    Serialise {
        cluster: ClusterId,
        source: yaml_serde::Error,
    },
    /// A file operation of the write failed.
    #[error("cannot {action} {}", .path.display())]
    Io {
        /// What was being done, e.g. `create`, `replace`.
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The edited file does not load.
    #[error(
        "{} would not load after linking cluster {cluster}, so it was not changed:\n{}",
        .file.display(),
        indented(.errors)
    )]
    WouldNotLoad {
        file: PathBuf,
        cluster: ClusterId,
        errors: Vec<LoadError>,
    },
    /// The edited file loads, but its entry for the cluster is not the one written.
    #[error(
        "{} would not hold cluster {cluster} as linked after the edit ({found:?}); it was not changed",
        .file.display()
    )]
    NotAsLinked {
        file: PathBuf,
        cluster: ClusterId,
        /// What the edited file holds for the cluster.
        found: Option<Box<ClusterSpec>>,
    },
    /// The Mesh declares its networks and the entry's is not one of them.
    #[error(
        "network {network} is not among the Mesh's spec.networks [{}] in {}; add it there first (mesh.yaml was not changed)",
        joined(.networks),
        .file.display()
    )]
    UndeclaredNetwork {
        file: PathBuf,
        network: NetworkId,
        /// The Mesh's `spec.networks`.
        networks: Vec<NetworkId>,
    },
    /// Someone else changed the file since it was read.
    #[error("{} changed while causeway link ran; nothing was written, run it again", .file.display())]
    ChangedMeanwhile { file: PathBuf },
}

fn indented(errors: &[LoadError]) -> String {
    let list: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
    list.join("\n")
}

fn joined(networks: &[NetworkId]) -> String {
    let names: Vec<&str> = networks.iter().map(NetworkId::as_str).collect();
    names.join(", ")
}

/// The `Cluster` entry to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEntry {
    pub name: ClusterId,
    pub network: NetworkId,
    /// `None`: keep the existing entry's (required for a new one).
    pub locality: Option<Locality>,
    /// Empty: keep the existing entry's (none for a new one).
    pub gateways: Vec<SocketAddr>,
    /// As stored in `spec.kubernetes.kubeconfig`.
    pub kubeconfig: PathBuf,
    /// `None`: the kubeconfig's current context.
    pub context: Option<String>,
    /// `None`: keep the existing entry's (none for a new one).
    pub stale_endpoint_ttl: Option<String>,
}

/// Whether the entry was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditAction {
    Added,
    Updated,
}

/// `mesh.yaml` after the edit.
#[derive(Debug)]
pub struct Edited {
    /// The whole new file.
    pub text: String,
    /// The Cluster document as written.
    pub document: String,
    pub action: EditAction,
    /// The replaced document had comments between its fields (they are lost).
    pub dropped_comments: bool,
}

/// The `Cluster` named `name` in a parsed document, if it is one.
fn is_cluster_named(doc: &Value, name: &ClusterId) -> bool {
    doc.get("kind").and_then(Value::as_str) == Some("Cluster")
        && doc
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            == Some(name.as_str())
}

fn key(k: &str) -> Value {
    Value::String(k.to_owned())
}

/// A new `Cluster` document holding only its type and name.
fn new_cluster_document(name: &ClusterId) -> Mapping {
    let mut m = Mapping::new();
    m.insert(key("apiVersion"), key(CAUSEWAY_API));
    m.insert(key("kind"), key("Cluster"));
    let mut meta = Mapping::new();
    meta.insert(key("name"), key(name.as_str()));
    m.insert(key("metadata"), Value::Mapping(meta));
    m
}

/// `spec.gateways` for `gateways`.
fn gateways_value(gateways: &[SocketAddr]) -> Value {
    let gateways = gateways
        .iter()
        .map(|g| {
            let mut m = Mapping::new();
            m.insert(key("address"), key(&g.ip().to_string()));
            m.insert(key("port"), Value::Number(g.port().into()));
            Value::Mapping(m)
        })
        .collect();
    Value::Sequence(gateways)
}

/// `spec.kubernetes` for `entry`.
fn kubernetes_value(entry: &ClusterEntry) -> Result<Value, EditError> {
    let path = entry
        .kubeconfig
        .to_str()
        .ok_or_else(|| EditError::KubeconfigNotUtf8 {
            cluster: entry.name.clone(),
            path: entry.kubeconfig.clone(),
        })?;
    let mut kubernetes = Mapping::new();
    kubernetes.insert(key("kubeconfig"), key(path));
    if let Some(context) = &entry.context {
        kubernetes.insert(key("context"), key(context));
    }
    Ok(Value::Mapping(kubernetes))
}

/// The Cluster document for `entry`, starting from the existing one (its other fields and
/// their order kept) or a new one.
fn cluster_document(existing: Option<&Value>, entry: &ClusterEntry) -> Result<Value, EditError> {
    let mut root = match existing {
        Some(Value::Mapping(m)) => m.clone(),
        _ => new_cluster_document(&entry.name),
    };
    let mut spec = match root.get("spec") {
        Some(Value::Mapping(s)) => s.clone(),
        _ => Mapping::new(),
    };
    spec.insert(key("network"), key(entry.network.as_str()));
    match &entry.locality {
        Some(l) => {
            spec.insert(key("locality"), key(&l.to_string()));
        }
        None if spec.contains_key("locality") => {}
        None => {
            return Err(EditError::LocalityRequired {
                cluster: entry.name.clone(),
            })
        }
    }
    if !entry.gateways.is_empty() {
        spec.insert(key("gateways"), gateways_value(&entry.gateways));
    }
    spec.insert(key("kubernetes"), kubernetes_value(entry)?);
    if let Some(ttl) = &entry.stale_endpoint_ttl {
        spec.insert(key("staleEndpointTtl"), key(ttl));
    }
    root.insert(key("spec"), Value::Mapping(spec));
    Ok(Value::Mapping(root))
}

/// The index and parsed document of the `Cluster` named `name`, if the stream has one.
fn find_cluster(
    chunks: &[Chunk<'_>],
    name: &ClusterId,
) -> Result<Option<(usize, Value)>, EditError> {
    let mut found: Option<(usize, Value)> = None;
    for (i, chunk) in chunks.iter().enumerate() {
        // Documents that do not parse are left alone (the final load reports them).
        let Ok(doc) = yaml_serde::from_str::<Value>(&chunk.yaml()) else {
            continue;
        };
        if is_cluster_named(&doc, name) {
            if found.is_some() {
                return Err(EditError::DuplicateCluster {
                    cluster: name.clone(),
                });
            }
            found = Some((i, doc));
        }
    }
    Ok(found)
}

/// `text` (a `mesh.yaml` stream) with `entry`'s Cluster document added at the end, or
/// replaced in place; every other document keeps its bytes.
pub fn upsert_cluster(text: &str, entry: &ClusterEntry) -> Result<Edited, EditError> {
    let chunks = split_stream(text);
    let found = find_cluster(&chunks, &entry.name)?;
    let value = cluster_document(found.as_ref().map(|(_, d)| d), entry)?;
    let document = yaml_serde::to_string(&value).map_err(|source| EditError::Serialise {
        cluster: entry.name.clone(),
        source,
    })?;
    let Some((index, _)) = found else {
        return Ok(Edited {
            text: append_document(text, &chunks, &document),
            document,
            action: EditAction::Added,
            dropped_comments: false,
        });
    };
    let (text, dropped_comments) = replace_document(&chunks, index, &document);
    Ok(Edited {
        text,
        document,
        action: EditAction::Updated,
        dropped_comments,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use causeway_model::KubernetesSource;

    use super::*;

    pub(super) const MESH: &str = "\
# The demo mesh.
apiVersion: causeway.io/v1alpha1
kind: Mesh
metadata:
  name: demo
spec:
  trustDomain: causeway.local   # SPIFFE trust domain
  networks: [net-a, net-b]
---
# alpha: a host cluster
apiVersion: causeway.io/v1alpha1
kind: Cluster
metadata:
  name: alpha
spec:
  network: net-a
  locality: us-east/us-east-1a   # where the racks are
  gateways:
  - address: 127.1.255.1
    port: 15443
---
# beta comes next
apiVersion: causeway.io/v1alpha1
kind: Cluster
metadata: {name: beta}
spec:
  network: net-b
  locality: eu-west/eu-west-1a
  kubernetes:
    kubeconfig: /etc/beta.yaml
    context: old
  staleEndpointTtl: 10m
# the end
";

    pub(super) fn entry(name: &str, network: &str, locality: Option<&str>) -> ClusterEntry {
        ClusterEntry {
            name: ClusterId::new(name).expect("id"),
            network: NetworkId::new(network).expect("id"),
            locality: locality.map(|l| l.parse().expect("locality")),
            gateways: Vec::new(),
            kubeconfig: PathBuf::from("kubeconfigs/c.yaml"),
            context: None,
            stale_endpoint_ttl: None,
        }
    }

    fn load(text: &str) -> causeway_model::MeshConfig {
        crate::parse_mesh_documents(Path::new("mesh.yaml"), text)
            .unwrap_or_else(|e| panic!("does not load: {e:?}\n{text}"))
    }

    /// The text of every document except the one of `name`, in order.
    fn others(text: &str, name: &str) -> Vec<String> {
        let id = ClusterId::new(name).expect("id");
        split_stream(text)
            .iter()
            .filter(|c| {
                yaml_serde::from_str::<Value>(&c.yaml())
                    .map_or(true, |d| !is_cluster_named(&d, &id))
            })
            .map(|c| format!("{}{}", c.marker, c.body))
            .collect()
    }

    #[test]
    fn a_new_cluster_is_appended_and_the_rest_is_unchanged() {
        let mut e = entry("gamma", "net-b", Some("eu-west/eu-west-1b"));
        e.gateways = vec!["127.3.255.1:15443".parse().expect("addr")];
        e.context = Some("gamma-admin".into());
        e.stale_endpoint_ttl = Some("5m".into());
        let edited = upsert_cluster(MESH, &e).expect("edit");
        assert_eq!(edited.action, EditAction::Added);
        assert!(edited.text.starts_with(MESH), "{}", edited.text);
        assert_eq!(
            edited.text[MESH.len()..],
            format!("---\n{}", edited.document)
        );
        let mesh = load(&edited.text);
        assert_eq!(mesh.clusters.len(), 3);
        let gamma = &mesh.clusters[2];
        assert_eq!(gamma.id.as_str(), "gamma");
        assert_eq!(gamma.network.as_str(), "net-b");
        assert_eq!(gamma.locality.to_string(), "eu-west/eu-west-1b");
        assert_eq!(gamma.gateways.len(), 1);
        assert_eq!(gamma.gateways[0].to_string(), "127.3.255.1:15443");
        assert_eq!(
            gamma.kubernetes,
            Some(KubernetesSource {
                kubeconfig: PathBuf::from("kubeconfigs/c.yaml"),
                context: Some("gamma-admin".into()),
            })
        );
        assert_eq!(gamma.stale_endpoint_ttl, Some(Duration::from_secs(300)));
        // Fields in the usual order.
        let order: Vec<usize> = [
            "apiVersion:",
            "kind:",
            "metadata:",
            "spec:",
            "network:",
            "locality:",
            "gateways:",
            "kubernetes:",
            "staleEndpointTtl:",
        ]
        .iter()
        .map(|k| {
            edited
                .document
                .find(k)
                .unwrap_or_else(|| panic!("{k} in {}", edited.document))
        })
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{}", edited.document);
    }

    #[test]
    fn a_new_cluster_needs_a_locality_and_nothing_is_produced_without_one() {
        let err = upsert_cluster(MESH, &entry("gamma", "net-b", None)).expect_err("no locality");
        assert!(err.to_string().contains("--locality"), "{err}");
    }

    #[test]
    fn appending_handles_missing_newline_and_trailing_marker() {
        let e = entry("gamma", "net-b", Some("eu-west/eu-west-1b"));
        let bare = MESH.trim_end();
        let edited = upsert_cluster(bare, &e).expect("edit");
        assert_eq!(edited.text, format!("{bare}\n---\n{}", edited.document));
        load(&edited.text);
        let open = format!("{MESH}---\n");
        let edited = upsert_cluster(&open, &e).expect("edit");
        assert_eq!(edited.text, format!("{open}{}", edited.document));
        assert_eq!(load(&edited.text).clusters.len(), 3);
    }

    #[test]
    fn updating_replaces_only_that_document_and_keeps_comments_elsewhere() {
        let mut e = entry("alpha", "net-b", None);
        e.context = Some("ctx".into());
        let edited = upsert_cluster(MESH, &e).expect("edit");
        assert_eq!(edited.action, EditAction::Updated);
        assert_eq!(others(&edited.text, "alpha"), others(MESH, "alpha"));
        for kept in [
            "# The demo mesh.\n",
            "trustDomain: causeway.local   # SPIFFE trust domain\n",
            "---\n# alpha: a host cluster\napiVersion",
            "# beta comes next\n",
            "# the end\n",
        ] {
            assert!(
                edited.text.contains(kept),
                "{kept:?} lost:\n{}",
                edited.text
            );
        }
        assert!(edited.dropped_comments, "the locality comment is gone");
        let mesh = load(&edited.text);
        let names: Vec<&str> = mesh.clusters.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(names, ["alpha", "beta"], "order kept");
        let alpha = &mesh.clusters[0];
        assert_eq!(alpha.network.as_str(), "net-b", "network replaced");
        assert_eq!(
            alpha.locality.to_string(),
            "us-east/us-east-1a",
            "locality kept"
        );
        assert_eq!(alpha.gateways.len(), 1, "gateways kept");
        assert_eq!(
            alpha.kubernetes,
            Some(KubernetesSource {
                kubeconfig: PathBuf::from("kubeconfigs/c.yaml"),
                context: Some("ctx".into()),
            })
        );
        let beta_before = &load(MESH).clusters[1];
        let beta_after = &mesh.clusters[1];
        assert_eq!(
            (beta_after.kubernetes.clone(), beta_after.stale_endpoint_ttl),
            (
                beta_before.kubernetes.clone(),
                beta_before.stale_endpoint_ttl
            )
        );
        // Linking again with the same settings changes nothing more.
        let again = upsert_cluster(&edited.text, &e).expect("edit");
        assert_eq!(again.text, edited.text);
        assert!(!again.dropped_comments);
    }

    #[test]
    fn updating_replaces_the_context_gateways_and_keeps_an_unset_ttl() {
        let mut e = entry("beta", "net-b", Some("eu-west/eu-west-1c"));
        e.gateways = vec![
            "10.0.0.1:15443".parse().expect("addr"),
            "[fd00::1]:15443".parse().expect("addr"),
        ];
        let edited = upsert_cluster(MESH, &e).expect("edit");
        assert!(edited.text.ends_with("# the end\n"), "{}", edited.text);
        let beta = load(&edited.text).clusters[1].clone();
        assert_eq!(beta.locality.to_string(), "eu-west/eu-west-1c");
        let gateways: Vec<String> = beta.gateways.iter().map(ToString::to_string).collect();
        assert_eq!(gateways, ["10.0.0.1:15443", "[fd00::1]:15443"]);
        assert_eq!(
            beta.kubernetes.and_then(|k| k.context),
            None,
            "the context checked (the file's current one) is the one stored"
        );
        assert_eq!(
            beta.stale_endpoint_ttl,
            Some(Duration::from_secs(600)),
            "ttl kept"
        );
        assert!(
            edited.document.contains("metadata:\n  name: beta\n"),
            "{}",
            edited.document
        );
    }

    #[test]
    fn a_duplicate_entry_is_refused() {
        let text = format!("{MESH}---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {{name: beta}}\nspec: {{network: net-b, locality: a/b}}\n");
        let err = upsert_cluster(&text, &entry("beta", "net-b", None)).expect_err("duplicate");
        assert!(err.to_string().contains("more than once"), "{err}");
    }

    #[test]
    fn inline_marker_content_is_read_like_the_registry_does() {
        let text = "apiVersion: causeway.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: t}\n--- {apiVersion: causeway.io/v1alpha1, kind: Cluster, metadata: {name: a}, spec: {network: n, locality: r/z}}\n";
        let edited = upsert_cluster(text, &entry("a", "n", None)).expect("edit");
        assert_eq!(edited.action, EditAction::Updated);
        let mesh = load(&edited.text);
        assert_eq!(mesh.clusters.len(), 1);
        assert!(mesh.clusters[0].kubernetes.is_some());
    }
}
