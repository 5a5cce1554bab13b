//! The tour's balancing step: a service with several pods behind one remote gateway, one of
//! them slow on purpose (`causeway.io/demo-delay-ms`). A Causeway client sidecar has one
//! endpoint per pod and balances by latency, so the slow pod gets few requests; an Envoy client
//! has the gateway as one endpoint and spreads evenly over the pods behind it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::{call, get_json, plan::DemoWorkload};

/// Calls the tour makes (bounded: the slow pod answers in a quarter of a second).
const CALLS: usize = 40;
/// At most this share of the calls may reach the slow pod through a Causeway client.
const SLOW_SHARE_LIMIT: f64 = 0.2;

/// Who answered `CALLS` calls to `addr`, and the failures.
async fn answers(addr: SocketAddr) -> (BTreeMap<String, usize>, usize) {
    let mut by = BTreeMap::new();
    let mut failed = 0;
    for _ in 0..CALLS {
        match call(addr).await {
            Ok(a) => *by.entry(a.workload).or_default() += 1,
            Err(_) => failed += 1,
        }
    }
    (by, failed)
}

/// The client sidecar's latency estimate per pod of `service`, from its admin `/endpoints`
/// (Causeway's data plane only; Envoy has no such estimate).
async fn estimates(client: &DemoWorkload, service: &str) -> Option<String> {
    let v = get_json(client.admin, "/endpoints").await.ok()?;
    let cluster = v["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["service"] == service)?;
    let parts: Vec<String> = cluster["endpoints"]
        .as_array()?
        .iter()
        .map(|e| {
            let who = e["workload"].as_str().unwrap_or("?");
            match e["ewmaMs"].as_f64() {
                Some(ms) => format!("{who} {ms:.1} ms"),
                None => format!("{who} -"),
            }
        })
        .collect();
    Some(parts.join(", "))
}

/// Runs the step against `service` (`namespace/name`) at `addr`, the client's outbound address:
/// the line to print, or why the step failed. `slow` is the pod the mesh directory slows down.
pub async fn slow_pod_is_avoided(
    client: &DemoWorkload,
    causeway_client: bool,
    service: &str,
    addr: SocketAddr,
    slow: &str,
) -> Result<String, String> {
    // The first call may still meet an ejection or a listener warming up.
    let _ = super::call_until(addr, Duration::from_secs(15), |_| true).await;
    let (by, failed) = answers(addr).await;
    let split = by
        .iter()
        .map(|(w, n)| format!("{w} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    if failed > 0 {
        return Err(format!("{failed} of {CALLS} calls failed ({split})"));
    }
    let to_slow = by.get(slow).copied().unwrap_or(0);
    if !causeway_client {
        return Ok(format!(
            "{split} (an Envoy client sees the gateway as one endpoint and spreads evenly)"
        ));
    }
    let seen = estimates(client, service)
        .await
        .map_or_else(String::new, |e| format!("; the client's estimates: {e}"));
    if (to_slow as f64) <= SLOW_SHARE_LIMIT * CALLS as f64 {
        Ok(format!("{split} of {CALLS}{seen}"))
    } else {
        Err(format!(
            "the slow pod {slow} answered {to_slow} of {CALLS}: {split}{seen}"
        ))
    }
}

/// The client sidecar's data plane, from the plan's arguments.
pub fn runs_causeway(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| w[0] == "--data-plane" && w[1] == "causeway")
}

/// The slow pod of `service` in the mesh directory's plan: the workload whose sample app is
/// started with a delay.
pub fn slow_pod(plan: &super::Plan, name: &str) -> Option<String> {
    plan.processes.iter().find_map(|p| {
        let workload = p.workload.as_deref()?;
        let delayed = p.args.iter().any(|a| a == "--delay-ms");
        (p.kind == super::Kind::App && delayed && workload.starts_with(name))
            .then(|| workload.to_owned())
    })
}
