//! Snapshot builders and running proxies.

use super::*;

/// A listener address for a proxy under test. Ports come from a counter below Linux's
/// ephemeral range (32768-60999), each given out once: a port released by `bind(":0")` could be
/// taken meanwhile by a backend another test binds with `:0`, and the proxy's listener would
/// then not start (a test once talked TLS to an echo server that way).
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(12_000);
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(port < 16_000, "out of test ports");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// An endpoint of a locality: address, weight, healthy.
pub fn ep(address: SocketAddr, weight: u32, healthy: bool) -> EndpointConfig {
    EndpointConfig {
        address,
        weight,
        healthy,
        cluster: None,
        sni: None,
        pod: None,
        workload: None,
        active_health_check: false,
        through_gateway: false,
    }
}

/// A static cluster with endpoints by priority.
pub fn cluster_by_priority(
    name: &str,
    priorities: Vec<(u32, Vec<EndpointConfig>)>,
) -> ClusterConfig {
    ClusterConfig {
        name: name.into(),
        upstream_tls: None,
        endpoints: EndpointSource::Static(LoadAssignmentConfig {
            cluster_name: name.into(),
            localities: priorities
                .into_iter()
                .map(|(priority, endpoints)| LocalityEndpoints {
                    region: String::new(),
                    zone: String::new(),
                    sub_zone: String::new(),
                    priority,
                    weight: None,
                    endpoints,
                })
                .collect(),
        }),
        connect_timeout: Duration::from_secs(1),
        lb_policy: LbPolicy::RoundRobin,
        outlier_detection: None,
        health_check: None,
        max_retries: causeway_xds::dataplane::DEFAULT_MAX_RETRIES,
        healthy_panic_threshold_percent: 0.0,
        service: None,
    }
}

/// A static cluster of healthy endpoints of weight 1, priority 0.
pub fn cluster(name: &str, endpoints: &[SocketAddr]) -> ClusterConfig {
    cluster_by_priority(
        name,
        vec![(0, endpoints.iter().map(|a| ep(*a, 1, true)).collect())],
    )
}

pub fn route(matches: PathMatch, cluster: &str) -> RouteConfig {
    RouteConfig {
        name: format!("{matches:?}"),
        matches,
        action: RouteAction {
            clusters: causeway_xds::dataplane::ClusterSplit::One(cluster.into()),
            timeout: None,
            retry: None,
        },
    }
}

pub fn prefix(p: &str) -> PathMatch {
    PathMatch::Prefix(p.into())
}

pub fn exact(p: &str) -> PathMatch {
    PathMatch::Exact(p.into())
}

pub fn vhost(domains: &[&str], routes: Vec<RouteConfig>) -> VirtualHostConfig {
    VirtualHostConfig {
        name: domains.first().copied().unwrap_or("none").into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
    }
}

/// A retry policy on `on`, `n` retries, a short back-off.
pub fn retry(on: &[RetryOn], n: u32) -> RetryConfig {
    RetryConfig {
        retry_on: on.to_vec(),
        num_retries: n,
        retry_other_hosts: false,
        host_selection_retry_max_attempts: 0,
        per_try_timeout: None,
        retriable_status_codes: Vec::new(),
        backoff: RetryBackoff {
            base_interval: Duration::from_millis(5),
            max_interval: Duration::from_millis(20),
        },
    }
}

pub fn manager(vhosts: Vec<VirtualHostConfig>) -> HttpManagerConfig {
    HttpManagerConfig {
        stat_prefix: "test".into(),
        codec: Codec::Auto,
        routes: RouteTable {
            name: "routes".into(),
            virtual_hosts: vhosts,
        },
        stream_idle_timeout: None,
        request_headers_timeout: None,
        forward_client_cert: None,
        rbac: Vec::new(),
    }
}

fn listener(name: &str, address: SocketAddr, chain: FilterChainConfig) -> ListenerConfig {
    ListenerConfig {
        name: name.into(),
        address,
        bind: true,
        use_original_dst: false,
        inspect_tls: false,
        inspect_timeout: Duration::from_secs(1),
        filter_chains: vec![chain],
        default_chain: None,
    }
}

/// A listener whose one chain serves HTTP with `m`, behind `tls` when given (inbound).
pub fn http_listener(
    name: &str,
    address: SocketAddr,
    m: HttpManagerConfig,
    tls: Option<DownstreamTlsConfig>,
) -> ListenerConfig {
    listener(
        name,
        address,
        FilterChainConfig {
            name: format!("{name}-http"),
            matches: ChainMatch::default(),
            tls,
            handshake_timeout: Some(Duration::from_secs(5)),
            action: ChainAction::Http(Box::new(m)),
        },
    )
}

pub fn tcp_proxy(cluster: &str, idle_timeout: Option<Duration>) -> TcpProxyConfig {
    TcpProxyConfig {
        stat_prefix: cluster.into(),
        clusters: causeway_xds::dataplane::ClusterSplit::One(cluster.into()),
        idle_timeout,
        connect_after_tls_handshake: false,
        rbac: Vec::new(),
    }
}

/// A listener whose one chain is a TCP proxy, behind `tls` when given (inbound).
pub fn tcp_listener(
    name: &str,
    address: SocketAddr,
    proxy: TcpProxyConfig,
    tls: Option<DownstreamTlsConfig>,
) -> ListenerConfig {
    listener(
        name,
        address,
        FilterChainConfig {
            name: format!("{name}-tcp"),
            matches: ChainMatch::default(),
            tls,
            handshake_timeout: Some(Duration::from_secs(5)),
            action: ChainAction::TcpProxy(proxy),
        },
    )
}

pub fn snapshot(
    generation: u64,
    listeners: Vec<ListenerConfig>,
    clusters: Vec<ClusterConfig>,
) -> SharedSnapshot {
    Arc::new(Snapshot {
        generation,
        listeners: listeners.into_iter().map(|l| (l.name.clone(), l)).collect(),
        clusters: clusters.into_iter().map(|c| (c.name.clone(), c)).collect(),
        assignments: BTreeMap::new(),
    })
}

/// A running Causeway sidecar (`listener::handler`, certificates from files).
pub struct Proxy {
    pub tx: watch::Sender<SharedSnapshot>,
    pub metrics: Arc<Metrics>,
    workers: Option<Workers>,
}

impl Proxy {
    /// Starts one worker (deterministic balancing and outlier state) on `snapshot` and waits
    /// until every listener accepts.
    pub async fn start(snapshot: SharedSnapshot) -> Proxy {
        let addresses: Vec<SocketAddr> = snapshot.listeners.values().map(|l| l.address).collect();
        let (tx, rx) = watch::channel(snapshot);
        let metrics = Arc::new(Metrics::default());
        let workers = Workers::start(
            1,
            WorkerLimits::default(),
            MeshCredentials::files_only(),
            rx,
            causeway_proxy::listener::handler(Arc::clone(&metrics)),
        )
        .expect("workers");
        for a in addresses {
            drop(connect_when_listening(a).await.expect("listening"));
        }
        Proxy {
            tx,
            metrics,
            workers: Some(workers),
        }
    }

    /// The value of the metric `name` (a counter's `_total`) whose labels include `labels`;
    /// 0 when no such series exists yet.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics.encode();
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(w) = self.workers.take() {
            w.stop();
        }
    }
}
