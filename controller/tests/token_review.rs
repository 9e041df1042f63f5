//! Kubernetes mode's callers, through TokenReview against the fake API
//! server: weft's own audience is required, and only the ztunnel's and
//! waypoints' ServiceAccounts read the mesh config.

mod support;

use std::sync::Arc;

use support::fake_apiserver::FakeApiServer;
use support::{
    Harness, Subscriber, ambient_namespace, pod, state, waypoint_class, waypoint_gateway,
    waypoint_proxy,
};
use weft_controller::auth::{AuthError, Authenticator, CONTROLLER_AUDIENCE, Caller, TokenReviewer};

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
            node: Some("node-a".into())
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
        ("shop", "shop-waypoint"),
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
            waypoint_gateway("other-waypoint"),
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
