//! Mesh-path benchmark: the same bounded HTTP load (default 10 s, 16 connections) sent
//! (1) directly to the app, (2) through the client and server sidecars, (3) across networks
//! through sidecar → east-west gateway → sidecar with mTLS; plus peak RSS of every proxy and of
//! the control plane. It runs the example mesh itself (the `causeway demo` plan) on 127.0.0.0/8.
//!
//! Run: `make bench` or `cargo run --release -p causeway-bench --bin mesh-path -- [--seconds N]
//! [--connections N]` after `cargo build --release -p causeway`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use causeway_bench::demo_mesh::{causeway_bin, envoy_bin, workspace, DemoMesh};
use causeway_bench::http_load::{self, LoadSpec};
use causeway_bench::procfs::peak_rss_mib;

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
    let bin = causeway_bin()?;
    let envoy = envoy_bin()?;
    let run_dir = std::env::temp_dir().join(format!("causeway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    let plan = DemoMesh::plan(
        &bin,
        &envoy,
        &root.join("examples/three-clusters"),
        &run_dir,
        31000,
    )?;
    let mesh = DemoMesh::start(&bin, plan, &run_dir)?;
    mesh.wait_synced(Duration::from_secs(60))?;
    let outbound = |service: &str| mesh.outbound("alpha-client-sidecar", service);
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
        let r = rt.block_on(http_load::run(LoadSpec {
            addr,
            connections,
            deadline: Instant::now() + Duration::from_secs(seconds),
            requests: None,
            timeout: Duration::from_secs(5),
            progress: None,
        }))?;
        println!(
            "{:<52} {:>10.0} {:>9.2} {:>9.2} {:>8}",
            name,
            r.rps(),
            r.percentile_ms(0.5),
            r.percentile_ms(0.99),
            r.failed()
        );
    }
    println!("\n{:<40} {:>14}", "process", "peak RSS MiB");
    for p in mesh.processes() {
        if matches!(p.kind.as_str(), "control-plane" | "sidecar" | "gateway") {
            if let Some(rss) = peak_rss_mib(p.child.id()) {
                println!("{:<40} {:>14.1}", p.name, rss);
            }
        }
    }
    drop(mesh);
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}
