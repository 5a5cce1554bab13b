//! Delta ADS with several responses in flight, driven by a scripted client: the server sends
//! response N1 (echo's endpoints), then N2 (greeter's) before the client answers either; each
//! answer counts for exactly its own response, so a NACK of N1 after N2 went out is honoured
//! (recorded, echo not taken as acknowledged, echo sent again once fixed), and an ACK of N1
//! confirms N1's resources only.
//!
//! The client never waits on a clock to know the server has read its answers: it re-subscribes
//! to a listener and waits for that response, which the server sends only after processing
//! everything before it on the stream.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use causeway_xds::resources::set_version;
use causeway_xds::status::TypeStatus;
use common::*;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
    /// The one listener the client subscribes to, re-subscribed to sync with the server.
    probe: String,
}

impl Delta {
    /// Connects and takes CDS (wildcard), EDS for echo and greeter, and one listener, ACKing
    /// each. Returns the client and the first EDS response.
    async fn open(h: &Harness) -> (Self, DeltaDiscoveryResponse) {
        let (tx, rx) = mpsc::channel(16);
        tx.send(DeltaDiscoveryRequest {
            node: Some(node("client")),
            type_url: CDS.into(),
            ..Default::default()
        })
        .await
        .expect("send");
        let rx = h
            .client()
            .await
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("open")
            .into_inner();
        let mut c = Self {
            tx,
            rx,
            probe: String::new(),
        };
        let cds = c.next(CDS).await;
        c.ack(&cds).await;
        c.send(DeltaDiscoveryRequest {
            type_url: EDS.into(),
            resource_names_subscribe: vec![ECHO.into(), GREETER.into()],
            ..Default::default()
        })
        .await;
        let eds = c.next(EDS).await;
        assert_eq!(names(&eds), vec![ECHO, GREETER]);
        c.ack(&eds).await;
        // Every listener first, then narrowed to one: the probe.
        c.send(DeltaDiscoveryRequest {
            type_url: LDS.into(),
            ..Default::default()
        })
        .await;
        let lds = c.next(LDS).await;
        c.ack(&lds).await;
        c.probe = lds.resources.first().expect("a listener").name.clone();
        c.send(DeltaDiscoveryRequest {
            type_url: LDS.into(),
            resource_names_subscribe: vec![c.probe.clone()],
            resource_names_unsubscribe: vec!["*".into()],
            ..Default::default()
        })
        .await;
        c.sync().await;
        (c, eds)
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.expect("send");
    }

    #[track_caller]
    fn next(
        &mut self,
        type_url: &'static str,
    ) -> impl std::future::Future<Output = DeltaDiscoveryResponse> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            let r = tokio::time::timeout(Duration::from_secs(5), self.rx.next())
                .await
                .unwrap_or_else(|_| panic!("no response within 5 s (waiting at {caller})"))
                .expect("stream open")
                .expect("not an error");
            assert_eq!(r.type_url, type_url, "at {caller}: {:?}", names(&r));
            r
        }
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn nack(&self, r: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: message.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }

    /// Returns once the server has processed every request sent so far: dropping and taking
    /// back the probe listener makes it send that listener again, after what came before.
    async fn sync(&mut self) {
        for (subscribe, unsubscribe) in [
            (vec![], vec![self.probe.clone()]),
            (vec![self.probe.clone()], vec![]),
        ] {
            self.send(DeltaDiscoveryRequest {
                type_url: LDS.into(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            })
            .await;
        }
        let lds = self.next(LDS).await;
        assert_eq!(names(&lds), vec![self.probe.as_str()]);
        self.ack(&lds).await;
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

fn eds_status(h: &Harness) -> TypeStatus {
    let proxies = h.registry.proxies();
    assert_eq!(proxies.len(), 1, "{proxies:?}");
    proxies[0].types["eds"].clone()
}

/// The version of the EDS set the proxy holds: `base` with `updates` applied.
fn holding(base: &DeltaDiscoveryResponse, updates: &[&DeltaDiscoveryResponse]) -> String {
    let mut set: BTreeMap<&str, &str> = base
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r.version.as_str()))
        .collect();
    for u in updates {
        set.extend(
            u.resources
                .iter()
                .map(|r| (r.name.as_str(), r.version.as_str())),
        );
    }
    set_version(set)
}

/// N1 carries echo, N2 greeter; both are in flight, neither answered.
async fn two_in_flight(
    h: &mut Harness,
    c: &mut Delta,
) -> (DeltaDiscoveryResponse, DeltaDiscoveryResponse) {
    h.add_gamma_echo(1);
    let n1 = c.next(EDS).await;
    assert_eq!(names(&n1), vec![ECHO]);
    h.add_gamma_greeter(1);
    let n2 = c.next(EDS).await;
    assert_eq!(names(&n2), vec![GREETER]);
    assert_ne!(n1.nonce, n2.nonce);
    (n1, n2)
}

#[tokio::test]
async fn a_nack_of_an_earlier_response_is_honoured_and_resent_once_fixed() {
    let mut h = Harness::start(Duration::from_millis(50)).await;
    let (mut c, eds) = Delta::open(&h).await;
    let st = eds_status(&h);
    assert_eq!(st.sent_version, st.acked_version, "in sync: {st:?}");
    let (n1, n2) = two_in_flight(&mut h, &mut c).await;

    c.nack(
        &n1,
        &format!("Error adding/updating {ECHO}: test rejection"),
    )
    .await;
    c.ack(&n2).await;
    c.sync().await;
    let st = eds_status(&h);
    let nack = st.last_nack.as_ref().expect("the NACK of N1 is recorded");
    assert!(nack.message.contains("test rejection"), "{nack:?}");
    assert_eq!(nack.resources, vec![ECHO.to_owned()]);
    assert_eq!(nack.version, n1.system_version_info);
    // Echo is not taken as acknowledged: the proxy holds the old echo and the new greeter.
    assert_eq!(st.acked_version, holding(&eds, &[&n2]));
    assert_ne!(st.acked_version, st.sent_version);

    // Echo is fixed (its content changes): it goes out again, alone, and is accepted.
    h.add_gamma_echo(2);
    let n3 = c.next(EDS).await;
    assert_eq!(names(&n3), vec![ECHO]);
    c.ack(&n3).await;
    c.sync().await;
    let st = eds_status(&h);
    assert_eq!(
        st.last_nack, None,
        "every refused resource is now acknowledged"
    );
    assert_eq!(st.acked_version, holding(&eds, &[&n2, &n3]));
    let st = eds_status(&h);
    assert_eq!(st.sent_version, st.acked_version, "in sync: {st:?}");
}

#[tokio::test]
async fn an_ack_of_an_earlier_response_confirms_exactly_its_resources() {
    let mut h = Harness::start(Duration::from_millis(50)).await;
    let (mut c, eds) = Delta::open(&h).await;
    let (n1, n2) = two_in_flight(&mut h, &mut c).await;

    c.ack(&n1).await;
    c.sync().await;
    let st = eds_status(&h);
    assert_eq!(
        st.acked_version,
        holding(&eds, &[&n1]),
        "N1's echo, not N2's greeter"
    );
    assert_eq!(st.sent_version, n2.system_version_info);
    assert_eq!(st.last_nack, None);

    c.nack(
        &n2,
        &format!("Error adding/updating {GREETER}: test rejection"),
    )
    .await;
    c.sync().await;
    let st = eds_status(&h);
    let nack = st.last_nack.as_ref().expect("the NACK of N2 is recorded");
    assert_eq!(nack.resources, vec![GREETER.to_owned()]);
    assert_eq!(st.acked_version, holding(&eds, &[&n1]));

    // Greeter is fixed: only greeter goes out again (echo was acknowledged).
    h.add_gamma_greeter(2);
    let n3 = c.next(EDS).await;
    assert_eq!(names(&n3), vec![GREETER]);
    c.ack(&n3).await;
    c.sync().await;
    let st = eds_status(&h);
    assert_eq!(st.last_nack, None);
    assert_eq!(st.acked_version, holding(&eds, &[&n1, &n3]));
    let st = eds_status(&h);
    assert_eq!(st.sent_version, st.acked_version, "in sync: {st:?}");
}

/// A subscription is answered from the names it asks for: a name the proxy dropped comes back
/// in full, one it still holds is not sent again, and a name that does not exist gets nothing
/// (the stream goes on: the probe listener still answers after it).
#[tokio::test]
async fn a_subscription_is_answered_with_exactly_what_it_asks_for_and_lacks() {
    let h = Harness::start(Duration::from_millis(50)).await;
    let (mut c, eds) = Delta::open(&h).await;
    c.send(DeltaDiscoveryRequest {
        type_url: EDS.into(),
        resource_names_unsubscribe: vec![GREETER.into()],
        ..Default::default()
    })
    .await;
    c.send(DeltaDiscoveryRequest {
        type_url: EDS.into(),
        resource_names_subscribe: vec![
            ECHO.into(),
            GREETER.into(),
            "outbound|80||nowhere.demo.svc.cluster.local".into(),
        ],
        ..Default::default()
    })
    .await;
    let again = c.next(EDS).await;
    assert_eq!(names(&again), vec![GREETER], "only the dropped name");
    let before = eds
        .resources
        .iter()
        .find(|r| r.name == GREETER)
        .expect("greeter was sent first");
    assert_eq!(again.resources[0].version, before.version);
    assert!(again.removed_resources.is_empty(), "{again:?}");
    c.ack(&again).await;
    c.sync().await;
    let st = eds_status(&h);
    assert_eq!(st.sent_version, st.acked_version, "in sync: {st:?}");
}
