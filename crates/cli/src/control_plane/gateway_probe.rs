//! The control plane's probes of every declared east-west gateway (issue 12: "where the
//! control plane can see them"), a second signal beside the data planes' own health checks.
//!
//! Each gateway is probed every interval (`--gateway-probe-interval-ms`, 1 s by default;
//! Linkerd's probes run every 3 s): a TCP connect, then a TLS ClientHello for
//! [`GATEWAY_PROBE_SNI`], a name no service can have. A live gateway reacts at once (it closes
//! the connection: no route for that name); a frozen one accepts in the kernel and then says
//! nothing; a partitioned one never connects. Down after [`DOWN_AFTER`] failures in a row, up
//! after one pass. Only gateways seen up once are ever marked down (a gateway declared but not
//! running yet causes no churn), and when every gateway fails none is (the control plane is the
//! one cut off). The gateways found dead reach the mesh index, which marks what is behind them
//! unhealthy in every view (`causeway_discovery::MeshIndex::set_gateways_down`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_model::{ClusterId, Gateway, GATEWAY_PROBE_SNI};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::metrics::Metrics;
use super::state::StateHandle;

/// How long a probe waits to connect, and then for the gateway's reaction.
const TIMEOUT: Duration = Duration::from_millis(800);
/// Failures in a row before a gateway is marked down.
const DOWN_AFTER: u32 = 2;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no TCP connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("connection refused or failed: {0}")]
    Connect(std::io::Error),
    #[error("the gateway accepted the connection but did not react to a ClientHello within {0:?} (hung?)")]
    NoReaction(Duration),
    #[error("could not build the probe's ClientHello: {0}")]
    Tls(String),
}

/// One probe of `gateway`, within [`TIMEOUT`] in all.
async fn probe(gateway: SocketAddr, hello: &[u8]) -> Result<(), ProbeError> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut conn = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(gateway))
        .await
        .map_err(|_| ProbeError::ConnectTimeout(TIMEOUT))?
        .map_err(ProbeError::Connect)?;
    let react = async {
        // A write error already is a reaction (a reset): the gateway process is alive.
        if conn.write_all(hello).await.is_err() {
            return;
        }
        let mut buf = [0u8; 256];
        let _ = conn.read(&mut buf).await;
    };
    tokio::time::timeout_at(deadline, react)
        .await
        .map_err(|_| ProbeError::NoReaction(TIMEOUT))
}

/// The probe's ClientHello, made by rustls (no trust anchors: the handshake never gets that far).
fn client_hello() -> Result<Vec<u8>, ProbeError> {
    let tls = |e: &dyn std::fmt::Display| ProbeError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(GATEWAY_PROBE_SNI).map_err(|e| tls(&e))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| tls(&e))?;
    let mut out = Vec::new();
    conn.write_tls(&mut out).map_err(|e| tls(&e))?;
    Ok(out)
}

/// What the prober knows of one gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct GatewayState {
    /// Passed at least once since the control plane started.
    seen_up: bool,
    /// Failures in a row.
    failures: u32,
    /// The reason it is marked down, if it is (set once, so a changing error pushes nothing).
    down: Option<String>,
}

/// Folds one round of results into `states`; returns the gateways marked down afterwards, with
/// the reason. Pure, so the thresholds and the guards are unit-tested.
fn fold(
    states: &mut BTreeMap<Gateway, GatewayState>,
    results: &BTreeMap<Gateway, Result<(), String>>,
) -> BTreeMap<Gateway, String> {
    states.retain(|g, _| results.contains_key(g));
    for (gateway, result) in results {
        let s = states.entry(*gateway).or_default();
        match result {
            Ok(()) => {
                *s = GatewayState {
                    seen_up: true,
                    failures: 0,
                    down: None,
                }
            }
            Err(e) => {
                s.failures = s.failures.saturating_add(1);
                if s.seen_up && s.failures >= DOWN_AFTER && s.down.is_none() {
                    s.down = Some(format!(
                        "the control plane's probe of gateway {gateway} failed {DOWN_AFTER} times in a row: {e}"
                    ));
                }
            }
        }
    }
    // Every gateway ever seen up failing at once: the control plane is the one cut off.
    let mut known = states.values().filter(|s| s.seen_up).peekable();
    let cut_off = known.peek().is_some() && known.all(|s| s.failures > 0);
    if cut_off {
        return BTreeMap::new();
    }
    states
        .iter()
        .filter_map(|(g, s)| Some((*g, s.down.clone()?)))
        .collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatewayLabels {
    cluster: String,
    gateway: String,
}

/// The prober's metrics.
#[derive(Default)]
struct ProbeMetrics {
    up: Family<GatewayLabels, Gauge>,
    failures: Family<GatewayLabels, Counter>,
}

impl ProbeMetrics {
    fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register(|r| {
            r.register(
                "gateway_probe_up",
                "1 when the control plane's last probe of an east-west gateway passed",
                m.up.clone(),
            );
            r.register(
                "gateway_probe_failures",
                "Failed probes of an east-west gateway by the control plane",
                m.failures.clone(),
            );
        });
        m
    }
}

/// Every declared gateway with the cluster declaring it, from the latest snapshot.
fn declared(state: &StateHandle) -> BTreeMap<Gateway, ClusterId> {
    let snapshot = state.borrow().clone();
    let Some(index) = snapshot.index.as_ref() else {
        return BTreeMap::new();
    };
    index
        .mesh()
        .clusters
        .iter()
        .flat_map(|c| c.gateways.iter().map(|g| (*g, c.id.clone())))
        .collect()
}

/// Probes every declared gateway every `interval` and sends the set found dead to the state
/// loop whenever it changes. Runs until the state loop goes.
pub async fn run(
    state: StateHandle,
    down_tx: mpsc::Sender<BTreeMap<Gateway, String>>,
    metrics: &Metrics,
    interval: Duration,
) -> Result<(), ProbeError> {
    let hello: Arc<[u8]> = Arc::from(client_hello()?);
    let probe_metrics = ProbeMetrics::register(metrics);
    let mut states = BTreeMap::new();
    let mut sent = BTreeMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let gateways = declared(&state);
        let mut round = tokio::task::JoinSet::new();
        for gateway in gateways.keys().copied() {
            let hello = Arc::clone(&hello);
            round.spawn(async move {
                let result = probe(gateway.socket_addr(), &hello).await;
                (gateway, result.map_err(|e| e.to_string()))
            });
        }
        let mut results = BTreeMap::new();
        while let Some(joined) = round.join_next().await {
            if let Ok((gateway, result)) = joined {
                results.insert(gateway, result);
            }
        }
        for (gateway, result) in &results {
            let labels = GatewayLabels {
                cluster: gateways
                    .get(gateway)
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                gateway: gateway.to_string(),
            };
            probe_metrics
                .up
                .get_or_create(&labels)
                .set(i64::from(result.is_ok()));
            if let Err(e) = result {
                probe_metrics.failures.get_or_create(&labels).inc();
                tracing::debug!(cluster = %labels.cluster, gateway = %gateway, error = %e, "gateway probe failed");
            }
        }
        let down = fold(&mut states, &results);
        if down == sent {
            continue;
        }
        for (gateway, why) in &down {
            if !sent.contains_key(gateway) {
                tracing::warn!(cluster = %gateways.get(gateway).map(ToString::to_string).unwrap_or_default(), gateway = %gateway, reason = %why, "east-west gateway marked down: proxies skip it");
            }
        }
        for gateway in sent.keys().filter(|g| !down.contains_key(*g)) {
            tracing::info!(cluster = %gateways.get(gateway).map(ToString::to_string).unwrap_or_default(), gateway = %gateway, "east-west gateway back up (or its probes stand down)");
        }
        if down_tx.send(down.clone()).await.is_err() {
            return Ok(());
        }
        sent = down;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(last: u8) -> Gateway {
        Gateway {
            address: std::net::IpAddr::from([127, 0, 9, last]),
            port: 15443,
        }
    }

    fn round(
        states: &mut BTreeMap<Gateway, GatewayState>,
        outcomes: &[(u8, bool)],
    ) -> Vec<Gateway> {
        let results = outcomes
            .iter()
            .map(|(g, ok)| {
                (
                    gw(*g),
                    if *ok {
                        Ok(())
                    } else {
                        Err("refused".to_owned())
                    },
                )
            })
            .collect();
        fold(states, &results).into_keys().collect()
    }

    #[test]
    fn down_after_two_failures_in_a_row_and_up_after_one_pass() {
        let mut s = BTreeMap::new();
        assert!(round(&mut s, &[(1, true), (2, true)]).is_empty());
        assert!(
            round(&mut s, &[(1, false), (2, true)]).is_empty(),
            "one failure"
        );
        assert_eq!(round(&mut s, &[(1, false), (2, true)]), [gw(1)]);
        assert_eq!(
            round(&mut s, &[(1, false), (2, true)]),
            [gw(1)],
            "stays down"
        );
        assert!(
            round(&mut s, &[(1, true), (2, true)]).is_empty(),
            "one pass"
        );
    }

    #[test]
    fn a_gateway_never_seen_up_is_never_marked_down() {
        let mut s = BTreeMap::new();
        for _ in 0..5 {
            assert!(round(&mut s, &[(1, false), (2, true)]).is_empty());
        }
    }

    #[test]
    fn nothing_is_marked_when_every_known_gateway_fails() {
        let mut s = BTreeMap::new();
        round(&mut s, &[(1, true), (2, true), (3, false)]);
        for _ in 0..3 {
            assert!(round(&mut s, &[(1, false), (2, false), (3, false)]).is_empty());
        }
        // One comes back: the other is marked at once (it has failed long enough).
        assert_eq!(round(&mut s, &[(1, true), (2, false), (3, false)]), [gw(2)]);
    }

    #[test]
    fn a_gateway_no_longer_declared_is_forgotten() {
        let mut s = BTreeMap::new();
        round(&mut s, &[(1, true), (2, true)]);
        round(&mut s, &[(1, false), (2, true)]);
        assert_eq!(round(&mut s, &[(1, false), (2, true)]), [gw(1)]);
        assert!(round(&mut s, &[(2, true)]).is_empty());
    }

    #[tokio::test]
    async fn a_live_gateway_passes_and_a_silent_or_closed_one_fails() {
        let hello = client_hello().expect("hello");
        // Live: reads the hello and closes, as a gateway without a route for the name does.
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let live_addr = live.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut conn, _)) = live.accept().await {
                let mut buf = [0u8; 512];
                let _ = conn.read(&mut buf).await;
            }
        });
        probe(live_addr, &hello)
            .await
            .expect("a live gateway passes");
        // Frozen: the kernel accepts (backlog), nothing ever reads.
        let frozen = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let err = probe(frozen.local_addr().expect("addr"), &hello)
            .await
            .expect_err("a frozen gateway fails");
        assert!(matches!(err, ProbeError::NoReaction(_)), "{err}");
        // Gone: nothing listens.
        let gone = frozen.local_addr().expect("addr");
        drop(frozen);
        let err = probe(gone, &hello).await.expect_err("no gateway");
        assert!(matches!(err, ProbeError::Connect(_)), "{err}");
    }
}
