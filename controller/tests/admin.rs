//! The debug API (`/model`, `/subscribers`, `/registry`, `/healthz/ready`)
//! and the metrics endpoint, over real HTTP on loopback.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{Harness, Subscriber, pod, state};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_cluster::model::ModelConfig;
use weft_cluster::registry::ClusterState;
use weft_controller::admin::{self, DebugState};
use weft_controller::auth::AllowAll;
use weft_controller::pipeline::{self, Debounce};
use weft_controller::server::subscribers::Subscribers;

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
        },
    ));
    let (status, body) = get(addr, "/subscribers").await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(list[0]["node"], "node-a");
    assert_eq!(list[0]["kind"], "PROXY_KIND_ZTUNNEL");
    assert_eq!(list[0]["types"].as_array().map(Vec::len), Some(5));
}
