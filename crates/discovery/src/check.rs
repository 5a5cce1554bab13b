//! `causeway check`: mesh-wide rules over a loaded mesh directory, beyond what one file's
//! validation can see.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use causeway_model::{ClusterId, ClusterObjects, EndpointSlice, MeshConfig, ObjectSource};
use serde::Serialize;

use crate::cluster_index::ResolvedEndpoint;
use crate::{ClusterService, ConditionKind, MeshIndex};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Works, but probably not as meant.
    Warning,
    /// Wrong: `causeway check` exits 1.
    Error,
}

/// One finding, pointing at the object and field to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// File relative to the mesh directory.
    pub file: Option<PathBuf>,
    /// One-based line.
    pub line: Option<usize>,
    /// `Kind namespace/name`.
    pub object: Option<String>,
    /// Field path.
    pub field: Option<String>,
    /// What is wrong and what it causes.
    pub message: String,
}

impl Diagnostic {
    fn at(
        severity: Severity,
        source: &ObjectSource,
        object: String,
        field: Option<&str>,
        message: String,
    ) -> Self {
        Self {
            severity,
            file: Some(source.file.clone()),
            line: Some(source.line),
            object: Some(object),
            field: field.map(str::to_owned),
            message,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: ")?;
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
        }
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "field {field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// Mesh-wide rules: unknown networks and clusters, networks without a gateway in a
/// multi-network mesh, export conflicts, exports without a service, selectors that match
/// nothing, service ports with endpoints of no known identity.
pub fn check_mesh(
    mesh: &MeshConfig,
    clusters: &BTreeMap<ClusterId, ClusterObjects>,
    index: &MeshIndex,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let networks = mesh.networks();
    let multi_network = networks.len() > 1;
    for cluster in &mesh.clusters {
        let object = format!("Cluster {}", cluster.id);
        if multi_network && mesh.network_gateways(&cluster.network).is_empty() {
            out.push(Diagnostic::at(
                Severity::Error,
                &cluster.source,
                object,
                Some("spec.gateways"),
                format!(
                    "the mesh has {} networks but network {} has no east-west gateway: its services are unreachable from the other networks",
                    networks.len(),
                    cluster.network
                ),
            ));
        } else if multi_network && cluster.gateways.is_empty() {
            out.push(Diagnostic::at(
                Severity::Warning,
                &cluster.source,
                object,
                Some("spec.gateways"),
                format!("no gateway of its own: traffic from other networks enters through another cluster's gateway on network {}", cluster.network),
            ));
        }
    }
    for (id, objects) in clusters {
        for we in objects.workload_entries.values() {
            if let Some(net) = &we.network {
                if !networks.contains(net) {
                    out.push(Diagnostic::at(
                        Severity::Error,
                        &we.source,
                        format!("WorkloadEntry {}/{}", we.namespace, we.name),
                        Some("spec.network"),
                        format!("unknown network {net} (known: {})", join(networks.iter())),
                    ));
                }
            }
        }
        for export in objects.exports.values() {
            for to in export.export_to.iter().flatten() {
                if mesh.cluster(to).is_none() {
                    out.push(Diagnostic::at(
                        Severity::Error,
                        &export.source,
                        format!("ServiceExport {}", export.key),
                        Some("metadata.annotations[causeway.io/export-to]"),
                        format!(
                            "unknown cluster {to} (clusters: {})",
                            join(mesh.clusters.iter().map(|c| &c.id))
                        ),
                    ));
                }
            }
            if !objects.services.contains_key(&export.key) {
                out.push(Diagnostic::at(
                    Severity::Error,
                    &export.source,
                    format!("ServiceExport {}", export.key),
                    Some("metadata.name"),
                    format!(
                        "cluster {id} has no Service {}: nothing is exported",
                        export.key
                    ),
                ));
            }
        }
        for service in objects.services.values() {
            let Some(selector) = &service.selector else {
                continue;
            };
            let key = &service.key;
            let selected = objects.workload_entries.values().any(|we| {
                we.namespace == key.namespace
                    && selector.iter().all(|(k, v)| we.labels.get(k) == Some(v))
            });
            let sliced = objects
                .endpoint_slices
                .values()
                .any(|s| s.namespace == key.namespace && s.service_name == key.name);
            if !selected && !sliced {
                out.push(Diagnostic::at(
                    Severity::Error,
                    &service.source,
                    format!("Service {key}"),
                    Some("spec.selector"),
                    format!(
                        "selects nothing in cluster {id}: no WorkloadEntry in namespace {} has labels {} and no EndpointSlice names it",
                        key.namespace,
                        join(selector.iter().map(|(k, v)| format!("{k}={v}")))
                    ),
                ));
            }
        }
    }
    for (id, objects) in clusters {
        let Some(resolved) = index.cluster(id) else {
            continue;
        };
        for entry in resolved.services.values() {
            out.extend(endpoints_without_identity(id, objects, entry));
        }
    }
    for service in index.services().values() {
        for condition in service
            .conditions
            .iter()
            .filter(|c| c.kind == ConditionKind::Conflict && c.status)
        {
            let source = service
                .exports
                .first()
                .and_then(|e| clusters.get(&e.cluster))
                .and_then(|o| o.exports.get(&service.key))
                .map(|e| e.source.clone())
                .unwrap_or_default();
            out.push(Diagnostic::at(
                Severity::Error,
                &source,
                format!("ServiceExport {}", service.key),
                None,
                format!(
                    "export conflict ({}): {}",
                    condition.reason, condition.message
                ),
            ));
        }
    }
    out.extend(traffic_policies(mesh, index));
    out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    out
}

/// Traffic policies of every source (the mesh directory and member clusters' custom
/// resources): conflicts between them (errors on the one that does not apply, see
/// [`MeshIndex::traffic_policies`]), clusters the mesh does not have (errors: their traffic
/// would go nowhere) and services that exist in no cluster (warnings: they do nothing yet).
fn traffic_policies(mesh: &MeshConfig, index: &MeshIndex) -> Vec<Diagnostic> {
    let known: std::collections::BTreeSet<ClusterId> =
        mesh.clusters.iter().map(|c| c.id.clone()).collect();
    let services: std::collections::BTreeSet<causeway_model::ServiceKey> =
        index.services().keys().cloned().collect();
    let mut out: Vec<Diagnostic> =
        causeway_registry::check_traffic_policies(index.traffic_policies())
            .into_iter()
            .map(|e| Diagnostic {
                severity: Severity::Error,
                message: match e.field.as_deref() {
                    Some("spec.callers") => format!("{}; this one does not apply", e.reason),
                    _ => e.reason,
                },
                file: Some(e.file),
                line: e.line,
                object: e.object,
                field: e.field,
            })
            .collect();
    for p in index.traffic_policies() {
        let object = format!("TrafficPolicy {}/{}", p.namespace, p.name);
        let unknown = p.unknown_clusters(&known);
        if !unknown.is_empty() {
            out.push(Diagnostic::at(
                Severity::Error,
                &p.source,
                object.clone(),
                Some("spec"),
                format!(
                    "names cluster(s) {} that the mesh does not have (mesh.yaml lists {})",
                    join(unknown.iter()),
                    join(known.iter())
                ),
            ));
        }
        if !p.matches_a_service(&services) {
            out.push(Diagnostic::at(
                Severity::Warning,
                &p.source,
                object,
                Some("spec.service"),
                format!(
                    "service {} exists in no cluster: the policy does nothing until it does",
                    p.service
                ),
            ));
        }
    }
    out
}

const SERVICE_ACCOUNT_FIELD: &str = "metadata.annotations[causeway.io/service-account]";

/// One warning per Service port that has endpoints without a known identity (EndpointSlice
/// endpoints with neither a Pod service account nor the `causeway.io/service-account`
/// annotation): views leave them out, so they never receive mesh traffic. Points at the first
/// EndpointSlice that holds them and names every one.
fn endpoints_without_identity(
    cluster: &ClusterId,
    objects: &ClusterObjects,
    entry: &ClusterService,
) -> Vec<Diagnostic> {
    let key = &entry.service.key;
    let mut out = Vec::new();
    for port_eps in &entry.ports {
        let missing: Vec<&ResolvedEndpoint> = port_eps
            .endpoints
            .iter()
            .filter(|e| e.service_account.is_none())
            .collect();
        if missing.is_empty() {
            continue;
        }
        let port = &port_eps.port;
        let slices: Vec<&EndpointSlice> = objects
            .endpoint_slices
            .values()
            .filter(|s| s.namespace == key.namespace && s.service_name == key.name)
            .filter(|s| s.service_account.is_none())
            .filter(|s| {
                let Some(slice_port) = s.ports.iter().find(|p| p.name == port.name) else {
                    return false;
                };
                s.endpoints.iter().any(|ep| {
                    ep.service_account.is_none()
                        && missing.iter().any(|m| {
                            m.port == slice_port.port && ep.addresses.first() == Some(&m.address)
                        })
                })
            })
            .collect();
        let addresses = join(missing.iter().map(|m| format!("{}:{}", m.address, m.port)));
        let port_name = port
            .name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let message = format!(
            "Service {key} port {}{port_name} in cluster {cluster}: {} endpoint(s) have no known identity ({addresses}){}: they are never reached over mesh mTLS (a client accepts only the exact SPIFFE IDs of a port's endpoints, and there is none to check for them); name their service account with the annotation causeway.io/service-account on the EndpointSlice",
            port.port,
            missing.len(),
            if slices.is_empty() {
                String::new()
            } else {
                format!(
                    " in EndpointSlice {}",
                    join(slices.iter().map(|s| format!("{}/{}", s.namespace, s.name)))
                )
            },
        );
        out.push(match slices.first() {
            Some(slice) => Diagnostic::at(
                Severity::Warning,
                &slice.source,
                format!("EndpointSlice {}/{}", slice.namespace, slice.name),
                Some(SERVICE_ACCOUNT_FIELD),
                message,
            ),
            None => Diagnostic::at(
                Severity::Warning,
                &entry.service.source,
                format!("Service {key}"),
                None,
                message,
            ),
        });
    }
    out
}

fn join<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}
