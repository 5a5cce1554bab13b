//! The control plane's probes of every declared east-west gateway (issue 12: "where the
//! control plane can see them"), a second signal beside the data planes' own health checks.
//!
//! Each gateway is probed every interval (`--gateway-probe-interval-ms`, 1 s by default;
//! Linkerd's probes run every 3 s): a TCP connect, then a TLS ClientHello for
//! `gateway-probe.causeway.invalid`, a name no service can have. A live gateway reacts at once (it closes
//! the connection: no route for that name); a frozen one accepts in the kernel and then says
//! nothing; a partitioned one never connects. Down after [`DOWN_AFTER`] failures in a row, up
//! after one pass. Only gateways seen up once are ever marked down (a gateway declared but not
//! running yet causes no churn), and when every gateway fails none is (the control plane is the
//! one cut off). The gateways found dead reach the mesh index, which marks what is behind them
//! unhealthy in every view (`causeway_discovery::MeshIndex::set_gateways_down`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use causeway_model::{ClusterId, Gateway};
use causeway_proxy::gateway::probe::{client_hello, probe, ProbeError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use super::metrics::Metrics;
use super::state::StateHandle;

/// How long a probe may take in all (connect, then the gateway's reaction).
const TIMEOUT: Duration = Duration::from_millis(800);
/// Failures in a row before a gateway is marked down.
const DOWN_AFTER: u32 = 2;

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

/// One probe of every gateway in `gateways`, all at once.
async fn probe_round(
    gateways: &BTreeMap<Gateway, ClusterId>,
    hello: &Arc<[u8]>,
) -> BTreeMap<Gateway, Result<(), String>> {
    let mut round = tokio::task::JoinSet::new();
    for gateway in gateways.keys().copied() {
        let hello = Arc::clone(hello);
        round.spawn(async move {
            let result = probe(gateway.socket_addr(), &hello, TIMEOUT).await;
            (gateway, result.map_err(|e| e.to_string()))
        });
    }
    let mut results = BTreeMap::new();
    while let Some(joined) = round.join_next().await {
        if let Ok((gateway, result)) = joined {
            results.insert(gateway, result);
        }
    }
    results
}

fn labels(gateways: &BTreeMap<Gateway, ClusterId>, gateway: &Gateway) -> GatewayLabels {
    GatewayLabels {
        cluster: gateways
            .get(gateway)
            .map(ToString::to_string)
            .unwrap_or_default(),
        gateway: gateway.to_string(),
    }
}

impl ProbeMetrics {
    /// Records one round; the series of gateways no longer declared go.
    fn record(
        &self,
        gateways: &BTreeMap<Gateway, ClusterId>,
        results: &BTreeMap<Gateway, Result<(), String>>,
        previous: &mut Vec<GatewayLabels>,
    ) {
        let now: Vec<GatewayLabels> = results.keys().map(|g| labels(gateways, g)).collect();
        for gone in previous.iter().filter(|l| !now.contains(l)) {
            self.up.remove(gone);
            self.failures.remove(gone);
        }
        for ((gateway, result), labels) in results.iter().zip(&now) {
            self.up.get_or_create(labels).set(i64::from(result.is_ok()));
            if let Err(e) = result {
                self.failures.get_or_create(labels).inc();
                tracing::debug!(cluster = %labels.cluster, %gateway, error = %e, "gateway probe failed");
            }
        }
        *previous = now;
    }
}

/// Logs what changed between the set last sent and `down`.
fn log_changes(
    gateways: &BTreeMap<Gateway, ClusterId>,
    sent: &BTreeMap<Gateway, String>,
    down: &BTreeMap<Gateway, String>,
) {
    for (gateway, why) in down.iter().filter(|(g, _)| !sent.contains_key(*g)) {
        let cluster = labels(gateways, gateway).cluster;
        tracing::warn!(%cluster, %gateway, reason = %why, "east-west gateway marked down: proxies skip it");
    }
    for gateway in sent.keys().filter(|g| !down.contains_key(*g)) {
        let cluster = labels(gateways, gateway).cluster;
        tracing::info!(%cluster, %gateway, "east-west gateway back up (or its probes stand down)");
    }
}

/// Probes every declared gateway every `interval` and sends the set found dead to the state
/// loop whenever it changes. Runs until the state loop goes.
pub async fn run(
    state: StateHandle,
    down_tx: mpsc::Sender<BTreeMap<Gateway, String>>,
    metrics: &Metrics,
    interval: Duration,
) -> Result<(), ProbeError> {
    let hello = client_hello()?;
    let probe_metrics = ProbeMetrics::register(metrics);
    let (mut states, mut sent, mut series) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let gateways = declared(&state);
        let results = probe_round(&gateways, &hello).await;
        probe_metrics.record(&gateways, &results, &mut series);
        let down = fold(&mut states, &results);
        if down == sent {
            continue;
        }
        log_changes(&gateways, &sent, &down);
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
}
