//! The protocol state of a Causeway proxy's state-of-the-world ADS stream, apart from I/O (the
//! delta stream's is `delta_state`): per type the version it accepted and the resources it
//! holds, what to answer to each response (ACK with the new version, or NACK with every
//! conversion error and the last accepted version, keeping the last good resources), and the
//! EDS names to ask for as clusters come and go. Listener and Cluster responses carry the
//! whole set (what is missing is gone); ClusterLoadAssignment responses carry the assignments
//! that changed among those asked for (the xDS protocol's rule for non-wildcard types).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;

use super::delta_state::{decode, INVALID_ARGUMENT};
use crate::dataplane::{
    cluster_config, listener_config, load_assignment, ClusterConfig, ConfigError, ListenerConfig,
    LoadAssignmentConfig, Snapshot,
};
use crate::resources::TypeUrl;

/// The resources of one type and the version they were accepted at.
#[derive(Debug, Clone)]
struct Accepted<T> {
    version: String,
    by_name: BTreeMap<String, T>,
}

impl<T> Default for Accepted<T> {
    fn default() -> Self {
        Accepted {
            version: String::new(),
            by_name: BTreeMap::new(),
        }
    }
}

impl<T: Clone> Accepted<T> {
    /// The set after `r` (the whole set when `whole`, else merged), or every resource that
    /// did not convert.
    fn updated(
        &self,
        r: &DiscoveryResponse,
        whole: bool,
        convert: impl Fn(&Any) -> Result<(String, T), ConfigError>,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut by_name = if whole {
            BTreeMap::new()
        } else {
            self.by_name.clone()
        };
        let mut errors = Vec::new();
        for any in &r.resources {
            match convert(any) {
                Ok((name, value)) => {
                    by_name.insert(name, value);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(Accepted {
                version: r.version_info.clone(),
                by_name,
            })
        } else {
            Err(errors)
        }
    }
}

/// What the stream holds and answers.
#[derive(Debug, Default)]
pub struct SotwState {
    listeners: Accepted<ListenerConfig>,
    clusters: Accepted<ClusterConfig>,
    assignments: Accepted<LoadAssignmentConfig>,
    /// EDS names asked for so far.
    eds_names: BTreeSet<String>,
    generation: u64,
}

/// The reply to one response and its effects.
#[derive(Debug)]
pub struct SotwReply {
    /// The ACK or NACK to send.
    pub answer: DiscoveryRequest,
    /// Every conversion error when the response was refused.
    pub refused: Vec<ConfigError>,
    /// A new EDS request to send after the answer, when the clusters' EDS names changed.
    pub eds: Option<DiscoveryRequest>,
    /// A new snapshot to serve, when anything changed.
    pub snapshot: Option<Snapshot>,
}

impl SotwState {
    /// The first requests of a stream: CDS and LDS (wildcards), and EDS for the names held,
    /// each with the version held so a reconnect is recognised. The node goes on the first.
    pub fn opening_requests(&self, node: Node) -> Vec<DiscoveryRequest> {
        let mut out = vec![
            DiscoveryRequest {
                node: Some(node),
                type_url: TypeUrl::Cluster.as_str().to_owned(),
                version_info: self.clusters.version.clone(),
                ..Default::default()
            },
            DiscoveryRequest {
                type_url: TypeUrl::Listener.as_str().to_owned(),
                version_info: self.listeners.version.clone(),
                ..Default::default()
            },
        ];
        if !self.eds_names.is_empty() {
            out.push(self.eds_request(String::new()));
        }
        out
    }

    fn eds_request(&self, nonce: String) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: TypeUrl::ClusterLoadAssignment.as_str().to_owned(),
            version_info: self.assignments.version.clone(),
            resource_names: self.eds_names.iter().cloned().collect(),
            response_nonce: nonce,
            ..Default::default()
        }
    }

    /// Applies a response of any type: all of it, or none of it with a NACK.
    pub fn on_response(&mut self, r: &DiscoveryResponse) -> SotwReply {
        let Some(t) = TypeUrl::parse(&r.type_url) else {
            let e = ConfigError {
                resource: r.type_url.clone(),
                field: "type_url".into(),
                reason: "a type the Causeway proxy does not subscribe to".into(),
            };
            return self.refuse(r, String::new(), vec![e]);
        };
        let applied = match t {
            TypeUrl::Listener => self
                .listeners
                .updated(r, true, |a| {
                    let l: Listener = decode(t, a)?;
                    listener_config(&l).map(|c| (l.name.clone(), c))
                })
                .map(|h| self.listeners = h)
                .map_err(|e| (self.listeners.version.clone(), e)),
            TypeUrl::Cluster => self
                .clusters
                .updated(r, true, |a| {
                    let c: Cluster = decode(t, a)?;
                    cluster_config(&c).map(|cfg| (c.name.clone(), cfg))
                })
                .map(|h| self.clusters = h)
                .map_err(|e| (self.clusters.version.clone(), e)),
            TypeUrl::ClusterLoadAssignment => self
                .assignments
                .updated(r, false, |a| {
                    let la: ClusterLoadAssignment = decode(t, a)?;
                    load_assignment(&la).map(|cfg| (la.cluster_name.clone(), cfg))
                })
                .map(|h| self.assignments = h)
                .map_err(|e| (self.assignments.version.clone(), e)),
        };
        if let Err((version, errors)) = applied {
            return self.refuse(r, version, errors);
        }
        let eds = (t == TypeUrl::Cluster).then(|| self.eds_change()).flatten();
        self.generation += 1;
        let answer = match t {
            TypeUrl::ClusterLoadAssignment => self.eds_request(r.nonce.clone()),
            _ => DiscoveryRequest {
                type_url: r.type_url.clone(),
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            },
        };
        SotwReply {
            answer,
            refused: Vec::new(),
            eds,
            snapshot: Some(self.snapshot()),
        }
    }

    /// A NACK: the last accepted `version`, the response's nonce, every error.
    fn refuse(
        &self,
        r: &DiscoveryResponse,
        version: String,
        errors: Vec<ConfigError>,
    ) -> SotwReply {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let resource_names = if r.type_url == TypeUrl::ClusterLoadAssignment.as_str() {
            self.eds_names.iter().cloned().collect()
        } else {
            Vec::new()
        };
        SotwReply {
            answer: DiscoveryRequest {
                type_url: r.type_url.clone(),
                version_info: version,
                resource_names,
                response_nonce: r.nonce.clone(),
                error_detail: Some(RpcStatus {
                    code: INVALID_ARGUMENT,
                    message,
                    details: Vec::new(),
                }),
                ..Default::default()
            },
            refused: errors,
            eds: None,
            snapshot: None,
        }
    }

    /// Asks for the EDS names of the clusters held, when they changed; assignments of names no
    /// longer asked for are dropped.
    fn eds_change(&mut self) -> Option<DiscoveryRequest> {
        let wanted = Snapshot {
            clusters: self.clusters.by_name.clone(),
            ..Default::default()
        }
        .eds_names();
        if wanted == self.eds_names {
            return None;
        }
        self.assignments
            .by_name
            .retain(|name, _| wanted.contains(name));
        self.eds_names = wanted;
        Some(self.eds_request(String::new()))
    }

    /// What the proxy serves now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            generation: self.generation,
            listeners: self.listeners.by_name.clone(),
            clusters: self.clusters.by_name.clone(),
            assignments: self.assignments.by_name.clone(),
        }
    }
}
