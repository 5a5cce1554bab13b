//! Envoy node metadata → proxy identity (`ProxyNode::from_node`), then what the server does
//! with an accepted node: resolve it against the (example) mesh and build its resources.
//!
//! The input is structured (`arbitrary`): metadata entries whose keys are mostly Causeway's and
//! whose values are often names of the example mesh, so that the fuzzer gets past the syntax
//! checks into `resolve` and the builders; any key, value and value kind can still occur.
#![no_main]

use arbitrary::Arbitrary;
use causeway_xds::node::keys;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use libfuzzer_sys::fuzz_target;

const KEYS: [&str; 7] = [
    keys::CLUSTER,
    keys::NAMESPACE,
    keys::WORKLOAD,
    keys::ROLE,
    keys::NETWORK,
    keys::APP_ADDRESS,
    keys::OUTBOUND_CIDR,
];

#[derive(Debug, Arbitrary)]
enum Key {
    Known(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Val {
    /// A name from the example mesh (cluster, network, namespace, workload, address, block).
    Known(u8),
    Text(String),
    Number(f64),
    Bool(bool),
    Null,
    List(Vec<String>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    present: bool,
    id: String,
    cluster: String,
    no_metadata: bool,
    fields: Vec<(Key, Val)>,
}

fn value(v: Val, names: &[String]) -> Value {
    let kind = match v {
        Val::Known(i) => Kind::StringValue(names[usize::from(i) % names.len()].clone()),
        Val::Text(s) => Kind::StringValue(s),
        Val::Number(n) => Kind::NumberValue(n),
        Val::Bool(b) => Kind::BoolValue(b),
        Val::Null => Kind::NullValue(0),
        Val::List(items) => Kind::ListValue(ListValue {
            values: items
                .into_iter()
                .map(|s| Value {
                    kind: Some(Kind::StringValue(s)),
                })
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fuzz_target!(|input: Input| {
    let names = &causeway_fuzz::example().names;
    let metadata = (!input.no_metadata).then(|| Struct {
        fields: input
            .fields
            .into_iter()
            .map(|(k, v)| {
                let key = match k {
                    Key::Known(i) => KEYS[usize::from(i) % KEYS.len()].to_owned(),
                    Key::Other(s) => s,
                };
                (key, value(v, names))
            })
            .collect(),
    });
    let node = Node {
        id: input.id,
        cluster: input.cluster,
        metadata,
        ..Default::default()
    };
    causeway_fuzz::serve_node(input.present.then_some(&node));
});
