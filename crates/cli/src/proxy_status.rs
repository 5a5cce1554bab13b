//! `causeway proxy-status`: every proxy connected to the control plane, whether it has
//! acknowledged its latest config, and any config it rejected.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::http_client;
use crate::OutputFormat;

fn type_cell(t: &Value) -> String {
    if t.is_null() {
        return "-".to_owned();
    }
    if let Some(nack) = t.get("lastNack").filter(|n| !n.is_null()) {
        return format!("NACK {}", nack["version"].as_str().unwrap_or(""));
    }
    if t["sentVersion"] == t["ackedVersion"] {
        format!("SYNCED ({})", t["resources"])
    } else {
        "STALE".to_owned()
    }
}

/// Renders `/debug/proxies` as a table, then the NACK messages and refused nodes.
pub fn render(v: &Value) -> String {
    let mut rows = vec![vec![
        "PROXY".to_owned(),
        "CLUSTER".into(),
        "ROLE".into(),
        "STREAM".into(),
        "CDS".into(),
        "EDS".into(),
        "LDS".into(),
        "MESH-VERSION".into(),
    ]];
    let mut notes = Vec::new();
    for p in v["proxies"].as_array().into_iter().flatten() {
        let s = |k: &str| p[k].as_str().unwrap_or("-").to_owned();
        rows.push(vec![
            format!("{}/{}", s("namespace"), s("workload")),
            s("cluster"),
            s("role"),
            s("stream"),
            type_cell(&p["types"]["cds"]),
            type_cell(&p["types"]["eds"]),
            type_cell(&p["types"]["lds"]),
            format!("{} of {}", p["meshVersion"], v["meshVersion"]),
        ]);
        for (t, status) in p["types"].as_object().into_iter().flatten() {
            if let Some(n) = status.get("lastNack").filter(|n| !n.is_null()) {
                notes.push(format!(
                    "{} {} rejected {t} version {}: {}",
                    s("cluster"),
                    s("workload"),
                    n["version"].as_str().unwrap_or(""),
                    n["message"].as_str().unwrap_or("")
                ));
            }
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    for n in notes {
        let _ = writeln!(out, "\n{n}");
    }
    for r in v["rejected"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "\nrefused node {} ({}): {}",
            r["node"].as_str().unwrap_or("?"),
            r["reason"].as_str().unwrap_or(""),
            r["message"].as_str().unwrap_or("")
        );
    }
    out
}

/// Runs the command.
pub async fn run(control_plane: SocketAddr, output: OutputFormat) -> anyhow::Result<ExitCode> {
    let body = http_client::get(control_plane, "/debug/proxies", Duration::from_secs(5)).await?;
    let v: Value =
        serde_json::from_slice(&body).context("the debug API answered with invalid JSON")?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        OutputFormat::Text => print!("{}", render(&v)),
    }
    Ok(ExitCode::SUCCESS)
}
