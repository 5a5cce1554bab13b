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

/// The connection manager's stream idle timeout passed with no byte of the body.
#[derive(Debug, thiserror::Error)]
#[error("stream idle: no body data within the stream idle timeout")]
pub struct StreamIdle;

/// Envoy's `stream_idle_timeout` on a body: expires when no frame came for `period`.
pub struct IdleTimer {
    period: std::time::Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl IdleTimer {
    pub fn new(period: std::time::Duration) -> Self {
        IdleTimer {
            period,
            timer: Box::pin(tokio::time::sleep(period)),
        }
    }

    /// True when the period passed since the last frame (registers the waker otherwise).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer.as_mut().poll(cx).is_ready()
    }

    fn touch(&mut self) {
        let next = tokio::time::Instant::now() + self.period;
        self.timer.as_mut().reset(next);
    }
}

/// Polls `body` for a frame unless `idle` expired first (then the stream fails).
fn poll_idle<B>(
    body: Pin<&mut B>,
    idle: &mut Option<IdleTimer>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match body.poll_frame(cx) {
        Poll::Ready(frame) => {
            if let Some(t) = idle {
                t.touch();
            }
            Poll::Ready(frame.map(|f| f.map_err(Into::into)))
        }
        Poll::Pending => {
            if idle.as_mut().is_some_and(|t| t.expired(cx)) {
                return Poll::Ready(Some(Err(Box::new(StreamIdle))));
            }
            Poll::Pending
        }
    }
}

/// Why a request body could not be read for buffering.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the caller reset the request: {0}")]
    Reset(#[from] hyper::Error),
    #[error(transparent)]
    Idle(#[from] StreamIdle),
}

/// The body of a request sent upstream.
pub enum RequestBody {
    /// Everything the caller sent (replayable).
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// What was read before the buffer limit, then the rest as it comes (failing when the
    /// caller goes quiet for the stream idle timeout).
    Streaming {
        prefix: Option<Bytes>,
        rest: Incoming,
        idle: Option<IdleTimer>,
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
    pub async fn read(
        mut body: Incoming,
        limit: usize,
        idle: Option<std::time::Duration>,
    ) -> Result<RequestBody, ReadError> {
        if body.is_end_stream() {
            return Ok(RequestBody::empty());
        }
        let mut buf = BytesMut::new();
        loop {
            let next = match idle {
                Some(t) => tokio::time::timeout(t, body.frame())
                    .await
                    .map_err(|_| StreamIdle)?,
                None => body.frame().await,
            };
            let Some(frame) = next.transpose()? else {
                break;
            };
            match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        return Ok(RequestBody::Streaming {
                            prefix: Some(buf.freeze()),
                            rest: body,
                            idle: idle.map(IdleTimer::new),
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
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Buffered { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            RequestBody::Streaming { prefix, rest, idle } => {
                if let Some(d) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                poll_idle(Pin::new(rest), idle, cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Streaming { prefix, rest, .. } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Streaming { prefix, rest, .. } => {
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
        /// The stream idle timeout: no frame for that long also resets the stream.
        idle: Option<IdleTimer>,
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
    pub fn upstream(
        body: Incoming,
        deadline: Option<tokio::time::Instant>,
        idle: Option<std::time::Duration>,
    ) -> Self {
        ResponseBody::Upstream {
            body,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            idle: idle.map(IdleTimer::new),
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
            ResponseBody::Upstream {
                body,
                deadline,
                idle,
            } => {
                if let Some(d) = deadline {
                    if d.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                    }
                }
                poll_idle(Pin::new(body), idle, cx)
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
