//! `Service` (core v1): ports, selector, headless, and the cluster-local annotation.

use std::collections::BTreeSet;

use causeway_model::{Service, ServiceKey, ServicePort, TargetPort};

use crate::file::documents::Doc;
use crate::file::fields::{namespace_of, required_name};
use crate::file::CLUSTER_LOCAL_ANNOTATION;
use crate::wire;
use crate::LoadError;

pub(in crate::file) fn parse_service(doc: &Doc<'_>) -> Result<Service, LoadError> {
    let obj: wire::Object<wire::ServiceSpec> = doc.typed(Some("Service"))?;
    let name = required_name(doc, "Service", &obj.metadata)?;
    let key = ServiceKey::new(namespace_of(&obj.metadata), name);
    let object = format!("Service {key}");
    let headless = obj.spec.cluster_ip.as_deref() == Some("None");
    if obj.spec.ports.is_empty() && !headless {
        return Err(doc.error(
            Some(&object),
            Some("spec.ports"),
            "a Service needs at least one port",
        ));
    }
    let ports = parse_service_ports(doc, &object, obj.spec.ports)?;
    let cluster_local = match obj
        .metadata
        .annotations
        .get(CLUSTER_LOCAL_ANNOTATION)
        .map(String::as_str)
    {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(doc.error(
                Some(&object),
                Some(&format!("metadata.annotations[{CLUSTER_LOCAL_ANNOTATION}]")),
                format!("{other:?} is not \"true\" or \"false\""),
            ))
        }
    };
    Ok(Service {
        key,
        ports,
        selector: obj.spec.selector.filter(|s| !s.is_empty()),
        headless,
        cluster_local,
        source: doc.source(),
    })
}

/// `spec.ports` of a Service: numbers in range, known protocols, no port listed twice, and
/// names when there are several.
fn parse_service_ports(
    doc: &Doc<'_>,
    object: &str,
    wire_ports: Vec<wire::ServicePort>,
) -> Result<Vec<ServicePort>, LoadError> {
    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    let several = wire_ports.len() > 1;
    for (i, p) in wire_ports.into_iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        if p.port == 0 {
            return Err(doc.error(Some(object), Some(&field("port")), "must be 1-65535"));
        }
        let protocol = p.protocol.unwrap_or_else(|| "TCP".into());
        if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            return Err(doc.error(
                Some(object),
                Some(&field("protocol")),
                format!("{protocol:?} is not TCP, UDP or SCTP"),
            ));
        }
        if !seen.insert((p.port, protocol.clone())) {
            return Err(doc.error(
                Some(object),
                Some(&field("port")),
                format!("port {} {protocol} is listed twice", p.port),
            ));
        }
        if several && p.name.as_deref().is_none_or(str::is_empty) {
            return Err(doc.error(
                Some(object),
                Some(&field("name")),
                "required when a Service has several ports",
            ));
        }
        let target_port = match p.target_port {
            None => TargetPort::Number(p.port),
            Some(wire::IntOrString::Int(0)) => {
                return Err(doc.error(Some(object), Some(&field("targetPort")), "must be 1-65535"))
            }
            Some(wire::IntOrString::Int(n)) => TargetPort::Number(n),
            Some(wire::IntOrString::String(s)) => TargetPort::Name(s),
        };
        ports.push(ServicePort {
            name: p.name,
            port: p.port,
            target_port,
            protocol,
            app_protocol: p.app_protocol,
        });
    }
    Ok(ports)
}
