//! The table and the JSON of one run, with the goals beside the measurements.

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Latencies {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct Figures {
    pub delta: bool,
    pub proxies: usize,
    pub clusters: usize,
    pub services: usize,
    pub endpoints: usize,
    pub changes: usize,
    pub first_config_all_s: f64,
    /// Connections the simulated proxies had to retry before every one held a config.
    pub reconnects_before_first_config: u64,
    pub change_to_ack_ms: Latencies,
    pub pushed_per_change: f64,
    pub needed_per_change: f64,
    pub cp_rss_mib: f64,
    pub cp_peak_rss_mib: f64,
    pub cp_rss_before_proxies_mib: f64,
    pub cp_rss_bytes_per_endpoint: f64,
    pub cp_rss_bytes_per_proxy: f64,
    pub cpu_seconds_per_change: f64,
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

pub fn print(f: &Figures) {
    println!(
        "xds-scale: {} proxies ({}), {} clusters × {} services → {} endpoints, {} changes",
        f.proxies,
        if f.delta {
            "delta"
        } else {
            "state of the world"
        },
        f.clusters,
        f.services,
        f.endpoints,
        f.changes
    );
    println!("| figure | measured | goal | |");
    println!("| --- | --- | --- | --- |");
    let row = |name: &str, measured: String, goal: &str, ok: Option<bool>| {
        println!(
            "| {name} | {measured} | {goal} | {} |",
            ok.map_or("", verdict)
        );
    };
    row(
        "first full config, every proxy",
        format!(
            "{:.1} s ({} reconnects)",
            f.first_config_all_s, f.reconnects_before_first_config
        ),
        "< 10 s",
        Some(f.first_config_all_s < 10.0),
    );
    row(
        "change → last ACK p50 / p99 / max",
        format!(
            "{:.1} / {:.1} / {:.1} ms",
            f.change_to_ack_ms.p50, f.change_to_ack_ms.p99, f.change_to_ack_ms.max
        ),
        "p99 < 100 ms",
        Some(f.change_to_ack_ms.p99 < 100.0),
    );
    row(
        "proxies pushed / needing a push, per change",
        format!("{:.1} / {:.1}", f.pushed_per_change, f.needed_per_change),
        "equal",
        Some((f.pushed_per_change - f.needed_per_change).abs() < 0.5),
    );
    row(
        "control-plane RSS (peak)",
        format!("{:.0} MiB ({:.0})", f.cp_rss_mib, f.cp_peak_rss_mib),
        "< 1 GB",
        Some(f.cp_peak_rss_mib * 1024.0 * 1024.0 < 1e9),
    );
    row(
        "RSS per endpoint",
        format!("{:.0} B", f.cp_rss_bytes_per_endpoint),
        "< 1 KiB",
        Some(f.cp_rss_bytes_per_endpoint < 1024.0),
    );
    row(
        "RSS per connected proxy",
        format!("{:.0} KiB", f.cp_rss_bytes_per_proxy / 1024.0),
        "",
        None,
    );
    row(
        "control-plane CPU per change",
        format!("{:.3} s", f.cpu_seconds_per_change),
        "",
        None,
    );
}
