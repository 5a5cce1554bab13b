//! `causeway echo`: the sample application. It answers every HTTP request with JSON naming its
//! cluster and workload and the caller's identity as the sidecar reports it
//! (`x-forwarded-client-cert`, set by the inbound sidecar from the verified client certificate).
//! `--delay-ms` and `--status` make it a slow or failing backend on purpose, for demos of
//! timeouts, retries and outlier detection (`causeway demo` sets them from the WorkloadEntry's
//! `causeway.io/demo-*` annotations).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use causeway_model::DemoFaults;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
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
    /// Milliseconds to wait before sending each response (0-60000): a slow backend.
    #[arg(
        long,
        default_value_t = 0,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(DemoFaults::MAX_DELAY_MS)),
    )]
    pub delay_ms: u32,
    /// Status of every response (100-599), with the same body: a failing backend.
    #[arg(
        long,
        default_value_t = 200,
        value_parser = clap::value_parser!(u16)
            .range(i64::from(*DemoFaults::STATUSES.start())..=i64::from(*DemoFaults::STATUSES.end())),
    )]
    pub status: u16,
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
    // Clap bounds the flag to 100-599, all of which are valid status codes.
    let status =
        StatusCode::from_u16(args.status).with_context(|| format!("--status {}", args.status))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let delay_ms = args.delay_ms;
    let delay = Duration::from_millis(u64::from(delay_ms));
    tracing::info!(listen = %args.listen, cluster = %args.cluster, workload = %args.workload, status = status.as_u16(), delay_ms, "echo serving");
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
                    "status": status.as_u16(),
                    "delayMs": delay_ms,
                });
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
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

    /// `causeway echo`'s flags alone.
    #[derive(clap::Parser, Debug)]
    struct Echo {
        #[command(flatten)]
        args: Args,
    }

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        use clap::Parser;
        let base = [
            "echo",
            "--listen",
            "127.0.0.1:8080",
            "--cluster",
            "east",
            "--workload",
            "w",
        ];
        Echo::try_parse_from(base.iter().chain(extra)).map(|e| e.args)
    }

    #[test]
    fn faults_default_to_none_and_are_bounded() {
        let args = parse(&[]).expect("defaults");
        assert_eq!((args.delay_ms, args.status), (0, 200));
        let args = parse(&["--delay-ms", "60000", "--status", "503"]).expect("in range");
        assert_eq!((args.delay_ms, args.status), (60_000, 503));
        for bad in [
            &["--delay-ms", "60001"][..],
            &["--delay-ms=-1"],
            &["--status", "700"],
            &["--status", "99"],
            &["--status", "abc"],
        ] {
            let e = parse(bad).expect_err(&format!("{bad:?}"));
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}: {e}"
            );
        }
    }
}
