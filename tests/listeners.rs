//! Limits on the control plane's CA and debug ports, against the real binary: slowloris and
//! garbage on a port are closed on their own and the port keeps serving others; the debug API
//! listens on loopback only unless told otherwise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use causeway_e2e::{causeway_bin, get_json, http_get, wait_for, ControlPlane};
use causeway_model::{ClusterId, SpiffeId};
use causeway_trust::agent::{Agent, AgentConfig, TokenSource};

/// Opens `n` connections to `addr` that send `prefix` and then nothing.
fn stalled(addr: SocketAddr, n: usize, prefix: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connection {i} to {addr}: {e}"));
            if !prefix.is_empty() {
                s.write_all(prefix).expect("write");
            }
            s
        })
        .collect()
}

/// How long until the server closes `s` (EOF or reset), reading and dropping what it sends
/// (an alert, a 400); `None` if still open after `limit`.
fn time_to_close(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    while started.elapsed() < limit {
        let left = limit
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// The value of the sample `name{labels}` in the control plane's `/metrics`.
fn metric(cp: &ControlPlane, sample: &str) -> Option<f64> {
    let (_, text) = http_get(cp.debug, "/metrics").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
}

/// An agent of the example's alpha/client workload, with the default timeouts of
/// `causeway agent` (5 s to connect and shake hands, 10 s per call).
fn client_agent(cp: &ControlPlane) -> std::sync::Arc<Agent> {
    let bundle = std::fs::read_to_string(cp.dir.path().join("ca/root/root-cert.pem"))
        .expect("the control plane wrote the mesh root");
    Agent::new(AgentConfig {
        ca_addr: cp.ca,
        ca_bundle_pem: bundle,
        trust_domain: "causeway.local".into(),
        token: TokenSource::File(cp.mesh_dir.join("tokens/alpha/client.token")),
        cluster: Some(ClusterId::new("alpha").expect("cluster id")),
        identity: SpiffeId::new("causeway.local", "demo", "client"),
        ttl: Duration::from_secs(3600),
    })
}

const GARBAGE: [&[u8]; 3] = [
    b"GET / HTTP/1.1\r\nHost: ca\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    &[
        0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5, 0xff, 0x00, 0x42,
    ],
];

#[test]
fn the_ca_port_serves_agents_through_slowloris_and_garbage() {
    causeway_trust::install_crypto_provider();
    let cp = ControlPlane::start("three-clusters", &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // More silent and half-started handshakes than the CA's 64 handshake slots.
    let _silent = stalled(cp.ca, 100, b"");
    let _half = stalled(cp.ca, 40, &[0x16, 0x03, 0x01]);
    let mut garbage: Vec<TcpStream> = GARBAGE.iter().flat_map(|g| stalled(cp.ca, 1, g)).collect();

    let agent = client_agent(&cp);
    let started = Instant::now();
    let issued = rt.block_on(agent.renew());
    assert!(
        issued.is_ok(),
        "the agent got no certificate with 140 stalled connections open: {issued:?}\n{}",
        cp.process.log_text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the request took {:?}",
        started.elapsed()
    );

    for (i, s) in garbage.iter_mut().enumerate() {
        assert!(
            time_to_close(s, Duration::from_secs(5)).is_some(),
            "garbage connection {i} to the CA stayed open"
        );
    }
    let counted = wait_for(Duration::from_secs(10), || {
        metric(&cp, "causeway_ca_handshake_failures_total{reason=\"tls\"}")
            .filter(|n| *n >= GARBAGE.len() as f64)
    });
    assert!(counted.is_some(), "garbage not counted in /metrics");
    assert!(
        rt.block_on(agent.renew()).is_ok(),
        "still served after the garbage"
    );
}

#[test]
fn the_debug_port_cuts_slow_headers_and_refuses_garbage() {
    let cp = ControlPlane::start("three-clusters", &[]);
    // A request whose headers never end, and one whose headers trickle in a byte every 200 ms
    // (each read is quick; only a limit on the whole head stops it).
    let mut stuck = stalled(cp.debug, 1, b"GET /debug/mesh HTTP/1.1\r\nHost: x\r\n").remove(0);
    let mut trickle = stalled(cp.debug, 1, b"GET /debug/mesh HTTP/1.1\r\n").remove(0);
    let mut writer = trickle.try_clone().expect("clone");
    let trickling = std::thread::spawn(move || {
        for _ in 0..100 {
            if writer.write_all(b"X").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut garbage: Vec<TcpStream> = GARBAGE[1..]
        .iter()
        .chain([&b"\x16\x03\x01\x00\x05hello\r\n\r\n"[..]].iter())
        .flat_map(|g| stalled(cp.debug, 1, g))
        .collect();

    // Others are served meanwhile.
    let mesh = get_json(cp.debug, "/debug/mesh");
    assert_eq!(mesh["trustDomain"], "causeway.local");
    for (i, s) in garbage.iter_mut().enumerate() {
        assert!(
            time_to_close(s, Duration::from_secs(5)).is_some(),
            "garbage connection {i} to the debug API stayed open"
        );
    }
    // The header-read timeout is 5 s, counted from the connection's first wait for a head.
    let stuck_closed = time_to_close(&mut stuck, Duration::from_secs(15));
    let trickle_closed = time_to_close(&mut trickle, Duration::from_secs(15));
    let _ = trickling.join();
    for (what, closed) in [("unfinished", stuck_closed), ("trickling", trickle_closed)] {
        let closed = closed.unwrap_or_else(|| panic!("the {what} request kept its connection"));
        assert!(
            closed < Duration::from_secs(10),
            "{what}: closed after {closed:?}"
        );
    }
    let (status, _) = http_get(cp.debug, "/healthz").expect("healthz");
    assert_eq!(status, 200, "still served after the slow clients");
}

#[test]
fn a_debug_addr_beyond_loopback_is_refused_unless_public() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = causeway_e2e::workspace().join("examples/three-clusters");
    let ca_dir = dir.path().join("ca");
    let log = dir.path().join("control-plane.log");
    let file = std::fs::File::create(&log).expect("log");
    // Bounded: a control plane that does start is killed after 10 s.
    let mut child = std::process::Command::new(causeway_bin())
        .args([
            "control-plane",
            "--mesh-dir",
            mesh.to_str().expect("utf-8"),
            "--ca-dir",
            ca_dir.to_str().expect("utf-8"),
            "--debug-addr",
            "0.0.0.0:0",
            "--xds-addr",
            "127.0.0.1:0",
            "--ca-addr",
            "127.0.0.1:0",
        ])
        .stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .spawn()
        .expect("spawn");
    let status = wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("started on 0.0.0.0:\n{output}"));
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("not a loopback address") && output.contains("--debug-addr-public"),
        "{output}"
    );
    assert!(!ca_dir.exists(), "refused before touching anything");
}
