//! State-of-the-world ADS: per type, the full set (CDS, LDS) or the changed named resources
//! (EDS) with one `version_info`; only the latest nonce of a type counts, as the protocol says.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::mpsc;
use tonic::Status;

use super::stream::Session;
use crate::resources::{set_version, TypeUrl};

#[derive(Default)]
struct SotwType {
    names: BTreeSet<String>,
    wildcard: bool,
    subscribed: bool,
    sent: BTreeMap<String, String>,
    acked: BTreeMap<String, String>,
    nonce: String,
    version_info: String,
}

pub(super) struct Sotw {
    pub(super) session: Session,
    types: BTreeMap<TypeUrl, SotwType>,
    nonce: u64,
    pub(super) out: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

/// The version of a set of `name → version`.
pub(super) fn version_of(set: &BTreeMap<String, String>) -> String {
    set_version(set.iter().map(|(n, v)| (n.as_str(), v.as_str())))
}

impl Sotw {
    pub(super) fn new(
        session: Session,
        out: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Self {
        Self {
            session,
            types: BTreeMap::new(),
            nonce: 0,
            out,
        }
    }

    /// Sends `t` if the proxy lacks anything of it; `force` sends the requested set regardless.
    async fn push(&mut self, t: TypeUrl, force: bool) -> Result<(), ()> {
        let Some(st) = self.types.get_mut(&t) else {
            return Ok(());
        };
        if !st.subscribed || !self.session.built {
            return Ok(());
        }
        let empty = BTreeMap::new();
        let desired = self.session.desired.of(t).unwrap_or(&empty);
        let in_scope = |name: &String| st.wildcard || st.names.contains(name);
        let (to_send, next_sent): (Vec<(String, Any)>, BTreeMap<String, String>) = if t.full_state()
        {
            let all: BTreeMap<String, String> = desired
                .iter()
                .filter(|(n, _)| in_scope(n))
                .map(|(n, r)| (n.clone(), r.version.clone()))
                .collect();
            if !force && all == st.sent {
                if st.sent == st.acked {
                    self.session
                        .registry
                        .settled(self.session.conn, t, &version_of(&st.acked));
                }
                return Ok(());
            }
            let bodies = desired
                .iter()
                .filter(|(n, _)| in_scope(n))
                .map(|(n, r)| (n.clone(), (*r.body).clone()))
                .collect();
            (bodies, all)
        } else {
            let mut next = st.sent.clone();
            next.retain(|n, _| st.names.contains(n));
            let mut bodies = Vec::new();
            for name in &st.names {
                if let Some(r) = desired.get(name) {
                    if force || st.sent.get(name) != Some(&r.version) {
                        bodies.push((name.clone(), (*r.body).clone()));
                        next.insert(name.clone(), r.version.clone());
                    }
                }
            }
            if bodies.is_empty() && !force {
                if st.sent == st.acked {
                    self.session
                        .registry
                        .settled(self.session.conn, t, &version_of(&st.acked));
                }
                return Ok(());
            }
            (bodies, next)
        };
        self.nonce += 1;
        let nonce = format!("{}-{}", self.session.conn, self.nonce);
        let version_info = version_of(&next_sent);
        let count = next_sent.len();
        let response = DiscoveryResponse {
            version_info: version_info.clone(),
            resources: to_send.into_iter().map(|(_, body)| body).collect(),
            type_url: t.as_str().to_owned(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        let sent_count = response.resources.len();
        st.sent = next_sent;
        st.nonce = nonce;
        st.version_info = version_info.clone();
        self.session.registry.sent(
            self.session.conn,
            t,
            &version_info,
            count,
            self.session.mesh_version,
        );
        tracing::debug!(node = %self.session.node.id, r#type = t.short(), resources = sent_count, version = %version_info, "pushed");
        self.out.send(Ok(response)).await.map_err(|_| ())
    }

    pub(super) async fn push_all(&mut self) -> Result<(), ()> {
        for t in TypeUrl::ORDER {
            self.push(t, false).await?;
        }
        Ok(())
    }

    pub(super) async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), ()> {
        let Some(t) = TypeUrl::parse(&req.type_url) else {
            tracing::debug!(node = %self.session.node.id, type_url = %req.type_url, "unsupported type requested; ignored");
            return Ok(());
        };
        let st = self.types.entry(t).or_default();
        let initial = req.response_nonce.is_empty();
        if !initial {
            if req.response_nonce != st.nonce {
                return Ok(()); // stale: a newer response is in flight
            }
            if let Some(err) = &req.error_detail {
                tracing::warn!(
                    node = %self.session.node.id,
                    cluster = %self.session.node.identity.cluster,
                    r#type = t.short(),
                    version = %st.version_info,
                    error = %err.message,
                    "proxy rejected config (NACK); it keeps its last good config"
                );
                let refused = st
                    .sent
                    .iter()
                    .filter(|(n, v)| st.acked.get(*n) != Some(*v))
                    .map(|(n, _)| n.clone())
                    .collect();
                self.session.registry.nacked(
                    self.session.conn,
                    t,
                    &st.version_info,
                    &err.message,
                    refused,
                );
                st.sent = st.acked.clone();
            } else {
                st.acked = st.sent.clone();
                self.session
                    .registry
                    .acked(self.session.conn, t, &req.version_info);
            }
        }
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let wildcard = (names.is_empty() && t.full_state()) || names.contains("*");
        let changed = names != st.names || wildcard != st.wildcard || !st.subscribed;
        st.names = names;
        st.wildcard = wildcard;
        st.subscribed = true;
        if initial {
            // A first request (or a reconnect's): answer with everything requested.
            self.push(t, true).await
        } else if changed {
            self.push(t, false).await
        } else {
            Ok(())
        }
    }
}
