//! The east-west gateway: reads the TLS ClientHello's server name without terminating TLS and
//! forwards the connection to the endpoints of the matching exported service.

pub mod client_hello;
mod forward;
pub mod probe;

use std::rc::Rc;
use std::sync::Arc;

pub use forward::{forward, Forwarded, GatewayError};

use crate::metrics::{ConnectionLabels, ListenerLabels, Metrics, RouteLabels};
use crate::worker::{Handler, WorkerState};

/// The worker handler of a gateway: every connection through [`forward`], each outcome
/// counted and logged with its route (refusals at debug level: anyone on the network can
/// cause them).
pub fn handler(metrics: Arc<Metrics>) -> Handler {
    Arc::new(move |state: Rc<WorkerState>, listener: String, conn| {
        Box::pin(serve(state, Arc::clone(&metrics), listener, conn))
    })
}

/// One connection of a gateway listener, counted and logged.
pub async fn serve(
    state: Rc<WorkerState>,
    metrics: Arc<Metrics>,
    listener: String,
    conn: tokio::net::TcpStream,
) {
    let peer = conn.peer_addr().ok();
    let span =
        tracing::debug_span!("gateway", listener = %listener, worker = state.index, peer = ?peer);
    let _enter = span.enter();
    metrics
        .gateway_connections_opened
        .get_or_create(&ListenerLabels {
            listener: listener.clone(),
        })
        .inc();
    let result = forward(&state, &listener, conn).await;
    let outcome = match &result {
        Ok(_) => "forwarded",
        Err(e) => e.reason(),
    };
    metrics
        .gateway_connections
        .get_or_create(&ConnectionLabels {
            listener: listener.clone(),
            outcome: outcome.to_owned(),
        })
        .inc();
    if let Ok(f) = &result {
        for (direction, bytes) in [
            ("sent", f.transferred.a_to_b),
            ("received", f.transferred.b_to_a),
        ] {
            metrics
                .gateway_bytes
                .get_or_create(&RouteLabels {
                    listener: listener.clone(),
                    cluster: f.cluster.clone(),
                    direction: direction.to_owned(),
                })
                .inc_by(bytes);
        }
    }
    match result {
        Ok(f) => tracing::debug!(
            sni = ?f.sni,
            cluster = %f.cluster,
            endpoint = %f.endpoint,
            sent = f.transferred.a_to_b,
            received = f.transferred.b_to_a,
            "connection forwarded"
        ),
        Err(e) => tracing::debug!(reason = e.reason(), error = %e, "connection refused"),
    }
}
