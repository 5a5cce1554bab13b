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
    /// A NACK took `sent` back to what was ACKed: the next push looks at every name again
    /// (what was refused is offered again once anything changes).
    rescan: bool,
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
    /// `candidates` are the only names that may have changed since the last push (`None`:
    /// look at every name).
    async fn push(
        &mut self,
        t: TypeUrl,
        force: bool,
        candidates: Option<&BTreeSet<String>>,
    ) -> Result<(), ()> {
        let Some(st) = self.types.get_mut(&t) else {
            return Ok(());
        };
        if !st.subscribed || !self.session.built {
            return Ok(());
        }
        let candidates = candidates.filter(|_| !st.rescan);
        let desired = &self.session.desired;
        let in_scope = |name: &String| st.wildcard || st.names.contains(name);
        let settled = |st: &SotwType, session: &super::stream::Session| {
            if st.sent == st.acked {
                session
                    .registry
                    .settled(session.conn, t, &version_of(&st.acked));
            }
        };
        if let (Some(names), false) = (candidates, force) {
            // Nothing to send unless a candidate in scope differs from what was sent.
            let differs = names.iter().any(|n| {
                let want = desired
                    .get(t, n)
                    .filter(|_| in_scope(n))
                    .map(|r| &r.version);
                want != st.sent.get(n)
            });
            if !differs {
                settled(st, &self.session);
                return Ok(());
            }
        }
        let (to_send, next_sent): (Vec<(String, Any)>, BTreeMap<String, String>) = if t.full_state()
        {
            let all: BTreeMap<String, String> = desired
                .iter(t)
                .filter(|(n, _)| in_scope(n))
                .map(|(n, r)| (n.clone(), r.version.clone()))
                .collect();
            if !force && all == st.sent {
                settled(st, &self.session);
                return Ok(());
            }
            let bodies = desired
                .iter(t)
                .filter(|(n, _)| in_scope(n))
                .map(|(n, r)| (n.clone(), (*r.body).clone()))
                .collect();
            (bodies, all)
        } else {
            let mut next = st.sent.clone();
            next.retain(|n, _| st.names.contains(n));
            let mut bodies = Vec::new();
            let names: Box<dyn Iterator<Item = &String>> = match candidates {
                Some(c) if !force => Box::new(c.iter().filter(|n| st.names.contains(*n))),
                _ => Box::new(st.names.iter()),
            };
            for name in names {
                if let Some(r) = desired.get(t, name) {
                    if force || st.sent.get(name) != Some(&r.version) {
                        bodies.push((name.clone(), (*r.body).clone()));
                        next.insert(name.clone(), r.version.clone());
                    }
                }
            }
            if bodies.is_empty() && !force {
                settled(st, &self.session);
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
        st.rescan = false;
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
                st.rescan = true;
            } else {
                st.acked = st.sent.clone();
                self.session
                    .registry
                    .acked(self.session.conn, t, &req.version_info);
                self.session.acked(t);
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
            self.push(t, true, None).await
        } else if changed {
            self.push(t, false, None).await
        } else {
            Ok(())
        }
    }
}
