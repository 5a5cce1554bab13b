//! xDS requests off the wire: arbitrary bytes decoded (prost) as a `DiscoveryRequest` and as a
//! `DeltaDiscoveryRequest`, then the server's synchronous handling of a stream's first request:
//! the type URL, and the node (validated, resolved against the example mesh, resources built).
//! The protocol state machines (`server::{sotw,delta}`) are async and private, so they are not
//! reached here; the scripted-client tests cover them.
#![no_main]

use causeway_xds::resources::TypeUrl;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = DiscoveryRequest::decode(data) {
        let _ = TypeUrl::parse(&req.type_url);
        causeway_fuzz::serve_node(req.node.as_ref());
    }
    if let Ok(req) = DeltaDiscoveryRequest::decode(data) {
        let _ = TypeUrl::parse(&req.type_url);
        causeway_fuzz::serve_node(req.node.as_ref());
    }
});
