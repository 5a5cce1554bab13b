//! A liveness probe of an east-west gateway, without a service behind it: a TCP connect, then
//! a TLS ClientHello for [`GATEWAY_PROBE_SNI`], a name no service has. A live gateway (Envoy
//! or Causeway's) reacts at once: it has no route for that name and closes the connection. A
//! frozen one accepts in the kernel and then says nothing; a partitioned one never connects.
//! Used by the proxy's active health checks of gateway paths and by the control plane's
//! gateway probes. It checks the gateway and the network to it, not the pods behind it (a dead
//! pod is outlier detection's), so one service's dead pods never mark a gateway down for all.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use causeway_model::GATEWAY_PROBE_SNI;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a probe failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    #[error("no TCP connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("connection refused or failed: {0}")]
    Connect(String),
    #[error("the gateway accepted the connection but did not react to a ClientHello within {0:?} (hung?)")]
    NoReaction(Duration),
    #[error("could not build the probe's ClientHello: {0}")]
    Tls(String),
}

/// One probe of the gateway at `gateway`, within `timeout` in all.
pub async fn probe(gateway: SocketAddr, hello: &[u8], timeout: Duration) -> Result<(), ProbeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut conn = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(gateway))
        .await
        .map_err(|_| ProbeError::ConnectTimeout(timeout))?
        .map_err(|e| ProbeError::Connect(e.to_string()))?;
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
        .map_err(|_| ProbeError::NoReaction(timeout))
}

/// The probe's ClientHello, made by rustls once per process (no trust anchors: the handshake
/// never gets that far, so the same bytes serve every probe).
pub fn client_hello() -> Result<Arc<[u8]>, ProbeError> {
    static HELLO: OnceLock<Result<Arc<[u8]>, ProbeError>> = OnceLock::new();
    HELLO.get_or_init(make_client_hello).clone()
}

fn make_client_hello() -> Result<Arc<[u8]>, ProbeError> {
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
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(300);

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
        probe(live_addr, &hello, TIMEOUT)
            .await
            .expect("a live gateway passes");
        // Frozen: the kernel accepts (backlog), nothing ever reads.
        let frozen = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let err = probe(frozen.local_addr().expect("addr"), &hello, TIMEOUT)
            .await
            .expect_err("a frozen gateway fails");
        assert!(matches!(err, ProbeError::NoReaction(_)), "{err}");
        // Gone: nothing listens.
        let gone = frozen.local_addr().expect("addr");
        drop(frozen);
        let err = probe(gone, &hello, TIMEOUT).await.expect_err("no gateway");
        assert!(matches!(err, ProbeError::Connect(_)), "{err}");
    }

    #[test]
    fn the_hello_names_the_probe() {
        use crate::gateway::client_hello::{parse, Parsed};
        let hello = client_hello().expect("hello");
        let Ok(Parsed::Done(parsed)) = parse(&hello) else {
            panic!("the gateway's parser reads the probe's ClientHello");
        };
        assert_eq!(parsed.server_name.as_deref(), Some(GATEWAY_PROBE_SNI));
    }
}
