//! The admin API (DESIGN §9; JSON shapes in `weft_api::admin`, as ztunnel
//! serves them) on 127.0.0.1:15000 and optionally a unix socket, and
//! readiness on 15021. Metrics (15020) are ztunnel's exporter endpoint.
//!
//! | path | body |
//! | --- | --- |
//! | `GET /config_dump` | `ConfigDump` plus `routes`, `waypoint`, `identity`, `warnings` |
//! | `GET /workloads`, `/services`, `/policies`, `/routes` | the config, proto3 JSON |
//! | `GET /certs` | `CertsResponse` (the waypoint's own certificate) |
//! | `GET /connections` | `ConnectionsResponse`: live inbound tunnels and the upstream HBONE pool |
//! | `GET /tap?namespace=NS&workload=NAME` | newline-delimited `TapEvent`s (`request` per HTTP request) |
//! | `GET /logging`, `POST /logging?level=...` | `LoggingResponse` |
//! | `GET /healthz/ready` | 200 `ready` or 503 with the reason |

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weft_api::admin::{
    CertInfo, CertState, CertsResponse, ConfigDump, ConnectionsResponse, LoggingResponse,
    PooledConnection, TapEvent,
};
use weft_ztunnel::admin::LogControl;

use crate::app::Waypoint;

type Body = BoxBody<Bytes, Infallible>;

/// Everything the admin endpoints read.
pub struct Admin {
    pub waypoint: Arc<Waypoint>,
    /// `controller <address>` or `file <path>`.
    pub source: String,
    pub log: LogControl,
}

/// `/config_dump`: ztunnel's shape, plus what only a waypoint has.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WaypointConfigDump {
    #[serde(flatten)]
    dump: ConfigDump,
    waypoint: String,
    identity: String,
    routes: serde_json::Value,
    /// Route parts that could not be compiled (they match nothing).
    warnings: Vec<String>,
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => full(StatusCode::OK, "application/json", body),
        Err(e) => full(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.replace("%2F", "/").replace("%2f", "/"))
    })
}

fn rfc3339(t: SystemTime) -> Option<String> {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn to_json<T: Serialize>(items: &[Arc<T>]) -> serde_json::Value {
    serde_json::to_value(items.iter().map(AsRef::as_ref).collect::<Vec<_>>()).unwrap_or_default()
}

impl Admin {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let store = &self.waypoint.proxy.config.store;
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/config_dump") => json(&self.config_dump()),
            (&Method::GET, "/workloads") => {
                json(&serde_json::json!({ "workloads": to_json(&store.workloads()) }))
            }
            (&Method::GET, "/services") => {
                json(&serde_json::json!({ "services": to_json(&store.services()) }))
            }
            (&Method::GET, "/policies") => {
                json(&serde_json::json!({ "policies": to_json(&store.policies()) }))
            }
            (&Method::GET, "/routes") => {
                json(&serde_json::json!({ "routes": to_json(&store.routes()) }))
            }
            (&Method::GET, "/certs") => json(&self.certs()),
            (&Method::GET, "/connections") => json(&self.connections()),
            (&Method::GET, "/tap") => self.tap(&req),
            (&Method::GET, "/logging") => self.logging(None),
            (&Method::POST, "/logging") => self.logging(query_param(&req, "level").as_deref()),
            (&Method::GET, "/healthz/ready") => ready_response(&self.waypoint),
            (_, "/") => full(
                StatusCode::OK,
                "text/plain",
                "endpoints: /config_dump /workloads /services /policies /routes /certs /connections /tap /logging /healthz/ready\n",
            ),
            _ => full(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("no endpoint {path}\n"),
            ),
        }
    }

    fn config_dump(&self) -> WaypointConfigDump {
        let proxy = &self.waypoint.proxy;
        let store = &proxy.config.store;
        let snapshot = proxy.config.snapshot();
        WaypointConfigDump {
            dump: ConfigDump {
                node: proxy.me.key(),
                source: self.source.clone(),
                version: store.version(),
                pods: Vec::new(),
                workloads: to_json(&store.workloads()),
                services: to_json(&store.services()),
                policies: to_json(&store.policies()),
            },
            waypoint: proxy.me.key(),
            identity: self.waypoint.identity.to_string(),
            routes: to_json(&store.routes()),
            warnings: snapshot.warnings.clone(),
        }
    }

    fn certs(&self) -> CertsResponse {
        let now = SystemTime::now();
        CertsResponse {
            node: self.waypoint.proxy.me.key(),
            certificates: self
                .waypoint
                .certs
                .status()
                .into_iter()
                .map(|s| {
                    let state = match &s.cert {
                        None => CertState::Pending,
                        Some(c) if c.is_expired(now) => CertState::Expired,
                        Some(_) => CertState::Valid,
                    };
                    CertInfo {
                        identity: s.identity.to_string(),
                        state,
                        serial: s.cert.as_ref().map(|c| c.serial().to_owned()),
                        not_before: s.cert.as_ref().and_then(|c| rfc3339(c.not_before())),
                        not_after: s.cert.as_ref().and_then(|c| rfc3339(c.not_after())),
                        renew_at: s.cert.as_ref().and_then(|c| rfc3339(c.renew_at())),
                        chain_pem: s.cert.as_ref().map(|c| c.chain_pem()).unwrap_or_default(),
                        last_error: s.last_error,
                    }
                })
                .collect(),
        }
    }

    fn connections(&self) -> ConnectionsResponse {
        ConnectionsResponse {
            node: self.waypoint.proxy.me.key(),
            connections: self.waypoint.proxy.observer.tunnels(),
            pool: self
                .waypoint
                .tunnels
                .connections()
                .into_iter()
                .map(|c| PooledConnection {
                    id: c.id,
                    source_identity: c.source.to_string(),
                    destination_identity: c.destination_identity.to_string(),
                    address: c.hbone_addr.to_string(),
                    active_streams: c.active_streams,
                    age_ms: c.age.as_millis() as u64,
                })
                .collect(),
        }
    }

    /// Newline-delimited JSON events until the client goes away. A reader
    /// that falls behind loses events (counted in `dropped`).
    fn tap(&self, req: &Request<Incoming>) -> Response<Body> {
        let namespace = query_param(req, "namespace");
        let workload = query_param(req, "workload");
        let matches = move |e: &TapEvent| {
            let peers = [&e.connection.source, &e.connection.destination];
            peers.iter().any(|p| {
                let w = p.workload.as_deref().unwrap_or("");
                let (ns, name) = w.split_once('/').unwrap_or(("", w));
                namespace.as_deref().is_none_or(|n| n == ns)
                    && workload.as_deref().is_none_or(|x| x == name || x == w)
            })
        };
        let mut dropped = 0u64;
        let stream = BroadcastStream::new(self.waypoint.proxy.observer.subscribe_tap()).filter_map(
            move |item| {
                let out = match item {
                    Ok(mut event) if matches(&event) => {
                        event.dropped = std::mem::take(&mut dropped);
                        serde_json::to_vec(&event).ok().map(|mut line| {
                            line.push(b'\n');
                            Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
                        })
                    }
                    Ok(_) => None,
                    Err(BroadcastStreamRecvError::Lagged(n)) => {
                        dropped += n;
                        None
                    }
                };
                futures::future::ready(out)
            },
        );
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        response
    }

    fn logging(&self, level: Option<&str>) -> Response<Body> {
        match (self.log)(level) {
            Ok(filter) => json(&LoggingResponse { filter }),
            Err(e) => full(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
        }
    }
}

fn ready_response(waypoint: &Waypoint) -> Response<Body> {
    match waypoint.readiness() {
        Ok(()) => full(StatusCode::OK, "text/plain", "ready\n"),
        Err(reason) => full(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{reason}\n"),
        ),
    }
}

/// Serves `handler` on every connection `accept` yields, until `shutdown`.
async fn serve<IO, A, F, Fut>(mut accept: A, handler: F, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: FnMut() -> futures::future::BoxFuture<'static, std::io::Result<IO>>,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let io = tokio::select! {
            _ = shutdown.cancelled() => return,
            io = accept() => io,
        };
        let io = match io {
            Ok(io) => io,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        tokio::spawn(async move {
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .await
            {
                debug!(error = %e, "admin connection ended");
            }
        });
    }
}

/// Serves the admin API on a TCP listener.
pub async fn serve_tcp(admin: Arc<Admin>, listener: TcpListener, shutdown: CancellationToken) {
    let listener = Arc::new(listener);
    serve(
        move || {
            let l = listener.clone();
            Box::pin(async move { l.accept().await.map(|(s, _)| s) })
        },
        move |req| admin.clone().handle(req),
        shutdown,
    )
    .await;
}

/// Serves the admin API on a unix socket.
pub async fn serve_unix(admin: Arc<Admin>, listener: UnixListener, shutdown: CancellationToken) {
    let listener = Arc::new(listener);
    serve(
        move || {
            let l = listener.clone();
            Box::pin(async move { l.accept().await.map(|(s, _)| s) })
        },
        move |req| admin.clone().handle(req),
        shutdown,
    )
    .await;
}

/// `/healthz/ready` for the kubelet.
pub async fn serve_readiness(
    waypoint: Arc<Waypoint>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let listener = Arc::new(listener);
    serve(
        move || {
            let l = listener.clone();
            Box::pin(async move { l.accept().await.map(|(s, _)| s) })
        },
        move |_req| {
            let response = ready_response(&waypoint);
            async move { response }
        },
        shutdown,
    )
    .await;
}
