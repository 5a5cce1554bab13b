//! Services and EndpointSlices.

use std::net::IpAddr;

use causeway_model::{
    ClusterId, EndpointSlice, Service, ServiceKey, ServicePort, SliceEndpoint, SlicePort,
    TargetPort,
};
use causeway_registry::{CLUSTER_LOCAL_ANNOTATION, SERVICE_ACCOUNT_ANNOTATION, SERVICE_NAME_LABEL};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{name_of, namespace_of, port_number, Origin, TranslateError};

/// Label MCS implementations put on EndpointSlices they import from another cluster; such
/// copies are not this cluster's own endpoints.
pub const SOURCE_CLUSTER_LABEL: &str = "multicluster.kubernetes.io/source-cluster";

/// A `v1/Service` as the mesh sees it. `None` for kinds that have no endpoints to mesh
/// (`ExternalName`).
///
/// The selector is not carried over: in Kubernetes the EndpointSlice controller resolves it,
/// and the slices (with readiness) are the truth the index reads.
pub fn service(
    cluster: &ClusterId,
    svc: &core::Service,
) -> Result<Option<Service>, TranslateError> {
    let namespace = namespace_of(&svc.metadata);
    let name = name_of(&svc.metadata);
    let origin = Origin {
        cluster,
        kind: "Service",
        namespace: Some(namespace),
        name,
    };
    let Some(spec) = &svc.spec else {
        return Err(origin.error("spec", "missing"));
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let port = port_number(&origin, &format!("spec.ports[{i}].port"), p.port)?;
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(port_number(
                &origin,
                &format!("spec.ports[{i}].targetPort"),
                *n,
            )?),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(port_number(
                    &origin,
                    &format!("spec.ports[{i}].targetPort"),
                    n,
                )?),
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        ports.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port,
            target_port,
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
            app_protocol: p.app_protocol.clone(),
        });
    }
    let annotations = svc.metadata.annotations.as_ref();
    let cluster_local = match annotations
        .and_then(|a| a.get(CLUSTER_LOCAL_ANNOTATION))
        .map(String::as_str)
    {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(origin.error(
                format!("metadata.annotations[{CLUSTER_LOCAL_ANNOTATION}]"),
                format!("{other:?} is not \"true\" or \"false\""),
            ))
        }
    };
    Ok(Some(Service {
        key: ServiceKey::new(namespace, name),
        ports,
        selector: None,
        headless: spec.cluster_ip.as_deref() == Some("None"),
        cluster_local,
        source: origin.source(),
    }))
}

/// An EndpointSlice with what its endpoints name (Pod, Node), to be joined at assembly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceRecord {
    /// The slice, with per-endpoint identity and locality not yet filled in.
    pub slice: EndpointSlice,
    /// Per endpoint (same order): the Node it runs on, if named.
    pub nodes: Vec<Option<String>>,
}

/// A `discovery.k8s.io/v1` EndpointSlice. `None` for slices the mesh does not use: FQDN
/// address types, and copies an MCS implementation imported from another cluster.
pub fn endpoint_slice(
    cluster: &ClusterId,
    slice: &discovery::EndpointSlice,
) -> Result<Option<SliceRecord>, TranslateError> {
    let namespace = namespace_of(&slice.metadata);
    let name = name_of(&slice.metadata);
    let origin = Origin {
        cluster,
        kind: "EndpointSlice",
        namespace: Some(namespace),
        name,
    };
    let labels = slice.metadata.labels.as_ref();
    if labels
        .and_then(|l| l.get(SOURCE_CLUSTER_LABEL))
        .is_some_and(|c| c != cluster.as_str())
    {
        return Ok(None);
    }
    let Some(service_name) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
        // Slices not tied to a Service (custom controllers) have nothing to mesh.
        return Ok(None);
    };
    match slice.address_type.as_str() {
        "IPv4" | "IPv6" => {}
        _ => return Ok(None),
    }
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // A port without a number means "all ports" (Services without ports); nothing to mesh.
        let Some(number) = p.port else { continue };
        ports.push(SlicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port: port_number(&origin, &format!("ports[{i}].port"), number)?,
        });
    }
    let mut endpoints = Vec::new();
    let mut nodes = Vec::new();
    for (i, ep) in slice.endpoints.iter().flatten().enumerate() {
        let mut addresses = Vec::new();
        for (j, a) in ep.addresses.iter().enumerate() {
            let ip: IpAddr = a.parse().map_err(|_| {
                origin.error(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("{a:?} is not an IP address"),
                )
            })?;
            addresses.push(ip);
        }
        if addresses.is_empty() {
            continue;
        }
        let conditions = ep.conditions.as_ref();
        let pod = ep
            .target_ref
            .as_ref()
            .filter(|t| t.kind.as_deref().is_none_or(|k| k == "Pod"))
            .and_then(|t| t.name.clone());
        endpoints.push(SliceEndpoint {
            addresses,
            // Kubernetes: an unknown `ready` is to be read as ready.
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
            serving: conditions
                .and_then(|c| c.serving.or(c.ready))
                .unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            zone: ep.zone.clone(),
            target_name: pod,
            service_account: None,
            locality: None,
            labels: Default::default(),
        });
        nodes.push(ep.node_name.clone());
    }
    Ok(Some(SliceRecord {
        slice: EndpointSlice {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            service_name: service_name.clone(),
            ports,
            endpoints,
            service_account: slice
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SERVICE_ACCOUNT_ANNOTATION))
                .cloned(),
            source: origin.source(),
        },
        nodes,
    }))
}
