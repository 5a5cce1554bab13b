//! The protocol state of a Causeway proxy's delta ADS stream, apart from I/O: the resources it
//! holds (validated, with their versions), what to answer to each response (ACK, or NACK with
//! every conversion error, keeping the last good resources of that type), and which EDS names
//! to subscribe to as clusters come and go.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;

use crate::dataplane::{
    cluster_config, listener_config, load_assignment, ClusterConfig, ConfigError, ListenerConfig,
    LoadAssignmentConfig, Snapshot,
};
use crate::resources::TypeUrl;

/// `google.rpc.Code.INVALID_ARGUMENT`: what a NACK carries.
pub(super) const INVALID_ARGUMENT: i32 = 3;

/// Resources of one type by name, with the version the server gave each.
#[derive(Debug, Clone)]
struct Held<T> {
    by_name: BTreeMap<String, (String, T)>,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held {
            by_name: BTreeMap::new(),
        }
    }
}

impl<T: Clone> Held<T> {
    fn versions(&self) -> BTreeMap<String, String> {
        self.by_name
            .iter()
            .map(|(n, (v, _))| (n.clone(), v.clone()))
            .collect()
    }

    /// The held set after a response, or every resource that did not convert.
    fn updated(
        &self,
        r: &DeltaDiscoveryResponse,
        convert: impl Fn(&Any) -> Result<(String, T), ConfigError>,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut next = self.clone();
        let mut errors = Vec::new();
        for res in &r.resources {
            let Some(any) = &res.resource else {
                // A resource without a body is a heartbeat or an alias; nothing to apply.
                continue;
            };
            match convert(any) {
                Ok((name, value)) if name == res.name || res.name.is_empty() => {
                    next.by_name.insert(name, (res.version.clone(), value));
                }
                Ok((name, _)) => errors.push(ConfigError {
                    resource: format!("{} {}", r.type_url, res.name),
                    field: "name".into(),
                    reason: format!("the resource calls itself {name:?}"),
                }),
                Err(e) => errors.push(e),
            }
        }
        for gone in &r.removed_resources {
            next.by_name.remove(gone);
        }
        if errors.is_empty() {
            Ok(next)
        } else {
            Err(errors)
        }
    }

    fn values(&self) -> BTreeMap<String, T> {
        self.by_name
            .iter()
            .map(|(n, (_, t))| (n.clone(), t.clone()))
            .collect()
    }
}

pub(super) fn decode<M: Message + Default>(t: TypeUrl, any: &Any) -> Result<M, ConfigError> {
    if any.type_url != t.as_str() {
        return Err(ConfigError {
            resource: any.type_url.clone(),
            field: "type_url".into(),
            reason: format!("expected {}", t.as_str()),
        });
    }
    M::decode(any.value.as_slice()).map_err(|e| ConfigError {
        resource: t.short().to_owned(),
        field: "(resource)".into(),
        reason: format!("undecodable: {e}"),
    })
}

/// What the stream holds and answers.
#[derive(Debug, Default)]
pub struct DeltaState {
    listeners: Held<ListenerConfig>,
    clusters: Held<ClusterConfig>,
    assignments: Held<LoadAssignmentConfig>,
    /// EDS names subscribed to so far.
    eds_subscribed: BTreeSet<String>,
    generation: u64,
}

/// The reply to one response and its effects.
#[derive(Debug)]
pub struct Reply {
    /// The ACK or NACK to send.
    pub answer: DeltaDiscoveryRequest,
    /// Every conversion error when the response was refused.
    pub refused: Vec<ConfigError>,
    /// EDS (un)subscriptions to send after the answer, when the clusters changed.
    pub eds: Option<DeltaDiscoveryRequest>,
    /// A new snapshot to serve, when anything changed.
    pub snapshot: Option<Snapshot>,
}

impl DeltaState {
    /// The first requests of a stream: CDS and LDS as wildcards, EDS for the clusters held,
    /// each with what is already held so that a reconnect sends only what changed. The node
    /// goes on the first.
    pub fn opening_requests(
        &self,
        node: envoy_types::pb::envoy::config::core::v3::Node,
    ) -> Vec<DeltaDiscoveryRequest> {
        let mut out = vec![
            DeltaDiscoveryRequest {
                node: Some(node),
                type_url: TypeUrl::Cluster.as_str().to_owned(),
                initial_resource_versions: self.clusters.versions().into_iter().collect(),
                ..Default::default()
            },
            DeltaDiscoveryRequest {
                type_url: TypeUrl::Listener.as_str().to_owned(),
                initial_resource_versions: self.listeners.versions().into_iter().collect(),
                ..Default::default()
            },
        ];
        if !self.eds_subscribed.is_empty() {
            out.push(DeltaDiscoveryRequest {
                type_url: TypeUrl::ClusterLoadAssignment.as_str().to_owned(),
                resource_names_subscribe: self.eds_subscribed.iter().cloned().collect(),
                initial_resource_versions: self.assignments.versions().into_iter().collect(),
                ..Default::default()
            });
        }
        out
    }

    /// Applies a response of any type: all of it, or none of it with a NACK.
    pub fn on_response(&mut self, r: &DeltaDiscoveryResponse) -> Reply {
        let Some(t) = TypeUrl::parse(&r.type_url) else {
            let e = ConfigError {
                resource: r.type_url.clone(),
                field: "type_url".into(),
                reason: "a type the Causeway proxy does not subscribe to".into(),
            };
            return self.refuse(r, vec![e]);
        };
        let applied = match t {
            TypeUrl::Listener => self
                .listeners
                .updated(r, |a| {
                    let l: Listener = decode(t, a)?;
                    listener_config(&l).map(|c| (l.name.clone(), c))
                })
                .map(|h| self.listeners = h),
            TypeUrl::Cluster => self
                .clusters
                .updated(r, |a| {
                    let c: Cluster = decode(t, a)?;
                    cluster_config(&c).map(|cfg| (c.name.clone(), cfg))
                })
                .map(|h| self.clusters = h),
            TypeUrl::ClusterLoadAssignment => self
                .assignments
                .updated(r, |a| {
                    let la: ClusterLoadAssignment = decode(t, a)?;
                    load_assignment(&la).map(|cfg| (la.cluster_name.clone(), cfg))
                })
                .map(|h| self.assignments = h),
        };
        if let Err(errors) = applied {
            return self.refuse(r, errors);
        }
        let eds = (t == TypeUrl::Cluster).then(|| self.eds_change()).flatten();
        self.generation += 1;
        Reply {
            answer: DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            },
            refused: Vec::new(),
            eds,
            snapshot: Some(self.snapshot()),
        }
    }

    fn refuse(&self, r: &DeltaDiscoveryResponse, errors: Vec<ConfigError>) -> Reply {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Reply {
            answer: DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
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

    /// Subscribes to the EDS names of new clusters and drops those of removed ones.
    fn eds_change(&mut self) -> Option<DeltaDiscoveryRequest> {
        let wanted: BTreeSet<String> = self.snapshot_clusters_eds();
        let subscribe: Vec<String> = wanted.difference(&self.eds_subscribed).cloned().collect();
        let unsubscribe: Vec<String> = self.eds_subscribed.difference(&wanted).cloned().collect();
        if subscribe.is_empty() && unsubscribe.is_empty() {
            return None;
        }
        for gone in &unsubscribe {
            self.assignments.by_name.remove(gone);
        }
        self.eds_subscribed = wanted;
        Some(DeltaDiscoveryRequest {
            type_url: TypeUrl::ClusterLoadAssignment.as_str().to_owned(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            ..Default::default()
        })
    }

    fn snapshot_clusters_eds(&self) -> BTreeSet<String> {
        Snapshot {
            clusters: self.clusters.values(),
            ..Default::default()
        }
        .eds_names()
    }

    /// What the proxy serves now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            generation: self.generation,
            listeners: self.listeners.values(),
            clusters: self.clusters.values(),
            assignments: self.assignments.values(),
        }
    }
}
