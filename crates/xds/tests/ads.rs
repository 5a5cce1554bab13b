//! The ADS server over a real gRPC connection, driven by a scripted client: what is sent on
//! connect, what an ACK and a NACK do, that an endpoint change sends only the affected
//! ClusterLoadAssignment, that a reconnecting delta client gets only what it lacks, and that
//! bursts are coalesced while the first change goes out at once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(h: &Harness, workload: &str) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(DiscoveryRequest {
            node: Some(node(workload)),
            type_url: CDS.into(),
            ..Default::default()
        })
        .await
        .expect("send");
        let stream = h
            .client()
            .await
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, rx: stream })
    }

    #[track_caller]
    fn next(&mut self) -> impl std::future::Future<Output = DiscoveryResponse> + '_ {
        let caller = std::panic::Location::caller();
        async move { self.next_at(caller).await }
    }

    async fn next_at(
        &mut self,
        caller: &'static std::panic::Location<'static>,
    ) -> DiscoveryResponse {
        let _ = caller;
        tokio::time::timeout(Duration::from_secs(5), self.rx.next())
            .await
            .unwrap_or_else(|_| panic!("no response within 5 s (waiting at {caller})"))
            .expect("stream open")
            .expect("not an error")
    }

    async fn quiet(&mut self, wait: Duration) -> Option<DiscoveryResponse> {
        tokio::time::timeout(wait, self.rx.next())
            .await
            .ok()
            .flatten()
            .and_then(Result::ok)
    }

    /// Subscribes to `names` of `type_url` (empty: every resource of the type).
    async fn subscribe(&self, type_url: &str, names: &[String]) {
        self.tx
            .send(DiscoveryRequest {
                type_url: type_url.into(),
                resource_names: names.to_vec(),
                ..Default::default()
            })
            .await
            .expect("send");
    }

    async fn ack(&self, r: &DiscoveryResponse, names: &[String]) {
        self.tx
            .send(DiscoveryRequest {
                type_url: r.type_url.clone(),
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                resource_names: names.to_vec(),
                ..Default::default()
            })
            .await
            .expect("send");
    }
}

fn names(r: &DiscoveryResponse, decode: fn(&[u8]) -> String) -> Vec<String> {
    r.resources.iter().map(|a| decode(&a.value)).collect()
}

fn cla_name(b: &[u8]) -> String {
    use prost::Message;
    envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(b)
        .expect("cla")
        .cluster_name
}

fn cluster_name(b: &[u8]) -> String {
    use prost::Message;
    envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(b)
        .expect("cluster")
        .name
}

#[tokio::test]
async fn sotw_ack_incremental_eds_and_nack() {
    let mut h = Harness::start(Duration::from_millis(50)).await;
    let mut s = Sotw::open(&h, "client").await.expect("accepted");
    let cds = s.next().await;
    assert_eq!(cds.type_url, CDS);
    let clusters = names(&cds, cluster_name);
    assert!(clusters.contains(&ECHO.to_owned()), "{clusters:?}");
    assert!(
        clusters.iter().any(|c| c.starts_with("inbound|8080")),
        "the client's own inbound port: {clusters:?}"
    );
    s.ack(&cds, &[]).await;
    // Subscribe to every outbound cluster's endpoints.
    let eds_names: Vec<String> = clusters
        .iter()
        .filter(|c| c.starts_with("outbound"))
        .cloned()
        .collect();
    s.subscribe(EDS, &eds_names).await;
    let eds = s.next().await;
    assert_eq!(eds.type_url, EDS);
    assert_eq!(names(&eds, cla_name).len(), eds_names.len());
    s.ack(&eds, &eds_names).await;
    s.subscribe(LDS, &[]).await;
    let lds = s.next().await;
    assert_eq!(lds.type_url, LDS);
    s.ack(&lds, &[]).await;
    assert!(
        s.quiet(Duration::from_millis(300)).await.is_none(),
        "nothing more after ACKs"
    );
    let status = h.registry.proxies();
    assert!(status[0].in_sync(), "{status:?}");

    // One endpoint of echo changes: exactly one EDS response with only echo's assignment.
    h.add_gamma_echo(1);
    let push = s.next().await;
    assert_eq!(push.type_url, EDS);
    assert_eq!(names(&push, cla_name), vec![ECHO.to_owned()]);
    s.ack(&push, &eds_names).await;
    assert!(
        s.quiet(Duration::from_millis(300)).await.is_none(),
        "CDS and LDS did not change"
    );

    // A NACK is recorded with the error and the proxy's status shows it.
    h.add_gamma_echo(2);
    let push = s.next().await;
    s.tx.send(DiscoveryRequest {
        type_url: EDS.into(),
        version_info: eds.version_info.clone(),
        response_nonce: push.nonce.clone(),
        resource_names: eds_names.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "test rejection".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await
    .expect("send");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = h.registry.proxies();
    let eds_status = &status[0].types["eds"];
    assert_eq!(
        eds_status.last_nack.as_ref().map(|n| n.message.as_str()),
        Some("test rejection")
    );
    // The next change re-sends what the proxy did not accept.
    h.add_gamma_echo(3);
    let push = s.next().await;
    assert_eq!(names(&push, cla_name), vec![ECHO.to_owned()]);
}

/// A mesh change that leaves a proxy's resources as they were (another cluster's private
/// service, say) sends it nothing, and its status must still say it holds the new version:
/// otherwise `/debug/proxies` shows it out of sync for ever.
#[tokio::test]
async fn a_change_that_does_not_touch_a_proxy_leaves_it_in_sync_at_the_new_version() {
    let mut h = Harness::start(Duration::from_millis(20)).await;
    let mut s = Sotw::open(&h, "client").await.expect("accepted");
    let cds = s.next().await;
    s.ack(&cds, &[]).await;
    let eds_names: Vec<String> = names(&cds, cluster_name)
        .into_iter()
        .filter(|c| c.starts_with("outbound"))
        .collect();
    s.subscribe(EDS, &eds_names).await;
    let eds = s.next().await;
    s.ack(&eds, &eds_names).await;
    s.subscribe(LDS, &[]).await;
    let lds = s.next().await;
    s.ack(&lds, &[]).await;
    assert!(s.quiet(Duration::from_millis(200)).await.is_none());

    h.publish();
    h.wait_served().await;
    assert!(
        s.quiet(Duration::from_millis(300)).await.is_none(),
        "an unchanged index sends nothing"
    );
    let status = h.registry.proxies();
    assert_eq!(status[0].mesh_version, h.version, "{status:?}");
    assert!(status[0].in_sync(), "{status:?}");
}

#[tokio::test]
async fn unknown_workload_is_refused_with_the_reason() {
    let h = Harness::start(Duration::from_millis(50)).await;
    let err = match Sotw::open(&h, "nobody").await {
        Ok(mut s) => match tokio::time::timeout(Duration::from_secs(5), s.rx.next()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("expected an error, got {other:?}"),
        },
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message()
            .contains("no workload demo/nobody in cluster alpha"),
        "{}",
        err.message()
    );
    assert_eq!(h.registry.rejections().len(), 1);
    assert_eq!(h.registry.rejections()[0].reason, "unknown_workload");
}

#[tokio::test]
async fn first_change_is_immediate_and_bursts_coalesce() {
    let mut h = Harness::start(Duration::from_millis(400)).await;
    let mut s = Sotw::open(&h, "client").await.expect("accepted");
    let cds = s.next().await;
    s.ack(&cds, &[]).await;
    s.tx.send(DiscoveryRequest {
        type_url: EDS.into(),
        resource_names: vec![ECHO.into()],
        ..Default::default()
    })
    .await
    .expect("send");
    let eds = s.next().await;
    s.ack(&eds, &[ECHO.into()]).await;
    assert!(s.quiet(Duration::from_millis(500)).await.is_none());

    let start = tokio::time::Instant::now();
    h.add_gamma_echo(1);
    let first = s.next().await;
    let first_latency = start.elapsed();
    s.ack(&first, &[ECHO.into()]).await;
    assert!(
        first_latency < Duration::from_millis(300),
        "first change waited {first_latency:?}"
    );
    // Three more changes inside the window arrive as one push.
    for n in 2..5 {
        h.add_gamma_echo(n);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = s.next().await;
    s.ack(&second, &[ECHO.into()]).await;
    use prost::Message;
    let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
        &*second.resources[0].value,
    )
    .expect("cla");
    let gateway_weight: u32 = cla
        .endpoints
        .iter()
        .flat_map(|g| g.lb_endpoints.iter())
        .filter_map(|e| e.load_balancing_weight.as_ref().map(|w| w.value))
        .max()
        .unwrap_or(0);
    assert_eq!(
        gateway_weight, 5,
        "the coalesced push carries the last state (5 gamma replicas behind the gateway)"
    );
    assert!(
        s.quiet(Duration::from_millis(600)).await.is_none(),
        "one push for the burst"
    );
}

#[tokio::test]
async fn delta_reconnect_sends_only_what_the_proxy_lacks() {
    let mut h = Harness::start(Duration::from_millis(50)).await;
    let mut client = h.client().await;
    let (tx, rx) = mpsc::channel(16);
    tx.send(DeltaDiscoveryRequest {
        node: Some(node("client")),
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .expect("send");
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("open")
        .into_inner();
    let cds = next_delta(&mut stream).await;
    let versions: BTreeMap<String, String> = cds
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    assert!(versions.contains_key(ECHO));
    tx.send(DeltaDiscoveryRequest {
        type_url: CDS.into(),
        response_nonce: cds.nonce.clone(),
        ..Default::default()
    })
    .await
    .expect("ack");
    drop(tx);
    drop(stream);

    // The mesh changes while the proxy is away: echo gains an endpoint (CDS unchanged).
    h.add_gamma_echo(1);
    // Reconnect with what it has: nothing needs sending, yet the first response still comes.
    let (tx, rx) = mpsc::channel(16);
    tx.send(DeltaDiscoveryRequest {
        node: Some(node("client")),
        type_url: CDS.into(),
        initial_resource_versions: versions.clone().into_iter().collect(),
        ..Default::default()
    })
    .await
    .expect("send");
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("open")
        .into_inner();
    let cds = next_delta(&mut stream).await;
    assert!(
        cds.resources.is_empty(),
        "nothing the proxy lacks: {:?}",
        cds.resources.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
    assert!(cds.removed_resources.is_empty());
    // Endpoints: subscribe with a stale version: only echo's assignment comes.
    tx.send(DeltaDiscoveryRequest {
        type_url: EDS.into(),
        resource_names_subscribe: vec![ECHO.into()],
        initial_resource_versions: [(ECHO.to_owned(), "stale".to_owned())]
            .into_iter()
            .collect(),
        ..Default::default()
    })
    .await
    .expect("send");
    let eds = next_delta(&mut stream).await;
    assert_eq!(
        eds.resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        vec![ECHO]
    );
}

async fn next_delta(s: &mut tonic::Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("ok")
}
