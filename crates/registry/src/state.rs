//! The mesh directory as the control plane holds it: the last good state of the mesh scope
//! (`mesh.yaml` and `policies/`) and of every cluster, plus the errors that stopped newer states
//! from loading.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use causeway_model::{ClusterObjects, MeshConfig, TrafficPolicy};

use crate::file::{load_cluster_dir_cached, load_mesh_scope, FileCache};
use crate::LoadError;

/// What to read again after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadScope {
    /// Everything.
    All,
    /// The mesh scope: `mesh.yaml` and the files under `policies/` (and any cluster
    /// `mesh.yaml` newly declares).
    Mesh,
    /// The named cluster directories.
    Clusters(BTreeSet<String>),
}

impl ReloadScope {
    /// Combines two scopes into one that covers both.
    pub fn merge(self, other: ReloadScope) -> ReloadScope {
        match (self, other) {
            (ReloadScope::All, _) | (_, ReloadScope::All) => ReloadScope::All,
            (ReloadScope::Mesh, ReloadScope::Mesh) => ReloadScope::Mesh,
            (ReloadScope::Clusters(mut a), ReloadScope::Clusters(b)) => {
                a.extend(b);
                ReloadScope::Clusters(a)
            }
            _ => ReloadScope::All,
        }
    }
}

/// One cluster directory: its last good objects and the errors of the latest attempt.
#[derive(Debug, Clone, Default)]
pub struct ClusterSlot {
    /// Last state that loaded cleanly; `None` until one has.
    pub objects: Option<Arc<ClusterObjects>>,
    /// Errors of the latest load (empty when it succeeded).
    pub errors: Vec<LoadError>,
    /// Bumped each time `objects` changes.
    pub generation: u64,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// The mesh configuration was replaced by a new good one.
    pub mesh_changed: bool,
    /// The traffic policies were replaced by new good ones.
    pub traffic_policies_changed: bool,
    /// Clusters whose good objects changed.
    pub clusters_changed: BTreeSet<String>,
    /// The set of errors changed (appeared, cleared or moved).
    pub errors_changed: bool,
}

impl ReloadOutcome {
    /// Whether anything an index depends on changed (traffic policies travel in the mesh
    /// configuration, so a policy change is a mesh change too).
    pub fn state_changed(&self) -> bool {
        self.mesh_changed || !self.clusters_changed.is_empty()
    }
}

/// A mesh directory with last-good semantics: a file that breaks leaves its cluster (or the
/// mesh scope: mesh settings and traffic policies) on the previous good state, and the error is
/// kept for operators to see.
#[derive(Debug)]
pub struct MeshDirectory {
    root: PathBuf,
    mesh: Option<Arc<MeshConfig>>,
    traffic_policies: Arc<[TrafficPolicy]>,
    mesh_errors: Vec<LoadError>,
    clusters: BTreeMap<String, ClusterSlot>,
    stray: Vec<LoadError>,
    /// Cluster files as last parsed: a reload reparses only the files that changed.
    file_cache: FileCache,
}

impl MeshDirectory {
    /// Loads everything under `root`. Errors are recorded, not returned: see [`Self::errors`].
    pub fn open(root: impl Into<PathBuf>) -> Self {
        let mut dir = Self {
            root: root.into(),
            mesh: None,
            traffic_policies: Arc::from(Vec::new()),
            mesh_errors: Vec::new(),
            clusters: BTreeMap::new(),
            stray: Vec::new(),
            file_cache: FileCache::default(),
        };
        dir.reload(ReloadScope::All);
        dir
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The last good mesh configuration.
    pub fn mesh(&self) -> Option<&Arc<MeshConfig>> {
        self.mesh.as_ref()
    }

    /// The last good traffic policies of the mesh (from `mesh.yaml` and `policies/`, in that
    /// order, files in path order), loaded with the mesh settings: a broken policy keeps the
    /// previous ones (and the previous mesh settings). Empty until the mesh scope has loaded.
    pub fn traffic_policies(&self) -> &Arc<[TrafficPolicy]> {
        &self.traffic_policies
    }

    /// Every cluster directory slot, by directory name.
    pub fn clusters(&self) -> &BTreeMap<String, ClusterSlot> {
        &self.clusters
    }

    /// Every current error: mesh.yaml, policy files, cluster files, and cluster directories with
    /// no `Cluster`.
    pub fn errors(&self) -> Vec<LoadError> {
        let mut all = self.mesh_errors.clone();
        all.extend(
            self.clusters
                .values()
                .flat_map(|s| s.errors.iter().cloned()),
        );
        all.extend(self.stray.iter().cloned());
        all
    }

    fn cluster_dirs_on_disk(&self) -> BTreeSet<String> {
        let Ok(entries) = std::fs::read_dir(self.root.join("clusters")) else {
            return BTreeSet::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    }

    /// Clusters whose objects come from `clusters/<id>/` (not from a Kubernetes API server).
    fn declared(&self) -> BTreeSet<String> {
        self.mesh
            .iter()
            .flat_map(|m| m.clusters.iter())
            .filter(|c| c.kubernetes.is_none())
            .map(|c| c.id.to_string())
            .collect()
    }

    fn kubernetes_clusters(&self) -> BTreeSet<String> {
        self.mesh
            .iter()
            .flat_map(|m| m.clusters.iter())
            .filter(|c| c.kubernetes.is_some())
            .map(|c| c.id.to_string())
            .collect()
    }

    /// Reads `scope` again, keeping last good states where the new one fails.
    pub fn reload(&mut self, scope: ReloadScope) -> ReloadOutcome {
        let errors_before = self.errors();
        let mut outcome = ReloadOutcome::default();
        let mut to_load: BTreeSet<String> = BTreeSet::new();
        if matches!(scope, ReloadScope::All | ReloadScope::Mesh) {
            self.reload_mesh_scope(&mut outcome);
        }
        let declared = self.declared();
        match scope {
            ReloadScope::All => {
                to_load.extend(declared.iter().cloned());
            }
            ReloadScope::Mesh => {
                to_load.extend(
                    declared
                        .iter()
                        .filter(|d| !self.clusters.contains_key(*d))
                        .cloned(),
                );
            }
            ReloadScope::Clusters(names) => to_load.extend(names),
        }
        for name in to_load {
            if !declared.contains(&name) {
                continue;
            }
            let slot = self.clusters.entry(name.clone()).or_default();
            let Some(loaded) = load_cluster_dir_cached(&self.root, &name, &mut self.file_cache)
            else {
                continue; // not one file changed
            };
            match loaded {
                Ok(objects) => {
                    slot.errors.clear();
                    if slot.objects.as_deref() != Some(&objects) {
                        slot.objects = Some(Arc::new(objects));
                        slot.generation += 1;
                        outcome.clusters_changed.insert(name.clone());
                        tracing::info!(cluster = %name, generation = slot.generation, "cluster directory loaded");
                    }
                }
                Err(errors) => {
                    for e in &errors {
                        tracing::warn!(cluster = %name, error = %e, "cluster file rejected; keeping the cluster's last good state");
                    }
                    slot.errors = errors;
                }
            }
        }
        // Slots of clusters no longer declared are dropped; their directories become stray.
        let before = self.clusters.len();
        self.clusters.retain(|name, _| declared.contains(name));
        if self.clusters.len() != before {
            outcome.mesh_changed = true;
        }
        let from_kubernetes = self.kubernetes_clusters();
        self.stray = self
            .cluster_dirs_on_disk()
            .into_iter()
            .filter(|d| !declared.contains(d))
            .map(|d| {
                let reason = if from_kubernetes.contains(&d) {
                    format!("cluster {d:?} is read from its Kubernetes API server (spec.kubernetes in mesh.yaml); this directory is ignored")
                } else {
                    format!("unknown cluster {d:?}: mesh.yaml declares no Cluster with that name")
                };
                LoadError::file(Path::new("clusters").join(&d), reason)
            })
            .collect();
        outcome.errors_changed = self.errors() != errors_before;
        outcome
    }
}

impl MeshDirectory {
    /// Reads `mesh.yaml` and `policies/` again; on any error both keep their last good state.
    fn reload_mesh_scope(&mut self, outcome: &mut ReloadOutcome) {
        let loaded = load_mesh_scope(&self.root).and_then(|(mesh, policies)| match &self.mesh {
            Some(current) => keep_trust_domain(current, mesh).map(|mesh| (mesh, policies)),
            None => Ok((mesh, policies)),
        });
        match loaded {
            Ok((mesh, policies)) => {
                self.mesh_errors.clear();
                if self.mesh.as_deref() != Some(&mesh) {
                    tracing::info!(clusters = mesh.clusters.len(), "mesh.yaml loaded");
                    self.mesh = Some(Arc::new(mesh));
                    outcome.mesh_changed = true;
                }
                if *self.traffic_policies != *policies {
                    tracing::info!(policies = policies.len(), "traffic policies loaded");
                    self.traffic_policies = Arc::from(policies);
                    outcome.traffic_policies_changed = true;
                }
            }
            Err(errors) => {
                for e in &errors {
                    tracing::warn!(error = %e, "mesh scope rejected; keeping the last good mesh settings and traffic policies");
                }
                self.mesh_errors = errors;
            }
        }
    }
}

/// The trust domain is fixed for the life of a control plane: its CA, every certificate it
/// issued and every SAN check of the mesh are bound to it, so a running mesh cannot follow a new
/// one without splitting in two. A `mesh.yaml` that changes it is refused like a broken file
/// (the whole last good mesh settings stay), with an error on `spec.trustDomain`.
fn keep_trust_domain(current: &MeshConfig, new: MeshConfig) -> Result<MeshConfig, Vec<LoadError>> {
    let (old, next) = (&current.mesh.trust_domain, &new.mesh.trust_domain);
    if old == next {
        return Ok(new);
    }
    let source = &new.mesh.source;
    Err(vec![LoadError {
        file: source.file.clone(),
        document: Some(source.document),
        line: Some(source.line),
        object: Some(format!("Mesh {}", new.mesh.name)),
        field: Some("spec.trustDomain".into()),
        reason: format!(
            "changing the trust domain needs a restart with a new root: the running control plane \
             keeps {old:?} (its CA and every issued certificate belong to it) and ignores this \
             mesh.yaml until spec.trustDomain is {old:?} again; to move the mesh to {next:?}, \
             create a root and intermediates for it and restart the control plane"
        ),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    const MESH: &str = "apiVersion: causeway.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: td}\n---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {name: a}\nspec: {network: n, locality: r/z}\n";
    const SVC: &str =
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n";

    #[test]
    fn broken_file_keeps_last_good_cluster() {
        let tmp = tempfile::tempdir().expect("tmp");
        write(tmp.path(), "mesh.yaml", MESH);
        write(tmp.path(), "clusters/a/s.yaml", SVC);
        write(tmp.path(), "clusters/ghost/s.yaml", SVC);
        let mut dir = MeshDirectory::open(tmp.path());
        let good = dir.clusters()["a"].objects.clone().expect("loaded");
        assert_eq!(good.services.len(), 1);
        assert_eq!(dir.errors().len(), 1, "the ghost directory is reported");
        assert!(dir.errors()[0].reason.contains("unknown cluster \"ghost\""));

        write(
            tmp.path(),
            "clusters/a/s.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: -1}]}\n",
        );
        let outcome = dir.reload(ReloadScope::Clusters(["a".to_owned()].into()));
        assert!(!outcome.state_changed());
        assert!(outcome.errors_changed);
        assert_eq!(dir.clusters()["a"].objects.as_deref(), Some(&*good));
        assert_eq!(dir.clusters()["a"].errors.len(), 1);

        write(tmp.path(), "mesh.yaml", "kind: [");
        let outcome = dir.reload(ReloadScope::Mesh);
        assert!(!outcome.mesh_changed);
        assert!(dir.mesh().is_some(), "last good mesh kept");
        assert_eq!(dir.errors().len(), 3);
    }

    #[test]
    fn a_trust_domain_change_is_refused_and_the_last_good_mesh_kept() {
        let tmp = tempfile::tempdir().expect("tmp");
        write(tmp.path(), "mesh.yaml", MESH);
        write(tmp.path(), "clusters/a/s.yaml", SVC);
        let mut dir = MeshDirectory::open(tmp.path());
        assert!(dir.errors().is_empty(), "{:?}", dir.errors());
        let good = dir.mesh().cloned().expect("mesh");

        // A new trust domain, and another change (a second cluster) in the same file.
        let changed = MESH.replace("trustDomain: td", "trustDomain: other.td")
            + "---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {name: b}\nspec: {network: n, locality: r/z}\n";
        write(tmp.path(), "mesh.yaml", &changed);
        let outcome = dir.reload(ReloadScope::Mesh);
        assert!(!outcome.state_changed(), "{outcome:?}");
        assert!(outcome.errors_changed);
        assert_eq!(
            dir.mesh(),
            Some(&good),
            "the whole last good mesh.yaml is kept"
        );
        assert_eq!(dir.mesh().map(|m| m.mesh.trust_domain.as_str()), Some("td"));
        assert!(!dir.clusters().contains_key("b"));
        let errors = dir.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!(e.file, Path::new("mesh.yaml"));
        assert_eq!((e.document, e.line), (Some(0), Some(1)));
        assert_eq!(e.object.as_deref(), Some("Mesh m"));
        assert_eq!(e.field.as_deref(), Some("spec.trustDomain"));
        assert!(
            e.reason
                .starts_with("changing the trust domain needs a restart with a new root"),
            "{e}"
        );
        assert!(
            e.reason.contains("\"td\"") && e.reason.contains("\"other.td\""),
            "{e}"
        );

        // Going back to the running trust domain clears the error and applies the rest.
        write(
            tmp.path(),
            "mesh.yaml",
            &changed.replace("trustDomain: other.td", "trustDomain: td"),
        );
        let outcome = dir.reload(ReloadScope::Mesh);
        assert!(outcome.mesh_changed);
        assert!(dir.errors().is_empty(), "{:?}", dir.errors());
        assert!(dir.clusters().contains_key("b"));
    }

    const POLICY: &str = "apiVersion: causeway.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  service: checkout\n  mode: FailOver\n  clusters: [{name: a}]\n";

    fn policy_names(dir: &MeshDirectory) -> Vec<String> {
        dir.traffic_policies()
            .iter()
            .map(|p| format!("{}/{}@{}", p.namespace, p.name, p.source.file.display()))
            .collect()
    }

    #[test]
    fn traffic_policies_come_from_mesh_yaml_and_every_file_under_policies() {
        let tmp = tempfile::tempdir().expect("tmp");
        write(tmp.path(), "mesh.yaml", &format!("{MESH}---\n{POLICY}"));
        write(
            tmp.path(),
            "policies/b.yaml",
            &POLICY
                .replace("name: p,", "name: b,")
                .replace("checkout", "cart"),
        );
        write(
            tmp.path(),
            "policies/shop/a.yml",
            &POLICY
                .replace("name: p,", "name: a,")
                .replace("checkout", "search"),
        );
        write(tmp.path(), "policies/notes.txt", "not yaml");
        write(tmp.path(), "policies/.hidden.yaml", "kind: [");
        let mut dir = MeshDirectory::open(tmp.path());
        assert!(dir.errors().is_empty(), "{:?}", dir.errors());
        assert_eq!(
            policy_names(&dir),
            [
                "shop/p@mesh.yaml",
                "shop/b@policies/b.yaml",
                "shop/a@policies/shop/a.yml"
            ]
        );
        let mesh = dir.mesh().cloned().expect("mesh");

        // A new policy file: the policies change, and with them the mesh configuration the
        // index is built from (it carries them).
        write(
            tmp.path(),
            "policies/c.yaml",
            &POLICY
                .replace("name: p,", "name: c,")
                .replace("checkout", "pay"),
        );
        let outcome = dir.reload(ReloadScope::Mesh);
        assert!(
            outcome.traffic_policies_changed && outcome.mesh_changed,
            "{outcome:?}"
        );
        assert!(outcome.state_changed());
        assert!(!Arc::ptr_eq(dir.mesh().expect("mesh"), &mesh));
        assert_eq!(dir.mesh().expect("mesh").traffic_policies.len(), 4);
        assert_eq!(dir.traffic_policies().len(), 4);
        let outcome = dir.reload(ReloadScope::Mesh);
        assert_eq!(outcome, ReloadOutcome::default(), "nothing changed");
    }

    #[test]
    fn a_broken_policy_keeps_the_last_good_mesh_scope() {
        let tmp = tempfile::tempdir().expect("tmp");
        write(tmp.path(), "mesh.yaml", MESH);
        write(tmp.path(), "policies/shop.yaml", POLICY);
        let mut dir = MeshDirectory::open(tmp.path());
        assert!(dir.errors().is_empty(), "{:?}", dir.errors());
        let good = dir.traffic_policies().clone();
        assert_eq!(good.len(), 1);

        // A broken policy, and a new cluster in mesh.yaml: neither is applied.
        write(
            tmp.path(),
            "policies/shop.yaml",
            &POLICY.replace("mode: FailOver", "mode: Sometimes"),
        );
        let b = "---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {name: b}\nspec: {network: n, locality: r/z}\n";
        write(tmp.path(), "mesh.yaml", &format!("{MESH}{b}"));
        let outcome = dir.reload(ReloadScope::Mesh);
        assert!(
            !outcome.traffic_policies_changed && !outcome.mesh_changed,
            "{outcome:?}"
        );
        assert!(outcome.errors_changed);
        assert!(Arc::ptr_eq(dir.traffic_policies(), &good));
        assert_eq!(dir.mesh().map(|m| m.clusters.len()), Some(1));
        let errors = dir.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].file, Path::new("policies/shop.yaml"));
        assert_eq!(errors[0].object.as_deref(), Some("TrafficPolicy shop/p"));
        assert_eq!(errors[0].field.as_deref(), Some("spec.mode"));

        // A policy in mesh.yaml that duplicates the one under policies/: refused too.
        write(tmp.path(), "policies/shop.yaml", POLICY);
        write(
            tmp.path(),
            "mesh.yaml",
            &format!("{MESH}{b}---\n{}", POLICY.replace("name: p,", "name: q,")),
        );
        dir.reload(ReloadScope::Mesh);
        let errors = dir.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].file, Path::new("policies/shop.yaml"));
        assert!(
            errors[0]
                .reason
                .contains("TrafficPolicy shop/q at mesh.yaml"),
            "{}",
            errors[0]
        );
        assert!(Arc::ptr_eq(dir.traffic_policies(), &good));

        // Fixed: the new cluster and both policies load.
        write(
            tmp.path(),
            "mesh.yaml",
            &format!(
                "{MESH}{b}---\n{}",
                POLICY
                    .replace("name: p,", "name: q,")
                    .replace("checkout", "cart")
            ),
        );
        let outcome = dir.reload(ReloadScope::Mesh);
        assert!(
            outcome.traffic_policies_changed && outcome.mesh_changed,
            "{outcome:?}"
        );
        assert!(dir.errors().is_empty(), "{:?}", dir.errors());
        assert_eq!(dir.traffic_policies().len(), 2);
        assert!(dir.clusters().contains_key("b"));

        // A policy file that cannot be read as UTF-8 is an error like any other.
        write(tmp.path(), "policies/zz.yaml", "");
        std::fs::write(tmp.path().join("policies/zz.yaml"), [0xff]).expect("write");
        dir.reload(ReloadScope::Mesh);
        assert_eq!(dir.errors()[0].file, Path::new("policies/zz.yaml"));
        assert_eq!(dir.traffic_policies().len(), 2);
    }
}
