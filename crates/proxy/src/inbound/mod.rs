//! Callers' traffic to this workload: mTLS terminated with the chain's certificate (the caller
//! must present a certificate of the mesh, checked against the chain's accepted SANs), then the
//! RBAC the control plane emits (network filters before a TCP proxy, HTTP filters in the
//! connection manager), `x-forwarded-client-cert` to the app, and the app's cluster.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use causeway_xds::dataplane::rbac::{self, Call};
use causeway_xds::dataplane::{ChainAction, FilterChainConfig, TcpProxyConfig};
use tokio::net::TcpStream;

use crate::config::SharedSnapshot;
use crate::http::{serve as serve_http, Connection};
use crate::metrics::{ConnectionLabels, ListenerLabels, Metrics, TlsLabels};
use crate::tcp::{Proxied, TcpProxyError};
use crate::tls::{caller_of, Caller};
use crate::worker::WorkerState;

/// A handshake without a configured timeout still ends (Envoy's default is unbounded; an open
/// socket that never finishes its handshake must not be held for ever).
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// An accepted connection and the chain it matched.
pub struct Accepted {
    pub state: Rc<WorkerState>,
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub listener: String,
    /// Index of the chain in the listener; None: the default chain.
    pub chain: Option<usize>,
    /// The local port the connection arrived on.
    pub port: u16,
    pub peer: Option<SocketAddr>,
}

/// The chain `ctx` matched.
pub fn chain_of(ctx: &Accepted) -> Option<&FilterChainConfig> {
    let l = ctx.snapshot.listeners.get(&ctx.listener)?;
    match ctx.chain {
        Some(i) => l.filter_chains.get(i),
        None => l.default_chain.as_ref(),
    }
}

/// Counts and logs a finished TCP proxy connection.
pub fn count_tcp(ctx: &Accepted, result: &Result<Proxied, TcpProxyError>) {
    let outcome = match result {
        Ok(_) => "proxied",
        Err(e) => e.reason(),
    };
    ctx.metrics
        .tcp_connections
        .get_or_create(&ConnectionLabels {
            listener: ctx.listener.clone(),
            outcome: outcome.to_owned(),
        })
        .inc();
    match result {
        Ok(p) => {
            tracing::debug!(cluster = %p.cluster, endpoint = %p.endpoint, sent = p.transferred.a_to_b, received = p.transferred.b_to_a, "connection proxied")
        }
        Err(e) => tracing::debug!(reason = e.reason(), error = %e, "connection not proxied"),
    }
}

fn count_handshake(ctx: &Accepted, result: &str) {
    ctx.metrics
        .tls_handshakes
        .get_or_create(&TlsLabels {
            side: "downstream".to_owned(),
            name: ctx.listener.clone(),
            result: result.to_owned(),
        })
        .inc();
}

/// Serves one connection of an inbound (mTLS) chain.
pub async fn serve(ctx: Accepted, conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let Some(chain) = chain_of(&ctx) else {
        return;
    };
    let Some(tls) = &chain.tls else {
        return;
    };
    let http = matches!(chain.action, ChainAction::Http(_));
    let key = format!("{}#{:?}", ctx.listener, ctx.chain);
    let up = &ctx.state.upstreams;
    let (config, creds) = match up.tls.server(
        &up.credentials,
        ctx.snapshot.generation,
        &key,
        tls,
        http,
    ) {
        Ok(c) => c,
        Err(e) => {
            count_handshake(&ctx, "no_certificate");
            tracing::warn!(listener = %ctx.listener, error = %e, "inbound mTLS unavailable; connection closed");
            return;
        }
    };
    let timeout = chain.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(conn);
    let stream = match tokio::time::timeout(timeout, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            count_handshake(&ctx, "failed");
            tracing::debug!(listener = %ctx.listener, peer = ?ctx.peer, error = %e, "inbound mTLS handshake failed");
            return;
        }
        Err(_) => {
            count_handshake(&ctx, "timeout");
            return;
        }
    };
    let caller = match caller_of(stream.get_ref().1, &tls.accepted_sans) {
        Ok(c) => c,
        Err(why) => {
            count_handshake(&ctx, "san_mismatch");
            tracing::debug!(listener = %ctx.listener, peer = ?ctx.peer, why, "caller refused");
            return;
        }
    };
    count_handshake(&ctx, "ok");
    match &chain.action {
        ChainAction::TcpProxy(cfg) => {
            if !tcp_allowed(&ctx, cfg, &caller) {
                return;
            }
            let work = crate::tcp::proxy(&ctx.state, &ctx.snapshot, cfg, stream);
            let drained =
                crate::listener::unless_drained(&ctx.state, &ctx.snapshot, &ctx.listener, work);
            if let Some(result) = drained.await {
                count_tcp(&ctx, &result);
            }
        }
        ChainAction::Http(_) => {
            let own_uri = creds.identity().ok().map(|id| id.to_string());
            let http = Rc::new(Connection {
                snapshot: ctx.snapshot.clone(),
                listener: ctx.listener.clone(),
                chain: ctx.chain,
                caller: Some(caller),
                own_uri,
                destination_port: ctx.port,
                peer: ctx.peer,
                metrics: ctx.metrics.clone(),
                handles: Default::default(),
                xfcc: Default::default(),
            });
            if let Err(e) = serve_http(Rc::clone(&ctx.state), http, stream).await {
                tracing::debug!(error = %e, "inbound HTTP connection ended");
            }
        }
    }
}

/// The network RBAC filters in front of an inbound TCP proxy.
fn tcp_allowed(ctx: &Accepted, cfg: &TcpProxyConfig, caller: &Caller) -> bool {
    if cfg.rbac.is_empty() {
        return true;
    }
    let peer = crate::http::headers::peer_of(caller);
    let call = Call {
        peer: Some(&peer),
        destination_port: ctx.port,
        path: None,
    };
    match rbac::authorize(&cfg.rbac, &call) {
        Ok(()) => true,
        Err(denied) => {
            ctx.metrics
                .rbac_denied
                .get_or_create(&ListenerLabels {
                    listener: ctx.listener.clone(),
                })
                .inc();
            tracing::debug!(listener = %ctx.listener, peer = ?ctx.peer, %denied, "connection denied by RBAC");
            false
        }
    }
}
