//! `mesh.yaml`: the one `Mesh` (trust domain, discovery mode, cluster-local rules, networks),
//! a `Cluster` per member (network, locality, gateways, gateway identity, Kubernetes source),
//! and any mesh-wide `TrafficPolicy`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use causeway_model::{
    ClusterId, ClusterLocalRule, ClusterSpec, DiscoveryMode, Gateway, GatewayIdentity,
    KubernetesSource, MeshConfig, MeshSpec, NetworkId, TrafficPolicy,
};

use super::documents::{expect_api, split_documents, type_of, Doc};
use super::fields::{
    credential_path_at, join, parse_duration, parse_ip, parse_locality, required_name,
};
use super::objects::parse_traffic_policy;
use super::policies::check_traffic_policies;
use super::CAUSEWAY_API;
use crate::wire;
use crate::LoadError;

/// Parses `mesh.yaml`: exactly one `Mesh`, one `Cluster` per member, and any `TrafficPolicy`
/// documents (validated, and checked against each other, but not returned: see
/// [`crate::MeshDirectory::traffic_policies`]).
pub fn parse_mesh_documents(file: &Path, text: &str) -> Result<MeshConfig, Vec<LoadError>> {
    let MeshFile {
        config,
        traffic_policies,
        mut errors,
    } = parse_mesh_file(file, text);
    errors.extend(check_traffic_policies(&traffic_policies));
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(errors),
    }
}

/// What one `mesh.yaml` holds.
pub(super) struct MeshFile {
    /// The mesh settings, when the `Mesh` and `Cluster` documents are valid and no document
    /// failed.
    pub(super) config: Option<MeshConfig>,
    /// The valid `TrafficPolicy` documents (not yet checked against each other).
    pub(super) traffic_policies: Vec<TrafficPolicy>,
    /// Every error.
    pub(super) errors: Vec<LoadError>,
}

/// Parses `mesh.yaml` into its mesh settings and traffic policies.
pub(super) fn parse_mesh_file(file: &Path, text: &str) -> MeshFile {
    let mut errors = Vec::new();
    let mut mesh: Option<MeshSpec> = None;
    let mut clusters: Vec<ClusterSpec> = Vec::new();
    let mut traffic_policies = Vec::new();
    for (index, (start_line, text)) in split_documents(text).iter().enumerate() {
        let doc = Doc {
            file,
            index,
            start_line: *start_line,
            text,
        };
        let mut found = MeshObjects {
            mesh: &mut mesh,
            clusters: &mut clusters,
            traffic_policies: &mut traffic_policies,
        };
        if let Err(e) = parse_mesh_object(&doc, &mut found) {
            errors.push(e);
        }
    }
    let config = match mesh {
        None => {
            if errors.is_empty() {
                errors.push(LoadError::file(
                    file,
                    "no Mesh object (apiVersion causeway.io/v1alpha1, kind Mesh)",
                ));
            }
            None
        }
        Some(mesh) => {
            if clusters.is_empty() && errors.is_empty() {
                errors.push(LoadError::file(
                    file,
                    "no Cluster object: a mesh needs at least one cluster",
                ));
            }
            check_networks(&mesh, &clusters, &mut errors);
            errors.is_empty().then_some(MeshConfig {
                mesh,
                clusters,
                traffic_policies: Vec::new(),
            })
        }
    };
    MeshFile {
        config,
        traffic_policies,
        errors,
    }
}

/// What the documents of `mesh.yaml` read so far declared.
struct MeshObjects<'a> {
    mesh: &'a mut Option<MeshSpec>,
    clusters: &'a mut Vec<ClusterSpec>,
    traffic_policies: &'a mut Vec<TrafficPolicy>,
}

/// One document of `mesh.yaml`: the `Mesh` (a second one is an error), a `Cluster` (whose id
/// must be new) or a `TrafficPolicy`.
fn parse_mesh_object(doc: &Doc<'_>, found: &mut MeshObjects<'_>) -> Result<(), LoadError> {
    let (api, kind) = type_of(doc)?;
    match kind.as_str() {
        "Mesh" => {
            expect_api(doc, &kind, &api, CAUSEWAY_API)?;
            let parsed = parse_mesh(doc)?;
            if let Some(first) = found.mesh.as_ref() {
                return Err(doc.error(
                    Some(&format!("Mesh {}", parsed.name)),
                    None,
                    format!("a second Mesh; the first is at {}", first.source),
                ));
            }
            *found.mesh = Some(parsed);
            Ok(())
        }
        "Cluster" => {
            expect_api(doc, &kind, &api, CAUSEWAY_API)?;
            let parsed = parse_cluster(doc)?;
            if let Some(first) = found.clusters.iter().find(|c| c.id == parsed.id) {
                return Err(doc.error(
                    Some(&format!("Cluster {}", parsed.id)),
                    Some("metadata.name"),
                    format!("duplicate cluster id; first declared at {}", first.source),
                ));
            }
            found.clusters.push(parsed);
            Ok(())
        }
        "TrafficPolicy" => {
            expect_api(doc, &kind, &api, CAUSEWAY_API)?;
            found.traffic_policies.push(parse_traffic_policy(doc)?);
            Ok(())
        }
        other => Err(doc.error(
            Some(other),
            Some("kind"),
            format!(
                "{other} does not belong in mesh.yaml (expected Mesh, Cluster or TrafficPolicy)"
            ),
        )),
    }
}

/// When the Mesh declares its networks, every cluster must be on one of them.
fn check_networks(mesh: &MeshSpec, clusters: &[ClusterSpec], errors: &mut Vec<LoadError>) {
    let Some(declared) = &mesh.networks else {
        return;
    };
    for c in clusters {
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
        Some(text) => Some(
            parse_duration(text)
                .map_err(|e| doc.error(Some(&object), Some("spec.staleEndpointTtl"), e))?,
        ),
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use causeway_model::{DiscoveryMode, ServiceKey};

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
    fn traffic_policies_may_live_in_mesh_yaml() {
        let policy = "apiVersion: causeway.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec: {service: echo, mode: FailOver, clusters: [{name: east}]}\n";
        let text = format!("{MESH}---\n{policy}");
        let file = parse_mesh_file(Path::new("mesh.yaml"), &text);
        assert!(file.errors.is_empty(), "{:?}", file.errors);
        assert_eq!(file.traffic_policies.len(), 1);
        assert_eq!(file.traffic_policies[0].source.line, 15);
        assert!(parse_mesh_documents(Path::new("mesh.yaml"), &text).is_ok());

        let broken = format!("{MESH}---\n{}", policy.replace("FailOver", "Fail"));
        let errs = parse_mesh_documents(Path::new("mesh.yaml"), &broken).expect_err("bad mode");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            errs[0].to_string(),
            "mesh.yaml:15 (document 2): TrafficPolicy default/p: field spec.mode: \"Fail\" is not \
             Locality (the default), ActiveActive or FailOver"
        );
        let twice = format!("{text}---\n{policy}");
        let errs = parse_mesh_documents(Path::new("mesh.yaml"), &twice).expect_err("twice");
        assert_eq!(errs[0].field.as_deref(), Some("metadata.name"), "{errs:?}");
    }
}
