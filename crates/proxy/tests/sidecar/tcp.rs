//! The app's TCP through an outbound `tcp_proxy` listener to a plaintext echo server.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_go_both_ways_and_a_half_close_is_passed_on() {
    let echo = Echo::start().await;
    let addr = free_addr();
    let _proxy = Proxy::start(snapshot(
        1,
        vec![tcp_listener(
            "outbound-tcp",
            addr,
            tcp_proxy("echo", None),
            None,
        )],
        vec![cluster("echo", &[echo.addr])],
    ))
    .await;
    let mut conn = connect_when_listening(addr).await.expect("connect");
    conn.write_all(b"hello").await.expect("write");
    let mut small = [0u8; 5];
    bounded(conn.read_exact(&mut small))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&small, b"hello");

    // 512 KiB: more than any buffer, in both directions at once.
    let payload: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 253) as u8).collect();
    let (mut rd, mut wr) = conn.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.expect("write");
        // Half-close: Envoy's TCP proxy passes the end of stream on; the echo server then
        // closes its side, which comes back as our end of stream.
        wr.shutdown().await.expect("shutdown");
        wr
    });
    let mut back = Vec::new();
    bounded(rd.read_to_end(&mut back))
        .await
        .expect("in time")
        .expect("read");
    let _wr = writer.await.expect("writer");
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "the bytes came back changed");
    assert_eq!(echo.received().len(), 5 + payload.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_closes_an_idle_connection_and_only_an_idle_one() {
    let echo = Echo::start().await;
    let addr = free_addr();
    // Long enough that a loaded machine (2 cores running the suite) still echoes a byte well
    // within it.
    let idle = Duration::from_millis(1500);
    let _proxy = Proxy::start(snapshot(
        1,
        vec![tcp_listener(
            "outbound-tcp",
            addr,
            tcp_proxy("echo", Some(idle)),
            None,
        )],
        vec![cluster("echo", &[echo.addr])],
    ))
    .await;
    let mut conn = connect_when_listening(addr).await.expect("connect");
    // Envoy: the idle timeout is a period without bytes in either direction. A byte every
    // 150 ms for well over the timeout keeps the connection open.
    let started = Instant::now();
    let mut rounds = 0;
    let mut last = Instant::now();
    while started.elapsed() < idle * 2 {
        conn.write_all(b"x").await.expect("still open");
        let mut b = [0u8; 1];
        bounded(conn.read_exact(&mut b))
            .await
            .expect("in time")
            .expect("echoed");
        last = Instant::now();
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(rounds >= 4, "{rounds}");
    // Then silence: closed once the timeout has passed, not before.
    let mut rest = Vec::new();
    let read = bounded(conn.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    let after = last.elapsed();
    assert!(read.is_err() || rest.is_empty(), "{rest:?}");
    assert!(
        after >= idle - Duration::from_millis(50),
        "closed after {after:?}"
    );
    assert!(
        after < idle + Duration::from_secs(2),
        "closed after {after:?}"
    );
}
