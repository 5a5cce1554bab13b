//! Figures of the runs: means per path and data plane, the ratios of each Causeway build over
//! Envoy with the goals beside them, which backend answered how much (on a path with more than
//! one), the table and the JSON.

use std::collections::BTreeMap;

use causeway_bench::http_load::LoadResult;
use serde::Serialize;

use crate::run::ProxyFigures;

/// Goals of the acceptance text, on the ratios Causeway / Envoy and the proxies' RSS.
const MESH_RPS: f64 = 2.0;
const MESH_P99: f64 = 0.5;
const MESH_RSS_MIB: f64 = 16.0;
const HTTP_HOP_RPS: f64 = 1.5;
/// The tail path: Causeway's p99 below Envoy's (a ratio under this, strictly).
const TAIL_P99: f64 = 1.0;

/// One measured run of one path on one data plane.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub round: usize,
    pub path: &'static str,
    /// The data plane's label (`envoy`, `causeway`, `causeway-<build>`), `-` without proxies.
    pub data_plane: String,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub ok: u64,
    pub errors: u64,
    pub failures: BTreeMap<String, u64>,
    pub seconds: f64,
    pub proxies: Vec<ProxyFigures>,
    /// CPU ms per 1,000 requests, summed over the path's proxies (= millicores per 1,000 req/s).
    pub cpu_ms_per_1k: Option<f64>,
    /// The largest peak RSS (VmHWM) among the path's proxies.
    pub peak_rss_mib: Option<f64>,
    /// Successful answers per backend workload, on a path with more than one backend.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub answered_by: BTreeMap<String, u64>,
}

impl Run {
    pub fn new(
        round: usize,
        path: &'static str,
        data_plane: &str,
        r: &LoadResult,
        proxies: Vec<ProxyFigures>,
    ) -> Self {
        let cpu: Option<f64> = if proxies.is_empty() {
            None
        } else {
            proxies.iter().map(|p| p.cpu_seconds).sum()
        };
        let rss = proxies
            .iter()
            .filter_map(|p| p.peak_rss_mib)
            .reduce(f64::max);
        Run {
            round,
            path,
            data_plane: data_plane.to_owned(),
            rps: r.rps(),
            p50_ms: r.percentile_ms(0.5),
            p99_ms: r.percentile_ms(0.99),
            ok: r.ok(),
            errors: r.failed(),
            failures: r.failures.clone(),
            seconds: r.elapsed.as_secs_f64(),
            cpu_ms_per_1k: cpu.map(|c| c * 1e6 / r.ok().max(1) as f64),
            peak_rss_mib: rss,
            proxies,
            answered_by: r.workloads.clone(),
        }
    }
}

/// Means over the rounds of one path on one data plane (the RSS: the maximum).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub path: &'static str,
    pub title: &'static str,
    pub data_plane: String,
    pub runs: usize,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub cpu_ms_per_1k: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// Successful answers per backend workload, summed over the rounds (paths with more than
    /// one backend).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub answered_by: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub what: &'static str,
    /// `>= x` or `<= x`.
    pub goal: String,
    pub value: Option<f64>,
    pub met: bool,
}

/// A Causeway build over Envoy on one path.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub path: &'static str,
    pub data_plane: String,
    pub rps: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub cpu_per_request: Option<f64>,
    pub peak_rss: Option<f64>,
    pub goals: Vec<Goal>,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

pub fn summarize(
    runs: &[Run],
    paths: &[(&'static str, &'static str)],
    data_planes: &[String],
) -> Vec<Summary> {
    let mut out = Vec::new();
    for (path, title) in paths {
        let mut labels: Vec<&str> = data_planes.iter().map(String::as_str).collect();
        labels.insert(0, "-");
        for dp in labels {
            let of: Vec<&Run> = runs
                .iter()
                .filter(|r| r.path == *path && r.data_plane == dp)
                .collect();
            if of.is_empty() {
                continue;
            }
            out.push(Summary {
                path,
                title,
                data_plane: dp.to_owned(),
                runs: of.len(),
                rps: mean(of.iter().map(|r| r.rps)).unwrap_or(f64::NAN),
                p50_ms: mean(of.iter().map(|r| r.p50_ms)).unwrap_or(f64::NAN),
                p99_ms: mean(of.iter().map(|r| r.p99_ms)).unwrap_or(f64::NAN),
                errors: of.iter().map(|r| r.errors).sum(),
                cpu_ms_per_1k: mean(of.iter().filter_map(|r| r.cpu_ms_per_1k)),
                peak_rss_mib: of.iter().filter_map(|r| r.peak_rss_mib).reduce(f64::max),
                answered_by: of.iter().flat_map(|r| &r.answered_by).fold(
                    BTreeMap::new(),
                    |mut sum, (w, n)| {
                        *sum.entry(w.clone()).or_default() += n;
                        sum
                    },
                ),
            });
        }
    }
    out
}

fn goal(what: &'static str, value: Option<f64>, at_least: bool, bound: f64) -> Goal {
    let met = value.is_some_and(|v| if at_least { v >= bound } else { v <= bound });
    Goal {
        what,
        goal: format!("{} {bound}", if at_least { ">=" } else { "<=" }),
        value,
        met,
    }
}

pub fn ratios(summaries: &[Summary]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for s in summaries {
        if s.data_plane == "envoy" || s.data_plane == "-" {
            continue;
        }
        let Some(e) = summaries
            .iter()
            .find(|e| e.path == s.path && e.data_plane == "envoy")
        else {
            continue;
        };
        let over = |c: f64, e: f64| (e > 0.0 && c.is_finite() && e.is_finite()).then(|| c / e);
        let opt = |c: Option<f64>, e: Option<f64>| c.zip(e).and_then(|(c, e)| over(c, e));
        let rps = over(s.rps, e.rps);
        let p99 = over(s.p99_ms, e.p99_ms);
        let goals = match s.path {
            "http-hop" => vec![goal("req/s ratio", rps, true, HTTP_HOP_RPS)],
            "sidecars" | "gateway" => vec![
                goal("req/s ratio", rps, true, MESH_RPS),
                goal("p99 ratio", p99, false, MESH_P99),
                goal("RSS MiB per proxy", s.peak_rss_mib, false, MESH_RSS_MIB),
            ],
            "tail" => vec![Goal {
                what: "tail p99: Causeway below Envoy, p99 ratio",
                goal: format!("< {TAIL_P99}"),
                value: p99,
                met: p99.is_some_and(|v| v < TAIL_P99),
            }],
            _ => vec![],
        };
        out.push(Ratio {
            path: s.path,
            data_plane: s.data_plane.clone(),
            rps,
            p50: over(s.p50_ms, e.p50_ms),
            p99,
            cpu_per_request: opt(s.cpu_ms_per_1k, e.cpu_ms_per_1k),
            peak_rss: opt(s.peak_rss_mib, e.peak_rss_mib),
            goals,
        });
    }
    out
}

fn f(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "-".into(),
    }
}

fn x(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}x"))
}

/// The width of the title column: the longest title, at least 38.
fn title_width<'a>(titles: impl Iterator<Item = &'a str>) -> usize {
    titles.map(str::len).max().unwrap_or(0).max(38)
}

pub fn print_table(summaries: &[Summary], ratios: &[Ratio]) {
    let w = title_width(summaries.iter().map(|s| s.title));
    println!(
        "{:<w$} {:<18} {:>9} {:>8} {:>8} {:>7} {:>10} {:>9}",
        "path", "data plane", "req/s", "p50 ms", "p99 ms", "errors", "cpu ms/1k", "RSS MiB"
    );
    let mut last_path = "";
    for s in summaries {
        let title = if s.path == last_path { "" } else { s.title };
        last_path = s.path;
        println!(
            "{:<w$} {:<18} {:>9.0} {:>8.2} {:>8.2} {:>7} {:>10} {:>9}",
            title,
            s.data_plane,
            s.rps,
            s.p50_ms,
            s.p99_ms,
            s.errors,
            f(s.cpu_ms_per_1k, 1),
            f(s.peak_rss_mib, 1),
        );
        let is_last_of_path = summaries
            .iter()
            .rev()
            .find(|o| o.path == s.path)
            .is_some_and(|o| std::ptr::eq(o, s));
        if !is_last_of_path {
            continue;
        }
        for r in ratios.iter().filter(|r| r.path == s.path) {
            let goals: Vec<String> = r
                .goals
                .iter()
                .map(|g| {
                    format!(
                        "{} {} ({})",
                        g.what,
                        g.goal,
                        if g.met { "met" } else { "NOT met" }
                    )
                })
                .collect();
            println!(
                "{:<w$} {:<18} {:>9} {:>8} {:>8} {:>7} {:>10} {:>9}   {}",
                "",
                format!("{}/envoy", r.data_plane),
                x(r.rps),
                x(r.p50),
                x(r.p99),
                "",
                x(r.cpu_per_request),
                x(r.peak_rss),
                if goals.is_empty() {
                    String::new()
                } else {
                    format!("goals: {}", goals.join(", "))
                },
            );
        }
    }
}

/// The workload as the backends report it, without the run's `@bench-<pid>` tag.
fn untagged(workload: &str) -> &str {
    workload.split_once('@').map_or(workload, |(w, _)| w)
}

/// For each path with answers counted per backend: each data plane's share per backend.
pub fn print_answers(summaries: &[Summary]) {
    let counted: Vec<&Summary> = summaries
        .iter()
        .filter(|s| !s.answered_by.is_empty())
        .collect();
    if counted.is_empty() {
        return;
    }
    println!("\nanswers per backend, summed over the rounds:");
    let w = title_width(counted.iter().map(|s| s.title));
    let mut last_path = "";
    for s in counted {
        let total: u64 = s.answered_by.values().sum();
        let shares: Vec<String> = s
            .answered_by
            .iter()
            .map(|(w, n)| {
                let pct = 100.0 * *n as f64 / total.max(1) as f64;
                format!("{} {n} ({pct:.1}%)", untagged(w))
            })
            .collect();
        println!(
            "  {:<w$} {:<18} {}",
            if s.path == last_path { "" } else { s.title },
            s.data_plane,
            shares.join(", ")
        );
        last_path = s.path;
    }
}

/// One proxy of a path on one data plane, over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct ProxySummary {
    pub path: &'static str,
    pub data_plane: String,
    pub proxy: String,
    /// Mean CPU ms per 1,000 requests of this proxy alone.
    pub cpu_ms_per_1k: Option<f64>,
    /// The maximum of its peak RSS over the rounds.
    pub peak_rss_mib: Option<f64>,
    /// The maximum of its RSS once ready, before the load.
    pub idle_rss_mib: Option<f64>,
    /// The maxima of its anonymous and file-backed RSS after the load.
    pub rss_anon_mib: Option<f64>,
    pub rss_file_mib: Option<f64>,
    pub threads: Option<u32>,
}

pub fn per_proxy(runs: &[Run]) -> Vec<ProxySummary> {
    let mut out: Vec<ProxySummary> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in runs {
        for p in &r.proxies {
            if !seen.insert((r.path, r.data_plane.clone(), p.name.clone())) {
                continue;
            }
            let of: Vec<(&Run, &ProxyFigures)> = runs
                .iter()
                .filter(|o| o.path == r.path && o.data_plane == r.data_plane)
                .flat_map(|o| o.proxies.iter().map(move |q| (o, q)))
                .filter(|(_, q)| q.name == p.name)
                .collect();
            out.push(ProxySummary {
                path: r.path,
                data_plane: r.data_plane.clone(),
                proxy: p.name.clone(),
                cpu_ms_per_1k: mean(
                    of.iter()
                        .filter_map(|(o, q)| q.cpu_seconds.map(|c| c * 1e6 / o.ok.max(1) as f64)),
                ),
                peak_rss_mib: of
                    .iter()
                    .filter_map(|(_, q)| q.peak_rss_mib)
                    .reduce(f64::max),
                idle_rss_mib: of
                    .iter()
                    .filter_map(|(_, q)| q.idle_rss_mib)
                    .reduce(f64::max),
                rss_anon_mib: of
                    .iter()
                    .filter_map(|(_, q)| q.rss_anon_mib)
                    .reduce(f64::max),
                rss_file_mib: of
                    .iter()
                    .filter_map(|(_, q)| q.rss_file_mib)
                    .reduce(f64::max),
                threads: of.iter().filter_map(|(_, q)| q.threads).max(),
            });
        }
    }
    out
}

pub fn print_per_proxy(proxies: &[ProxySummary], titles: &[(&'static str, &'static str)]) {
    let w = title_width(titles.iter().map(|(_, t)| *t));
    println!(
        "\nper proxy: CPU ms per 1,000 requests; peak RSS MiB (RSS once ready, before the load; \
         anonymous + file-backed RSS after it); threads"
    );
    for (path, title) in titles {
        let mut first = true;
        for p in proxies.iter().filter(|p| p.path == *path) {
            println!(
                "  {:<w$} {:<18} {:<16} cpu {:>6}  peak {:>5} (ready {:>5}; {:>5} + {:>5})  {} threads",
                if first { *title } else { "" },
                p.data_plane,
                p.proxy,
                f(p.cpu_ms_per_1k, 1),
                f(p.peak_rss_mib, 1),
                f(p.idle_rss_mib, 1),
                f(p.rss_anon_mib, 1),
                f(p.rss_file_mib, 1),
                p.threads.map_or_else(|| "-".into(), |t| t.to_string())
            );
            first = false;
        }
    }
}
