//! `causeway proxy-config`: what a proxy sees, read from the running control plane's debug API
//! (or, `dump` and `endpoints --admin`, from the proxy's own admin API) and printed as a table
//! (or JSON).

mod dump;
mod endpoints;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::http_client;
use crate::OutputFormat;

const TIMEOUT: Duration = Duration::from_secs(5);

/// What to show.
#[derive(clap::Subcommand)]
pub enum What {
    /// Endpoints of every service port the proxy sees: direct, via gateway, or hidden and why.
    /// With `--admin`, as the proxy itself balances them (its admin `/endpoints`, Envoy's
    /// `/clusters`): each pod's EWMA latency, requests in flight, share and ejection state.
    Endpoints {
        /// Read the proxy's own admin API at this address (`causeway proxy --admin`, or
        /// Envoy's) instead of the control plane.
        #[arg(long, conflicts_with_all = ["namespace", "workload", "service"])]
        admin: Option<SocketAddr>,
        /// Cluster the proxy runs in; with `--admin`, only the proxy's clusters whose name
        /// contains this (`--cluster echo.demo`).
        #[arg(long, required_unless_present = "admin")]
        cluster: Option<String>,
        /// Namespace of its workload.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Its workload name.
        #[arg(long, default_value = "")]
        workload: String,
        /// Only this service (`namespace/name`).
        #[arg(long)]
        service: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// What a Causeway data-plane proxy itself serves (its admin `/config_dump`): xDS state,
    /// listeners and where their chains go, clusters with SNI and endpoints.
    Dump {
        /// The proxy's admin address (`causeway proxy --admin`).
        #[arg(long)]
        admin: SocketAddr,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

/// Percent-encodes a query value (only unreserved characters pass).
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Runs the command.
pub async fn run(what: What, control_plane: SocketAddr) -> anyhow::Result<ExitCode> {
    match what {
        What::Endpoints {
            admin: Some(admin),
            cluster,
            output,
            ..
        } => endpoints::run(admin, cluster.as_deref(), output).await,
        What::Endpoints {
            admin: None,
            cluster,
            namespace,
            workload,
            service,
            output,
        } => {
            let cluster = cluster
                .context("--cluster (the cluster the proxy runs in) is required without --admin")?;
            let mut path = format!(
                "/debug/view?cluster={}&namespace={}&workload={}",
                encode(&cluster),
                encode(&namespace),
                encode(&workload)
            );
            if let Some(s) = &service {
                let _ = write!(path, "&service={}", encode(s));
            }
            let body = http_client::get(control_plane, &path, TIMEOUT).await?;
            let view: Value = serde_json::from_slice(&body)
                .context("the debug API answered with invalid JSON")?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&view)?),
                OutputFormat::Text => print!("{}", render_endpoints(&view)),
            }
            Ok(ExitCode::SUCCESS)
        }
        What::Dump { admin, output } => {
            let body = http_client::get(admin, "/config_dump", TIMEOUT).await?;
            let dump: Value = serde_json::from_slice(&body)
                .context("the proxy's admin API answered with invalid JSON")?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&dump)?),
                OutputFormat::Text => print!("{}", dump::render(&dump)?),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `TrafficPolicy` in force for each service port of a `/debug/view` answer, and its
/// routes (share and endpoints); the endpoints' reasons above say what the policy did to each.
fn render_policies(view: &Value) -> String {
    let mut out = String::new();
    for svc in view["services"].as_array().into_iter().flatten() {
        for port in svc["ports"].as_array().into_iter().flatten() {
            let policy = &port["policy"];
            if policy.is_null() {
                continue;
            }
            let _ = writeln!(
                out,
                "\n{}:{} TrafficPolicy {} ({}{})",
                text(&svc["service"]),
                text(&port["port"]),
                text(&policy["name"]),
                text(&policy["mode"]),
                if policy["weighted"] == Value::Bool(true) {
                    ", balanced by weight"
                } else {
                    ""
                }
            );
            for route in port["routes"].as_array().into_iter().flatten() {
                let endpoints: Vec<String> = route["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        format!(
                            "{}:{} ({})",
                            text(&e["address"]),
                            text(&e["port"]),
                            text(&e["cluster"])
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "  route {} {}% -> {}",
                    text(&route["name"]),
                    text(&route["weight"]),
                    if endpoints.is_empty() {
                        "no endpoint".to_owned()
                    } else {
                        endpoints.join(", ")
                    }
                );
            }
        }
    }
    out
}

/// Renders a `/debug/view` answer as an aligned table.
/// What the control plane knows of an endpoint's health: `down` when its gateway fails the
/// control plane's probes (the proxy skips it), else `-` (the proxy's own checks decide:
/// `--admin` shows them).
fn health(ep: &Value) -> String {
    if ep["unhealthy"].is_string() {
        "down".to_owned()
    } else {
        "-".to_owned()
    }
}

fn reason(ep: &Value) -> String {
    match ep["unhealthy"].as_str() {
        Some(why) => format!("{}; unhealthy: {why}", text(&ep["reason"])),
        None => text(&ep["reason"]),
    }
}

pub fn render_endpoints(view: &Value) -> String {
    let mut out = String::new();
    let proxy = &view["proxy"];
    let _ = writeln!(
        out,
        "proxy {}/{} in cluster {} (network {}, locality {}{})",
        text(&proxy["identity"]["namespace"]),
        text(&proxy["identity"]["workload"]),
        text(&proxy["identity"]["cluster"]),
        text(&proxy["network"]),
        text(&proxy["locality"]),
        if proxy["workloadFound"] == Value::Bool(false) {
            "; workload not in the registry, cluster defaults used"
        } else {
            ""
        }
    );
    let header = [
        "SERVICE", "PORT", "KIND", "ENDPOINT", "CLUSTER", "NETWORK", "LOCALITY", "PRIO", "WEIGHT",
        "VIA", "HEALTH", "REGISTRY", "REASON",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for svc in view["services"].as_array().into_iter().flatten() {
        for port in svc["ports"].as_array().into_iter().flatten() {
            for ep in port["endpoints"].as_array().into_iter().flatten() {
                rows.push(vec![
                    text(&svc["service"]),
                    text(&port["port"]),
                    text(&ep["kind"]),
                    format!("{}:{}", text(&ep["address"]), text(&ep["port"])),
                    text(&ep["cluster"]),
                    text(&ep["network"]),
                    text(&ep["locality"]),
                    text(&ep["priority"]),
                    text(&ep["weight"]),
                    text(&ep["via"]),
                    health(ep),
                    text(&ep["registry"]),
                    reason(ep),
                ]);
            }
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[i])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out.push_str(&render_policies(view));
    for stale in view["staleClusters"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "\ncluster {} is stale for {} s: its API server cannot be reached or its watches fail; {}",
            text(&stale["cluster"]),
            text(&stale["staleSeconds"]),
            if stale["withdrawn"] == Value::Bool(true) {
                "its endpoints were withdrawn (staleEndpointTtl elapsed)"
            } else {
                "its last good endpoints are served"
            }
        );
        for e in stale["errors"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  {}", text(e));
        }
    }
    let hidden = view["hiddenServices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !hidden.is_empty() {
        let _ = writeln!(out, "\nnot visible to this proxy:");
        for h in hidden {
            let _ = writeln!(
                out,
                "  {}/{} in cluster {}: {}",
                text(&h["key"]["namespace"]),
                text(&h["key"]["name"]),
                text(&h["cluster"]),
                text(&h["reason"])
            );
        }
    }
    out
}
