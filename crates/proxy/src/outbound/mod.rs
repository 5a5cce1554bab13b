//! The app's outbound traffic on the per-service addresses: HTTP through the connection
//! manager and router (`http`), anything else through the TCP proxy (`tcp`), towards peers in
//! mTLS with the cluster's SNI and expected SPIFFE IDs.

use std::rc::Rc;

use causeway_xds::dataplane::ChainAction;
use tokio::net::TcpStream;

use crate::http::{serve as serve_http, Connection};
use crate::inbound::{chain_of, count_tcp, Accepted};

/// Serves one plain connection of an outbound listener.
pub async fn serve(ctx: Accepted, conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let Some(chain) = chain_of(&ctx) else {
        return;
    };
    match &chain.action {
        ChainAction::TcpProxy(cfg) => {
            let work = crate::tcp::proxy(&ctx.state, &ctx.snapshot, cfg, conn);
            let drained =
                crate::listener::unless_drained(&ctx.state, &ctx.snapshot, &ctx.listener, work);
            if let Some(result) = drained.await {
                count_tcp(&ctx, &result);
            }
        }
        ChainAction::Http(_) => {
            let http = Rc::new(Connection {
                snapshot: ctx.snapshot.clone(),
                listener: ctx.listener.clone(),
                chain: ctx.chain,
                caller: None,
                own_uri: None,
                destination_port: ctx.port,
                peer: ctx.peer,
                metrics: ctx.metrics.clone(),
                handles: Default::default(),
                xfcc: Default::default(),
            });
            if let Err(e) = serve_http(Rc::clone(&ctx.state), http, conn).await {
                tracing::debug!(error = %e, "outbound HTTP connection ended");
            }
        }
    }
}
