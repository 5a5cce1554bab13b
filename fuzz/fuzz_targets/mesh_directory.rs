//! The mesh-directory parser on arbitrary text: the document splitter and every kind (`Mesh`,
//! `Cluster` in mesh.yaml; `Service`, `WorkloadEntry`, `EndpointSlice`, `ServiceExport`,
//! `AuthorizationPolicy` in a cluster's files), then what `causeway check` does with the result
//! (index, mesh-wide checks). Errors are expected; a panic is a bug.
//!
//! Input: the text of `mesh.yaml`, a NUL byte, the text of a cluster file. Without a NUL both
//! parsers get the whole text. Files are read as UTF-8 (`read_to_string`), so other bytes are
//! never parsed.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use causeway_discovery::{check_mesh, MeshIndex};
use causeway_model::ClusterObjects;
use causeway_registry::{parse_cluster_documents, parse_mesh_documents};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (mesh_text, cluster_text) = text.split_once('\0').unwrap_or((text, text));

    let mesh = match parse_mesh_documents(Path::new("mesh.yaml"), mesh_text) {
        Ok(mesh) => Some(Arc::new(mesh)),
        Err(errors) => {
            assert!(!errors.is_empty(), "refused mesh.yaml without an error");
            for e in &errors {
                let _ = e.to_string();
            }
            None
        }
    };

    let mut objects = ClusterObjects::default();
    let mut errors = Vec::new();
    parse_cluster_documents(
        Path::new("clusters/alpha/objects.yaml"),
        cluster_text,
        &mut objects,
        &mut errors,
    );
    for e in &errors {
        let _ = e.to_string();
    }

    // The fuzzed objects as cluster alpha of the example mesh, and as the first cluster of the
    // fuzzed mesh when it parsed.
    let example = causeway_fuzz::example();
    let mut clusters = example.objects.clone();
    if let Some(first) = clusters.keys().next().cloned() {
        clusters.insert(first, objects.clone());
    }
    let index = MeshIndex::build(Arc::clone(&example.mesh), clusters.iter());
    for d in check_mesh(&example.mesh, &clusters, &index) {
        let _ = d.to_string();
    }
    if let Some(mesh) = mesh {
        let mut clusters = BTreeMap::new();
        if let Some(first) = mesh.clusters.first() {
            clusters.insert(first.id.clone(), objects);
        }
        let index = MeshIndex::build(Arc::clone(&mesh), clusters.iter());
        for d in check_mesh(&mesh, &clusters, &index) {
            let _ = d.to_string();
        }
    }
});
