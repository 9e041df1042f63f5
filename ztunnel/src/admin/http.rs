//! The HTTP side of an admin API, shared by ztunnel and the waypoint: JSON
//! and text responses, the `/tap` stream, `/logging`, readiness, and the
//! accept loops on TCP and unix listeners.

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weft_api::admin::{CertInfo, CertState, LoggingResponse, TapEvent};

use super::LogControl;
use crate::identity::CertStatus;

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

pub fn json<T: Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => full(StatusCode::OK, "application/json", body),
        Err(e) => full(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

/// A list of shared config objects as JSON (null if it cannot be encoded).
pub fn to_json<T: Serialize>(items: &[std::sync::Arc<T>]) -> serde_json::Value {
    serde_json::to_value(items.iter().map(AsRef::as_ref).collect::<Vec<_>>()).unwrap_or_default()
}

/// `/certs`: what a proxy holds for one identity, as of `now`.
pub fn cert_info(status: CertStatus, now: SystemTime) -> CertInfo {
    let cert = status.cert.as_ref();
    CertInfo {
        identity: status.identity.to_string(),
        state: match cert {
            None => CertState::Pending,
            Some(c) if c.is_expired(now) => CertState::Expired,
            Some(_) => CertState::Valid,
        },
        serial: cert.map(|c| c.serial().to_owned()),
        not_before: cert.and_then(|c| rfc3339(c.not_before())),
        not_after: cert.and_then(|c| rfc3339(c.not_after())),
        renew_at: cert.and_then(|c| rfc3339(c.renew_at())),
        chain_pem: cert.map(|c| c.chain_pem()).unwrap_or_default(),
        last_error: status.last_error,
    }
}

fn rfc3339(t: SystemTime) -> Option<String> {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

pub fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.replace("%2F", "/").replace("%2f", "/"))
    })
}

/// `/tap?namespace=NS&workload=NAME`: newline-delimited JSON events until
/// the client goes away. A reader that falls behind loses events (counted
/// in `dropped`), never slows the data path.
pub fn tap(req: &Request<Incoming>, events: broadcast::Receiver<TapEvent>) -> Response<Body> {
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
    let stream = BroadcastStream::new(events).filter_map(move |item| {
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
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// `GET /logging` (the filter) and `POST /logging?level=...` (a new one).
pub fn logging(log: &LogControl, level: Option<&str>) -> Response<Body> {
    match log(level) {
        Ok(filter) => json(&LoggingResponse { filter }),
        Err(e) => full(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    }
}

/// `/healthz/ready`: 200 `ready`, or 503 with the reason.
pub fn readiness(check: Result<(), String>) -> Response<Body> {
    match check {
        Ok(()) => full(StatusCode::OK, "text/plain", "ready\n"),
        Err(reason) => full(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{reason}\n"),
        ),
    }
}

/// A listener the admin accept loop can take connections from.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Serves `handler` on every connection `listener` accepts, until `shutdown`.
pub async fn serve<L, F, Fut>(listener: L, handler: F, shutdown: CancellationToken)
where
    L: Listener,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let io = tokio::select! {
            _ = shutdown.cancelled() => return,
            io = listener.accept_io() => io,
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
