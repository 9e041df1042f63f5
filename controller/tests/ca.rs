//! The CA over gRPC: who may obtain which identity, and bad CSRs.

mod support;

use std::sync::Arc;

use serde_json::json;
use support::{Harness, deployed_service_account, pod, state};
use weft_api::ca::CreateCertificateRequest;
use weft_api::ca::certificate_authority_client::CertificateAuthorityClient;
use weft_controller::auth::{BootstrapTokens, Caller};
use weft_identity::ca::generate_csr;
use weft_identity::{SpiffeId, WorkloadCertificate};

fn waypoint_gateway(ns: &str, name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns, "uid": format!("{name}-uid")},
        "spec": {"gatewayClassName": "weft-waypoint",
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
    })
}

async fn harness() -> Harness {
    let mut tokens = BootstrapTokens::default();
    tokens.insert(
        "node-a-token",
        Caller::Ztunnel {
            node: "node-a".into(),
        },
    );
    tokens.insert(
        "node-b-token",
        Caller::Ztunnel {
            node: "node-b".into(),
        },
    );
    tokens.insert(
        "wp-token",
        Caller::ServiceAccount {
            namespace: "shop".into(),
            name: "shop-waypoint-weft-waypoint".into(),
        },
    );
    // Named as waypoints' ServiceAccounts once were (after the Gateway),
    // and as they are now but made by a user, not by the deployer.
    for name in [
        "shop-waypoint",
        "impostor-weft-waypoint",
        "late-weft-waypoint",
    ] {
        tokens.insert(
            format!("{name}-token"),
            Caller::ServiceAccount {
                namespace: "shop".into(),
                name: name.into(),
            },
        );
    }
    tokens.insert(
        "stranger-token",
        Caller::ServiceAccount {
            namespace: "shop".into(),
            name: "web".into(),
        },
    );
    Harness::start(
        state(&[
            pod("shop", "web-1", "node-a", "web", "10.244.1.5"),
            pod("shop", "db-1", "node-b", "db", "10.244.2.5"),
            waypoint_gateway("shop", "shop-waypoint"),
            deployed_service_account("shop", "shop-waypoint", "shop-waypoint-uid"),
            // A ServiceAccount a user made under the name the deployer would
            // give Gateway `impostor`'s, labelled and even claiming the
            // Gateway as owner, but not by its uid.
            waypoint_gateway("shop", "impostor"),
            deployed_service_account("shop", "impostor", "some-other-uid"),
            // One made with no label and no owner at all, before its Gateway.
            waypoint_gateway("shop", "late"),
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "late-weft-waypoint", "namespace": "shop"}}),
            // A pod on node-a running as the real waypoint's ServiceAccount.
            pod(
                "shop",
                "squatter-1",
                "node-a",
                "shop-waypoint-weft-waypoint",
                "10.244.1.9",
            ),
            pod(
                "shop",
                "old-name-1",
                "node-a",
                "shop-waypoint",
                "10.244.1.10",
            ),
        ]),
        Arc::new(tokens),
    )
    .await
}

async fn ask(
    h: &Harness,
    token: Option<&str>,
    node: &str,
    csr_pem: String,
) -> Result<Vec<String>, tonic::Status> {
    let mut client = CertificateAuthorityClient::new(h.channel().await);
    let mut request = tonic::Request::new(CreateCertificateRequest {
        csr_pem,
        node: node.to_string(),
        ttl_seconds: 600,
    });
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    client
        .create_certificate(request)
        .await
        .map(|r| r.into_inner().cert_chain_pem)
}

fn csr(ns: &str, sa: &str) -> (String, String) {
    let id = SpiffeId::new("cluster.local", ns, sa).expect("id");
    let (pem, key) = generate_csr(&id).expect("csr");
    (pem, key.serialize_pem())
}

#[tokio::test]
async fn ztunnel_gets_identities_of_its_own_node_only() {
    let h = harness().await;
    let (web_csr, web_key) = csr("shop", "web");
    let chain = ask(&h, Some("node-a-token"), "node-a", web_csr.clone())
        .await
        .expect("signed");
    let cert = WorkloadCertificate::from_pem(&chain, &web_key).expect("valid chain");
    assert_eq!(
        cert.identity().to_string(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(chain.last().map(String::as_str), Some(h.root_pem.as_str()));

    // db runs only on node-b.
    let (db_csr, _) = csr("shop", "db");
    let err = ask(&h, Some("node-a-token"), "node-a", db_csr.clone())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("node \"node-a\""),
        "{}",
        err.message()
    );
    // Claiming to be node-b, or no node, with node-a's token does not help:
    // the node is the token's, not the request's.
    let err = ask(&h, Some("node-a-token"), "node-b", db_csr.clone())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "caller is the ztunnel of node \"node-a\", but the request names node \"node-b\""
    );
    let err = ask(&h, Some("node-a-token"), "", db_csr.clone())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        ask(&h, Some("node-b-token"), "node-b", db_csr)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn waypoint_gets_only_its_own_identity() {
    let h = harness().await;
    let (own, _) = csr("shop", "shop-waypoint-weft-waypoint");
    assert!(ask(&h, Some("wp-token"), "node-a", own).await.is_ok());
    let (other, _) = csr("shop", "web");
    let err = ask(&h, Some("wp-token"), "node-a", other)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("only obtain its own identity"),
        "{}",
        err.message()
    );
    // A service account that is not a waypoint gets nothing, not even itself.
    let (web, _) = csr("shop", "web");
    let err = ask(&h, Some("stranger-token"), "node-a", web)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn unauthenticated_callers_are_refused() {
    let h = harness().await;
    let (web, _) = csr("shop", "web");
    let err = ask(&h, None, "node-a", web.clone())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = ask(&h, Some("forged"), "node-a", web)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn bad_csrs_are_refused_with_a_reason() {
    let h = harness().await;
    let err = ask(&h, Some("node-a-token"), "node-a", "not a csr".into())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("bad CSR: not a PEM"),
        "{}",
        err.message()
    );

    let (good, _) = csr("shop", "web");
    let mangled = good.replacen("MII", "MIJ", 1);
    let err = ask(&h, Some("node-a-token"), "node-a", mangled)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let other_domain = SpiffeId::new("evil.example", "shop", "web").expect("id");
    let (pem, _) = generate_csr(&other_domain).expect("csr");
    let err = ask(&h, Some("node-a-token"), "node-a", pem)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("trust domain"), "{}", err.message());
}

#[tokio::test]
async fn before_the_registry_syncs_callers_are_told_to_retry() {
    let mut tokens = BootstrapTokens::default();
    tokens.insert(
        "node-a-token",
        Caller::Ztunnel {
            node: "node-a".into(),
        },
    );
    let mut unsynced = state(&[pod("shop", "web-1", "node-a", "web", "10.244.1.5")]);
    unsynced.synced = false;
    let h = Harness::start(unsynced, Arc::new(tokens)).await;
    let (web, _) = csr("shop", "web");
    let err = ask(&h, Some("node-a-token"), "node-a", web)
        .await
        .expect_err("not yet");
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn only_the_service_account_the_deployer_made_gets_a_waypoint_identity() {
    let h = harness().await;
    // Named after the Gateway, as the deployer used to name it: an
    // application's ServiceAccount of that name is no waypoint.
    for (sa, token) in [
        ("shop-waypoint", "shop-waypoint-token"),
        // Named as the deployer names it, but not the deployer's.
        ("impostor-weft-waypoint", "impostor-weft-waypoint-token"),
        ("late-weft-waypoint", "late-weft-waypoint-token"),
    ] {
        let (own, _) = csr("shop", sa);
        let err = ask(&h, Some(token), "node-a", own)
            .await
            .expect_err("not a waypoint");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{sa}");
        assert_eq!(
            err.message(),
            format!("shop/{sa} is neither a ztunnel nor a waypoint")
        );
    }
    // A pod running as a waypoint's ServiceAccount does not get the
    // waypoint's identity through its node's ztunnel either.
    let (squat, _) = csr("shop", "shop-waypoint-weft-waypoint");
    let err = ask(&h, Some("node-a-token"), "node-a", squat)
        .await
        .expect_err("a waypoint's identity");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("is a waypoint's identity"),
        "{}",
        err.message()
    );
    // The old name is an ordinary ServiceAccount again.
    let (old, _) = csr("shop", "shop-waypoint");
    assert!(ask(&h, Some("node-a-token"), "node-a", old).await.is_ok());
}
