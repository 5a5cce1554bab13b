//! Mesh-path benchmark: the same bounded HTTP load (default 10 s, 16 connections) sent
//! (1) directly to the app, (2) through the client and server sidecars, (3) across networks
//! through sidecar → east-west gateway → sidecar with mTLS; plus peak RSS of every proxy and of
//! the control plane. It runs the example mesh itself (the `causeway demo` plan) on 127.0.0.0/8.
//!
//! Run: `make bench` or `cargo run --release -p causeway-bench --bin mesh-path -- [--seconds N]
//! [--connections N]` after `cargo build --release -p causeway`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn http_get_blocking(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, mut body) = out.split_once("\r\n\r\n")?;
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(body.to_owned());
    }
    // Envoy's admin answers HTTP/1.1 in chunks.
    let mut decoded = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 || rest.len() < n {
            break;
        }
        decoded.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    Some(decoded)
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

struct Result {
    requests: u64,
    errors: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn load(addr: SocketAddr, connections: usize, duration: Duration) -> anyhow::Result<Result> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            let mut errors = 0u64;
            'conn: while Instant::now() < deadline {
                let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                else {
                    errors += 1;
                    continue;
                };
                tokio::spawn(conn);
                while Instant::now() < deadline {
                    let req = hyper::Request::get("/")
                        .header("host", "bench")
                        .body(Empty::<Bytes>::new());
                    let Ok(req) = req else { break 'conn };
                    let start = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
                        .await
                    {
                        Ok(Ok(resp)) => {
                            let ok = resp.status().is_success();
                            let _ = resp.into_body().collect().await;
                            if ok {
                                lat.push(
                                    start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32
                                );
                            } else {
                                errors += 1;
                            }
                        }
                        _ => {
                            errors += 1;
                            continue 'conn;
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.context("load task")?;
        all.extend(lat);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        f64::from(all[i]) / 1000.0
    };
    Ok(Result {
        requests: all.len() as u64,
        errors,
        rps: all.len() as f64 / duration.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

fn main() -> anyhow::Result<()> {
    let mut seconds = 10u64;
    let mut connections = 16usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).context("flags take a value")?;
        match pair[0].as_str() {
            "--seconds" => seconds = v.parse()?,
            "--connections" => connections = v.parse()?,
            other => bail!("unknown flag {other} (--seconds, --connections)"),
        }
    }
    let root = workspace();
    let bin = ["release", "debug"]
        .iter()
        .map(|p| root.join("target").join(p).join("causeway"))
        .find(|p| p.exists())
        .context("build causeway first: cargo build --release -p causeway")?;
    let envoy = std::env::var("CAUSEWAY_ENVOY")
        .map(PathBuf::from)
        .or_else(|_| {
            let out = Command::new(root.join("scripts/ensure-envoy")).output()?;
            Ok::<_, std::io::Error>(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })?;
    let run_dir = std::env::temp_dir().join(format!("causeway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    let out = Command::new(&bin)
        .args(["demo", "--print-plan", "--port-base", "31000", "--mesh-dir"])
        .arg(root.join("examples/three-clusters"))
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("--envoy")
        .arg(&envoy)
        .output()?;
    if !out.status.success() {
        bail!("plan: {}", String::from_utf8_lossy(&out.stderr));
    }
    let plan: Value = serde_json::from_slice(&out.stdout)?;
    let debug: SocketAddr = plan["debug"].as_str().context("debug")?.parse()?;
    let mut procs = Procs(Vec::new());
    for (i, spec) in plan["processes"]
        .as_array()
        .context("processes")?
        .iter()
        .enumerate()
    {
        let args: Vec<&str> = spec["args"]
            .as_array()
            .context("args")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let log = std::fs::File::create(
            run_dir.join(format!("{}.log", spec["name"].as_str().unwrap_or("p"))),
        )?;
        let child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        procs
            .0
            .push((spec["name"].as_str().unwrap_or("?").to_owned(), child));
        if i == 0 {
            let start = Instant::now();
            while http_get_blocking(debug, "/healthz").is_none() {
                if start.elapsed() > Duration::from_secs(20) {
                    bail!("control plane did not start");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let proxies = plan["processes"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter(|s| s["kind"] == "gateway" || s["kind"] == "sidecar")
                .count()
        })
        .unwrap_or(0);
    let start = Instant::now();
    loop {
        let synced = http_get_blocking(debug, "/debug/proxies")
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .and_then(|v| {
                v["proxies"]
                    .as_array()
                    .map(|p| p.len() >= proxies && p.iter().all(|x| x["inSync"] == true))
            })
            .unwrap_or(false);
        if synced {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("proxies did not sync");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let admin_of = |name: &str| -> anyhow::Result<SocketAddr> {
        plan["processes"]
            .as_array()
            .and_then(|p| p.iter().find(|s| s["name"] == name))
            .and_then(|s| s["admin"].as_str())
            .context("admin")?
            .parse()
            .context("admin address")
    };
    let outbound = |service: &str| -> anyhow::Result<SocketAddr> {
        let listeners = http_get_blocking(admin_of("alpha-client-sidecar")?, "/listeners")
            .context("listeners")?;
        listeners
            .lines()
            .find_map(|l| {
                l.split("::")
                    .next()?
                    .strip_prefix("outbound|")?
                    .strip_suffix(&format!("|{service}"))
                    .map(str::to_owned)
            })
            .context("no listener")?
            .parse()
            .context("listener address")
    };
    // echo-alpha-1's app directly; echo through the client's and echo-alpha-1's sidecars (echo
    // is local to alpha, priority 0); greeter across networks through gamma's gateway.
    let paths = [
        (
            "direct to the app",
            "127.1.100.11:8080".parse::<SocketAddr>()?,
        ),
        (
            "client sidecar -> server sidecar (mTLS)",
            outbound("demo/echo")?,
        ),
        (
            "sidecar -> gateway -> sidecar (mTLS, other network)",
            outbound("demo/greeter")?,
        ),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("causeway mesh-path benchmark: {connections} connections, {seconds} s per path, HTTP/1.1 keep-alive, Envoy {}", envoy.display());
    println!(
        "{:<52} {:>10} {:>9} {:>9} {:>8}",
        "path", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for (name, addr) in paths {
        let r = rt.block_on(load(addr, connections, Duration::from_secs(seconds)))?;
        println!(
            "{:<52} {:>10.0} {:>9.2} {:>9.2} {:>8}",
            name, r.rps, r.p50_ms, r.p99_ms, r.errors
        );
        let _ = r.requests;
    }
    println!("\n{:<40} {:>14}", "process", "peak RSS MiB");
    for (name, child) in &procs.0 {
        let interesting =
            name == "control-plane" || name.ends_with("sidecar") || name.contains("gateway");
        if interesting {
            if let Some(rss) = peak_rss_mib(child.id()) {
                println!("{:<40} {:>14.1}", name, rss);
            }
        }
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}
