//! The Envoy bootstrap `causeway proxy` writes: the node and its metadata, ADS to the control
//! plane over mTLS, and SDS to the local agent. As in Istio, the xDS connection's client
//! certificate (`default`) and the mesh root (`ROOTCA`) come from the agent over SDS, and the
//! control plane must present its own SPIFFE ID under that root.
//!
//! [`static_bootstrap_of`] writes the other kind, for tests and benchmarks: a proxy's resources
//! as a static bootstrap, without control plane or agent.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use causeway_model::ProxyRole;
use envoy_types::pb::envoy::config::core::v3 as core;
use serde_json::{json, Value};

use crate::build::{SDS_CLUSTER, SECRET_CERT, SECRET_ROOT};
use crate::node::keys;

mod static_;

pub use static_::{static_bootstrap_of, CertificateFiles, EnvoyResources, StaticBootstrapError};

/// Name of the bootstrap's static cluster that reaches the control plane.
pub const XDS_CLUSTER: &str = "xds-grpc";
/// The SPIFFE path (after the trust domain) of the control plane's xDS certificate.
pub const CONTROL_PLANE_PATH: &str = "/ns/causeway-system/sa/causeway-control-plane";
/// The TLS server name Envoy sends to the control plane.
pub const CONTROL_PLANE_SNI: &str = "causeway-control-plane";

/// Why a bootstrap cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    /// A sidecar needs its outbound address block.
    #[error("--outbound-cidr is required for a sidecar")]
    NoOutboundCidr,
}

/// What the bootstrap describes.
#[derive(Debug, Clone)]
pub struct BootstrapConfig {
    /// Sidecar or gateway.
    pub role: ProxyRole,
    /// Cluster the proxy runs in.
    pub cluster: String,
    /// Namespace of the workload (or of the gateway).
    pub namespace: String,
    /// Workload (or gateway) name.
    pub workload: String,
    /// The control plane's xDS address.
    pub xds: SocketAddr,
    /// Delta xDS instead of state-of-the-world.
    pub delta: bool,
    /// The agent's SDS socket: workload certificates and the xDS client certificate.
    pub sds_socket: PathBuf,
    /// Envoy's admin address.
    pub admin: SocketAddr,
    /// Sidecar: where the application listens.
    pub app_address: Option<IpAddr>,
    /// Sidecar: block of outbound listener addresses.
    pub outbound_cidr: Option<String>,
    /// Sidecar: loopback port of the capture listener (traffic to the block redirected there).
    pub capture_port: Option<u16>,
    /// Declared network.
    pub network: Option<String>,
    /// Trust domain: when given the control plane must present exactly its SPIFFE ID in it,
    /// otherwise its SPIFFE path in any trust domain under the mesh root.
    pub trust_domain: Option<String>,
}

fn role_name(role: ProxyRole) -> &'static str {
    match role {
        ProxyRole::Sidecar => "sidecar",
        ProxyRole::Gateway => "gateway",
    }
}

/// An SDS reference to secret `name` of the agent.
fn sds_secret(name: &str) -> Value {
    json!({
        "name": name,
        "sds_config": {
            "resource_api_version": "V3",
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{ "envoy_grpc": { "cluster_name": SDS_CLUSTER } }]
            }
        }
    })
}

/// The xDS cluster's mTLS: our certificate from SDS, the control plane's checked against the
/// mesh root from SDS and its SPIFFE ID.
fn xds_transport_socket(trust_domain: Option<&str>) -> Value {
    let san = match trust_domain {
        Some(td) => json!({ "exact": format!("spiffe://{td}{CONTROL_PLANE_PATH}") }),
        None => json!({ "safe_regex": {
            "regex": format!("^spiffe://[^/]+{CONTROL_PLANE_PATH}$")
        } }),
    };
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": CONTROL_PLANE_SNI,
            "common_tls_context": {
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_3",
                    "tls_maximum_protocol_version": "TLSv1_3"
                },
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [sds_secret(SECRET_CERT)],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{ "san_type": "URI", "matcher": san }]
                    },
                    "validation_context_sds_secret_config": sds_secret(SECRET_ROOT)
                }
            }
        }
    })
}

fn http2_options(keepalive: bool) -> Value {
    let h2 = if keepalive {
        json!({ "connection_keepalive": { "interval": "30s", "timeout": "10s" } })
    } else {
        json!({})
    };
    json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": h2 }
        }
    })
}

fn static_clusters(c: &BootstrapConfig) -> Vec<Value> {
    vec![
        json!({
            "name": XDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": http2_options(true),
            "transport_socket": xds_transport_socket(c.trust_domain.as_deref()),
            "load_assignment": {
                "cluster_name": XDS_CLUSTER,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                    "address": c.xds.ip().to_string(), "port_value": c.xds.port()
                } } } }] }]
            }
        }),
        json!({
            "name": SDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": http2_options(false),
            "load_assignment": {
                "cluster_name": SDS_CLUSTER,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "pipe": {
                    "path": c.sds_socket.display().to_string()
                } } } }] }]
            }
        }),
    ]
}

/// A node's id and its metadata entries.
type NodeFields = (String, Vec<(&'static str, String)>);

/// The node's id and metadata: what the control plane admits and builds for, the same for
/// Envoy (in the bootstrap) and for the Causeway proxy (in its first request).
fn node_fields(c: &BootstrapConfig) -> Result<NodeFields, BootstrapError> {
    let role = role_name(c.role);
    let mut metadata = vec![
        (keys::CLUSTER, c.cluster.clone()),
        (keys::NAMESPACE, c.namespace.clone()),
        (keys::WORKLOAD, c.workload.clone()),
        (keys::ROLE, role.to_owned()),
    ];
    if let Some(net) = &c.network {
        metadata.push((keys::NETWORK, net.clone()));
    }
    if c.role == ProxyRole::Sidecar {
        let cidr = c
            .outbound_cidr
            .as_ref()
            .ok_or(BootstrapError::NoOutboundCidr)?;
        metadata.push((keys::OUTBOUND_CIDR, cidr.clone()));
        if let Some(port) = c.capture_port {
            metadata.push((keys::CAPTURE_PORT, port.to_string()));
        }
        if let Some(app) = c.app_address {
            metadata.push((keys::APP_ADDRESS, app.to_string()));
        }
    }
    let id = format!("{role}~{}~{}~{}", c.cluster, c.namespace, c.workload);
    Ok((id, metadata))
}

/// The node the Causeway proxy sends on its first xDS request.
pub fn node(c: &BootstrapConfig) -> Result<core::Node, BootstrapError> {
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
    let (id, metadata) = node_fields(c)?;
    let fields = metadata
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_owned(),
                PbValue {
                    kind: Some(Kind::StringValue(v)),
                },
            )
        })
        .collect();
    Ok(core::Node {
        id,
        cluster: c.cluster.clone(),
        metadata: Some(Struct { fields }),
        user_agent_name: crate::node::CAUSEWAY_USER_AGENT.to_owned(),
        ..Default::default()
    })
}

/// The Envoy bootstrap (JSON) for `c`.
pub fn bootstrap(c: &BootstrapConfig) -> Result<Value, BootstrapError> {
    let (id, fields) = node_fields(c)?;
    let metadata: serde_json::Map<String, Value> = fields
        .into_iter()
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    let api_type = if c.delta { "DELTA_GRPC" } else { "GRPC" };
    Ok(json!({
        "node": {
            "id": id,
            "cluster": c.cluster,
            "metadata": metadata,
        },
        "admin": { "address": { "socket_address": {
            "address": c.admin.ip().to_string(), "port_value": c.admin.port()
        } } },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": {
                    "cluster_name": XDS_CLUSTER,
                    // A refused stream (say, the proxy's cluster has not loaded yet) is retried
                    // soon, not after Envoy's default backoff of up to 30 s.
                    "retry_policy": { "retry_back_off": { "base_interval": "0.25s", "max_interval": "2s" } }
                } }],
                "set_node_on_first_message_only": true
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": { "clusters": static_clusters(c) },
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": 50000
                }
            }]
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(role: ProxyRole) -> BootstrapConfig {
        BootstrapConfig {
            role,
            cluster: "alpha".into(),
            namespace: "demo".into(),
            workload: "client".into(),
            xds: "127.0.0.1:15011".parse().expect("addr"),
            delta: false,
            sds_socket: "/run/sds.sock".into(),
            admin: "127.0.0.1:15000".parse().expect("addr"),
            app_address: None,
            outbound_cidr: Some("127.200.0.0/16".into()),
            capture_port: None,
            network: None,
            trust_domain: Some("causeway.local".into()),
        }
    }

    #[test]
    fn the_xds_cluster_uses_the_agents_certificate_and_checks_the_control_planes() {
        for role in [ProxyRole::Sidecar, ProxyRole::Gateway] {
            let b = bootstrap(&config(role)).expect("bootstrap");
            let xds = &b["static_resources"]["clusters"][0];
            assert_eq!(xds["name"], XDS_CLUSTER);
            let ctx = &xds["transport_socket"]["typed_config"]["common_tls_context"];
            assert_eq!(
                ctx["tls_certificate_sds_secret_configs"][0]["name"],
                SECRET_CERT
            );
            let validation = &ctx["combined_validation_context"];
            assert_eq!(
                validation["validation_context_sds_secret_config"]["name"],
                SECRET_ROOT
            );
            assert_eq!(
                validation["default_validation_context"]["match_typed_subject_alt_names"][0]
                    ["matcher"]["exact"],
                "spiffe://causeway.local/ns/causeway-system/sa/causeway-control-plane"
            );
            assert_eq!(b["static_resources"]["clusters"][1]["name"], SDS_CLUSTER);
        }
    }

    #[test]
    fn the_causeway_proxy_sends_the_node_envoy_would() {
        for role in [ProxyRole::Sidecar, ProxyRole::Gateway] {
            let c = config(role);
            let b = bootstrap(&c).expect("bootstrap");
            let n = node(&c).expect("node");
            assert_eq!(b["node"]["id"], n.id);
            let fields = n.metadata.expect("metadata").fields;
            let envoy = b["node"]["metadata"].as_object().expect("metadata");
            assert_eq!(fields.len(), envoy.len());
            for (k, v) in envoy {
                let Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) =
                    fields.get(k).and_then(|f| f.kind.clone())
                else {
                    panic!("{k} missing")
                };
                assert_eq!(v, &json!(s));
            }
            // And the control plane admits it under the same rules.
            assert!(crate::node::ProxyNode::from_node(Some(&node(&c).expect("node"))).is_ok());
        }
    }

    #[test]
    fn a_sidecar_needs_its_outbound_block() {
        let mut c = config(ProxyRole::Sidecar);
        c.outbound_cidr = None;
        assert_eq!(bootstrap(&c), Err(BootstrapError::NoOutboundCidr));
        c.role = ProxyRole::Gateway;
        assert!(bootstrap(&c).is_ok());
    }
}
