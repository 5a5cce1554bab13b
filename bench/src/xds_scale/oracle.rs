//! What each change owes each proxy, from the reference builders: a shadow copy of the mesh
//! directory loaded by the registry, the index built from it, and for every simulated proxy the
//! full (uncached) build of the changed service's resources (sidecars) or of its whole config
//! (gateways), before and after. A proxy needs a push exactly when these differ, and is done
//! once it has ACKed every new version. The control plane's own caches and sharing play no
//! part here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use causeway_discovery::{MeshIndex, ProxyContext};
use causeway_model::{ClusterId, ProxyRole, ServiceKey};
use causeway_registry::{MeshDirectory, ReloadScope};
use causeway_xds::build;
use causeway_xds::node::ProxyNode;
use causeway_xds::resources::Resources;
use envoy_types::pb::envoy::config::core::v3::Node;

use super::client::{name_hash, version_number, Expectation};
use super::mesh::{self, Change};

struct Subject {
    node: ProxyNode,
    ctx: ProxyContext,
    slots: BTreeMap<ServiceKey, u32>,
}

/// The reference view of the mesh the benchmark writes.
pub struct Oracle {
    root: PathBuf,
    dir: MeshDirectory,
    index: MeshIndex,
    subjects: Vec<Subject>,
}

/// Every resource as (type URL, name) → version.
fn flat(r: &Resources) -> BTreeMap<(&'static str, String), u64> {
    r.by_type
        .iter()
        .flat_map(|(t, m)| {
            m.iter()
                .map(move |(n, res)| ((t.as_str(), n.clone()), version_number(&res.version)))
        })
        .collect()
}

impl Oracle {
    /// Loads `root` (a copy of the control plane's directory) and resolves every proxy's node.
    pub fn load(root: &Path, nodes: &[Node]) -> anyhow::Result<Self> {
        let dir = MeshDirectory::open(root.to_path_buf());
        if let Some(e) = dir.errors().first() {
            anyhow::bail!("the generated mesh does not load: {e}");
        }
        let objects: Vec<(ClusterId, _)> = dir
            .clusters()
            .iter()
            .map(|(n, s)| {
                Ok((
                    ClusterId::new(n)?,
                    s.objects.clone().context("cluster not loaded")?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let mesh = Arc::clone(dir.mesh().context("mesh.yaml not loaded")?);
        let index = MeshIndex::build(mesh, objects.iter().map(|(i, o)| (i, &**o)));
        let subjects: Vec<Subject> = nodes
            .iter()
            .map(|n| {
                let node = ProxyNode::from_node(Some(n))?;
                let ctx = node.resolve(&index)?;
                let slots = build::sidecar_slots(&index, &node);
                Ok(Subject { node, ctx, slots })
            })
            .collect::<anyhow::Result<_>>()?;
        if std::env::var_os("XDS_SCALE_SIZES").is_some() {
            for s in subjects.iter().step_by(20).take(2) {
                let r = match s.node.identity.role {
                    ProxyRole::Sidecar => build::sidecar_resources(&index, &s.node, &s.ctx),
                    ProxyRole::Gateway => build::gateway_resources(&index, &s.ctx),
                };
                for (t, m) in &r.by_type {
                    let bytes: usize = m.values().map(|r| r.body.value.len()).sum();
                    eprintln!("{}: {t:?}: {} resources, {bytes} bytes", s.node.id, m.len());
                }
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            dir,
            index,
            subjects,
        })
    }

    fn owed(&self, change: Change) -> Vec<BTreeMap<(&'static str, String), u64>> {
        let key = ServiceKey::new(mesh::NAMESPACE, mesh::service_name(change.service));
        self.subjects
            .iter()
            .map(|s| match s.node.identity.role {
                ProxyRole::Sidecar => {
                    let mut r = Resources::default();
                    let slot = s.slots.get(&key).copied();
                    build::sidecar_service_resources(
                        &self.index,
                        &s.node,
                        &s.ctx,
                        &key,
                        slot,
                        &mut r,
                    );
                    flat(&r)
                }
                ProxyRole::Gateway => flat(&build::gateway_resources(&self.index, &s.ctx)),
            })
            .collect()
    }

    /// Writes `text` (the change's file) into the shadow directory, reloads it and returns what
    /// each proxy that needs a push must end up holding (proxy index, expectation).
    pub fn apply(
        &mut self,
        number: usize,
        change: Change,
        text: &str,
    ) -> anyhow::Result<Vec<(usize, Expectation)>> {
        let before = self.owed(change);
        mesh::write_atomically(
            &mesh::service_file(&self.root, change.cluster, change.service),
            text,
        )?;
        let name = mesh::cluster_name(change.cluster);
        let outcome = self
            .dir
            .reload(ReloadScope::Clusters(BTreeSet::from([name.clone()])));
        if !outcome.clusters_changed.contains(&name) {
            anyhow::bail!("change {number}: cluster {name} did not change in the shadow directory");
        }
        let objects = self.dir.clusters()[&name]
            .objects
            .clone()
            .context("cluster unloaded")?;
        self.index.set_cluster(&ClusterId::new(&name)?, &objects)?;
        let after = self.owed(change);
        let mut out = Vec::new();
        for (proxy, (b, a)) in before.iter().zip(&after).enumerate() {
            let mut want: Vec<(u64, Option<u64>)> = a
                .iter()
                .filter(|(n, v)| b.get(*n) != Some(*v))
                .map(|((t, n), v)| (name_hash(t, n), Some(*v)))
                .collect();
            want.extend(
                b.keys()
                    .filter(|n| !a.contains_key(*n))
                    .map(|(t, n)| (name_hash(t, n), None)),
            );
            if std::env::var("XDS_SCALE_TRACE").ok() == Some(proxy.to_string()) {
                for ((t, n), v) in a.iter().filter(|(k, v)| b.get(*k) != Some(*v)) {
                    eprintln!("oracle {proxy}: {t} {n} {v:016x}");
                }
            }
            if !want.is_empty() {
                out.push((
                    proxy,
                    Expectation {
                        change: number,
                        want,
                    },
                ));
            }
        }
        Ok(out)
    }
}
