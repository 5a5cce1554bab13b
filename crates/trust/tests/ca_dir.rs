//! The CA directory layout: the root in `root/`, each cluster's intermediate in
//! `clusters/<cluster>/`, so no cluster id (not even `root` or `clusters`) can address the root's
//! directory; intermediates of the earlier `<ca-dir>/<cluster>/` layout keep working.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use causeway_model::ClusterId;
use causeway_trust::ca::{self, files, ClusterCa, RootCa};

const TD: &str = "mesh.test";

fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).expect("cluster id")
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_cluster_named_root_or_clusters_gets_its_own_directory_and_leaves_the_root_alone() {
    let tmp = tempfile::tempdir().expect("tmp");
    let clusters = [cid("root"), cid("clusters"), cid("east")];
    ca::ensure_ca_dir(tmp.path(), TD, &clusters).expect("ensure");

    let root_dir = ca::root_dir(tmp.path());
    assert_eq!(
        names(&root_dir),
        BTreeSet::from([files::ROOT_CERT.to_owned(), files::ROOT_KEY.to_owned()]),
        "nothing but the root is written into the root's directory"
    );
    let root = RootCa::load(&root_dir).expect("the root still loads");
    for c in &clusters {
        let dir = ca::find_cluster_dir(tmp.path(), c).expect("intermediate found");
        assert_eq!(dir, tmp.path().join("clusters").join(c.as_str()));
        let loaded = ClusterCa::load(&dir, c.clone(), TD).expect("loads");
        assert_eq!(loaded.cluster(), c);
        assert_eq!(loaded.trust_bundle_pem(), root.cert_pem());
    }
    // Every cluster directory is distinct from the root's, whatever its name.
    for c in &clusters {
        assert_ne!(ca::cluster_dir(tmp.path(), c), root_dir, "{c}");
    }
}

#[test]
fn intermediates_of_the_earlier_layout_are_read_in_place() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = RootCa::generate(TD, Duration::from_secs(365 * 86_400)).expect("root");
    root.write(&ca::root_dir(tmp.path())).expect("write root");
    let east = cid("east");
    let clusters_named = cid("clusters");
    // The earlier layout: <ca-dir>/<cluster>/.
    let legacy = root
        .issue_intermediate(&east, TD, Duration::from_secs(30 * 86_400))
        .expect("east");
    legacy.write(&tmp.path().join("east")).expect("legacy east");
    let legacy_clusters = root
        .issue_intermediate(&clusters_named, TD, Duration::from_secs(30 * 86_400))
        .expect("clusters");
    legacy_clusters
        .write(&tmp.path().join("clusters"))
        .expect("legacy clusters");

    let west = cid("west");
    ca::ensure_ca_dir(
        tmp.path(),
        TD,
        &[east.clone(), clusters_named.clone(), west.clone()],
    )
    .expect("ensure");
    assert_eq!(
        ca::find_cluster_dir(tmp.path(), &east),
        Some(tmp.path().join("east")),
        "the old directory is used, not replaced"
    );
    assert!(
        !ca::cluster_dir(tmp.path(), &east).exists(),
        "no second intermediate"
    );
    let loaded = ClusterCa::load(&tmp.path().join("east"), east.clone(), TD).expect("loads");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("east").join(files::CA_CERT)).expect("cert"),
        legacy.ca_cert_pem
    );
    assert_eq!(loaded.cluster(), &east);
    assert_eq!(
        ca::find_cluster_dir(tmp.path(), &clusters_named),
        Some(tmp.path().join("clusters")),
        "a legacy cluster named `clusters` still loads from <ca-dir>/clusters/"
    );
    assert_eq!(
        ca::find_cluster_dir(tmp.path(), &west),
        Some(ca::cluster_dir(tmp.path(), &west)),
        "new clusters get the current layout"
    );
    // Once the current layout has the cluster, it wins over the old directory.
    root.issue_intermediate(&east, TD, Duration::from_secs(30 * 86_400))
        .expect("new east")
        .write(&ca::cluster_dir(tmp.path(), &east))
        .expect("write new east");
    assert_eq!(
        ca::find_cluster_dir(tmp.path(), &east),
        Some(ca::cluster_dir(tmp.path(), &east))
    );
}

#[test]
fn the_root_directory_is_never_read_as_a_cluster_of_the_earlier_layout() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = RootCa::generate(TD, Duration::from_secs(365 * 86_400)).expect("root");
    let root_dir = ca::root_dir(tmp.path());
    root.write(&root_dir).expect("write root");
    // An intermediate for a cluster `root` planted in the root's directory.
    let planted = root
        .issue_intermediate(&cid("root"), TD, Duration::from_secs(30 * 86_400))
        .expect("intermediate");
    std::fs::write(root_dir.join(files::CA_CERT), &planted.ca_cert_pem).expect("plant");
    assert_eq!(ca::find_cluster_dir(tmp.path(), &cid("root")), None);
}
