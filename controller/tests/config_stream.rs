//! The config stream over real gRPC with TLS: snapshot, add/change/remove,
//! NACK, reconnect, who may subscribe, and how much one caller may hold.

mod support;

use std::sync::Arc;

use support::{
    Harness, Limits, Subscriber, ambient_namespace, deployed_service_account, pod, state,
    waypoint_class, waypoint_gateway, waypoint_proxy,
};
use weft_api::config::{ConfigResponse, ResourceType, resource};
use weft_controller::auth::{AllowAll, BootstrapTokens, Caller};
use weft_testkit::eventually_async;

fn workload_uids(r: &ConfigResponse) -> Vec<String> {
    r.resources
        .iter()
        .filter_map(|res| match &res.kind {
            Some(resource::Kind::Workload(w)) => Some(w.uid.clone()),
            _ => None,
        })
        .collect()
}

fn removed(r: &ConfigResponse) -> Vec<(i32, String)> {
    r.removed
        .iter()
        .map(|k| (k.r#type, k.key.clone()))
        .collect()
}

#[tokio::test]
async fn snapshot_then_add_change_remove() {
    let a = pod("shop", "a", "node-a", "web", "10.244.1.1");
    let h = Harness::start(state(std::slice::from_ref(&a)), Arc::new(AllowAll)).await;
    let mut sub = Subscriber::connect(h.channel().await, None, "node-a")
        .await
        .expect("subscribe");

    let snap = sub.next().await;
    assert!(snap.full_snapshot);
    assert_eq!(workload_uids(&snap), vec!["uid-a"]);
    assert!(snap.resources.iter().any(|r| matches!(&r.kind, Some(resource::Kind::TrustBundle(t)) if t.roots_pem == vec![h.root_pem.clone()])));
    sub.ack(&snap).await;

    // Add.
    let b = pod("shop", "b", "node-b", "web", "10.244.2.1");
    h.set_state(&[a.clone(), b.clone()]);
    let add = sub.next().await;
    assert!(!add.full_snapshot);
    assert!(add.version > snap.version);
    assert_eq!(workload_uids(&add), vec!["uid-b"]);
    assert!(add.removed.is_empty());
    sub.ack(&add).await;

    // Change.
    let b2 = pod("shop", "b", "node-b", "web", "10.244.2.9");
    h.set_state(&[a.clone(), b2.clone()]);
    let change = sub.next().await;
    assert_eq!(workload_uids(&change), vec!["uid-b"]);
    let Some(resource::Kind::Workload(w)) = &change.resources[0].kind else {
        panic!("workload")
    };
    assert_eq!(w.addresses, vec!["10.244.2.9"]);
    sub.ack(&change).await;

    // Remove.
    h.set_state(std::slice::from_ref(&b2));
    let remove = sub.next().await;
    assert!(remove.resources.is_empty());
    assert_eq!(
        removed(&remove),
        vec![(ResourceType::Workload as i32, "uid-a".to_string())]
    );
    sub.ack(&remove).await;

    // The debug view sees the subscriber at the acked version.
    eventually_async(
        "the ack to be recorded",
        std::time::Duration::from_secs(5),
        async || h.subscribers.list().first().map(|s| s.acked_version) == Some(remove.version),
    )
    .await;
}

#[tokio::test]
async fn nack_keeps_old_config_and_next_push_resends() {
    let a = pod("shop", "a", "node-a", "web", "10.244.1.1");
    let h = Harness::start(state(std::slice::from_ref(&a)), Arc::new(AllowAll)).await;
    let mut sub = Subscriber::connect(h.channel().await, None, "node-a")
        .await
        .expect("subscribe");
    let snap = sub.next().await;
    sub.ack(&snap).await;

    let b = pod("shop", "b", "node-a", "web", "10.244.1.2");
    h.set_state(&[a.clone(), b.clone()]);
    let add_b = sub.next().await;
    assert_eq!(workload_uids(&add_b), vec!["uid-b"]);
    sub.nack(&add_b, "cannot apply").await;

    // The controller does not count b as applied: the next change carries
    // b again, computed against the last ACKed config.
    let c = pod("shop", "c", "node-a", "web", "10.244.1.3");
    h.set_state(&[a.clone(), b.clone(), c.clone()]);
    let next = sub.next().await;
    assert_eq!(workload_uids(&next), vec!["uid-b", "uid-c"]);
    sub.ack(&next).await;
    let info = h.subscribers.list();
    assert_eq!(info[0].nacks, 1);
    assert_eq!(info[0].last_nack.as_deref(), Some("cannot apply"));
}

#[tokio::test]
async fn reconnect_gets_a_full_snapshot() {
    let a = pod("shop", "a", "node-a", "web", "10.244.1.1");
    let h = Harness::start(state(std::slice::from_ref(&a)), Arc::new(AllowAll)).await;
    let mut sub = Subscriber::connect(h.channel().await, None, "node-a")
        .await
        .expect("subscribe");
    let snap = sub.next().await;
    sub.ack(&snap).await;
    drop(sub);

    let b = pod("shop", "b", "node-b", "web", "10.244.2.1");
    h.set_state(&[a.clone(), b.clone()]);
    let mut again = Subscriber::connect(h.channel().await, None, "node-a")
        .await
        .expect("subscribe");
    let mut snap2 = again.next().await;
    // The model may not have caught up with the change yet; take the newest.
    assert!(snap2.full_snapshot);
    if workload_uids(&snap2).len() == 1 {
        again.ack(&snap2).await;
        snap2 = again.next().await;
        assert_eq!(workload_uids(&snap2), vec!["uid-b"]);
    } else {
        assert_eq!(workload_uids(&snap2), vec!["uid-a", "uid-b"]);
    }
}

#[tokio::test]
async fn subscribers_must_authenticate_as_their_node() {
    let mut tokens = BootstrapTokens::default();
    tokens.insert(
        "token-a",
        Caller::Ztunnel {
            node: "node-a".into(),
        },
    );
    let h = Harness::start(state(&[]), Arc::new(tokens)).await;
    let err = Subscriber::connect(h.channel().await, None, "node-a")
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = Subscriber::connect(h.channel().await, Some("wrong"), "node-a")
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = Subscriber::connect(h.channel().await, Some("token-a"), "node-b")
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let mut ok = Subscriber::connect(h.channel().await, Some("token-a"), "node-a")
        .await
        .expect("accepted");
    assert!(ok.next().await.full_snapshot);
}

#[tokio::test]
async fn concurrent_snapshots_are_bounded() {
    let a = pod("shop", "a", "node-a", "web", "10.244.1.1");
    let h = Harness::start_with(state(std::slice::from_ref(&a)), Arc::new(AllowAll), 1).await;
    let mut first = Subscriber::connect(h.channel().await, None, "node-a")
        .await
        .expect("subscribe");
    let snap = first.next().await;
    let mut second = Subscriber::connect(h.channel().await, None, "node-b")
        .await
        .expect("subscribe");
    // The only snapshot slot is held until the first subscriber answers.
    let early = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        second.responses.message(),
    )
    .await;
    assert!(
        early.is_err(),
        "second snapshot sent while the first was unanswered"
    );
    first.ack(&snap).await;
    assert!(second.next().await.full_snapshot);
}

fn token(tokens: &mut BootstrapTokens, token: &str, caller: Caller) {
    tokens.insert(token, caller);
}

fn node(name: &str) -> Caller {
    Caller::Ztunnel { node: name.into() }
}

fn service_account(namespace: &str, name: &str) -> Caller {
    Caller::ServiceAccount {
        namespace: namespace.into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn only_a_waypoints_service_account_subscribes_and_only_as_its_gateway() {
    let mut tokens = BootstrapTokens::default();
    token(&mut tokens, "web-token", service_account("shop", "web"));
    token(
        &mut tokens,
        "wp-token",
        service_account("shop", "shop-waypoint-weft-waypoint"),
    );
    // The name the deployer used to give it (the Gateway's), and its name
    // now on a ServiceAccount the deployer did not make.
    token(
        &mut tokens,
        "old-name-token",
        service_account("shop", "shop-waypoint"),
    );
    token(
        &mut tokens,
        "impostor-token",
        service_account("shop", "other-waypoint-weft-waypoint"),
    );
    let h = Harness::start(
        state(&[
            ambient_namespace(),
            waypoint_class(),
            waypoint_gateway("shop-waypoint"),
            deployed_service_account("shop", "shop-waypoint", "shop-waypoint-uid"),
            waypoint_gateway("other-waypoint"),
            deployed_service_account("shop", "other-waypoint", "a-deleted-gateway-uid"),
            pod("shop", "web-1", "node-a", "web", "10.244.1.5"),
        ]),
        Arc::new(tokens),
    )
    .await;

    // Any pod's ServiceAccount authenticates; it reads nothing, also when
    // it is named as a waypoint's is or was.
    for (token, sa, as_what) in [
        ("web-token", "web", waypoint_proxy("shop", "shop-waypoint")),
        ("web-token", "web", Subscriber::ztunnel_proxy("node-a")),
        (
            "old-name-token",
            "shop-waypoint",
            waypoint_proxy("shop", "shop-waypoint"),
        ),
        (
            "impostor-token",
            "other-waypoint-weft-waypoint",
            waypoint_proxy("shop", "other-waypoint"),
        ),
    ] {
        let err = Subscriber::connect_as(h.channel().await, Some(token), as_what)
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains(&format!(
                "service account shop/{sa} is neither the ztunnel's nor a waypoint's"
            )),
            "{}",
            err.message()
        );
    }
    // A waypoint's ServiceAccount cannot read as another waypoint or a ztunnel.
    for as_what in [
        waypoint_proxy("shop", "other-waypoint"),
        waypoint_proxy("bank", "shop-waypoint"),
    ] {
        let err = Subscriber::connect_as(h.channel().await, Some("wp-token"), as_what)
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message()
                .contains("may subscribe only as waypoint shop/shop-waypoint"),
            "{}",
            err.message()
        );
    }
    let err = Subscriber::connect(h.channel().await, Some("wp-token"), "node-a")
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // As its own Gateway it is served.
    let mut own = Subscriber::connect_as(
        h.channel().await,
        Some("wp-token"),
        waypoint_proxy("shop", "shop-waypoint"),
    )
    .await
    .expect("served");
    assert!(own.next().await.full_snapshot);
}

#[tokio::test]
async fn one_caller_gets_at_most_its_streams_and_others_are_still_served() {
    let mut tokens = BootstrapTokens::default();
    token(&mut tokens, "token-a", node("node-a"));
    token(&mut tokens, "token-b", node("node-b"));
    let limits = Limits {
        streams_per_caller: 2,
        ..Limits::default()
    };
    let a = pod("shop", "a", "node-a", "web", "10.244.1.1");
    let h = Harness::start_limited(state(std::slice::from_ref(&a)), Arc::new(tokens), limits).await;
    let mut first = Subscriber::connect(h.channel().await, Some("token-a"), "node-a")
        .await
        .expect("first");
    let _second = Subscriber::connect(h.channel().await, Some("token-a"), "node-a")
        .await
        .expect("second");
    let err = Subscriber::connect(h.channel().await, Some("token-a"), "node-a")
        .await
        .err()
        .expect("the third stream of one caller is refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(
        err.message()
            .contains("the ztunnel of node \"node-a\" already has 2 config streams open"),
        "{}",
        err.message()
    );
    // Another caller is not affected.
    let mut other = Subscriber::connect(h.channel().await, Some("token-b"), "node-b")
        .await
        .expect("another caller");
    assert!(other.next().await.full_snapshot);
    // A closed stream frees its place.
    assert!(first.next().await.full_snapshot);
    drop(first);
    eventually_async(
        "a place to be freed",
        std::time::Duration::from_secs(5),
        async || {
            Subscriber::connect(h.channel().await, Some("token-a"), "node-a")
                .await
                .is_ok()
        },
    )
    .await;
}

#[tokio::test]
async fn one_caller_cannot_take_every_snapshot_slot() {
    let mut tokens = BootstrapTokens::default();
    token(&mut tokens, "token-a", node("node-a"));
    token(&mut tokens, "token-b", node("node-b"));
    let limits = Limits {
        concurrent_snapshots: 3,
        snapshots_per_caller: 2,
        ..Limits::default()
    };
    let a = pod("shop", "a", "node-a", "web", "10.244.1.1");
    let h = Harness::start_limited(state(std::slice::from_ref(&a)), Arc::new(tokens), limits).await;
    // Caller a opens three streams and never answers a snapshot.
    let mut held = Vec::new();
    let mut snaps = Vec::new();
    for _ in 0..3 {
        let mut sub = Subscriber::connect(h.channel().await, Some("token-a"), "node-a")
            .await
            .expect("subscribe");
        if snaps.len() < 2 {
            let snap = sub.next().await;
            assert!(snap.full_snapshot);
            snaps.push(snap);
        }
        held.push(sub);
    }
    let third = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        held[2].responses.message(),
    )
    .await;
    assert!(
        third.is_err(),
        "a caller held more than its share of snapshot slots"
    );
    // The slot it could not take is still there for a new proxy.
    let mut other = Subscriber::connect(h.channel().await, Some("token-b"), "node-b")
        .await
        .expect("another caller");
    assert!(other.next().await.full_snapshot);
    // Once a answers, its third stream gets its snapshot.
    held[0].ack(&snaps[0]).await;
    assert!(held[2].next().await.full_snapshot);
}

fn authorization_keys(r: &ConfigResponse) -> Vec<String> {
    let mut keys: Vec<String> = r
        .resources
        .iter()
        .filter_map(|res| match &res.kind {
            Some(resource::Kind::Authorization(p)) => Some(format!("{}/{}", p.namespace, p.name)),
            _ => None,
        })
        .collect();
    keys.sort();
    keys
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion": "security.weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A pod with labels (`pod` has none).
fn labelled_pod(ns: &str, name: &str, node: &str, ip: &str, app: &str) -> serde_json::Value {
    let mut p = pod(ns, name, node, name, ip);
    p["metadata"]["labels"] = serde_json::json!({"app": app});
    p
}

/// Security finding 5: each proxy is sent the policies and routes it
/// enforces, not the whole mesh's. A node's ztunnel gets the mesh-wide
/// policies and those of the workloads on its node; when a workload of
/// another namespace lands on the node, that namespace's policies follow in
/// a delta, and go again when it leaves. A waypoint gets the policies that
/// target its Gateway or the Services bound to it, and those of the
/// workloads it forwards to.
#[tokio::test]
async fn each_proxy_is_sent_only_the_policies_it_enforces() {
    let allow = serde_json::json!({"rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]});
    let mut objects = vec![
        ambient_namespace(),
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "bank", "labels": {"weft.dev/dataplane-mode": "ambient"}}}),
        waypoint_class(),
        waypoint_gateway("shop-waypoint"),
        deployed_service_account("shop", "shop-waypoint", "shop-waypoint-uid"),
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop",
                         "labels": {"weft.dev/use-waypoint": "shop-waypoint"}},
            "spec": {"clusterIP": "10.96.0.5", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80}]}}),
        labelled_pod("shop", "web-1", "node-a", "10.244.1.5", "web"),
        labelled_pod("bank", "vault-1", "node-b", "10.244.2.5", "vault"),
        policy("weft-system", "mesh-wide", allow.clone()),
        policy("shop", "shop-ns", allow.clone()),
        policy("bank", "bank-ns", allow.clone()),
        policy(
            "bank",
            "vault-only",
            serde_json::json!({"selector": {"matchLabels": {"app": "vault"}}, "rules": [{}]}),
        ),
        policy(
            "shop",
            "at-the-waypoint",
            serde_json::json!({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "shop-waypoint"}],
                               "rules": [{}]}),
        ),
    ];
    let h = Harness::start(state(&objects), Arc::new(AllowAll)).await;
    let mut node_a = Subscriber::connect(h.channel().await, None, "node-a")
        .await
        .expect("node-a");
    let mut node_b = Subscriber::connect(h.channel().await, None, "node-b")
        .await
        .expect("node-b");
    let mut waypoint = Subscriber::connect_as(
        h.channel().await,
        None,
        waypoint_proxy("shop", "shop-waypoint"),
    )
    .await
    .expect("waypoint");

    let a = node_a.next().await;
    assert_eq!(
        authorization_keys(&a),
        ["shop/shop-ns", "weft-system/mesh-wide"]
    );
    // Every workload still: routing and identity need them.
    assert_eq!(workload_uids(&a).len(), 2);
    node_a.ack(&a).await;
    let b = node_b.next().await;
    assert_eq!(
        authorization_keys(&b),
        ["bank/bank-ns", "bank/vault-only", "weft-system/mesh-wide"]
    );
    node_b.ack(&b).await;
    let w = waypoint.next().await;
    assert_eq!(
        authorization_keys(&w),
        [
            "shop/at-the-waypoint",
            "shop/shop-ns",
            "weft-system/mesh-wide"
        ]
    );
    waypoint.ack(&w).await;

    // A bank pod lands on node-a: bank's namespace policy follows it there
    // (not vault-only: the pod does not select it).
    let teller = labelled_pod("bank", "teller-1", "node-a", "10.244.1.6", "teller");
    objects.push(teller);
    h.set_state(&objects);
    let came = node_a.next().await;
    assert_eq!(workload_uids(&came), ["uid-teller-1"]);
    assert_eq!(authorization_keys(&came), ["bank/bank-ns"]);
    assert!(came.removed.is_empty());
    node_a.ack(&came).await;
    // node-b learns of the workload, not of any policy.
    let b_delta = node_b.next().await;
    assert_eq!(workload_uids(&b_delta), ["uid-teller-1"]);
    assert!(authorization_keys(&b_delta).is_empty());
    node_b.ack(&b_delta).await;

    // It leaves: the policy goes from node-a's ztunnel with it.
    objects.pop();
    h.set_state(&objects);
    let went = node_a.next().await;
    assert_eq!(
        removed(&went),
        [
            (ResourceType::Workload as i32, "uid-teller-1".to_string()),
            (
                ResourceType::Authorization as i32,
                "bank/bank-ns".to_string()
            ),
        ]
    );
    node_a.ack(&went).await;
}
