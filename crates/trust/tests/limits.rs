//! The CA port's limits: connections that never finish (or never start) a TLS handshake, or
//! send garbage, are closed on their own and never delay an agent's request.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_trust::ca::RootCa;
use causeway_trust::credential::CredentialStore;
use causeway_trust::service::{CaService, CaServiceConfig};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CA for alpha with a token for alpha/client, its settings changed by `tune`.
fn ca_with(root: &RootCa, tune: impl FnOnce(&mut CaServiceConfig)) -> Arc<CaService> {
    let mut store = CredentialStore::new();
    store
        .insert("tok-alpha-client", grant("alpha", "client"))
        .expect("token");
    let mut config = CaServiceConfig::new(TD);
    tune(&mut config);
    Arc::new(CaService::with_config(
        config,
        vec![cluster_ca(root, "alpha")],
        Arc::new(store),
    ))
}

/// Opens `n` connections that send `prefix` and then nothing more.
async fn stalled(addr: SocketAddr, n: usize, prefix: &[u8]) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        if !prefix.is_empty() {
            s.write_all(prefix).await.expect("write");
        }
        out.push(s);
    }
    out
}

/// Whether the server closes `s` (EOF or reset) within `limit`, reading and dropping whatever
/// it sends first (a TLS alert).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 512];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Waits (at most 10 s) until `ca` has counted `at_least` handshake failures for `reason`.
async fn failures_reach(ca: &CaService, reason: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = ca.handshake_failure_count(reason);
        if n >= at_least || Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first bytes of a TLS record header: a slowloris that starts a ClientHello and stops.
const PARTIAL_HELLO: &[u8] = &[0x16, 0x03, 0x01];

#[tokio::test]
async fn slowloris_connections_do_not_delay_an_agent() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    // Few handshake slots and a long handshake timeout: if a silent or half-started connection
    // held a slot, the agent would wait 30 s for one.
    let ca = ca_with(&root, |c| {
        c.max_concurrent_handshakes = 4;
        c.handshake_timeout = Duration::from_secs(30);
    });
    let (addr, _stop, _task) = start_ca(Arc::clone(&ca)).await;
    let _silent = stalled(addr, 40, b"").await;
    let _half = stalled(addr, 20, PARTIAL_HELLO).await;

    let agent = agent(addr, &root, "tok-alpha-client", "client");
    let started = Instant::now();
    let cert = tokio::time::timeout(Duration::from_secs(8), agent.renew())
        .await
        .expect("the agent's request finished within its own timeouts")
        .expect("certificate issued despite 60 stalled connections");
    // `renew` checked the chain, the identity and the key.
    assert!(cert.not_after > cert.not_before);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(ca.handshake_failure_count("overloaded"), 0);
}

#[tokio::test]
async fn garbage_and_silence_are_closed_and_others_served() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let ca = ca_with(&root, |c| c.handshake_timeout = Duration::from_millis(500));
    let (addr, _stop, _task) = start_ca(Arc::clone(&ca)).await;

    // Plain HTTP, a plaintext HTTP/2 (gRPC without TLS) preface, and random bytes.
    let garbage: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: ca\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        &[
            0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5, 0xff, 0x00, 0x42,
        ],
    ];
    let mut bad = Vec::new();
    for bytes in garbage {
        bad.extend(stalled(addr, 1, bytes).await);
    }
    let mut silent = stalled(addr, 3, b"").await;

    let agent = agent(addr, &root, "tok-alpha-client", "client");
    agent
        .renew()
        .await
        .expect("served while garbage and silent connections are open");

    for (i, s) in bad.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "garbage connection {i} was not closed"
        );
    }
    assert!(failures_reach(&ca, "tls", 3).await >= 3, "garbage counted");
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "silent connection {i} was not closed after the handshake timeout"
        );
    }
    assert!(
        failures_reach(&ca, "timeout", 3).await >= 3,
        "timeouts counted"
    );

    agent
        .renew()
        .await
        .expect("still served after closing the bad connections");
}

#[tokio::test]
async fn connections_beyond_the_pending_bound_are_closed_at_once() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let ca = ca_with(&root, |c| {
        c.max_pending_handshakes = 4;
        c.handshake_timeout = Duration::from_secs(30);
    });
    let (addr, _stop, _task) = start_ca(Arc::clone(&ca)).await;
    let held = stalled(addr, 4, b"").await;
    // Connections are accepted in order: the fifth finds every slot taken.
    let mut fifth = stalled(addr, 1, b"").await;
    assert!(
        closed_within(&mut fifth[0], Duration::from_secs(5)).await,
        "the connection beyond the bound was not closed at once"
    );
    assert_eq!(failures_reach(&ca, "overloaded", 1).await, 1);

    // The held connections go away: their slots free up (counted as failed handshakes) and
    // the CA serves again, without waiting for the 30 s handshake timeout.
    drop(held);
    assert!(failures_reach(&ca, "tls", 4).await >= 4);
    let agent = agent(addr, &root, "tok-alpha-client", "client");
    agent
        .renew()
        .await
        .expect("served once the pending connections left");
}
