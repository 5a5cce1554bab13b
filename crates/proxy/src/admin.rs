//! The proxy's admin API (loopback by default): readiness, Prometheus metrics, the
//! configuration it serves and every upstream endpoint's state, as JSON for
//! `causeway proxy-config` and operators.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use causeway_xds::client::ads::AdsStatus;
use tokio::sync::watch;

use crate::config::SharedSnapshot;
use crate::metrics::Metrics;
use crate::upstream::load::EndpointBook;
use crate::upstream::Target;

#[derive(Clone)]
pub struct AdminState {
    pub snapshots: watch::Receiver<SharedSnapshot>,
    pub ads: Arc<AdsStatus>,
    pub metrics: Arc<Metrics>,
    /// The workers' endpoint counters and latency estimates.
    pub endpoints: Arc<EndpointBook>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/stats/prometheus", get(stats))
        .route("/config_dump", get(config_dump))
        .route("/listeners", get(listeners))
        .route("/endpoints", get(endpoints))
        .with_state(state)
}

/// Ready once a configuration from the control plane is being served.
async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.snapshots.borrow().generation > 0 {
        (StatusCode::OK, "LIVE\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n")
    }
}

async fn stats(State(s): State<AdminState>) -> impl IntoResponse {
    let mut text = s.metrics.encode();
    // The xDS client's counters, in the same exposition (before the closing `# EOF`).
    let ads = &s.ads;
    let extra = format!(
        "# HELP causeway_proxy_xds_connected Whether the xDS stream to the control plane is open.\n\
         # TYPE causeway_proxy_xds_connected gauge\ncauseway_proxy_xds_connected {}\n\
         # HELP causeway_proxy_xds_updates Configuration updates from the control plane, by result.\n\
         # TYPE causeway_proxy_xds_updates counter\n\
         causeway_proxy_xds_updates_total{{result=\"accepted\"}} {}\n\
         causeway_proxy_xds_updates_total{{result=\"rejected\"}} {}\n",
        u8::from(ads.connected.load(Ordering::Relaxed)),
        ads.accepted.load(Ordering::Relaxed),
        ads.rejected.load(Ordering::Relaxed),
    ) + &s.endpoints.encode();
    match text.rfind("# EOF") {
        Some(at) => text.insert_str(at, &extra),
        None => text.push_str(&extra),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// The listeners served, one `name::address` line each (Envoy's `/listeners` text form, so the
/// same tools read both data planes).
async fn listeners(State(s): State<AdminState>) -> impl IntoResponse {
    let snapshot = s.snapshots.borrow().clone();
    let mut text = String::new();
    for (name, l) in &snapshot.listeners {
        text.push_str(&format!("{name}::{}\n", l.address));
    }
    text
}

async fn config_dump(State(s): State<AdminState>) -> impl IntoResponse {
    let snapshot = s.snapshots.borrow().clone();
    Json(serde_json::json!({
        "dataPlane": "causeway",
        "xds": {
            "connected": s.ads.connected.load(Ordering::Relaxed),
            "accepted": s.ads.accepted.load(Ordering::Relaxed),
            "rejected": s.ads.rejected.load(Ordering::Relaxed),
            "lastError": s.ads.last_error(),
            "lastRejection": s.ads.last_rejection(),
        },
        "config": &*snapshot,
    }))
}

/// Every cluster's endpoints as configured, each with its counters since the proxy started
/// (summed over workers), its latest latency estimate and its ejection: what
/// `causeway proxy-config endpoints` shows.
async fn endpoints(State(s): State<AdminState>) -> impl IntoResponse {
    use causeway_xds::dataplane::LbPolicy;
    use serde_json::json;
    let snapshot = s.snapshots.borrow().clone();
    let mut clusters = Vec::new();
    for (name, cluster) in &snapshot.clusters {
        let mut endpoints = Vec::new();
        for l in snapshot
            .endpoints_of(name)
            .map_or(&[][..], |la| &la.localities)
        {
            for e in &l.endpoints {
                let stats = s.endpoints.get(name, &Target::of(e));
                let stats = stats.as_deref();
                let count =
                    |f: fn(&crate::upstream::load::EndpointStats) -> u64| stats.map_or(0, f);
                let ewma = stats
                    .map(|st| st.ewma_ns.load(Ordering::Relaxed))
                    .filter(|ns| *ns > 0);
                let ejected = stats.and_then(|st| st.ejected_for());
                endpoints.push(json!({
                    "address": e.address.to_string(),
                    "sni": e.sni,
                    "pod": e.pod,
                    "cluster": e.cluster,
                    "workload": e.workload,
                    "priority": l.priority,
                    "weight": e.weight,
                    "healthy": e.healthy,
                    "activeHealthCheck": e.active_health_check,
                    "failingHealthChecks": stats.is_some_and(|st| st.unhealthy.load(Ordering::Relaxed)),
                    "ejected": ejected.is_some(),
                    "ejectedRemainingMs": ejected.map(|d| d.as_millis() as u64),
                    "ewmaMs": ewma.map(|ns| ns as f64 / 1e6),
                    "pending": stats.map_or(0, |st| st.pending.load(Ordering::Relaxed).max(0)),
                    "requests": count(|st| st.requests.load(Ordering::Relaxed)),
                    "failures": count(|st| st.failures.load(Ordering::Relaxed)),
                }));
            }
        }
        clusters.push(json!({
            "name": name,
            "service": cluster.service,
            "loadBalancer": match cluster.lb_policy {
                LbPolicy::RoundRobin => "round-robin",
                LbPolicy::PeakEwma => "peak-ewma",
            },
            "endpoints": endpoints,
        }));
    }
    Json(json!({ "clusters": clusters }))
}
