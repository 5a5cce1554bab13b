//! Delta ADS: per type, what the proxy holds ([`Holdings`]), and only what differs is sent
//! (updates and removals). Every response in flight is answered on its own: a NACK of an
//! earlier response is honoured even after later ones went out.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tokio::sync::mpsc;
use tonic::Status;

use super::holdings::Holdings;
use super::names::{intern, version_id, Name};
use super::stream::Session;
use super::wire::{DeltaResponseWire, WireResource};
use crate::resources::Resource;
use crate::resources::TypeUrl;

/// Bytes of resource names one delta stream may be subscribed to per type. Subscriptions add up
/// over requests (unlike state-of-the-world's, which each request replaces), so without a bound
/// a stream could grow without end; this is the size of one request message, far beyond what a
/// real mesh needs. Beyond it the stream ends with `RESOURCE_EXHAUSTED`.
pub(super) const MAX_SUBSCRIBED_BYTES: usize = super::MAX_REQUEST_BYTES;

/// The size a delta response is cut at (a single larger resource goes out alone). gRPC's
/// encoder keeps, for the stream's whole life, a buffer the size of the largest message it
/// encoded (grown by doubling), so this bounds what that buffer costs every connected proxy:
/// at most 64 KiB.
pub(super) const MAX_RESPONSE_BYTES: usize = 32 * 1024;

/// Bytes a resource adds to a response beyond its encoding (its field tag and length).
const RESOURCE_OVERHEAD_BYTES: usize = 6;

#[derive(Default)]
struct DeltaType {
    subscribed: BTreeSet<Name>,
    wildcard: bool,
    /// Bytes of the names in `subscribed`, at most [`MAX_SUBSCRIBED_BYTES`].
    subscribed_bytes: usize,
    started: bool,
    holdings: Holdings,
}

pub(super) struct Delta {
    pub(super) session: Session,
    types: BTreeMap<TypeUrl, DeltaType>,
    nonce: u64,
    pub(super) out: mpsc::Sender<Result<DeltaResponseWire, Status>>,
}

impl Delta {
    pub(super) fn new(
        session: Session,
        out: mpsc::Sender<Result<DeltaResponseWire, Status>>,
    ) -> Self {
        Self {
            session,
            types: BTreeMap::new(),
            nonce: 0,
            out,
        }
    }

    /// Sends what the proxy lacks of `t`. `candidates` are the only names that may have
    /// changed since the last push (`None`: look at every name); `force` sends a response even
    /// when nothing differs.
    async fn push(
        &mut self,
        t: TypeUrl,
        force: bool,
        candidates: Option<&BTreeSet<String>>,
    ) -> Result<(), ()> {
        let Some(st) = self.types.get_mut(&t) else {
            return Ok(());
        };
        if !st.started || !self.session.built {
            return Ok(());
        }
        let desired = &self.session.desired;
        let in_scope = |name: &str| st.wildcard || st.subscribed.contains(name);
        let held = &mut st.holdings;
        held.prune_rejected(|name| {
            desired
                .get(t, name)
                .filter(|_| in_scope(name))
                .map(Resource::version_id)
        });
        // Each with its version: what the proxy holds once it ACKs the part that carries it.
        let mut resources: Vec<WireResource> = Vec::new();
        let mut removed: Vec<Name> = Vec::new();
        // `name` with its desired resource, if any.
        let mut consider = |name: &str, desired: Option<&Resource>| match desired {
            Some(r) if in_scope(name) => {
                let version = r.version_id();
                if held.known.get(name) != Some(version) {
                    resources.push(WireResource {
                        name: intern(name),
                        version,
                        body: std::sync::Arc::clone(&r.body),
                    });
                }
            }
            Some(_) => {}
            None => {
                if held.known.contains_key(name) {
                    removed.push(intern(name));
                }
            }
        };
        match candidates {
            Some(names) => {
                names.iter().for_each(|n| consider(n, desired.get(t, n)));
                // Refused resources are offered again with every push.
                let refused: Vec<Name> = held
                    .rejected
                    .keys()
                    .filter(|n| !names.contains(&***n))
                    .cloned()
                    .collect();
                refused.iter().for_each(|n| consider(n, desired.get(t, n)));
            }
            None => {
                // Every desired resource as it comes (no lookups), then what is held but no
                // longer desired.
                desired.iter(t).for_each(|(n, r)| consider(n, Some(r)));
                let gone: Vec<Name> = held
                    .known
                    .keys()
                    .filter(|n| desired.get(t, n).is_none())
                    .cloned()
                    .collect();
                gone.iter().for_each(|n| consider(n, None));
            }
        }
        if resources.is_empty() && removed.is_empty() && !force {
            if held.settled() {
                self.session
                    .registry
                    .settled(self.session.conn, t, &held.known.version());
            }
            return Ok(());
        }
        tracing::debug!(node = %self.session.node.id, r#type = t.short(), updated = resources.len(), removed = removed.len(), "pushed (delta)");
        // Large updates go out in parts of about MAX_RESPONSE_BYTES, removals with the last
        // part: each part is a response of its own (delta xDS allows any subset), so no stream
        // holds one huge encoded message (its buffer would stay that size for the stream's
        // life).
        let mut parts: Vec<Vec<WireResource>> = vec![Vec::new()];
        let mut bytes = 0usize;
        for r in resources {
            let size = r.encoded_len() + RESOURCE_OVERHEAD_BYTES;
            if bytes > 0 && bytes + size > MAX_RESPONSE_BYTES {
                parts.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(p) = parts.last_mut() {
                p.push(r);
            }
        }
        let count = parts.len();
        let mut responses = Vec::with_capacity(count);
        let mut removed = Some(removed);
        for (i, part) in parts.into_iter().enumerate() {
            let mut part_changes: BTreeMap<Name, Option<u64>> = part
                .iter()
                .map(|r| (Name::clone(&r.name), Some(r.version)))
                .collect();
            let removed_here = if i + 1 == count {
                removed.take().unwrap_or_default()
            } else {
                Vec::new()
            };
            part_changes.extend(removed_here.iter().map(|n| (Name::clone(n), None)));
            self.nonce += 1;
            let nonce = format!("{}-{}", self.session.conn, self.nonce);
            let version = held.sent(nonce.clone(), part_changes);
            self.session.registry.sent(
                self.session.conn,
                t,
                &version,
                held.known.len(),
                self.session.mesh_version,
            );
            responses.push(DeltaResponseWire {
                system_version_info: version,
                resources: part,
                type_url: t.as_str().to_owned(),
                removed_resources: removed_here.iter().map(|n| n.to_string()).collect(),
                nonce,
            });
        }
        for response in responses {
            self.out.send(Ok(response)).await.map_err(|_| ())?;
        }
        Ok(())
    }

    pub(super) async fn push_all(
        &mut self,
        candidates: Option<&BTreeMap<TypeUrl, BTreeSet<String>>>,
    ) -> Result<(), ()> {
        let none = BTreeSet::new();
        for t in TypeUrl::ORDER {
            let names = candidates.map(|c| c.get(&t).unwrap_or(&none));
            self.push(t, false, names).await?;
        }
        Ok(())
    }

    /// Matches an ACK or NACK to the response in flight with its nonce; an answer to no
    /// response in flight (unknown, or already answered) is ignored.
    fn on_answer(&mut self, t: TypeUrl, req: &DeltaDiscoveryRequest) {
        let Some(st) = self.types.get_mut(&t) else {
            return;
        };
        let held = &mut st.holdings;
        let (conn, registry) = (self.session.conn, &self.session.registry);
        if let Some(err) = &req.error_detail {
            let Some(refused) = held.nack(&req.response_nonce) else {
                return;
            };
            let names: Vec<String> = refused
                .changes
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(n, _)| n.to_string())
                .collect();
            tracing::warn!(
                node = %self.session.node.id,
                cluster = %self.session.node.identity.cluster,
                r#type = t.short(),
                version = %refused.version,
                resources = ?names,
                error = %err.message,
                "proxy rejected config (NACK); it keeps its last good config"
            );
            registry.nacked(conn, t, &refused.version, &err.message, names);
        } else if held.ack(&req.response_nonce).is_some() {
            let outstanding = !held.rejected.is_empty();
            registry.delta_acked(conn, t, &held.acked_version(), outstanding);
            self.session.acked(t);
        }
    }

    pub(super) async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), ()> {
        let Some(t) = TypeUrl::parse(&req.type_url) else {
            tracing::debug!(node = %self.session.node.id, type_url = %req.type_url, "unsupported type requested; ignored");
            return Ok(());
        };
        if !req.response_nonce.is_empty() {
            self.on_answer(t, &req);
        }
        let st = self.types.entry(t).or_default();
        let first = !st.started;
        if first {
            st.started = true;
            st.wildcard = req.resource_names_subscribe.is_empty() && t.full_state();
            // After a reconnect the proxy tells us what it already has.
            st.holdings = Holdings::initial(
                req.initial_resource_versions
                    .iter()
                    .map(|(k, v)| (intern(k), version_id(v)))
                    .collect(),
            );
        }
        let was_wildcard = st.wildcard;
        let mut asked: BTreeSet<String> = BTreeSet::new();
        for name in &req.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
                continue;
            }
            if st.subscribed.insert(intern(name)) {
                st.subscribed_bytes += name.len();
            }
            asked.insert(name.clone());
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                if st.subscribed.remove(name.as_str()) {
                    st.subscribed_bytes -= name.len();
                }
                st.holdings.forget(name);
            }
        }
        if st.subscribed_bytes > MAX_SUBSCRIBED_BYTES {
            let message = format!(
                "{}: subscribed to {} bytes of resource names, more than the {MAX_SUBSCRIBED_BYTES} allowed",
                t.short(),
                st.subscribed_bytes
            );
            tracing::warn!(node = %self.session.node.id, error = %message, "delta stream closed");
            let _ = self.out.try_send(Err(Status::resource_exhausted(message)));
            return Err(());
        }
        if first || st.wildcard != was_wildcard {
            self.push(t, first, None).await
        } else if !asked.is_empty() {
            // Only what this request subscribes to can be owed (an Envoy subscribes to
            // endpoints a cluster response at a time: looking at every name each time made a
            // first config quadratic in its parts).
            self.push(t, false, Some(&asked)).await
        } else {
            Ok(())
        }
    }
}
