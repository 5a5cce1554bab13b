//! The proxy's admin API (loopback by default): readiness, Prometheus metrics and the
//! configuration it serves, as JSON for `causeway proxy-config` and operators.

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

#[derive(Clone)]
pub struct AdminState {
    pub snapshots: watch::Receiver<SharedSnapshot>,
    pub ads: Arc<AdsStatus>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/stats/prometheus", get(stats))
        .route("/config_dump", get(config_dump))
        .route("/listeners", get(listeners))
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
    );
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
