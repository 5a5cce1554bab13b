//! Envoy's admin `/clusters?format=json` (`admin.v3.Clusters`) read into the clusters that a
//! Causeway proxy's `/endpoints` gives: no EWMA, service, balancer, pod or ejection time.

use anyhow::Context;
use serde::{Deserialize, Deserializer};

use super::{one, Cluster, Endpoint};

/// Parses Envoy's `/clusters?format=json`.
pub fn parse(body: &[u8]) -> anyhow::Result<Vec<Cluster>> {
    let envoy: EnvoyClusters = serde_json::from_slice(body)
        .context("Envoy's /clusters?format=json answer is not the JSON this command reads")?;
    Ok(envoy
        .cluster_statuses
        .into_iter()
        .map(|c| Cluster {
            name: c.name,
            service: None,
            load_balancer: None,
            endpoints: c.host_statuses.into_iter().map(envoy_endpoint).collect(),
        })
        .collect())
}

fn envoy_endpoint(host: EnvoyHost) -> Endpoint {
    let stat = |name: &str| {
        host.stats
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum::<u64>()
    };
    let health = &host.health_status;
    let eds_unhealthy = matches!(
        health.eds_health_status.as_deref(),
        Some("UNHEALTHY" | "DRAINING" | "TIMEOUT")
    );
    Endpoint {
        address: host.address.display(),
        sni: None,
        pod: None,
        cluster: None,
        workload: None,
        priority: host.priority,
        weight: host.weight,
        healthy: !(eds_unhealthy || health.failed_active_health_check || health.active_hc_timeout),
        ejected: health.failed_outlier_check,
        ejected_remaining_ms: None,
        ewma_ms: None,
        pending: stat("rq_active"),
        requests: stat("rq_total"),
        failures: stat("rq_error"),
    }
}

/// Envoy's `admin.v3.Clusters`, only what is shown.
#[derive(Deserialize)]
struct EnvoyClusters {
    #[serde(default)]
    cluster_statuses: Vec<EnvoyCluster>,
}

#[derive(Deserialize)]
struct EnvoyCluster {
    name: String,
    #[serde(default)]
    host_statuses: Vec<EnvoyHost>,
}

#[derive(Deserialize)]
struct EnvoyHost {
    #[serde(default)]
    address: EnvoyAddress,
    #[serde(default)]
    stats: Vec<EnvoyStat>,
    #[serde(default)]
    health_status: EnvoyHealth,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    priority: u32,
}

#[derive(Default, Deserialize)]
struct EnvoyAddress {
    #[serde(default)]
    socket_address: Option<EnvoySocketAddress>,
    #[serde(default)]
    pipe: Option<EnvoyPipe>,
}

impl EnvoyAddress {
    fn display(&self) -> String {
        match (&self.socket_address, &self.pipe) {
            (Some(s), _) if s.address.contains(':') => format!("[{}]:{}", s.address, s.port_value),
            (Some(s), _) => format!("{}:{}", s.address, s.port_value),
            (None, Some(p)) => p.path.clone(),
            (None, None) => "-".to_owned(),
        }
    }
}

#[derive(Deserialize)]
struct EnvoySocketAddress {
    #[serde(default)]
    address: String,
    #[serde(default)]
    port_value: u32,
}

#[derive(Deserialize)]
struct EnvoyPipe {
    #[serde(default)]
    path: String,
}

/// A host stat; proto3 JSON omits zero values and may write 64-bit ones as strings.
#[derive(Deserialize)]
struct EnvoyStat {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "count")]
    value: u64,
}

#[derive(Default, Deserialize)]
struct EnvoyHealth {
    #[serde(default)]
    failed_outlier_check: bool,
    #[serde(default)]
    failed_active_health_check: bool,
    #[serde(default)]
    active_hc_timeout: bool,
    #[serde(default)]
    eds_health_status: Option<String>,
}

fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Count {
        Number(u64),
        Text(String),
    }
    match Count::deserialize(d)? {
        Count::Number(n) => Ok(n),
        Count::Text(s) => s
            .parse()
            .map_err(|e| serde::de::Error::custom(format!("stat value {s:?}: {e}"))),
    }
}
