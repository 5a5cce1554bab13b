//! Every accepted connection starts here: a listener with the TLS inspector is an east-west
//! gateway's (SNI routing, `gateway`); otherwise the filter chain is chosen on what a plain
//! connection shows (its destination port) and the connection goes inbound (the chain
//! terminates mTLS) or outbound (the app's plain traffic).

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use causeway_xds::dataplane::{FilterChainConfig, ListenerConfig};
use tracing::Instrument;

use crate::config::SharedSnapshot;
use crate::metrics::{ConnectionLabels, Metrics};
use crate::worker::{Handler, WorkerState};

/// The worker handler for every role: gateway listeners and sidecar listeners alike.
pub fn handler(metrics: Arc<Metrics>) -> Handler {
    Arc::new(move |state: Rc<WorkerState>, listener: String, conn| {
        let metrics = Arc::clone(&metrics);
        Box::pin(async move {
            let snapshot = state.snapshot();
            let Some(l) = snapshot.listeners.get(&listener) else {
                return;
            };
            if l.inspect_tls {
                drop(snapshot);
                return crate::gateway::serve(state, metrics, listener, conn).await;
            }
            // A connection handed over by a capture listener arrived on another port.
            let local = if l.bind {
                conn.local_addr()
            } else {
                crate::worker::original_dst(&conn)
            };
            let port = local.map(|a| a.port()).unwrap_or_default();
            let Some((chain, config)) = plain_chain(l, port) else {
                metrics
                    .tcp_connections
                    .get_or_create(&ConnectionLabels {
                        listener: listener.clone(),
                        outcome: "no_filter_chain_match".to_owned(),
                    })
                    .inc();
                return;
            };
            let peer = conn.peer_addr().ok();
            let span = tracing::debug_span!("connection", listener = %listener, worker = state.index, peer = ?peer);
            let inbound = config.tls.is_some();
            let ctx = crate::inbound::Accepted {
                state,
                snapshot: Arc::clone(&snapshot),
                metrics,
                listener,
                chain,
                port,
                peer,
            };
            drop(snapshot);
            if inbound {
                crate::inbound::serve(ctx, conn).instrument(span).await
            } else {
                crate::outbound::serve(ctx, conn).instrument(span).await
            }
        })
    })
}

/// Resolves when `listener` in the worker's current snapshot differs from its configuration in
/// `started` (or is gone): Envoy drains a listener's connections when the listener changes, so
/// a new authorization policy or route also applies to connections that were already open.
pub async fn listener_changed(state: &WorkerState, started: &SharedSnapshot, listener: &str) {
    let mut changes = state.changes();
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        if state.snapshot().listeners.get(listener) != started.listeners.get(listener) {
            return;
        }
    }
}

/// Runs `work` unless the listener changes first (then `None`: the connection is closed).
pub async fn unless_drained<F: Future>(
    state: &WorkerState,
    started: &SharedSnapshot,
    listener: &str,
    work: F,
) -> Option<F::Output> {
    tokio::select! {
        out = work => Some(out),
        () = listener_changed(state, started, listener) => {
            tracing::debug!(listener, "listener changed; connection closed");
            None
        }
    }
}

/// The chain for a connection without TLS inspection, by Envoy's rules: chains that need a
/// server name, ALPN or TLS cannot match; one naming the destination port wins over one that
/// does not; the default chain (None) when nothing matches.
fn plain_chain(l: &ListenerConfig, port: u16) -> Option<(Option<usize>, &FilterChainConfig)> {
    let candidates = || {
        l.filter_chains.iter().enumerate().filter(|(_, c)| {
            let m = &c.matches;
            m.server_names.is_empty()
                && m.application_protocols.is_empty()
                && m.transport_protocol
                    .as_deref()
                    .is_none_or(|t| t == "raw_buffer")
                && m.destination_port.is_none_or(|p| p == port)
        })
    };
    candidates()
        .find(|(_, c)| c.matches.destination_port.is_some())
        .or_else(|| candidates().next())
        .map(|(i, c)| (Some(i), c))
        .or_else(|| l.default_chain.as_ref().map(|c| (None, c)))
}
