//! The config stream over real gRPC with TLS: snapshot, add/change/remove,
//! NACK, reconnect, and who may subscribe.

mod support;

use std::sync::Arc;

use support::{Harness, Subscriber, pod, state};
use weft_api::config::{ConfigResponse, ResourceType, resource};
use weft_controller::auth::{AllowAll, BootstrapTokens, Caller};

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
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while h.subscribers.list().first().map(|s| s.acked_version) != Some(remove.version) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("ack recorded");
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
            node: Some("node-a".into()),
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
