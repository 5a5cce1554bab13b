//! Delta ADS: per type, what the proxy holds ([`Holdings`]), and only what differs is sent
//! (updates and removals). Every response in flight is answered on its own: a NACK of an
//! earlier response is honoured even after later ones went out.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as DeltaResource,
};
use tokio::sync::mpsc;
use tonic::Status;

use super::holdings::Holdings;
use super::sotw::version_of;
use super::stream::Session;
use crate::resources::TypeUrl;

/// Bytes of resource names one delta stream may be subscribed to per type. Subscriptions add up
/// over requests (unlike state-of-the-world's, which each request replaces), so without a bound
/// a stream could grow without end; this is the size of one request message, far beyond what a
/// real mesh needs. Beyond it the stream ends with `RESOURCE_EXHAUSTED`.
pub(super) const MAX_SUBSCRIBED_BYTES: usize = super::MAX_REQUEST_BYTES;

#[derive(Default)]
struct DeltaType {
    subscribed: BTreeSet<String>,
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
    pub(super) out: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl Delta {
    pub(super) fn new(
        session: Session,
        out: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Self {
        Self {
            session,
            types: BTreeMap::new(),
            nonce: 0,
            out,
        }
    }

    async fn push(&mut self, t: TypeUrl, force: bool) -> Result<(), ()> {
        let Some(st) = self.types.get_mut(&t) else {
            return Ok(());
        };
        if !st.started || !self.session.built {
            return Ok(());
        }
        let empty = BTreeMap::new();
        let desired = self.session.desired.of(t).unwrap_or(&empty);
        let in_scope = |name: &str| st.wildcard || st.subscribed.contains(name);
        let held = &mut st.holdings;
        held.prune_rejected(|name| {
            desired
                .get(name)
                .filter(|_| in_scope(name))
                .map(|r| r.version.clone())
        });
        let mut resources = Vec::new();
        let mut changes: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (name, r) in desired.iter().filter(|(n, _)| in_scope(n)) {
            if held.known.get(name) != Some(&r.version) {
                changes.insert(name.clone(), Some(r.version.clone()));
                resources.push(DeltaResource {
                    name: name.clone(),
                    version: r.version.clone(),
                    resource: Some((*r.body).clone()),
                    ..Default::default()
                });
            }
        }
        let removed: Vec<String> = held
            .known
            .keys()
            .filter(|n| !desired.contains_key(*n))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() && !force {
            if held.settled() {
                self.session
                    .registry
                    .settled(self.session.conn, t, &version_of(&held.known));
            }
            return Ok(());
        }
        changes.extend(removed.iter().map(|n| (n.clone(), None)));
        self.nonce += 1;
        let nonce = format!("{}-{}", self.session.conn, self.nonce);
        let version = held.sent(nonce.clone(), changes);
        self.session.registry.sent(
            self.session.conn,
            t,
            &version,
            held.known.len(),
            self.session.mesh_version,
        );
        tracing::debug!(node = %self.session.node.id, r#type = t.short(), updated = resources.len(), removed = removed.len(), "pushed (delta)");
        let response = DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: t.as_str().to_owned(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        self.out.send(Ok(response)).await.map_err(|_| ())
    }

    pub(super) async fn push_all(&mut self) -> Result<(), ()> {
        for t in TypeUrl::ORDER {
            self.push(t, false).await?;
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
                .map(|(n, _)| n.clone())
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
            registry.delta_acked(conn, t, &version_of(&held.acked), outstanding);
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
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
            } else if st.subscribed.insert(name.clone()) {
                st.subscribed_bytes += name.len();
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                if st.subscribed.remove(name) {
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
        let subscription_changed =
            !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
        if first || subscription_changed {
            self.push(t, first).await
        } else {
            Ok(())
        }
    }
}
