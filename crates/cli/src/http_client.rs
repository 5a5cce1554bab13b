//! A small HTTP/1 GET client for operator commands that read the control plane's debug API.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why a debug API call failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL could not be formed.
    #[error("bad request URL {url}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Connection or protocol failure.
    #[error("cannot reach the control plane at {addr}: {reason} (is `causeway control-plane` running? set --control-plane)")]
    Unreachable {
        /// The address tried.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("the control plane at {addr} did not answer within {timeout:?}")]
    Timeout {
        /// The address tried.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// A non-2xx answer.
    #[error("the control plane answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Its body.
        body: String,
    },
}

/// GETs `path_and_query` from `addr` and returns the body; non-2xx answers are errors.
pub async fn get(
    addr: SocketAddr,
    path_and_query: &str,
    timeout: Duration,
) -> Result<Bytes, HttpError> {
    let url = format!("http://{addr}{path_and_query}");
    let uri: hyper::Uri =
        url.parse()
            .map_err(|e: hyper::http::uri::InvalidUri| HttpError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let call = async {
        let response = client.get(uri).await.map_err(|e| HttpError::Unreachable {
            addr,
            reason: e.to_string(),
        })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| HttpError::Unreachable {
                addr,
                reason: e.to_string(),
            })?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            Err(HttpError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| HttpError::Timeout { addr, timeout })?
}
