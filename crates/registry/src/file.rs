//! Parsing and validating mesh directory files into model types.
// Parse errors are the cold path of reading configuration files, and carrying the full
// location in the error keeps every call site simple; boxing would buy nothing measurable.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use causeway_model::{
    AuthorizationPolicy, ClusterId, ClusterLocalRule, ClusterObjects, ClusterSpec, DiscoveryMode,
    EndpointSlice, Gateway, GatewayIdentity, Health, KubernetesSource, Locality, MeshConfig,
    MeshSpec, NetworkId, ObjectSource, PolicyAction, PolicyRule, PolicySource, PolicyTarget,
    Service, ServiceExport, ServiceKey, ServicePort, SliceEndpoint, SlicePort, SpiffeId,
    TargetPort, WorkloadEntry,
};
use serde::de::DeserializeOwned;

use crate::wire;
use crate::LoadError;

/// Annotation on a Service: `"true"` keeps it in its cluster.
pub const CLUSTER_LOCAL_ANNOTATION: &str = "causeway.io/cluster-local";
/// Annotation on a ServiceExport: comma-separated cluster ids that alone may import it. An
/// annotation, not a spec field, so the object stays valid under the upstream MCS CRD schema
/// (which prunes unknown fields).
pub const EXPORT_TO_ANNOTATION: &str = "causeway.io/export-to";
/// Annotation on an EndpointSlice naming the service account of its endpoints.
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "causeway.io/service-account";
/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

const CAUSEWAY_API: &str = "causeway.io/v1alpha1";

/// Where one YAML document sits, for error messages.
struct Doc<'a> {
    file: &'a Path,
    index: usize,
    start_line: usize,
    text: &'a str,
}

impl Doc<'_> {
    fn source(&self) -> ObjectSource {
        ObjectSource {
            file: self.file.to_path_buf(),
            document: self.index,
            line: self.start_line,
        }
    }

    fn error(
        &self,
        object: Option<&str>,
        field: Option<&str>,
        reason: impl Into<String>,
    ) -> LoadError {
        LoadError {
            file: self.file.to_path_buf(),
            document: Some(self.index),
            line: Some(self.start_line),
            object: object.map(str::to_owned),
            field: field.map(str::to_owned),
            reason: reason.into(),
        }
    }

    /// Deserializes the document into `T`, reporting the failing field path and line.
    fn typed<T: DeserializeOwned>(&self, object: Option<&str>) -> Result<T, LoadError> {
        let de = yaml_serde::Deserializer::from_str(self.text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .location()
                .map(|l| self.start_line + l.line().saturating_sub(1));
            LoadError {
                file: self.file.to_path_buf(),
                document: Some(self.index),
                line: line.or(Some(self.start_line)),
                object: object.map(str::to_owned),
                field: (path != ".").then_some(path),
                reason: strip_location(&inner.to_string()),
            }
        })
    }
}

/// yaml_serde appends "at line X column Y" relative to the document; we report file lines.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Splits a multi-document YAML stream on `---` lines, keeping each document's first line
/// number. Written by hand because the YAML parser does not report where each document of a
/// stream starts, and errors must name file lines.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_marker {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            let rest = line[3..].trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                current.push_str(rest);
                current.push('\n');
                start = i + 1;
            }
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push((start, current));
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines().any(|l| {
                !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "..."
            })
        })
        .collect()
}

/// Reads the type of a document and checks its `apiVersion`.
fn type_of(doc: &Doc<'_>) -> Result<(String, String), LoadError> {
    let meta: wire::TypeMeta = doc.typed(None)?;
    let kind = meta
        .kind
        .ok_or_else(|| doc.error(None, Some("kind"), "missing"))?;
    let api = meta
        .api_version
        .ok_or_else(|| doc.error(None, Some("apiVersion"), "missing"))?;
    Ok((api, kind))
}

fn expect_api(doc: &Doc<'_>, kind: &str, api: &str, expected: &str) -> Result<(), LoadError> {
    if api == expected {
        Ok(())
    } else {
        Err(doc.error(
            Some(kind),
            Some("apiVersion"),
            format!("{kind} must have apiVersion {expected}, not {api}"),
        ))
    }
}

fn required_name(doc: &Doc<'_>, kind: &str, meta: &wire::ObjectMeta) -> Result<String, LoadError> {
    match meta.name.as_deref() {
        Some(n) if !n.is_empty() => Ok(n.to_owned()),
        _ => Err(doc.error(Some(kind), Some("metadata.name"), "missing")),
    }
}

fn namespace_of(meta: &wire::ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

fn parse_ip(doc: &Doc<'_>, object: &str, field: &str, value: &str) -> Result<IpAddr, LoadError> {
    value.parse().map_err(|_| {
        doc.error(
            Some(object),
            Some(field),
            format!("{value:?} is not an IP address"),
        )
    })
}

fn parse_locality(
    doc: &Doc<'_>,
    object: &str,
    field: &str,
    value: &str,
) -> Result<Locality, LoadError> {
    value
        .parse()
        .map_err(|e| doc.error(Some(object), Some(field), format!("{e}")))
}

/// Parses `mesh.yaml`: exactly one `Mesh` and one `Cluster` per member.
pub fn parse_mesh_documents(file: &Path, text: &str) -> Result<MeshConfig, Vec<LoadError>> {
    let mut errors = Vec::new();
    let mut mesh: Option<MeshSpec> = None;
    let mut clusters: Vec<ClusterSpec> = Vec::new();
    for (index, (start_line, text)) in split_documents(text).iter().enumerate() {
        let doc = Doc {
            file,
            index,
            start_line: *start_line,
            text,
        };
        let result = type_of(&doc).and_then(|(api, kind)| match kind.as_str() {
            "Mesh" => {
                expect_api(&doc, &kind, &api, CAUSEWAY_API)?;
                let parsed = parse_mesh(&doc)?;
                if let Some(first) = &mesh {
                    return Err(doc.error(
                        Some(&format!("Mesh {}", parsed.name)),
                        None,
                        format!("a second Mesh; the first is at {}", first.source),
                    ));
                }
                mesh = Some(parsed);
                Ok(())
            }
            "Cluster" => {
                expect_api(&doc, &kind, &api, CAUSEWAY_API)?;
                let parsed = parse_cluster(&doc)?;
                if let Some(first) = clusters.iter().find(|c| c.id == parsed.id) {
                    return Err(doc.error(
                        Some(&format!("Cluster {}", parsed.id)),
                        Some("metadata.name"),
                        format!("duplicate cluster id; first declared at {}", first.source),
                    ));
                }
                clusters.push(parsed);
                Ok(())
            }
            other => Err(doc.error(
                Some(other),
                Some("kind"),
                format!("{other} does not belong in mesh.yaml (expected Mesh or Cluster)"),
            )),
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }
    let Some(mesh) = mesh else {
        if errors.is_empty() {
            errors.push(LoadError::file(
                file,
                "no Mesh object (apiVersion causeway.io/v1alpha1, kind Mesh)",
            ));
        }
        return Err(errors);
    };
    if clusters.is_empty() && errors.is_empty() {
        errors.push(LoadError::file(
            file,
            "no Cluster object: a mesh needs at least one cluster",
        ));
    }
    if let Some(declared) = &mesh.networks {
        for c in &clusters {
            if !declared.contains(&c.network) {
                errors.push(LoadError {
                    file: c.source.file.clone(),
                    document: Some(c.source.document),
                    line: Some(c.source.line),
                    object: Some(format!("Cluster {}", c.id)),
                    field: Some("spec.network".into()),
                    reason: format!(
                        "unknown network {:?}; Mesh spec.networks declares {}",
                        c.network.as_str(),
                        join(declared)
                    ),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(MeshConfig { mesh, clusters })
    } else {
        Err(errors)
    }
}

fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_mesh(doc: &Doc<'_>) -> Result<MeshSpec, LoadError> {
    let obj: wire::Object<wire::MeshSpec> = doc.typed(Some("Mesh"))?;
    let name = required_name(doc, "Mesh", &obj.metadata)?;
    let object = format!("Mesh {name}");
    let spec = obj.spec;
    let td = spec.trust_domain.trim();
    let td_ok = !td.is_empty()
        && td.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_'
        });
    if !td_ok {
        return Err(doc.error(
            Some(&object),
            Some("spec.trustDomain"),
            format!(
                "{td:?} is not a SPIFFE trust domain (lower-case letters, digits, '.', '-', '_')"
            ),
        ));
    }
    let discovery = match spec.discovery.as_deref() {
        None | Some("exported") => DiscoveryMode::Exported,
        Some("sameness") => DiscoveryMode::Sameness,
        Some(other) => {
            return Err(doc.error(
                Some(&object),
                Some("spec.discovery"),
                format!("{other:?} is not exported or sameness"),
            ))
        }
    };
    let cluster_local = match spec.cluster_local {
        None => vec![ClusterLocalRule {
            namespace: "kube-system".into(),
            name: None,
        }],
        Some(rules) => rules
            .into_iter()
            .map(|r| ClusterLocalRule {
                namespace: r.namespace,
                name: r.name,
            })
            .collect(),
    };
    let networks = match spec.networks {
        None => None,
        Some(list) => {
            let mut set = BTreeSet::new();
            for (i, n) in list.into_iter().enumerate() {
                let id = NetworkId::new(n).map_err(|e| {
                    doc.error(
                        Some(&object),
                        Some(&format!("spec.networks[{i}]")),
                        e.to_string(),
                    )
                })?;
                set.insert(id);
            }
            Some(set)
        }
    };
    Ok(MeshSpec {
        name,
        trust_domain: td.to_owned(),
        discovery,
        cluster_local,
        networks,
        source: doc.source(),
    })
}

fn parse_cluster(doc: &Doc<'_>) -> Result<ClusterSpec, LoadError> {
    let obj: wire::Object<wire::ClusterSpec> = doc.typed(Some("Cluster"))?;
    let name = required_name(doc, "Cluster", &obj.metadata)?;
    let object = format!("Cluster {name}");
    let id = ClusterId::new(&name)
        .map_err(|e| doc.error(Some(&object), Some("metadata.name"), e.to_string()))?;
    let network = NetworkId::new(&obj.spec.network)
        .map_err(|e| doc.error(Some(&object), Some("spec.network"), e.to_string()))?;
    let locality = parse_locality(doc, &object, "spec.locality", &obj.spec.locality)?;
    let mut gateways = Vec::new();
    for (i, g) in obj.spec.gateways.iter().enumerate() {
        let address = parse_ip(
            doc,
            &object,
            &format!("spec.gateways[{i}].address"),
            &g.address,
        )?;
        if g.port == 0 {
            return Err(doc.error(
                Some(&object),
                Some(&format!("spec.gateways[{i}].port")),
                "must be 1-65535",
            ));
        }
        gateways.push(Gateway {
            address,
            port: g.port,
        });
    }
    let kubernetes = match &obj.spec.kubernetes {
        None => None,
        Some(k) => {
            if k.kubeconfig.trim().is_empty() {
                return Err(doc.error(
                    Some(&object),
                    Some("spec.kubernetes.kubeconfig"),
                    "must name the kubeconfig file of the cluster's API server",
                ));
            }
            Some(KubernetesSource {
                kubeconfig: PathBuf::from(&k.kubeconfig),
                context: k.context.clone().filter(|c| !c.is_empty()),
            })
        }
    };
    let stale_endpoint_ttl = match &obj.spec.stale_endpoint_ttl {
        None => None,
        Some(text) => Some(humantime::parse_duration(text).map_err(|e| {
            doc.error(
                Some(&object),
                Some("spec.staleEndpointTtl"),
                format!("{text:?} is not a duration such as 30s, 5m or 1h: {e}"),
            )
        })?),
    };
    let gateway_identity = obj
        .spec
        .gateway_identity
        .as_ref()
        .map(|g| parse_gateway_identity(doc, &object, g))
        .transpose()?;
    Ok(ClusterSpec {
        id,
        network,
        locality,
        gateways,
        gateway_identity,
        kubernetes,
        stale_endpoint_ttl,
        source: doc.source(),
    })
}

/// Parses one file of a cluster directory into `objects`, collecting errors.
pub fn parse_cluster_documents(
    file: &Path,
    text: &str,
    objects: &mut ClusterObjects,
    errors: &mut Vec<LoadError>,
) {
    for (index, (start_line, text)) in split_documents(text).iter().enumerate() {
        let doc = Doc {
            file,
            index,
            start_line: *start_line,
            text,
        };
        if let Err(e) = parse_cluster_object(&doc, objects) {
            errors.push(e);
        }
    }
}

fn duplicate(doc: &Doc<'_>, object: &str, first: &ObjectSource) -> LoadError {
    doc.error(
        Some(object),
        Some("metadata.name"),
        format!("duplicate object; first declared at {first}"),
    )
}

fn parse_cluster_object(doc: &Doc<'_>, objects: &mut ClusterObjects) -> Result<(), LoadError> {
    let (api, kind) = type_of(doc)?;
    match kind.as_str() {
        "Service" => {
            expect_api(doc, &kind, &api, "v1")?;
            let svc = parse_service(doc)?;
            if let Some(first) = objects.services.get(&svc.key) {
                return Err(duplicate(doc, &format!("Service {}", svc.key), &first.source));
            }
            objects.services.insert(svc.key.clone(), svc);
        }
        "WorkloadEntry" => {
            expect_api(doc, &kind, &api, CAUSEWAY_API)?;
            let we = parse_workload_entry(doc)?;
            let key = (we.namespace.clone(), we.name.clone());
            if let Some(first) = objects.workload_entries.get(&key) {
                return Err(duplicate(doc, &format!("WorkloadEntry {}/{}", key.0, key.1), &first.source));
            }
            objects.workload_entries.insert(key, we);
        }
        "EndpointSlice" => {
            expect_api(doc, &kind, &api, "discovery.k8s.io/v1")?;
            let slice = parse_endpoint_slice(doc)?;
            let key = (slice.namespace.clone(), slice.name.clone());
            if let Some(first) = objects.endpoint_slices.get(&key) {
                return Err(duplicate(doc, &format!("EndpointSlice {}/{}", key.0, key.1), &first.source));
            }
            objects.endpoint_slices.insert(key, slice);
        }
        "ServiceExport" => {
            expect_api(doc, &kind, &api, "multicluster.x-k8s.io/v1alpha1")?;
            let export = parse_service_export(doc)?;
            if let Some(first) = objects.exports.get(&export.key) {
                return Err(duplicate(doc, &format!("ServiceExport {}", export.key), &first.source));
            }
            objects.exports.insert(export.key.clone(), export);
        }
        "AuthorizationPolicy" => {
            expect_api(doc, &kind, &api, CAUSEWAY_API)?;
            let policy = parse_policy(doc)?;
            let key = (policy.namespace.clone(), policy.name.clone());
            if let Some(first) = objects.policies.get(&key) {
                return Err(duplicate(doc, &format!("AuthorizationPolicy {}/{}", key.0, key.1), &first.source));
            }
            objects.policies.insert(key, policy);
        }
        "Mesh" | "Cluster" => {
            return Err(doc.error(
                Some(&kind),
                Some("kind"),
                format!("{kind} objects belong in mesh.yaml, not in a cluster directory"),
            ))
        }
        other => {
            return Err(doc.error(
                Some(other),
                Some("kind"),
                format!("{other} is not supported in a cluster directory (Service, WorkloadEntry, EndpointSlice, ServiceExport, AuthorizationPolicy)"),
            ))
        }
    }
    Ok(())
}

fn parse_service(doc: &Doc<'_>) -> Result<Service, LoadError> {
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
    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    let several = obj.spec.ports.len() > 1;
    for (i, p) in obj.spec.ports.into_iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        if p.port == 0 {
            return Err(doc.error(Some(&object), Some(&field("port")), "must be 1-65535"));
        }
        let protocol = p.protocol.unwrap_or_else(|| "TCP".into());
        if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            return Err(doc.error(
                Some(&object),
                Some(&field("protocol")),
                format!("{protocol:?} is not TCP, UDP or SCTP"),
            ));
        }
        if !seen.insert((p.port, protocol.clone())) {
            return Err(doc.error(
                Some(&object),
                Some(&field("port")),
                format!("port {} {protocol} is listed twice", p.port),
            ));
        }
        if several && p.name.as_deref().is_none_or(str::is_empty) {
            return Err(doc.error(
                Some(&object),
                Some(&field("name")),
                "required when a Service has several ports",
            ));
        }
        let target_port = match p.target_port {
            None => TargetPort::Number(p.port),
            Some(wire::IntOrString::Int(0)) => {
                return Err(doc.error(Some(&object), Some(&field("targetPort")), "must be 1-65535"))
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

fn parse_workload_entry(doc: &Doc<'_>) -> Result<WorkloadEntry, LoadError> {
    let obj: wire::Object<wire::WorkloadEntrySpec> = doc.typed(Some("WorkloadEntry"))?;
    let name = required_name(doc, "WorkloadEntry", &obj.metadata)?;
    let namespace = namespace_of(&obj.metadata);
    let object = format!("WorkloadEntry {namespace}/{name}");
    let spec = obj.spec;
    let address = parse_ip(doc, &object, "spec.address", &spec.address)?;
    for (port_name, port) in &spec.ports {
        if *port == 0 {
            return Err(doc.error(
                Some(&object),
                Some(&format!("spec.ports.{port_name}")),
                "must be 1-65535",
            ));
        }
    }
    let locality = spec
        .locality
        .as_deref()
        .map(|l| parse_locality(doc, &object, "spec.locality", l))
        .transpose()?;
    let network = spec
        .network
        .map(|n| {
            NetworkId::new(n)
                .map_err(|e| doc.error(Some(&object), Some("spec.network"), e.to_string()))
        })
        .transpose()?;
    let weight = spec.weight.unwrap_or(1);
    if weight == 0 {
        return Err(doc.error(
            Some(&object),
            Some("spec.weight"),
            "must be at least 1 (remove the entry or mark it unhealthy instead)",
        ));
    }
    let health = match spec.health.as_deref() {
        None | Some("healthy") => Health::Healthy,
        Some("unhealthy") => Health::Unhealthy,
        Some("draining") => Health::Draining,
        Some(other) => {
            return Err(doc.error(
                Some(&object),
                Some("spec.health"),
                format!("{other:?} is not healthy, unhealthy or draining"),
            ))
        }
    };
    let service_account = spec.service_account.unwrap_or_else(|| "default".into());
    if causeway_model::ClusterId::new(&service_account).is_err() {
        return Err(doc.error(
            Some(&object),
            Some("spec.serviceAccount"),
            format!("{service_account:?} is not a valid service account name"),
        ));
    }
    Ok(WorkloadEntry {
        namespace,
        name,
        address,
        ports: spec.ports,
        labels: spec.labels,
        service_account,
        locality,
        network,
        weight,
        health,
        credential_file: spec
            .credential
            .map(|c| credential_path(doc, &object, &c.token_file))
            .transpose()?,
        source: doc.source(),
    })
}

/// `spec.gatewayIdentity` of a `Cluster`: names that are valid Kubernetes names, and a token
/// file inside the mesh directory.
fn parse_gateway_identity(
    doc: &Doc<'_>,
    object: &str,
    spec: &wire::GatewayIdentitySpec,
) -> Result<GatewayIdentity, LoadError> {
    let namespace = spec
        .namespace
        .clone()
        .unwrap_or_else(|| GatewayIdentity::DEFAULT_NAMESPACE.to_owned());
    for (field, value) in [
        ("spec.gatewayIdentity.namespace", &namespace),
        ("spec.gatewayIdentity.serviceAccount", &spec.service_account),
    ] {
        if causeway_model::ClusterId::new(value).is_err() {
            return Err(doc.error(
                Some(object),
                Some(field),
                format!("{value:?} is not a valid name (lowercase letters, digits and '-')"),
            ));
        }
    }
    let credential_file = spec
        .credential
        .as_ref()
        .map(|c| {
            credential_path_at(
                doc,
                object,
                "spec.gatewayIdentity.credential.tokenFile",
                &c.token_file,
            )
        })
        .transpose()?;
    Ok(GatewayIdentity {
        namespace,
        service_account: spec.service_account.clone(),
        credential_file,
    })
}

/// Checks a bootstrap credential path lexically: it must name a file inside the mesh directory,
/// so it is relative and has no `..` component. (Symbolic links are resolved and checked where
/// the file is read.)
fn credential_path(doc: &Doc<'_>, object: &str, value: &str) -> Result<PathBuf, LoadError> {
    credential_path_at(doc, object, "spec.credential.tokenFile", value)
}

/// [`credential_path`] for the field `field`.
fn credential_path_at(
    doc: &Doc<'_>,
    object: &str,
    field: &str,
    value: &str,
) -> Result<PathBuf, LoadError> {
    let path = Path::new(value);
    let reason = if value.trim().is_empty() {
        Some("must name a token file inside the mesh directory".to_owned())
    } else if path.is_absolute() {
        Some(format!(
            "{value:?} is an absolute path; a credential file must lie inside the mesh directory (give it relative to the directory)"
        ))
    } else if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        Some(format!(
            "{value:?} contains '..'; a credential file must lie inside the mesh directory"
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(doc.error(Some(object), Some(field), reason)),
        None => Ok(path.to_path_buf()),
    }
}

fn parse_endpoint_slice(doc: &Doc<'_>) -> Result<EndpointSlice, LoadError> {
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
    let mut endpoints = Vec::new();
    for (i, ep) in obj.endpoints.into_iter().enumerate() {
        if ep.addresses.is_empty() {
            return Err(doc.error(
                Some(&object),
                Some(&format!("endpoints[{i}].addresses")),
                "needs at least one address",
            ));
        }
        let mut addresses = Vec::new();
        for (j, a) in ep.addresses.iter().enumerate() {
            addresses.push(parse_ip(
                doc,
                &object,
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
        });
    }
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

fn parse_service_export(doc: &Doc<'_>) -> Result<ServiceExport, LoadError> {
    let obj: wire::ServiceExport = doc.typed(Some("ServiceExport"))?;
    let name = required_name(doc, "ServiceExport", &obj.metadata)?;
    let key = ServiceKey::new(namespace_of(&obj.metadata), name);
    let object = format!("ServiceExport {key}");
    let export_to = match obj.metadata.annotations.get(EXPORT_TO_ANNOTATION) {
        None => None,
        Some(list) => {
            let field = format!("metadata.annotations[{EXPORT_TO_ANNOTATION}]");
            let mut set = BTreeSet::new();
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let id = ClusterId::new(part).map_err(|e| {
                    doc.error(Some(&object), Some(&field), format!("cluster id {e}"))
                })?;
                set.insert(id);
            }
            if set.is_empty() {
                return Err(doc.error(
                    Some(&object),
                    Some(&field),
                    "lists no cluster; remove the annotation to export everywhere",
                ));
            }
            Some(set)
        }
    };
    let created = obj
        .metadata
        .creation_timestamp
        .as_deref()
        .map(|ts| {
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .map_err(|e| {
                    doc.error(
                        Some(&object),
                        Some("metadata.creationTimestamp"),
                        format!("{ts:?} is not RFC 3339: {e}"),
                    )
                })
        })
        .transpose()?;
    Ok(ServiceExport {
        key,
        export_to,
        created,
        source: doc.source(),
    })
}

fn parse_policy(doc: &Doc<'_>) -> Result<AuthorizationPolicy, LoadError> {
    let obj: wire::Object<wire::AuthorizationPolicySpec> =
        doc.typed(Some("AuthorizationPolicy"))?;
    let name = required_name(doc, "AuthorizationPolicy", &obj.metadata)?;
    let namespace = namespace_of(&obj.metadata);
    policy_from_spec(&namespace, &name, &obj.spec, doc.source())
}

/// Validates an `AuthorizationPolicy` spec into the model: the one place where its selector,
/// action, principals, clusters, ports and paths are checked, whichever registry it came from.
/// Errors carry `source` (file, document, line), the object `AuthorizationPolicy
/// <namespace>/<name>` and the field path, e.g. `spec.rules[0].from[1].principals[0]`.
pub fn policy_from_spec(
    namespace: &str,
    name: &str,
    spec: &wire::AuthorizationPolicySpec,
    source: ObjectSource,
) -> Result<AuthorizationPolicy, LoadError> {
    let object = format!("AuthorizationPolicy {namespace}/{name}");
    let error = |field: String, reason: String| LoadError {
        file: source.file.clone(),
        document: Some(source.document),
        line: Some(source.line),
        object: Some(object.clone()),
        field: Some(field),
        reason,
    };
    let action = match spec.action.as_deref() {
        None | Some("ALLOW") => PolicyAction::Allow,
        Some("DENY") => PolicyAction::Deny,
        Some(other) => {
            return Err(error(
                "spec.action".into(),
                format!("{other:?} is not ALLOW or DENY"),
            ))
        }
    };
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let mut from = Vec::new();
        for (j, src) in rule.from.iter().enumerate() {
            for (k, p) in src.principals.iter().enumerate() {
                let exact = p.strip_suffix('*').is_none();
                let valid = if exact {
                    SpiffeId::parse(p).is_ok()
                } else {
                    p.starts_with("spiffe://")
                };
                if !valid {
                    return Err(error(
                        format!("spec.rules[{i}].from[{j}].principals[{k}]"),
                        format!("{p:?} is not a SPIFFE ID (spiffe://<trust-domain>/ns/<ns>/sa/<sa>) or a prefix of one ending in '*'"),
                    ));
                }
            }
            let mut clusters = Vec::new();
            for (k, c) in src.clusters.iter().enumerate() {
                clusters.push(ClusterId::new(c).map_err(|e| {
                    error(
                        format!("spec.rules[{i}].from[{j}].clusters[{k}]"),
                        e.to_string(),
                    )
                })?);
            }
            from.push(PolicySource {
                principals: src.principals.clone(),
                namespaces: src.namespaces.clone(),
                clusters,
            });
        }
        let mut to = Vec::new();
        for (j, target) in rule.to.iter().enumerate() {
            if let Some(k) = target.ports.iter().position(|p| *p == 0) {
                return Err(error(
                    format!("spec.rules[{i}].to[{j}].ports[{k}]"),
                    "must be 1-65535".into(),
                ));
            }
            if let Some(k) = target.paths.iter().position(|p| !p.starts_with('/')) {
                return Err(error(
                    format!("spec.rules[{i}].to[{j}].paths[{k}]"),
                    "must start with '/'".into(),
                ));
            }
            to.push(PolicyTarget {
                ports: target.ports.clone(),
                paths: target.paths.clone(),
            });
        }
        rules.push(PolicyRule { from, to });
    }
    Ok(AuthorizationPolicy {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        selector: spec.selector.clone().filter(|s| !s.is_empty()),
        action,
        rules,
        source,
    })
}

/// Reads and parses `<root>/mesh.yaml`.
pub fn load_mesh_file(root: &Path) -> Result<MeshConfig, Vec<LoadError>> {
    let rel = PathBuf::from("mesh.yaml");
    let text = std::fs::read_to_string(root.join(&rel))
        .map_err(|e| vec![LoadError::file(&rel, format!("cannot read: {e}"))])?;
    parse_mesh_documents(&rel, &text)
}

/// Reads and parses every `*.yaml`/`*.yml` file of `<root>/clusters/<dir_name>/`, in name order.
/// A missing directory is a cluster with no objects.
pub fn load_cluster_dir(root: &Path, dir_name: &str) -> Result<ClusterObjects, Vec<LoadError>> {
    let rel_dir = Path::new("clusters").join(dir_name);
    let dir = root.join(&rel_dir);
    let mut objects = ClusterObjects::default();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(objects),
        Err(e) => {
            return Err(vec![LoadError::file(
                &rel_dir,
                format!("cannot read directory: {e}"),
            )])
        }
    };
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if is_yaml && !name.starts_with('.') && entry.path().is_file() {
            files.insert(name, entry.path());
        }
    }
    for (name, path) in files {
        let rel = rel_dir.join(&name);
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_cluster_documents(&rel, &text, &mut objects, &mut errors),
            Err(e) => errors.push(LoadError::file(&rel, format!("cannot read: {e}"))),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "\
apiVersion: causeway.io/v1alpha1
kind: Mesh
metadata: {name: demo}
spec:
  trustDomain: causeway.local
---
apiVersion: causeway.io/v1alpha1
kind: Cluster
metadata: {name: east}
spec:
  network: net-a
  locality: us/us-1
  gateways: [{address: 127.0.0.10, port: 15443}]
";

    #[test]
    fn splits_documents_with_lines() {
        let docs = split_documents("# c\n---\na: 1\n---\n\n---\nb: 2\nc: 3\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].0, 3);
        assert_eq!(docs[1].0, 7);
    }

    #[test]
    fn parses_mesh() {
        let mesh = parse_mesh_documents(Path::new("mesh.yaml"), MESH).expect("valid mesh");
        assert_eq!(mesh.mesh.trust_domain, "causeway.local");
        assert_eq!(mesh.mesh.discovery, DiscoveryMode::Exported);
        assert_eq!(mesh.clusters[0].id.as_str(), "east");
        assert_eq!(mesh.clusters[0].gateways[0].port, 15443);
        assert_eq!(mesh.clusters[0].source.line, 7);
        assert!(mesh.is_cluster_local(&ServiceKey::new("kube-system", "dns")));
    }

    #[test]
    fn duplicate_cluster_is_named() {
        let text = format!(
            "{MESH}---\n{}",
            MESH.split("---\n").nth(1).expect("cluster doc")
        );
        let errs = parse_mesh_documents(Path::new("mesh.yaml"), &text).expect_err("duplicate");
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].to_string().contains("duplicate cluster id"),
            "{}",
            errs[0]
        );
        assert_eq!(errs[0].line, Some(15));
    }

    #[test]
    fn field_errors_name_file_line_object_field() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  ports:
  - name: http
    port: eighty
";
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(
            Path::new("clusters/east/echo.yaml"),
            text,
            &mut objects,
            &mut errors,
        );
        assert_eq!(errors.len(), 1);
        let e = &errors[0];
        assert_eq!(e.field.as_deref(), Some("spec.ports[0].port"));
        assert_eq!(e.line, Some(7));
        assert_eq!(e.object.as_deref(), Some("Service"));
        let msg = e.to_string();
        assert!(
            msg.starts_with("clusters/east/echo.yaml:7 (document 0)"),
            "{msg}"
        );
    }

    #[test]
    fn semantic_errors_name_object() {
        let text = "\
apiVersion: causeway.io/v1alpha1
kind: WorkloadEntry
metadata: {name: echo-1, namespace: demo}
spec:
  address: not-an-ip
";
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(Path::new("f.yaml"), text, &mut objects, &mut errors);
        assert_eq!(
            errors[0].object.as_deref(),
            Some("WorkloadEntry demo/echo-1")
        );
        assert_eq!(errors[0].field.as_deref(), Some("spec.address"));
    }

    #[test]
    fn unknown_workload_field_is_rejected() {
        let text = "\
apiVersion: causeway.io/v1alpha1
kind: WorkloadEntry
metadata: {name: echo-1}
spec:
  address: 10.0.0.1
  adress: 10.0.0.2
";
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(Path::new("f.yaml"), text, &mut objects, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].reason.contains("adress"), "{}", errors[0]);
    }

    #[test]
    fn credential_files_outside_the_mesh_directory_are_refused() {
        for (token_file, reason) in [
            ("/etc/shadow", "absolute path"),
            ("../outside.token", "contains '..'"),
            ("tokens/../../outside.token", "contains '..'"),
            ("tokens/./../a.token", "contains '..'"),
            ("\"\"", "must name a token file"),
        ] {
            let text = format!(
                "apiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: echo-1, namespace: demo}}\nspec:\n  address: 10.0.0.1\n  credential: {{tokenFile: {token_file}}}\n"
            );
            let mut objects = ClusterObjects::default();
            let mut errors = Vec::new();
            parse_cluster_documents(
                Path::new("clusters/east/w.yaml"),
                &text,
                &mut objects,
                &mut errors,
            );
            assert_eq!(errors.len(), 1, "{token_file}: {errors:?}");
            let e = &errors[0];
            assert_eq!(e.file, Path::new("clusters/east/w.yaml"));
            assert_eq!(e.line, Some(1), "{e}");
            assert_eq!(e.object.as_deref(), Some("WorkloadEntry demo/echo-1"));
            assert_eq!(e.field.as_deref(), Some("spec.credential.tokenFile"));
            assert!(e.reason.contains(reason), "{token_file}: {e}");
            assert!(objects.workload_entries.is_empty());
        }
        let text = "apiVersion: causeway.io/v1alpha1\nkind: WorkloadEntry\nmetadata: {name: echo-1}\nspec: {address: 10.0.0.1, credential: {tokenFile: tokens/./a..b.token}}\n";
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(Path::new("w.yaml"), text, &mut objects, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let we = &objects.workload_entries[&("default".to_owned(), "echo-1".to_owned())];
        assert_eq!(
            we.credential_file.as_deref(),
            Some(Path::new("tokens/./a..b.token"))
        );
    }

    const POLICY: &str = "\
apiVersion: v1
kind: Service
metadata: {name: other, namespace: demo}
spec: {ports: [{port: 80}]}
---
apiVersion: causeway.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: greeter-callers, namespace: demo}
spec:
  selector: {app: greeter}
  action: DENY
  rules:
  - from:
    - principals: [spiffe://causeway.local/ns/demo/sa/client, spiffe://causeway.local/ns/ops/*]
      namespaces: [demo]
      clusters: [alpha]
    to:
    - ports: [8080]
      paths: [/api/*]
";

    #[test]
    fn parses_policy() {
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(Path::new("p.yaml"), POLICY, &mut objects, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let p = &objects.policies[&("demo".to_owned(), "greeter-callers".to_owned())];
        assert_eq!(p.action, PolicyAction::Deny);
        assert_eq!(
            p.selector.as_ref().map(|s| s["app"].as_str()),
            Some("greeter")
        );
        let from = &p.rules[0].from[0];
        assert_eq!(from.principals.len(), 2);
        assert_eq!(from.clusters[0].as_str(), "alpha");
        assert_eq!(p.rules[0].to[0].ports, vec![8080]);
        assert_eq!(p.source.document, 1);
        assert_eq!(p.source.line, 6);
    }

    #[test]
    fn policy_errors_name_document_line_object_field() {
        let cases = [
            ("action: DENY", "action: MAYBE", "spec.action"),
            ("[8080]", "[0]", "spec.rules[0].to[0].ports[0]"),
            ("[/api/*]", "[api]", "spec.rules[0].to[0].paths[0]"),
            ("[alpha]", "[Alpha!]", "spec.rules[0].from[0].clusters[0]"),
            (
                "spiffe://causeway.local/ns/demo/sa/client,",
                "demo/client,",
                "spec.rules[0].from[0].principals[0]",
            ),
        ];
        for (from, to, field) in cases {
            let text = POLICY.replace(from, to);
            let mut objects = ClusterObjects::default();
            let mut errors = Vec::new();
            parse_cluster_documents(Path::new("p.yaml"), &text, &mut objects, &mut errors);
            assert_eq!(errors.len(), 1, "{to}: {errors:?}");
            let e = &errors[0];
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
            assert_eq!(
                e.object.as_deref(),
                Some("AuthorizationPolicy demo/greeter-callers")
            );
            assert_eq!((e.document, e.line), (Some(1), Some(6)), "{e}");
        }
    }

    #[test]
    fn parses_every_cluster_kind() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo, annotations: {causeway.io/cluster-local: \"true\"}}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: causeway.io/v1alpha1
kind: WorkloadEntry
metadata: {name: echo-1, namespace: demo}
spec: {address: 10.0.0.1, labels: {app: echo}, serviceAccount: echo, weight: 2, health: draining}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-abc, namespace: demo, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.2]
  zone: z2
- addresses: [10.0.0.3]
  conditions: {ready: false}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata:
  name: echo
  namespace: demo
  creationTimestamp: \"2026-01-02T03:04:05Z\"
  annotations: {causeway.io/export-to: \"west, north\"}
";
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(Path::new("f.yaml"), text, &mut objects, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let key = ServiceKey::new("demo", "echo");
        assert!(objects.services[&key].cluster_local);
        let we = &objects.workload_entries[&("demo".to_owned(), "echo-1".to_owned())];
        assert_eq!((we.weight, we.health), (2, Health::Draining));
        let slice = &objects.endpoint_slices[&("demo".to_owned(), "echo-abc".to_owned())];
        assert_eq!(slice.endpoints.iter().filter(|e| e.ready).count(), 1);
        let export = &objects.exports[&key];
        assert_eq!(export.created, Some(1_767_323_045));
        assert_eq!(export.export_to.as_ref().map(|s| s.len()), Some(2));
    }
}
