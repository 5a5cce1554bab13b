//! Index benchmark: builds the mesh index of 20 clusters × 1,000 services × 5 endpoints and
//! prints the time to build it, to recompute after one endpoint changes, to compute one proxy's
//! view, and the resident memory per endpoint.
//!
//! Run: `cargo run --release -p causeway-bench --bin index-bench` (add `-- --clusters N
//! --services N --endpoints N` to change the size).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use causeway_discovery::{view, MeshIndex, ProxyContext};
use causeway_model::*;

struct Size {
    clusters: usize,
    services: usize,
    endpoints: usize,
}

fn parse_args() -> anyhow::Result<Size> {
    let mut size = Size {
        clusters: 20,
        services: 1000,
        endpoints: 5,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value: usize = pair
            .get(1)
            .context("every flag takes a number")?
            .parse()
            .context("not a number")?;
        match pair[0].as_str() {
            "--clusters" => size.clusters = value,
            "--services" => size.services = value,
            "--endpoints" => size.endpoints = value,
            other => anyhow::bail!("unknown flag {other} (--clusters, --services, --endpoints)"),
        }
    }
    Ok(size)
}

/// Resident set size of this process, from /proc/self/statm.
fn rss_bytes() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("statm has no rss field")?
        .parse()
        .context("statm rss")?;
    Ok(pages * 4096)
}

fn mesh_config(size: &Size) -> anyhow::Result<MeshConfig> {
    let mut clusters = Vec::new();
    for c in 0..size.clusters {
        clusters.push(ClusterSpec {
            id: ClusterId::new(format!("cluster-{c:02}"))?,
            network: NetworkId::new(format!("net-{}", c % 4))?,
            locality: format!("region-{}/zone-{}", c % 4, c % 8).parse()?,
            gateways: vec![Gateway {
                address: IpAddr::V4(Ipv4Addr::new(127, 200, c as u8, 1)),
                port: 15443,
            }],
            gateway_identity: None,
            kubernetes: None,
            stale_endpoint_ttl: None,
            source: ObjectSource::default(),
        });
    }
    Ok(MeshConfig {
        mesh: MeshSpec {
            name: "bench".into(),
            trust_domain: "bench.local".into(),
            discovery: DiscoveryMode::Exported,
            cluster_local: Vec::new(),
            networks: None,
            source: ObjectSource::default(),
        },
        clusters,
        traffic_policies: Vec::new(),
    })
}

fn workload(c: usize, s: usize, e: usize, octet: u8) -> WorkloadEntry {
    WorkloadEntry {
        namespace: "bench".into(),
        name: format!("svc-{s:04}-{e}"),
        address: IpAddr::V4(Ipv4Addr::new(10, (s / 250) as u8, (s % 250) as u8, octet)),
        ports: BTreeMap::new(),
        labels: BTreeMap::from([("app".to_owned(), format!("svc-{s:04}"))]),
        service_account: format!("svc-{s:04}"),
        locality: None,
        network: None,
        weight: 1,
        health: Health::Healthy,
        credential_file: None,
        demo: Default::default(),
        source: ObjectSource {
            file: format!("clusters/cluster-{c:02}/svc-{s:04}.yaml").into(),
            document: 2 + e,
            line: 1,
        },
    }
}

fn cluster_objects(c: usize, size: &Size) -> ClusterObjects {
    let mut objects = ClusterObjects::default();
    for s in 0..size.services {
        let key = ServiceKey::new("bench", format!("svc-{s:04}"));
        objects.services.insert(
            key.clone(),
            Service {
                key: key.clone(),
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: TargetPort::Number(8080),
                    protocol: "TCP".into(),
                    app_protocol: Some("http".into()),
                }],
                selector: Some(BTreeMap::from([("app".to_owned(), key.name.clone())])),
                headless: false,
                cluster_local: false,
                source: ObjectSource::default(),
            },
        );
        objects.exports.insert(
            key.clone(),
            ServiceExport {
                key: key.clone(),
                export_to: None,
                created: Some(1_700_000_000 + c as i64),
                source: ObjectSource::default(),
            },
        );
        for e in 0..size.endpoints {
            let we = workload(c, s, e, e as u8 + 1);
            objects
                .workload_entries
                .insert((we.namespace.clone(), we.name.clone()), we);
        }
    }
    objects
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() -> anyhow::Result<()> {
    let size = parse_args()?;
    let total_endpoints = size.clusters * size.services * size.endpoints;
    let rss_start = rss_bytes()?;
    let mesh = Arc::new(mesh_config(&size)?);
    let mut objects: BTreeMap<ClusterId, ClusterObjects> = BTreeMap::new();
    for (c, spec) in mesh.clusters.iter().enumerate() {
        objects.insert(spec.id.clone(), cluster_objects(c, &size));
    }
    let rss_objects = rss_bytes()?;

    let t = Instant::now();
    let mut index = MeshIndex::build(Arc::clone(&mesh), objects.iter());
    let build = t.elapsed();
    let rss_index = rss_bytes()?;

    // One endpoint changes address in one cluster.
    let first = mesh.clusters[0].id.clone();
    let mut changed_objects = objects.get(&first).cloned().context("first cluster")?;
    let we = workload(0, 7, 0, 200);
    changed_objects
        .workload_entries
        .insert((we.namespace.clone(), we.name.clone()), we);
    let t = Instant::now();
    let changed = index.set_cluster(&first, &changed_objects)?;
    let recompute = t.elapsed();

    let proxy = ProxyIdentity {
        cluster: first.clone(),
        namespace: "bench".into(),
        workload: "svc-0000-0".into(),
        role: ProxyRole::Sidecar,
    };
    let ctx = ProxyContext::resolve(&index, proxy)?;
    let t = Instant::now();
    let full_view = view::view(&index, &ctx);
    let view_time = t.elapsed();
    // Envoy resources for that proxy: the first build, then after another endpoint change with
    // the per-service cache the xDS server keeps for every sidecar.
    let node = causeway_xds::node::ProxyNode {
        id: "bench".into(),
        identity: ctx.identity.clone(),
        app_address: None,
        outbound: causeway_xds::node::OutboundBlock::parse("127.200.0.0/16").ok(),
        network: None,
        data_plane: Default::default(),
    };
    let mut cache = causeway_xds::build::SidecarCache::default();
    let t = Instant::now();
    let resources = cache.build(&index, &node, &ctx);
    let xds_full = t.elapsed();
    let mut changed_again = changed_objects.clone();
    let we = workload(0, 11, 0, 201);
    changed_again
        .workload_entries
        .insert((we.namespace.clone(), we.name.clone()), we);
    index.set_cluster(&first, &changed_again)?;
    let t = Instant::now();
    let _ = cache.build(&index, &node, &ctx);
    let xds_incremental = t.elapsed();
    let resource_count: usize = resources.by_type.values().map(|m| m.len()).sum();

    let key = ServiceKey::new("bench", "svc-0007");
    let t = Instant::now();
    let one = view::view_service(&index, &ctx, &key).context("svc-0007 visible")?;
    let one_time = t.elapsed();

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("causeway index benchmark (release build recommended)");
    println!(
        "size: {} clusters x {} services x {} endpoints = {} endpoints, {} merged services",
        size.clusters,
        size.services,
        size.endpoints,
        total_endpoints,
        index.services().len()
    );
    println!("{:<52} {:>14}", "measure", "value");
    println!("{:<52} {:>14}", "build index from all clusters", ms(build));
    println!(
        "{:<52} {:>14}",
        format!(
            "recompute after one endpoint change ({} service)",
            changed.len()
        ),
        ms(recompute)
    );
    println!(
        "{:<52} {:>14}",
        format!(
            "one proxy's full view ({} services)",
            full_view.services.len()
        ),
        ms(view_time)
    );
    println!(
        "{:<52} {:>14}",
        format!(
            "one service's view ({} endpoint groups)",
            one.ports.first().map_or(0, |p| p.groups.len())
        ),
        ms(one_time)
    );
    println!(
        "{:<52} {:>14}",
        format!("one sidecar's Envoy resources ({resource_count})"),
        ms(xds_full)
    );
    println!(
        "{:<52} {:>14}",
        format!(
            "same, after one endpoint change ({} rebuilt)",
            cache.rebuilt()
        ),
        ms(xds_incremental)
    );
    println!(
        "{:<52} {:>11.1} MiB",
        "RSS: registry objects",
        mib(rss_objects.saturating_sub(rss_start))
    );
    println!(
        "{:<52} {:>11.1} MiB",
        "RSS: index on top of objects",
        mib(rss_index.saturating_sub(rss_objects))
    );
    println!(
        "{:<52} {:>10} B",
        "RSS per endpoint: index + objects",
        rss_index.saturating_sub(rss_start) / total_endpoints as u64
    );
    println!(
        "{:<52} {:>10} B",
        "RSS per endpoint: index alone",
        rss_index.saturating_sub(rss_objects) / total_endpoints as u64
    );
    Ok(())
}
