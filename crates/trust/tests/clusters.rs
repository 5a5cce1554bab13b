//! Cluster claims: a request states the cluster it runs in, the CA routes it to that cluster's
//! authenticator (Kubernetes TokenReview stand-ins here), refuses any grant of another
//! cluster, and the agent re-reads a rotated token file for every request.

mod common;

use std::sync::{Arc, Mutex};

use causeway_model::ClusterId;
use causeway_model::SpiffeId;
use causeway_trust::agent::{AgentError, TokenSource};
use causeway_trust::ca::RootCa;
use causeway_trust::credential::{
    AuthError, AuthFuture, Authenticator, CredentialStore, RoutedAuthenticator,
};
use causeway_trust::issue::WorkloadKey;
use causeway_trust::service::{
    request_certificate, CaClientConfig, CaService, ClientError, SignError, SignRequest,
};
use causeway_trust::verify;
use common::*;
use rustls::pki_types::UnixTime;

/// A stand-in for one cluster's TokenReview: knows its tokens (each grants `demo/<token>`'s
/// service account `client` in `cluster`), records what it is shown, or is down.
struct Review {
    cluster: ClusterId,
    tokens: Vec<&'static str>,
    down: bool,
    seen: Mutex<Vec<String>>,
}

impl Review {
    fn new(cluster: &str, tokens: Vec<&'static str>) -> Arc<Self> {
        Self::build(cluster, tokens, false)
    }

    fn down(cluster: &str) -> Arc<Self> {
        Self::build(cluster, vec![], true)
    }

    fn build(cluster: &str, tokens: Vec<&'static str>, down: bool) -> Arc<Self> {
        Arc::new(Self {
            cluster: cid(cluster),
            tokens,
            down,
            seen: Mutex::new(Vec::new()),
        })
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Authenticator for Review {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        _claimed: Option<&'a ClusterId>,
    ) -> AuthFuture<'a> {
        self.seen.lock().expect("lock").push(token.to_owned());
        let result = if self.down {
            Err(AuthError::Unavailable(format!(
                "TokenReview against cluster {} timed out",
                self.cluster
            )))
        } else if self.tokens.contains(&token) {
            Ok(grant(self.cluster.as_str(), "client"))
        } else {
            Err(AuthError::Unknown)
        };
        Box::pin(std::future::ready(result))
    }
}

/// A broken authenticator: whatever is asked, it grants `demo/client` in `cluster`.
struct GrantsFor(&'static str);

impl Authenticator for GrantsFor {
    fn authenticate<'a>(
        &'a self,
        _token: &'a str,
        _claimed: Option<&'a ClusterId>,
    ) -> AuthFuture<'a> {
        Box::pin(std::future::ready(Ok(grant(self.0, "client"))))
    }
}

fn csr(sa: &str) -> String {
    WorkloadKey::generate()
        .expect("key")
        .csr_pem(&SpiffeId::new(TD, "demo", sa))
        .expect("csr")
}

fn claiming(cluster: &str, token: &str) -> SignRequest {
    SignRequest {
        csr_pem: csr("client"),
        token: token.into(),
        ttl_seconds: 0,
        cluster: cluster.into(),
    }
}

fn ca(root: &RootCa, auth: Arc<dyn Authenticator>) -> Arc<CaService> {
    Arc::new(CaService::new(
        TD,
        vec![cluster_ca(root, "alpha"), cluster_ca(root, "beta")],
        auth,
        std::time::Duration::from_secs(3600),
    ))
}

/// The cluster whose intermediate signed `chain_pem`.
fn signing_cluster(root: &RootCa, chain_pem: &str) -> Option<ClusterId> {
    verify::verify_chain(
        &causeway_trust::pem_certs(chain_pem),
        root.cert_pem(),
        TD,
        UnixTime::now(),
    )
    .expect("valid chain")
    .cluster
}

#[tokio::test]
async fn a_token_of_cluster_a_never_yields_an_identity_of_cluster_b() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let alpha = Review::new("alpha", vec!["sa-token-alpha"]);
    let beta = Review::new("beta", vec!["sa-token-beta"]);
    let mut files = CredentialStore::new();
    files
        .insert("file-token-alpha", grant("alpha", "client"))
        .expect("token");
    let router = RoutedAuthenticator::new(Arc::new(files))
        .with_cluster(cid("alpha"), alpha.clone())
        .with_cluster(cid("beta"), beta.clone());
    let ca = ca(&root, Arc::new(router));

    let issued = ca
        .sign(&claiming("alpha", "sa-token-alpha"))
        .await
        .expect("alpha's token, claimed for alpha");
    assert_eq!(
        signing_cluster(&root, &issued.chain_pem),
        Some(cid("alpha"))
    );
    assert_eq!(alpha.seen(), vec!["sa-token-alpha"]);
    assert!(beta.seen().is_empty(), "beta never saw alpha's token");

    // Presented as beta: only beta's API server reviews it, and it does not know it.
    let e = ca
        .sign(&claiming("beta", "sa-token-alpha"))
        .await
        .expect_err("alpha's token claimed for beta");
    assert_eq!(e, SignError::Credential(AuthError::Unknown));
    assert_eq!(beta.seen(), vec!["sa-token-alpha"]);
    assert_eq!(alpha.seen().len(), 1, "alpha was not asked again");
    // Without a claim it goes to the file tokens, which do not know it either.
    let e = ca
        .sign(&claiming("", "sa-token-alpha"))
        .await
        .expect_err("no claim");
    assert_eq!(e.reason(), "bad_credential");
    assert_eq!(alpha.seen().len() + beta.seen().len(), 2);
    // Empty token or a malformed claim: no backend is asked at all.
    let e = ca.sign(&claiming("alpha", " ")).await.expect_err("empty");
    assert_eq!(e.reason(), "missing_credential");
    let e = ca
        .sign(&claiming(&"X".repeat(10_000), "sa-token-alpha"))
        .await
        .expect_err("bad claim");
    assert_eq!(e.reason(), "bad_cluster_claim");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.to_string().len() < 300, "bounded message: {e}");
    assert_eq!(alpha.seen().len() + beta.seen().len(), 2);

    assert_eq!(ca.issued_count(&cid("alpha")), 1);
    assert_eq!(ca.issued_count(&cid("beta")), 0);
    assert_eq!(ca.rejection_count("bad_credential"), 2);
}

#[tokio::test]
async fn the_ca_refuses_a_grant_for_another_cluster_than_claimed_whatever_the_authenticator() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    // Beta's authenticator is broken and hands out alpha grants.
    let router = RoutedAuthenticator::new(Arc::new(CredentialStore::new()))
        .with_cluster(cid("beta"), Arc::new(GrantsFor("alpha")));
    let ca = ca(&root, Arc::new(router));
    let e = ca
        .sign(&claiming("beta", "anything"))
        .await
        .expect_err("grant for alpha, claim beta");
    assert_eq!(
        e,
        SignError::Credential(AuthError::WrongCluster {
            claimed: cid("beta"),
            granted: cid("alpha"),
        })
    );
    assert_eq!(e.reason(), "wrong_cluster");
    assert_eq!(ca.rejection_count("wrong_cluster"), 1);
    // The same check with the broken authenticator installed directly (replaced at run time).
    ca.set_authenticator(Arc::new(GrantsFor("beta")));
    let e = ca
        .sign(&claiming("alpha", "anything"))
        .await
        .expect_err("grant for beta, claim alpha");
    assert_eq!(e.reason(), "wrong_cluster");
    assert_eq!(ca.issued_count(&cid("alpha")), 0);
    assert_eq!(ca.issued_count(&cid("beta")), 0);
    // Control: a claim that matches is signed by that cluster.
    let issued = ca
        .sign(&claiming("beta", "anything"))
        .await
        .expect("matching claim");
    assert_eq!(signing_cluster(&root, &issued.chain_pem), Some(cid("beta")));
}

#[tokio::test]
async fn an_unavailable_backend_answers_unavailable_so_agents_retry() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let router = RoutedAuthenticator::new(Arc::new(CredentialStore::new()))
        .with_cluster(cid("alpha"), Review::down("alpha"));
    let ca = ca(&root, Arc::new(router));
    let e = ca
        .sign(&claiming("alpha", "sa-token-alpha"))
        .await
        .expect_err("backend down");
    assert_eq!(e.reason(), "auth_unavailable");
    assert_eq!(e.code(), tonic::Code::Unavailable);

    let (addr, _stop, _task) = start_ca(Arc::clone(&ca)).await;
    let e = request_certificate(
        &CaClientConfig::new(addr, root.cert_pem(), TD),
        claiming("alpha", "sa-token-alpha"),
    )
    .await
    .expect_err("backend down");
    match &e {
        ClientError::Refused {
            code,
            reason,
            message,
            ..
        } => {
            assert_eq!(*code, tonic::Code::Unavailable);
            assert_eq!(reason, "auth_unavailable");
            assert!(message.contains("timed out"), "{message}");
            assert!(!message.contains("sa-token"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ca.rejection_count("auth_unavailable"), 2);
}

#[tokio::test]
async fn the_agent_sends_its_cluster_and_rereads_its_token_file_for_every_request() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let review = |tokens| {
        Arc::new(
            RoutedAuthenticator::new(Arc::new(CredentialStore::new()))
                .with_cluster(cid("alpha"), Review::new("alpha", tokens)),
        )
    };
    let ca = ca(&root, review(vec!["projected-1"]));
    let (addr, _stop, _task) = start_ca(Arc::clone(&ca)).await;
    let dir = tempfile::tempdir().expect("tmp");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "projected-1\n").expect("write");
    let mut config = agent_config(addr, root.cert_pem(), "unused", "client");
    config.token = TokenSource::File(token_file.clone());
    config.cluster = Some(cid("alpha"));
    let agent = causeway_trust::agent::Agent::new(config.clone());

    let first = agent.renew().await.expect("first token");
    assert_eq!(signing_cluster(&root, &first.chain_pem), Some(cid("alpha")));

    // The cluster now accepts only the rotated token; the file still holds the old one.
    ca.set_authenticator(review(vec!["projected-2"]));
    let e = agent.renew().await.expect_err("old token");
    assert!(
        matches!(&e, AgentError::Ca(ClientError::Refused { reason, .. }) if reason == "bad_credential"),
        "{e}"
    );
    // kubelet's way: write a new file and rename it over the old one.
    let fresh = dir.path().join("token.tmp");
    std::fs::write(&fresh, "projected-2\n").expect("write");
    std::fs::rename(&fresh, &token_file).expect("rename");
    let second = agent.renew().await.expect("rotated token, read anew");
    assert_ne!(
        leaf_serial(&first.chain_pem),
        leaf_serial(&second.chain_pem)
    );

    // Same token, but the agent says it runs in beta: beta has no authenticator of its own,
    // so the file tokens are asked, and they do not know it.
    let mut wrong = config.clone();
    wrong.cluster = Some(cid("beta"));
    let e = causeway_trust::agent::Agent::new(wrong)
        .renew()
        .await
        .expect_err("claimed beta");
    assert!(
        matches!(&e, AgentError::Ca(ClientError::Refused { reason, .. }) if reason == "bad_credential"),
        "{e}"
    );

    // A token file that disappeared: a local error naming the file, nothing sent.
    std::fs::remove_file(&token_file).expect("rm");
    let e = agent.renew().await.expect_err("no file");
    assert!(matches!(e, AgentError::Token(_)), "{e}");
    assert!(e.to_string().contains("token"), "{e}");
    assert_eq!(ca.issued_count(&cid("alpha")), 2);
}

#[tokio::test]
async fn an_agent_claiming_another_cluster_than_its_file_token_is_refused_by_name() {
    let root = RootCa::generate(TD, YEAR).expect("root");
    let (addr, _stop, _task) = start_ca(ca_service(&root)).await;
    let mut config = agent_config(addr, root.cert_pem(), "tok-alpha-client", "client");
    config.cluster = Some(cid("beta"));
    let e = causeway_trust::agent::Agent::new(config.clone())
        .renew()
        .await
        .expect_err("claims beta with an alpha token");
    match &e {
        AgentError::Ca(ClientError::Refused {
            code,
            reason,
            message,
            ..
        }) => {
            assert_eq!(*code, tonic::Code::Unauthenticated);
            assert_eq!(reason, "wrong_cluster");
            assert!(
                message.contains("cluster alpha") && message.contains("cluster beta"),
                "{message}"
            );
            assert!(!message.contains("tok-alpha"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    config.cluster = Some(cid("alpha"));
    causeway_trust::agent::Agent::new(config)
        .renew()
        .await
        .expect("the right claim");
}

#[test]
fn the_claim_is_field_4_and_requests_without_it_still_decode() {
    let with = claiming("alpha", "secret-token");
    let bytes = prost::Message::encode_to_vec(&with);
    let mut buf = bytes.as_slice();
    let mut tags = Vec::new();
    while !buf.is_empty() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut buf).expect("field key");
        tags.push(tag);
        prost::encoding::skip_field(wire_type, tag, &mut buf, Default::default()).expect("skip");
    }
    assert_eq!(tags, vec![1, 2, 4]);
    // An older agent's request (fields 1..=3) decodes with an empty claim.
    let old = SignRequest {
        cluster: String::new(),
        ttl_seconds: 60,
        ..with.clone()
    };
    let decoded: SignRequest =
        prost::Message::decode(prost::Message::encode_to_vec(&old).as_slice()).expect("decode");
    assert_eq!(decoded.cluster, "");
    assert_eq!(decoded.ttl_seconds, 60);
    assert!(format!("{with:?}").contains("alpha"));
    assert!(!format!("{with:?}").contains("secret-token"));
}
