//! `EndpointSlice` (discovery.k8s.io/v1): a Service's endpoints with their conditions, and
//! the service-account annotation.

use causeway_model::{EndpointSlice, SliceEndpoint, SlicePort};

use crate::file::documents::Doc;
use crate::file::fields::{namespace_of, parse_ip, required_name};
use crate::file::{SERVICE_ACCOUNT_ANNOTATION, SERVICE_NAME_LABEL};
use crate::wire;
use crate::LoadError;

pub(in crate::file) fn parse_endpoint_slice(doc: &Doc<'_>) -> Result<EndpointSlice, LoadError> {
    let obj: wire::EndpointSlice = doc.typed(Some("EndpointSlice"))?;
    let name = required_name(doc, "EndpointSlice", &obj.metadata)?;
    let namespace = namespace_of(&obj.metadata);
    let object = format!("EndpointSlice {namespace}/{name}");
    let service_name = obj
        .metadata
        .labels
        .get(SERVICE_NAME_LABEL)
        .cloned()
        .ok_or_else(|| {
            doc.error(
                Some(&object),
                Some(&format!("metadata.labels[{SERVICE_NAME_LABEL}]")),
                "missing: it names the Service the slice belongs to",
            )
        })?;
    match obj.address_type.as_deref() {
        None | Some("IPv4") | Some("IPv6") => {}
        Some(other) => {
            return Err(doc.error(
                Some(&object),
                Some("addressType"),
                format!("{other:?} is not supported (IPv4 or IPv6)"),
            ))
        }
    }
    let endpoints = parse_slice_endpoints(doc, &object, obj.endpoints)?;
    let mut ports = Vec::new();
    for (i, p) in obj.ports.into_iter().enumerate() {
        if p.port == 0 {
            return Err(doc.error(
                Some(&object),
                Some(&format!("ports[{i}].port")),
                "must be 1-65535",
            ));
        }
        ports.push(SlicePort {
            name: p.name,
            port: p.port,
        });
    }
    Ok(EndpointSlice {
        service_account: obj
            .metadata
            .annotations
            .get(SERVICE_ACCOUNT_ANNOTATION)
            .cloned(),
        namespace,
        name,
        service_name,
        ports,
        endpoints,
        source: doc.source(),
    })
}

/// `endpoints` of an EndpointSlice: at least one address each, every one an IP address;
/// conditions defaulted as Kubernetes does.
fn parse_slice_endpoints(
    doc: &Doc<'_>,
    object: &str,
    wire_endpoints: Vec<wire::SliceEndpoint>,
) -> Result<Vec<SliceEndpoint>, LoadError> {
    let mut endpoints = Vec::new();
    for (i, ep) in wire_endpoints.into_iter().enumerate() {
        if ep.addresses.is_empty() {
            return Err(doc.error(
                Some(object),
                Some(&format!("endpoints[{i}].addresses")),
                "needs at least one address",
            ));
        }
        let mut addresses = Vec::new();
        for (j, a) in ep.addresses.iter().enumerate() {
            addresses.push(parse_ip(
                doc,
                object,
                &format!("endpoints[{i}].addresses[{j}]"),
                a,
            )?);
        }
        // Kubernetes: a missing `ready` means ready; terminating endpoints get no new traffic.
        endpoints.push(SliceEndpoint {
            addresses,
            ready: ep.conditions.ready.unwrap_or(true),
            serving: ep
                .conditions
                .serving
                .unwrap_or(ep.conditions.ready.unwrap_or(true)),
            terminating: ep.conditions.terminating.unwrap_or(false),
            zone: ep.zone,
            target_name: ep.target_ref.and_then(|t| t.name),
            service_account: None,
            locality: None,
            // A file's slice names no Pods; subsets select WorkloadEntries by their labels.
            labels: Default::default(),
        });
    }
    Ok(endpoints)
}
