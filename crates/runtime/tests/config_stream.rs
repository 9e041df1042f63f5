//! The proxies' config stream client over real gRPC (tonic, TLS): it subscribes,
//! applies and ACKs good responses, NACKs a bad one and keeps the last good
//! config, and reconnects after the stream breaks, getting a new snapshot.
//!
//! The server side here is a small ConfigDiscovery service that plays a
//! scripted sequence of responses and records what the client answered.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use weft_api::config::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use weft_api::config::{
    ConfigRequest, ConfigResponse, Resource, Subscribe, Workload, config_request, resource,
};
use weft_runtime::config_client::{ConfigClient, TokenSource, channel};
use weft_runtime::store::WorkloadStore;
use weft_testkit::TestCa;

fn workload(uid: &str, ip: &str, sa: &str) -> Resource {
    Resource {
        kind: Some(resource::Kind::Workload(Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "shop".into(),
            service_account: sa.into(),
            addresses: vec![ip.into()],
            ..Default::default()
        })),
    }
}

fn response(nonce: &str, version: u64, full: bool, resources: Vec<Resource>) -> ConfigResponse {
    ConfigResponse {
        nonce: nonce.into(),
        version,
        full_snapshot: full,
        resources,
        removed: vec![],
    }
}

#[derive(Default)]
struct Script {
    /// What each new stream gets, in order; the stream ends after its list.
    streams: Mutex<Vec<Vec<ConfigResponse>>>,
    /// What the client sent: "subscribe", "ack <nonce>", "nack <nonce> <msg>".
    heard: Mutex<Vec<String>>,
    tokens: Mutex<Vec<String>>,
}

struct Scripted(Arc<Script>);

type Out = Pin<Box<dyn Stream<Item = Result<ConfigResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for Scripted {
    type SubscribeStream = Out;

    async fn subscribe(
        &self,
        request: Request<Streaming<ConfigRequest>>,
    ) -> Result<Response<Out>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.0.tokens.lock().unwrap().push(token);
        let mut incoming = request.into_inner();
        let script = self.0.clone();
        let responses = {
            let mut streams = script.streams.lock().unwrap();
            if streams.is_empty() {
                Vec::new()
            } else {
                streams.remove(0)
            }
        };
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut responses = responses.into_iter();
            while let Some(Ok(msg)) = incoming.next().await {
                let heard = match msg.kind {
                    Some(config_request::Kind::Subscribe(_)) => "subscribe".to_owned(),
                    Some(config_request::Kind::Ack(a)) => format!("ack {}", a.nonce),
                    Some(config_request::Kind::Nack(n)) => {
                        format!("nack {} {}", n.nonce, n.message)
                    }
                    None => "empty".into(),
                };
                script.heard.lock().unwrap().push(heard);
                // One response per client message: after Subscribe, and
                // after each ACK/NACK; then end the stream.
                match responses.next() {
                    Some(r) => {
                        if tx.send(Ok(r)).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tokio::test]
async fn acks_nacks_keeps_the_last_good_config_and_resnapshots_after_reconnect() {
    let ca = TestCa::new();
    let (chain, key) = ca
        .ca
        .issue_serving(
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let script = Arc::new(Script::default());
    *script.streams.lock().unwrap() = vec![
        vec![
            response("n1", 1, true, vec![workload("a", "10.0.0.1", "web")]),
            response("n2", 2, false, vec![workload("b", "10.0.0.2", "web")]),
            // Invalid: an address that is not an IP.
            response("n3", 3, false, vec![workload("c", "ten-dot-oh", "web")]),
        ],
        // After the reconnect: a snapshot without `a`.
        vec![response(
            "n4",
            4,
            true,
            vec![workload("b", "10.0.0.2", "web")],
        )],
    ];

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // tonic's server builds its rustls config from the process default
    // provider, which the workspace's two compiled providers leave unset;
    // weft's processes install theirs the same way.
    weft_hbone::tls::install_process_provider();
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(chain.concat(), key));
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(ConfigDiscoveryServer::new(Scripted(script.clone())))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, "node-a-secret\n").unwrap();
    let store = WorkloadStore::default();
    let client = ConfigClient {
        channel: channel(&format!("https://{addr}"), ca.root_pem()).unwrap(),
        token: TokenSource::new(token_path),
        store: store.clone(),
    };
    let stop = CancellationToken::new();
    tokio::spawn(client.run(Subscribe::default(), stop.clone()));

    // Wait (bounded) for the reconnect's snapshot to be applied.
    let mut versions = store.subscribe();
    tokio::time::timeout(Duration::from_secs(30), versions.wait_for(|v| *v == 4))
        .await
        .expect("snapshot after reconnect")
        .unwrap();
    stop.cancel();

    let heard = script.heard.lock().unwrap().clone();
    assert_eq!(heard[0], "subscribe");
    assert_eq!(heard[1], "ack n1");
    assert_eq!(heard[2], "ack n2");
    assert!(
        heard[3].starts_with("nack n3") && heard[3].contains("ten-dot-oh"),
        "{heard:?}"
    );
    assert_eq!(heard[4], "subscribe", "reconnected: {heard:?}");
    assert_eq!(
        script.tokens.lock().unwrap()[0],
        "Bearer node-a-secret",
        "token from the file"
    );
    // The snapshot replaced everything: `a` is gone, `b` stays, `c` never came.
    assert!(store.workload("a").is_none());
    assert!(store.workload("b").is_some());
    assert!(store.workload("c").is_none());
}
