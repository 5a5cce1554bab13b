//! The `Sign` request and response messages and the prost codec that carries them (written by
//! hand, no protoc).

use std::marker::PhantomData;

use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::issue::IssuedCert;

/// A signing request: the CSR, the bootstrap token, an optional lifetime, and the cluster the
/// requester claims to run in.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct SignRequest {
    /// PKCS#10 CSR, PEM, asking for exactly one SPIFFE ID.
    #[prost(string, tag = "1")]
    pub csr_pem: String,
    /// Bootstrap credential. Never logged (`Debug` elides it).
    #[prost(string, tag = "2")]
    pub token: String,
    /// Requested lifetime in seconds; 0 means the CA's default. Capped by the CA.
    #[prost(uint64, tag = "3")]
    pub ttl_seconds: u64,
    /// The cluster the requester claims to run in (the agent's `--cluster`); empty means not
    /// stated (older agents). It picks the authenticator and must match the credential's
    /// cluster; it never chooses the signing cluster by itself.
    #[prost(string, tag = "4")]
    pub cluster: String,
}

impl std::fmt::Debug for SignRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignRequest")
            .field("csr_pem_bytes", &self.csr_pem.len())
            .field("token", &"[elided]")
            .field("ttl_seconds", &self.ttl_seconds)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// A signing answer: certificates only, never a key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignResponse {
    /// Leaf then intermediate(s).
    #[prost(string, tag = "1")]
    pub cert_chain_pem: String,
    /// Roots to trust (several during a root rotation).
    #[prost(string, tag = "2")]
    pub trust_bundle_pem: String,
    /// Start of validity, Unix seconds.
    #[prost(int64, tag = "3")]
    pub not_before: i64,
    /// Expiry, Unix seconds.
    #[prost(int64, tag = "4")]
    pub not_after: i64,
    /// Leaf serial number (hex).
    #[prost(string, tag = "5")]
    pub serial_hex: String,
}

impl From<IssuedCert> for SignResponse {
    fn from(c: IssuedCert) -> Self {
        Self {
            cert_chain_pem: c.chain_pem,
            trust_bundle_pem: c.trust_bundle_pem,
            not_before: c.not_before,
            not_after: c.not_after,
            serial_hex: c.serial_hex,
        }
    }
}

/// A prost codec (tonic 0.14 moved its own into a crate this workspace does not use).
pub(super) struct ProtoCodec<E, D>(PhantomData<fn() -> (E, D)>);

impl<E, D> Default for ProtoCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

pub(super) struct ProtoEncoder<E>(PhantomData<fn() -> E>);
pub(super) struct ProtoDecoder<D>(PhantomData<fn() -> D>);

impl<E, D> Codec for ProtoCodec<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProtoEncoder<E>;
    type Decoder = ProtoDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        ProtoEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(PhantomData)
    }
}

impl<E: prost::Message> Encoder for ProtoEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the message: {e}")))
    }
}

impl<D: prost::Message + Default> Decoder for ProtoDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed message: {e}")))
    }
}
