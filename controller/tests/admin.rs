//! The debug API (`/model`, `/subscribers`, `/registry`, `/healthz/ready`)
//! and the metrics endpoint, over real HTTP on loopback.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{Harness, Subscriber, pod, state};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_api::admin::ConfigSync;
use weft_cluster::model::ModelConfig;
use weft_cluster::registry::ClusterState;
use weft_controller::admin::{self, DebugState};
use weft_controller::auth::AllowAll;
use weft_controller::pipeline::{self, Debounce};
use weft_controller::server::subscribers::Subscribers;
use weft_testkit::eventually_async;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn debug_api_shows_model_registry_and_readiness() {
    let (states_tx, states) = watch::channel(Arc::new(ClusterState::default()));
    let debounce = Debounce {
        quiet: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    };
    let (models, _task) = pipeline::spawn(states.clone(), ModelConfig::default(), debounce);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(admin::serve_debug(
        listener,
        DebugState {
            models: models.clone(),
            states,
            subscribers: Arc::new(Subscribers::default()),
            replica: "weft-controller-0".to_string(),
        },
    ));

    // The same readiness on the metrics port, which the kubelet can reach.
    let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_addr = metrics.local_addr().expect("addr");
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    tokio::spawn(admin::serve_metrics(metrics, handle, models.clone()));

    let (status, _) = get(addr, "/healthz/ready").await;
    assert_eq!(status, 503, "not ready before the registry has synced");
    let (status, _) = get(metrics_addr, "/healthz/ready").await;
    assert_eq!(status, 503, "the metrics port says the same");

    states_tx.send_replace(Arc::new(state(&[pod(
        "shop",
        "a",
        "node-a",
        "web",
        "10.244.1.1",
    )])));
    let mut models = models;
    tokio::time::timeout(Duration::from_secs(10), models.wait_for(|m| m.version > 0))
        .await
        .expect("model built")
        .expect("pipeline alive");

    let (status, _) = get(addr, "/healthz/ready").await;
    assert_eq!(status, 200);
    let (status, body) = get(metrics_addr, "/healthz/ready").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, body) = get(addr, "/model").await;
    assert_eq!(status, 200);
    let model: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(model["workloads"][0]["uid"], "uid-a");
    assert_eq!(model["workloads"][0]["node"], "node-a");
    let (_, body) = get(addr, "/registry").await;
    let registry: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(registry["synced"], true);
    let (status, _) = get(addr, "/nope").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn subscribers_are_listed() {
    let h = Harness::start(state(&[]), Arc::new(AllowAll)).await;
    let mut sub = Subscriber::connect(h.channel().await, None, "node-a")
        .await
        .expect("subscribe");
    let snap = sub.next().await;
    sub.ack(&snap).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_tx, states) = watch::channel(Arc::new(ClusterState::default()));
    let (models, _task) =
        pipeline::spawn(states.clone(), ModelConfig::default(), Debounce::default());
    tokio::spawn(admin::serve_debug(
        listener,
        DebugState {
            models,
            states,
            subscribers: h.subscribers.clone(),
            replica: "weft-controller-0".to_string(),
        },
    ));
    let (status, body) = get(addr, "/subscribers").await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(list[0]["node"], "node-a");
    assert_eq!(list[0]["kind"], "PROXY_KIND_ZTUNNEL");
    assert_eq!(list[0]["types"].as_array().map(Vec::len), Some(5));
}

/// Issue 17: each proxy's last version sent, acknowledged and refused (with
/// the refusal's message), and where that leaves it, as `weftctl
/// proxy-status` and `weftctl check` read it.
#[tokio::test]
async fn proxy_status_says_what_each_proxy_was_sent_acked_and_refused() {
    let a = pod("shop", "a", "node-a", "web", "10.244.1.1");
    let h = Harness::start(state(std::slice::from_ref(&a)), Arc::new(AllowAll)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(admin::serve_debug(
        listener,
        DebugState {
            models: h.models.clone(),
            states: h.states_rx.clone(),
            subscribers: h.subscribers.clone(),
            replica: "weft-controller-0".to_string(),
        },
    ));
    let status = async || -> weft_api::admin::ProxyStatusReport {
        let (code, body) = get(addr, "/proxy-status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("the report's JSON")
    };
    let mut sub = Subscriber::connect(h.channel().await, None, "node-a")
        .await
        .expect("subscribe");
    let snap = sub.next().await;
    sub.ack(&snap).await;
    eventually_async("the ack recorded", Duration::from_secs(5), async || {
        status().await.proxies.first().map(|p| p.sync) == Some(ConfigSync::Synced)
    })
    .await;
    let report = status().await;
    assert_eq!(report.controller, "weft-controller-0");
    let proxy = &report.proxies[0];
    assert_eq!(
        (proxy.node.as_str(), proxy.kind.as_str()),
        ("node-a", "PROXY_KIND_ZTUNNEL")
    );
    assert_eq!(proxy.sent_version, report.model_version);
    assert_eq!(proxy.acked_version, report.model_version);
    assert_eq!(proxy.nacked_version, None);

    // A version it refuses: it runs the older one, and says why.
    h.set_state(&[a.clone(), pod("shop", "b", "node-a", "web", "10.244.1.2")]);
    let refused = sub.next().await;
    sub.nack(&refused, "route r1: unknown filter").await;
    eventually_async("the nack recorded", Duration::from_secs(5), async || {
        status().await.proxies.first().map(|p| p.sync) == Some(ConfigSync::Nacked)
    })
    .await;
    let report = status().await;
    let proxy = &report.proxies[0];
    assert_eq!(proxy.nacked_version, Some(report.model_version));
    assert!(proxy.acked_version < report.model_version);
    assert_eq!(proxy.nack.as_deref(), Some("route r1: unknown filter"));

    // The next version it takes clears it.
    h.set_state(&[
        a.clone(),
        pod("shop", "b", "node-a", "web", "10.244.1.2"),
        pod("shop", "c", "node-a", "web", "10.244.1.3"),
    ]);
    let next = sub.next().await;
    sub.ack(&next).await;
    eventually_async("synced again", Duration::from_secs(5), async || {
        status().await.proxies.first().map(|p| p.sync) == Some(ConfigSync::Synced)
    })
    .await;
}
