//! `causeway echo`: the sample application. It answers every HTTP request with JSON naming its
//! cluster and workload and the caller's identity as the sidecar reports it
//! (`x-forwarded-client-cert`, set by the inbound sidecar from the verified client certificate).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;

/// Flags of `causeway echo`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Where to listen (the sidecar's `--app-address` and the workload port).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Cluster to report.
    #[arg(long)]
    pub cluster: String,
    /// Workload to report.
    #[arg(long)]
    pub workload: String,
}

/// The caller's SPIFFE ID from an `x-forwarded-client-cert` value (`...;URI=spiffe://...;...`).
pub fn caller_from_xfcc(xfcc: &str) -> Option<String> {
    // The sidecar sanitizes the header and sets only the current hop: take the last element.
    let last = xfcc.rsplit(',').next()?;
    last.split(';')
        .find_map(|kv| kv.trim().strip_prefix("URI="))
        .map(|v| v.trim_matches('"').to_owned())
}

/// Runs the server until stopped.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, cluster = %args.cluster, workload = %args.workload, "echo serving");
    let cluster = args.cluster.clone();
    let workload = args.workload.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted.context("accept")?,
            () = crate::shutdown_signal() => return Ok(ExitCode::SUCCESS),
        };
        let cluster = cluster.clone();
        let workload = workload.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let caller = req
                    .headers()
                    .get("x-forwarded-client-cert")
                    .and_then(|v| v.to_str().ok())
                    .and_then(caller_from_xfcc);
                let body = json!({
                    "cluster": cluster,
                    "workload": workload,
                    "caller": caller,
                    "path": req.uri().path(),
                    "peer": peer.to_string(),
                });
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body.to_string())))
                            .unwrap_or_default(),
                    )
                }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "echo connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_current_hop_uri() {
        let v = "By=spiffe://td/ns/demo/sa/echo;Hash=abc;URI=spiffe://td/ns/demo/sa/client";
        assert_eq!(
            caller_from_xfcc(v).as_deref(),
            Some("spiffe://td/ns/demo/sa/client")
        );
        assert_eq!(caller_from_xfcc("Hash=abc"), None);
    }
}
