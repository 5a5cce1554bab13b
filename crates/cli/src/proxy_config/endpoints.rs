//! `causeway proxy-config endpoints --admin ADDR`: how a proxy itself balances each cluster's
//! endpoints, from its admin `/endpoints` (Envoy: `/clusters?format=json`): each endpoint's
//! peak-EWMA latency, requests in flight, share of the cluster's requests and ejection state.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::TIMEOUT;
use crate::http_client::{self, HttpError};
use crate::OutputFormat;

mod envoy;

const CAUSEWAY_PATH: &str = "/endpoints";
const ENVOY_PATH: &str = "/clusters?format=json";

/// A Causeway proxy's `/endpoints` answer. Unknown fields are ignored and absent ones take
/// defaults, so a newer proxy stays readable.
#[derive(Debug, Deserialize)]
pub struct Endpoints {
    /// Its upstream clusters.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
}

/// One upstream cluster of the proxy.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// xDS cluster name (`outbound|8080||echo.demo.svc.cluster.local`).
    pub name: String,
    /// Mesh service (`demo/echo`), if any.
    #[serde(default)]
    pub service: Option<String>,
    /// `peak-ewma` or `round-robin`; unknown for Envoy.
    #[serde(default)]
    pub load_balancer: Option<String>,
    /// Its endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint, as the proxy balances over it; counts are since the proxy started.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// What the proxy connects to (for a remote pod, its east-west gateway).
    pub address: String,
    /// SNI sent to the gateway.
    #[serde(default)]
    pub sni: Option<String>,
    /// The pod's own address when `address` is its gateway.
    #[serde(default)]
    pub pod: Option<String>,
    /// Mesh cluster of the pod.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Workload of the pod.
    #[serde(default)]
    pub workload: Option<String>,
    /// Priority (0 is tried first).
    #[serde(default)]
    pub priority: u32,
    /// Load-balancing weight.
    #[serde(default = "one")]
    pub weight: u32,
    /// Healthy as discovered (EDS, active checks).
    #[serde(default = "yes")]
    pub healthy: bool,
    /// Ejected by outlier detection.
    #[serde(default)]
    pub ejected: bool,
    /// Time left of the ejection, if known.
    #[serde(default)]
    pub ejected_remaining_ms: Option<u64>,
    /// Peak-EWMA latency estimate; none before any response (and never for Envoy).
    #[serde(default)]
    pub ewma_ms: Option<f64>,
    /// Requests in flight.
    #[serde(default)]
    pub pending: u64,
    /// Requests sent.
    #[serde(default)]
    pub requests: u64,
    /// Requests failed.
    #[serde(default)]
    pub failures: u64,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// Which admin API answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPlane {
    /// A Causeway proxy's `/endpoints`.
    Causeway,
    /// Envoy's `/clusters?format=json`.
    Envoy,
}

/// What the command prints: the clusters kept by the filter, with each endpoint's share.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report<'a> {
    data_plane: DataPlane,
    #[serde(skip)]
    filter: Option<&'a str>,
    clusters: Vec<ClusterView<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterView<'a> {
    name: &'a str,
    service: Option<&'a str>,
    load_balancer: Option<&'a str>,
    /// Requests over all its endpoints.
    requests: u64,
    endpoints: Vec<EndpointView<'a>>,
}

#[derive(Serialize)]
struct EndpointView<'a> {
    #[serde(flatten)]
    endpoint: &'a Endpoint,
    /// The gateway the pod is reached through (`address`, when `pod` is set).
    via: Option<&'a str>,
    /// This endpoint's part of the cluster's requests, 0.0–1.0 (0.0 when there were none).
    share: f64,
}

/// Runs `proxy-config endpoints --admin ADDR`.
pub async fn run(
    admin: SocketAddr,
    filter: Option<&str>,
    output: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let (data_plane, clusters) = fetch(admin).await?;
    let report = report(data_plane, &clusters, filter);
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print!("{}", render(&report)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads `/endpoints`, or Envoy's `/clusters?format=json` where that is 404.
async fn fetch(admin: SocketAddr) -> anyhow::Result<(DataPlane, Vec<Cluster>)> {
    match http_client::get(admin, CAUSEWAY_PATH, TIMEOUT).await {
        Ok(body) => return Ok((DataPlane::Causeway, parse_causeway(&body)?)),
        Err(HttpError::Status { status: 404, .. }) => {}
        Err(e) => return Err(admin_error(admin, CAUSEWAY_PATH, e)),
    }
    match http_client::get(admin, ENVOY_PATH, TIMEOUT).await {
        Ok(body) => Ok((DataPlane::Envoy, envoy::parse(&body)?)),
        Err(HttpError::Status { status: 404, .. }) => Err(anyhow::anyhow!(
            "the admin API at {admin} serves neither {CAUSEWAY_PATH} (a Causeway proxy) nor \
             {ENVOY_PATH} (Envoy): an older Causeway proxy, or not a proxy's admin address"
        )),
        Err(e) => Err(admin_error(admin, ENVOY_PATH, e)),
    }
}

/// The client's errors name the control plane; these name the proxy's admin API.
fn admin_error(admin: SocketAddr, path: &str, e: HttpError) -> anyhow::Error {
    match e {
        HttpError::Unreachable { reason, .. } => anyhow::anyhow!(
            "cannot reach the proxy's admin API at {admin}: {reason} (is a proxy running with \
             `--admin {admin}`?)"
        ),
        HttpError::Timeout { timeout, .. } => anyhow::anyhow!(
            "the proxy's admin API at {admin} did not answer GET {path} within {timeout:?}"
        ),
        HttpError::Status { status, body } => anyhow::anyhow!(
            "the proxy's admin API at {admin} answered {status} to GET {path}: {}",
            body.trim()
        ),
        other => other.into(),
    }
}

/// Parses a Causeway proxy's `/endpoints`.
pub fn parse_causeway(body: &[u8]) -> anyhow::Result<Vec<Cluster>> {
    let endpoints: Endpoints = serde_json::from_slice(body)
        .context("the proxy's /endpoints answer is not the JSON this command reads")?;
    Ok(endpoints.clusters)
}

/// Keeps the clusters whose name contains `filter` and computes each endpoint's share.
pub fn report<'a>(
    data_plane: DataPlane,
    clusters: &'a [Cluster],
    filter: Option<&'a str>,
) -> Report<'a> {
    let clusters = clusters
        .iter()
        .filter(|c| filter.is_none_or(|f| c.name.contains(f)))
        .map(|c| {
            let requests: u64 = c.endpoints.iter().map(|e| e.requests).sum();
            let endpoints = c
                .endpoints
                .iter()
                .map(|e| EndpointView {
                    endpoint: e,
                    via: e.pod.as_ref().map(|_| e.address.as_str()),
                    share: if requests == 0 {
                        0.0
                    } else {
                        e.requests as f64 / requests as f64
                    },
                })
                .collect();
            ClusterView {
                name: &c.name,
                service: c.service.as_deref(),
                load_balancer: c.load_balancer.as_deref(),
                requests,
                endpoints,
            }
        })
        .collect();
    Report {
        data_plane,
        filter,
        clusters,
    }
}

const HEADER: [&str; 10] = [
    "ENDPOINT", "VIA", "CLUSTER", "WORKLOAD", "PRIORITY", "EWMA ms", "PENDING", "REQUESTS",
    "SHARE", "STATE",
];

/// Renders the report as one table per cluster.
pub fn render(report: &Report<'_>) -> String {
    let mut out = String::new();
    if report.data_plane == DataPlane::Envoy {
        let _ = writeln!(
            out,
            "Envoy proxy (admin /clusters): no EWMA estimate, ejection time left unknown\n"
        );
    }
    if report.clusters.is_empty() {
        let _ = match report.filter {
            Some(f) => writeln!(out, "no cluster name contains `{f}`"),
            None => writeln!(out, "the proxy has no clusters"),
        };
        return out;
    }
    for (i, c) in report.clusters.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "cluster {}  service {}  balancer {}",
            c.name,
            c.service.unwrap_or("-"),
            c.load_balancer.unwrap_or("-")
        );
        if c.endpoints.is_empty() {
            let _ = writeln!(out, "  no endpoints");
            continue;
        }
        let mut rows = vec![HEADER.map(str::to_owned).to_vec()];
        rows.extend(c.endpoints.iter().map(|e| row(e, c.requests)));
        align(&mut out, &rows);
    }
    out
}

fn row(view: &EndpointView<'_>, cluster_requests: u64) -> Vec<String> {
    let e = view.endpoint;
    let dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    vec![
        e.pod.clone().unwrap_or_else(|| e.address.clone()),
        dash(view.via),
        dash(e.cluster.as_deref()),
        dash(e.workload.as_deref()),
        e.priority.to_string(),
        e.ewma_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}")),
        e.pending.to_string(),
        e.requests.to_string(),
        if cluster_requests == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}%", view.share * 100.0)
        },
        state(e),
    ]
}

/// `ejected (Ns left)`, `ejected`, `unhealthy` or `ok`.
fn state(e: &Endpoint) -> String {
    if e.ejected {
        match e.ejected_remaining_ms {
            Some(ms) => format!("ejected ({}s left)", ms.div_ceil(1000)),
            None => "ejected".to_owned(),
        }
    } else if !e.healthy {
        "unhealthy".to_owned()
    } else {
        "ok".to_owned()
    }
}

/// Writes rows as left-aligned columns, indented under the cluster line.
fn align(out: &mut String, rows: &[Vec<String>]) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::from(" ");
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, " {cell:<width$} ");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests;
