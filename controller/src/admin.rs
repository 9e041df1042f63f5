//! The metrics endpoint (:15014, also `/healthz/ready` for the kubelet) and
//! the debug API (127.0.0.1:15000).
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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::pipeline::ModelVersion;
use crate::server::subscribers::Subscribers;
use weft_api::admin::{ConfigSync, ProxyStatus, ProxyStatusReport};
use weft_cluster::model::Model;
use weft_cluster::registry::ClusterState;

/// What the debug API shows.
#[derive(Clone)]
pub struct DebugState {
    /// The published models.
    pub models: watch::Receiver<Arc<ModelVersion>>,
    /// The registry.
    pub states: watch::Receiver<Arc<ClusterState>>,
    /// The config stream's subscribers.
    pub subscribers: Arc<Subscribers>,
    /// This replica's name, in `/proxy-status`.
    pub replica: String,
}

/// The `/proxy-status` document: each proxy streaming from this replica,
/// with its state under [`ConfigSync::of`].
fn proxy_status(state: &DebugState) -> ProxyStatusReport {
    let current = state.models.borrow().clone();
    let model_age_seconds = current.changed_at.elapsed().as_secs();
    let proxies = state
        .subscribers
        .list()
        .into_iter()
        // weftctl's own streams are readers, not proxies.
        .filter(|s| s.kind != weft_api::config::ProxyKind::Cli.as_str_name())
        .map(|s| ProxyStatus {
            sync: ConfigSync::of(
                current.version,
                model_age_seconds,
                s.acked_version,
                s.nacked_version,
            ),
            proxy_id: s.proxy_id,
            kind: s.kind,
            node: s.node,
            waypoint: s.waypoint,
            connected_at: s.connected_at,
            sent_version: s.sent_version,
            acked_version: s.acked_version,
            nacked_version: s.nacked_version,
            nack: s.last_nack,
        })
        .collect();
    ProxyStatusReport {
        controller: state.replica.clone(),
        model_version: current.version,
        model_age_seconds,
        proxies,
    }
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
    policy_reports: &'a std::collections::BTreeMap<String, weft_cluster::model::PolicyReport>,
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
                "/proxy-status" => json(serde_json::to_string_pretty(&proxy_status(&state))),
                "/registry" => {
                    let s = state.states.borrow().clone();
                    json(serde_json::to_string_pretty(&serde_json::json!({
                        "synced": s.synced,
                        "objects": s.len(),
                        "invalid": s.invalid,
                    })))
                }
                "/healthz/ready" => readiness(&state.models),
                _ => respond(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "routes: /model /subscribers /proxy-status /registry /healthz/ready\n".into(),
                ),
            }
        }
    })
    .await
}

/// Ready once a model has been built from a synced registry: before that
/// the controller would serve proxies an empty mesh.
fn readiness(models: &watch::Receiver<Arc<ModelVersion>>) -> Response<Full<Bytes>> {
    if models.borrow().version > 0 {
        respond(StatusCode::OK, "text/plain", "ready\n".into())
    } else {
        respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "registry not synced\n".into(),
        )
    }
}

/// Serves Prometheus text on `/metrics`, and the readiness of
/// `/healthz/ready` again: this port is on the pod's address, where the
/// kubelet's probe reaches it, while the debug API stays on loopback.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    models: watch::Receiver<Arc<ModelVersion>>,
) {
    serve(listener, move |req| {
        let handle = handle.clone();
        let models = models.clone();
        async move {
            match req.uri().path() {
                "/metrics" => respond(StatusCode::OK, "text/plain; version=0.0.4", handle.render()),
                "/healthz/ready" => readiness(&models),
                _ => respond(StatusCode::NOT_FOUND, "text/plain", String::new()),
            }
        }
    })
    .await
}

/// Open connections per server: its clients are a scraper, a probe and an
/// operator's curl. One more is closed at once.
pub const MAX_CONNECTIONS: usize = 128;
/// A request's headers must arrive within this; an idle kept-alive
/// connection is closed after it.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve_within(listener, handler, MAX_CONNECTIONS, HEADER_READ_TIMEOUT).await
}

/// Serves within bounds, so half-sent requests and idle connections cannot
/// pile up (security finding 2).
pub(crate) async fn serve_within<F, Fut>(
    listener: TcpListener,
    handler: F,
    max_connections: usize,
    header_read_timeout: std::time::Duration,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("weft_admin_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // hyper enforces the header timeout only with a timer.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(16)
                .keep_alive_interval(Some(header_read_timeout))
                .keep_alive_timeout(header_read_timeout);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("admin connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(limit, s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    /// Security finding 2: the controller's debug and metrics servers kept
    /// half-sent requests open without bound.
    #[tokio::test]
    async fn slow_and_surplus_connections_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handler = |_req| async { respond(StatusCode::OK, "text/plain", "ok".into()) };
        tokio::spawn(serve_within(
            listener,
            handler,
            3,
            Duration::from_millis(300),
        ));
        let mut slow = Vec::new();
        for _ in 0..3 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("half");
            slow.push(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut surplus = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_within(&mut surplus, Duration::from_secs(2)).await);
        for s in &mut slow {
            assert!(
                closed_within(s, Duration::from_secs(3)).await,
                "half-sent request stayed open"
            );
        }
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .await
            .expect("request");
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.expect("reply");
        assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    }
}
