//! `causeway proxy-config dump --admin ADDR`: what a Causeway data-plane proxy itself serves,
//! from its admin `/config_dump` (the control plane's view of the same proxy is
//! `proxy-config endpoints`): its xDS state, listeners with where each chain goes, clusters
//! with their SNI and endpoints.

use std::fmt::Write as _;

use serde_json::Value;

use super::text;

/// Renders a Causeway proxy's `/config_dump` as tables.
pub fn render(dump: &Value) -> anyhow::Result<String> {
    if dump["dataPlane"] != "causeway" {
        anyhow::bail!(
            "this admin address is not a Causeway data-plane proxy (no `dataPlane: causeway` in \
             its /config_dump); for Envoy read its own /config_dump"
        );
    }
    let mut out = String::new();
    let xds = &dump["xds"];
    let config = &dump["config"];
    let _ = writeln!(
        out,
        "Causeway proxy, configuration generation {}; xDS {}, {} updates accepted, {} rejected",
        text(&config["generation"]),
        if xds["connected"] == Value::Bool(true) {
            "connected"
        } else {
            "not connected"
        },
        text(&xds["accepted"]),
        text(&xds["rejected"]),
    );
    for (key, label) in [
        ("lastRejection", "last rejection"),
        ("lastError", "last error"),
    ] {
        if !xds[key].is_null() {
            let _ = writeln!(out, "{label}: {}", text(&xds[key]));
        }
    }
    out.push('\n');
    listeners(&mut out, config);
    out.push('\n');
    clusters(&mut out, config);
    Ok(out)
}

fn listeners(out: &mut String, config: &Value) {
    let _ = writeln!(out, "{:<52} {:<22} ROUTES TO", "LISTENER", "ADDRESS");
    for (name, l) in config["listeners"].as_object().into_iter().flatten() {
        let mut address = text(&l["address"]);
        if l["bind"] == Value::Bool(false) {
            address.push_str(" (captured)");
        }
        let chains: Vec<String> = l["filter_chains"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(l["default_chain"].as_object().map(|_| &l["default_chain"]))
            .map(chain)
            .collect();
        let _ = writeln!(out, "{name:<52} {address:<22} {}", chains.join("; "));
    }
}

/// One chain as `[sni names] [mTLS] tcp|http -> clusters`.
fn chain(c: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(names) = c["matches"]["server_names"]
        .as_array()
        .filter(|n| !n.is_empty())
    {
        let names: Vec<String> = names.iter().map(text).collect();
        parts.push(format!("sni {}", names.join(",")));
    }
    if !c["tls"].is_null() {
        parts.push("mTLS".to_owned());
    }
    let action = &c["action"];
    if let Some(tcp) = action.get("TcpProxy") {
        parts.push(format!("tcp -> {}", upstreams(&tcp["clusters"])));
    } else if let Some(http) = action.get("Http") {
        let mut clusters: Vec<String> = http["routes"]["virtual_hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|v| v["routes"].as_array().into_iter().flatten())
            .map(|r| upstreams(&r["action"]["clusters"]))
            .collect();
        clusters.dedup();
        let rbac = http["rbac"].as_array().map_or(0, Vec::len);
        let rbac = if rbac > 0 {
            format!(" ({rbac} RBAC filters)")
        } else {
            String::new()
        };
        parts.push(format!("http{rbac} -> {}", clusters.join(",")));
    }
    parts.join(" ")
}

fn clusters(out: &mut String, config: &Value) {
    let _ = writeln!(
        out,
        "{:<52} {:<52} ENDPOINTS (priority address weight health cluster)",
        "CLUSTER", "SNI"
    );
    for (name, c) in config["clusters"].as_object().into_iter().flatten() {
        let sni = c["upstream_tls"]["sni"]
            .as_str()
            .unwrap_or("(plaintext)")
            .to_owned();
        let assignment = match c["endpoints"].get("Eds") {
            Some(eds) => &config["assignments"][text(&eds["service_name"])],
            None => &c["endpoints"]["Static"],
        };
        let mut endpoints = Vec::new();
        for l in assignment["localities"].as_array().into_iter().flatten() {
            for e in l["endpoints"].as_array().into_iter().flatten() {
                endpoints.push(format!(
                    "p{} {} w{} {} {}",
                    text(&l["priority"]),
                    text(&e["address"]),
                    text(&e["weight"]),
                    if e["healthy"] == Value::Bool(true) {
                        "healthy"
                    } else {
                        "unhealthy"
                    },
                    text(&e["cluster"]),
                ));
            }
        }
        if endpoints.is_empty() {
            endpoints.push("none".to_owned());
        }
        let _ = writeln!(out, "{name:<52} {sni:<52} {}", endpoints.join("; "));
    }
}

/// Where a route or TCP proxy sends traffic, from the dump's `ClusterSplit`: `cluster`, or
/// `a 95%,b 5%` for weighted clusters.
fn upstreams(v: &serde_json::Value) -> String {
    if let Some(one) = v.get("One") {
        return text(one);
    }
    let Some(w) = v.get("Weighted") else {
        return text(v);
    };
    let total = w["total"].as_u64().unwrap_or(0).max(1);
    w["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let weight = c[1].as_u64().unwrap_or(0);
            format!("{} {}%", text(&c[0]), weight * 100 / total)
        })
        .collect::<Vec<_>>()
        .join(",")
}
