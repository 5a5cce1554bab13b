//! Delta responses written from resources encoded once: a resource a class's proxies share is
//! encoded (as `envoy.service.discovery.v3.Resource`) the first time a stream sends it, and
//! every stream after copies those bytes into its response instead of cloning and encoding
//! the resource again (`bench/xds-scale` spent a third of its first-config CPU doing that).
//!
//! Written by hand because the generated ADS service fixes the response type to the decoded
//! message; tonic's codec interface lets the response be bytes while requests are still
//! decoded by `tonic-prost`.

use bytes::{BufMut, Bytes};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// A `DeltaDiscoveryResponse` (the fields a server sets) whose resources are already encoded.
#[derive(Debug, Clone, Default)]
pub struct DeltaResponseWire {
    /// `system_version_info` (field 1).
    pub system_version_info: String,
    /// Each an encoded `envoy.service.discovery.v3.Resource` (field 2).
    pub resources: Vec<Bytes>,
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

fn put_field(buf: &mut impl BufMut, tag: u32, bytes: &[u8]) {
    // `encode_length_delimiter` writes a varint and only fails when the buffer is full, which
    // tonic's growing buffer never is.
    let _ = prost::encode_length_delimiter(((tag << 3) | LENGTH_DELIMITED) as usize, buf);
    let _ = prost::encode_length_delimiter(bytes.len(), buf);
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
                .map(|r| field_len(2, r.len()))
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
            put_field(buf, 2, r);
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
    use envoy_types::pb::google::protobuf::Any;
    use proptest::prelude::*;
    use prost::Message;

    fn resource(name: &str, version: &str, body: Vec<u8>) -> Resource {
        Resource {
            name: name.into(),
            version: version.into(),
            resource: Some(Any {
                type_url: "type.googleapis.com/x".into(),
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
            resources in prop::collection::vec(("[a-z|.]{1,40}", "[0-9a-f]{0,16}", prop::collection::vec(any::<u8>(), 0..300)), 0..6),
            removed in prop::collection::vec("[a-z|.]{0,200}", 0..4),
        ) {
            let full: Vec<Resource> = resources.iter().map(|(n, v, b)| resource(n, v, b.clone())).collect();
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
                resources: full.iter().map(|r| Bytes::from(r.encode_to_vec())).collect(),
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
