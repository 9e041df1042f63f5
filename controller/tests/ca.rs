//! The CA over gRPC: who may obtain which identity, and bad CSRs.

mod support;

use std::sync::Arc;

use serde_json::json;
use support::{Harness, pod, state};
use weft_api::ca::CreateCertificateRequest;
use weft_api::ca::certificate_authority_client::CertificateAuthorityClient;
use weft_controller::auth::{BootstrapTokens, Caller};
use weft_identity::ca::generate_csr;
use weft_identity::{SpiffeId, WorkloadCertificate};

fn waypoint_gateway(ns: &str, name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
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
            name: "shop-waypoint".into(),
        },
    );
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
    let (own, _) = csr("shop", "shop-waypoint");
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
