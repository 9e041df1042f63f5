//! A local run directory laid out as the e2e harness lays it out, with
//! stand-ins for the parts weftctl reads:
//!
//! - each node's ztunnel admin API: a small HTTP server on the real unix
//!   socket path, serving `weft_api::admin` documents the test sets;
//! - each node's agent: a server on its request socket answering the
//!   coverage request with a report the test sets (the real protocol types);
//! - the controller's debug API: the controller's own `serve_debug` on
//!   loopback, over a model built from the test's manifests.
//!
//! This tests weftctl's clients and rendering against the real wire types;
//! the cluster tests (e2e) run it against the real components.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use weft_cni::enrollment::{AgentRequest, AgentResponse};
use weft_cni::report::CoverageReport;

/// A route's answer.
#[derive(Clone, Debug)]
pub enum Answer {
    /// 200 with this body.
    Ok(String),
    /// Another status.
    Status(u16, String),
}

/// Answers by path (without the query).
pub type Routes = Arc<Mutex<HashMap<String, Answer>>>;

/// Serves `routes` over HTTP/1 on a unix socket at `path`.
pub fn serve_admin(path: &Path, routes: Routes) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("socket dir");
    }
    let listener = UnixListener::bind(path).expect("bind admin socket");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let answer = routes
                        .lock()
                        .expect("routes")
                        .get(req.uri().path())
                        .cloned()
                        .unwrap_or(Answer::Status(404, "no such route".into()));
                    async move {
                        let (status, body) = match answer {
                            Answer::Ok(body) => (200, body),
                            Answer::Status(s, body) => (s, body),
                        };
                        let mut response = http::Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() =
                            http::StatusCode::from_u16(status).expect("status");
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// Answers the agent's coverage request with whatever `report` holds.
pub fn serve_agent(path: &Path, report: Arc<Mutex<CoverageReport>>) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("socket dir");
    }
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind agent socket");
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            if stream.read_to_end(&mut request).is_err() {
                continue;
            }
            let answer = match serde_json::from_slice::<AgentRequest>(&request) {
                Ok(AgentRequest::Coverage) => {
                    AgentResponse::Coverage(report.lock().expect("report").clone())
                }
                _ => AgentResponse::Error {
                    message: "unexpected request".into(),
                },
            };
            let _ = stream.write_all(&serde_json::to_vec(&answer).expect("json"));
        }
    });
}

/// Serves the controller's real debug API over the model of `manifests`.
pub async fn serve_controller(manifests: &Path) -> std::net::SocketAddr {
    use weft_cluster::registry::{RegistryConfig, files};
    use weft_controller::admin::{DebugState, serve_debug};
    use weft_controller::pipeline::ModelVersion;
    let state = files::load_dir(manifests, &RegistryConfig::default());
    let model = weft_cluster::model::build(&state, &Default::default());
    let version = ModelVersion {
        version: 1,
        model: Arc::new(model),
        ..ModelVersion::initial()
    };
    let (_models_tx, models) = tokio::sync::watch::channel(Arc::new(version));
    let (_states_tx, states) = tokio::sync::watch::channel(Arc::new(state));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        // Keep the senders alive as long as the server.
        let _keep = (_models_tx, _states_tx);
        serve_debug(
            listener,
            DebugState {
                models,
                states,
                subscribers: Default::default(),
                replica: "weft-controller-test".to_string(),
            },
        )
        .await
    });
    addr
}

/// A run directory with nodes, their sockets and the manifests.
pub struct Run {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
}

/// One node's stand-ins.
pub struct Node {
    pub name: String,
    pub admin: Routes,
    pub coverage: Arc<Mutex<CoverageReport>>,
}

impl Run {
    /// The run directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The manifest directory.
    pub fn manifests(&self) -> PathBuf {
        self.path().join("manifests")
    }

    /// Sets what a node's ztunnel answers on `path`.
    pub fn set(&self, node: usize, path: &str, answer: Answer) {
        self.nodes[node]
            .admin
            .lock()
            .expect("routes")
            .insert(path.to_string(), answer);
    }

    /// Sets a JSON document a node's ztunnel serves.
    pub fn set_json<T: serde::Serialize>(&self, node: usize, path: &str, doc: &T) {
        self.set(
            node,
            path,
            Answer::Ok(serde_json::to_string(doc).expect("json")),
        );
    }
}

/// Builds a run: `manifests` (a YAML text) in `<run>/manifests/cluster.yaml`,
/// the nodes with their sockets, CNI dirs with weft-cni installed, and the
/// controller's debug API; state.json as the harness writes it, plus the
/// controller's address.
pub async fn run(nodes: &[&str], manifests: &str) -> Run {
    let dir = tempfile::Builder::new()
        .prefix("weftctl-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let m = dir.path().join("manifests");
    std::fs::create_dir_all(&m).expect("manifests");
    std::fs::write(m.join("cluster.yaml"), manifests).expect("write");
    let controller = serve_controller(&m).await;
    let mut out = Vec::new();
    for name in nodes {
        let node_dir = dir.path().join("nodes").join(name);
        let admin: Routes = Arc::default();
        admin
            .lock()
            .expect("routes")
            .insert("/healthz/ready".into(), Answer::Ok("ready\n".into()));
        serve_admin(&node_dir.join("ztunnel-admin.sock"), admin.clone());
        let coverage = Arc::new(Mutex::new(CoverageReport {
            node: name.to_string(),
            ztunnels_connected: 1,
            pods: Vec::new(),
            local_legs: Default::default(),
        }));
        serve_agent(&node_dir.join("cni.sock"), coverage.clone());
        std::fs::create_dir_all(node_dir.join("cni/net.d")).expect("net.d");
        std::fs::create_dir_all(node_dir.join("cni/bin")).expect("bin");
        std::fs::write(
            node_dir.join("cni/net.d/10-weft.conflist"),
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"weft-cni"}]}"#,
        )
        .expect("conflist");
        std::fs::write(node_dir.join("cni/bin/weft-cni"), "").expect("plugin");
        out.push(Node {
            name: name.to_string(),
            admin,
            coverage,
        });
    }
    let state = serde_json::json!({
        "run_id": "weft-test",
        "nodes": nodes,
        "netns": [],
        "controller": {"adminAddress": controller.to_string()},
    });
    std::fs::write(
        dir.path().join("state.json"),
        serde_json::to_string_pretty(&state).expect("json"),
    )
    .expect("state");
    Run { dir, nodes: out }
}

/// What a weftctl invocation did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs weftctl against the run.
pub async fn weftctl(run: &Run, args: &[&str]) -> Output {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .arg("--run-dir")
        .arg(run.path())
        .args(args)
        .env_remove("WEFT_RUN_DIR")
        .env_remove("WEFT_MANIFESTS")
        .env_remove("KUBECONFIG")
        .output()
        .await
        .expect("run weftctl");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
