//! Cluster-scoped intermediates: each cluster's intermediate carries name constraints limiting
//! DNS SANs to `<cluster>.cluster.<td>`, so its key cannot mint a certificate that passes
//! another cluster's caller-cluster check. Forged leaves are refused by `trust::verify`;
//! unconstrained intermediates of earlier versions are re-issued where the root is at hand.

use std::path::Path;
use std::time::Duration;

use causeway_model::{ClusterId, SpiffeId};
use causeway_trust::ca::{self, files, ClusterCa, ClusterCaFiles, RootCa};
use causeway_trust::verify::{self, VerifyError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;

const TD: &str = "mesh.test";
const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).expect("cluster id")
}

/// The root's key, as an attacker holding the root directory (or a test) reads it.
fn root_key(root: &RootCa, dir: &Path) -> KeyPair {
    root.write(dir).expect("write root");
    KeyPair::from_pem(&std::fs::read_to_string(dir.join(files::ROOT_KEY)).expect("root key"))
        .expect("parse root key")
}

/// An intermediate for `cluster` signed by the root, like those of earlier versions: no name
/// constraints.
fn unconstrained_intermediate(root: &RootCa, key: &KeyPair, cluster: &str) -> ClusterCaFiles {
    let issuer = Issuer::from_ca_cert_pem(root.cert_pem(), key).expect("root issuer");
    let ca_key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, TD);
    dn.push(DnType::OrganizationalUnitName, cluster);
    dn.push(DnType::CommonName, format!("old intermediate of {cluster}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(30);
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&ca_key, &issuer).expect("sign");
    ClusterCaFiles {
        cert_chain_pem: format!("{}{}", cert.pem(), root.cert_pem()),
        ca_cert_pem: cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        root_cert_pem: root.bundle_pem().to_owned(),
    }
}

/// A workload leaf signed directly with an intermediate's key (bypassing the CA's profile),
/// naming `dns` as its cluster SAN. Returns the chain, leaf first.
fn forge_leaf(intermediate: &ClusterCaFiles, dns: &str) -> Vec<CertificateDer<'static>> {
    let key = KeyPair::from_pem(&intermediate.ca_key_pem).expect("intermediate key");
    let issuer = Issuer::from_ca_cert_pem(&intermediate.ca_cert_pem, key).expect("issuer");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(
            SpiffeId::new(TD, "shop", "frontend")
                .to_string()
                .try_into()
                .expect("uri"),
        ),
        SanType::DnsName(dns.to_owned().try_into().expect("dns")),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::hours(1);
    params.use_authority_key_identifier_extension = true;
    let leaf = params.signed_by(&leaf_key, &issuer).expect("sign leaf");
    let mut chain = vec![leaf.der().clone()];
    chain.extend(causeway_trust::pem_certs(&intermediate.ca_cert_pem));
    chain
}

#[test]
fn a_leaf_forged_with_another_clusters_san_is_refused_by_verify() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let alpha = root
        .issue_intermediate(&cid("alpha"), TD, YEAR)
        .expect("alpha");
    let bundle = root.bundle_pem();
    let now = UnixTime::now();

    // The forging works: with alpha's own SAN the leaf verifies, as alpha's.
    let own = forge_leaf(&alpha, &cid("alpha").certificate_san(TD));
    let peer = verify::verify_chain(&own, bundle, TD, now).expect("alpha's own SAN verifies");
    assert_eq!(peer.cluster, Some(cid("alpha")));

    // Alpha's key minting beta's SAN: refused, whatever else the leaf names.
    let forged = forge_leaf(&alpha, &cid("beta").certificate_san(TD));
    assert_eq!(
        verify::verify_chain(&forged, bundle, TD, now),
        Err(VerifyError::NameConstraint)
    );
    // A name below another cluster's SAN, or anything outside the trust domain, too.
    for dns in [
        "x.beta.cluster.mesh.test",
        "alpha.cluster.other.test",
        "example.com",
    ] {
        assert_eq!(
            verify::verify_chain(&forge_leaf(&alpha, dns), bundle, TD, now),
            Err(VerifyError::NameConstraint),
            "{dns}"
        );
    }
    // The server-side verifier (webpki's trust-anchor check) refuses it as well.
    let server = verify::SpiffeServerVerifier::new(bundle, TD, Vec::new()).expect("verifier");
    let name = ServerName::try_from("beta.cluster.mesh.test").expect("name");
    assert!(server
        .verify_server_cert(&forged[0], &forged[1..], &name, &[], now)
        .is_err());
    assert!(server
        .verify_server_cert(&own[0], &own[1..], &name, &[], now)
        .is_ok());
}

#[test]
fn without_the_constraints_the_forgery_would_pass_as_the_other_cluster() {
    // What the constraints prevent: an intermediate of an earlier version, without them, lets
    // alpha's key pose as beta.
    let tmp = tempfile::tempdir().expect("tmp");
    let root = RootCa::generate(TD, YEAR).expect("root");
    let key = root_key(&root, tmp.path());
    let old_alpha = unconstrained_intermediate(&root, &key, "alpha");
    let forged = forge_leaf(&old_alpha, &cid("beta").certificate_san(TD));
    let peer = verify::verify_chain(&forged, root.bundle_pem(), TD, UnixTime::now())
        .expect("an unconstrained intermediate signs anything");
    assert_eq!(peer.cluster, Some(cid("beta")));
    // It still loads (leaves must keep working) but is reported as unconstrained.
    let ca = ClusterCa::from_files(&old_alpha, cid("alpha"), TD).expect("loads");
    assert!(!ca.is_name_constrained());
}

#[test]
fn intermediates_are_constrained_to_their_own_cluster() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let alpha = root
        .issue_intermediate(&cid("alpha"), TD, YEAR)
        .expect("alpha");
    assert!(ca::chain_is_cluster_constrained(
        &alpha.ca_cert_pem,
        &cid("alpha"),
        TD
    ));
    assert!(!ca::chain_is_cluster_constrained(
        &alpha.ca_cert_pem,
        &cid("beta"),
        TD
    ));
    let ca = ClusterCa::from_files(&alpha, cid("alpha"), TD).expect("loads");
    assert!(ca.is_name_constrained());
    // Alpha's intermediate put in place of beta's: its own self-check refuses it.
    let e = ClusterCa::from_files(&alpha, cid("beta"), TD).expect_err("wrong cluster");
    assert!(e.to_string().contains("do not verify"), "{e}");
}

#[test]
fn ensure_ca_dir_reissues_unconstrained_intermediates_of_its_root_and_old_leaves_stay_valid() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca_dir = tmp.path().join("ca");
    let root = RootCa::generate(TD, YEAR).expect("root");
    let key = root_key(&root, &ca::root_dir(&ca_dir));
    let (alpha, east, foreign) = (cid("alpha"), cid("east"), cid("foreign"));
    // alpha: an old intermediate in the current layout; east: one in the earlier layout.
    let old_alpha = unconstrained_intermediate(&root, &key, "alpha");
    old_alpha
        .write(&ca::cluster_dir(&ca_dir, &alpha))
        .expect("write alpha");
    let old_east = unconstrained_intermediate(&root, &key, "east");
    old_east.write(&ca_dir.join("east")).expect("write east");
    // foreign: an operator's intermediate from another root; not ours to replace.
    let other_root = RootCa::generate(TD, YEAR).expect("other root");
    let other_key = root_key(&other_root, &tmp.path().join("other-root"));
    let foreign_files = unconstrained_intermediate(&other_root, &other_key, "foreign");
    foreign_files
        .write(&ca::cluster_dir(&ca_dir, &foreign))
        .expect("write foreign");
    // A leaf the old alpha intermediate issued before the upgrade.
    let old_alpha_ca = ClusterCa::from_files(&old_alpha, alpha.clone(), TD).expect("old alpha");
    let leaf_key = causeway_trust::issue::WorkloadKey::generate().expect("key");
    let csr = leaf_key
        .csr_pem(&SpiffeId::new(TD, "shop", "web"))
        .expect("csr");
    let request = causeway_trust::issue::parse_csr(&csr).expect("parse csr");
    let old_leaf = old_alpha_ca
        .sign(&request, Duration::from_secs(3600))
        .expect("old leaf");

    ca::ensure_ca_dir(&ca_dir, TD, &[alpha.clone(), east.clone(), foreign.clone()])
        .expect("ensure");

    for c in [&alpha, &east] {
        let dir = ca::find_cluster_dir(&ca_dir, c).expect("intermediate");
        assert_eq!(dir, ca::cluster_dir(&ca_dir, c), "{c}: current layout");
        let loaded = ClusterCa::load(&dir, c.clone(), TD).expect("loads");
        assert!(
            loaded.is_name_constrained(),
            "{c}: re-issued with constraints"
        );
        assert_eq!(loaded.trust_bundle_pem(), root.bundle_pem());
    }
    assert_ne!(
        std::fs::read_to_string(ca::cluster_dir(&ca_dir, &alpha).join(files::CA_CERT))
            .expect("cert"),
        old_alpha.ca_cert_pem
    );
    assert!(
        !ca_dir.join("east").exists(),
        "the earlier layout's directory was retired"
    );
    // The old directories are kept, without their keys; no lock is left behind.
    let clusters = std::fs::read_dir(ca_dir.join(ca::layout::CLUSTERS_DIR))
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    for c in ["alpha", "east"] {
        let retired: Vec<_> = clusters
            .iter()
            .filter(|n| n.starts_with(&format!(".{c}.retired-")))
            .collect();
        assert_eq!(retired.len(), 1, "{c}: {clusters:?}");
        let dir = ca_dir.join(ca::layout::CLUSTERS_DIR).join(retired[0]);
        assert!(dir.join(files::CA_CERT).exists());
        assert!(
            !dir.join(files::CA_KEY).exists(),
            "{c}: the old key is gone"
        );
    }
    assert!(
        clusters
            .iter()
            .all(|n| !n.ends_with(".lock") && !n.contains(".new-")),
        "{clusters:?}"
    );
    // The foreign intermediate is untouched.
    assert_eq!(
        std::fs::read_to_string(ca::cluster_dir(&ca_dir, &foreign).join(files::CA_CERT))
            .expect("foreign cert"),
        foreign_files.ca_cert_pem
    );
    // The old leaf still verifies against the mesh root until it expires.
    let peer = verify::verify_chain(
        &causeway_trust::pem_certs(&old_leaf.chain_pem),
        root.bundle_pem(),
        TD,
        UnixTime::now(),
    )
    .expect("old leaf still valid");
    assert_eq!(peer.cluster, Some(alpha.clone()));

    // A second start changes nothing.
    let before = std::fs::read_to_string(ca::cluster_dir(&ca_dir, &alpha).join(files::CA_CERT))
        .expect("cert");
    ca::ensure_ca_dir(&ca_dir, TD, &[alpha.clone(), east, foreign]).expect("ensure again");
    assert_eq!(
        std::fs::read_to_string(ca::cluster_dir(&ca_dir, &alpha).join(files::CA_CERT))
            .expect("cert"),
        before
    );
}
