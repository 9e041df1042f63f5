//! Kubernetes mode's callers, through TokenReview against the fake API
//! server: weft's own audience is required, only the ztunnel's and
//! waypoints' ServiceAccounts read the mesh config, and a ztunnel's token
//! must be bound to its node.

mod support;

use std::sync::Arc;

use support::fake_apiserver::FakeApiServer;
use support::{
    Harness, Subscriber, ambient_namespace, deployed_service_account, pod, state, waypoint_class,
    waypoint_gateway, waypoint_proxy,
};
use weft_api::ca::CreateCertificateRequest;
use weft_api::ca::certificate_authority_client::CertificateAuthorityClient;
use weft_controller::auth::{AuthError, Authenticator, CONTROLLER_AUDIENCE, Caller, TokenReviewer};
use weft_identity::SpiffeId;
use weft_identity::ca::generate_csr;

fn reviewer(api: &FakeApiServer, audiences: &[&str]) -> Arc<TokenReviewer> {
    TokenReviewer::new(
        api.client(),
        ("weft-system".into(), "ztunnel".into()),
        audiences.iter().map(|a| a.to_string()).collect(),
    )
}

#[tokio::test]
async fn only_tokens_for_the_controllers_audience_authenticate() {
    let api = FakeApiServer::start(&[]).await;
    // Every pod's automounted token: the API server's audience.
    api.add_token("automounted", ("shop", "web"), &[], None);
    api.add_token("weft", ("shop", "web"), &[CONTROLLER_AUDIENCE], None);
    api.add_token(
        "ztunnel",
        ("weft-system", "ztunnel"),
        &[CONTROLLER_AUDIENCE],
        Some("node-a"),
    );
    let auth = reviewer(&api, &[CONTROLLER_AUDIENCE]);
    let refused = auth.authenticate("automounted").await.expect_err("refused");
    assert!(matches!(refused, AuthError::Audience(_)), "{refused}");
    assert!(refused.to_string().contains(CONTROLLER_AUDIENCE));
    assert_eq!(
        auth.authenticate("weft").await.expect("weft token"),
        Caller::ServiceAccount {
            namespace: "shop".into(),
            name: "web".into()
        }
    );
    assert_eq!(
        auth.authenticate("ztunnel").await.expect("ztunnel token"),
        Caller::Ztunnel {
            node: "node-a".into()
        }
    );
    // An API server that does not say it checked our audience is not trusted
    // to have checked it.
    api.ignore_audiences();
    assert!(matches!(
        auth.authenticate("automounted").await,
        Err(AuthError::Audience(_))
    ));
}

#[tokio::test]
async fn kubernetes_service_accounts_subscribe_only_as_their_waypoint() {
    let api = FakeApiServer::start(&[]).await;
    api.add_token("web", ("shop", "web"), &[CONTROLLER_AUDIENCE], None);
    api.add_token(
        "waypoint",
        ("shop", "shop-waypoint-weft-waypoint"),
        &[CONTROLLER_AUDIENCE],
        None,
    );
    api.add_token(
        "ztunnel",
        ("weft-system", "ztunnel"),
        &[CONTROLLER_AUDIENCE],
        Some("node-a"),
    );
    let h = Harness::start(
        state(&[
            ambient_namespace(),
            waypoint_class(),
            waypoint_gateway("shop-waypoint"),
            deployed_service_account("shop", "shop-waypoint", "shop-waypoint-uid"),
            waypoint_gateway("other-waypoint"),
            deployed_service_account("shop", "other-waypoint", "other-waypoint-uid"),
            pod("shop", "web-1", "node-a", "web", "10.244.1.5"),
        ]),
        reviewer(&api, &[CONTROLLER_AUDIENCE]),
    )
    .await;
    let err = Subscriber::connect_as(
        h.channel().await,
        Some("web"),
        waypoint_proxy("shop", "shop-waypoint"),
    )
    .await
    .err()
    .expect("an application's ServiceAccount is refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("shop/web"), "{}", err.message());
    let err = Subscriber::connect_as(
        h.channel().await,
        Some("waypoint"),
        waypoint_proxy("shop", "other-waypoint"),
    )
    .await
    .err()
    .expect("another waypoint's config is refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let mut own = Subscriber::connect_as(
        h.channel().await,
        Some("waypoint"),
        waypoint_proxy("shop", "shop-waypoint"),
    )
    .await
    .expect("its own waypoint");
    assert!(own.next().await.full_snapshot);
    let mut ztunnel = Subscriber::connect(h.channel().await, Some("ztunnel"), "node-a")
        .await
        .expect("the ztunnel of its node");
    assert!(ztunnel.next().await.full_snapshot);
}

/// What an operator must read when the ztunnel's token names no node.
const UNBOUND: &str = "the ztunnel's token is bound to no node: ztunnels must present a \
     pod-bound ServiceAccount token (a projected serviceAccountToken volume with audience \
     weft.dev/controller); a token from `kubectl create token` without --bound-object-kind \
     Pod, or a legacy Secret token, is refused";

/// Security finding 8: a ztunnel token bound to no node (a legacy Secret
/// token, or `kubectl create token` without a pod) used to be taken for
/// whichever node the request named, so one stolen token obtained every
/// node's identities. It is refused now, by the authenticator and so by both
/// the CA and the config stream.
#[tokio::test]
async fn a_ztunnel_token_bound_to_no_node_is_refused() {
    let api = FakeApiServer::start(&[]).await;
    api.add_token(
        "unbound",
        ("weft-system", "ztunnel"),
        &[CONTROLLER_AUDIENCE],
        None,
    );
    api.add_token(
        "bound",
        ("weft-system", "ztunnel"),
        &[CONTROLLER_AUDIENCE],
        Some("node-a"),
    );
    let auth = reviewer(&api, &[CONTROLLER_AUDIENCE]);
    let refused = auth.authenticate("unbound").await.expect_err("refused");
    assert!(
        matches!(refused, AuthError::UnboundZtunnel { pod: None, .. }),
        "{refused:?}"
    );
    assert_eq!(refused.to_string(), UNBOUND);
    assert_eq!(
        auth.authenticate("bound").await.expect("node-bound token"),
        Caller::Ztunnel {
            node: "node-a".into()
        }
    );
    // Only the ztunnel's ServiceAccount needs a node: a waypoint's token
    // names none and is still accepted.
    api.add_token(
        "waypoint",
        ("shop", "shop-waypoint"),
        &[CONTROLLER_AUDIENCE],
        None,
    );
    assert!(auth.authenticate("waypoint").await.is_ok());

    let h = Harness::start(
        state(&[
            ambient_namespace(),
            pod("shop", "web-1", "node-a", "web", "10.244.1.5"),
        ]),
        auth,
    )
    .await;
    let err = Subscriber::connect(h.channel().await, Some("unbound"), "node-a")
        .await
        .err()
        .expect("the config stream refuses it");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(err.message(), UNBOUND);

    let id = SpiffeId::new("cluster.local", "shop", "web").expect("id");
    let (csr_pem, _) = generate_csr(&id).expect("csr");
    let mut ca = CertificateAuthorityClient::new(h.channel().await);
    let certificate = |token: &str| {
        let mut request = tonic::Request::new(CreateCertificateRequest {
            csr_pem: csr_pem.clone(),
            node: "node-a".into(),
            ttl_seconds: 600,
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        request
    };
    let err = ca
        .create_certificate(certificate("unbound"))
        .await
        .expect_err("the CA refuses it");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(err.message(), UNBOUND);
    // The same pod's identity with a token bound to its node.
    assert!(ca.create_certificate(certificate("bound")).await.is_ok());
}

fn token_reviews(api: &FakeApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.starts_with("POST") && r.contains("tokenreviews"))
        .count()
}

#[tokio::test]
async fn an_accepted_token_is_reviewed_once_per_cache_period_and_a_refused_one_every_time() {
    let api = FakeApiServer::start(&[]).await;
    api.add_token(
        "ztunnel",
        ("weft-system", "ztunnel"),
        &[CONTROLLER_AUDIENCE],
        Some("node-a"),
    );
    let auth = reviewer(&api, &[CONTROLLER_AUDIENCE]);
    for _ in 0..5 {
        auth.authenticate("ztunnel").await.expect("accepted");
    }
    assert_eq!(token_reviews(&api), 1, "one review for five calls");
    for _ in 0..3 {
        auth.authenticate("stolen")
            .await
            .expect_err("unknown token");
    }
    assert_eq!(token_reviews(&api), 4, "a refusal is not remembered");

    // Without a cache period, every call asks.
    let uncached = TokenReviewer::with_cache_ttl(
        api.client(),
        ("weft-system".into(), "ztunnel".into()),
        vec![CONTROLLER_AUDIENCE.into()],
        std::time::Duration::ZERO,
    );
    for _ in 0..2 {
        uncached.authenticate("ztunnel").await.expect("accepted");
    }
    assert_eq!(token_reviews(&api), 6);
}
