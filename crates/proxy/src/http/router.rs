//! The router: one request to the cluster of its route, with the route's timeout and retry
//! policy (Envoy's router filter semantics for the conditions the control plane emits), outlier
//! detection fed with every attempt's outcome, and Envoy's local replies when no upstream
//! answers (503 `no healthy upstream`, 503 `upstream connect error…`, 504 `upstream request
//! timeout`).

use std::rc::Rc;
use std::time::Duration;

use causeway_xds::dataplane::http::{RetryConfig, RetryOn, RouteAction};
use causeway_xds::dataplane::{ClusterConfig, LoadAssignmentConfig};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::{IdleTimer, ReadError, RequestBody, ResponseBody, RETRY_BUFFER_LIMIT};
use super::local_reply;
use crate::config::SharedSnapshot;
use crate::upstream::load::InFlight;
use crate::upstream::outlier::Outcome;
use crate::upstream::pool::SendError;
use crate::upstream::Target;
use crate::worker::WorkerState;

/// How a request ended upstream, for the caller's metrics and logs.
pub struct Routed {
    pub response: Response<ResponseBody>,
    /// The endpoint of the last attempt, if one was made.
    pub endpoint: Option<Target>,
    pub retries: u32,
}

/// What one attempt came to.
enum Attempt {
    Answered(Response<Incoming>),
    Failed(SendError),
    TimedOut,
}

/// Forwards `req` along `action` (its route) to `cluster_name` (the action's pick) in
/// `snapshot`.
pub async fn forward(
    state: &Rc<WorkerState>,
    snapshot: &SharedSnapshot,
    (action, cluster_name): (&RouteAction, &str),
    stream_idle: Option<Duration>,
    req: Request<Incoming>,
) -> Routed {
    let local = |status, text: &str| Routed {
        response: local_reply(status, text),
        endpoint: None,
        retries: 0,
    };
    let Some(cluster) = snapshot.clusters.get(cluster_name) else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "cluster not found");
    };
    let Some(la) = snapshot.endpoints_of(cluster_name) else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
    };
    let (parts, body) = req.into_parts();
    let body = match &action.retry {
        Some(_) => match RequestBody::read(body, RETRY_BUFFER_LIMIT, stream_idle).await {
            Ok(b) => b,
            // Envoy's answer when the stream idle timeout passes before a response started.
            Err(ReadError::Idle(_)) => return local(StatusCode::REQUEST_TIMEOUT, "stream timeout"),
            Err(ReadError::Reset(_)) => {
                return local(StatusCode::BAD_REQUEST, "downstream body reset")
            }
        },
        None => RequestBody::Streaming {
            prefix: None,
            rest: body,
            idle: stream_idle.map(IdleTimer::new),
        },
    };
    let attempts = attempts(
        state,
        snapshot.generation,
        cluster,
        la,
        action,
        &parts,
        body,
    );
    let deadline = action.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut routed = match (deadline, stream_idle) {
        (Some(d), _) => match tokio::time::timeout_at(d, attempts).await {
            Ok(routed) => routed,
            Err(_) => return local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
        },
        // Without a route timeout, waiting for the response headers is stream inactivity.
        (None, Some(idle)) => match tokio::time::timeout(idle, attempts).await {
            Ok(routed) => routed,
            Err(_) => return local(StatusCode::REQUEST_TIMEOUT, "stream timeout"),
        },
        (None, None) => attempts.await,
    };
    // The route timeout also bounds the rest of the upstream's response (Envoy's spans until
    // the response is complete), and so does the stream idle timeout between its frames: past
    // either the body ends in an error, resetting the stream.
    if deadline.is_some() || stream_idle.is_some() {
        let body = std::mem::replace(routed.response.body_mut(), ResponseBody::Local(None));
        *routed.response.body_mut() = match body {
            ResponseBody::Upstream { body, .. } => {
                ResponseBody::upstream(body, deadline, stream_idle)
            }
            local => local,
        };
    }
    routed
}

/// The first attempt and the retries the policy allows.
async fn attempts(
    state: &Rc<WorkerState>,
    generation: u64,
    cluster: &ClusterConfig,
    la: &LoadAssignmentConfig,
    action: &RouteAction,
    parts: &Parts,
    body: RequestBody,
) -> Routed {
    let up = &state.upstreams;
    let policy = action.retry.as_ref();
    let mut tried: Vec<Target> = Vec::new();
    let mut body = body;
    let mut retries = 0u32;
    // Held while a retry is in flight (the cluster's `max_retries` circuit breaker).
    let mut _retrying: Option<crate::upstream::RetrySlot> = None;
    loop {
        let endpoint = match policy {
            Some(p) if p.retry_other_hosts && !tried.is_empty() => up.pick_other(
                generation,
                cluster,
                la,
                &tried,
                p.host_selection_retry_max_attempts,
            ),
            _ => up.pick(generation, cluster, la),
        };
        let Some(endpoint) = endpoint else {
            return Routed {
                response: local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                endpoint: tried.pop(),
                retries,
            };
        };
        let replay = body.replay();
        let in_flight = up.start(cluster, &endpoint);
        let target = (cluster, &endpoint, &in_flight);
        let attempt = one_attempt(state, generation, target, parts, body, policy).await;
        up.record(cluster, la, &in_flight, &endpoint, outcome(&attempt));
        drop(in_flight);
        let retry = policy.filter(|p| retries < p.num_retries && should_retry(p, &attempt));
        // The retry that just ended frees its slot before the next one asks for one.
        _retrying = None;
        if let (Some(p), Some(again)) = (retry, replay) {
            let Some(slot) = up.retry_slot(cluster) else {
                tracing::debug!(cluster = %cluster.name, limit = cluster.max_retries, "retry not made: the cluster's retries in flight are at max_retries");
                return Routed {
                    response: final_response(attempt),
                    endpoint: Some(endpoint),
                    retries,
                };
            };
            _retrying = Some(slot);
            retries += 1;
            body = again;
            tracing::debug!(cluster = %cluster.name, %endpoint, retries, "retrying");
            tried.push(endpoint);
            tokio::time::sleep(backoff(p, retries)).await;
            continue;
        }
        return Routed {
            response: final_response(attempt),
            endpoint: Some(endpoint),
            retries,
        };
    }
}

async fn one_attempt(
    state: &Rc<WorkerState>,
    generation: u64,
    (cluster, endpoint, in_flight): (&ClusterConfig, &Target, &InFlight),
    parts: &Parts,
    body: RequestBody,
    policy: Option<&RetryConfig>,
) -> Attempt {
    let up = &state.upstreams;
    let tls = match up.client_tls(generation, cluster, true) {
        Ok(t) => t,
        Err(error) => {
            return Attempt::Failed(SendError::Connect(
                crate::upstream::connect::ConnectError::Tls {
                    cluster: cluster.name.clone(),
                    error,
                },
            ))
        }
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    let send = up.pools.send(cluster, endpoint, tls, req, in_flight);
    let per_try = policy.and_then(|p| p.per_try_timeout);
    let result = match per_try {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => return Attempt::TimedOut,
        },
        None => send.await,
    };
    match result {
        Ok(response) => Attempt::Answered(response),
        Err(e) => Attempt::Failed(e),
    }
}

fn outcome(a: &Attempt) -> Outcome {
    match a {
        Attempt::Answered(r) => Outcome::Status(r.status().as_u16()),
        Attempt::Failed(SendError::Overflow { .. }) => Outcome::NotSent,
        Attempt::Failed(_) | Attempt::TimedOut => Outcome::LocalFailure,
    }
}

/// The gRPC status of a trailers-only answer (in the response headers).
fn grpc_status(r: &Response<Incoming>) -> Option<u32> {
    r.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Envoy's retry conditions for this attempt.
fn should_retry(p: &RetryConfig, a: &Attempt) -> bool {
    p.retry_on.iter().any(|on| match (on, a) {
        (_, Attempt::Failed(SendError::Overflow { .. })) => false,
        (RetryOn::FiveXx | RetryOn::GatewayError | RetryOn::Reset, Attempt::Failed(_)) => true,
        (RetryOn::FiveXx | RetryOn::GatewayError | RetryOn::Reset, Attempt::TimedOut) => true,
        (RetryOn::FiveXx, Attempt::Answered(r)) => r.status().is_server_error(),
        (RetryOn::GatewayError, Attempt::Answered(r)) => {
            matches!(r.status().as_u16(), 502..=504)
        }
        (RetryOn::ConnectFailure, Attempt::Failed(SendError::Connect(_))) => true,
        (RetryOn::ResetBeforeRequest, Attempt::Failed(SendError::Connect(_))) => true,
        (RetryOn::ResetBeforeRequest, Attempt::Failed(SendError::Handshake { .. })) => true,
        (RetryOn::RefusedStream, Attempt::Failed(SendError::Upstream { refused, .. })) => *refused,
        (RetryOn::Retriable4xx, Attempt::Answered(r)) => r.status() == StatusCode::CONFLICT,
        (RetryOn::RetriableStatusCodes, Attempt::Answered(r)) => {
            p.retriable_status_codes.contains(&r.status().as_u16())
        }
        (RetryOn::Cancelled, Attempt::Answered(r)) => grpc_status(r) == Some(1),
        (RetryOn::DeadlineExceeded, Attempt::Answered(r)) => grpc_status(r) == Some(4),
        (RetryOn::ResourceExhausted, Attempt::Answered(r)) => grpc_status(r) == Some(8),
        (RetryOn::Internal, Attempt::Answered(r)) => grpc_status(r) == Some(13),
        (RetryOn::Unavailable, Attempt::Answered(r)) => grpc_status(r) == Some(14),
        _ => false,
    })
}

/// Envoy's fully jittered exponential back-off: uniform in [0, base × 2^(n-1)), capped.
fn backoff(p: &RetryConfig, retry: u32) -> Duration {
    let base = p.backoff.base_interval.as_micros() as u64;
    let cap = p.backoff.max_interval.as_micros() as u64;
    let ceiling = base
        .saturating_mul(1 << retry.saturating_sub(1).min(20))
        .min(cap);
    Duration::from_micros(fastrand::u64(0..ceiling.max(1)))
}

fn final_response(a: Attempt) -> Response<ResponseBody> {
    match a {
        Attempt::Answered(r) => r.map(|b| ResponseBody::upstream(b, None, None)),
        Attempt::TimedOut => local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
        Attempt::Failed(SendError::Overflow { .. }) => local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        ),
        Attempt::Failed(e) => {
            let reason = match &e {
                SendError::Connect(_) | SendError::Handshake { .. } => "connection failure",
                _ => "connection termination",
            };
            // The details (endpoint, TLS error) go to the log, not to the caller.
            tracing::debug!(error = %e, "upstream failed");
            local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "upstream connect error or disconnect/reset before headers. reset reason: \
                     {reason}"
                ),
            )
        }
    }
}
