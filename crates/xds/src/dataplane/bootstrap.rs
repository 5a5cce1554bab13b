//! A static Envoy bootstrap → what the Causeway proxy runs without a control plane: the
//! listeners and clusters of `static_resources` as a [`Snapshot`], the admin address and the
//! node. The same binary file (`x.pb`) configures Envoy (`envoy -c x.pb`) and the proxy, so
//! differential tests and benchmarks run both data planes on exactly the same configuration.
//!
//! Every field of the bootstrap is named below. Without a control plane there is no EDS and no
//! SDS: clusters are STATIC with their endpoints inline, and TLS names PEM files
//! (`tls_certificates`, `validation_context.trusted_ca`). Settings of Envoy the proxy does not
//! have (runtime, overload manager, watchdogs, stats sinks, tracing, extensions…) are refused;
//! settings that change only Envoy's statistics, logs or internal bookkeeping are accepted and
//! say why where they are destructured.
//!
//! Errors about the bootstrap itself name resource `Bootstrap`; errors inside a listener or a
//! cluster name it (`Cluster outbound|80||echo…`) and give the field's path from the
//! bootstrap's root (`static_resources.clusters[3].type`), so it can be found in the file.

// Deprecated fields are destructured too: set, they are refused like any other.
#![allow(deprecated)]

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use prost::Message;

use super::check::{socket_address, unsupported, At};
use super::tls::{CertificateSource, TrustedCaSource};
use super::{cluster_config, listener_config, ConfigError, EndpointSource, Snapshot};

/// The resource named by errors about the bootstrap's own fields.
const BOOTSTRAP: &str = "Bootstrap";

/// What a static bootstrap gives the proxy.
#[derive(Debug, serde::Serialize, Clone, PartialEq)]
pub struct StaticBootstrap {
    /// Listeners and clusters (all static: no EDS assignments to wait for).
    pub snapshot: Snapshot,
    /// `admin.address`; `None`: no admin server (Envoy's rule when it is unset).
    pub admin: Option<SocketAddr>,
    pub node: StaticNode,
}

/// The bootstrap's node: without a control plane only a name for logs and the admin API.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq, Default)]
pub struct StaticNode {
    pub id: String,
    pub cluster: String,
}

/// Why a static bootstrap file was not loaded; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapFileError {
    #[error(
        "{}: the Causeway proxy reads static bootstraps in binary protobuf form only, from a \
         file named *.pb (Envoy reads the same file with `envoy -c FILE.pb`); YAML and JSON \
         would need Envoy's proto descriptors. Write one with \
         `causeway_xds::bootstrap::static_bootstrap_of(..).encode_to_vec()`, or from text \
         format with `protoc --encode=envoy.config.bootstrap.v3.Bootstrap` over Envoy's API \
         protos",
        path.display()
    )]
    NotBinary { path: PathBuf },
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a binary envoy.config.bootstrap.v3.Bootstrap: {source}", path.display())]
    Undecodable {
        path: PathBuf,
        source: prost::DecodeError,
    },
    /// prost skips fields it does not know; a file that shrinks when re-encoded had some, and
    /// the proxy would silently ignore them.
    #[error(
        "{}: {read} bytes, of which the Causeway proxy understands {understood}: the file has \
         fields unknown to its Envoy API version (a newer Envoy's?), or is not canonically \
         encoded",
        path.display()
    )]
    UnknownFields {
        path: PathBuf,
        read: usize,
        understood: usize,
    },
    #[error("{}: {source}", path.display())]
    Config { path: PathBuf, source: ConfigError },
}

/// Reads and converts the static bootstrap at `path`: binary protobuf (`*.pb`) only, as the
/// proxy has no proto3-JSON mapping for Envoy's messages (envoy-types exports no descriptors).
pub fn read_static_bootstrap(path: &Path) -> Result<StaticBootstrap, BootstrapFileError> {
    let path_buf = || path.to_path_buf();
    if path.extension() != Some(OsStr::new("pb")) {
        return Err(BootstrapFileError::NotBinary { path: path_buf() });
    }
    let bytes = std::fs::read(path).map_err(|source| BootstrapFileError::Read {
        path: path_buf(),
        source,
    })?;
    let b = bootstrap::Bootstrap::decode(bytes.as_slice()).map_err(|source| {
        BootstrapFileError::Undecodable {
            path: path_buf(),
            source,
        }
    })?;
    // Unknown fields of nested messages count too; only `Any` payloads (typed configs) are
    // kept as bytes, and their conversions decode them.
    let understood = b.encoded_len();
    if understood != bytes.len() {
        return Err(BootstrapFileError::UnknownFields {
            path: path_buf(),
            read: bytes.len(),
            understood,
        });
    }
    static_snapshot(&b).map_err(|source| BootstrapFileError::Config {
        path: path_buf(),
        source,
    })
}

/// Converts a static bootstrap (see the module's documentation for what is refused).
pub fn static_snapshot(b: &bootstrap::Bootstrap) -> Result<StaticBootstrap, ConfigError> {
    let at = At::resource(BOOTSTRAP);
    #[rustfmt::skip]
    let bootstrap::Bootstrap {
        node, static_resources, admin, cluster_manager, dynamic_resources,
        // xdstp:// context parameters and authorities: only used in requests to a control
        // plane, and a static bootstrap has none (`dynamic_resources` is refused).
        node_context_params: _,
        // Statistics only: how Envoy names, creates, flushes and evicts its stats, with no sink
        // to flush to (`stats_sinks` is refused). The proxy exports its own metrics.
        stats_config: _, deferred_stat_options: _, stats_flush_interval: _, stats_flush: _,
        stats_eviction: _, enable_dispatcher_stats: _, stats_server_version_override: _,
        // DNS resolution serves only DNS-typed clusters, which the cluster conversion refuses.
        use_tcp_for_dns_lookups: _, dns_resolution_config: _, typed_dns_resolver_config: _,
        // Envoy's own bookkeeping: header map layout, Perfetto output, the format of its log,
        // the cache of gRPC clients (for services the proxy would refuse anyway).
        inline_headers: _, perf_tracing_file_path: _, application_log_config: _,
        grpc_async_client_manager_config: _,
        hds_config, flags_path, stats_sinks, watchdog, watchdogs, tracing, layered_runtime,
        overload_manager, header_prefix, bootstrap_extensions, fatal_actions, config_sources,
        default_config_source, default_socket_interface, certificate_provider_instances,
        default_regex_engine, xds_delegate_extension, xds_config_tracker_extension,
        listener_manager, memory_allocator_manager, enable_worker_cpu_affinity,
    } = b;
    if dynamic_resources.is_some() {
        return Err(at.field("dynamic_resources").error(
            "a static bootstrap has no control plane (leave it unset; for xDS run `causeway \
             proxy --xds ADDRESS`)",
        ));
    }
    // hds_config and config sources need a control plane; the rest are Envoy features the proxy
    // does not have (its connection limit and worker model are its own, not configurable).
    unsupported!(
        at,
        hds_config,
        flags_path,
        stats_sinks,
        watchdog,
        watchdogs,
        tracing,
        layered_runtime,
        overload_manager,
        header_prefix,
        bootstrap_extensions,
        fatal_actions,
        config_sources,
        default_config_source,
        default_socket_interface,
        certificate_provider_instances,
        default_regex_engine,
        xds_delegate_extension,
        xds_config_tracker_extension,
        listener_manager,
        memory_allocator_manager,
        enable_worker_cpu_affinity,
    );
    cluster_manager_defaults(&at, cluster_manager)?;
    Ok(StaticBootstrap {
        admin: admin_address(&at, admin)?,
        node: static_node(node),
        snapshot: static_resources_snapshot(&at, static_resources)?,
    })
}

fn static_node(n: &Option<core::Node>) -> StaticNode {
    let Some(n) = n else {
        return StaticNode::default();
    };
    #[rustfmt::skip]
    let core::Node {
        id, cluster,
        // What a node tells a management server about itself; without one, descriptive only.
        // The locality would matter for zone-aware routing, which needs
        // `cluster_manager.local_cluster_name` (refused).
        metadata: _, dynamic_parameters: _, locality: _, user_agent_name: _,
        user_agent_version_type: _, extensions: _, client_features: _, listening_addresses: _,
    } = n;
    StaticNode {
        id: id.clone(),
        cluster: cluster.clone(),
    }
}

/// `cluster_manager` (`at` is the bootstrap): only its defaults.
fn cluster_manager_defaults(
    at: &At<'_>,
    m: &Option<bootstrap::ClusterManager>,
) -> Result<(), ConfigError> {
    let Some(m) = m else {
        return Ok(());
    };
    let at = at.field("cluster_manager");
    #[rustfmt::skip]
    let bootstrap::ClusterManager {
        local_cluster_name, outlier_detection, upstream_bind_config, load_stats_config,
        // When Envoy builds a cluster's state (at first use instead of at start): memory only.
        enable_deferred_cluster_creation: _,
    } = m;
    unsupported!(
        at,
        local_cluster_name,
        outlier_detection,
        upstream_bind_config,
        load_stats_config,
    );
    Ok(())
}

/// `admin` (`at` is the bootstrap): its address, if any.
fn admin_address(
    at: &At<'_>,
    a: &Option<bootstrap::Admin>,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(a) = a else {
        return Ok(None);
    };
    let at = at.field("admin");
    #[rustfmt::skip]
    let bootstrap::Admin {
        address, access_log_path,
        // Where Envoy's CPU profiler writes when asked to over the admin API, which the proxy's
        // admin API does not offer.
        profile_path: _,
        // Envoy has a global connection limit only with the overload manager (refused).
        ignore_global_conn_limit: _,
        access_log, socket_options, allow_paths,
    } = a;
    // `allow_paths` restricts the admin API: a promise the proxy would not keep.
    unsupported!(at, access_log, socket_options, allow_paths);
    if !access_log_path.is_empty() && access_log_path != "/dev/null" {
        return Err(at
            .field("access_log_path")
            .error("the Causeway proxy writes no admin access log (leave it unset or /dev/null)"));
    }
    address
        .as_ref()
        .map(|_| socket_address(&at.field("address"), address))
        .transpose()
}

/// `static_resources` (`at` is the bootstrap) as a snapshot, names unique as Envoy requires.
fn static_resources_snapshot(
    at: &At<'_>,
    s: &Option<bootstrap::bootstrap::StaticResources>,
) -> Result<Snapshot, ConfigError> {
    let mut snapshot = Snapshot {
        // The first and only configuration this proxy serves.
        generation: 1,
        ..Snapshot::default()
    };
    let Some(bootstrap::bootstrap::StaticResources {
        listeners,
        clusters,
        secrets,
    }) = s
    else {
        return Ok(snapshot);
    };
    if !secrets.is_empty() {
        return Err(at.item("static_resources.secrets", 0).error(
            "static secrets are not supported: name the PEM files in the transport socket \
             (tls_certificates[0].certificate_chain.filename and private_key.filename, \
             validation_context.trusted_ca.filename)",
        ));
    }
    for (i, l) in listeners.iter().enumerate() {
        static_listener(i, l, &mut snapshot)?;
    }
    for (i, c) in clusters.iter().enumerate() {
        static_cluster(i, c, &mut snapshot)?;
    }
    Ok(snapshot)
}

/// An error of a resource's own conversion, its field's path made absolute (`prefix` is the
/// resource's position in the bootstrap).
fn from_root(prefix: &str, e: ConfigError) -> ConfigError {
    let field = if e.field == "(resource)" {
        prefix.to_owned()
    } else {
        format!("{prefix}.{}", e.field)
    };
    ConfigError { field, ..e }
}

/// Listener `i`, converted with its TLS from files, into `snapshot`.
fn static_listener(
    i: usize,
    l: &listener::Listener,
    snapshot: &mut Snapshot,
) -> Result<(), ConfigError> {
    let prefix = format!("static_resources.listeners[{i}]");
    let resource = format!("Listener {}", l.name);
    let at = At::resource(&resource).field(&prefix);
    let cfg = listener_config(l).map_err(|e| from_root(&prefix, e))?;
    if snapshot.listeners.contains_key(&cfg.name) {
        return Err(at.field("name").error("a second listener of this name"));
    }
    let chains = cfg
        .filter_chains
        .iter()
        .enumerate()
        .map(|(j, c)| (at.item("filter_chains", j), c))
        .chain(
            cfg.default_chain
                .iter()
                .map(|c| (at.field("default_filter_chain"), c)),
        );
    for (chain_at, chain) in chains {
        if let Some(tls) = &chain.tls {
            let at = chain_at.field("transport_socket.typed_config.common_tls_context");
            files_only(&at, &tls.server_certificate, &tls.trusted_ca)?;
        }
    }
    snapshot.listeners.insert(cfg.name.clone(), cfg);
    Ok(())
}

/// Cluster `i`, STATIC, converted with its TLS from files, into `snapshot`.
fn static_cluster(
    i: usize,
    c: &cluster::Cluster,
    snapshot: &mut Snapshot,
) -> Result<(), ConfigError> {
    use cluster::cluster::{ClusterDiscoveryType as T, DiscoveryType as D};
    let prefix = format!("static_resources.clusters[{i}]");
    let resource = format!("Cluster {}", c.name);
    let at = At::resource(&resource).field(&prefix);
    let eds = "EDS needs a control plane: a static bootstrap's clusters are STATIC with their \
               endpoints inline (load_assignment)";
    if matches!(c.cluster_discovery_type, Some(T::Type(t)) if t == D::Eds as i32) {
        return Err(at.field("type").error(eds));
    }
    let cfg = cluster_config(c).map_err(|e| from_root(&prefix, e))?;
    if snapshot.clusters.contains_key(&cfg.name) {
        return Err(at.field("name").error("a second cluster of this name"));
    }
    if let EndpointSource::Eds { .. } = cfg.endpoints {
        return Err(at.field("type").error(eds));
    }
    if let Some(tls) = &cfg.upstream_tls {
        let at = at.field("transport_socket.typed_config.common_tls_context");
        files_only(&at, &tls.client_certificate, &tls.trusted_ca)?;
    }
    snapshot.clusters.insert(cfg.name.clone(), cfg);
    Ok(())
}

/// Without the agent there is no SDS: certificates and roots come from files (`at` is the
/// common TLS context).
fn files_only(
    at: &At<'_>,
    certificate: &CertificateSource,
    trusted_ca: &TrustedCaSource,
) -> Result<(), ConfigError> {
    if let CertificateSource::Sds { name } = certificate {
        return Err(at.error(format!(
            "the certificate is SDS secret {name:?} (tls_certificate_sds_secret_configs), which \
             needs the agent: a static bootstrap names PEM files (tls_certificates with \
             certificate_chain.filename and private_key.filename)"
        )));
    }
    if let TrustedCaSource::Sds { name } = trusted_ca {
        return Err(at.error(format!(
            "the trust bundle is SDS secret {name:?} (validation_context_sds_secret_config), \
             which needs the agent: a static bootstrap names a PEM file \
             (validation_context.trusted_ca.filename)"
        )));
    }
    Ok(())
}
