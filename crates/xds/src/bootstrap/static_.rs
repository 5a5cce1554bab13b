//! A proxy's control-plane resources as a static Envoy bootstrap, for differential tests and
//! benchmarks: the same `x.pb` runs Envoy (`envoy -c x.pb`) and the Causeway proxy
//! (`dataplane::bootstrap::read_static_bootstrap`) without a control plane or an agent.
//!
//! EDS clusters become STATIC with their load assignment inlined; the agent's SDS secrets become
//! files: `default` the certificate chain and key, `ROOTCA` the trusted CA. Everything else is
//! copied as the control plane built it.

// Deprecated fields are read too: a context that sets them is left for the conversion to refuse.
#![allow(deprecated)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::build::{SECRET_CERT, SECRET_ROOT};
use crate::resources::{Resources, TypeUrl};

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const UPSTREAM_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const DOWNSTREAM_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// A proxy's resources as the control plane sends them, decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvoyResources {
    pub listeners: Vec<listener::Listener>,
    pub clusters: Vec<cluster::Cluster>,
    pub assignments: Vec<endpoint::ClusterLoadAssignment>,
}

impl EnvoyResources {
    /// Decodes what `causeway_xds::build` produced for a proxy.
    pub fn decode(r: &Resources) -> Result<Self, StaticBootstrapError> {
        Ok(EnvoyResources {
            listeners: decode_all(r, TypeUrl::Listener)?,
            clusters: decode_all(r, TypeUrl::Cluster)?,
            assignments: decode_all(r, TypeUrl::ClusterLoadAssignment)?,
        })
    }
}

fn decode_all<M: Message + Default>(
    r: &Resources,
    t: TypeUrl,
) -> Result<Vec<M>, StaticBootstrapError> {
    let Some(of_type) = r.of(t) else {
        return Ok(Vec::new());
    };
    of_type
        .iter()
        .map(|(name, res)| {
            M::decode(res.body.value.as_slice()).map_err(|e| StaticBootstrapError::Undecodable {
                resource: format!("{} {name}", type_name(t)),
                reason: e.to_string(),
            })
        })
        .collect()
}

fn type_name(t: TypeUrl) -> &'static str {
    match t {
        TypeUrl::Listener => "Listener",
        TypeUrl::Cluster => "Cluster",
        TypeUrl::ClusterLoadAssignment => "ClusterLoadAssignment",
    }
}

/// The PEM files that stand for the agent's SDS secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// For `default`: the certificate chain, leaf first.
    pub certificate_chain: PathBuf,
    /// For `default`: its private key.
    pub private_key: PathBuf,
    /// For `ROOTCA`: the trust bundle.
    pub trusted_ca: PathBuf,
}

/// Why resources cannot become a static bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StaticBootstrapError {
    #[error("{resource}: undecodable: {reason}")]
    Undecodable { resource: String, reason: String },
    #[error(
        "Cluster {cluster}: EDS resource {service_name:?} is not among the load assignments \
         (an EDS cluster's endpoints are inlined)"
    )]
    NoAssignment {
        cluster: String,
        service_name: String,
    },
    #[error(
        "{resource}: {field}: SDS secret {name:?} has no file (only {SECRET_CERT:?}, the \
         certificate, and {SECRET_ROOT:?}, the trust bundle, have)"
    )]
    UnknownSecret {
        resource: String,
        field: String,
        name: String,
    },
    #[error("{}: not UTF-8, which Envoy's filename fields need", path.display())]
    NotUtf8 { path: PathBuf },
}

/// The files as Envoy data sources, checked once.
struct FileSources {
    chain: core::DataSource,
    key: core::DataSource,
    ca: core::DataSource,
}

fn file_source(path: &Path) -> Result<core::DataSource, StaticBootstrapError> {
    let name = path.to_str().ok_or_else(|| StaticBootstrapError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    Ok(core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(name.to_owned())),
        watched_directory: None,
    })
}

/// A static bootstrap running `resources` as `node`, with its admin API on `admin` and the
/// agent's secrets replaced by `files`. Write it with `encode_to_vec()` as `x.pb`.
pub fn static_bootstrap_of(
    resources: &EnvoyResources,
    node: core::Node,
    admin: SocketAddr,
    files: &CertificateFiles,
) -> Result<bootstrap::Bootstrap, StaticBootstrapError> {
    let files = FileSources {
        chain: file_source(&files.certificate_chain)?,
        key: file_source(&files.private_key)?,
        ca: file_source(&files.trusted_ca)?,
    };
    let assignments: HashMap<&str, &endpoint::ClusterLoadAssignment> = resources
        .assignments
        .iter()
        .map(|la| (la.cluster_name.as_str(), la))
        .collect();
    let clusters = resources
        .clusters
        .iter()
        .map(|c| static_cluster(c, &assignments, &files))
        .collect::<Result<Vec<_>, _>>()?;
    let listeners = resources
        .listeners
        .iter()
        .map(|l| static_listener(l, &files))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(bootstrap::Bootstrap {
        node: Some(node),
        admin: Some(bootstrap::Admin {
            address: Some(socket_address(admin)),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::bootstrap::StaticResources {
            listeners,
            clusters,
            secrets: Vec::new(),
        }),
        ..Default::default()
    })
}

fn socket_address(a: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// `c` STATIC with its EDS assignment inlined (EDS service name, else the cluster's name), its
/// TLS from files.
fn static_cluster(
    c: &cluster::Cluster,
    assignments: &HashMap<&str, &endpoint::ClusterLoadAssignment>,
    files: &FileSources,
) -> Result<cluster::Cluster, StaticBootstrapError> {
    use cluster::cluster::{ClusterDiscoveryType as T, DiscoveryType as D};
    let mut c = c.clone();
    if c.cluster_discovery_type == Some(T::Type(D::Eds as i32)) {
        let service_name = c
            .eds_cluster_config
            .take()
            .map(|e| e.service_name)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| c.name.clone());
        let Some(la) = assignments.get(service_name.as_str()) else {
            return Err(StaticBootstrapError::NoAssignment {
                cluster: c.name.clone(),
                service_name,
            });
        };
        c.cluster_discovery_type = Some(T::Type(D::Static as i32));
        c.load_assignment = Some((*la).clone());
    }
    if let Some(ts) = &mut c.transport_socket {
        let resource = format!("Cluster {}", c.name);
        tls_from_files(ts, files, &resource, "transport_socket")?;
    }
    Ok(c)
}

/// `l` with the TLS of its filter chains from files.
fn static_listener(
    l: &listener::Listener,
    files: &FileSources,
) -> Result<listener::Listener, StaticBootstrapError> {
    let mut l = l.clone();
    let resource = format!("Listener {}", l.name);
    for (i, chain) in l.filter_chains.iter_mut().enumerate() {
        if let Some(ts) = &mut chain.transport_socket {
            let field = format!("filter_chains[{i}].transport_socket");
            tls_from_files(ts, files, &resource, &field)?;
        }
    }
    if let Some(ts) = l
        .default_filter_chain
        .as_mut()
        .and_then(|c| c.transport_socket.as_mut())
    {
        tls_from_files(
            ts,
            files,
            &resource,
            "default_filter_chain.transport_socket",
        )?;
    }
    Ok(l)
}

/// Where a secret reference is, for errors.
struct Place<'a> {
    resource: &'a str,
    field: String,
}

impl Place<'_> {
    fn secret(
        &self,
        field: &str,
        s: &tls::SdsSecretConfig,
        want: &str,
    ) -> Result<(), StaticBootstrapError> {
        if s.name == want {
            return Ok(());
        }
        Err(StaticBootstrapError::UnknownSecret {
            resource: self.resource.to_owned(),
            field: format!("{}.{field}.name", self.field),
            name: s.name.clone(),
        })
    }
}

/// Rewrites a TLS transport socket's SDS secrets as files. Other sockets and forms are left as
/// they are, for the conversion (and Envoy) to judge.
fn tls_from_files(
    ts: &mut core::TransportSocket,
    files: &FileSources,
    resource: &str,
    field: &str,
) -> Result<(), StaticBootstrapError> {
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) = &mut ts.config_type else {
        return Ok(());
    };
    if ts.name != TLS_SOCKET {
        return Ok(());
    }
    let at = Place {
        resource,
        field: format!("{field}.typed_config.common_tls_context"),
    };
    let undecodable = |e: prost::DecodeError| StaticBootstrapError::Undecodable {
        resource: format!("{resource} {field}"),
        reason: e.to_string(),
    };
    match any.type_url.as_str() {
        UPSTREAM_CONTEXT => {
            let mut u =
                tls::UpstreamTlsContext::decode(any.value.as_slice()).map_err(undecodable)?;
            if let Some(c) = &mut u.common_tls_context {
                common_from_files(c, files, &at)?;
            }
            *any = repack(UPSTREAM_CONTEXT, &u);
        }
        DOWNSTREAM_CONTEXT => {
            let mut d =
                tls::DownstreamTlsContext::decode(any.value.as_slice()).map_err(undecodable)?;
            if let Some(c) = &mut d.common_tls_context {
                common_from_files(c, files, &at)?;
            }
            *any = repack(DOWNSTREAM_CONTEXT, &d);
        }
        _ => {}
    }
    Ok(())
}

fn repack(type_url: &str, m: &impl Message) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: m.encode_to_vec(),
    }
}

/// `default` → `tls_certificates` from files; `ROOTCA` (alone or combined with SAN checks) →
/// a validation context with `trusted_ca` from a file and the same SAN checks.
fn common_from_files(
    c: &mut tls::CommonTlsContext,
    files: &FileSources,
    at: &Place<'_>,
) -> Result<(), StaticBootstrapError> {
    use tls::common_tls_context::ValidationContextType as V;
    for (i, s) in c.tls_certificate_sds_secret_configs.iter().enumerate() {
        at.secret(
            &format!("tls_certificate_sds_secret_configs[{i}]"),
            s,
            SECRET_CERT,
        )?;
    }
    for _ in std::mem::take(&mut c.tls_certificate_sds_secret_configs) {
        c.tls_certificates.push(tls::TlsCertificate {
            certificate_chain: Some(files.chain.clone()),
            private_key: Some(files.key.clone()),
            ..Default::default()
        });
    }
    c.validation_context_type = match c.validation_context_type.take() {
        Some(V::ValidationContextSdsSecretConfig(s)) => {
            at.secret("validation_context_sds_secret_config", &s, SECRET_ROOT)?;
            Some(V::ValidationContext(tls::CertificateValidationContext {
                trusted_ca: Some(files.ca.clone()),
                ..Default::default()
            }))
        }
        Some(V::CombinedValidationContext(combined)) => combined_from_files(combined, files, at)?,
        other => other,
    };
    Ok(())
}

/// The control plane's combined form: its default context (the SAN checks) with the trust
/// bundle from a file. Forms files cannot express are left as they are.
fn combined_from_files(
    combined: tls::common_tls_context::CombinedCertificateValidationContext,
    files: &FileSources,
    at: &Place<'_>,
) -> Result<Option<tls::common_tls_context::ValidationContextType>, StaticBootstrapError> {
    use tls::common_tls_context::ValidationContextType as V;
    let expressible = combined.validation_context_certificate_provider.is_none()
        && combined
            .validation_context_certificate_provider_instance
            .is_none()
        && combined
            .default_validation_context
            .as_ref()
            .is_none_or(|v| v.trusted_ca.is_none());
    let Some(sds) = combined
        .validation_context_sds_secret_config
        .as_ref()
        .filter(|_| expressible)
    else {
        return Ok(Some(V::CombinedValidationContext(combined)));
    };
    at.secret(
        "combined_validation_context.validation_context_sds_secret_config",
        sds,
        SECRET_ROOT,
    )?;
    let mut v = combined.default_validation_context.unwrap_or_default();
    v.trusted_ca = Some(files.ca.clone());
    Ok(Some(V::ValidationContext(v)))
}
