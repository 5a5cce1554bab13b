//! The ADS gRPC service: routes its two methods to the server with their codecs. Written by
//! hand (the generated service fixes the delta response to the decoded message) so delta
//! responses can be written straight from the shared resources (`wire`).

use std::convert::Infallible;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use super::wire::{DeltaCodec, DeltaResponseWire, SotwCodec};
use super::{AdsServer, ResponseStream, MAX_REQUEST_BYTES};

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS service to mount on a gRPC server ([`AdsServer::into_service`]).
#[derive(Clone)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    pub(super) fn new(server: AdsServer) -> Self {
        Self { server }
    }
}

struct Sotw(AdsServer);

impl StreamingService<DiscoveryRequest> for Sotw {
    type Response = DiscoveryResponse;
    type ResponseStream = ResponseStream<DiscoveryResponse>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { server.stream_aggregated_resources(request).await })
    }
}

struct Delta(AdsServer);

impl StreamingService<DeltaDiscoveryRequest> for Delta {
    type Response = DeltaResponseWire;
    type ResponseStream = ResponseStream<DeltaResponseWire>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { server.delta_aggregated_resources(request).await })
    }
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let server = self.server.clone();
        // A longer request is refused with `OUT_OF_RANGE` as soon as its length prefix is read.
        let limit = Some(MAX_REQUEST_BYTES);
        match request.uri().path() {
            SOTW_PATH => Box::pin(async move {
                let mut grpc =
                    Grpc::new(SotwCodec::default()).apply_max_message_size_config(limit, None);
                Ok(grpc.streaming(Sotw(server), request).await)
            }),
            DELTA_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(DeltaCodec).apply_max_message_size_config(limit, None);
                Ok(grpc.streaming(Delta(server), request).await)
            }),
            other => {
                let message = format!("{other}: not an ADS method (this server speaks StreamAggregatedResources and DeltaAggregatedResources)");
                Box::pin(async move { Ok(Status::unimplemented(message).into_http()) })
            }
        }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}
