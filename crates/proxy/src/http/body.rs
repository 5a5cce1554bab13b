//! Request bodies towards upstreams: buffered (so an attempt can be retried with the same
//! bytes) or streamed as they arrive (too large to buffer: no retry), and response bodies
//! towards downstreams: the upstream's, or a local reply.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A request body is buffered for retries up to this (Envoy's default per-connection buffer
/// limit); a larger one is streamed and not retried.
pub const RETRY_BUFFER_LIMIT: usize = 1024 * 1024;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a request sent upstream.
pub enum RequestBody {
    /// Everything the caller sent (replayable).
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// What was read before the buffer limit, then the rest as it comes.
    Streaming {
        prefix: Option<Bytes>,
        rest: Incoming,
    },
}

impl RequestBody {
    /// Another copy of a buffered body; `None` for a streamed one.
    pub fn replay(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Buffered { data, trailers } => Some(RequestBody::Buffered {
                data: data.clone(),
                trailers: trailers.clone(),
            }),
            RequestBody::Streaming { .. } => None,
        }
    }

    pub fn empty() -> Self {
        RequestBody::Buffered {
            data: None,
            trailers: None,
        }
    }

    /// Reads `body` to its end if it fits in `limit`; otherwise keeps what was read and streams
    /// the rest.
    pub async fn read(mut body: Incoming, limit: usize) -> Result<RequestBody, hyper::Error> {
        if body.is_end_stream() {
            return Ok(RequestBody::empty());
        }
        let mut buf = BytesMut::new();
        loop {
            let Some(frame) = body.frame().await.transpose()? else {
                break;
            };
            match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        return Ok(RequestBody::Streaming {
                            prefix: Some(buf.freeze()),
                            rest: body,
                        });
                    }
                }
                Err(frame) => {
                    return Ok(RequestBody::Buffered {
                        data: (!buf.is_empty()).then(|| buf.freeze()),
                        trailers: frame.into_trailers().ok(),
                    })
                }
            }
        }
        Ok(RequestBody::Buffered {
            data: (!buf.is_empty()).then(|| buf.freeze()),
            trailers: None,
        })
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Buffered { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            RequestBody::Streaming { prefix, rest } => {
                if let Some(d) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Streaming { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Streaming { prefix, rest } => {
                let p = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + p);
                if let Some(u) = r.upper() {
                    h.set_upper(u + p);
                }
                h
            }
        }
    }
}

/// The body of a response sent downstream.
pub enum ResponseBody {
    /// The upstream's, cut (an error: the downstream stream is reset) at the route timeout's
    /// deadline if it has not ended by then.
    Upstream {
        body: Incoming,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    Local(Option<Bytes>),
}

/// The route timeout passed while the upstream's response body was still coming.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body not complete within the route timeout")]
pub struct BodyTimeout;

impl ResponseBody {
    pub fn local(text: impl Into<Bytes>) -> Self {
        ResponseBody::Local(Some(text.into()))
    }

    /// The upstream's body, ended by an error at `deadline` (Envoy's route timeout spans until
    /// the upstream response is complete).
    pub fn upstream(body: Incoming, deadline: Option<tokio::time::Instant>) -> Self {
        ResponseBody::Upstream {
            body,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Upstream { body, deadline } => {
                if let Some(d) = deadline {
                    if d.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                    }
                }
                Pin::new(body)
                    .poll_frame(cx)
                    .map(|f| f.map(|r| r.map_err(Into::into)))
            }
            ResponseBody::Local(d) => Poll::Ready(d.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
            ResponseBody::Local(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { body, .. } => body.size_hint(),
            ResponseBody::Local(d) => {
                SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
