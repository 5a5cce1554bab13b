//! Delta responses written straight from the shared resources: each
//! `envoy.service.discovery.v3.Resource` is written from its name, version and encoded body
//! into the response, where building the generated message cloned every body first
//! (`bench/xds-scale` spent a third of its first-config CPU doing that) and keeping each
//! resource's encoding beside its body doubled what every class set costs (200 MB in all).
//!
//! Written by hand because the generated ADS service fixes the response type to the decoded
//! message; tonic's codec interface lets the response be bytes while requests are still
//! decoded by `tonic-prost`.

use std::sync::Arc;

use bytes::BufMut;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::Any;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

use super::names::{version_digits, Name};

/// One resource of a delta response: an `envoy.service.discovery.v3.Resource` with `name`
/// (field 3), `version` (field 1, the 16 hex digits of `version`) and `resource` (field 2).
#[derive(Debug, Clone)]
pub struct WireResource {
    /// The name it is sent under.
    pub name: Name,
    /// Its version ([`crate::resources::Resource::version_id`]).
    pub version: u64,
    /// The encoded resource.
    pub body: Arc<Any>,
}

impl WireResource {
    fn body_len(&self) -> usize {
        bytes_len(1, self.body.type_url.len()) + bytes_len(2, self.body.value.len())
    }

    /// Bytes of its encoding.
    pub fn encoded_len(&self) -> usize {
        field_len(1, 16) + field_len(2, self.body_len()) + bytes_len(3, self.name.len())
    }

    /// Writes it (fields in number order, empty ones left out, as prost does).
    fn encode(&self, buf: &mut impl BufMut) {
        put_field(buf, 1, &version_digits(self.version));
        put_header(buf, 2, self.body_len());
        if !self.body.type_url.is_empty() {
            put_field(buf, 1, self.body.type_url.as_bytes());
        }
        if !self.body.value.is_empty() {
            put_field(buf, 2, &self.body.value);
        }
        if !self.name.is_empty() {
            put_field(buf, 3, self.name.as_bytes());
        }
    }
}

/// A `DeltaDiscoveryResponse` (the fields a server sets) written from shared resources.
#[derive(Debug, Clone, Default)]
pub struct DeltaResponseWire {
    /// `system_version_info` (field 1).
    pub system_version_info: String,
    /// `resources` (field 2).
    pub resources: Vec<WireResource>,
    /// `type_url` (field 4).
    pub type_url: String,
    /// `nonce` (field 5).
    pub nonce: String,
    /// `removed_resources` (field 6).
    pub removed_resources: Vec<String>,
}

/// Protobuf wire type of strings, bytes and messages.
const LENGTH_DELIMITED: u32 = 2;

fn varint_len(n: usize) -> usize {
    prost::length_delimiter_len(n)
}

fn field_len(tag: u32, len: usize) -> usize {
    varint_len(((tag << 3) | LENGTH_DELIMITED) as usize) + varint_len(len) + len
}

/// [`field_len`], or nothing for an empty field (proto3 leaves it out).
fn bytes_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        field_len(tag, len)
    }
}

fn put_header(buf: &mut impl BufMut, tag: u32, len: usize) {
    // `encode_length_delimiter` writes a varint and only fails when the buffer is full, which
    // tonic's growing buffer never is.
    let _ = prost::encode_length_delimiter(((tag << 3) | LENGTH_DELIMITED) as usize, buf);
    let _ = prost::encode_length_delimiter(len, buf);
}

fn put_field(buf: &mut impl BufMut, tag: u32, bytes: &[u8]) {
    put_header(buf, tag, bytes.len());
    buf.put_slice(bytes);
}

impl DeltaResponseWire {
    /// Bytes of the encoded message.
    pub fn encoded_len(&self) -> usize {
        let text = |tag, s: &str| {
            if s.is_empty() {
                0
            } else {
                field_len(tag, s.len())
            }
        };
        text(1, &self.system_version_info)
            + self
                .resources
                .iter()
                .map(|r| field_len(2, r.encoded_len()))
                .sum::<usize>()
            + text(4, &self.type_url)
            + text(5, &self.nonce)
            + self
                .removed_resources
                .iter()
                .map(|r| field_len(6, r.len()))
                .sum::<usize>()
    }

    /// Writes the message (fields in number order, empty strings left out, as prost does).
    pub fn encode(&self, buf: &mut impl BufMut) {
        let text = |buf: &mut _, tag, s: &str| {
            if !s.is_empty() {
                put_field(buf, tag, s.as_bytes());
            }
        };
        text(buf, 1, &self.system_version_info);
        for r in &self.resources {
            put_header(buf, 2, r.encoded_len());
            r.encode(buf);
        }
        text(buf, 4, &self.type_url);
        text(buf, 5, &self.nonce);
        for r in &self.removed_resources {
            put_field(buf, 6, r.as_bytes());
        }
    }
}

/// Writes [`DeltaResponseWire`]s.
#[derive(Debug, Default)]
pub struct DeltaWireEncoder;

impl Encoder for DeltaWireEncoder {
    type Item = DeltaResponseWire;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        buf.reserve(item.encoded_len());
        item.encode(buf);
        Ok(())
    }
}

/// The delta stream's codec: requests decoded, responses written from encoded resources.
#[derive(Debug, Default)]
pub struct DeltaCodec;

impl Codec for DeltaCodec {
    type Encode = DeltaResponseWire;
    type Decode = DeltaDiscoveryRequest;
    type Encoder = DeltaWireEncoder;
    type Decoder = ProstDecoder<DeltaDiscoveryRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        DeltaWireEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// The state-of-the-world stream's codec (generated messages both ways).
pub type SotwCodec = tonic_prost::ProstCodec<
    envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse,
    DiscoveryRequest,
>;

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
    use proptest::prelude::*;
    use prost::Message;

    fn resource(name: &str, version: &str, type_url: &str, body: Vec<u8>) -> Resource {
        Resource {
            name: name.into(),
            version: version.into(),
            resource: Some(Any {
                type_url: type_url.into(),
                value: body,
            }),
            ..Default::default()
        }
    }

    proptest! {
        /// What the wire form writes is what prost writes for the same response, byte for
        /// byte, and decodes to it.
        #[test]
        fn a_wire_response_encodes_as_the_generated_message(
            version in "[0-9a-f]{0,16}",
            nonce in "[0-9-]{0,12}",
            type_url in prop::sample::select(vec!["", "type.googleapis.com/envoy.config.cluster.v3.Cluster"]),
            resources in prop::collection::vec(("[a-z|.]{0,40}", any::<u64>(), "(type\\.googleapis\\.com/x)?", prop_oneof![Just(Vec::new()), prop::collection::vec(any::<u8>(), 1..300)]), 0..6),
            removed in prop::collection::vec("[a-z|.]{0,200}", 0..4),
        ) {
            let full: Vec<Resource> = resources
                .iter()
                .map(|(n, v, t, b)| resource(n, &format!("{v:016x}"), t, b.clone()))
                .collect();
            let generated = DeltaDiscoveryResponse {
                system_version_info: version.clone(),
                resources: full.clone(),
                type_url: type_url.to_owned(),
                removed_resources: removed.clone(),
                nonce: nonce.clone(),
                ..Default::default()
            };
            let wire = DeltaResponseWire {
                system_version_info: version,
                resources: resources
                    .iter()
                    .map(|(n, v, t, b)| WireResource {
                        name: crate::server::names::intern(n),
                        version: *v,
                        body: Arc::new(Any { type_url: t.clone(), value: b.clone() }),
                    })
                    .collect(),
                type_url: type_url.to_owned(),
                nonce,
                removed_resources: removed,
            };
            let mut written = Vec::new();
            wire.encode(&mut written);
            prop_assert_eq!(written.len(), wire.encoded_len());
            prop_assert_eq!(&written, &generated.encode_to_vec());
            prop_assert_eq!(DeltaDiscoveryResponse::decode(written.as_slice()).expect("decodes"), generated);
        }
    }
}
