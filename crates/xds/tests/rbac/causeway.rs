//! The Causeway proxy's decision on the same listener: converted by
//! `causeway_xds::dataplane::listener_config`, the chain's downstream TLS check, then
//! `dataplane::rbac::authorize` over the chain's RBAC filters.

use causeway_xds::dataplane::rbac::{authorize, Call, Peer};
use causeway_xds::dataplane::tls::SanKind;
use causeway_xds::dataplane::{listener_config, ChainAction};
use envoy_types::pb::envoy::config::listener::v3::Listener;

/// Whether the converted listener lets `peer` through to `port` (with `path` on HTTP).
pub fn allows(listener: &Listener, peer: Option<&Peer>, port: u16, path: &str) -> bool {
    let config = listener_config(listener)
        .unwrap_or_else(|e| panic!("the Causeway proxy refuses the inbound listener: {e}"));
    let [chain] = config.filter_chains.as_slice() else {
        panic!("one inbound chain: {config:?}")
    };
    let tls = chain.tls.as_ref().expect("inbound mTLS");
    match peer {
        None if tls.require_client_certificate => return false,
        None => {}
        Some(peer) => {
            let accepted = tls.accepted_sans.is_empty()
                || tls.accepted_sans.iter().any(|m| {
                    let sans = match m.kind {
                        SanKind::Uri => &peer.uri_sans,
                        SanKind::Dns => &peer.dns_sans,
                    };
                    sans.iter().any(|s| m.matcher.matches(s))
                });
            if !accepted {
                return false;
            }
        }
    }
    let (filters, path) = match &chain.action {
        ChainAction::TcpProxy(p) => (&p.rbac, None),
        ChainAction::Http(m) => (&m.rbac, Some(path)),
    };
    authorize(
        filters,
        &Call {
            peer,
            destination_port: port,
            path,
        },
    )
    .is_ok()
}
