//! Shared fixtures: a mesh root, cluster CAs, a CA service on 127.0.0.1, agents.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_model::{ClusterId, SpiffeId};
use causeway_trust::agent::{Agent, AgentConfig, AgentTuning, Certified};
use causeway_trust::ca::{ClusterCa, ClusterCaFiles, RootCa};
use causeway_trust::credential::{CredentialStore, Grant};
use causeway_trust::service::CaService;

pub const TD: &str = "causeway.local";
pub const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).expect("cluster id")
}

pub fn intermediate(root: &RootCa, cluster: &str) -> ClusterCaFiles {
    root.issue_intermediate(&cid(cluster), TD, YEAR)
        .expect("intermediate")
}

pub fn cluster_ca(root: &RootCa, cluster: &str) -> ClusterCa {
    ClusterCa::from_files(&intermediate(root, cluster), cid(cluster), TD).expect("cluster CA")
}

pub fn grant(cluster: &str, sa: &str) -> Grant {
    Grant {
        cluster: cid(cluster),
        namespace: "demo".into(),
        service_account: sa.into(),
        workload: sa.into(),
    }
}

/// A CA holding intermediates for alpha and beta; tokens for alpha/client, beta/echo and a
/// workload of cluster gamma (for which this CA has no intermediate).
pub fn ca_service(root: &RootCa) -> Arc<CaService> {
    let mut store = CredentialStore::new();
    store
        .insert("tok-alpha-client", grant("alpha", "client"))
        .expect("token");
    store
        .insert("tok-beta-echo", grant("beta", "echo"))
        .expect("token");
    store
        .insert("tok-gamma-db", grant("gamma", "db"))
        .expect("token");
    Arc::new(CaService::new(
        TD,
        vec![cluster_ca(root, "alpha"), cluster_ca(root, "beta")],
        Arc::new(store),
        Duration::from_secs(24 * 3600),
    ))
}

/// Serves `ca` on 127.0.0.1:0 until `stop` fires (or forever when dropped into `pending`).
pub async fn start_ca(
    ca: Arc<CaService>,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let result = ca
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await;
        assert!(result.is_ok(), "CA service failed: {result:?}");
    });
    (addr, stop, task)
}

pub fn agent_config(addr: SocketAddr, bundle: &str, token: &str, sa: &str) -> AgentConfig {
    AgentConfig {
        ca_addr: addr,
        ca_bundle_pem: bundle.to_owned(),
        trust_domain: TD.into(),
        token: token.into(),
        cluster: None,
        identity: SpiffeId::new(TD, "demo", sa),
        ttl: Duration::from_secs(3600),
    }
}

/// An agent with short timeouts and retries, so tests stay fast.
pub fn agent(addr: SocketAddr, root: &RootCa, token: &str, sa: &str) -> Arc<Agent> {
    Agent::with_tuning(
        agent_config(addr, root.cert_pem(), token, sa),
        AgentTuning {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        },
    )
}

/// Waits (at most 10 s) until the agent holds a certificate of at least `generation`.
pub async fn wait_cert(a: &Arc<Agent>, generation: u64) -> Arc<Certified> {
    let mut rx = a.certificates();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(c) = rx.borrow_and_update().clone() {
                if c.generation >= generation {
                    return Some(c);
                }
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .await;
    match found {
        Ok(Some(c)) => c,
        Ok(None) => panic!("agent stopped; status {:?}", a.status()),
        Err(_) => panic!(
            "no certificate generation {generation} within 10 s; status {:?}",
            a.status()
        ),
    }
}

/// The serial number of the first certificate of a chain.
pub fn leaf_serial(chain_pem: &str) -> Vec<u8> {
    let der = causeway_trust::pem_certs(chain_pem).remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    cert.raw_serial().to_vec()
}
