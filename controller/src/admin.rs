//! The metrics endpoint (:15014) and the debug API (127.0.0.1:15000).
//!
//! Plain HTTP/1 with hyper: a handful of GET routes that render JSON or
//! Prometheus text.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::model::Model;
use crate::pipeline::ModelVersion;
use crate::registry::ClusterState;
use crate::server::subscribers::Subscribers;

/// What the debug API shows.
#[derive(Clone)]
pub struct DebugState {
    /// The published models.
    pub models: watch::Receiver<Arc<ModelVersion>>,
    /// The registry.
    pub states: watch::Receiver<Arc<ClusterState>>,
    /// The config stream's subscribers.
    pub subscribers: Arc<Subscribers>,
}

/// The `/model` document.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelDump<'a> {
    version: u64,
    workloads: Vec<&'a weft_api::config::Workload>,
    services: Vec<&'a weft_api::config::Service>,
    authorizations: Vec<&'a weft_api::config::Authorization>,
    routes: Vec<&'a weft_api::config::Route>,
    trust_bundles: Vec<&'a weft_api::config::TrustBundle>,
    policy_reports: &'a std::collections::BTreeMap<String, crate::model::PolicyReport>,
}

fn dump_model(version: u64, m: &Model) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&ModelDump {
        version,
        workloads: m.workloads.values().collect(),
        services: m.services.values().collect(),
        authorizations: m.authorizations.values().collect(),
        routes: m.routes.values().collect(),
        trust_bundles: m.trust_bundles.values().collect(),
        policy_reports: &m.policy_reports,
    })
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

fn json(result: serde_json::Result<String>) -> Response<Full<Bytes>> {
    match result {
        Ok(body) => respond(StatusCode::OK, "application/json", body),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

/// Serves the debug API on `listener` (bind it to 127.0.0.1).
pub async fn serve_debug(listener: TcpListener, state: DebugState) {
    serve(listener, move |req| {
        let state = state.clone();
        async move {
            if req.method() != Method::GET {
                return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", String::new());
            }
            match req.uri().path() {
                "/model" => {
                    let current = state.models.borrow().clone();
                    json(dump_model(current.version, &current.model))
                }
                "/subscribers" => json(serde_json::to_string_pretty(&state.subscribers.list())),
                "/registry" => {
                    let s = state.states.borrow().clone();
                    json(serde_json::to_string_pretty(&serde_json::json!({
                        "synced": s.synced,
                        "objects": s.len(),
                        "invalid": s.invalid,
                    })))
                }
                "/healthz/ready" => {
                    if state.models.borrow().version > 0 {
                        respond(StatusCode::OK, "text/plain", "ready\n".into())
                    } else {
                        respond(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "text/plain",
                            "registry not synced\n".into(),
                        )
                    }
                }
                _ => respond(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "routes: /model /subscribers /registry /healthz/ready\n".into(),
                ),
            }
        }
    })
    .await
}

/// Serves Prometheus text on `/metrics`.
pub async fn serve_metrics(listener: TcpListener, handle: PrometheusHandle) {
    serve(listener, move |req| {
        let handle = handle.clone();
        async move {
            match req.uri().path() {
                "/metrics" => respond(StatusCode::OK, "text/plain; version=0.0.4", handle.render()),
                _ => respond(StatusCode::NOT_FOUND, "text/plain", String::new()),
            }
        }
    })
    .await
}

async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                tracing::warn!("admin accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("admin connection: {e}");
            }
        });
    }
}
