//! Static bootstraps: a proxy's control-plane resources written as one (`static_bootstrap_of`),
//! encoded, decoded and converted back (`static_snapshot`) give the configuration the control
//! plane's resources give, with EDS inlined and the agent's secrets as files; what a static
//! proxy cannot honour is refused naming the field; files other than `.pb` are refused.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use causeway_xds::bootstrap::{
    static_bootstrap_of, CertificateFiles, EnvoyResources, StaticBootstrapError,
};
use causeway_xds::dataplane::bootstrap::{BootstrapFileError, StaticNode};
use causeway_xds::dataplane::tls::{CertificateSource, TrustedCaSource};
use causeway_xds::dataplane::{
    cluster_config, listener_config, load_assignment, read_static_bootstrap, static_snapshot,
    ClusterConfig, EndpointSource, ListenerConfig,
};
use causeway_xds::resources::Resources;
use common::{example, index_of};
use envoy_types::pb::envoy::config::bootstrap::v3::{self as bs, Bootstrap};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::google::protobuf::BoolValue;
use prost::Message;

const ADMIN: &str = "127.0.0.1:15999";

fn files() -> CertificateFiles {
    CertificateFiles {
        certificate_chain: "/certs/cert-chain.pem".into(),
        private_key: "/certs/key.pem".into(),
        trusted_ca: "/certs/root-cert.pem".into(),
    }
}

fn node(id: &str, cluster: &str) -> core::Node {
    core::Node {
        id: id.into(),
        cluster: cluster.into(),
        user_agent_name: "causeway-proxy".into(),
        ..Default::default()
    }
}

fn gamma_gateway() -> Resources {
    common::gateway_of(&index_of(&example()), "gamma")
}

fn decoded(r: &Resources) -> EnvoyResources {
    EnvoyResources::decode(r).expect("decodable")
}

/// `r` as a static bootstrap, through its binary encoding.
fn through_pb(r: &EnvoyResources, n: core::Node) -> Bootstrap {
    let admin: SocketAddr = ADMIN.parse().expect("addr");
    let b = static_bootstrap_of(r, n, admin, &files()).expect("static bootstrap");
    Bootstrap::decode(b.encode_to_vec().as_slice()).expect("decode")
}

/// The agent's secrets as the files of [`files`], checked to have been the agent's.
fn file_sources(cert: &mut CertificateSource, ca: &mut TrustedCaSource) {
    assert_eq!(
        *cert,
        CertificateSource::Sds {
            name: "default".into()
        }
    );
    assert_eq!(
        *ca,
        TrustedCaSource::Sds {
            name: "ROOTCA".into()
        }
    );
    let f = files();
    *cert = CertificateSource::Files {
        chain_path: f.certificate_chain,
        key_path: f.private_key,
    };
    *ca = TrustedCaSource::File { path: f.trusted_ca };
}

/// What the control plane's listeners convert to, the agent's secrets as files.
fn expected_listeners(r: &EnvoyResources) -> Vec<(String, ListenerConfig)> {
    r.listeners
        .iter()
        .map(|l| {
            let mut cfg = listener_config(l).expect("the control plane's listener converts");
            for chain in cfg
                .filter_chains
                .iter_mut()
                .chain(cfg.default_chain.as_mut())
            {
                if let Some(t) = &mut chain.tls {
                    file_sources(&mut t.server_certificate, &mut t.trusted_ca);
                }
            }
            (cfg.name.clone(), cfg)
        })
        .collect()
}

/// What the control plane's clusters convert to, EDS assignments inlined and the agent's secrets
/// as files.
fn expected_clusters(r: &EnvoyResources) -> Vec<(String, ClusterConfig)> {
    r.clusters
        .iter()
        .map(|c| {
            let mut cfg = cluster_config(c).expect("the control plane's cluster converts");
            if let EndpointSource::Eds { service_name } = &cfg.endpoints {
                let la = r
                    .assignments
                    .iter()
                    .find(|la| la.cluster_name == *service_name)
                    .expect("an assignment for every EDS cluster");
                cfg.endpoints = EndpointSource::Static(load_assignment(la).expect("converts"));
            }
            if let Some(t) = &mut cfg.upstream_tls {
                file_sources(&mut t.client_certificate, &mut t.trusted_ca);
            }
            (cfg.name.clone(), cfg)
        })
        .collect()
}

fn assert_round_trips(r: &EnvoyResources, id: &str, cluster: &str) {
    let got = static_snapshot(&through_pb(r, node(id, cluster))).expect("accepted");
    assert_eq!(got.admin, Some(ADMIN.parse().expect("addr")));
    assert_eq!(
        got.node,
        StaticNode {
            id: id.into(),
            cluster: cluster.into()
        }
    );
    let s = &got.snapshot;
    assert_eq!(s.listeners, expected_listeners(r).into_iter().collect());
    assert_eq!(s.clusters, expected_clusters(r).into_iter().collect());
    assert!(s.eds_names().is_empty() && s.assignments.is_empty());
    for name in s.clusters.keys() {
        assert!(s.endpoints_of(name).is_some(), "{name}: endpoints inline");
    }
}

#[test]
fn a_gateways_resources_round_trip_through_a_static_bootstrap() {
    let r = decoded(&gamma_gateway());
    assert!(!r.listeners.is_empty() && !r.clusters.is_empty() && !r.assignments.is_empty());
    assert_round_trips(&r, "gateway~gamma~causeway-system~eastwest-0", "gamma");
}

#[test]
fn sidecars_resources_round_trip_with_their_mtls_from_files() {
    let index = index_of(&example());
    for (cluster, workload) in [("alpha", "client"), ("gamma", "greeter-gamma-1")] {
        let r = decoded(&common::sidecar_of(&index, cluster, workload));
        let id = format!("sidecar~{cluster}~demo~{workload}");
        assert_round_trips(&r, &id, cluster);
    }
}

#[test]
fn the_file_is_the_bootstrap_the_proxy_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.pb");
    let b = through_pb(&decoded(&gamma_gateway()), node("gw", "gamma"));
    std::fs::write(&path, b.encode_to_vec()).expect("write");
    let read = read_static_bootstrap(&path).expect("read");
    assert_eq!(read, static_snapshot(&b).expect("accepted"));
}

/// The gateway's static bootstrap, for the refusals to change.
fn gateway_bootstrap() -> Bootstrap {
    through_pb(&decoded(&gamma_gateway()), node("gw", "gamma"))
}

fn resources(b: &mut Bootstrap) -> &mut bs::bootstrap::StaticResources {
    b.static_resources.as_mut().expect("static resources")
}

fn refused(b: &Bootstrap) -> causeway_xds::dataplane::ConfigError {
    static_snapshot(b).expect_err("refused")
}

#[test]
fn what_a_static_proxy_cannot_honour_is_refused_naming_the_field() {
    let mut b = gateway_bootstrap();
    b.dynamic_resources = Some(Default::default());
    let e = refused(&b);
    assert_eq!(
        (e.resource.as_str(), e.field.as_str()),
        ("Bootstrap", "dynamic_resources")
    );
    assert!(e.reason.contains("no control plane"), "{e}");

    let mut b = gateway_bootstrap();
    b.layered_runtime = Some(Default::default());
    b.layered_runtime
        .as_mut()
        .expect("set")
        .layers
        .push(Default::default());
    assert_eq!(refused(&b).field, "layered_runtime");

    let mut b = gateway_bootstrap();
    b.overload_manager = Some(Default::default());
    b.overload_manager.as_mut().expect("set").refresh_interval = Some(Default::default());
    assert_eq!(refused(&b).field, "overload_manager");

    let mut b = gateway_bootstrap();
    b.stats_sinks.push(Default::default());
    assert_eq!(refused(&b).field, "stats_sinks");

    let mut b = gateway_bootstrap();
    b.cluster_manager = Some(bs::ClusterManager {
        local_cluster_name: "gamma".into(),
        ..Default::default()
    });
    assert_eq!(refused(&b).field, "cluster_manager.local_cluster_name");

    let mut b = gateway_bootstrap();
    if let Some(a) = &mut b.admin {
        a.allow_paths.push(Default::default());
    }
    assert_eq!(refused(&b).field, "admin.allow_paths");

    let mut b = gateway_bootstrap();
    resources(&mut b).secrets.push(tls::Secret {
        name: "default".into(),
        r#type: None,
    });
    let e = refused(&b);
    assert_eq!(e.field, "static_resources.secrets[0]");
    assert!(e.reason.contains("filename"), "{e}");
}

#[test]
fn eds_and_sds_need_a_control_plane_and_are_refused() {
    let r = decoded(&gamma_gateway());
    let mut b = gateway_bootstrap();
    // The control plane's EDS cluster, as it is (not a pod's own static one).
    let eds = r
        .clusters
        .iter()
        .position(|c| c.eds_cluster_config.is_some())
        .expect("an EDS cluster");
    resources(&mut b).clusters[eds] = r.clusters[eds].clone();
    let e = refused(&b);
    assert_eq!(e.resource, format!("Cluster {}", r.clusters[eds].name));
    assert_eq!(e.field, format!("static_resources.clusters[{eds}].type"));
    assert!(e.reason.contains("EDS needs a control plane"), "{e}");

    // A STATIC cluster whose mTLS still comes from the agent.
    let index = index_of(&example());
    let sidecar = decoded(&common::sidecar_of(&index, "alpha", "client"));
    let mut b = through_pb(&sidecar, node("client", "alpha"));
    let i = sidecar
        .clusters
        .iter()
        .position(|c| c.transport_socket.is_some())
        .expect("a cluster with mTLS");
    resources(&mut b).clusters[i].transport_socket = sidecar.clusters[i].transport_socket.clone();
    let e = refused(&b);
    assert_eq!(
        e.field,
        format!("static_resources.clusters[{i}].transport_socket.typed_config.common_tls_context")
    );
    assert!(e.reason.contains("SDS secret \"default\""), "{e}");
}

#[test]
fn errors_inside_resources_are_placed_from_the_bootstraps_root() {
    let mut b = gateway_bootstrap();
    resources(&mut b).listeners[0].freebind = Some(BoolValue { value: true });
    let e = refused(&b);
    assert_eq!(e.resource, "Listener gateway|127.3.255.1:15443");
    assert_eq!(e.field, "static_resources.listeners[0].freebind");

    let mut b = gateway_bootstrap();
    let first = resources(&mut b).clusters[0].clone();
    resources(&mut b).clusters.push(first);
    let last = resources(&mut b).clusters.len() - 1;
    assert_eq!(
        refused(&b).field,
        format!("static_resources.clusters[{last}].name")
    );
}

#[test]
#[allow(deprecated)] // access_log_path: still read, and accepted as /dev/null
fn settings_that_change_only_envoys_bookkeeping_are_accepted() {
    let mut b = gateway_bootstrap();
    b.enable_dispatcher_stats = true;
    b.stats_config = Some(Default::default());
    b.stats_flush_interval = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 5,
        nanos: 0,
    });
    b.cluster_manager = Some(bs::ClusterManager {
        enable_deferred_cluster_creation: true,
        ..Default::default()
    });
    if let Some(a) = &mut b.admin {
        a.access_log_path = "/dev/null".into();
    }
    if let Some(n) = &mut b.node {
        n.locality = Some(core::Locality {
            region: "r".into(),
            ..Default::default()
        });
    }
    let got = static_snapshot(&b).expect("accepted");
    assert_eq!(
        got,
        static_snapshot(&gateway_bootstrap()).expect("accepted")
    );

    // No admin section: no admin server, as in Envoy.
    b.admin = None;
    assert_eq!(static_snapshot(&b).expect("accepted").admin, None);
}

#[test]
fn resources_without_a_file_for_their_secret_or_endpoints_are_refused() {
    let mut r = decoded(&gamma_gateway());
    let missing = r.assignments.remove(0).cluster_name;
    let admin = ADMIN.parse().expect("addr");
    let e = static_bootstrap_of(&r, node("gw", "gamma"), admin, &files()).expect_err("refused");
    assert!(
        matches!(&e, StaticBootstrapError::NoAssignment { service_name, .. } if *service_name == missing),
        "{e}"
    );

    let index = index_of(&example());
    let mut r = decoded(&common::sidecar_of(&index, "alpha", "client"));
    let c = r
        .clusters
        .iter_mut()
        .find(|c| c.transport_socket.is_some())
        .expect("a cluster with mTLS");
    let name = c.name.clone();
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) = c
        .transport_socket
        .as_mut()
        .and_then(|t| t.config_type.as_mut())
    else {
        panic!("typed config")
    };
    let mut u = tls::UpstreamTlsContext::decode(any.value.as_slice()).expect("decode");
    u.common_tls_context
        .as_mut()
        .expect("common")
        .tls_certificate_sds_secret_configs[0]
        .name = "other".into();
    any.value = u.encode_to_vec();
    let e = static_bootstrap_of(&r, node("client", "alpha"), admin, &files()).expect_err("refused");
    assert_eq!(
        e,
        StaticBootstrapError::UnknownSecret {
            resource: format!("Cluster {name}"),
            field: "transport_socket.typed_config.common_tls_context\
                    .tls_certificate_sds_secret_configs[0].name"
                .into(),
            name: "other".into(),
        }
    );
}

#[test]
fn only_binary_bootstraps_are_read_and_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = dir.path().join("envoy.yaml");
    std::fs::write(&yaml, "static_resources: {}\n").expect("write");
    let e = read_static_bootstrap(&yaml).expect_err("YAML");
    assert!(matches!(e, BootstrapFileError::NotBinary { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with(&yaml.display().to_string()), "{msg}");
    assert!(
        msg.contains("*.pb") && msg.contains("encode_to_vec"),
        "{msg}"
    );

    let missing: PathBuf = dir.path().join("missing.pb");
    let e = read_static_bootstrap(&missing).expect_err("missing");
    assert!(matches!(e, BootstrapFileError::Read { .. }), "{e}");
    assert!(
        e.to_string().contains(&*missing.display().to_string()),
        "{e}"
    );

    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let garbage = write("garbage.pb", &[0xff, 0xff, 0xff]);
    let e = read_static_bootstrap(&garbage).expect_err("garbage");
    assert!(matches!(e, BootstrapFileError::Undecodable { .. }), "{e}");

    // Field 1000 (varint 1): unknown to this Envoy API, which would silently skip it.
    let mut bytes = gateway_bootstrap().encode_to_vec();
    bytes.extend_from_slice(&[0xc0, 0x3e, 0x01]);
    let e = read_static_bootstrap(&write("newer.pb", &bytes)).expect_err("unknown field");
    assert!(matches!(e, BootstrapFileError::UnknownFields { .. }), "{e}");

    let mut b = gateway_bootstrap();
    b.watchdogs = Some(bs::Watchdogs {
        main_thread_watchdog: Some(Default::default()),
        worker_watchdog: None,
    });
    let path = write("watchdogs.pb", &b.encode_to_vec());
    let e = read_static_bootstrap(&path).expect_err("watchdogs");
    assert!(
        e.to_string()
            .starts_with(&format!("{}: Bootstrap: watchdogs: ", path.display())),
        "{e}"
    );
}

#[test]
fn an_empty_static_bootstrap_is_a_proxy_with_nothing_to_serve() {
    let got = static_snapshot(&Bootstrap::default()).expect("accepted");
    assert!(got.snapshot.listeners.is_empty() && got.snapshot.clusters.is_empty());
    assert_eq!(got.admin, None);
}
